"""The record of every repair grammar backtracking made, for terminals and browsers."""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

CONTEXT_CHARS = 40  # how much of the text before a repair the views show


@dataclass
class Correction:
    """One repair.

    ``position``: character offset in the output where the repair starts (after token
    healing). ``rejected``: the text thrown away from there on (the partial lexeme that
    healing backed over, then the model's invalid text). ``repair``: what the draft model
    wrote instead. ``candidates``: the lexemes the grammar allowed at the error, each
    "NAME example". ``kind``: "syntax" (the model wrote invalid text) or "incomplete"
    (it stopped before the text was complete).
    """

    index: int
    position: int
    rejected: str
    repair: str
    candidates: list[str] = field(default_factory=list)
    kind: str = "syntax"
    healed: str = ""
    context: str = ""
    draft_tokens: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: where, what was dropped, what replaced it."""
        what = "stopped early" if self.kind == "incomplete" else "syntax error"
        return f"#{self.index} {what} at char {self.position}: {_clip(self.rejected)!r} -> {self.repair!r}"


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


class CorrectionLog:
    """Every correction of one ``guide`` run, in order. ``str(log)`` for the terminal,
    ``log.to_html()`` for a browser or notebook (``_repr_html_``)."""

    def __init__(self) -> None:
        self.corrections: list[Correction] = []

    def add(self, **fields: Any) -> Correction:
        c = Correction(index=len(self.corrections) + 1, **fields)
        self.corrections.append(c)
        return c

    def __len__(self) -> int:
        return len(self.corrections)

    def __iter__(self) -> Iterator[Correction]:
        return iter(self.corrections)

    def __getitem__(self, i: int) -> Correction:
        return self.corrections[i]

    # -- terminal -----------------------------------------------------------------
    def format(self, color: bool = False) -> str:
        """The log as text; ``color`` adds ANSI colours (red rejected, green repair)."""
        if not self.corrections:
            return "no corrections"
        red, green, dim, reset = ("\033[31m", "\033[32m", "\033[2m", "\033[0m") if color else ("", "", "", "")
        lines = [f"{len(self.corrections)} correction(s)"]
        for c in self.corrections:
            what = "model stopped before the text was complete" if c.kind == "incomplete" else "syntax error"
            lines.append(f"#{c.index} {what} at char {c.position} ({c.seconds * 1000:.0f} ms, "
                         f"{c.draft_tokens} draft tokens)")
            ctx = c.context[-CONTEXT_CHARS:]
            lines.append(f"    text:     {dim}…{ctx!r}{reset}" if len(c.context) > CONTEXT_CHARS
                         else f"    text:     {dim}{ctx!r}{reset}")
            if c.healed:
                lines.append(f"    healed:   {c.healed!r} (partial lexeme, regenerated)")
            lines.append(f"    rejected: {red}{_clip(c.rejected, 80)!r}{reset}")
            lines.append(f"    repair:   {green}{c.repair!r}{reset}")
            if c.candidates:
                shown = ", ".join(c.candidates[:8]) + (f", … ({len(c.candidates)} in all)" if len(c.candidates) > 8 else "")
                lines.append(f"    allowed:  {shown}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format(color=False)

    def __repr__(self) -> str:
        return f"CorrectionLog({len(self.corrections)} corrections)"

    # -- HTML -----------------------------------------------------------------------
    def to_html(self, full_document: bool = False) -> str:
        """An HTML table of the corrections (a fragment, or a whole page)."""
        e = html.escape
        rows = []
        for c in self.corrections:
            ctx = c.context[-CONTEXT_CHARS:]
            cands = "".join(f"<li><code>{e(x)}</code></li>" for x in c.candidates[:20])
            more = f"<li>… {len(c.candidates) - 20} more</li>" if len(c.candidates) > 20 else ""
            healed = f'<del class="healed" title="partial lexeme, regenerated">{e(c.healed)}</del>' if c.healed else ""
            rejected = e(c.rejected[len(c.healed):])
            rows.append(
                "<tr>"
                f"<td>{c.index}</td><td>{e(c.kind)}</td><td>{c.position}</td>"
                f'<td class="text"><span class="ctx">{"…" if len(c.context) > CONTEXT_CHARS else ""}{e(ctx)}</span>'
                f'{healed}<del>{rejected}</del><ins>{e(c.repair)}</ins></td>'
                f"<td><ul>{cands}{more}</ul></td>"
                f"<td>{c.draft_tokens}</td><td>{c.seconds * 1000:.0f}</td>"
                "</tr>"
            )
        body = (
            '<table class="sgl-corrections">'
            "<thead><tr><th>#</th><th>kind</th><th>char</th><th>text (rejected / repair)</th>"
            "<th>allowed next</th><th>draft tokens</th><th>ms</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
        if not self.corrections:
            body = '<p class="sgl-corrections">no corrections</p>'
        style = (
            "<style>.sgl-corrections{border-collapse:collapse;font-family:sans-serif;font-size:13px}"
            ".sgl-corrections td,.sgl-corrections th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}"
            ".sgl-corrections .text{font-family:monospace;white-space:pre-wrap}"
            ".sgl-corrections .ctx{color:#777}.sgl-corrections del{background:#fdd;color:#900}"
            ".sgl-corrections del.healed{background:#fec}.sgl-corrections ins{background:#dfd;color:#060;"
            "text-decoration:none}.sgl-corrections ul{margin:0;padding-left:16px}</style>"
        )
        if full_document:
            return f'<!doctype html><html><head><meta charset="utf-8"><title>SGL corrections</title>{style}</head><body>{body}</body></html>'
        return style + body

    def _repr_html_(self) -> str:
        return self.to_html()
