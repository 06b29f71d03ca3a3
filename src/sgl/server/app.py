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

Every client mistake is a 4xx with OpenAI's error object (bodies are parsed here as
strict JSON: see ``read_body``); a 500 is the server's own bug, logged with the request
id it names. A generation that fails is an error, never an empty ``"stop"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

try:
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException
except ModuleNotFoundError as e:  # the core install has no fastapi: say which extra adds it
    from sgl._extras import MissingExtraError

    raise MissingExtraError("the SGL server (sgl serve)", "server", [e.name or "fastapi"]) from e

from sgl.backends.base import Backend, GenerateRequest, GenerateResult
from sgl.constrain.errors import ConstraintError
from sgl.telemetry import trace
from sgl.telemetry.metrics import Metrics, get_metrics
from sgl.types import ConstraintSpec, SamplingParams

from .compile_pool import CompilePool, PoolChecker, compile_constraint, try_compile
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
    DeltaFunction,
    DeltaMessage,
    DeltaToolCall,
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
from .schemas import resolve_strict
from .tools import (
    AUTO_FIRST_PASS,
    ToolError,
    ToolPlan,
    opened_call,
    parse_calls,
    plan_tools,
    render_calls,
    system_text,
)

log = logging.getLogger("sgl.server")

JSON_OBJECT_SCHEMA = {"type": "object"}  # response_format json_object: any JSON object
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


class APIError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 location: str | None = None, type_: str = "invalid_request_error", counted: bool = False):
        super().__init__(message)
        self.status = status
        self.counted = counted  # already in the metrics (a failed or cancelled generation)
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
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if server.compile_pool is not None:
            server.compile_pool.close()

    app = FastAPI(title="SGL", version="0.1.0", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.sgl = server

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_bug)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return ModelList(data=[ModelCard(id=settings.model_name)]).model_dump()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != settings.model_name:
            raise APIError(404, f"model {model_id!r} is not served here; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
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


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    if not exc.counted:  # refused before generating: requests_total{status="rejected"}
        request.app.state.sgl.metrics.observe_status("rejected" if exc.status < 500 else "error")
    return exc.response()


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return _invalid_fields(exc.errors()).response()


def _invalid_fields(errors: Any) -> APIError:
    """A 422 naming every field that failed validation (pydantic's ``errors()``)."""
    problems = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    first = errors[0] if errors else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    return APIError(422, "invalid request: " + "; ".join(problems), param=param, code="invalid_request", location=param)


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the OpenAI shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return APIError(exc.status_code, str(exc.detail), code=code).response()


async def _server_bug(request: Request, exc: Exception) -> JSONResponse:
    """A bug of the server (never a client's mistake): logged with an id the client sees."""
    rid = trace.new_request_id("error")
    request.app.state.sgl.metrics.observe_status("error")
    log.error("internal error %s on %s %s", rid, request.method, request.url.path, exc_info=exc)
    return APIError(500, f"internal server error (request id {rid})", type_="server_error", code="internal_error").response()


async def read_body(request: Request, model: type[SamplingFields], max_depth: int) -> Any:
    """The request body as ``model``: strict UTF-8 JSON (no NaN / Infinity, no lone
    surrogates, nested at most ``max_depth`` deep), then field validation (422)."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the body is not valid UTF-8 (byte {e.start})", code="invalid_json") from None
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                       code="invalid_json", location=f"line {e.lineno}, column {e.colno}") from None
    except _BadNumber as e:
        raise APIError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, f"the body is nested deeper than {max_depth} levels", code="invalid_json") from None
    problem = _json_problem(data, max_depth)
    if problem is not None:
        message, param = problem
        raise APIError(400, message, param=param, code="invalid_json")
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _invalid_fields(e.errors()) from None


class _BadNumber(ValueError):
    """A JSON number Python would read as NaN or infinity."""


def _no_constant(name: str) -> float:
    raise _BadNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"{text} is out of the range of a double")
    return value


def _json_problem(value: Any, max_depth: int, path: str = "") -> tuple[str, str | None] | None:
    """The first lone surrogate or too deep nesting in parsed JSON: (message, where)."""
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if not _utf8_ok(item):
                return f"{where or 'body'}: the text has a lone surrogate (not valid Unicode)", where or None
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth >= max_depth:
            field = where.split(".", 1)[0] or None  # the top-level field (the full path can be huge)
            return f"the body is nested deeper than {max_depth} levels (in {field or 'body'})", field
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            name = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and not _utf8_ok(key):
                return f"{name}: a key has a lone surrogate (not valid Unicode)", where or None
            stack.append((child, name, depth + 1))
    return None


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class GuardMiddleware:
    """The outermost layer: 401 for a wrong key (before the body is read), then 413 for
    bodies over ``max_bytes``, 408 for a body not received within ``read_timeout_s``.

    The body is read here (requests are small JSON) and replayed to the app. A refused
    body is drained, up to a hard cap and within the deadline, so that the client reads
    the error rather than a connection reset. ``/health`` needs no key.
    """

    def __init__(self, app: Any, max_bytes: int, api_key: str | None, read_timeout_s: float = 30.0,
                 metrics: Metrics | None = None):
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.api_key = api_key
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        has_body = scope["method"] in ("POST", "PUT", "PATCH")
        refusal: tuple[int, str, str] | None = None
        if self.api_key and scope["path"] != "/health" and not key_ok(headers, self.api_key):
            refusal = (401, "missing or incorrect API key (send 'Authorization: Bearer KEY')", "invalid_api_key")
        body = bytearray()
        if has_body:
            declared = headers.get("content-length", "")
            if refusal is None and declared.isdigit() and int(declared) > self.max_bytes:
                refusal = (413, f"request body is larger than the limit of {self.max_bytes} bytes", "request_too_large")
            try:
                with anyio.fail_after(self.read_timeout_s):
                    refusal = await self._read(receive, body, refusal)
            except TimeoutError:
                self._count("rejected")
                await _send_error(scope, receive, send, 408, f"the request body did not arrive within {self.read_timeout_s:g} s",
                                  "request_timeout", close=True)
                return
            except ClientGone:
                return
        if refusal is not None:
            self._count("rejected")
            await _send_error(scope, receive, send, *refusal, close=has_body)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _count(self, status: str) -> None:
        if self.metrics is not None:
            self.metrics.observe_status(status)

    async def _read(self, receive: Callable, body: bytearray, refusal: tuple[int, str, str] | None
                    ) -> tuple[int, str, str] | None:
        """Read the body into ``body`` (only while it is accepted); the refusal, if any."""
        seen, more = 0, True
        while more and seen <= 16 * self.max_bytes:  # past that, stop reading a hostile upload
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            seen += len(chunk)
            if refusal is None and seen > self.max_bytes:
                refusal = (413, f"request body is larger than the limit of {self.max_bytes} bytes", "request_too_large")
                body.clear()
            if refusal is None:
                body += chunk
        return refusal


async def _send_error(scope: dict, receive: Callable, send: Callable, status: int, message: str, code: str,
                      close: bool = False) -> None:
    """An error answered by the middleware; ``close``: the connection is not reused (its
    request body may be unread)."""
    response = APIError(status, message, code=code).response()
    if close:
        response.headers["Connection"] = "close"
    await response(scope, receive, send)


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
    tools: ToolPlan | None = None
    call_spec: ConstraintSpec | None = None  # tools: the constraint of a call
    call_checker: Any = None
    started: float = field(default_factory=time.perf_counter)
    ttft: float | None = None  # streaming: seconds to the first delta
    param: str | None = None  # the field that gave the constraint

    def is_call(self, result: GenerateResult) -> bool:
        """Was ``result`` generated under the tool-call constraint?"""
        return self.tools is not None and (self.tools.mode == "required" or bool(result.meta.get("tool_call_pass")))


class _Server:
    def __init__(self, backend: Backend, settings: ServerSettings):
        self.backend = backend
        self.settings = settings
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
            return self._sse(self._guarded(job, self._stream_completion(job, request, echoes)))
        results = await self._generate(job, request)
        choices = [CompletionChoice(index=i, text=echoes[i] + r.text, finish_reason=_finish(r),
                                    logprobs=self._completion_logprobs(self._result_tokens(r)) if job.want_logprobs else None)
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
            return self._sse(self._guarded(job, self._stream_chat(job, request)))
        results = await self._generate(job, request)
        choices = [self._chat_choice(i, r, job) for i, r in enumerate(results)]
        return ChatCompletionResponse(model=self.settings.model_name, choices=choices, usage=_usage(results)).model_dump()

    def _chat_choice(self, index: int, result: GenerateResult, job: _Job) -> ChatChoice:
        calls = parse_calls(result.text) if job.is_call(result) else None
        if calls:
            return ChatChoice(index=index, message=ResponseMessage(content=None, tool_calls=calls), finish_reason="tool_calls")
        logprobs = self._chat_logprobs(self._result_tokens(result)) if job.want_logprobs else None
        return ChatChoice(index=index, message=ResponseMessage(content=result.text), finish_reason=_finish(result),
                          logprobs=logprobs)

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
        if tools is not None:
            if spec is not None:
                raise APIError(400, f"{param} cannot be combined with tools (unless tool_choice is 'none')", param=param)
            call_spec = ConstraintSpec(json_schema=tools.call_schema)
            call_checker = await self._compile(call_spec, "tools")
            spec, param = (call_spec, "tools") if tools.mode == "required" else (ConstraintSpec(regex=AUTO_FIRST_PASS), "tools")
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
                    trace.new_request_id(endpoint), endpoint, tools, call_spec, call_checker, param=param)

    async def _compile(self, spec: ConstraintSpec, param: str) -> Any:
        size = _constraint_size(spec)
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
                with anyio.fail_after(budget):  # waiting for a free worker counts against the budget
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
    async def _call(self, fn: Callable[[], Any], rid: str) -> Any:
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
        if job.tools is not None and job.tools.mode == "auto":
            redo = [i for i, r in enumerate(results) if opened_call(r.text)]
            if redo:
                again = await self._run(job, [self._call_request(job, job.requests[i]) for i in redo], request)
                for i, r in zip(redo, again, strict=True):
                    results[i] = _second_pass(results[i], r)
        latency = time.perf_counter() - job.started
        outcomes = [await self._check_output(job, r, _finish(r)) for r in results]
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
                    handles.append(_refusing(submit, r))
                return [h.result() for h in handles]
        elif len(requests) == 1:
            def fn() -> list[GenerateResult]:
                return [self.backend.generate(requests[0])]
        else:
            def fn() -> list[GenerateResult]:
                return list(self.backend.generate_batch(requests))
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
            raise APIError(499, "client disconnected", code="client_closed", counted=True) from None
        except _Refused as e:
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
        """Metrics and the trace line of a finished request."""
        usage = _usage(results)
        self.metrics.observe_request(latency_s=latency, ttft_s=ttft, prompt_tokens=usage.prompt_tokens,
                                     completion_tokens=usage.completion_tokens, constraint=_worst(outcomes))
        for r in results:
            mask_time = r.meta.get("mask_time_s")
            if isinstance(mask_time, (int, float)) and r.meta.get("masks"):
                self.metrics.observe_mask_time(mask_time / max(1, int(r.meta["masks"])))
        self._log_request(job, [r.text for r in results], [_finish(r) for r in results], latency, ttft,
                          usage.prompt_tokens, usage.completion_tokens, outcomes)

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
    async def _guarded(self, job: _Job, chunks: AsyncIterator[dict]) -> AsyncIterator[dict]:
        """``chunks``, with a client that leaves counted as cancelled and a failure
        reported in-stream as an error event."""
        try:
            async for chunk in chunks:
                yield chunk
        except ClientGone:
            self.metrics.observe_status("cancelled")
        except (APIError, _Refused) as e:  # the request's own fault, or a failed generation
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

    async def _stream_events(self, job: _Job, request: Request, choices: list[_StreamChoice]
                             ) -> AsyncIterator[tuple[_StreamChoice, str, Any]]:
        """``(choice, "delta", (text, tokens))`` and ``(choice, "done", result)`` of every
        choice, streamed at once; an auto tool-call choice that opens a call gets its second
        pass here (its deltas follow). Also notes the time to the first token."""
        streams = _Streams(self, job, request)
        for c in choices:
            streams.start(c.index, job.requests[c.index])
        async for index, kind, value in streams.events():
            c = choices[index]
            if kind == "delta":
                text, progress = value
                if job.ttft is None:
                    job.ttft = time.perf_counter() - job.started
                c.emitted += len(text)
                yield c, "delta", (text, self._progress_tokens(c, progress))
                continue
            result = value if value is not None else self._estimate_result(job.requests[index], "".join(c.pieces))
            if job.tools is not None and job.tools.mode == "auto" and not c.call_pass and opened_call(result.text):
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

        choices = [_StreamChoice(i) for i in range(len(job.requests))]
        for c in choices:
            yield chunk(c.index, DeltaMessage(role="assistant", content=""))
        required = job.tools is not None and job.tools.mode == "required"
        async for c, kind, value in self._stream_events(job, request, choices):
            if kind == "delta":
                text, tokens = value
                c.pieces.append(text)
                if required or c.call_pass or c.opening:
                    continue  # a call is sent whole when it is complete
                c.held += text
                c.held_tokens += tokens
                if job.tools is not None and not c.decided:
                    if not c.held.strip():
                        continue  # whitespace: does a call or an answer follow?
                    c.decided, c.opening = True, opened_call(c.held)
                    if c.opening:
                        continue  # the first pass ends here; the call pass follows
                yield chunk(c.index, DeltaMessage(content=c.held), logprobs=self._stream_logprobs(job, c.held_tokens, True))
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
            rest = "".join(c.pieces) if (required or c.call_pass) else c.held  # not sent yet
            tokens = c.held_tokens + self._rest_tokens(c, result)
            if rest:
                yield chunk(c.index, DeltaMessage(content=rest), logprobs=self._stream_logprobs(job, tokens, True))
                tokens = []
            yield chunk(c.index, DeltaMessage(), _finish(result), self._stream_logprobs(job, tokens, True) if tokens else None)
        usage = await self._end_stream(job, choices)
        if job.include_usage:
            yield ChatCompletionChunk(id=cid, created=created, model=model, choices=[], usage=usage).model_dump(exclude_none=True)

    async def _stream_completion(self, job: _Job, request: Request, echoes: list[str]) -> AsyncIterator[dict]:
        cid, created, model = new_id("cmpl"), now(), self.settings.model_name

        def chunk(index: int, text: str, finish: str | None = None, logprobs: CompletionLogprobs | None = None) -> dict:
            return CompletionChunk(id=cid, created=created, model=model, choices=[
                CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs)]).model_dump()

        choices = [_StreamChoice(i) for i in range(len(job.requests))]
        for c in choices:
            if echoes[c.index]:
                yield chunk(c.index, echoes[c.index])
        async for c, kind, value in self._stream_events(job, request, choices):
            if kind == "delta":
                text, tokens = value
                c.pieces.append(text)
                yield chunk(c.index, text, logprobs=self._stream_logprobs(job, tokens, False))
            else:
                tokens = self._rest_tokens(c, value)
                yield chunk(c.index, "", _finish(value), self._stream_logprobs(job, tokens, False) if tokens else None)
        usage = await self._end_stream(job, choices)
        if job.include_usage:
            yield CompletionChunk(id=cid, created=created, model=model, choices=[], usage=usage).model_dump()

    async def _end_stream(self, job: _Job, choices: list[_StreamChoice]) -> Usage:
        """Record a finished stream (metrics, trace); its usage."""
        results = [c.result or GenerateResult(text="".join(c.pieces)) for c in choices]
        outcomes = [await self._check_output(job, r, _finish(r)) for r in results]
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

    def _result_tokens(self, result: GenerateResult, start: int = 0) -> list[_Tok]:
        """The result's tokens from ``start`` with their logprobs (and top logprobs)."""
        if result.logprobs is None:
            return []
        texts = result.meta.get("token_texts")  # a proxy knows texts, not ids
        text_tops = result.meta.get("top_logprob_texts")
        tops = result.top_logprobs or []
        out = []
        for j in range(start, len(result.logprobs)):
            if text_tops is not None:
                top = list(text_tops[j]) if j < len(text_tops) else []
            else:
                top = [(self._token_text(t), lp) for t, lp in tops[j]] if j < len(tops) else []
            if texts is not None and j < len(texts):
                text = texts[j]
            elif j < len(result.token_ids):
                text = self._token_text(result.token_ids[j])
            else:
                break
            out.append(_Tok(text, _finite(result.logprobs[j]), top))
        return out

    def _progress_tokens(self, c: _StreamChoice, progress: Any) -> list[_Tok]:
        """The tokens whose text has been streamed by now (``progress``: a snapshot of the
        backend's live output, None when it has none: then all come with the last chunk)."""
        if progress is None:
            return []
        ids, lps, tops = progress
        out = []
        while c.reported < min(len(ids), len(lps)):
            j = c.reported
            text = self._token_text(ids[j])
            if c.covered + len(text) > c.emitted:
                break
            c.covered += len(text)
            c.reported += 1
            top = [(self._token_text(t), lp) for t, lp in tops[j]] if j < len(tops) else []
            out.append(_Tok(text, _finite(lps[j]), top))
        return out

    def _rest_tokens(self, c: _StreamChoice, result: GenerateResult) -> list[_Tok]:
        tokens = self._result_tokens(result, c.reported)
        c.reported += len(tokens)
        return tokens

    def _stream_logprobs(self, job: _Job, tokens: list[_Tok], chat: bool) -> Any:
        if not job.want_logprobs:
            return None
        return self._chat_logprobs(tokens) if chat else self._completion_logprobs(tokens)

    def _completion_logprobs(self, tokens: list[_Tok]) -> CompletionLogprobs:
        offsets, pos = [], 0
        for t in tokens:
            offsets.append(pos)
            pos += len(t.text)
        tops = [{text: lp for text, lp in t.top} for t in tokens] if any(t.top for t in tokens) else None
        return CompletionLogprobs(tokens=[t.text for t in tokens], token_logprobs=[t.logprob for t in tokens],
                                  top_logprobs=tops, text_offset=offsets)

    def _chat_logprobs(self, tokens: list[_Tok]) -> ChoiceLogprobs:
        def entry(text: str, lp: float | None) -> dict[str, Any]:
            return {"token": text, "logprob": -9999.0 if lp is None else lp, "bytes": list(text.encode())}

        return ChoiceLogprobs(content=[
            TokenLogprob(**entry(t.text, t.logprob), top_logprobs=[entry(text, _finite(lp)) for text, lp in t.top])
            for t in tokens])

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


# --- streaming helpers ------------------------------------------------------------------
class _Tok(NamedTuple):
    """One generated token for logprobs: its text, logprob and most likely alternatives."""

    text: str
    logprob: float | None
    top: list[tuple[str, float]]


@dataclass
class _StreamChoice:
    """The streaming state of one choice."""

    index: int
    pieces: list[str] = field(default_factory=list)  # text of the current pass
    emitted: int = 0  # characters streamed by the backend in this pass
    covered: int = 0  # characters of the tokens whose logprobs are out
    reported: int = 0  # tokens whose logprobs are out
    held: str = ""  # chat text not sent yet (auto tools: until it is not a call)
    held_tokens: list[_Tok] = field(default_factory=list)
    decided: bool = False  # auto tools: answer or call is known
    opening: bool = False  # auto tools: the first pass opened a call
    call_pass: bool = False  # auto tools: in the second (call) pass
    first: GenerateResult | None = None  # auto tools: the first pass
    result: GenerateResult | None = None

    def begin_call_pass(self, first: GenerateResult) -> None:
        self.first, self.call_pass = first, True
        self.pieces, self.held, self.held_tokens = [], "", []
        self.emitted = self.covered = self.reported = 0


class _Streams:
    """The backend streams of one request's choices, each on a worker thread, merged
    into one queue; closed early when the client goes away."""

    def __init__(self, server: _Server, job: _Job, request: Request):
        self.server, self.job, self.request = server, job, request
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.live = 0

    def start(self, index: int, gen_request: GenerateRequest) -> None:
        self.live += 1
        worker = asyncio.ensure_future(self.server._call(lambda: self._pump(index, gen_request), self.job.rid))
        worker.add_done_callback(_swallow)

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
            handle = _refusing(submit, gen_request) if submit is not None else None
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
                    self._put((index, "delta", (delta, _snapshot(live))))
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


def _snapshot(live: Any) -> tuple[list[int], list[float], list[Any]] | None:
    """A copy of a backend's live output (token ids, logprobs, top logprobs)."""
    if live is None:
        return None
    return list(live.token_ids), list(live.logprobs or ()), list(getattr(live, "top_logprobs", None) or ())


def _second_pass(first: GenerateResult, second: GenerateResult) -> GenerateResult:
    """The result of an auto tool-call request whose second pass wrote the call."""
    second.meta["tool_call_pass"] = True
    second.meta["first_pass_tokens"] = _completion_tokens(first)
    return second


# --- constraints ------------------------------------------------------------------------
def constraint_of(body: SamplingFields, strict_default: bool = True) -> tuple[ConstraintSpec | None, str | None]:
    """The request's one constraint and the name of the field that gave it.

    A JSON Schema is made strict (undeclared keys forbidden) when the request says
    ``strict: true``, or says nothing and ``strict_default`` is on (see ``schemas``)."""

    def schema(value: Any, name: str, strict: bool | None = None) -> ConstraintSpec:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise APIError(400, f"{name}: the schema is not valid JSON: {e.msg}", param=name, code="invalid_constraint",
                               location=f"line {e.lineno}, column {e.colno}") from None
        return ConstraintSpec(json_schema=resolve_strict(value, strict, strict_default))

    found: list[tuple[str, ConstraintSpec]] = []
    rf = body.response_format
    if rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise APIError(400, "response_format of type json_schema needs json_schema.schema", param="response_format")
        found.append(("response_format", schema(rf.json_schema.schema_, "response_format", rf.json_schema.strict)))
    elif rf is not None and rf.type == "json_object":
        found.append(("response_format", ConstraintSpec(json_schema=dict(JSON_OBJECT_SCHEMA))))
    for name, make in (
        ("regex", lambda v: ConstraintSpec(regex=v)),
        ("guided_regex", lambda v: ConstraintSpec(regex=v)),
        ("grammar", lambda v: ConstraintSpec(grammar=v, grammar_syntax=body.grammar_syntax)),
        ("ebnf", lambda v: ConstraintSpec(grammar=v, grammar_syntax="gbnf")),  # SGLang's (xgrammar) EBNF = GBNF
        ("guided_grammar", lambda v: ConstraintSpec(grammar=v, grammar_syntax=guess_grammar_syntax(v))),
        ("choices", lambda v: ConstraintSpec(choices=list(v))),
        ("guided_choice", lambda v: ConstraintSpec(choices=list(v))),
        ("json_schema", lambda v: schema(v, "json_schema")),
        ("guided_json", lambda v: schema(v, "guided_json")),
    ):
        value = getattr(body, name)
        if value is not None:
            found.append((name, make(value)))
    for key, value in (body.structured_outputs or {}).items():
        make = {"regex": lambda v: ConstraintSpec(regex=v), "choice": lambda v: ConstraintSpec(choices=list(v)),
                "grammar": lambda v: ConstraintSpec(grammar=v, grammar_syntax=guess_grammar_syntax(v)),
                "json": lambda v: schema(v, "structured_outputs.json")}.get(key)
        if make is None:
            raise APIError(400, f"structured_outputs.{key} is not supported (use regex, choice, grammar or json)",
                           param=f"structured_outputs.{key}")
        if value is not None:
            found.append((f"structured_outputs.{key}", make(value)))
    _check_guided_options(body)
    if body.structural_tag is not None or (rf is not None and rf.type == "structural_tag"):
        param = "structural_tag" if body.structural_tag is not None else "response_format"
        raise APIError(400, f"{param}: structural tags are not supported yet (use tools, or one constraint)", param=param)
    if len(found) > 1:
        raise APIError(400, f"one constraint per request, got {', '.join(n for n, _ in found)}", param=found[1][0])
    if not found:
        return None, None
    name, spec = found[0]
    if spec.choices is not None and not spec.choices:
        raise APIError(400, f"{name} is empty", param=name)
    return spec, name


def guess_grammar_syntax(text: str) -> str:
    """vLLM's rule for ``guided_grammar``: a grammar with ``::=`` outside comments is
    GBNF/EBNF, any other is Lark."""
    for line in text.splitlines():
        code = line.split("#", 1)[0] if not line.lstrip().startswith("//") else ""
        if "::=" in code:
            return "gbnf"
    return "lark"


GUIDED_BACKENDS = ("auto", "sgl")


def _check_guided_options(body: SamplingFields) -> None:
    """vLLM's ``guided_*`` options that change how, not what: honoured or refused."""
    if body.guided_whitespace_pattern is not None:
        raise APIError(400, "guided_whitespace_pattern is not supported; a schema can ask for compact JSON with "
                       '"x-guidance": {"whitespace_flexible": false}', param="guided_whitespace_pattern")
    backend = body.guided_decoding_backend
    if backend is not None and backend.split(":", 1)[0] not in GUIDED_BACKENDS:
        raise APIError(400, f"guided_decoding_backend {backend!r} is not available here; this server decodes with its own "
                       f"engine ({' or '.join(GUIDED_BACKENDS)})", param="guided_decoding_backend")


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
    # OpenAI's vocabulary: "stop" (EOS, stop string, grammar complete) or "length";
    # a failed generation is an error (see generation_error), never an empty "stop"
    if result.finish_reason == "error":
        raise generation_error(result)
    return "length" if result.finish_reason == "length" else "stop"


class _Refused(Exception):
    """The backend refused a request when it was submitted (e.g. a prompt too long)."""

    def api_error(self) -> APIError:
        return APIError(400, str(self), code="invalid_request")


def _refusing(submit: Callable[[GenerateRequest], Any], request: GenerateRequest) -> Any:
    """``submit(request)``; a ValueError (the backend's check of the request) is a _Refused."""
    try:
        return submit(request)
    except (ValueError, ConstraintError) as e:
        raise _Refused(str(e)) from None


def generation_error(result: GenerateResult, param: str | None = None) -> APIError:
    """The error of a generation that ended with finish_reason "error": the engine's own
    failure is a 500; a constraint that allows no output, or a request larger than the
    engine's budget, is the request's (400)."""
    message = str(result.meta.get("error") or "the generation failed")
    if message.startswith("engine error"):
        return APIError(500, f"generation failed: {message}", type_="server_error", code="generation_failed")
    return APIError(400, f"generation failed: {message}", code="generation_failed",
                    param=param if "constraint" in message else None)


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
