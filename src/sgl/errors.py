"""SGL's errors: one hierarchy rooted at ``SglError``, shared by every layer.

A bottom layer (it imports nothing from ``sgl``). A running program's errors keep
``.state``, the partial ProgramState, so the text generated so far is never lost.
"""

from __future__ import annotations

from typing import Any


class SglError(Exception):
    """Base of SGL's errors. ``state`` holds the program's text and variables so far."""

    def __init__(self, message: str, state: Any = None):
        super().__init__(message)
        self.message = message
        self.state = state


class ConstraintError(SglError, ValueError):
    """A constraint (regex, JSON Schema, grammar, choices) that cannot be honoured.

    ``location`` says where: ``"line 3, column 7"`` for grammar text, a JSON pointer
    such as ``"/properties/age/minimum"`` for a schema, a character offset for a regex.
    It is also a ``ValueError``, as a bad argument is.
    """

    def __init__(self, message: str, location: str | None = None, *, keyword: str | None = None):
        super().__init__(f"{message} (at {location})" if location else message)
        self.message = message  # without the location, which has its own field
        self.location = location
        self.keyword = keyword


class CompileBudgetExceeded(ConstraintError):
    """Compilation would exceed its state or time budget (e.g. ``(x{1000}){1000}``).

    ``budget`` names the budget when one field of ``CompileBudget`` was exceeded
    (``"choice_states"``, ``"seconds"``, ...)."""

    def __init__(self, message: str, location: str | None = None, *, keyword: str | None = None,
                 budget: str | None = None):
        super().__init__(message, location, keyword=keyword)
        self.budget = budget


class ProgramError(SglError):
    """The program is wrong: compile diagnostics, or an exception in its Python code."""

    def __init__(self, message: str, state: Any = None, diagnostics: list | None = None):
        super().__init__(message, state)
        self.diagnostics = list(diagnostics or [])


class BackendError(SglError, RuntimeError):
    """The backend (model, server) failed while serving a gen or select."""


class GenerationTimeout(SglError, TimeoutError):
    """A call or a whole run took longer than its timeout."""


__all__ = [
    "BackendError",
    "CompileBudgetExceeded",
    "ConstraintError",
    "GenerationTimeout",
    "ProgramError",
    "SglError",
]
