"""Errors a running program raises; each keeps ``.state``, the partial ProgramState."""

from __future__ import annotations

from typing import Any

from sgl.constrain.errors import ConstraintError


class SglError(Exception):
    """Base of the runtime's errors. ``state`` holds the text and variables so far."""

    def __init__(self, message: str, state: Any = None):
        super().__init__(message)
        self.message = message
        self.state = state


class ProgramError(SglError):
    """The program is wrong: compile diagnostics, or an exception in its Python code."""

    def __init__(self, message: str, state: Any = None, diagnostics: list | None = None):
        super().__init__(message, state)
        self.diagnostics = list(diagnostics or [])


class BackendError(SglError, RuntimeError):
    """The backend (model, server) failed while serving a gen or select."""


class GenerationTimeout(SglError, TimeoutError):
    """A call or a whole run took longer than its timeout."""


__all__ = ["BackendError", "ConstraintError", "GenerationTimeout", "ProgramError", "SglError"]
