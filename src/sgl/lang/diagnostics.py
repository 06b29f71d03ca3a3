"""Compiler diagnostics: ``file:line:col: severity: message``, the source line, a caret."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Diagnostic:
    """One finding; ``line`` and ``col`` are 1-based (``col`` counts characters)."""

    severity: str  # "error" | "warning"
    message: str
    file: str
    line: int
    col: int
    source_line: str = ""
    end_col: int | None = None  # exclusive, same line; draws ``^~~~``

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def header(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"

    def format(self) -> str:
        """The header, then the source line and a caret under the column."""
        if not self.source_line:
            return self.header()
        line = self.source_line.rstrip("\n")
        # keep tabs so the caret lines up with the source as a terminal shows it
        pad = "".join(ch if ch == "\t" else " " for ch in line[: self.col - 1])
        width = 1
        if self.end_col is not None and self.end_col > self.col:
            width = min(self.end_col, len(line) + 1) - self.col
        return f"{self.header()}\n    {line}\n    {pad}^{'~' * max(0, width - 1)}"

    def __str__(self) -> str:
        return self.format()


def format_all(diagnostics: list[Diagnostic]) -> str:
    """All diagnostics, one block each, and a count line."""
    if not diagnostics:
        return ""
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    summary = f"{errors} error{'s' if errors != 1 else ''}"
    if warnings:
        summary += f", {warnings} warning{'s' if warnings != 1 else ''}"
    return "\n".join(d.format() for d in diagnostics) + f"\n{summary}"
