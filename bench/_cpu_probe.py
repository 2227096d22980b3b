"""What the CPU can do and what each library's kernels get of it: the cores' measured fp32 FMA and int8
VNNI peaks, and one GEMM of bert-base's feed-forward shape through torch (MKL / oneDNN, what llmlingua
runs) and ONNX Runtime (MLAS: fp32, int8 MatMulNBits as our export uses it, u8s8 QGEMM).

    python bench/_cpu_probe.py        # prints a JSON report (used by bench/compressor_vs_llmlingua.py)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "encoder_flops_per_token", "gemm_probe", "measured_peaks", "probe"]

_PEAK_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void){struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t); return t.tv_sec+t.tv_nsec*1e-9;}
#define R12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
int main(void){
  const long n = 100000000; double best_i = 0, best_f = 0;
  for (int rep = 0; rep < 3; rep++) {
    #define DI(i) __m512i a##i = _mm512_set1_epi32(i + 1);
    R12(DI)
    __m512i x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(2);
    double t = now();
    for (long k = 0; k < n; k++) {
      #define VI(i) a##i = _mm512_dpbusd_epi32(a##i, x, y);
      R12(VI)
      __asm__ volatile("" : "+v"(a0),"+v"(a1),"+v"(a2),"+v"(a3),"+v"(a4),"+v"(a5),"+v"(a6),"+v"(a7),"+v"(a8),"+v"(a9),"+v"(a10),"+v"(a11));
    }
    double gi = n * 12.0 * 64 * 2 / (now() - t) / 1e9; if (gi > best_i) best_i = gi;
    #define DF(i) __m512 f##i = _mm512_set1_ps(i + 1.f);
    R12(DF)
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    t = now();
    for (long k = 0; k < n; k++) {
      #define VF(i) f##i = _mm512_fmadd_ps(f##i, m, c);
      R12(VF)
      __asm__ volatile("" : "+v"(f0),"+v"(f1),"+v"(f2),"+v"(f3),"+v"(f4),"+v"(f5),"+v"(f6),"+v"(f7),"+v"(f8),"+v"(f9),"+v"(f10),"+v"(f11));
    }
    double gf = n * 12.0 * 16 * 2 / (now() - t) / 1e9; if (gf > best_f) best_f = gf;
  }
  printf("{\"int8_vnni_gops_per_core\": %.1f, \"fp32_fma_gflops_per_core\": %.1f}\n", best_i, best_f);
  return 0;
}
"""


def cpu_flags() -> dict[str, Any]:
    """Model name and the vector/matrix extensions that matter here (from /proc/cpuinfo)."""
    info: dict[str, Any] = {"model": "unknown", "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return info
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    info["model"] = m.group(1).strip() if m else "unknown"
    m = re.search(r"^vendor_id\s*:\s*(.+)$", text, re.M)
    info["vendor"] = m.group(1).strip() if m else "unknown"
    flags = set((re.search(r"^flags\s*:\s*(.+)$", text, re.M) or re.search("()", "")).group(1).split())
    for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "amx_tile"):
        info[f] = f in flags
    return info


def measured_peaks() -> dict[str, float] | None:
    """Per-core int8 VNNI (vpdpbusd zmm) and fp32 FMA (zmm) peaks: a compiled loop of independent
    instructions timed in thread CPU time (so other processes do not halve it); None without a C
    compiler or AVX-512 VNNI."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not cpu_flags().get("avx512_vnni"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(_PEAK_C, encoding="utf-8")
        r = subprocess.run([cc, "-O2", "-mavx512f", "-mavx512bw", "-mavx512vnni", str(src), "-o", str(exe)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return None
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    peaks: dict[str, float] = json.loads(out)
    return peaks


def encoder_flops_per_token(hidden: int, layers: int, intermediate: int, seq: int) -> float:
    """Multiply-adds x 2 per token of a BERT encoder: Q/K/V/output and feed-forward projections,
    plus attention scores and weighted sums over SEQ positions."""
    linear = 4 * hidden * hidden + 2 * hidden * intermediate
    attention = 2 * seq * hidden
    return 2.0 * layers * (linear + attention)


def _best(fn: Any, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def gemm_probe(m: int = 512, k: int = 768, n: int = 3072) -> dict[str, float]:
    """GFLOPS (GOPS for int8) of one (M,K)x(K,N) product on one thread, CPU time, best of 5."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    out: dict[str, float] = {}
    ops = 2.0 * m * k * n
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32) * 0.05
    try:
        import torch

        torch.set_num_threads(1)
        ta, tw = torch.from_numpy(a), torch.from_numpy(np.ascontiguousarray(w.T))
        out["torch_fp32"] = ops / _best(lambda: torch.nn.functional.linear(ta, tw)) / 1e9
    except ImportError:
        pass

    def session(model: Any) -> Any:
        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["C"])], "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [m, n])],
        [helper.make_tensor("W", TensorProto.FLOAT, [k, n], w.ravel())],
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    s = session(fp32)
    out["ort_fp32"] = ops / _best(lambda: s.run(None, {"A": a})) / 1e9
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        from compressors.llmlingua2.export import INT8_BLOCK

        q = MatMulNBitsQuantizer(onnx.ModelProto.FromString(fp32.SerializeToString()), bits=8,
                                 block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4)
        q.process()
        s8 = session(q.model.model)
        out["ort_int8_matmulnbits"] = ops / _best(lambda: s8.run(None, {"A": a})) / 1e9
    except ImportError:
        pass
    ua = rng.integers(0, 255, (m, k), dtype=np.uint8)
    qg = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "W"], ["C"])], "q",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
        [helper.make_tensor_value_info("C", TensorProto.INT32, [m, n])],
        [helper.make_tensor("W", TensorProto.INT8, [k, n], rng.integers(-127, 127, (k, n)).ravel().tolist())],
    )
    sq = session(helper.make_model(qg, opset_imports=[helper.make_opsetid("", 17)]))
    out["ort_int8_qgemm_u8s8"] = ops / _best(lambda: sq.run(None, {"A": ua})) / 1e9
    return out


def probe() -> dict[str, Any]:
    return {"cpu": cpu_flags(), "peaks": measured_peaks(), "gemm_512x768x3072": gemm_probe()}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(json.dumps(probe(), indent=2))
