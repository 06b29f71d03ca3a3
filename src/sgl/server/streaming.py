"""Streaming: the per-choice state of a streamed answer, and ``Streams``, which runs
the backend streams of one request's choices on worker threads and merges them into
one queue (closed early when the client goes away)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from sgl.backends.base import GenerateRequest, GenerateResult

from .api_errors import ClientGone, refusing
from .logprobs import Tok


@dataclass
class StreamChoice:
    """The streaming state of one choice."""

    index: int
    pieces: list[str] = field(default_factory=list)  # text of the current pass
    emitted: int = 0  # characters streamed by the backend in this pass
    covered: int = 0  # characters of the tokens whose logprobs are out
    reported: int = 0  # tokens whose logprobs are out
    held: str = ""  # chat text not sent yet (auto tools: until it is not a call)
    held_tokens: list[Tok] = field(default_factory=list)
    decided: bool = False  # auto tools: answer or call is known
    opening: bool = False  # auto tools: the first pass opened a call
    call_pass: bool = False  # auto tools: in the second (call) pass
    first: GenerateResult | None = None  # auto tools: the first pass
    result: GenerateResult | None = None

    def begin_call_pass(self, first: GenerateResult) -> None:
        self.first, self.call_pass = first, True
        self.pieces, self.held, self.held_tokens = [], "", []
        self.emitted = self.covered = self.reported = 0


class Streams:
    """The backend streams of one request's choices, each on a worker thread, merged
    into one queue; closed early when the client goes away."""

    def __init__(self, server: Any, job: Any, request: Request):
        self.server, self.job, self.request = server, job, request
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.live = 0

    def start(self, index: int, gen_request: GenerateRequest) -> None:
        self.live += 1
        worker = asyncio.ensure_future(self.server.call_backend(lambda: self._pump(index, gen_request), self.job.rid))
        worker.add_done_callback(swallow)

    def _put(self, item: tuple[int, str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def _pump(self, index: int, gen_request: GenerateRequest) -> None:
        backend = self.server.backend
        submit = getattr(backend, "submit", None)
        handle = stream = None
        result = None
        try:
            # a handle (LocalModel) gives the real result and the live output (logprobs)
            handle = refusing(submit, gen_request) if submit is not None else None
            stream = handle.stream() if handle is not None else backend.generate_stream(gen_request)
            live = getattr(handle, "output", None) if self.job.want_logprobs else None
            while not self.cancel.is_set():
                try:
                    delta = next(stream)
                except StopIteration as stop:
                    # a backend may return its GenerateResult from the generator
                    result = stop.value if isinstance(stop.value, GenerateResult) else None
                    break
                if delta:
                    self._put((index, "delta", (delta, snapshot(live))))
            if handle is not None:
                if self.cancel.is_set():
                    handle.cancel()
                result = handle.result()
        except Exception as e:  # noqa: BLE001 - handed to the event loop
            self._put((index, "error", e))
            return
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # lets the backend stop decoding
            if handle is not None and self.cancel.is_set():
                handle.cancel()
        self._put((index, "done", result))

    async def events(self) -> AsyncIterator[tuple[int, str, Any]]:
        try:
            while self.live:
                try:
                    index, kind, value = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                except TimeoutError:
                    if await self.request.is_disconnected():
                        raise ClientGone from None
                    continue
                if kind == "error":
                    raise value
                if kind == "done":
                    self.live -= 1
                yield index, kind, value
                if await self.request.is_disconnected():
                    raise ClientGone
        finally:
            self.cancel.set()  # the workers close the backend's streams at their next delta


def snapshot(live: Any) -> tuple[list[int], list[float], list[Any]] | None:
    """A copy of a backend's live output (token ids, logprobs, top logprobs)."""
    if live is None:
        return None
    return list(live.token_ids), list(live.logprobs or ()), list(getattr(live, "top_logprobs", None) or ())


def swallow(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as lost


__all__ = ["StreamChoice", "Streams", "snapshot", "swallow"]
