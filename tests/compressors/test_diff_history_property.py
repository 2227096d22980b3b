"""Property: apply(a, diff(a, b)) rebuilds b up to the reference's stripping, over random edits."""

from __future__ import annotations

import difflib

from hypothesis import given, settings
from hypothesis import strategies as st

from compressors.diff_history import Step, apply, diff, layout, normalise

# lines drawn from a small pool so that repeats (difflib's hard case) are common; blank lines,
# trailing whitespace, tabs and non-ASCII text (combining marks, CJK, emoji, RTL) included
POOL = [
    "",
    " ",
    "\t",
    "x = 1",
    "x = 1  ",
    "    return x\t",
    "#@..#",
    "héllo wörld",
    "日本語のテキスト",
    "🙂 done",
    "e\u0301",
    "שלום",
    "--- not a header",
    "+++ nor this",
    "@@ -1 +1 @@",
    "- minus",
    "+ plus",
]
# deterministic (the same examples every run) and no example database written into the tree
PROPS = settings(database=None, derandomize=True, deadline=None)

line = st.one_of(st.sampled_from(POOL), st.text(st.characters(blacklist_categories=["Cs"]), max_size=12))


def _join(lines: list[str], sep: str) -> str:
    return sep.join(lines)


texts = st.builds(_join, st.lists(line, max_size=25), st.sampled_from(["\n", "\r\n", "\n"]))


@st.composite
def edited(draw: st.DrawFn) -> tuple[str, str]:
    """(a, b) where b is a with random insertions, deletions, replacements and duplications."""
    a_lines = draw(st.lists(line, max_size=25))
    b_lines = list(a_lines)
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        k = draw(st.integers(0, max(0, len(b_lines) - 1)))
        if op == "insert":
            b_lines.insert(k, draw(line))
        elif b_lines and op == "delete":
            del b_lines[k]
        elif b_lines and op == "replace":
            b_lines[k] = draw(line)
        elif b_lines:
            b_lines.insert(k, b_lines[k])
    pad = st.sampled_from(["", "\n", "\n\n", "  ", "\t\n", " \r\n"])
    a = draw(pad) + "\n".join(a_lines) + draw(pad)
    b = draw(pad) + draw(st.sampled_from(["\n", "\r\n"])).join(b_lines) + draw(pad)
    return a, b


@settings(PROPS, max_examples=400)
@given(edited())
def test_apply_rebuilds_edited_text(pair: tuple[str, str]) -> None:
    a, b = pair
    d = diff(a, b)
    assert apply(a, d) == normalise(b)
    # the diff is exactly the reference's: every difflib line after the two headers
    ref = list(difflib.unified_diff(a.strip().splitlines(), b.strip().splitlines(), n=0, lineterm=""))[2:]
    assert d == "\n".join(ref)


@settings(PROPS, max_examples=300)
@given(texts, texts)
def test_apply_rebuilds_unrelated_texts(a: str, b: str) -> None:
    assert apply(a, diff(a, b)) == normalise(b)
    assert (diff(a, b) == "") == (normalise(a) == normalise(b))


@settings(PROPS, max_examples=200)
@given(texts)
def test_what_the_stripping_loses_is_only_outer_whitespace_and_break_kinds(b: str) -> None:
    # normalise(b) differs from b only by (1) whitespace stripped at both ends and (2) line breaks
    # rewritten as "\n"; nothing inside a line changes and no inner line is lost
    n = normalise(b)
    assert n.splitlines() == b.strip().splitlines()
    assert n == "\n".join(b.strip().splitlines())
    if b == b.strip() and all(
        sep not in b for sep in ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
    ):
        assert n == b  # nothing to lose: the round trip is exact


@settings(PROPS, max_examples=100)
@given(st.lists(edited(), min_size=1, max_size=6), st.integers(1, 8))
def test_layout_chain_rebuilds_every_observation_in_the_window(
    pairs: list[tuple[str, str]], window: int
) -> None:
    obs = [pairs[0][0]] + [b for _, b in pairs]
    steps = [Step(None if k == 0 else f"act {k}", o) for k, o in enumerate(obs)]
    h = layout(steps, window=window)
    kept = obs[max(0, len(obs) - window) :]
    rebuilt = h.observations()
    assert rebuilt[0] == kept[0]  # the anchor is verbatim
    assert rebuilt[1:] == [normalise(o) for o in kept[1:]]
