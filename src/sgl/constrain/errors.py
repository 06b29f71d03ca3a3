"""Errors raised while compiling or running a constraint."""

from __future__ import annotations

import threading
import time


class ConstraintError(ValueError):
    """A constraint (regex, JSON Schema, grammar, choices) that cannot be honoured.

    ``location`` says where: ``"line 3, column 7"`` for grammar text, a JSON pointer
    such as ``"/properties/age/minimum"`` for a schema, a character offset for a regex.
    """

    def __init__(self, message: str, location: str | None = None, *, keyword: str | None = None) -> None:
        self.message = message
        self.location = location
        self.keyword = keyword
        super().__init__(f"{message} (at {location})" if location else message)


class CompileBudgetExceeded(ConstraintError):
    """Compilation would exceed its state or time budget (e.g. ``(x{1000}){1000}``)."""


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
        raise CompileBudgetExceeded(f"{what} ran over its time budget (budget: seconds)")
