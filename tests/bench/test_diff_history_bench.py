"""bench/diff_history.py: its traces are valid agent histories and its restated peers behave as theirs do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is a folder of scripts, not a package

import diff_history as bench  # noqa: E402

from compressors.diff_history import condense_messages  # noqa: E402


@pytest.mark.parametrize("trace", list(bench.TRACES))
def test_traces_are_seeded_valid_tool_histories(trace: str) -> None:
    msgs = bench.TRACES[trace](32, 0)
    assert msgs == bench.TRACES[trace](32, 0) and msgs != bench.TRACES[trace](32, 1)
    calls = [c["id"] for m in msgs if m["role"] == "assistant" for c in m["tool_calls"]]
    answers = [m["tool_call_id"] for m in msgs if m["role"] == "tool"]
    assert calls == answers and len(answers) == 32
    condense_messages(msgs)  # every tool message matches a call (it would raise otherwise)


def test_openhands_masking_keeps_observations_in_the_last_events() -> None:
    msgs = bench.grid_trace(8, 0)  # events: the user task + 16 messages
    out = bench.openhands_mask(msgs, attention_window=5)
    masked = [i for i, m in enumerate(out) if m["content"] == "<MASKED>"]
    assert masked == [i for i in range(1, len(msgs)) if msgs[i]["role"] == "tool" and i - 1 < 17 - 5]
    assert all(out[i] is msgs[i] for i in range(len(msgs)) if i not in masked)


def test_swe_agent_keeps_the_first_and_the_last_n_observations() -> None:
    msgs = bench.edit_trace(9, 0)
    out = bench.swe_last_n(msgs, n=5)
    tools = [i for i, m in enumerate(msgs) if m["role"] == "tool"]
    elided = tools[:-5]  # the task (the first observation) stays, and the last 5 outputs
    for i in tools:
        if i in elided:
            assert out[i]["content"] == f"Old environment output: ({len(msgs[i]['content'].splitlines())} lines omitted)"
        else:
            assert out[i] is msgs[i]
    assert out[1] is msgs[1]


def test_recoverable_fractions() -> None:
    msgs = bench.grid_small_trace(16, 0)
    rows = bench.run_methods(msgs)
    assert rows["full"]["recoverable"] == rows["diff_history"]["recoverable"] == 1.0
    assert rows["diff_history_short"]["recoverable"] == 1.0
    assert 0 < rows["openhands_mask"]["recoverable"] < rows["swe_last_n"]["recoverable"] < 1
    assert rows["openhands_mask"]["tokens"] < rows["full"]["tokens"]
