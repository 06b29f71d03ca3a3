"""The ``sgl`` command: ``sgl run PROGRAM`` and ``sgl check PROGRAM``.

Each subcommand is a ``(configure, handler)`` pair in ``COMMANDS``; others (``serve``,
``viz``) plug in the same way.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sgl.backends.factory import add_backend_arguments, load_program, make_backend


# --- sgl check ------------------------------------------------------------------
def configure_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("program", help="an SGL program (.py or .sgl)")
    p.add_argument("--ir", action="store_true", help="also print the program's IR")
    p.add_argument("--fn", help="check only this function")


def cmd_check(args: argparse.Namespace) -> int:
    from sgl.lang.compiler import compile as compile_program

    path = Path(args.program)
    if not path.is_file():
        print(f"sgl check: no such file: {path}", file=sys.stderr)
        return 2
    compiled = compile_program(path, name=args.fn)
    if args.ir and compiled.ir.functions:
        print(compiled.pretty(), end="")
    if compiled.diagnostics:
        print(compiled.format(), file=sys.stderr)
    return 0 if compiled.ok else 1


# --- sgl run --------------------------------------------------------------------
def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("program", help="an SGL program (.py or .sgl)")
    p.add_argument("--fn", help="the @sgl.function to run (needed if the file has several)")
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="K=V",
        help="a program argument; V is JSON if it parses, else a string",
    )
    p.add_argument(
        "--batch",
        metavar="ARGS.jsonl",
        help="one JSON object of arguments per line; runs them all with run_batch",
    )
    p.add_argument("--out", metavar="RESULTS.jsonl", help="write results here (default: stdout)")
    add_backend_arguments(p)
    p.add_argument("--threads", default="auto", help="run_batch threads (default: auto)")
    p.add_argument("--temperature", type=float, help="default temperature for every gen")
    p.add_argument("--max-new-tokens", type=int, help="default max_tokens for every gen")
    p.add_argument("--seed", type=int, help="default seed for every gen")
    p.add_argument("--timeout", type=float, help="seconds allowed per run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar for --batch")


def cmd_run(args: argparse.Namespace) -> int:
    from sgl.errors import SglError
    from sgl.runtime.function import SglFunction

    path = Path(args.program)
    if not path.is_file():
        print(f"sgl run: no such file: {path}", file=sys.stderr)
        return 2
    module = load_program(path)
    fn = pick_function(module, args.fn, path)
    if not isinstance(fn, SglFunction):
        return 2
    backend = make_backend(args)
    given = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        fn.check()
        items = read_jsonl(Path(args.batch)) if args.batch else [parse_args(args.arg)]
        threads = 1 if not args.batch else args.threads if args.threads == "auto" else int(args.threads)
        start = time.perf_counter()
        states = fn.run_batch(items, backend=backend, num_threads=threads, timeout=args.timeout,
                              progress_bar=bool(args.batch) and not args.no_progress, **options)
        elapsed = time.perf_counter() - start
    except SglError as e:
        print(f"sgl run: {e}", file=sys.stderr)
        return 1
    failed = write_results(states, items, args.out)
    if args.batch or failed:
        print(
            f"sgl run: {len(states) - failed}/{len(states)} runs ok in {elapsed:.1f} s",
            file=sys.stderr,
        )
    return 1 if failed else 0


def pick_function(module: Any, name: str | None, path: Path) -> Any:
    from sgl.runtime.function import SglFunction

    found = {k: v for k, v in vars(module).items() if isinstance(v, SglFunction)}
    if name is not None:
        if name not in found:
            print(
                f"sgl run: no @sgl.function named {name!r} in {path} (found: {', '.join(found) or 'none'})",
                file=sys.stderr,
            )
            return None
        return found[name]
    if len(found) != 1:
        what = (
            "no @sgl.function"
            if not found
            else f"several SGL functions ({', '.join(found)}); pick one with --fn"
        )
        print(f"sgl run: {what} in {path}", file=sys.stderr)
        return None
    return next(iter(found.values()))


def parse_args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"sgl run: --arg wants K=V, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    items = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            item = json.loads(line)
            if not isinstance(item, dict):
                raise SystemExit(
                    f"sgl run: {path}:{i}: each line must be a JSON object of arguments"
                )
            items.append(item)
    return items


def result_record(state: Any, args: dict[str, Any]) -> dict[str, Any]:
    """One JSON line: arguments, variables, text, error."""
    error = state.error()
    return {
        "args": args,
        "variables": state.variables(),
        "text": state.text(),
        "error": None if error is None else f"{type(error).__name__}: {error}",
    }


def write_results(states: list[Any], items: list[dict[str, Any]], out: str | None) -> int:
    failed = 0
    stream = open(out, "w", encoding="utf-8") if out else sys.stdout  # noqa: SIM115 - closed below
    try:
        for state, args in zip(states, items, strict=True):
            record = result_record(state, args)
            failed += record["error"] is not None
            stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    finally:
        if out:
            stream.close()
    return failed


# --- entry point ----------------------------------------------------------------
COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "run": ("run an SGL program once or over a batch", configure_run, cmd_run),
    "check": ("check an SGL program without running it", configure_check, cmd_check),
}


def _lazy_command(module: str, configure: str, handler: str):
    """Subcommands whose modules import heavy packages load them only when chosen."""

    def configure_fn(parser: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(module), configure)(parser)

    def handler_fn(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), handler)(args) or 0

    return configure_fn, handler_fn


COMMANDS["serve"] = ("serve an OpenAI-compatible HTTP API", *_lazy_command("sgl.server.main", "add_serve_arguments", "serve"))
COMMANDS["viz"] = ("render a generation trace as HTML", *_lazy_command("sgl.viz.main", "add_viz_arguments", "viz"))


def build_parser() -> argparse.ArgumentParser:
    from sgl._version import __version__

    parser = argparse.ArgumentParser(prog="sgl", description="SGL: structured generation for LLMs", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"sgl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)  # no prefix matching
        configure(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sgl._extras import MissingExtraError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except MissingExtraError as e:  # a part not installed: the message says what to install
        print(f"sgl {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
