"""An OpenAI-compatible HTTP server over any ``Backend``, with structured outputs.

``create_app(backend, settings)`` returns a FastAPI app serving

* ``POST /v1/completions`` and ``POST /v1/chat/completions`` (plain JSON or, with
  ``"stream": true``, server-sent events in OpenAI's chunk format ending ``[DONE]``);
  constraints: ``response_format`` (``json_schema`` / ``json_object``) and the extra
  body fields of ``sgl.server.protocol`` (``regex``, ``grammar`` + ``grammar_syntax``,
  ``choices``, and SGLang's / vLLM's spellings);
* ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).

Every constraint is compiled (text-only, no vocabulary) before the model is called, so
a bad schema, regex or grammar is a 400 whose ``error.location`` says where it is
wrong. Blocking backend calls run on worker threads, at most ``max_running`` at once;
a streaming client that disconnects stops its generation at the next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

try:
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
except ModuleNotFoundError as e:  # the core install has no fastapi: say which extra adds it
    from sgl._extras import MissingExtraError

    raise MissingExtraError("the SGL server (sgl serve)", "server", [e.name or "fastapi"]) from e

from sgl.backends.base import (
    Backend,
    ConstraintSpec,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
)
from sgl.constrain.errors import ConstraintError
from sgl.runtime import trace
from sgl.runtime.metrics import Metrics, get_metrics

from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    ResponseMessage,
    SamplingFields,
    TokenLogprob,
    Usage,
    new_id,
    now,
)

log = logging.getLogger("sgl.server")

JSON_OBJECT_SCHEMA = {"type": "object"}  # response_format json_object: any JSON object


@dataclass
class ServerSettings:
    """Limits and identity of one server; every limit is enforced per request."""

    model_name: str = "sgl"
    api_key: str | None = None  # None: no authentication
    max_running: int = 8  # concurrent backend calls (worker threads)
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    default_max_tokens: int = 256  # chat requests without max_tokens (completions: 16, as OpenAI)
    max_n: int = 8  # largest n (choices per prompt)
    max_body_bytes: int = 1 << 20  # request bodies above this get 413
    max_constraint_bytes: int = 64 << 10  # schema / regex / grammar / choices text
    compile_timeout_s: float = 10.0  # a constraint that compiles longer is refused
    trace_path: str | None = None  # JSON-lines trace log (also SGL_TRACE)
    metrics: Metrics | None = field(default=None, repr=False)  # None: the process-wide one


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 location: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type_, param=param, code=code, location=location)

    def response(self) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=self.detail).model_dump(), status_code=self.status)


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


# --- the app ------------------------------------------------------------------------
def create_app(backend: Backend, settings: ServerSettings | None = None) -> FastAPI:
    """An OpenAI-compatible FastAPI app serving ``backend`` (see the module docstring)."""
    settings = settings or ServerSettings()
    if settings.trace_path:
        trace.configure_trace(settings.trace_path)
    server = _Server(backend, settings)
    app = FastAPI(title="SGL", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.sgl = server

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=settings.model_name)]).model_dump()

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render_prometheus(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        return await server.completions(body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        return await server.chat(body, request)

    app.add_middleware(GuardMiddleware, max_bytes=settings.max_body_bytes, api_key=settings.api_key)
    return app


async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    detail = ErrorDetail(message="invalid request: " + "; ".join(problems), param=param, code="invalid_request", location=param)
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=422)


class GuardMiddleware:
    """The outermost layer: 413 for bodies over ``max_bytes``, then 401 for a wrong key.

    The body is read here (requests are small JSON) and replayed to the app. An oversize
    body is drained, up to a hard cap, so that the client reads the 413 rather than a
    connection reset. ``/health`` needs no key.
    """

    def __init__(self, app: Any, max_bytes: int, api_key: str | None):
        self.app = app
        self.max_bytes = max_bytes
        self.api_key = api_key

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = bytearray()
        if scope["method"] in ("POST", "PUT", "PATCH"):
            declared = headers.get("content-length", "")
            too_big = declared.isdigit() and int(declared) > self.max_bytes
            seen, more = 0, True
            while more and seen <= 16 * self.max_bytes:  # past that, stop reading a hostile upload
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                seen += len(chunk)
                too_big = too_big or seen > self.max_bytes
                if not too_big:
                    body += chunk
            if too_big:
                await _send_error(scope, receive, send, 413, f"request body is larger than the limit of {self.max_bytes} bytes",
                                  "request_too_large")
                return
        if self.api_key and scope["path"] != "/health" and not key_ok(headers, self.api_key):
            await _send_error(scope, receive, send, 401, "missing or incorrect API key (send 'Authorization: Bearer KEY')",
                              "invalid_api_key")
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_error(scope: dict, receive: Callable, send: Callable, status: int, message: str, code: str) -> None:
    await APIError(status, message, code=code).response()(scope, receive, send)


def key_ok(headers: dict[str, str], key: str) -> bool:
    """``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``) matches, in constant time."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = headers.get("x-api-key", "")
    return hmac.compare_digest(given.strip().encode(), key.encode())


# --- requests -> backend calls --------------------------------------------------------
@dataclass
class _Job:
    """One validated request, ready for the backend."""

    requests: list[GenerateRequest]  # one per (prompt, n) pair
    checker: Any  # CompiledGrammar (text-only) or None
    stream: bool
    include_usage: bool
    want_logprobs: bool
    top_logprobs: int
    rid: str
    endpoint: str
    started: float = field(default_factory=time.perf_counter)


class _Server:
    def __init__(self, backend: Backend, settings: ServerSettings):
        self.backend = backend
        self.settings = settings
        self.metrics = settings.metrics or get_metrics()
        self.limiter = anyio.CapacityLimiter(settings.max_running)

    # --- endpoints ---
    async def completions(self, body: CompletionRequest, request: Request) -> Any:
        self._check_common(body)
        if body.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if body.best_of not in (None, body.n):
            raise APIError(400, "best_of is not supported (use n)", param="best_of")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt is empty", param="prompt")
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        job = await self._job(body, prompts, max_tokens, "completions", bool(body.logprobs is not None), body.logprobs or 0)
        if job.stream:
            if len(job.requests) != 1:
                raise APIError(400, "streaming supports one prompt and n=1", param="n")
            return self._sse(self._stream_completion(job, body, request, prompts[0] if body.echo else ""))
        results = await self._generate(job, request)
        choices = []
        for i, result in enumerate(results):
            text = (prompts[i // body.n] if body.echo else "") + result.text
            choices.append(CompletionChoice(index=i, text=text, finish_reason=_finish(result),
                                            logprobs=self._completion_logprobs(result, job) if job.want_logprobs else None))
        return CompletionResponse(model=self.settings.model_name, choices=choices, usage=_usage(results)).model_dump()

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        self._check_common(body)
        if body.tools:
            raise APIError(400, "tools are not supported", param="tools")
        prompt = self._chat_prompt(body)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = self.settings.default_max_tokens if max_tokens is None else max_tokens
        job = await self._job(body, [prompt], max_tokens, "chat", body.logprobs, body.top_logprobs or 0)
        if job.stream:
            if body.n != 1:
                raise APIError(400, "streaming supports n=1", param="n")
            return self._sse(self._stream_chat(job, request))
        results = await self._generate(job, request)
        choices = [
            ChatChoice(index=i, message=ResponseMessage(content=r.text), finish_reason=_finish(r),
                       logprobs=self._chat_logprobs(r, job) if job.want_logprobs else None)
            for i, r in enumerate(results)
        ]
        return ChatCompletionResponse(model=self.settings.model_name, choices=choices, usage=_usage(results)).model_dump()

    # --- validation ---
    def _check_common(self, body: SamplingFields) -> None:
        if body.model is not None and body.model != self.settings.model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves {self.settings.model_name!r}",
                           param="model", code="model_not_found")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name) not in (None, 0, 0.0):
                raise APIError(400, f"{name} is not supported", param=name)
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")
        if body.n > self.settings.max_n:
            raise APIError(400, f"n={body.n} is above the limit of {self.settings.max_n}", param="n")

    def _chat_prompt(self, body: ChatCompletionRequest) -> str:
        """The messages in the backend's chat template, plus the assistant's prefix."""
        messages = list(body.messages)
        default_system = getattr(self.backend, "default_system_prompt", None)
        parts = []
        if default_system and messages[0].role not in ("system", "developer"):
            prefix, suffix = self.backend.role_text("system", default_system)
            parts.append(prefix + default_system + suffix)
        last = len(messages) - 1
        for i, m in enumerate(messages):
            role = "system" if m.role == "developer" else m.role
            if role == "tool":
                raise APIError(400, "tool messages are not supported", param=f"messages.{i}.role")
            content = _message_text(m.content, i)
            prefix, suffix = self.backend.role_text(role, content)
            if body.continue_final_message and i == last:
                if role != "assistant":
                    raise APIError(400, "continue_final_message needs an assistant message last", param="messages")
                parts.append(prefix + content)  # left open: the model continues it
                return "".join(parts)
            parts.append(prefix + content + suffix)
        if body.add_generation_prompt:
            parts.append(self.backend.role_text("assistant", "")[0])
        return "".join(parts)

    async def _job(self, body: SamplingFields, prompts: list[str], max_tokens: int, endpoint: str,
                   want_logprobs: bool, top_logprobs: int) -> _Job:
        if max_tokens > self.settings.max_tokens_limit:
            raise APIError(400, f"max_tokens={max_tokens} is above the limit of {self.settings.max_tokens_limit}",
                           param="max_tokens")
        spec, param = constraint_of(body)
        checker = None
        if spec is not None:
            checker = await self._compile(spec, param)
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        requests = []
        for prompt in prompts:
            for k in range(body.n):
                params = SamplingParams(
                    max_tokens=max_tokens,
                    min_tokens=body.min_tokens,
                    stop=stop,
                    stop_token_ids=tuple(body.stop_token_ids or ()),
                    temperature=body.temperature,
                    top_p=body.top_p,
                    top_k=max(0, body.top_k),
                    min_p=body.min_p,
                    seed=None if body.seed is None else body.seed + k,  # n samples must differ
                    logprobs=want_logprobs,
                )
                requests.append(GenerateRequest(prompt=prompt, params=params, constraint=spec))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _Job(requests, checker, body.stream, include_usage, want_logprobs, top_logprobs,
                    trace.new_request_id(endpoint), endpoint)

    async def _compile(self, spec: ConstraintSpec, param: str) -> Any:
        size = _constraint_size(spec)
        if size > self.settings.max_constraint_bytes:
            raise APIError(400, f"the constraint is {size} bytes, above the limit of {self.settings.max_constraint_bytes}",
                           param=param, code="constraint_too_large")
        try:
            with anyio.fail_after(self.settings.compile_timeout_s):
                # a compile cannot be interrupted: on timeout its thread is abandoned and
                # finishes (bounded by the compiler's own budget) in the background
                return await anyio.to_thread.run_sync(compile_constraint, spec, abandon_on_cancel=True)
        except TimeoutError:
            raise APIError(400, f"the constraint did not compile within {self.settings.compile_timeout_s:g} s",
                           param=param, code="constraint_too_complex") from None
        except ConstraintError as e:
            raise APIError(400, f"{param}: {e}", param=param, code="invalid_constraint",
                           location=e.location) from None

    # --- running ---
    async def _call(self, fn: Callable[[], Any], rid: str) -> Any:
        def run() -> Any:
            # counted as running while the worker thread works, even after its client left
            with trace.request_context(rid), self.metrics.track_running():  # the engine's trace lines carry rid
                return fn()

        return await anyio.to_thread.run_sync(run, limiter=self.limiter)

    async def _generate(self, job: _Job, request: Request) -> list[GenerateResult]:
        """Run a non-streaming job; stop waiting (and drop the answer) if the client leaves."""
        submit = getattr(self.backend, "submit", None)
        handles: list[Any] = []  # requests a disconnecting client can cancel
        if submit is not None:
            def fn() -> list[GenerateResult]:
                handles.extend(submit(r) for r in job.requests)
                return [h.result() for h in handles]
        elif len(job.requests) == 1:
            def fn() -> list[GenerateResult]:
                return [self.backend.generate(job.requests[0])]
        else:
            def fn() -> list[GenerateResult]:
                return list(self.backend.generate_batch(job.requests))
        task = asyncio.ensure_future(self._call(fn, job.rid))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    break
                if await request.is_disconnected():
                    # the engine stops the requests at its next step; a backend without
                    # submit() cannot be interrupted: its answer is dropped when it ends
                    for handle in list(handles):
                        handle.cancel()
                    task.add_done_callback(_swallow)
                    self.metrics.observe_status("cancelled")
                    raise ClientGone
            results = task.result()
        except ClientGone:
            raise APIError(499, "client disconnected", code="client_closed") from None
        except Exception as e:  # noqa: BLE001 - reported to the client as a 500
            self.metrics.observe_status("error")
            log.exception("generation failed")
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}", type_="server_error") from None
        latency = time.perf_counter() - job.started
        outcomes = [await self._check_output(job, r.text, _finish(r)) for r in results]
        prompt_tokens = sum(int(r.meta.get("prompt_tokens", 0)) for r in results)
        completion_tokens = sum(len(r.token_ids) for r in results)
        ttft = results[0].meta.get("ttft_s") if results else None
        self.metrics.observe_request(latency_s=latency, ttft_s=ttft, prompt_tokens=prompt_tokens,
                                     completion_tokens=completion_tokens, constraint=_worst(outcomes))
        for r in results:
            mask_time = r.meta.get("mask_time_s")
            if isinstance(mask_time, (int, float)) and r.meta.get("masks"):
                self.metrics.observe_mask_time(mask_time / max(1, int(r.meta["masks"])))
        self._log_request(job, [r.text for r in results], [_finish(r) for r in results], latency, ttft,
                          prompt_tokens, completion_tokens, outcomes)
        return results

    async def _check_output(self, job: _Job, text: str, finish_reason: str) -> str | None:
        """Does the output satisfy its constraint? (the server's own check, for metrics)"""
        if job.checker is None:
            return None
        ok = await anyio.to_thread.run_sync(job.checker.accepts_text, text)
        if ok:
            return "satisfied"
        return "truncated" if finish_reason == "length" else "violated"

    async def _stream(self, job: _Job, request: Request) -> AsyncIterator[tuple[str, Any]]:
        """("delta", text)... then ("done", GenerateResult | None); the backend's stream
        runs on one worker thread and is closed early when the client goes away."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        gen_request = job.requests[0]

        def put(item: tuple[str, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            stream = self.backend.generate_stream(gen_request)
            result = None
            try:
                while not cancel.is_set():
                    try:
                        delta = next(stream)
                    except StopIteration as stop:
                        # a backend may return its GenerateResult from the generator
                        result = stop.value if isinstance(stop.value, GenerateResult) else None
                        break
                    if delta:
                        put(("delta", delta))
            except Exception as e:  # noqa: BLE001 - handed to the event loop
                put(("error", e))
                return
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # lets the backend stop decoding
            put(("done", result))

        worker = asyncio.ensure_future(self._call(pump, job.rid))
        worker.add_done_callback(_swallow)
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(queue.get(), timeout=0.5)
                except TimeoutError:
                    if await request.is_disconnected():
                        raise ClientGone from None
                    continue
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "done":
                    return
                if await request.is_disconnected():
                    raise ClientGone
        finally:
            cancel.set()  # the worker closes the backend's stream at its next delta

    async def _stream_events(self, job: _Job, request: Request, make_chunk: Callable[[str, str | None, Usage | None], dict],
                             first: dict | None = None) -> AsyncIterator[dict]:
        """The chunks of one streamed request, with metrics and the trace line."""
        pieces: list[str] = []
        ttft = None
        result: GenerateResult | None = None
        try:
            if first is not None:
                yield first
            async for kind, value in self._stream(job, request):
                if kind == "delta":
                    if ttft is None:
                        ttft = time.perf_counter() - job.started
                    pieces.append(value)
                    yield make_chunk(value, None, None)
                else:
                    result = value
        except ClientGone:
            self.metrics.observe_status("cancelled")
            return
        except (asyncio.CancelledError, GeneratorExit):
            self.metrics.observe_status("cancelled")
            raise
        except Exception as e:  # noqa: BLE001 - reported in-stream
            self.metrics.observe_status("error")
            log.exception("streamed generation failed")
            yield ErrorResponse(error=ErrorDetail(message=f"generation failed: {type(e).__name__}: {e}",
                                                  type="server_error")).model_dump()
            return
        text = "".join(pieces)
        if result is None:
            result = self._estimate_result(job.requests[0], text)
        finish = _finish(result)
        completion_tokens = len(result.token_ids)
        prompt_tokens = int(result.meta.get("prompt_tokens", 0))
        yield make_chunk("", finish, None)
        usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      total_tokens=prompt_tokens + completion_tokens)
        if job.include_usage:
            yield make_chunk("", None, usage) | {"choices": []}
        latency = time.perf_counter() - job.started
        outcome = await self._check_output(job, text, finish)
        self.metrics.observe_request(latency_s=latency, ttft_s=ttft, prompt_tokens=prompt_tokens,
                                     completion_tokens=completion_tokens, constraint=outcome)
        self._log_request(job, [text], [finish], latency, ttft, prompt_tokens, completion_tokens, [outcome])

    def _stream_chat(self, job: _Job, request: Request) -> AsyncIterator[dict]:
        cid, created, model = new_id("chatcmpl"), now(), self.settings.model_name

        def chunk(text: str, finish: str | None, usage: Usage | None) -> dict:
            delta = DeltaMessage(content=text) if text or finish is None else DeltaMessage()
            return ChatCompletionChunk(id=cid, created=created, model=model, usage=usage,
                                       choices=[ChatChunkChoice(delta=delta, finish_reason=finish)]).model_dump(exclude_none=True)

        first = ChatCompletionChunk(id=cid, created=created, model=model,
                                    choices=[ChatChunkChoice(delta=DeltaMessage(role="assistant", content=""))]).model_dump(exclude_none=True)
        return self._stream_events(job, request, chunk, first)

    def _stream_completion(self, job: _Job, body: CompletionRequest, request: Request, echo: str) -> AsyncIterator[dict]:
        cid, created, model = new_id("cmpl"), now(), self.settings.model_name

        def chunk(text: str, finish: str | None, usage: Usage | None) -> dict:
            return CompletionChunk(id=cid, created=created, model=model, usage=usage,
                                   choices=[CompletionChoice(index=0, text=text, finish_reason=finish)]).model_dump()

        first = chunk(echo, None, None) if echo else None
        return self._stream_events(job, request, chunk, first)

    def _estimate_result(self, request: GenerateRequest, text: str) -> GenerateResult:
        """A stand-in result for a backend whose stream returned none: token counts by
        re-encoding (``backend.encode``, when it has one), "length" when they reach
        max_tokens. Backends should return their GenerateResult from the generator."""
        encode = getattr(self.backend, "encode", None)
        if encode is None:
            return GenerateResult(text=text)
        ids = list(encode(text))
        finish = "length" if len(ids) >= request.params.max_tokens else "stop"
        return GenerateResult(text=text, token_ids=ids, finish_reason=finish,
                              meta={"prompt_tokens": len(encode(request.prompt)), "estimated": True})

    @staticmethod
    def _sse(events: AsyncIterator[dict]) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            async for event in events:
                yield b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- logprobs ---
    def _token_text(self, token_id: int) -> str:
        decode_token = getattr(self.backend, "decode_token", None)
        if decode_token is not None:
            return decode_token(token_id)
        decode = getattr(self.backend, "decode", None)  # LocalModel: decode(ids) -> str
        if decode is not None:
            try:
                return decode([token_id])
            except (TypeError, ValueError):
                pass
        return f"token_id:{token_id}"  # vLLM's spelling when text is unavailable

    def _completion_logprobs(self, result: GenerateResult, job: _Job) -> CompletionLogprobs | None:
        if result.logprobs is None:
            return None
        tokens = [self._token_text(t) for t in result.token_ids]
        offsets, pos = [], 0
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        return CompletionLogprobs(tokens=tokens, token_logprobs=[_finite(x) for x in result.logprobs],
                                  top_logprobs=None, text_offset=offsets)

    def _chat_logprobs(self, result: GenerateResult, job: _Job) -> ChoiceLogprobs | None:
        if result.logprobs is None:
            return None
        content = []
        for token_id, lp in zip(result.token_ids, result.logprobs, strict=False):
            text = self._token_text(token_id)
            content.append(TokenLogprob(token=text, logprob=_finite(lp) or -9999.0, bytes=list(text.encode())))
        return ChoiceLogprobs(content=content)

    # --- observability ---
    def _log_request(self, job: _Job, texts: list[str], finishes: list[str], latency: float, ttft: float | None,
                     prompt_tokens: int, completion_tokens: int, outcomes: list[str | None]) -> None:
        if not trace.trace_enabled():
            return
        first = job.requests[0]
        trace.write_record({
            "type": "request",
            "request_id": job.rid,
            "endpoint": job.endpoint,
            "time": time.time(),
            "prompt": first.prompt,
            "constraint": describe_constraint(first.constraint),
            "outputs": texts,
            "finish_reasons": finishes,
            "latency_s": latency,
            "ttft_s": ttft,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "constraint_outcomes": outcomes,
            "max_tokens": first.params.max_tokens,
            "temperature": first.params.temperature,
        })


# --- constraints ------------------------------------------------------------------------
def constraint_of(body: SamplingFields) -> tuple[ConstraintSpec | None, str | None]:
    """The request's one constraint and the name of the field that gave it."""
    found: list[tuple[str, ConstraintSpec]] = []
    rf = body.response_format
    if rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise APIError(400, "response_format of type json_schema needs json_schema.schema", param="response_format")
        found.append(("response_format", ConstraintSpec(json_schema=rf.json_schema.schema_)))
    elif rf is not None and rf.type == "json_object":
        found.append(("response_format", ConstraintSpec(json_schema=dict(JSON_OBJECT_SCHEMA))))
    for name, make in (
        ("regex", lambda v: ConstraintSpec(regex=v)),
        ("guided_regex", lambda v: ConstraintSpec(regex=v)),
        ("grammar", lambda v: ConstraintSpec(grammar=v, grammar_syntax=body.grammar_syntax)),
        ("ebnf", lambda v: ConstraintSpec(grammar=v, grammar_syntax="gbnf")),  # SGLang's (xgrammar) EBNF = GBNF
        ("guided_grammar", lambda v: ConstraintSpec(grammar=v, grammar_syntax="gbnf")),
        ("choices", lambda v: ConstraintSpec(choices=list(v))),
        ("guided_choice", lambda v: ConstraintSpec(choices=list(v))),
        ("json_schema", lambda v: ConstraintSpec(json_schema=v)),
        ("guided_json", lambda v: ConstraintSpec(json_schema=v)),
    ):
        value = getattr(body, name)
        if value is not None:
            found.append((name, make(value)))
    for key, value in (body.structured_outputs or {}).items():
        make = {"regex": lambda v: ConstraintSpec(regex=v), "choice": lambda v: ConstraintSpec(choices=list(v)),
                "grammar": lambda v: ConstraintSpec(grammar=v, grammar_syntax="gbnf"),
                "json": lambda v: ConstraintSpec(json_schema=v)}.get(key)
        if make is None:
            raise APIError(400, f"structured_outputs.{key} is not supported (use regex, choice, grammar or json)",
                           param=f"structured_outputs.{key}")
        if value is not None:
            found.append((f"structured_outputs.{key}", make(value)))
    if len(found) > 1:
        raise APIError(400, f"one constraint per request, got {', '.join(n for n, _ in found)}", param=found[1][0])
    if not found:
        return None, None
    name, spec = found[0]
    if spec.choices is not None and not spec.choices:
        raise APIError(400, f"{name} is empty", param=name)
    return spec, name


def compile_constraint(spec: ConstraintSpec) -> Any:
    """Compile ``spec`` without a vocabulary (validates it; checks outputs later)."""
    from sgl.constrain import compile_choices, compile_grammar, compile_json_schema, compile_regex

    if spec.json_schema is not None:
        return compile_json_schema(spec.json_schema)
    if spec.regex is not None:
        return compile_regex(spec.regex)
    if spec.grammar is not None:
        return compile_grammar(spec.grammar, syntax=spec.grammar_syntax)
    return compile_choices(list(spec.choices or ()))


def describe_constraint(spec: ConstraintSpec | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    if spec.json_schema is not None:
        return {"kind": "json_schema", "value": spec.json_schema}
    if spec.regex is not None:
        return {"kind": "regex", "value": spec.regex}
    if spec.grammar is not None:
        return {"kind": "grammar", "syntax": spec.grammar_syntax, "value": spec.grammar}
    return {"kind": "choices", "value": list(spec.choices or ())}


def _constraint_size(spec: ConstraintSpec) -> int:
    value = spec.json_schema if spec.json_schema is not None else spec.regex or spec.grammar or spec.choices
    return len(value.encode()) if isinstance(value, str) else len(json.dumps(value).encode())


# --- small helpers ------------------------------------------------------------------------
def _message_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"message content of type {part.type!r} is not supported (text only)",
                           param=f"messages.{index}.content")
        texts.append(part.text)
    return "".join(texts)


def _finish(result: GenerateResult) -> str:
    # OpenAI's vocabulary: "stop" (EOS, stop string, grammar complete) or "length"
    return "length" if result.finish_reason == "length" else "stop"


def _usage(results: list[GenerateResult]) -> Usage:
    prompt = sum(int(r.meta.get("prompt_tokens", 0)) for r in results)
    completion = sum(len(r.token_ids) for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _worst(outcomes: list[str | None]) -> str | None:
    for outcome in ("violated", "truncated", "satisfied"):
        if outcome in outcomes:
            return outcome
    return None


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _swallow(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as lost


__all__ = ["APIError", "GuardMiddleware", "ServerSettings", "compile_constraint", "constraint_of", "create_app"]
