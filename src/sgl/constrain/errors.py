"""Errors raised while compiling or running a constraint."""

from __future__ import annotations


class ConstraintError(ValueError):
    """A constraint (regex, JSON Schema, grammar, choices) that cannot be honoured.

    ``location`` says where: ``"line 3, column 7"`` for grammar text, a JSON pointer
    such as ``"/properties/age/minimum"`` for a schema, a character offset for a regex.
    """

    def __init__(self, message: str, location: str | None = None, *, keyword: str | None = None):
        self.message = message
        self.location = location
        self.keyword = keyword
        super().__init__(f"{message} (at {location})" if location else message)


class CompileBudgetExceeded(ConstraintError):
    """Compilation would exceed its state or time budget (e.g. ``(x{1000}){1000}``)."""
