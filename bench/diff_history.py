"""Diff history vs the agent frameworks' observation condensers: prompt tokens kept and lines recoverable.

Run (matplotlib for the PNG is in bench/.venv; bash bench/setup_env.sh builds it; without it the table
and JSON are still written):

    bench/.venv/bin/python bench/diff_history.py              # N = 8, 32, 128 steps, both traces
    bench/.venv/bin/python bench/diff_history.py --repeats 50  # more timing repeats

Traces (generated, seeded, written as OpenAI chat messages: system, user task, then per step one
assistant message with a tool call and the tool's answer):
- ``grid``: a text grid world the size of the paper's NetHack screens: tool ``move`` answers with a
  message line, a 21x79 map and two status lines (turn counter included); ``look`` lists the visible
  objects with distances, ``inventory`` the items carried.
- ``grid_small``: the same on a 12x24 room with a one-line status: small observations where every
  step changes about a third of the lines, the case where diffs do not pay.
- ``edit``: a file-editing session on a 70-line Python module; tools ``view_file`` (numbered lines,
  SWE-agent style), ``edit_file`` (the edited window), ``run_tests`` (pytest-style report) and
  ``search_file``. Some edits insert lines, which renumbers every later line of ``view_file``.

Methods (each applied to the whole trace, as the agent would send it at its last step):
- ``full``: nothing condensed.
- ``diff_history``: ours, ``compressors.diff_history.condense_messages`` (no window), and
  ``diff_history_w5`` (window 5 per tool), and ``diff_history_short`` (``prefer_shorter=True``: an
  output whose diff would be longer than itself stays in full; not in the reference).
- ``openhands_mask``: OpenHands ``ObservationMaskingCondenser(attention_window=5)`` restated: every
  observation more than 5 events from the end becomes ``<MASKED>`` (events = every message but the
  system prompt, as OpenHands counts its event list).
- ``swe_last_n``: SWE-agent ``last_n_observations`` (n=5, polling=1) restated: the first observation
  (the task, its "instance template") stays, and every other observation but the last 5 becomes
  ``Old environment output: (N lines omitted)``.
OpenHands' LLM summarising condenser needs an LLM call per condensation and is not run here.

Measured: prompt tokens (cl100k_base over every message's content and tool-call name + arguments,
the same count for every method), the fraction of observation lines each method leaves recoverable
from the condensed messages alone (ours: by applying the diffs; a masked output recovers nothing),
and the time condensing takes on the 128-step traces: the library's diffs alone; the gateway stage's
``apply`` (diffs and the rebuilt request: what it adds to a request) cold (a history the gateway has
never seen) and warm (an agent's next turn: the earlier pairs' diffs are cached); and how long the
stage's cl100k counts for its stats take after a cold ``apply`` (a worker thread, while the upstream
works; with ``budget_tokens`` they run before the request is sent instead).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compressors.diff_history import condense_messages, message_text  # noqa: E402
from gateway.stages.condense_history import CondenseHistoryStage  # noqa: E402
from gateway.stages.condense_history import _count as _token_cache  # noqa: E402
from gateway.stages.condense_history import _diff as _diff_cache  # noqa: E402
from gateway.tokens import count_tokens  # noqa: E402
from gateway.types import ChatMessage, GatewayRequest  # noqa: E402

OUT = ROOT / "bench" / "out"
STEPS = (8, 32, 128)
Messages = list[dict[str, Any]]


# -- traces ------------------------------------------------------------------------------------------


def _call(k: int, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": f"call_{k}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def _turn(msgs: Messages, k: int, thought: str, name: str, args: Mapping[str, Any], output: str) -> None:
    msgs.append({"role": "assistant", "content": thought, "tool_calls": [_call(k, name, args)]})
    msgs.append({"role": "tool", "tool_call_id": f"call_{k}", "content": output})


def _room_trace(
    n: int,
    seed: int,
    h: int,
    w: int,
    walls: set[tuple[int, int]],
    objects: dict[tuple[int, int], str],
    render: Callable[[list[str], dict[str, Any]], str],
) -> Messages:
    """A seeded walk (mostly straight on, sometimes turning) with the tools move / look / inventory."""
    rng = random.Random(seed)
    names = {
        "k": "a brass key",
        "G": "the goal flag",
        "+": "a door",
        "B": "a wooden box",
        "$": "gold coins",
        "?": "a scroll",
        "!": "a potion",
    }
    pos, hp, inventory, turn, direction = (2, 2), 14, ["a torch"], 0, "east"
    msgs: Messages = [
        {"role": "system", "content": "You control an explorer in a text grid world. Use the tools."},
        {"role": "user", "content": "Find the key, open the door and reach the goal flag (G)."},
    ]
    moves = {"north": (-1, 0), "south": (1, 0), "east": (0, 1), "west": (0, -1)}
    for k in range(n):
        tool = rng.choices(["move", "look", "inventory"], weights=[80, 14, 6])[0]
        if tool == "move":
            if rng.random() < 0.3:
                direction = rng.choice(list(moves))
            dr, dc = moves[direction]
            nxt = (pos[0] + dr, pos[1] + dc)
            turn += 1
            if nxt in walls or not (0 <= nxt[0] < h and 0 <= nxt[1] < w):
                message = f"You bump into a wall to the {direction}."
                direction = rng.choice(list(moves))
            else:
                pos = nxt
                item = objects.get(pos)
                if item in ("k", "$", "?", "!"):
                    inventory.append(names[item])
                    del objects[pos]
                    message = f"You pick up {names[item]}."
                else:
                    message = f"You move {direction}."
            rows = [
                "".join(
                    "@" if (r, c) == pos else "#" if (r, c) in walls else objects.get((r, c), ".")
                    for c in range(w)
                )
                for r in range(h)
            ]
            state = {"turn": turn, "hp": hp, "items": len(inventory), "pos": pos, "message": message}
            _turn(msgs, k, f"Moving {direction}.", "move", {"direction": direction}, render(rows, state))
        elif tool == "look":
            seen = sorted(
                (abs(r - pos[0]) + abs(c - pos[1]), names[o], r - pos[0], c - pos[1])
                for (r, c), o in objects.items()
            )
            lines = [f"You are at ({pos[0]}, {pos[1]}). You see:"]
            lines += [
                f"- {name}: {dist} steps away ({dr:+d} rows, {dc:+d} columns)" for dist, name, dr, dc in seen
            ]
            _turn(msgs, k, "Let me look around.", "look", {}, "\n".join(lines))
        else:
            lines = ["You are carrying:"] + [f"- {it}" for it in inventory] + [f"HP {hp}/14."]
            _turn(msgs, k, "Checking my inventory.", "inventory", {}, "\n".join(lines))
    return msgs


def grid_trace(n: int, seed: int = 0) -> Messages:
    """A NetHack-sized screen (the paper's setting): message line, 21x79 map, two status lines."""
    h, w = 21, 79
    walls = {(r, c) for r in range(h) for c in range(w) if r in (0, h - 1) or c in (0, w - 1)}
    walls |= (
        {(10, c) for c in range(1, 60)} | {(r, 40) for r in range(1, 8)} | {(r, 65) for r in range(12, 20)}
    )
    rng = random.Random(1234)
    objects: dict[tuple[int, int], str] = {(10, 30): "+", (18, 70): "G", (4, 12): "k"}
    for glyph in "$?!B" * 4:
        objects.setdefault((rng.randrange(1, h - 1), rng.randrange(1, w - 1)), glyph)
    objects = {p: o for p, o in objects.items() if p not in walls or o == "+"}
    walls.discard((10, 30))

    def render(rows: list[str], st: dict[str, Any]) -> str:
        return "\n".join(
            [
                st["message"],
                *rows,
                "Agent the Stripling       St:16 Dx:14 Co:17 In:9 Wi:11 Ch:8 Neutral",
                f"Dlvl:1 $:{st['items'] * 7} HP:{st['hp']}(14) Pw:4(4) AC:6 Xp:1/0 T:{st['turn']}",
            ]
        )

    return _room_trace(n, 0 if seed is None else seed, h, w, walls, objects, render)


def grid_small_trace(n: int, seed: int = 0) -> Messages:
    """A 12x24 room with a status line on top: small observations whose every step changes 4 lines."""
    h, w = 12, 24
    walls = {(r, c) for r in range(h) for c in range(w) if r in (0, h - 1) or c in (0, w - 1)}
    walls |= {(6, c) for c in range(1, 15)} | {(r, 16) for r in range(2, 6)}
    objects = {(3, 5): "k", (9, 20): "G", (6, 15): "+", (2, 10): "B", (8, 4): "B", (10, 12): "$"}
    walls.discard((6, 15))

    def render(rows: list[str], st: dict[str, Any]) -> str:
        status = f"Turn {st['turn']} | HP {st['hp']}/14 | Items {st['items']} | Position {st['pos']}"
        return "\n".join([status, *rows, st["message"]])

    return _room_trace(n, seed, h, w, walls, objects, render)


def _module_source(rng: random.Random) -> list[str]:
    """A 70-line Python module with a handful of small functions."""
    lines = [
        '"""Small arithmetic helpers used by the billing service."""',
        "",
        "from __future__ import annotations",
        "",
    ]
    for f in range(8):
        lines += [
            "",
            f"def helper_{f}(values: list[int], factor: int = {rng.randint(2, 9)}) -> int:",
            f'    """Combine values, variant {f}."""',
            "    total = 0",
            "    for v in values:",
            f"        total += v * factor - {rng.randint(0, 5)}",
            "    return total",
        ]
    return [*lines, "", "", "def main() -> None:", "    print(helper_0([1, 2, 3]))"]


def edit_trace(n: int, seed: int = 0) -> Messages:
    """A seeded view/edit/test loop on one file, SWE-agent-style tool outputs."""
    rng = random.Random(seed)
    src = _module_source(rng)
    path = "billing/helpers.py"
    tests = [
        f"tests/test_helpers.py::test_helper_{f}_{case}" for f in range(8) for case in ("basic", "empty")
    ]
    failing = set(rng.sample(tests, 7))
    msgs: Messages = [
        {
            "role": "system",
            "content": "You are a software engineer. Use the tools to inspect and edit files.",
        },
        {"role": "user", "content": f"Some tests in tests/test_helpers.py fail. Fix {path}."},
    ]

    def numbered(lo: int, hi: int) -> list[str]:
        return [f"{i + 1}:{src[i]}" for i in range(lo, min(hi, len(src)))]

    cycle = ["view_file", "edit_file", "run_tests"]
    for k in range(n):
        tool = cycle[k % 3] if rng.random() > 0.12 else "search_file"
        if tool == "view_file":
            out = [f"[File: {path} ({len(src)} lines total)]", *numbered(0, len(src))]
            _turn(msgs, k, "Let me view the file.", tool, {"path": path}, "\n".join(out))
        elif tool == "edit_file":
            at = rng.randrange(4, len(src) - 2)
            if rng.random() < 0.3:
                src.insert(at, f"    # checked: values may be empty (step {k})")
                change = "inserted"
            else:
                src[at] = src[at].replace("- ", "+ ") if "- " in src[at] else src[at] + f"  # step {k}"
                change = "replaced"
            if failing and rng.random() < 0.6:
                failing.discard(sorted(failing)[0])
            out = [
                f"File updated ({change} line {at + 1}). Edited window:",
                *numbered(max(0, at - 5), at + 6),
            ]
            _turn(
                msgs,
                k,
                f"I'll edit line {at + 1}.",
                tool,
                {"path": path, "line": at + 1, "text": src[at]},
                "\n".join(out),
            )
        elif tool == "run_tests":
            out = [
                "============================= test session starts ==============================",
                f"collected {len(tests)} items",
                "",
            ]
            out += [f"{t} {'FAILED' if t in failing else 'PASSED'}" for t in tests]
            summary = (
                f"{len(failing)} failed, {len(tests) - len(failing)} passed"
                if failing
                else f"{len(tests)} passed"
            )
            out += [
                "",
                f"========================= {summary} in 0.{rng.randint(10, 99)}s =========================",
            ]
            _turn(msgs, k, "Running the tests.", tool, {}, "\n".join(out))
        else:
            term = rng.choice(["factor", "total", "return", "values"])
            hits = [f"{i + 1}:{line}" for i, line in enumerate(src) if term in line]
            out = [f'Found {len(hits)} matches for "{term}" in {path}:', *hits]
            _turn(msgs, k, f"Searching for {term}.", tool, {"path": path, "term": term}, "\n".join(out))
    return msgs


TRACES: dict[str, Callable[[int, int], Messages]] = {
    "grid": grid_trace,
    "grid_small": grid_small_trace,
    "edit": edit_trace,
}


# -- the peers, restated -----------------------------------------------------------------------------


def openhands_mask(msgs: Messages, attention_window: int = 5) -> Messages:
    """ObservationMaskingCondenser: observations more than ``attention_window`` events back -> <MASKED>."""
    events = list(range(1, len(msgs)))  # every message but the system prompt is one event
    out = list(msgs)
    for pos, i in enumerate(events):
        if msgs[i]["role"] == "tool" and pos < len(events) - attention_window:
            out[i] = {**msgs[i], "content": "<MASKED>"}
    return out


def swe_last_n(msgs: Messages, n: int = 5, polling: int = 1) -> Messages:
    """last_n_observations: all but the first and the last n observations -> a line count."""
    obs = [i for i, m in enumerate(msgs) if m["role"] == "tool" or (m["role"] == "user" and i == 1)]
    last_removed = max(0, (len(obs) // polling) * polling - n)
    out = list(msgs)
    for i in obs[1:last_removed]:
        lines = len(msgs[i]["content"].splitlines())
        out[i] = {**msgs[i], "content": f"Old environment output: ({lines} lines omitted)"}
    return out


# -- measures ----------------------------------------------------------------------------------------


def prompt_tokens(msgs: Sequence[Mapping[str, Any]]) -> int:
    total = 0
    for m in msgs:
        total += count_tokens(message_text(m))
        for call in m.get("tool_calls") or ():
            total += count_tokens(call["function"]["name"] + call["function"]["arguments"])
    return total


def recovered_lines(original: str, recovered: str | None) -> int:
    """Lines of ``original`` found, in order, in ``recovered`` (0 when nothing came back)."""
    if recovered is None:
        return 0
    a, b = original.splitlines(), recovered.splitlines()
    return sum(
        block.size for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    )


def recoverable(
    msgs: Messages, condensed: Sequence[Mapping[str, Any]], rebuilt: Mapping[int, str | None] | None
) -> float:
    """Fraction of the trace's tool-output lines still recoverable from ``condensed``."""
    total = got = 0
    for i, m in enumerate(msgs):
        if m["role"] != "tool":
            continue
        total += len(m["content"].splitlines())
        if rebuilt is not None:
            got += recovered_lines(m["content"], rebuilt.get(i))
        else:
            c = condensed[i]["content"]
            masked = c == "<MASKED>" or c.startswith("Old environment output:")
            got += recovered_lines(m["content"], None if masked else c)
    return got / total if total else 1.0


def run_methods(msgs: Messages) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    rows["full"] = {"tokens": prompt_tokens(msgs), "recoverable": 1.0}
    for name, window, shorter in (
        ("diff_history", None, False),
        ("diff_history_w5", 5, False),
        ("diff_history_short", None, True),
    ):
        res = condense_messages(msgs, window=window, count_tokens=count_tokens, prefer_shorter=shorter)
        rows[name] = {
            "tokens": prompt_tokens(res.messages),
            "recoverable": recoverable(msgs, res.messages, res.recover()),
        }
    for name, fn in (("openhands_mask", openhands_mask), ("swe_last_n", swe_last_n)):
        out = fn(msgs)
        rows[name] = {"tokens": prompt_tokens(out), "recoverable": recoverable(msgs, out, None)}
    return rows


def time_condense(msgs: Messages, repeats: int) -> dict[str, float]:
    """Median ms (wall and this thread's CPU) of condensing ``msgs``: the diffing alone (library, no
    token counting), and the gateway stage's ``apply`` (diffs + request rebuild; the cl100k counts for
    its stats run in a worker thread while the upstream works) cold (token-count and diff caches empty:
    a history the gateway has never seen) and warm (the agent's previous turn went through first, so
    only the newest outputs are counted and diffed). ``stats_cold``: how long after a cold ``apply``
    the counted stats are ready (wall; off the request path, unless the upstream answers sooner)."""
    stage = CondenseHistoryStage()
    opts = stage.validate({})

    def request(m: Messages) -> GatewayRequest:
        return GatewayRequest("bench", "chat", "m", tuple(ChatMessage.from_dict(x) for x in m))

    full, previous = request(msgs), request(msgs[:-2])
    loop = asyncio.new_event_loop()

    async def timed(req: GatewayRequest, clock: Callable[[], float]) -> float:
        t0 = clock()
        res = await stage.apply(req, opts)
        ms = (clock() - t0) * 1000
        if res.settle is not None:
            await res.settle  # not timed: it runs while the upstream works
        return ms

    async def settled(req: GatewayRequest) -> float:
        res = await stage.apply(req, opts)
        t0 = time.perf_counter()
        assert res.settle is not None
        await res.settle
        return (time.perf_counter() - t0) * 1000

    def sample(kind: str, clock: Callable[[], float]) -> float:
        if kind == "diff_only":
            t0 = clock()
            condense_messages(msgs, count_tokens=len)
            return (clock() - t0) * 1000
        _token_cache.cache_clear()
        _diff_cache.cache_clear()
        if kind == "stats_cold":
            return loop.run_until_complete(settled(full))
        if kind == "stage_warm":
            before = loop.run_until_complete(stage.apply(previous, opts))
            if before.settle is not None:  # its counting thread done, as an agent's previous turn would be
                loop.run_until_complete(before.settle)
        return loop.run_until_complete(timed(full, clock))

    out: dict[str, float] = {}
    try:
        for kind in ("diff_only", "stage_cold", "stage_warm", "stats_cold"):
            for clock_name, clock in (("cpu", time.thread_time), ("wall", time.perf_counter)):
                if kind == "stats_cold" and clock_name == "cpu":
                    continue  # another thread's work
                out[f"{kind}_{clock_name}_ms"] = statistics.median(
                    sample(kind, clock) for _ in range(repeats)
                )
    finally:
        loop.close()
    return out


# -- output ------------------------------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'trace':<10} {'N':>4} {'method':<18} {'tokens':>8} {'vs full':>8} {'lines recoverable':>18}")
    for trace, by_n in results["traces"].items():
        for n, rows in by_n.items():
            full = rows["full"]["tokens"]
            for name, r in rows.items():
                print(
                    f"{trace:<10} {n:>4} {name:<18} {r['tokens']:>8} {r['tokens'] / full:>7.1%} {r['recoverable']:>17.1%}"
                )
    print("\ncondensing the 128-step traces, median ms (cpu = this thread's CPU time, wall = elapsed):")
    print("  diff_only = the library's diffs alone; stage_cold / stage_warm = the gateway stage's apply (the time")
    print("  it adds to a request), caches empty / after the previous turn (an agent loop's steady state);")
    print("  stats_cold = after a cold apply, until its cl100k counts (worker thread, while the upstream works) are in")
    for trace, t in results["timing"].items():
        print(f"  {trace:<10} " + "  ".join(f"{k} {v:.2f}" for k, v in t.items()))


def save_png(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[png] matplotlib not installed (bench/requirements-diff_history.txt); no PNG written")
        return False
    traces = list(results["traces"])
    fig, axes = plt.subplots(2, len(traces), figsize=(6 * len(traces), 7), squeeze=False)
    for col, trace in enumerate(traces):
        by_n = results["traces"][trace]
        ns = [int(n) for n in by_n]
        methods = list(next(iter(by_n.values())))
        for name in methods:
            axes[0][col].plot(ns, [by_n[str(n)][name]["tokens"] for n in ns], marker="o", label=name)
            axes[1][col].plot(
                ns, [100 * by_n[str(n)][name]["recoverable"] for n in ns], marker="o", label=name
            )
        axes[0][col].set(title=f"{trace}: prompt tokens", xscale="log", yscale="log", xlabel="steps")
        axes[0][col].set_xticks(ns, [str(n) for n in ns])
        axes[1][col].set(
            title=f"{trace}: observation lines recoverable (%)", xscale="log", xlabel="steps", ylim=(0, 105)
        )
        axes[1][col].set_xticks(ns, [str(n) for n in ns])
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20, help="timing repeats (median reported)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    results: dict[str, Any] = {"steps": list(STEPS), "seed": args.seed, "traces": {}, "timing": {}}
    for trace, make in TRACES.items():
        results["traces"][trace] = {str(n): run_methods(make(n, args.seed)) for n in STEPS}
        results["timing"][trace] = time_condense(make(max(STEPS), args.seed), args.repeats)
    results["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print_table(results)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "diff_history.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"[json] {OUT / 'diff_history.json'}")
    if save_png(results, OUT / "diff_history.png"):
        print(f"[png] {OUT / 'diff_history.png'}")


if __name__ == "__main__":
    main()
