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
wrong; compiles are bounded (``compile_workers`` killable processes, or threads) and
stopped at ``compile_timeout_s``. Blocking backend calls run on worker threads, at most
``max_running`` at once; a streaming client that disconnects stops its generation at
the next chunk.

Every client mistake is a 4xx with OpenAI's error object (bodies are parsed as strict
JSON: see ``guard.read_body``); a 500 is the server's own bug, logged with the request
id it names. A generation that fails is an error, never an empty ``"stop"``.

This module has the routes and the request flow (``_Server``); the rest is by concern:
``guard`` (body parsing, API key, size and read deadlines), ``api_errors`` (error
mapping), ``constraints`` (which field gives the constraint), ``tools`` (tool calls),
``streaming`` (streamed choices), ``logprobs`` (OpenAI's logprob shapes),
``compile_pool`` (bounded compiles), ``protocol`` (the request/response models).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

try:
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import PlainTextResponse, StreamingResponse
except ModuleNotFoundError as e:  # the core install has no fastapi: say which extra adds it
    from sgl._extras import MissingExtraError

    raise MissingExtraError("the SGL server (sgl serve)", "server", [e.name or "fastapi"]) from e

from sgl.backends.base import Backend, GenerateRequest, GenerateResult
from sgl.telemetry import trace
from sgl.telemetry.metrics import Metrics, get_metrics
from sgl.types import ConstraintSpec, SamplingParams

from .api_errors import (
    APIError,
    ClientGone,
    Refused,
    generation_error,
    install_error_handlers,
    openai_finish,
    refusing,
)
from .compile_pool import STARTUP_S, CompilePool, PoolChecker, compile_constraint, try_compile
from .constraints import answer_schema, constraint_of, constraint_size, describe_constraint
from .guard import GuardMiddleware, read_body
from .logprobs import TokenLogprobs
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaFunction,
    DeltaMessage,
    DeltaToolCall,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    ResponseMessage,
    SamplingFields,
    Usage,
    new_id,
    now,
)
from .streaming import StreamChoice, Streams, swallow
from .tools import (
    AUTO_FIRST_PASS,
    ToolError,
    ToolPlan,
    call_or_answer_schema,
    opened_call,
    parse_calls,
    plan_tools,
    render_calls,
    system_text,
)

log = logging.getLogger("sgl.server")

KNOWN_OK_SIZE = 256  # constraints remembered as valid


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
    # processes that compile constraints (killed at the timeout); 0: threads, which cannot
    # be stopped (a timed-out compile runs on), at most 2 at once
    compile_workers: int = 0
    read_timeout_s: float = 30.0  # a request body not received within this gets 408
    max_json_depth: int = 128  # request bodies nested deeper are refused (400)
    strict_schemas: bool = True  # a schema without "strict" forbids undeclared keys (see sgl.server.schemas)
    trace_path: str | None = None  # JSON-lines trace log (also SGL_TRACE)
    metrics: Metrics | None = field(default=None, repr=False)  # None: the process-wide one


# --- the app ------------------------------------------------------------------------
def create_app(backend: Backend, settings: ServerSettings | None = None) -> FastAPI:
    """An OpenAI-compatible FastAPI app serving ``backend`` (see the module docstring)."""
    settings = settings or ServerSettings()
    if settings.trace_path:
        trace.configure_trace(settings.trace_path)
    server = _Server(backend, settings)
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if server.compile_pool is not None:
            server.compile_pool.close()

    app = FastAPI(title="SGL", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.sgl = server

    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=settings.model_name)]).model_dump()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        server.check_model(model_id)
        return ModelCard(id=settings.model_name).model_dump()

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        stats = getattr(backend, "get_stats", None)
        if stats is not None:  # the local engine's KV use, read when scraped
            engine = stats()
            if engine.get("kv_blocks"):
                server.metrics.set_kv_cache_usage(1.0 - engine["kv_blocks_free"] / engine["kv_blocks"])
        return PlainTextResponse(server.metrics.render_prometheus(), media_type="text/plain; version=0.0.4")

    # the bodies are parsed here, not by FastAPI: strict JSON, OpenAI error objects
    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await server.completions(await read_body(request, CompletionRequest, settings.max_json_depth), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await server.chat(await read_body(request, ChatCompletionRequest, settings.max_json_depth), request)

    app.add_middleware(GuardMiddleware, max_bytes=settings.max_body_bytes, api_key=settings.api_key,
                       read_timeout_s=settings.read_timeout_s, metrics=server.metrics)
    return app


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
    tools: ToolPlan | None = None
    call_spec: ConstraintSpec | None = None  # tools: the constraint of a call
    call_checker: Any = None
    started: float = field(default_factory=time.perf_counter)
    ttft: float | None = None  # streaming: seconds to the first delta
    param: str | None = None  # the field that gave the constraint
    # auto tools with a response_format: one pass, a call or an answer in the format
    with_format: bool = False

    def is_call(self, result: GenerateResult) -> bool:
        """Was ``result`` generated under the tool-call constraint (or, with a format, is it a call)?"""
        if self.tools is None:
            return False
        if self.with_format:
            return parse_calls(result.text, self.tools.names) is not None
        return self.tools.mode == "required" or bool(result.meta.get("tool_call_pass"))

    @property
    def two_pass(self) -> bool:
        """Auto tools without a format: a first pass, then a call pass if it opened one."""
        return self.tools is not None and self.tools.mode == "auto" and not self.with_format

    @property
    def whole_answer(self) -> bool:
        """Streamed only when complete (it may be a call, which is sent whole)?"""
        return self.tools is not None and (self.tools.mode == "required" or self.with_format)


class _Server:
    def __init__(self, backend: Backend, settings: ServerSettings):
        self.backend = backend
        self.settings = settings
        self.lp = TokenLogprobs(backend)  # token texts and logprobs in OpenAI's shapes
        self.metrics = settings.metrics or get_metrics()
        self.limiter = anyio.CapacityLimiter(settings.max_running)
        self.compile_pool = CompilePool(settings.compile_workers) if settings.compile_workers > 0 else None
        # constraints that compiled before (pool mode): not queued behind other compiles again
        self.known_ok: OrderedDict[str, None] = OrderedDict()
        # compiles at once: one client cannot take every core
        self.compile_limiter = anyio.CapacityLimiter(settings.compile_workers or 2)

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
        echoes = [prompts[i // body.n] if body.echo else "" for i in range(len(job.requests))]
        if job.stream:
            return self._sse(self._guarded(self._stream_completion(job, request, echoes)))
        results = await self._generate(job, request)
        choices = [CompletionChoice(index=i, text=echoes[i] + r.text, finish_reason=openai_finish(r),
                                    logprobs=self.lp.completion_logprobs(self.lp.result_tokens(r)) if job.want_logprobs else None)
                   for i, r in enumerate(results)]
        return CompletionResponse(model=self.settings.model_name, choices=choices, usage=_usage(results)).model_dump()

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        self._check_common(body)
        try:
            plan = plan_tools(body, self.settings.strict_schemas)
        except ToolError as e:
            raise APIError(400, str(e), param=e.param) from None
        prompt = self._chat_prompt(body, plan)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = self.settings.default_max_tokens if max_tokens is None else max_tokens
        if body.top_logprobs and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        job = await self._job(body, [prompt], max_tokens, "chat", body.logprobs, body.top_logprobs or 0, plan)
        if job.stream:
            return self._sse(self._guarded(self._stream_chat(job, request)))
        results = await self._generate(job, request)
        choices = [self._chat_choice(i, r, job) for i, r in enumerate(results)]
        return ChatCompletionResponse(model=self.settings.model_name, choices=choices, usage=_usage(results)).model_dump()

    def _chat_choice(self, index: int, result: GenerateResult, job: _Job) -> ChatChoice:
        calls = parse_calls(result.text) if job.is_call(result) else None
        if calls:
            return ChatChoice(index=index, message=ResponseMessage(content=None, tool_calls=calls), finish_reason="tool_calls")
        logprobs = self.lp.chat_logprobs(self.lp.result_tokens(result)) if job.want_logprobs else None
        return ChatChoice(index=index, message=ResponseMessage(content=result.text), finish_reason=openai_finish(result),
                          logprobs=logprobs)

    # --- validation ---
    def check_model(self, name: str | None) -> None:
        """A 404 unless ``name`` is None or the model this server serves."""
        if name is not None and name != self.settings.model_name:
            raise APIError(404, f"model {name!r} is not served here; this server serves {self.settings.model_name!r}",
                           param="model", code="model_not_found")

    def _check_common(self, body: SamplingFields) -> None:
        self.check_model(body.model)
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name) not in (None, 0, 0.0):
                raise APIError(400, f"{name} is not supported", param=name)
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")
        if body.n > self.settings.max_n:
            raise APIError(400, f"n={body.n} is above the limit of {self.settings.max_n}", param="n")

    def _chat_prompt(self, body: ChatCompletionRequest, plan: ToolPlan | None) -> str:
        """The messages in the backend's chat template, plus the assistant's prefix.

        The tools (if any) are described at the end of the system message (one is added
        if the conversation has none)."""
        messages = list(body.messages)
        default_system = getattr(self.backend, "default_system_prompt", None)
        tool_text = system_text(plan) if plan is not None else None
        has_system = messages[0].role in ("system", "developer")
        parts = []
        if not has_system and (default_system or tool_text):
            content = "\n\n".join(x for x in (default_system, tool_text) if x)
            prefix, suffix = self.backend.role_text("system", content)
            parts.append(prefix + content + suffix)
        last = len(messages) - 1
        for i, m in enumerate(messages):
            role = "system" if m.role == "developer" else m.role
            content = _message_text(m.content, i)
            if i == 0 and has_system and tool_text:
                content = f"{content}\n\n{tool_text}" if content else tool_text
            if m.tool_calls:
                if role != "assistant":
                    raise APIError(400, "only assistant messages have tool_calls", param=f"messages.{i}.tool_calls")
                content = (content + "\n" if content else "") + render_calls(m.tool_calls)
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
                   want_logprobs: bool, top_logprobs: int, tools: ToolPlan | None = None) -> _Job:
        if max_tokens > self.settings.max_tokens_limit:
            raise APIError(400, f"max_tokens={max_tokens} is above the limit of {self.settings.max_tokens_limit}",
                           param="max_tokens")
        spec, param = constraint_of(body, self.settings.strict_schemas)
        call_spec = call_checker = None
        with_format = False
        if tools is not None:
            answer_format = answer_schema(spec, param, tools)
            call_spec = ConstraintSpec(json_schema=tools.call_schema)
            call_checker = await self._compile(call_spec, "tools")
            if tools.mode == "required":
                spec, param = call_spec, "tools"
            elif answer_format is not None:  # one pass: a call or an answer in the format
                spec, param, with_format = ConstraintSpec(json_schema=call_or_answer_schema(tools, answer_format)), \
                    "response_format", True
            else:
                spec, param = ConstraintSpec(regex=AUTO_FIRST_PASS), "tools"
        checker = None
        if spec is not None:
            checker = call_checker if spec is call_spec else await self._compile(spec, param)
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
                    seed=None if body.seed is None else (body.seed + k) % 2**64,  # n samples differ (64 bits)
                    logprobs=want_logprobs,
                    top_logprobs=top_logprobs if want_logprobs else 0,
                )
                requests.append(GenerateRequest(prompt=prompt, params=params, constraint=spec))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _Job(requests, checker, body.stream, include_usage, want_logprobs, top_logprobs,
                    trace.new_request_id(endpoint), endpoint, tools, call_spec, call_checker, param=param,
                    with_format=with_format)

    async def _compile(self, spec: ConstraintSpec, param: str) -> Any:
        size = constraint_size(spec)
        if size > self.settings.max_constraint_bytes:
            raise APIError(400, f"the constraint is {size} bytes, above the limit of {self.settings.max_constraint_bytes}",
                           param=param, code="constraint_too_large")
        budget = self.settings.compile_timeout_s
        if self.compile_pool is not None:
            pool, asked = self.compile_pool, time.monotonic()
            key = json.dumps(describe_constraint(spec), sort_keys=True)
            if key in self.known_ok:
                self.known_ok.move_to_end(key)
                return PoolChecker(pool, spec, budget)
            try:
                # waiting for a free worker counts against the budget, a worker's start does not
                with anyio.fail_after(budget + STARTUP_S):
                    outcome = await anyio.to_thread.run_sync(
                        lambda: pool.compile(spec, budget - (time.monotonic() - asked)), limiter=self.compile_limiter)
            except TimeoutError:
                outcome = None
            compiled = PoolChecker(pool, spec, budget) if outcome is not None else None
            if outcome is not None and outcome[0] == "ok":
                self.known_ok[key] = None
                while len(self.known_ok) > KNOWN_OK_SIZE:
                    self.known_ok.popitem(last=False)
        else:
            try:
                with anyio.fail_after(budget):
                    # a compile thread cannot be interrupted: on timeout it is abandoned and
                    # finishes (bounded by the compiler's own budget) in the background
                    compiled, outcome = await anyio.to_thread.run_sync(try_compile, spec, abandon_on_cancel=True,
                                                                       limiter=self.compile_limiter)
            except TimeoutError:
                outcome = None
        if outcome is None:
            raise APIError(400, f"{param}: the constraint did not compile within the budget of {budget:g} s", param=param,
                           code="constraint_too_complex")
        kind = outcome[0]
        if kind == "invalid":
            raise APIError(400, f"{param}: {outcome[1]}", param=param, code="invalid_constraint", location=outcome[2])
        if kind != "ok":
            code = "constraint_too_complex" if kind == "complex" else "unsupported_constraint"
            raise APIError(400, f"{param}: {outcome[1]}", param=param, code=code)
        return compiled

    # --- running ---
    async def call_backend(self, fn: Callable[[], Any], rid: str) -> Any:
        queued = time.perf_counter()
        started = False
        self.metrics.start_waiting()

        def run() -> Any:
            nonlocal started
            started = True
            self.metrics.stop_waiting(time.perf_counter() - queued)
            # counted as running while the worker thread works, even after its client left
            with trace.request_context(rid), self.metrics.track_running():  # the engine's trace lines carry rid
                return fn()

        try:
            return await anyio.to_thread.run_sync(run, limiter=self.limiter)
        finally:
            if not started:  # cancelled while waiting for a slot
                self.metrics.stop_waiting(None)

    async def _generate(self, job: _Job, request: Request) -> list[GenerateResult]:
        """Run a non-streaming job (both passes of auto tool calls), then record it."""
        results = await self._run(job, job.requests, request)
        if job.two_pass:
            redo = [i for i, r in enumerate(results) if opened_call(r.text)]
            if redo:
                again = await self._run(job, [self._call_request(job, job.requests[i]) for i in redo], request)
                for i, r in zip(redo, again, strict=True):
                    results[i] = _second_pass(results[i], r)
        latency = time.perf_counter() - job.started
        outcomes = [await self._check_output(job, r, openai_finish(r)) for r in results]
        ttft = results[0].meta.get("ttft_s") if results else None
        self._observe(job, results, outcomes, latency, ttft)
        return results

    @staticmethod
    def _call_request(job: _Job, first: GenerateRequest) -> GenerateRequest:
        """The second (call) pass of an auto tool-call request."""
        return dataclasses.replace(first, constraint=job.call_spec)

    async def _run(self, job: _Job, requests: list[GenerateRequest], request: Request) -> list[GenerateResult]:
        """Generate ``requests``; stop waiting (and drop the answers) if the client leaves."""
        submit = getattr(self.backend, "submit", None)
        handles: list[Any] = []  # requests a disconnecting client can cancel
        if submit is not None:
            def fn() -> list[GenerateResult]:
                for r in requests:
                    handles.append(refusing(submit, r))
                return [h.result() for h in handles]
        elif len(requests) == 1:
            def fn() -> list[GenerateResult]:
                return [self.backend.generate(requests[0])]
        else:
            def fn() -> list[GenerateResult]:
                return list(self.backend.generate_batch(requests))
        task = asyncio.ensure_future(self.call_backend(fn, job.rid))
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
                    task.add_done_callback(swallow)
                    self.metrics.observe_status("cancelled")
                    raise ClientGone
            results = task.result()
        except ClientGone:
            raise APIError(499, "client disconnected", code="client_closed", counted=True) from None
        except Refused as e:
            self.metrics.observe_status("rejected")
            error = e.api_error()
            error.counted = True
            raise error from None
        except Exception as e:  # noqa: BLE001 - reported to the client as a 500
            self.metrics.observe_status("error")
            log.exception("generation failed")
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}", type_="server_error", counted=True) from None
        for r in results:
            if r.finish_reason == "error":  # never shown as an empty "stop"
                error = generation_error(r, job.param)
                self.metrics.observe_status("rejected" if error.status < 500 else "error")
                error.counted = True
                raise error
        return results

    def _observe(self, job: _Job, results: list[GenerateResult], outcomes: list[str | None], latency: float,
                 ttft: float | None) -> None:
        """Metrics and the trace line (when tracing) of a finished request."""
        usage = _usage(results)
        self.metrics.observe_request(latency_s=latency, ttft_s=ttft, prompt_tokens=usage.prompt_tokens,
                                     completion_tokens=usage.completion_tokens, constraint=_worst(outcomes))
        for r in results:
            mask_time = r.meta.get("mask_time_s")
            if isinstance(mask_time, (int, float)) and r.meta.get("masks"):
                self.metrics.observe_mask_time(mask_time / max(1, int(r.meta["masks"])))
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
            "outputs": [r.text for r in results],
            "finish_reasons": [openai_finish(r) for r in results],
            "latency_s": latency,
            "ttft_s": ttft,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "constraint_outcomes": outcomes,
            "max_tokens": first.params.max_tokens,
            "temperature": first.params.temperature,
        })

    async def _check_output(self, job: _Job, result: GenerateResult, finish_reason: str) -> str | None:
        """Does the output satisfy its constraint? (the server's own check, for metrics)"""
        checker = job.call_checker if job.is_call(result) else job.checker
        if checker is None:
            return None
        ok = await anyio.to_thread.run_sync(checker.accepts_text, result.text, limiter=self.compile_limiter)
        if ok is None:  # undecided (a compile worker ran out of time)
            return None
        if ok:
            return "satisfied"
        return "truncated" if finish_reason == "length" else "violated"

    # --- streaming ---
    async def _guarded(self, chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
        """``chunks``, with a client that leaves counted as cancelled and a failure
        reported in-stream as an error event."""
        try:
            async for chunk in chunks:
                yield chunk
        except ClientGone:
            self.metrics.observe_status("cancelled")
        except (APIError, Refused) as e:  # the request's own fault, or a failed generation
            error = e if isinstance(e, APIError) else e.api_error()
            self.metrics.observe_status("rejected" if error.status < 500 else "error")
            yield ErrorResponse(error=error.detail).model_dump()
        except (asyncio.CancelledError, GeneratorExit):
            self.metrics.observe_status("cancelled")
            raise
        except Exception as e:  # noqa: BLE001 - reported in-stream
            self.metrics.observe_status("error")
            log.exception("streamed generation failed")
            yield ErrorResponse(error=ErrorDetail(message=f"generation failed: {type(e).__name__}: {e}",
                                                  type="server_error")).model_dump()
        finally:
            await chunks.aclose()

    async def _stream_events(self, job: _Job, request: Request, choices: list[StreamChoice]
                             ) -> AsyncIterator[tuple[StreamChoice, str, Any]]:
        """``(choice, "delta", (text, tokens))`` and ``(choice, "done", result)`` of every
        choice, streamed at once; an auto tool-call choice that opens a call gets its second
        pass here (its deltas follow). Also notes the time to the first token."""
        streams = Streams(self, job, request)
        for c in choices:
            streams.start(c.index, job.requests[c.index])
        async for index, kind, value in streams.events():
            c = choices[index]
            if kind == "delta":
                text, progress = value
                if job.ttft is None:
                    job.ttft = time.perf_counter() - job.started
                c.emitted += len(text)
                yield c, "delta", (text, self.lp.progress_tokens(c, progress))
                continue
            result = value if value is not None else self._estimate_result(job.requests[index], "".join(c.pieces))
            if job.two_pass and not c.call_pass and opened_call(result.text):
                c.begin_call_pass(result)
                streams.start(index, self._call_request(job, job.requests[index]))
                continue
            if c.first is not None:
                result = _second_pass(c.first, result)
            c.result = result
            yield c, "done", result

    async def _stream_chat(self, job: _Job, request: Request) -> AsyncIterator[dict]:
        cid, created, model = new_id("chatcmpl"), now(), self.settings.model_name

        def chunk(index: int, delta: DeltaMessage, finish: str | None = None,
                  logprobs: ChoiceLogprobs | None = None) -> dict:
            return ChatCompletionChunk(id=cid, created=created, model=model, choices=[
                ChatChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)]).model_dump(exclude_none=True)

        choices = [StreamChoice(i) for i in range(len(job.requests))]
        for c in choices:
            yield chunk(c.index, DeltaMessage(role="assistant", content=""))
        whole = job.whole_answer
        async for c, kind, value in self._stream_events(job, request, choices):
            if kind == "delta":
                text, tokens = value
                c.pieces.append(text)
                if whole or c.call_pass or c.opening:
                    continue  # a call is sent whole when it is complete
                c.held += text
                c.held_tokens += tokens
                if job.tools is not None and not c.decided:
                    if not c.held.strip():
                        continue  # whitespace: does a call or an answer follow?
                    c.decided, c.opening = True, opened_call(c.held)
                    if c.opening:
                        continue  # the first pass ends here; the call pass follows
                yield chunk(c.index, DeltaMessage(content=c.held), logprobs=self.lp.stream_logprobs(job, c.held_tokens, True))
                c.held, c.held_tokens = "", []
                continue
            result = value
            calls = parse_calls(result.text) if job.is_call(result) else None
            if calls:
                for k, call in enumerate(calls):
                    delta = DeltaToolCall(index=k, id=call.id, type="function",
                                          function=DeltaFunction(name=call.function.name, arguments=call.function.arguments))
                    yield chunk(c.index, DeltaMessage(tool_calls=[delta]))
                yield chunk(c.index, DeltaMessage(), "tool_calls")
                continue
            rest = "".join(c.pieces) if (whole or c.call_pass) else c.held  # not sent yet
            tokens = c.held_tokens + self.lp.rest_tokens(c, result)
            if rest:
                yield chunk(c.index, DeltaMessage(content=rest), logprobs=self.lp.stream_logprobs(job, tokens, True))
                tokens = []
            yield chunk(c.index, DeltaMessage(), openai_finish(result), self.lp.stream_logprobs(job, tokens, True) if tokens else None)
        usage = await self._end_stream(job, choices)
        if job.include_usage:
            yield ChatCompletionChunk(id=cid, created=created, model=model, choices=[], usage=usage).model_dump(exclude_none=True)

    async def _stream_completion(self, job: _Job, request: Request, echoes: list[str]) -> AsyncIterator[dict]:
        cid, created, model = new_id("cmpl"), now(), self.settings.model_name

        def chunk(index: int, text: str, finish: str | None = None, logprobs: CompletionLogprobs | None = None) -> dict:
            return CompletionResponse(id=cid, created=created, model=model, choices=[
                CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs)]).model_dump()

        choices = [StreamChoice(i) for i in range(len(job.requests))]
        for c in choices:
            if echoes[c.index]:
                yield chunk(c.index, echoes[c.index])
        async for c, kind, value in self._stream_events(job, request, choices):
            if kind == "delta":
                text, tokens = value
                c.pieces.append(text)
                yield chunk(c.index, text, logprobs=self.lp.stream_logprobs(job, tokens, False))
            else:
                tokens = self.lp.rest_tokens(c, value)
                yield chunk(c.index, "", openai_finish(value), self.lp.stream_logprobs(job, tokens, False) if tokens else None)
        usage = await self._end_stream(job, choices)
        if job.include_usage:
            yield CompletionResponse(id=cid, created=created, model=model, choices=[], usage=usage).model_dump()

    async def _end_stream(self, job: _Job, choices: list[StreamChoice]) -> Usage:
        """Record a finished stream (metrics, trace); its usage."""
        results = [c.result or GenerateResult(text="".join(c.pieces)) for c in choices]
        outcomes = [await self._check_output(job, r, openai_finish(r)) for r in results]
        self._observe(job, results, outcomes, time.perf_counter() - job.started, job.ttft)
        return _usage(results)

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


def _second_pass(first: GenerateResult, second: GenerateResult) -> GenerateResult:
    """The result of an auto tool-call request whose second pass wrote the call."""
    second.meta["tool_call_pass"] = True
    second.meta["first_pass_tokens"] = _completion_tokens(first)
    return second


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


def _completion_tokens(result: GenerateResult) -> int:
    """Generated tokens: the ids, else the count a proxied server reported; plus a first
    pass (auto tool calls)."""
    n = len(result.token_ids) or int(result.meta.get("completion_tokens", 0))
    return n + int(result.meta.get("first_pass_tokens", 0))


def _usage(results: list[GenerateResult]) -> Usage:
    prompt = sum(int(r.meta.get("prompt_tokens", 0)) for r in results)
    completion = sum(_completion_tokens(r) for r in results)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _worst(outcomes: list[str | None]) -> str | None:
    return next((o for o in ("violated", "truncated", "satisfied") if o in outcomes), None)


__all__ = ["APIError", "GuardMiddleware", "ServerSettings", "compile_constraint", "constraint_of", "create_app"]
