"""``run_batch``: many runs of one program on a thread pool, results in input order."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sgl.backends.base import Backend
from sgl.lang.state import ProgramState

from .interpreter import RunDefaults, get_default_backend, run_program


def resolve_threads(num_threads: int | str, n_items: int) -> int:
    """``"auto"`` follows SGLang (many threads: the backend batches concurrent requests)."""
    if num_threads == "auto":
        num_threads = max(96, (os.cpu_count() or 1) * 16)
    num_threads = int(num_threads)
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return max(1, min(num_threads, n_items))


def run_batch(
    func: Callable[..., Any],
    batch_kwargs: Sequence[dict[str, Any]],
    *,
    backend: Backend | None,
    defaults: RunDefaults,
    num_threads: int | str = "auto",
    progress_bar: bool = False,
    timeout: float | None = None,
) -> list[ProgramState]:
    """One state per kwargs dict, in order. A failing run keeps its partial state and
    its error (``state.error()``); the others go on. ``timeout`` is per run."""
    if not batch_kwargs:
        return []
    backend = backend or get_default_backend()  # once, before the threads race for it
    threads = resolve_threads(num_threads, len(batch_kwargs))

    def one(kwargs: dict[str, Any]) -> ProgramState:
        return run_program(func, (), dict(kwargs), backend=backend, defaults=defaults, timeout=timeout, raise_errors=False)

    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batch_kwargs), desc=getattr(func, "__name__", "run_batch"), unit="run")
    try:
        if threads == 1:
            results = []
            for kwargs in batch_kwargs:
                results.append(one(kwargs))
                if bar is not None:
                    bar.update()
            return results
        with ThreadPoolExecutor(threads, thread_name_prefix="sgl-batch") as pool:
            futures = [pool.submit(one, kwargs) for kwargs in batch_kwargs]
            if bar is not None:
                for fut in futures:
                    fut.add_done_callback(lambda _: bar.update())
            return [f.result() for f in futures]
    finally:
        if bar is not None:
            bar.close()
