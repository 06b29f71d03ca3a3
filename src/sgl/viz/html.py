"""A self-contained HTML page that shows how each generated token came to be.

Every token is a ``<span class="tok k-KIND">`` coloured by its kind (sampled, forced by
the grammar, jump-forward, healed, corrected by backtracking); its ``title`` (shown on
hover) and the side panel give the token id, its log-probability, the model's top
alternatives and how much probability mass the grammar's mask removed, which also
shows as a red underline whose strength is that mass.

Input: the records of a trace file (``sgl.telemetry.trace``): ``generation`` records
carry tokens; ``request`` records (from the server) add endpoint, latency and
constraint. Records are grouped by ``request_id``; a request traced without tokens
shows its output text as one untraced span.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sgl.telemetry.trace import TOKEN_KINDS, RequestTrace, TokenRecord

KIND_LABELS = {
    "sampled": "sampled by the model",
    "forced": "forced by the grammar",
    "jump_forward": "jump-forward (forced text)",
    "healed": "token healing",
    "backtracked": "corrected by backtracking",
    "untraced": "no token trace",
}

_CSS = """
:root { --sampled:#dbeafe; --forced:#d1d5db; --jump_forward:#e9d5ff; --healed:#fed7aa; --backtracked:#fecaca; --untraced:#f5f5f4; }
body { font: 14px/1.5 system-ui, sans-serif; margin: 0; color: #111; background: #fff; }
header { padding: 12px 20px; border-bottom: 1px solid #ddd; position: sticky; top: 0; background: #fff; z-index: 2; }
h1 { font-size: 18px; margin: 0 0 6px; }
main { display: grid; grid-template-columns: minmax(0, 1fr) 320px; gap: 20px; padding: 16px 20px; }
.swatch { margin-right: 8px; padding: 1px 4px; border-radius: 3px; }
section.request { border: 1px solid #e5e7eb; border-radius: 6px; padding: 10px 14px; margin-bottom: 16px; }
section.request h2 { font-size: 14px; margin: 0 0 4px; font-family: ui-monospace, monospace; }
.meta { color: #555; font-size: 12px; margin-bottom: 6px; }
details pre { white-space: pre-wrap; background: #fafafa; padding: 6px; max-height: 240px; overflow: auto; font-size: 12px; }
.output { font: 14px/1.9 ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; word-break: break-word; }
.tok { border-radius: 3px; padding: 1px 0; cursor: default;
       box-shadow: inset 0 -3px 0 rgba(220, 38, 38, var(--masked, 0)); }
.tok:hover, .tok.pinned { outline: 2px solid #2563eb; }
.k-sampled { background: var(--sampled); }
.k-forced { background: var(--forced); }
.k-jump_forward { background: var(--jump_forward); }
.k-healed { background: var(--healed); }
.k-backtracked { background: var(--backtracked); text-decoration: underline wavy #b91c1c; }
.k-untraced, .k-other { background: var(--untraced); }
.nl { color: #9ca3af; }
aside { position: sticky; top: 90px; align-self: start; border: 1px solid #e5e7eb; border-radius: 6px; padding: 10px; font-size: 13px; }
aside table { width: 100%; border-collapse: collapse; font-family: ui-monospace, monospace; font-size: 12px; }
aside td { padding: 1px 4px; }
.bar { height: 8px; background: #60a5fa; border-radius: 2px; }
.counts span { margin-right: 10px; }
"""

_JS = """
(function () {
  const panel = document.getElementById('panel');
  function show(tok) {
    const top = JSON.parse(tok.dataset.top || '[]');
    let rows = '';
    for (const [text, lp] of top) {
      const p = Math.exp(lp);
      rows += '<tr><td>' + esc(JSON.stringify(text)) + '</td><td>' + lp.toFixed(3) + '</td><td style="width:40%"><div class="bar" style="width:' + (100 * p).toFixed(1) + '%"></div></td></tr>';
    }
    panel.innerHTML = '<b>' + esc(JSON.stringify(tok.dataset.text)) + '</b> <i>' + esc(tok.dataset.kind) + '</i><br>' +
      'id ' + esc(tok.dataset.id || '?') + ' · logprob ' + esc(tok.dataset.logprob || '?') +
      ' · mask removed ' + esc(tok.dataset.masked || '?') + '<table>' + rows + '</table>';
  }
  function esc(s) { return String(s).replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c])); }
  document.addEventListener('mouseover', e => { const t = e.target.closest('.tok[data-kind]'); if (t && panel) show(t); });
})();
"""


def render_trace(trace_records: Iterable[dict[str, Any] | RequestTrace], title: str = "SGL trace") -> str:
    """The HTML page (a string) for trace records (dicts from ``read_trace`` or
    ``RequestTrace`` objects)."""
    groups = _group(trace_records)
    sections = [_section(rid, group) for rid, group in groups.items()]
    counts = {k: 0 for k in TOKEN_KINDS}
    for group in groups.values():
        for tok in group["tokens"]:
            counts[tok.kind] = counts.get(tok.kind, 0) + 1
    legend = " ".join(f'<span class="swatch k-{k}">{html.escape(KIND_LABELS[k])}</span>' for k in (*TOKEN_KINDS, "untraced"))
    summary = " ".join(f"<span>{html.escape(k)}: {n}</span>" for k, n in counts.items())
    body = "\n".join(sections) or '<p class="empty">No requests in this trace.</p>'
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><div class=\"legend\">{legend}</div>"
        f"<div class=\"counts\">{len(groups)} request(s) · tokens by kind: {summary}</div></header>"
        f"<main><div id=\"requests\">{body}</div>"
        "<aside id=\"panel\">Hover a token to see its alternatives.</aside></main>"
        f"<script>{_JS}</script></body></html>\n"
    )


def _group(records: Iterable[dict[str, Any] | RequestTrace]) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for i, record in enumerate(records):
        if isinstance(record, RequestTrace):
            record = record.to_dict()
        rid = str(record.get("request_id") or f"record-{i}")
        group = groups.setdefault(rid, {"request": None, "generations": [], "tokens": []})
        if record.get("type") == "request":
            group["request"] = record
        else:
            group["generations"].append(record)
            group["tokens"].extend(TokenRecord.from_dict(t) for t in record.get("tokens") or ())
    return groups


def _section(rid: str, group: dict[str, Any]) -> str:
    request = group["request"] or {}
    generation = group["generations"][0] if group["generations"] else {}
    tokens: list[TokenRecord] = group["tokens"]
    meta = []
    if request.get("endpoint"):
        meta.append(f"endpoint {request['endpoint']}")
    constraint = request.get("constraint") or generation.get("constraint")
    if constraint:
        meta.append(f"constraint {constraint.get('kind', '?')}")
    finish = generation.get("finish_reason") or (request.get("finish_reasons") or [None])[0]
    if finish:
        meta.append(f"finish {finish}")
    if request.get("latency_s") is not None:
        meta.append(f"latency {request['latency_s'] * 1000:.0f} ms")
    if request.get("ttft_s") is not None:
        meta.append(f"TTFT {request['ttft_s'] * 1000:.0f} ms")
    if tokens:
        by_kind = Counter(t.kind for t in tokens)  # in order of first appearance
        meta.append(f"{len(tokens)} tokens (" + ", ".join(f"{n} {k}" for k, n in by_kind.items()) + ")")
    prompt = generation.get("prompt") or request.get("prompt") or ""
    details = ""
    if prompt:
        details += f"<details><summary>prompt ({len(prompt)} chars)</summary><pre>{html.escape(prompt)}</pre></details>"
    if constraint:
        value = constraint.get("value")
        shown = value if isinstance(value, str) else json.dumps(value, indent=1, ensure_ascii=False)
        details += f"<details><summary>constraint</summary><pre>{html.escape(str(shown))}</pre></details>"
    if tokens:
        output = "".join(_token_span(t, i) for i, t in enumerate(tokens))
    else:
        texts = request.get("outputs") or [generation.get("text", "")]
        output = f'<span class="tok k-untraced" title="{html.escape(KIND_LABELS["untraced"])}">{html.escape(texts[0] or "")}</span>'
    return (
        f'<section class="request" id="{html.escape(_anchor(rid))}"><h2>{html.escape(rid)}</h2>'
        f'<div class="meta">{html.escape(" · ".join(meta))}</div>{details}'
        f'<div class="output">{output}</div></section>'
    )


def _token_span(tok: TokenRecord, index: int) -> str:
    kind = tok.kind if tok.kind in TOKEN_KINDS else "other"
    attrs = {
        "class": f"tok k-{kind}",
        "title": token_title(tok, index),
        "data-kind": tok.kind,
        "data-text": tok.text,
        "data-id": "" if tok.id is None else str(tok.id),
        "data-logprob": "" if tok.logprob is None else f"{tok.logprob:.3f}",
        "data-masked": "" if tok.masked_mass is None else f"{tok.masked_mass:.1%}",
        "data-top": json.dumps([[t, round(lp, 4)] for t, lp in tok.top], ensure_ascii=False),
    }
    if tok.masked_mass:
        attrs["style"] = f"--masked:{min(1.0, 0.25 + 0.75 * tok.masked_mass):.2f}"
    attr_text = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
    return f"<span {attr_text}>{_visible(tok.text)}</span>"


def token_title(tok: TokenRecord, index: int | None = None) -> str:
    """The hover text of one token: kind, id, logprob, masked mass, top alternatives."""
    head = f"#{index} " if index is not None else ""
    lines = [f"{head}{json.dumps(tok.text, ensure_ascii=False)} — {KIND_LABELS.get(tok.kind, tok.kind)}"
             + ("" if tok.id is None else f" (id {tok.id})")]
    if tok.logprob is not None:
        lines.append(f"logprob {tok.logprob:.3f} (p = {math.exp(tok.logprob):.1%})")
    if tok.masked_mass is not None:
        lines.append(f"mask removed {tok.masked_mass:.1%} of the probability")
    if tok.top:
        alts = ", ".join(f"{json.dumps(t, ensure_ascii=False)} {lp:.2f}" for t, lp in tok.top)
        lines.append(f"top: {alts}")
    return "\n".join(lines)


def _visible(text: str) -> str:
    # newlines stay real (pre-wrap) but get a visible mark, so "\n" tokens can be hovered
    return html.escape(text).replace("\n", '<span class="nl">↵</span>\n')


def _anchor(rid: str) -> str:
    return "req-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in rid)


__all__ = ["KIND_LABELS", "render_trace", "token_title"]
