"""Conjugate audit throughput: requests/s through the gateway with the audit on vs off (mock upstream).

Run: .venv/bin/python bench/conjugate_audit.py [--quick]   (or bench/.venv/bin/python)

One fixed-latency upstream (bench/_upstream.py) and two `promptwire serve` processes, all on 127.0.0.1,
both configured with the conjugate stage (transform `leet` allowed for `anonymous`):

- `off`: requests without the conjugate option (the stage does not run: no transform, no audit);
- `on`: the same server, requests with `{"promptwire": {"conjugate": {"transform": "leet"}}}`: the
  prompt is transformed, the answer back-transformed, and one audit line written and fsynced to a file
  on disk (``--audit-dir``, default bench/out) before each response leaves;
- `on-tmpfs`: a second server whose audit file is on /dev/shm (fsync costs nothing there), to split
  the cost of the fsync from the cost of the transforms and the JSON line.

A separate load process (bench/_load.py) runs closed-loop keep-alive phases; targets alternate
within every round. The table shows requests/s (median over rounds) and p50 / p99 latency per
concurrency, the gateway's CPU time per request (less sensitive to a busy machine than
requests/s), the on/off ratio, and checks that the audit files hold exactly one line per `on`
request. Figures go to stdout and bench/out/conjugate_audit.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _servers import BENCH, Server, start_promptwire, start_upstream, stopping

__all__ = ["main"]

OUT = BENCH / "out"
LEET = {"promptwire": {"conjugate": {"transform": "leet"}}}


def gateway_config(audit_path: Path) -> str:
    return json.dumps({
        "stages": {"conjugate": {"audit_path": str(audit_path), "allow": {"anonymous": ["leet"]}}},
        "default_stages": [{"name": "conjugate", "enabled": False, "client_options": ["transform"]}],
    })


def make_plan(targets: list[str], concurrencies: list[int], rounds: int, quick: bool,
              stream: bool) -> list[dict[str, Any]]:
    scale = 0.25 if quick else 1.0
    max_s = 2.0 if quick else 5.0
    phases: list[dict[str, Any]] = [
        {"target": t, "stream": stream, "concurrency": 16, "requests": int(400 * scale), "max_s": max_s,
         "warmup": True}
        for t in targets
    ]
    for r in range(rounds):
        for c in concurrencies:
            order = targets[r % len(targets):] + targets[: r % len(targets)]  # rotate who goes first
            for t in order:
                phases.append({"target": t, "stream": stream, "concurrency": c,
                               "requests": int(max(200, 60 * c) * scale), "max_s": max_s, "round": r})
    return phases


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def analyse(raw: list[dict[str, Any]], targets: list[str], concurrencies: list[int]) -> list[dict[str, Any]]:
    rows = []
    for c in concurrencies:
        row: dict[str, Any] = {"concurrency": c}
        for t in targets:
            runs = [x for x in raw if x["target"] == t and x["concurrency"] == c]
            rps = [len(x["latency_ms"]) / max(x["elapsed_s"], 1e-9) for x in runs]
            lat = [v for x in runs for v in x["latency_ms"]]
            row[t] = {
                "rps": statistics.median(rps) if rps else float("nan"),
                "rps_range": [min(rps), max(rps)] if rps else [],
                "p50_ms": _pct(lat, 0.5),
                "p99_ms": _pct(lat, 0.99),
                "errors": sum(x["errors"] for x in runs),
                "cpu_ms_per_request": 1000 * sum(x["cpu_s"] for x in runs) / max(1, len(lat)),
            }
        row["on_off"] = row["on"]["rps"] / row["off"]["rps"]
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], targets: list[str]) -> str:
    head = ("| concurrency | " + " | ".join(f"{t} req/s | {t} p50 / p99 ms | {t} CPU ms/req" for t in targets)
            + " | on / off |")
    sep = "|---" * (1 + 3 * len(targets) + 1) + "|"
    lines = [head, sep]
    for r in rows:
        cells = [f"{r['concurrency']}"]
        for t in targets:
            cells += [f"{r[t]['rps']:,.0f}", f"{r[t]['p50_ms']:.2f} / {r[t]['p99_ms']:.2f}",
                      f"{r[t]['cpu_ms_per_request']:.2f}"]
        cells.append(f"{r['on_off']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _lines(path: Path) -> int:
    files = [path, *path.parent.glob(path.name + ".2*")]
    return sum(sum(1 for _ in f.open("rb")) for f in files if f.exists())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Conjugate audit throughput: requests/s with the audit on vs off.")
    ap.add_argument("--quick", action="store_true", help="one short round")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick 1)")
    ap.add_argument("--concurrency", default="1,32", help="comma-separated concurrencies")
    ap.add_argument("--latency-ms", type=float, default=5.0, help="upstream time to reply")
    ap.add_argument("--stream", action="store_true", help="streamed requests (buffered by the stage)")
    ap.add_argument("--audit-dir", type=Path, default=OUT, help="where the on-disk audit file goes")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the JSON")
    args = ap.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    concs = [int(c) for c in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    args.audit_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = _loadavg()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    disk_audit = args.audit_dir / f"conjugate_audit_bench-{stamp}.jsonl"
    shm = Path("/dev/shm")
    shm_audit = shm / f"conjugate_audit_bench-{stamp}.jsonl" if shm.is_dir() else None

    with tempfile.TemporaryDirectory(prefix="pw-conj-bench-") as tmp, stopping([]) as servers:
        work = Path(tmp)
        upstream = start_upstream(work, args.latency_ms, 1.0)
        servers.append(upstream)
        (work / "disk.yaml").write_text(gateway_config(disk_audit))
        disk = start_promptwire(work, upstream, extra_args=("--config", str(work / "disk.yaml")), name="pw-disk")
        servers.append(disk)
        live: dict[str, tuple[Server, dict[str, Any] | None]] = {"off": (disk, None), "on": (disk, LEET)}
        if shm_audit is not None:
            (work / "shm.yaml").write_text(gateway_config(shm_audit))
            tmpfs = start_promptwire(work, upstream, extra_args=("--config", str(work / "shm.yaml")),
                                     name="pw-tmpfs")
            servers.append(tmpfs)
            live["on-tmpfs"] = (tmpfs, LEET)
        targets = list(live)
        plan = {
            "targets": [{"name": n, "port": s.port, "api_key": s.api_key, "pids": s.pids(), "extra_body": extra}
                        for n, (s, extra) in live.items()],
            "phases": make_plan(targets, concs, rounds, args.quick, args.stream),
            "pause_s": 0.2,
        }
        (work / "plan.json").write_text(json.dumps(plan))
        print(f"[bench] {len(plan['phases'])} phases, targets {targets}, load average {load_before}",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(BENCH / "_load.py"), "--plan", str(work / "plan.json"),
                        "--out", str(work / "results.json")], check=True, timeout=1800)
        raw = json.loads((work / "results.json").read_text())["results"]
        for s in servers:
            if s.proc.poll() is not None:
                print(f"[bench] WARNING: {s.name} died during the run:\n{s.log_tail()}", file=sys.stderr)
        ok = {t: 0 for t in targets}
        for x in raw:
            ok[x["target"]] += len(x["latency_ms"])
        # warm-up requests are audited too; the check is that nothing was lost: lines >= measured requests
        audited = {"on": _lines(disk_audit), "on-tmpfs": _lines(shm_audit) if shm_audit else 0}

    rows = analyse(raw, targets, concs)
    load_after = _loadavg()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    meta = {"date": when, "machine": machine, "rounds": rounds, "concurrency": concs,
            "upstream_latency_ms": args.latency_ms, "stream": args.stream, "audit_file": str(disk_audit),
            "load_average_before": load_before, "load_average_after": load_after,
            "duration_s": round(time.monotonic() - started, 1), "measured_ok": ok, "audit_lines": audited}
    (args.out / "conjugate_audit.json").write_text(json.dumps({"meta": meta, "rows": rows, "raw": raw}))
    print(f"\nConjugate audit throughput — {when} — {machine}")
    print(f"upstream latency {args.latency_ms:g} ms; {'streamed' if args.stream else 'whole'} responses; "
          f"{rounds} round(s), medians over rounds; load average before {load_before}, after {load_after}; "
          f"took {meta['duration_s']} s\n")
    print(render(rows, targets))
    print(f"\naudit lines: on-disk {audited['on']} (measured on-requests {ok['on']}), "
          f"tmpfs {audited['on-tmpfs']} (measured {ok.get('on-tmpfs', 0)}); audit file {disk_audit}")
    lost = [t for t in ("on", "on-tmpfs") if t in ok and audited[t] < ok[t]]
    if lost:
        print(f"ERROR: fewer audit lines than answered requests for {lost}")
        return 1
    for f in [disk_audit, *( [shm_audit] if shm_audit else [])]:
        for g in [f, *f.parent.glob(f.name + ".*")]:
            g.unlink(missing_ok=True)
    print(f"saved {args.out / 'conjugate_audit.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
