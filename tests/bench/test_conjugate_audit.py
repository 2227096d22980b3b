"""The conjugate-audit benchmark's harness: the plan, the request body it sends, the table maths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is a folder of scripts, not a package

import _load  # noqa: E402
import conjugate_audit  # noqa: E402


def test_on_requests_carry_the_conjugate_option_and_off_requests_do_not() -> None:
    on = _load.build_request(_load.Target("on", 1, extra_body=conjugate_audit.LEET), stream=False)
    off = _load.build_request(_load.Target("off", 1), stream=False)
    body_on = json.loads(on.split(b"\r\n\r\n", 1)[1])
    body_off = json.loads(off.split(b"\r\n\r\n", 1)[1])
    assert body_on["promptwire"] == {"conjugate": {"transform": "leet"}}
    assert "promptwire" not in body_off and body_on["messages"] == body_off["messages"]


def test_config_allows_leet_for_anonymous_with_the_audit_path(tmp_path: Path) -> None:
    cfg = json.loads(conjugate_audit.gateway_config(tmp_path / "a.jsonl"))
    assert cfg["stages"]["conjugate"] == {"audit_path": str(tmp_path / "a.jsonl"), "allow": {"anonymous": ["leet"]}}
    assert cfg["default_stages"][0]["enabled"] is False


def test_plan_rotates_targets_and_analysis_takes_medians() -> None:
    plan = conjugate_audit.make_plan(["off", "on"], [1, 32], rounds=2, quick=True, stream=False)
    measured = [p for p in plan if not p.get("warmup")]
    assert [p["target"] for p in measured] == ["off", "on", "off", "on", "on", "off", "on", "off"]

    def run(target: str, c: int, n: int, s: float) -> dict[str, object]:
        return {"target": target, "concurrency": c, "latency_ms": [1.0] * n, "elapsed_s": s, "errors": 0,
                "cpu_s": n * 0.001}

    raw = [run("off", 1, 100, 1.0), run("off", 1, 300, 1.0), run("on", 1, 50, 1.0), run("on", 1, 150, 1.0)]
    [row] = conjugate_audit.analyse(raw, ["off", "on"], [1])
    assert row["off"]["rps"] == 200 and row["on"]["rps"] == 100 and row["on_off"] == 0.5
    assert row["on"]["cpu_ms_per_request"] == 1.0
    assert "| 1 | 200 |" in conjugate_audit.render([row], ["off", "on"])
