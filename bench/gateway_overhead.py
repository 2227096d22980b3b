"""Gateway overhead: latency promptwire and LiteLLM's proxy add over a fixed-latency local upstream.

Run: bench/.venv/bin/python bench/gateway_overhead.py [--quick]   (after `bash bench/setup_env.sh`)

Three targets on one upstream (127.0.0.1 only): `direct` (the upstream itself), `promptwire`
(`promptwire serve --upstream URL`) and `litellm` (LiteLLM's proxy, own venv). A separate load process
runs closed-loop keep-alive phases at each concurrency for non-streaming requests (whole-response
latency) and streaming ones (time to the first generated token). Targets alternate within every round,
in a rotating order, so machine noise lands on all three alike. Added latency is computed from the
distributions, per round: p50(target) - p50(direct), p99(target) - p99(direct); the table shows the
median over rounds and the spread (min..max). Max requests/s is the best throughput over the
concurrencies. Figures go to stdout, bench/out/gateway_overhead.{json,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from _servers import BENCH, Server, start_litellm, start_promptwire, start_upstream, stopping

__all__ = ["analyse", "main", "make_plan"]

OUT = BENCH / "out"
TARGET_P50_MS = 1.0  # promptwire p50 added at concurrency 32 (issue 3)
TARGET_P99_MS = 5.0  # promptwire p99 added at concurrency 32
TARGET_RATIO = 1 / 3  # promptwire p50 overhead / LiteLLM p50 overhead


def make_plan(targets: list[str], concurrencies: list[int], rounds: int, quick: bool) -> list[dict[str, Any]]:
    """Warm-up phases, then rounds; within a round every (mode, concurrency) runs each target in turn."""
    scale = 0.25 if quick else 1.0
    max_s = 2.0 if quick else 4.0
    phases: list[dict[str, Any]] = []
    for t in targets:
        for stream in (False, True):
            phases.append(
                {
                    "target": t,
                    "stream": stream,
                    "concurrency": 16,
                    "requests": int(400 * scale),
                    "max_s": max_s,
                    "warmup": True,
                }
            )
    k = 0
    for r in range(rounds):
        for stream in (False, True):
            for c in concurrencies:
                n = int(scale * (150 if c == 1 else max(1500, 25 * c)))
                order = targets[k % len(targets) :] + targets[: k % len(targets)]  # rotate who goes first
                k += 1
                for t in order:
                    phases.append(
                        {
                            "target": t,
                            "stream": stream,
                            "concurrency": c,
                            "requests": n,
                            "max_s": max_s,
                            "round": r,
                        }
                    )
    return phases


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def analyse(results: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    """Per (mode, concurrency, target): medians over rounds of p50/p99, added latency, req/s, CPU/request."""
    by: dict[tuple[bool, int, int, str], dict[str, Any]] = {}
    for r in results:
        by[(r["stream"], r["concurrency"], r["round"], r["target"])] = r
    modes = sorted({k[0] for k in by})
    concs = sorted({k[1] for k in by})
    rounds = sorted({k[2] for k in by})
    rows: list[dict[str, Any]] = []
    for stream in modes:
        metric = "ttft_ms" if stream else "latency_ms"
        for c in concs:
            for t in targets:
                per_round: dict[str, list[float]] = {
                    k: [] for k in ("p50", "p99", "add50", "add99", "rps", "cpu_ms", "n", "errors")
                }
                for rd in rounds:
                    res, base = by.get((stream, c, rd, t)), by.get((stream, c, rd, "direct"))
                    if res is None or not res[metric]:
                        continue
                    p50, p99 = _pct(res[metric], 50), _pct(res[metric], 99)
                    per_round["p50"].append(p50)
                    per_round["p99"].append(p99)
                    per_round["n"].append(len(res[metric]))
                    per_round["errors"].append(res["errors"])
                    done = len(res["latency_ms"])
                    per_round["rps"].append(done / res["elapsed_s"] if res["elapsed_s"] > 0 else 0.0)
                    if done and res.get("cpu_s") is not None:
                        per_round["cpu_ms"].append(1000.0 * res["cpu_s"] / done)
                    if base is not None and base[metric]:
                        per_round["add50"].append(p50 - _pct(base[metric], 50))
                        per_round["add99"].append(p99 - _pct(base[metric], 99))
                if not per_round["p50"]:
                    continue
                row: dict[str, Any] = {
                    "stream": stream,
                    "concurrency": c,
                    "target": t,
                    "rounds": len(per_round["p50"]),
                }
                for k, v in per_round.items():
                    row[k] = statistics.median(v) if v else float("nan")
                    if k in ("add50", "add99") and v:
                        row[k + "_min"], row[k + "_max"] = min(v), max(v)
                row["errors"] = int(sum(per_round["errors"]))
                row["n"] = int(sum(per_round["n"]))
                rows.append(row)
    summary: dict[str, Any] = {"rows": rows, "max_rps": {}, "ratio": {}}
    for t in targets:
        rps = [r["rps"] for r in rows if r["target"] == t and not r["stream"]]
        summary["max_rps"][t] = max(rps) if rps else float("nan")
    for stream in modes:
        for c in concs:
            pw = _row(rows, stream, c, "promptwire")
            lt = _row(rows, stream, c, "litellm")
            if pw and lt and lt["add50"] > 0:
                summary["ratio"][f"{'stream' if stream else 'plain'}@{c}"] = pw["add50"] / lt["add50"]
    return summary


def _row(rows: list[dict[str, Any]], stream: bool, c: int, target: str) -> dict[str, Any] | None:
    for r in rows:
        if r["stream"] == stream and r["concurrency"] == c and r["target"] == target:
            return r
    return None


def render_table(summary: dict[str, Any]) -> str:
    head = (
        "| mode | conc | target | p50 ms | p99 ms | added p50 ms (min..max) | added p99 ms | req/s "
        "| server CPU ms/req | errors |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in summary["rows"]:
        mode = "stream TTFT" if r["stream"] else "non-stream"
        if r["target"] == "direct":
            added50 = added99 = "—"
        else:
            added50 = f"{r['add50']:.2f} ({r['add50_min']:.2f}..{r['add50_max']:.2f})"
            added99 = f"{r['add99']:.2f}"
        lines.append(
            f"| {mode} | {r['concurrency']} | {r['target']} | {r['p50']:.2f} | {r['p99']:.2f} | {added50} "
            f"| {added99} | {r['rps']:.0f} | {r['cpu_ms']:.2f} | {r['errors']} |"
        )
    return "\n".join(lines)


def verdicts(summary: dict[str, Any]) -> list[str]:
    out = []
    rows = summary["rows"]
    pw = _row(rows, False, 32, "promptwire")
    if pw:
        ok50, ok99 = pw["add50"] <= TARGET_P50_MS, pw["add99"] <= TARGET_P99_MS
        out.append(
            f"promptwire non-stream c=32: p50 added {pw['add50']:.2f} ms (target <= {TARGET_P50_MS}) "
            f"{'MET' if ok50 else 'MISSED'}; p99 added {pw['add99']:.2f} ms (target <= {TARGET_P99_MS}) "
            f"{'MET' if ok99 else 'MISSED'}"
        )
    pws = _row(rows, True, 32, "promptwire")
    if pws:
        out.append(
            f"promptwire stream TTFT c=32: p50 added {pws['add50']:.2f} ms, p99 added {pws['add99']:.2f} ms"
        )
    for key, ratio in summary["ratio"].items():
        out.append(
            f"ratio promptwire/litellm p50 overhead {key}: {ratio:.3f} "
            f"(target <= {TARGET_RATIO:.3f}) {'MET' if ratio <= TARGET_RATIO else 'MISSED'}"
        )
    for t, rps in summary["max_rps"].items():
        out.append(f"max req/s {t}: {rps:.0f}")
    return out


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    proxies = [t for t in ("promptwire", "litellm") if any(r["target"] == t for r in rows)]
    concs = sorted({r["concurrency"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, stream in zip(axes[:2], (False, True), strict=True):
        width = 0.8 / max(len(proxies), 1)
        for i, t in enumerate(proxies):
            xs, p50, p99 = [], [], []
            for j, c in enumerate(concs):
                r = _row(rows, stream, c, t)
                if r:
                    xs.append(j + (i - (len(proxies) - 1) / 2) * width)
                    p50.append(max(r["add50"], 0.01))
                    p99.append(max(r["add99"], 0.01))
            ax.bar(xs, p50, width, label=f"{t} p50 added", color={"promptwire": "C0", "litellm": "C1"}.get(t))
            ax.scatter(
                xs, p99, marker="_", s=400, color="black", zorder=3, label="p99 added" if i == 0 else None
            )
        ax.axhline(TARGET_P50_MS, color="green", linestyle="--", linewidth=1, label="target p50 1 ms")
        ax.set_yscale("log")
        ax.set_xticks(range(len(concs)), [str(c) for c in concs])
        ax.set_xlabel("concurrency")
        ax.set_ylabel("added latency, ms (log)")
        ax.set_title("streaming: time to first token" if stream else "non-streaming: latency")
        ax.legend(fontsize=8)
    ax = axes[2]
    targets = list(summary["max_rps"])
    colors = {"direct": "grey", "promptwire": "C0", "litellm": "C1"}
    bars = ax.bar(
        targets, [summary["max_rps"][t] for t in targets], color=[colors.get(t, "C2") for t in targets]
    )
    ax.bar_label(bars, fmt="%.0f")
    ax.set_yscale("log")
    ax.set_ylabel("max requests/s (non-streaming, log)")
    ax.set_title("throughput")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _start_profiler(server: Server | None, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy (bench/requirements-gateway.txt) sampling promptwire's process until stopped."""
    spy = Path(sys.executable).parent / "py-spy"
    if server is None or not spy.exists():
        print(
            "[bench] WARNING: --profile needs promptwire running and py-spy in bench/.venv", file=sys.stderr
        )
        return None
    cmd = [
        str(spy),
        "record",
        "--pid",
        str(server.proc.pid),
        "--rate",
        "250",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(out / "promptwire_profile.folded"),
        "--duration",
        "3600",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_profiler(spy: subprocess.Popen[bytes], out: Path) -> None:
    """Stop py-spy (it writes its file on SIGINT) and summarise the samples of the event-loop thread."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(timeout=5)
    folded = out / "promptwire_profile.folded"
    if not folded.exists():
        print("[bench] WARNING: py-spy wrote no profile (ptrace not permitted?)", file=sys.stderr)
        return
    total, own, incl = 0, Counter[str](), Counter[str]()
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "Thread.run" in stack:  # threads parked in C (gRPC pollers, signal watch) sampled as busy
            continue
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"py-spy samples of promptwire's event-loop thread: {total}", "", "self time:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in own.most_common(30)]
    lines += ["", "inclusive time:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(60)]
    (out / "promptwire_profile.txt").write_text("\n".join(lines) + "\n")
    print(f"[bench] profile: {out / 'promptwire_profile.txt'} (folded stacks: {folded})", file=sys.stderr)


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Gateway overhead: direct vs promptwire vs LiteLLM proxy.")
    ap.add_argument("--quick", action="store_true", help="one short round (about a minute)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick 1)")
    ap.add_argument("--concurrency", default="1,32,128", help="comma-separated concurrencies")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="upstream time to reply / first token")
    ap.add_argument("--chunk-gap-ms", type=float, default=2.0, help="upstream gap between stream chunks")
    ap.add_argument("--targets", default="promptwire,litellm", help="proxies to compare with direct")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes per proxy (promptwire --workers, LiteLLM --num_workers); default 1")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the JSON and PNG")
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness increment for this run and every process it starts (negative: higher priority than "
        "other work on a shared machine; needs root)",
    )
    ap.add_argument(
        "--realtime",
        action="store_true",
        help="run this process and every process it starts under SCHED_FIFO priority 1, so that other work "
        "on a shared machine does not queue ahead of them (needs root; the kernel still keeps 5%% for others)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample promptwire with py-spy during the run (perturbs the figures a little): "
        "bench/out/promptwire_profile.{folded,txt}",
    )
    args = ap.parse_args(argv)
    # Both are inherited across fork/exec by the upstream, both proxies and the load generator alike.
    if args.nice:
        os.nice(args.nice)
    if args.realtime:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    rounds = args.rounds or (1 if args.quick else 3)
    concs = [int(c) for c in args.concurrency.split(",")]
    proxies = [t for t in args.targets.split(",") if t]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = _loadavg()

    with tempfile.TemporaryDirectory(prefix="pw-bench-") as tmp, stopping([]) as servers:
        work = Path(tmp)
        upstream = start_upstream(work, args.latency_ms, args.chunk_gap_ms)
        servers.append(upstream)
        starters = {"promptwire": functools.partial(start_promptwire, workers=args.workers),
                    "litellm": functools.partial(start_litellm, workers=args.workers)}
        live: dict[str, Server] = {"direct": upstream}
        for name in proxies:
            try:
                servers.append(s := starters[name](work, upstream))
                live[name] = s
            except (RuntimeError, FileNotFoundError) as e:
                print(f"[bench] WARNING: {name} could not start, left out: {e}", file=sys.stderr)
        targets = list(live)
        plan: dict[str, Any] = {
            "targets": [
                {"name": n, "port": s.port, "api_key": s.api_key, "pids": s.pids()} for n, s in live.items()
            ],
            "phases": make_plan(targets, concs, rounds, args.quick),
            "pause_s": 0.2,
        }
        (work / "plan.json").write_text(json.dumps(plan))
        print(
            f"[bench] {len(plan['phases'])} phases, targets {targets}, load average {load_before}",
            file=sys.stderr,
            flush=True,
        )
        spy = _start_profiler(live.get("promptwire"), args.out) if args.profile else None
        # The load generator gets its own process (its own core's worth of CPU time, no GIL sharing).
        subprocess.run(
            [
                sys.executable,
                str(BENCH / "_load.py"),
                "--plan",
                str(work / "plan.json"),
                "--out",
                str(work / "results.json"),
            ],
            check=True,
            timeout=1800,
        )
        if spy is not None:
            _stop_profiler(spy, args.out)
        raw = json.loads((work / "results.json").read_text())["results"]
        for s in servers:
            if s.proc.poll() is not None:
                print(f"[bench] WARNING: {s.name} died during the run:\n{s.log_tail()}", file=sys.stderr)

    summary = analyse(raw, targets)
    load_after = _loadavg()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    table = render_table(summary)
    lines = verdicts(summary)
    meta = {
        "date": when,
        "machine": machine,
        "rounds": rounds,
        "concurrency": concs,
        "upstream_latency_ms": args.latency_ms,
        "chunk_gap_ms": args.chunk_gap_ms,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "duration_s": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "nice": args.nice,
        "realtime": args.realtime,
    }
    (args.out / "gateway_overhead.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "raw": raw})
    )
    plot(
        summary,
        args.out / "gateway_overhead.png",
        f"promptwire vs LiteLLM proxy vs direct — upstream {args.latency_ms:g} ms, {machine}, {when}",
    )
    print(f"\nGateway overhead — {when} — {machine}")
    print(
        f"upstream latency {args.latency_ms:g} ms (stream: first chunk after it, then 5 more "
        f"{args.chunk_gap_ms:g} ms apart); {rounds} round(s), medians over rounds; "
        f"load average before {load_before}, after {load_after}; nice {args.nice}, realtime {args.realtime}; took {meta['duration_s']} s\n"
    )
    print(table)
    print()
    for line in lines:
        print(line)
    print(f"\nsaved {args.out / 'gateway_overhead.png'} and {args.out / 'gateway_overhead.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
