"""``sgl viz TRACE.jsonl -o out.html``: draw a trace file as an HTML page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_viz_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sgl viz``."""
    parser.add_argument("trace", help="a JSON-lines trace (written with SGL_TRACE=path or sgl serve --trace)")
    parser.add_argument("-o", "--output", help="the HTML file to write (default: TRACE with .html)")
    parser.add_argument("--request", action="append", default=[], metavar="ID", help="only this request id (repeatable)")
    parser.add_argument("--last", type=int, metavar="N", help="only the last N requests")
    parser.add_argument("--title", default=None, help="page title (default: the trace's file name)")


def viz(args: argparse.Namespace) -> int:
    """Render ``args.trace`` to ``args.output``; returns an exit status."""
    from sgl.telemetry.trace import read_trace

    from .html import render_trace

    path = Path(args.trace)
    if not path.is_file():
        print(f"sgl viz: no such file: {path}", file=sys.stderr)
        return 2
    try:
        records = read_trace(path)
    except ValueError as e:
        print(f"sgl viz: {e}", file=sys.stderr)
        return 1
    if args.request:
        wanted = set(args.request)
        records = [r for r in records if r.get("request_id") in wanted]
    if args.last:
        ids = list(dict.fromkeys(r.get("request_id") for r in records))[-args.last :]
        records = [r for r in records if r.get("request_id") in set(ids)]
    out = Path(args.output) if args.output else path.with_suffix(".html")
    out.write_text(render_trace(records, title=args.title or f"SGL trace: {path.name}"), encoding="utf-8")
    print(f"sgl viz: wrote {out} ({len(records)} records)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sgl viz", description="draw a trace as HTML")
    add_viz_arguments(parser)
    return viz(parser.parse_args(argv))


__all__ = ["add_viz_arguments", "main", "viz"]
