"""SGL programs against any OpenAI-compatible HTTP server (hosted OpenAI, vLLM, SGLang,
``sgl serve``), with structured outputs passed through, over ``httpx``.

``sgl.OpenAI(model, base_url=..., api_key=..., timeout=..., max_retries=...)`` and
``sgl.RuntimeEndpoint("http://host:port")`` (an SGLang / vLLM / ``sgl serve`` server;
the model and the server kind are discovered from ``/v1/models``).

How each constraint travels, by ``server_kind``:

===============  ===================  ==================  ==============  ===============================  ==================
constraint       ``openai``           ``sgl``             ``sglang``      ``vllm`` (>= 0.12)               ``vllm-legacy``
===============  ===================  ==================  ==============  ===============================  ==================
json_schema      response_format      response_format     response_format response_format                  response_format
regex            response_format (*)  ``regex``           ``regex``       ``structured_outputs.regex``     ``guided_regex``
grammar          not supported        ``grammar`` +       ``ebnf``        ``structured_outputs.grammar``   ``guided_grammar``
                                      ``grammar_syntax``  (gbnf/ebnf)     (gbnf/ebnf)                      (gbnf/ebnf)
choices          response_format (*)  ``choices``         ``regex`` (**)  ``structured_outputs.choice``    ``guided_choice``
===============  ===================  ==================  ==============  ===============================  ==================

(*) hosted APIs only take JSON Schema: the value is wrapped as ``{"value": ...}`` with a
``pattern`` (regex) or ``enum`` (choices), unwrapped on return and checked locally.
(**) SGLang has no choice field: the choices become an alternation of escaped literals.
``response_format`` is ``{"type": "json_schema", "json_schema": {"name", "schema",
"strict"}}``. ``server_kind="auto"`` asks ``/v1/models`` (``owned_by``) and, for vLLM,
``/version``; hosts other than those fall back to ``openai``.

Prompts: the program's text is sent to ``/chat/completions`` (``api="chat"``, default)
after splitting it back into messages at the role markers ``role_text`` wrote
(ChatML: ``<|im_start|>role\\n ... <|im_end|>\\n``); text after an open assistant
marker is continued (``continue_final_message``) on servers that support it.
``api="completions"`` sends the text verbatim to ``/completions``.

Reliability: each HTTP attempt has its own ``timeout``; 429, 5xx, timeouts and
connection errors are retried up to ``max_retries`` times with exponential backoff
(honouring ``Retry-After``), but never once output has arrived. A failure raises
``HTTPBackendError`` (a ``BackendError``) whose ``partial_text`` holds what had been
generated; a constraint the server rejects raises ``ConstraintError`` with its location.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from sgl.backends.base import Backend, Capabilities, GenerateRequest, GenerateResult, SelectResult
from sgl.constrain.errors import ConstraintError
from sgl.errors import BackendError
from sgl.types import ConstraintSpec, SamplingParams

SERVER_KINDS = ("openai", "sgl", "sglang", "vllm", "vllm-legacy")
WRAPPER_TOKENS = 16  # `{"value": ...}` around a regex/choice value, with escapes to spare
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
ROLE_START = "<|im_start|>"
ROLE_END = "<|im_end|>\n"
_ROLE_RE = re.compile(r"<\|im_start\|>(system|user|assistant)\n")


class HTTPBackendError(BackendError):
    """An HTTP call failed for good. ``partial_text`` is the output received before the
    failure ("" if none), ``status_code`` the last HTTP status (None: no response)."""

    def __init__(self, message: str, *, status_code: int | None = None, partial_text: str = "",
                 attempts: int = 1, body: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.partial_text = partial_text
        self.attempts = attempts
        self.body = body


class _Retryable(Exception):
    def __init__(self, message: str, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


@dataclass
class _Outcome:
    text: str = ""
    finish_reason: str = "stop"
    logprobs: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # the text of each logprob's token
    top: list[list[tuple[str, float]]] = field(default_factory=list)  # top_logprobs, as (text, logprob)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finished: bool = False  # a finish_reason arrived: the stream was not cut short


class OpenAI(Backend):
    """A Backend over an OpenAI-compatible server. Thread-safe (one shared connection pool).

    ``model``: the model id (None: the server's first model). ``base_url``: up to and
    including ``/v1`` (default ``$OPENAI_BASE_URL`` or OpenAI's). ``api_key``: default
    ``$OPENAI_API_KEY``. ``timeout``: seconds per HTTP attempt (connect, and between
    received bytes). ``max_retries``: extra attempts for 429/5xx/timeouts.
    ``server_kind``: one of ``SERVER_KINDS`` or ``"auto"``. ``api``: ``"chat"`` or
    ``"completions"``. ``strict``: the ``strict`` flag sent with JSON schemas.
    """

    # the server batches concurrent requests: run_batch's threads just call it at once
    capabilities = Capabilities(continuous_batching=True)

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        *,
        server_kind: str = "auto",
        api: str = "chat",
        strict: bool = True,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_concurrency: int = 8,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        if server_kind != "auto" and server_kind not in SERVER_KINDS:
            raise ValueError(f"server_kind must be 'auto' or one of {', '.join(SERVER_KINDS)}")
        if api not in ("chat", "completions"):
            raise ValueError("api must be 'chat' or 'completions'")
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._model = model
        self._kind = server_kind if server_kind != "auto" else None
        self.api = api
        self.strict = strict
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = max(1, max_concurrency)
        all_headers = {"User-Agent": "sgl/0.1"} | dict(headers or {})
        if self.api_key:
            all_headers["Authorization"] = f"Bearer {self.api_key}"
        self._client = httpx.Client(base_url=self.base_url, headers=all_headers, timeout=timeout, transport=transport)
        self._discover_lock = threading.Lock()

    # --- discovery ---
    @property
    def model(self) -> str:
        if self._model is None:
            self._discover()
        return self._model  # type: ignore[return-value]

    @property
    def server_kind(self) -> str:
        if self._kind is None:
            self._discover()
        return self._kind  # type: ignore[return-value]

    def _discover(self) -> None:
        """Fill in the model id and the server kind from ``/models`` (and ``/version``)."""
        with self._discover_lock:
            if self._model is not None and self._kind is not None:
                return
            host = httpx.URL(self.base_url).host
            if self._kind is None and host == "api.openai.com":
                self._kind = "openai"
            cards: list[dict] = []
            if self._model is None or self._kind is None:
                try:
                    response = self._request("GET", "/models", None)
                    cards = [c for c in response.json().get("data", []) if isinstance(c, dict)]
                except (HTTPBackendError, ValueError, AttributeError):
                    if self._model is None:
                        raise
            if self._model is None:
                if not cards:
                    raise HTTPBackendError(f"{self.base_url}/models lists no model; pass model=...")
                self._model = str(cards[0].get("id"))
            if self._kind is None:
                card = next((c for c in cards if c.get("id") == self._model), cards[0] if cards else {})
                owner = str(card.get("owned_by", "")).lower()
                self._kind = {"sgl": "sgl", "sglang": "sglang", "vllm": "vllm"}.get(owner, "openai")
                if self._kind == "vllm" and self._vllm_is_legacy():
                    self._kind = "vllm-legacy"

    def _vllm_is_legacy(self) -> bool:
        root = self.base_url.removesuffix("/v1")
        try:
            version = self._client.get(root + "/version").json().get("version", "")
            major, minor = (int(x) for x in re.findall(r"\d+", version)[:2])
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return (major, minor) < (0, 12)

    # --- Backend ---
    def role_text(self, role: str, content: str) -> tuple[str, str]:
        """ChatML markers; ``api="chat"`` turns them back into messages."""
        return f"{ROLE_START}{role}\n", ROLE_END

    def generate(self, request: GenerateRequest) -> GenerateResult:
        stream = self._stream(request)
        while True:
            try:
                next(stream)
            except StopIteration as stop:  # the stream's return value is its _Outcome
                return self._result(request, stop.value)

    def generate_stream(self, request: GenerateRequest) -> Iterator[str]:
        """Text deltas as the server sends them; returns the ``GenerateResult``."""
        outcome = yield from self._stream(request)
        return self._result(request, outcome)

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        if len(requests) <= 1:
            return [self.generate(r) for r in requests]
        with ThreadPoolExecutor(min(self.max_concurrency, len(requests)), thread_name_prefix="sgl-http") as pool:
            return list(pool.map(self.generate, requests))

    def select(self, prompt: str, choices: Sequence[str], method: str = "token_length_normalized") -> SelectResult:
        """Greedy decoding under a choices constraint; the chosen one scores its summed
        token logprobs (0.0 if the server sends none), the others ``-inf``.

        ``method`` is not used: scoring every choice needs prompt logprobs, which
        OpenAI-compatible servers do not expose uniformly.
        """
        choices = list(choices)
        if not choices:
            raise ValueError("select needs at least one choice")
        longest = max(len(c.encode()) for c in choices)
        params = SamplingParams(max_tokens=min(4096, longest + 8), temperature=0.0, logprobs=True)
        result = self.generate(GenerateRequest(prompt=prompt, params=params, constraint=ConstraintSpec(choices=choices)))
        index = _match_choice(result.text, choices)
        if index is None:
            raise HTTPBackendError(f"the server answered {result.text!r}, which is none of the choices",
                                   partial_text=result.text)
        score = sum(result.logprobs) if result.logprobs else 0.0
        return SelectResult(index=index, scores=[score if i == index else float("-inf") for i in range(len(choices))])

    def close(self) -> None:
        self._client.close()

    # --- one generation ---
    def _stream(self, request: GenerateRequest) -> Iterator[str]:
        """Yields deltas; returns an ``_Outcome``. Retries only before the first delta."""
        path, body, unwrap = self._body(request)
        deadline_attempts = self.max_retries + 1
        for attempt in range(deadline_attempts):
            outcome = _Outcome()
            received = False
            try:
                with self._client.stream("POST", path, json=body) as response:
                    self._raise_for_status(response, attempt)
                    for event in _sse_events(response):
                        delta = self._absorb(event, outcome)
                        if delta:
                            received = True
                            outcome.text += delta
                            if unwrap is None:
                                yield delta
            except _Retryable as e:
                if attempt + 1 >= deadline_attempts:
                    raise HTTPBackendError(f"{e} (gave up after {attempt + 1} attempts)", status_code=e.status_code,
                                           attempts=attempt + 1) from None
                self._sleep(attempt, e.retry_after)
                continue
            except (httpx.TimeoutException, httpx.TransportError) as e:
                what = "timed out" if isinstance(e, httpx.TimeoutException) else f"failed: {type(e).__name__}: {e}"
                if received or attempt + 1 >= deadline_attempts:
                    raise HTTPBackendError(f"request to {self.base_url}{path} {what}" +
                                           (f" after {len(outcome.text)} characters of output" if received else
                                            f" (gave up after {attempt + 1} attempts)"),
                                           partial_text=outcome.text, attempts=attempt + 1) from e
                self._sleep(attempt, None)
                continue
            if not outcome.finished:
                raise HTTPBackendError(f"the response from {self.base_url}{path} ended before the generation did",
                                       partial_text=outcome.text, attempts=attempt + 1)
            if unwrap is not None:
                outcome.text = unwrap(outcome.text)
                if outcome.text:
                    yield outcome.text
            return outcome
        raise AssertionError("unreachable")

    def _absorb(self, event: dict, outcome: _Outcome) -> str:
        """Update ``outcome`` from one chunk; return its text delta."""
        if "error" in event:
            err = event["error"] if isinstance(event["error"], dict) else {"message": str(event["error"])}
            raise HTTPBackendError(f"server error during generation: {err.get('message')}", partial_text=outcome.text, body=event)
        usage = event.get("usage")
        if usage:
            outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            outcome.completion_tokens = int(usage.get("completion_tokens") or 0)
        delta = ""
        for choice in event.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            if "delta" in choice:
                delta += (choice.get("delta") or {}).get("content") or ""
            else:
                delta += choice.get("text") or ""
            if choice.get("finish_reason"):
                outcome.finished = True
                outcome.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
            for token, logprob, top in _chunk_logprobs(choice.get("logprobs")):
                outcome.tokens.append(token)
                outcome.logprobs.append(logprob)
                outcome.top.append(top)
        return delta

    def _result(self, request: GenerateRequest, outcome: _Outcome) -> GenerateResult:
        return GenerateResult(
            text=outcome.text,
            token_ids=[],  # the server sends text, not ids
            finish_reason=outcome.finish_reason,
            logprobs=outcome.logprobs if request.params.logprobs and outcome.logprobs else None,
            meta={"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
                  "server_kind": self.server_kind, "token_texts": outcome.tokens,
                  "top_logprob_texts": outcome.top if request.params.top_logprobs else None},
        )

    # --- request bodies ---
    def _body(self, request: GenerateRequest) -> tuple[str, dict, Any]:
        p = request.params
        kind = self.server_kind
        body: dict[str, Any] = {"model": self.model, "stream": True, "stream_options": {"include_usage": True},
                                "temperature": p.temperature, "top_p": p.top_p}
        if kind == "openai":
            for name, value, neutral in (("top_k", p.top_k, 0), ("min_p", p.min_p, 0.0), ("min_tokens", p.min_tokens, 0),
                                         ("stop_token_ids", p.stop_token_ids, ())):
                if value != neutral:
                    raise HTTPBackendError(f"{name} is not supported by server kind 'openai'")
        else:
            body.update(top_k=p.top_k if p.top_k > 0 else -1, min_p=p.min_p, min_tokens=p.min_tokens)
            if p.stop_token_ids:
                body["stop_token_ids"] = list(p.stop_token_ids)
        if p.stop:
            body["stop"] = list(p.stop)
        if p.repetition_penalty != 1.0:  # an extra parameter of vLLM's and SGLang's servers
            if kind == "openai":
                raise HTTPBackendError("repetition_penalty is not supported by server kind 'openai'")
            body["repetition_penalty"] = p.repetition_penalty
        if p.stop_regex:  # only SGLang's server takes it
            if kind != "sglang":
                raise HTTPBackendError(f"stop_regex is not supported by server kind {kind!r} (only 'sglang' "
                                       "and the local engine take it)")
            body["stop_regex"] = [p.stop_regex] if isinstance(p.stop_regex, str) else list(p.stop_regex)
        if p.seed is not None:
            body["seed"] = p.seed
        unwrap = None
        if request.constraint is not None and not request.constraint.is_empty():
            unwrap = self._constraint_fields(request.constraint, kind, body)
        # a wrapped value (hosted APIs): the wrapper's own tokens are not the user's budget
        max_tokens = p.max_tokens + (WRAPPER_TOKENS if unwrap is not None else 0)
        if self.api == "chat":
            messages, continue_final = prompt_to_messages(request.prompt)
            body["messages"] = messages
            if continue_final and kind != "openai":
                body.update(continue_final_message=True, add_generation_prompt=False)
            body["max_completion_tokens" if kind == "openai" else "max_tokens"] = max_tokens
            if p.logprobs:
                body["logprobs"] = True
                if p.top_logprobs:
                    body["top_logprobs"] = p.top_logprobs
            return "/chat/completions", body, unwrap
        body["prompt"] = request.prompt
        body["max_tokens"] = max_tokens
        if p.logprobs:
            body["logprobs"] = max(1, p.top_logprobs)
        return "/completions", body, unwrap

    def _constraint_fields(self, c: ConstraintSpec, kind: str, body: dict) -> Any:
        """Put the constraint into ``body`` for ``kind``; returns an unwrap function
        for wrapped outputs (hosted APIs), else None."""
        if c.json_schema is not None:
            schema = json.loads(c.json_schema) if isinstance(c.json_schema, str) else c.json_schema
            body["response_format"] = _json_schema_format(schema, self.strict)
            return None
        if c.grammar is not None and kind in ("sglang", "vllm", "vllm-legacy") and c.grammar_syntax == "lark":
            raise ConstraintError(f"server kind {kind!r} takes GBNF/EBNF grammars, not Lark (grammar_syntax='gbnf')")
        if kind == "sgl":
            if c.regex is not None:
                body["regex"] = c.regex
            elif c.grammar is not None:
                body.update(grammar=c.grammar, grammar_syntax=c.grammar_syntax)
            else:
                body["choices"] = list(c.choices or ())
        elif kind == "sglang":
            if c.grammar is not None:
                body["ebnf"] = c.grammar
            else:
                body["regex"] = c.regex if c.regex is not None else "|".join(re.escape(x) for x in c.choices or ())
        elif kind == "vllm":
            so = {"regex": c.regex} if c.regex is not None else {"grammar": c.grammar} if c.grammar is not None else {"choice": list(c.choices or ())}
            body["structured_outputs"] = so
        elif kind == "vllm-legacy":
            if c.regex is not None:
                body["guided_regex"] = c.regex
            elif c.grammar is not None:
                body["guided_grammar"] = c.grammar
            else:
                body["guided_choice"] = list(c.choices or ())
        else:  # hosted OpenAI-style: JSON Schema only
            if c.grammar is not None:
                raise ConstraintError("grammar constraints need a server that takes them (sgl, SGLang or vLLM); "
                                      "server kind 'openai' only takes JSON Schema")
            # JSON Schema patterns match anywhere in the string: anchor the whole-text regex
            value = ({"type": "string", "pattern": f"^(?:{c.regex})$"} if c.regex is not None
                     else {"type": "string", "enum": list(c.choices or ())})
            wrapper = {"type": "object", "properties": {"value": value}, "required": ["value"], "additionalProperties": False}
            body["response_format"] = _json_schema_format(wrapper, True)
            return lambda text: _unwrap_value(text, c)
        return None

    # --- HTTP plumbing ---
    def _request(self, method: str, path: str, body: Any) -> httpx.Response:
        """A plain (non-streamed) call with retries."""
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.request(method, path, json=body)
                self._raise_for_status(response, attempt)
                return response
            except _Retryable as e:
                if attempt >= self.max_retries:
                    raise HTTPBackendError(f"{e} (gave up after {attempt + 1} attempts)", status_code=e.status_code,
                                           attempts=attempt + 1) from None
                self._sleep(attempt, e.retry_after)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                if attempt >= self.max_retries:
                    raise HTTPBackendError(f"{method} {self.base_url}{path} failed: {type(e).__name__}: {e}",
                                           attempts=attempt + 1) from e
                self._sleep(attempt, None)
        raise AssertionError("unreachable")

    def _raise_for_status(self, response: httpx.Response, attempt: int) -> None:
        if response.status_code < 400:
            return
        response.read()
        message, detail = _error_message(response)
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {message}", response.status_code, _retry_after(response))
        if response.status_code == 400 and detail.get("code") == "invalid_constraint":
            location = detail.get("location")
            if location:  # the server's message already ends with it; ConstraintError adds it back
                message = message.removesuffix(f" (at {location})")
            raise ConstraintError(message, location)
        raise HTTPBackendError(f"HTTP {response.status_code} from {response.request.url}: {message}",
                               status_code=response.status_code, attempts=attempt + 1, body=detail)

    def _sleep(self, attempt: int, retry_after: float | None) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * (2 ** attempt))
        delay *= 0.5 + random.random() / 2  # jitter: clients that failed together retry apart
        if retry_after is not None:
            delay = min(max(delay, retry_after), max(self.max_backoff_s, 30.0))
        time.sleep(delay)


class RuntimeEndpoint(OpenAI):
    """A self-hosted OpenAI-compatible server (SGLang, vLLM, ``sgl serve``) at ``url``
    (``http://host:port``, with or without ``/v1``); model and server kind are read
    from the server unless given."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, **kwargs: Any):
        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        super().__init__(model=model, base_url=base, api_key=api_key or "", **kwargs)


# --- prompt <-> messages ---------------------------------------------------------------
def prompt_to_messages(prompt: str) -> tuple[list[dict[str, str]], bool]:
    """Split a prompt written with ``role_text`` markers into chat messages.

    Text outside any role becomes a user message. A final assistant message left open
    (no end marker) is returned last with ``True``: the model should continue it
    (an empty open assistant message is dropped: it is just the generation prompt).
    """
    messages: list[dict[str, str]] = []
    pos = 0
    open_final = False
    while pos < len(prompt):
        m = _ROLE_RE.search(prompt, pos)
        loose = prompt[pos : m.start() if m else len(prompt)]
        if loose.strip():
            messages.append({"role": "user", "content": loose})
        if m is None:
            break
        end = prompt.find(ROLE_END, m.end())
        if end < 0:
            content = prompt[m.end() :]
            if m.group(1) == "assistant":
                if content:
                    messages.append({"role": "assistant", "content": content})
                    open_final = True
            else:
                messages.append({"role": m.group(1), "content": content})
            break
        messages.append({"role": m.group(1), "content": prompt[m.end() : end]})
        pos = end + len(ROLE_END)
    if not messages:
        messages.append({"role": "user", "content": prompt})
    return messages, open_final


# --- helpers ---------------------------------------------------------------------------
def _json_schema_format(schema: Any, strict: bool) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": strict}}


def _unwrap_value(text: str, c: ConstraintSpec) -> str:
    try:
        value = json.loads(text)["value"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HTTPBackendError(f"the server's structured output is not the expected {{\"value\": ...}} object: {text[:200]!r}",
                               partial_text=text) from e
    value = str(value)
    ok = re.fullmatch(c.regex, value) is not None if c.regex is not None else value in (c.choices or ())
    if not ok:
        raise HTTPBackendError(f"the server's output {value!r} does not satisfy the constraint", partial_text=value)
    return value


def _sse_events(response: httpx.Response) -> Iterator[dict]:
    """The JSON payloads of a server-sent-events response (a plain JSON body, as some
    servers send for errors or when they ignore ``stream``, counts as one event)."""
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        response.read()
        yield response.json()
        return
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
            continue
        if line or not data:
            continue  # comments, event names, ids; or an empty line with nothing pending
        payload = "\n".join(data)
        data = []
        if payload.strip() == "[DONE]":
            return
        yield json.loads(payload)
    if data and "\n".join(data).strip() != "[DONE]":
        yield json.loads("\n".join(data))


def _chunk_logprobs(logprobs: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """(token text, logprob, top logprobs) of each token in one chunk's ``logprobs``."""
    if not logprobs:
        return []
    if isinstance(logprobs.get("content"), list):  # chat
        return [(str(t.get("token", "")), float(t.get("logprob", 0.0)),
                 [(str(a.get("token", "")), float(a.get("logprob", 0.0))) for a in t.get("top_logprobs") or ()])
                for t in logprobs["content"]]
    tokens = logprobs.get("tokens") or []  # completions
    tops = logprobs.get("top_logprobs") or []
    out = []
    for i, x in enumerate(logprobs.get("token_logprobs") or ()):
        if x is not None:
            top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
            out.append((str(tokens[i]) if i < len(tokens) else "", float(x), [(k, float(v)) for k, v in top.items()]))
    return out


def _error_message(response: httpx.Response) -> tuple[str, dict]:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase, {}
    detail = payload.get("error", payload) if isinstance(payload, dict) else {}
    if not isinstance(detail, dict):
        return str(detail), {}
    message = detail.get("message") or detail.get("detail") or json.dumps(payload)[:500]
    return str(message), detail


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def _match_choice(text: str, choices: list[str]) -> int | None:
    if text in choices:
        return choices.index(text)
    stripped = text.strip()
    for i, c in enumerate(choices):
        if c.strip() == stripped:
            return i
    return None


__all__ = ["SERVER_KINDS", "HTTPBackendError", "OpenAI", "RuntimeEndpoint", "prompt_to_messages"]
