"""The one backend factory of ``sgl run`` and ``sgl serve``: their shared backend options
(``add_backend_arguments``) and the backend they choose (``make_backend``), so that every
engine flag reaches the engine whichever command is given."""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Any


def load_program(path: Path) -> Any:
    """Import a ``.py`` or ``.sgl`` file as a module (``.sgl`` is Python syntax)."""
    name = f"sgl_program_{path.stem}"
    loader = importlib.machinery.SourceFileLoader(name, str(path.resolve()))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    sys.path.insert(
        0, str(path.resolve().parent)
    )  # its sibling imports work as with `python prog.py`
    try:
        loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


DTYPES = {"auto": None, "float32": "float32", "float": "float32", "bfloat16": "bfloat16", "float16": "float16", "half": "float16"}


def torch_dtype(name: str) -> Any:
    """The torch dtype a ``--dtype`` (or SGLang ``dtype``) name means; None for auto."""
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; use auto, float32, bfloat16 or float16")
    import torch

    return getattr(torch, DTYPES[name]) if DTYPES[name] else None


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """The options that choose and configure the backend, shared by ``sgl run`` and
    ``sgl serve`` (vLLM's and SGLang's spellings are aliases); ``make_backend`` reads them."""
    p.add_argument("--model", "--model-path", metavar="PATH",
                   help="model for sgl.LocalModel (default: the packaged SmolLM2-135M)")
    p.add_argument("--backend", metavar="MODULE:ATTR",
                   help="a Backend (or a factory for one), e.g. mypkg.backends:make or path/to/file.py:Backend")
    p.add_argument("--max-running", "--max-num-seqs", "--max-running-requests", type=int, default=32,
                   help="requests generating at once, batched together by the engine (default: 32)")
    p.add_argument("--max-context", "--max-model-len", "--context-length", type=int, metavar="TOKENS",
                   help="longest prompt + output (default: the model's own limit)")
    p.add_argument("--dtype", default="auto", choices=sorted(DTYPES),
                   help="weights and activations (default: auto: float32 on CPU, bfloat16 elsewhere)")
    p.add_argument("--device", default="cpu", help="torch device of the local model (default: cpu)")
    p.add_argument("--chat-template", metavar="FILE|TEMPLATE",
                   help="a Jinja chat template (a file, or the template text) instead of the model's")
    p.add_argument("--kv-budget-mb", type=float, default=512.0,
                   help="KV cache memory of the local engine, prefix cache included (default: 512)")


def make_backend(args: argparse.Namespace, default_model: bool = False) -> Any:
    """The one backend factory of ``sgl run`` and ``sgl serve``: ``--backend`` >
    ``--model`` (a ``LocalModel`` given every engine option of ``add_backend_arguments``)
    > with ``default_model``, the packaged model; else None (the program's own backend,
    or the lazy default)."""
    if args.max_running < 1:
        raise SystemExit("--max-running must be at least 1")
    if args.backend:
        target, _, attr = args.backend.rpartition(":")
        if not target:
            raise SystemExit("sgl run: --backend wants MODULE:ATTR or FILE.py:ATTR")
        module = (
            load_program(Path(target))
            if target.endswith(".py")
            else importlib.import_module(target)
        )
        obj = getattr(module, attr)
        from sgl.backends.base import Backend

        return obj if isinstance(obj, Backend) else obj()
    if not args.model and not default_model:
        return None
    from sgl.backends.local import LocalModel

    backend = LocalModel(args.model, device=args.device, dtype=torch_dtype(args.dtype),
                         max_context=args.max_context, max_batch=args.max_running, kv_budget_mb=args.kv_budget_mb)
    if args.chat_template:
        try:
            backend.set_chat_template(read_template(args.chat_template))
        except ValueError as e:
            raise SystemExit(f"--chat-template: {e}") from None
    return backend


def read_template(value: str) -> str:
    """``--chat-template``: a file's text, or the value itself when it is a template."""
    path = Path(value)
    if "{" not in value and not path.is_file():
        raise SystemExit(f"--chat-template: no such file: {value}")
    return path.read_text(encoding="utf-8") if "{" not in value else value
