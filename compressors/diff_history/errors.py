"""Input errors of the diff-history library: ValueError subclasses naming the offending parameter."""

from __future__ import annotations

__all__ = ["BudgetError", "DiffHistoryError", "PatchError"]


class DiffHistoryError(ValueError):
    """Bad diff-history input; ``param`` names the offending parameter (``window``,
    ``messages[3].tool_call_id``, ...), which the gateway maps to a 400 / INVALID_ARGUMENT."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


class PatchError(DiffHistoryError):
    """A diff that does not apply to the text it was given (malformed, or made from another text)."""


class BudgetError(DiffHistoryError):
    """The token budget cannot hold even the last observation (``needed`` says what would fit)."""

    def __init__(self, param: str, message: str, needed: int) -> None:
        super().__init__(param, message)
        self.needed = needed
