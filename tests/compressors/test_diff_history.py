"""diff/apply against goldens computed the reference's way, and the reference's text history layout."""

from __future__ import annotations

import difflib

import pytest

from compressors.diff_history import (
    BudgetError,
    DiffHistoryError,
    PatchError,
    Step,
    apply,
    diff,
    layout,
    normalise,
)

# (name, a, b, expected diff): expected values were produced with difflib.unified_diff exactly as the
# reference's utils.get_diff calls it (strip + splitlines, n=0, fromfile/tofile, lineterm="", the
# first two output lines dropped, joined with "\n") and pasted here as literals.
GOLDEN = [
    ("identical", "a\nb\n", "a\nb\n", ""),
    ("changed_line", "alpha\nbeta\ngamma", "alpha\nBETA\ngamma", "@@ -2 +2 @@\n-beta\n+BETA"),
    ("insert_start", "b\nc", "a\nb\nc", "@@ -0,0 +1 @@\n+a"),
    ("insert_middle", "a\nc", "a\nb\nc", "@@ -1,0 +2 @@\n+b"),
    ("append_end", "a\nb", "a\nb\nc\nd", "@@ -2,0 +3,2 @@\n+c\n+d"),
    ("delete", "a\nb\nc\nd", "a\nd", "@@ -2,2 +1,0 @@\n-b\n-c"),
    ("from_empty", "", "x\ny", "@@ -0,0 +1,2 @@\n+x\n+y"),
    ("to_empty", "x\ny", "   \n", "@@ -1,2 +0,0 @@\n-x\n-y"),
    ("strip_only", "\n\n  a\nb  \n\n", "a\nb", ""),
    ("crlf", "a\r\nb\r\n", "a\nb", ""),
    ("repeated", "x\nx\nx\ny\nx", "x\ny\nx\nx\nx", "@@ -0,0 +1,2 @@\n+x\n+y\n@@ -4,2 +5,0 @@\n-y\n-x"),
    (
        "header_like",
        "--- a\n+++ b",
        "+++ b\n--- a\n@@ -1 +1 @@",
        "@@ -0,0 +1 @@\n++++ b\n@@ -2 +3 @@\n-+++ b\n+@@ -1 +1 @@",
    ),
    ("blank_lines", "a\n\n\nb", "a\n\nb\n\n\nc", "@@ -2,0 +3 @@\n+b\n@@ -4 +5,2 @@\n-b\n+\n+c"),
    (
        "unicode",
        "héllo wörld\n日本語\n🙂",
        "héllo wörld\n日本語テキスト\n🙂\n\u2028tail",
        "@@ -2 +2 @@\n-日本語\n+日本語テキスト\n@@ -3,0 +4,2 @@\n+\n+tail",
    ),
    (
        "grid",
        "#####\n#@..#\n#..K#\n#####\nYou see a key.",
        "#####\n#.@.#\n#..K#\n#####\nYou see a key.",
        "@@ -2 +2 @@\n-#@..#\n+#.@.#",
    ),
]


@pytest.mark.parametrize(("name", "a", "b", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_diff_matches_reference_goldens(name: str, a: str, b: str, expected: str) -> None:
    assert diff(a, b) == expected
    assert apply(a, expected) == normalise(b)


def _reference_get_diff(a: str, b: str, n: int = 0) -> str:
    """The reference's procedure restated: every unified_diff line after the first two."""
    lines = difflib.unified_diff(
        a.strip().splitlines(), b.strip().splitlines(), n=n, fromfile="file1", tofile="file2", lineterm=""
    )
    return "\n".join(line for i, line in enumerate(lines) if i > 1)


def test_diff_with_context_lines_matches_reference() -> None:
    a, b = "a\nb\nc\nd\ne", "a\nB\nc\nd\nE"
    assert diff(a, b, n=1) == "@@ -1,5 +1,5 @@\n a\n-b\n+B\n c\n d\n-e\n+E"
    assert diff(a, b, n=1) == _reference_get_diff(a, b, n=1)
    assert apply(a, diff(a, b, n=1)) == b


def test_header_lines_are_dropped_by_position_not_prefix() -> None:
    # a content line "--- x" removed shows as "---- x"; a prefix filter would lose it
    d = diff("--- x\nkeep", "keep")
    assert d == "@@ -1 +0,0 @@\n---- x"
    assert apply("--- x\nkeep", d) == "keep"


def test_normalise_states_what_is_lost() -> None:
    assert normalise("\n  indented first\r\ninner  \r\n\n last \n\n") == "indented first\ninner  \n\n last"
    assert normalise("a\u2028b\x85c\x0cd") == "a\nb\nc\nd"
    assert normalise("\u3000\xa0x\xa0") == "x"


def test_apply_rejects_a_diff_made_from_another_text() -> None:
    d = diff("a\nb\nc", "a\nX\nc")
    with pytest.raises(PatchError) as e:
        apply("a\nY\nc", d, param="messages[3].content")
    assert e.value.param == "messages[3].content"
    assert isinstance(e.value, DiffHistoryError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "bad",
    [
        "not a hunk",
        "@@ -2 +2 @@\n-b",  # header says one added line, none follows
        "@@ -2 +2 @@\n-b\n+B\n+extra",  # more lines than the header says
        "@@ -9 +9 @@\n-b\n+B",  # past the end
        "@@ -2 +2 @@\n*b\n+B",  # unknown line tag
        "@@ -3 +3 @@\n-c\n+C\n@@ -1 +1 @@\n-a\n+A",  # hunks out of order
        "@@ -2 +5 @@\n-b\n+B",  # new line number inconsistent
    ],
)
def test_apply_rejects_malformed_diffs(bad: str) -> None:
    with pytest.raises(PatchError):
        apply("a\nb\nc", bad)


def test_apply_empty_diff_gives_normalised_text() -> None:
    assert apply("  a\r\nb\n", "") == "a\nb"


# --- the reference's text layout ---------------------------------------------------------------------

STEPS = [
    Step(None, "#####\n#@..#\n#...#\n#####"),
    Step("east", "#####\n#.@.#\n#...#\n#####"),
    Step("south", "#####\n#...#\n#.@.#\n#####"),
    Step("east", "#####\n#...#\n#..@#\n#####"),
]


def test_layout_renders_like_the_reference_rollout() -> None:
    h = layout(STEPS, instruction="Reach the corner. ")
    # diffs computed with difflib the reference's way; layout as its rollout builds the prompt:
    # instruction.strip() + "\n\n" + anchor.strip() + "\n", then per step
    # "\n<|action|>" + action and "\n<|observation|>\n" + get_diff(prev, cur); then "\n<|action|>"
    expected = (
        "Reach the corner.\n\n#####\n#@..#\n#...#\n#####\n"
        "\n<|action|>east\n<|observation|>\n@@ -2 +2 @@\n-#@..#\n+#.@.#"
        "\n<|action|>south\n<|observation|>\n@@ -1,0 +2 @@\n+#...#\n@@ -3 +3,0 @@\n-#...#"
        "\n<|action|>east\n<|observation|>\n@@ -3 +3 @@\n-#.@.#\n+#..@#"
        "\n<|action|>"
    )
    assert h.render() == expected
    assert h.dropped == 0
    assert h.observations() == [normalise(s.observation) for s in STEPS]


def test_layout_window_slides_and_new_oldest_is_the_anchor() -> None:
    h = layout(STEPS, window=2)  # the reference's history=1
    assert [it.index for it in h.items] == [2, 3]
    assert h.items[0].full and h.items[0].text == STEPS[2].observation
    assert h.items[1].text == diff(STEPS[2].observation, STEPS[3].observation)
    assert h.render(next_action=False) == (
        "#####\n#...#\n#.@.#\n#####\n\n<|action|>east\n<|observation|>\n@@ -3 +3 @@\n-#.@.#\n+#..@#"
    )
    assert h.dropped == 2


def test_layout_budget_drops_oldest_steps_first() -> None:
    count = len  # one token per character keeps the arithmetic visible
    full = len(layout(STEPS).render())
    h = layout(STEPS, budget_tokens=full - 1, count_tokens=count)
    assert h.dropped >= 1
    assert count(h.render()) <= full - 1
    assert h.items[0].full and h.items[-1].index == 3
    just_last = len(layout(STEPS, window=1).render())
    assert layout(STEPS, budget_tokens=just_last, count_tokens=count).dropped == 3
    with pytest.raises(BudgetError) as e:
        layout(STEPS, budget_tokens=just_last - 1, count_tokens=count)
    assert e.value.param == "budget_tokens" and e.value.needed == just_last


@pytest.mark.parametrize("window", [0, -1, True, 1.5, "3"])
def test_layout_rejects_bad_window(window: object) -> None:
    with pytest.raises(DiffHistoryError) as e:
        layout(STEPS, window=window)  # type: ignore[arg-type]
    assert e.value.param == "window"


def test_layout_rejects_non_text_observation() -> None:
    with pytest.raises(DiffHistoryError) as e:
        layout([Step(None, "a"), Step("x", 3)])  # type: ignore[arg-type]
    assert e.value.param == "steps[1].observation"
