"""``run_batch``: many runs of one program on a thread pool, results in input order."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sgl.backends.base import Backend, GenerateRequest, GenerateResult, SelectResult
from sgl.lang.state import ProgramState

from .interpreter import RunDefaults, resolve_backend, run_program


class RequestBatcher(Backend):
    """Gathers the ``generate`` calls that run_batch's threads make at the same time
    into ``backend.generate_batch`` calls, for backends that declare
    ``capabilities.gathers_batches`` (a model that pads a batch and decodes it in one
    forward pass per step). Everything else is passed through."""

    def __init__(self, backend: Backend, max_batch: int = 8):
        self.backend = backend
        self.capabilities = backend.capabilities
        self.default_system_prompt = backend.default_system_prompt
        self.closed = False
        self.max_batch = max(1, max_batch)
        self.queue: queue.Queue[tuple[GenerateRequest, Future] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._dispatch, name="sgl-batcher", daemon=True)
        self.thread.start()

    def __getattr__(self, name: str) -> Any:  # default_system_prompt, encode, ...
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)

    def generate(self, request: GenerateRequest) -> GenerateResult:
        if self.closed:  # a state used after its run_batch ended
            return self.backend.generate(request)
        fut: Future = Future()
        self.queue.put((request, fut))
        return fut.result()

    def generate_stream(self, request: GenerateRequest) -> Iterator[str]:
        return self.backend.generate_stream(request)

    def select(
        self, prompt: str, choices: Sequence[str], method: str = "token_length_normalized"
    ) -> SelectResult:
        return self.backend.select(prompt, choices, method)

    def role_text(self, role: str, content: str) -> tuple[str, str]:
        return self.backend.role_text(role, content)

    def close(self) -> None:
        """Stop the dispatcher (the wrapped backend stays open)."""
        self.closed = True
        self.queue.put(None)
        self.thread.join()

    def _dispatch(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch = [item]
            # whatever queued up while the previous batch ran joins this one
            while len(batch) < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
            self._run(batch)

    def _run(self, batch: list[tuple[GenerateRequest, Future]]) -> None:
        try:
            results = self.backend.generate_batch([req for req, _ in batch])
        except Exception:  # noqa: BLE001 - retry one by one so only the bad request fails
            for req, fut in batch:
                try:
                    fut.set_result(self.backend.generate(req))
                except Exception as e:  # noqa: BLE001 - handed to the waiting program
                    fut.set_exception(e)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            fut.set_result(result)


def batches(backend: Backend) -> bool:
    """Should run_batch gather concurrent calls into ``generate_batch`` calls?

    Only where the backend opts in (``capabilities.gathers_batches``) and does not batch
    concurrent ``generate`` calls itself: with continuous batching (the local engine, an
    HTTP server) gathering would only make each request wait for the slowest of its group.
    """
    caps = backend.capabilities
    return caps.gathers_batches and not caps.continuous_batching


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
    # once, before the threads race for it
    backend = resolve_backend(backend)
    threads = resolve_threads(num_threads, len(batch_kwargs))
    batcher = None
    if threads > 1 and batches(backend):
        batcher = backend = RequestBatcher(backend, backend.capabilities.max_batch)

    def one(kwargs: dict[str, Any]) -> ProgramState:
        return run_program(
            func,
            (),
            dict(kwargs),
            backend=backend,
            defaults=defaults,
            timeout=timeout,
            raise_errors=False,
        )

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
        if batcher is not None:
            batcher.close()
