"""condense_messages: tool outputs grouped per tool, window placeholders, budget, min_chars, errors."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from compressors.diff_history import (
    BudgetError,
    DiffHistoryError,
    condense_messages,
    diff,
    looks_like_diff,
    message_text,
    normalise,
    placeholder_text,
)


def call(cid: str, name: str, args: str = "{}") -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def grid(row: int) -> str:
    """A 12-row map with the agent on ``row``; each step changes two rows."""
    rows = ["#" + ("@" if r == row else ".") + "." * 20 + "#" for r in range(12)]
    return "\n".join([*rows, "You see a closed door to the south.", f"step {row}"])


def conversation(n: int, tools: tuple[str, ...] = ("look", "status")) -> list[dict[str, Any]]:
    """system + user, then n turns: one assistant call per turn, the tools taking turns."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are an agent."},
        {"role": "user", "content": "Walk down."},
    ]
    for k in range(n):
        tool = tools[k % len(tools)]
        cid = f"call_{k}"
        msgs.append({"role": "assistant", "content": None, "tool_calls": [call(cid, tool)]})
        out = grid(k) if tool == "look" else f"hp: 10\nmana: {k}\nturn: {k}\nstatus ok"
        msgs.append({"role": "tool", "tool_call_id": cid, "content": out})
    return msgs


def test_groups_per_tool_first_full_later_diffs() -> None:
    msgs = conversation(6)
    snapshot = copy.deepcopy(msgs)
    res = condense_messages(msgs)
    assert msgs == snapshot  # input untouched
    tool_idx = [i for i, m in enumerate(msgs) if m["role"] == "tool"]
    looks, statuses = tool_idx[0::2], tool_idx[1::2]
    for idxs in (looks, statuses):
        assert res.messages[idxs[0]] is msgs[idxs[0]]  # each group's first output stays as it is
        for prev, cur in itertools.pairwise(idxs):
            assert res.messages[cur]["content"] == diff(msgs[prev]["content"], msgs[cur]["content"])
            assert res.messages[cur]["tool_call_id"] == msgs[cur]["tool_call_id"]
    assert [o.group for o in res.observations] == ["look", "status"] * 3
    assert res.stats.observations == 6 and res.stats.observations_diffed == 4 and res.stats.placeholders == 0
    assert res.stats.tokens_after < res.stats.tokens_before
    # every non-observation message is the same object
    assert all(res.messages[i] is msgs[i] for i in range(len(msgs)) if msgs[i]["role"] != "tool")
    assert res.recover() == {
        i: msgs[i]["content"] if i in (looks[0], statuses[0]) else normalise(msgs[i]["content"])
        for i in tool_idx
    }


def test_window_turns_older_outputs_into_one_line_placeholders() -> None:
    msgs = conversation(8)
    res = condense_messages(msgs, window=2)
    looks = [i for i, m in enumerate(msgs) if m["role"] == "tool"][0::2]  # 4 look outputs
    kinds = {o.index: o.kind for o in res.observations}
    assert [kinds[i] for i in looks] == ["placeholder", "placeholder", "full", "diff"]
    assert res.messages[looks[0]]["content"] == placeholder_text("look", msgs[looks[0]]["content"])
    assert res.messages[looks[0]]["content"] == "[earlier look output omitted: 14 lines]"
    assert "\n" not in res.messages[looks[1]]["content"]
    assert res.messages[looks[2]] is msgs[looks[2]]  # the new oldest is the full anchor
    assert res.messages[looks[3]]["content"] == diff(msgs[looks[2]]["content"], msgs[looks[3]]["content"])
    assert res.stats.placeholders == 4 and res.stats.observations_diffed == 2
    # tool calls stay answered: every assistant call id still has its tool message right after
    ids = [m["tool_call_id"] for m in res.messages if m["role"] == "tool"]
    assert ids == [f"call_{k}" for k in range(8)]


def test_budget_drops_oldest_observations_first_across_groups() -> None:
    msgs = conversation(8)
    count = len  # one token per character
    unbounded = condense_messages(msgs, count_tokens=count)
    budget = unbounded.stats.tokens_after - 40
    res = condense_messages(msgs, budget_tokens=budget, count_tokens=count)
    assert res.stats.tokens_after <= budget
    assert res.stats.tokens_after == sum(count(m["content"] or "") for m in res.messages)
    kinds = [o.kind for o in res.observations]
    first_kept = kinds.index(next(k for k in kinds if k != "placeholder"))
    assert all(k == "placeholder" for k in kinds[:first_kept])  # oldest first, in message order
    assert all(k != "placeholder" for k in kinds[first_kept:])
    for group in ("look", "status"):  # each group's oldest survivor is its full anchor
        survivors = [o for o in res.observations if o.group == group and o.kind != "placeholder"]
        assert survivors[0].kind == "full" and all(o.kind == "diff" for o in survivors[1:])
    rec = res.recover()
    assert all(rec[o.index] is None for o in res.observations if o.kind == "placeholder")


def test_budget_too_small_for_the_last_observation() -> None:
    msgs = conversation(4)
    count = len
    others = sum(count(m["content"] or "") for m in msgs if m["role"] != "tool")
    last = msgs[-1]["content"]
    floor = condense_messages(msgs, window=1, count_tokens=count)  # what remains at best
    assert floor.stats.tokens_after > others + count(last)  # placeholders of earlier outputs
    with pytest.raises(BudgetError) as e:
        condense_messages(msgs, budget_tokens=others, count_tokens=count)
    assert e.value.param == "budget_tokens"
    ok = condense_messages(msgs, budget_tokens=e.value.needed, count_tokens=count)
    assert ok.stats.tokens_after <= e.value.needed
    assert ok.observations[-1].kind == "full"  # the last one alone, in full


def test_min_chars_leaves_short_outputs_alone_but_keeps_the_chain() -> None:
    msgs = conversation(6, tools=("look",))
    msgs[5]["content"] = "ok"  # the second look output is short
    res = condense_messages(msgs, min_chars=10)
    kinds = [o.kind for o in res.observations]
    assert kinds == ["full", "kept", "diff", "diff", "diff", "diff"]
    assert res.messages[5] is msgs[5]
    assert res.messages[7]["content"] == diff("ok", msgs[7]["content"])  # diffed against the short one
    assert set(res.recover().values()) >= {"ok"}


def test_content_parts_text_handled_others_left_in_place() -> None:
    msgs = conversation(2, tools=("look",))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    first, second = grid(0), grid(1)
    msgs[3]["content"] = [{"type": "text", "text": first}]
    msgs[5]["content"] = [{"type": "text", "text": second[:10]}, image, {"type": "text", "text": second[11:]}]
    res = condense_messages(msgs, roles=["tool"])
    parts = res.messages[5]["content"]
    assert parts[1] is image and len(parts) == 2
    assert parts[0]["text"] == diff(first, second[:10] + "\n" + second[11:])
    assert msgs[5]["content"][0]["text"] == second[:10]  # the caller's parts are not mutated


def test_user_role_observations_group_by_role() -> None:
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "screen:\nA\nB\nC"},
        {"role": "assistant", "content": "press x"},
        {"role": "user", "content": "screen:\nA\nX\nC"},
    ]
    res = condense_messages(msgs, roles=["user"])
    assert res.messages[3]["content"] == "@@ -3 +3 @@\n-B\n+X"
    assert [o.group for o in res.observations] == ["user", "user"]


def test_tool_message_with_no_matching_call() -> None:
    msgs = conversation(2)
    msgs[5]["tool_call_id"] = "call_nope"
    with pytest.raises(DiffHistoryError) as e:
        condense_messages(msgs)
    assert e.value.param == "messages[5].tool_call_id"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (None, "messages[3].content"),
        (42, "messages[3].content"),
        ({"text": "x"}, "messages[3].content"),
        ([{"type": "image_url", "image_url": {"url": "x"}}], "messages[3].content"),
        (["plain string part"], "messages[3].content[0]"),
        ([{"type": "text", "text": 5}], "messages[3].content[0].text"),
    ],
)
def test_observation_that_is_not_text(content: Any, param: str) -> None:
    msgs = conversation(1)
    msgs[3]["content"] = content
    with pytest.raises(DiffHistoryError) as e:
        condense_messages(msgs)
    assert e.value.param == param


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"window": 0}, "window"),
        ({"window": -2}, "window"),
        ({"budget_tokens": 0}, "budget_tokens"),
        ({"roles": []}, "roles"),
        ({"roles": "tool"}, "roles"),
        ({"roles": ["tool", ""]}, "roles[1]"),
        ({"min_chars": -1}, "min_chars"),
    ],
)
def test_bad_options_name_the_parameter(kw: dict[str, Any], param: str) -> None:
    with pytest.raises(DiffHistoryError) as e:
        condense_messages(conversation(2), **kw)
    assert e.value.param == param


def test_malformed_tool_call_is_named() -> None:
    msgs = conversation(1)
    msgs[2]["tool_calls"] = [{"id": "call_0", "type": "function"}]
    with pytest.raises(DiffHistoryError) as e:
        condense_messages(msgs)
    assert e.value.param == "messages[2].tool_calls[0]"


def test_no_observations_returns_messages_unchanged() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    res = condense_messages(msgs)
    assert res.messages == msgs and res.messages[0] is msgs[0]
    assert res.stats.tokens_before == res.stats.tokens_after and res.stats.observations == 0


def test_prefer_shorter_keeps_outputs_whose_diff_would_be_longer() -> None:
    msgs = conversation(6)  # look: two rows change a step; status: every line changes
    for k, i in enumerate(i for i, m in enumerate(msgs) if m["role"] == "tool"):
        if k % 2:
            msgs[i]["content"] = f"hp: {k}\nmana: {k * 3}\nturn: {k}"
    count = len
    faithful = condense_messages(msgs, count_tokens=count)
    res = condense_messages(msgs, count_tokens=count, prefer_shorter=True)
    kinds = {o.group: [x.kind for x in res.observations if x.group == o.group] for o in res.observations}
    assert kinds == {"look": ["full", "diff", "diff"], "status": ["full", "full", "full"]}
    assert res.stats.tokens_after < faithful.stats.tokens_after
    assert res.stats.observations_diffed == 2
    # a reader without the record tells diffs from full texts by their first characters
    for o in res.observations:
        assert looks_like_diff(message_text(res.messages[o.index])) == (o.kind == "diff")
    assert all(v is not None for v in res.recover().values())


def test_prefer_shorter_never_sends_a_diff_lookalike_in_full() -> None:
    msgs = conversation(2, tools=("look",))
    msgs[3]["content"] = "plain start"
    msgs[5]["content"] = "@@ -1 +1 @@ looks like a hunk"
    res = condense_messages(msgs, count_tokens=len, prefer_shorter=True)
    assert [o.kind for o in res.observations] == ["full", "diff"]
    assert res.recover()[5] == "@@ -1 +1 @@ looks like a hunk"


def test_diff_fn_is_used_for_every_diff() -> None:
    calls: list[tuple[str, str]] = []

    def recording(a: str, b: str) -> str:
        calls.append((a, b))
        return diff(a, b)

    msgs = conversation(6)
    res = condense_messages(msgs, diff_fn=recording)
    assert len(calls) == res.stats.observations_diffed == 4
    assert res.messages == condense_messages(msgs).messages
