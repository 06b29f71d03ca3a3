"""Compile deadlines; the constraint errors themselves live in ``sgl.errors``."""

from __future__ import annotations

import threading
import time

from sgl.errors import CompileBudgetExceeded, ConstraintError

__all__ = ["CompileBudgetExceeded", "ConstraintError", "check_deadline", "line_col", "set_deadline"]


_local = threading.local()


def set_deadline(deadline: float | None) -> None:
    """Give this thread's compile a ``time.monotonic()`` deadline (None: none)."""
    _local.deadline = deadline


def check_deadline(what: str = "compiling the constraint") -> None:
    """Raise ``CompileBudgetExceeded`` if this thread's compile is past its deadline.

    Long loops of the frontends and the automaton construction call it, so a compile
    budget in seconds holds inside them too, not only between phases.
    """
    deadline = getattr(_local, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise CompileBudgetExceeded(f"{what} ran over its time budget (budget: seconds)", budget="seconds")


def line_col(text: str, pos: int) -> str:
    """Where offset ``pos`` of ``text`` is, as error locations say it: ``line L, column C``
    (both from 1)."""
    line, line_start = text.count("\n", 0, pos) + 1, text.rfind("\n", 0, pos) + 1
    return f"line {line}, column {pos - line_start + 1}"
