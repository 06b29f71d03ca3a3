"""``sgl serve``: run the OpenAI-compatible server (also ``python -m sgl.server``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sgl.backends.factory import add_backend_arguments, make_backend

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sgl serve``; vLLM's and SGLang's spellings are aliases.

    ``parser`` should be made with ``allow_abbrev=False``: a misspelt flag is an error,
    not a prefix match."""
    parser.add_argument("model_pos", nargs="?", metavar="MODEL", help="the model (as vLLM's `vllm serve MODEL`); same as --model")
    add_backend_arguments(parser)  # --model, --backend and the engine's options, as sgl run
    parser.add_argument("--model-name", "--served-model-name", help="the model id clients send and /v1/models lists (default: from the model)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--api-key", default=os.environ.get("SGL_API_KEY"), help="require 'Authorization: Bearer KEY' (default: $SGL_API_KEY, else none)")
    parser.add_argument("--seed", type=int, help="seed the random generators (requests without a seed then repeat across runs)")
    parser.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask for (default: 4096)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit; larger gets 413 (default: 1 MiB)")
    parser.add_argument("--max-constraint-bytes", type=int, default=64 << 10, help="schema/regex/grammar size limit (default: 64 KiB)")
    parser.add_argument("--compile-timeout", type=float, default=10.0, help="seconds a constraint may take to compile (default: 10)")
    parser.add_argument("--compile-workers", type=int, default=2,
                        help="processes that compile constraints, killed when a compile runs past --compile-timeout; "
                             "0: compile on threads, which cannot be stopped (default: 2)")
    parser.add_argument("--read-timeout", type=float, default=30.0,
                        help="seconds a client has to send its headers, and then its body, before it is cut off (default: 30)")
    parser.add_argument("--max-connections", "--limit-concurrency", type=int, default=256,
                        help="open connections at most; more are answered 503 (default: 256)")
    parser.add_argument("--strict-schemas", action=argparse.BooleanOptionalAction, default=True,
                        help="JSON Schemas of requests that do not say 'strict' forbid undeclared keys, as with strict: true (default: on)")
    parser.add_argument("--trace", metavar="PATH", help="append per-request JSON-lines traces here (also $SGL_TRACE)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def build_backend(args: argparse.Namespace) -> Any:
    """The served backend, from ``sgl.backends.factory.make_backend`` (the factory ``sgl run`` uses):
    ``--backend`` > ``--model`` (or the positional MODEL) > the packaged default model."""
    if getattr(args, "model_pos", None):
        if args.model and args.model != args.model_pos:
            raise SystemExit(f"sgl serve: two models given: {args.model_pos!r} and --model {args.model!r}")
        args.model = args.model_pos
    try:
        return make_backend(args, default_model=True)
    except SystemExit as e:
        raise SystemExit(f"sgl serve: {e}") from None


def served_name(args: argparse.Namespace, backend: Any) -> str:
    if args.model_name:
        return args.model_name
    for attr in ("model_name", "name", "model"):  # a proxy (sgl.OpenAI) serves its upstream's id
        value = getattr(backend, attr, None)
        if isinstance(value, str) and value:
            return value
    if args.model:
        return Path(args.model).stem
    return "SmolLM2-135M-Instruct" if type(backend).__name__ == "LocalModel" else "sgl"


def serve(args: argparse.Namespace) -> int:
    """Load the backend and serve it until interrupted; returns an exit status."""
    from sgl._extras import require

    require("the SGL server (sgl serve)", "server", "fastapi", "uvicorn")
    import uvicorn

    from .app import ServerSettings, create_app

    if args.max_running < 1:  # refused before the model loads
        print("sgl serve: --max-running must be at least 1", file=sys.stderr)
        return 2
    if args.seed is not None:
        import random

        import torch

        random.seed(args.seed)
        torch.manual_seed(args.seed)
    backend = build_backend(args)
    settings = ServerSettings(
        model_name=served_name(args, backend),
        api_key=args.api_key or None,
        max_running=args.max_running,
        max_tokens_limit=args.max_tokens_limit,
        max_body_bytes=args.max_body_bytes,
        max_constraint_bytes=args.max_constraint_bytes,
        compile_timeout_s=args.compile_timeout,
        compile_workers=args.compile_workers,
        read_timeout_s=args.read_timeout,
        strict_schemas=args.strict_schemas,
        trace_path=args.trace,
    )
    app = create_app(backend, settings)
    print(f"sgl serve: {settings.model_name} on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                    http=header_deadline_protocol(args.read_timeout), limit_concurrency=args.max_connections,
                    timeout_keep_alive=5)
    finally:
        backend.close()
    return 0


def header_deadline_protocol(timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request line and headers are
    not complete ``timeout_s`` after it opened (or after its last response).

    uvicorn itself waits forever for headers that trickle in (its keep-alive timer
    restarts on every byte); the body's deadline is the app's (``GuardMiddleware``)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            if not self.transport.is_closing():
                self._header_timer = self.loop.call_later(timeout_s, self._header_deadline)

        def _header_deadline(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no complete request yet: cut off

    return HeaderDeadlineProtocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sgl serve", description="OpenAI-compatible server with structured outputs",
                                     allow_abbrev=False)
    add_serve_arguments(parser)
    return serve(parser.parse_args(argv))


__all__ = ["add_serve_arguments", "main", "serve"]
