"""`serve --workers N`: /metrics on any worker reports every worker's requests (multiprocess metrics)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx

from tests.support.served import ServedProcess
from tests.support.wait import until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _total(text: str, family: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{family}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _per_worker(directory: Path) -> dict[str, float]:
    """Requests counted by each worker (its own file in the multiprocess directory)."""
    from prometheus_client.mmap_dict import MmapedDict

    out = {}
    for f in directory.glob("counter_*.db"):
        d = MmapedDict(str(f), read_mode=True)
        try:
            out[f.stem] = sum(v for k, v, _ in d.read_all_values() if json.loads(k)[0] == "promptwire_requests")
        finally:
            d.close()
    return out


def test_metrics_with_workers_report_all_workers(make_upstream: Any, tmp_path: Path) -> None:
    up = make_upstream()
    port = _free_port()
    with ServedProcess(["--upstream", up.url, "--http-port", str(port), "--no-grpc", "--workers", "2"],
                       {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}, workers=2) as s:
        n = 24
        for _ in range(n):  # fresh connections: the kernel spreads them over both workers
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
                r = http.post("/v1/chat/completions",
                              json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200
        assert up.app.generation_requests == n
        def scrape() -> str:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
                return http.get("/metrics").text

        # a worker releases a request's slot just after its answer went out: wait for the sum to reach 0
        until(lambda: _total(scrape(), "promptwire_in_flight") == 0, "in-flight to come back to 0")
        for _ in range(8):  # every scrape, whichever worker answers it, counts all of them
            text = scrape()
            assert _total(text, "promptwire_requests_total") == n, text
            assert _total(text, "promptwire_in_flight") == 0
        per_worker = _per_worker(tmp_path)
        # both workers served some (so a scrape that answered from one alone would have been short)
        assert len(per_worker) == 2 and all(v > 0 for v in per_worker.values()), per_worker
        assert s.stop() == 0
