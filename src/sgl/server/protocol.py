"""Request and response bodies of the OpenAI-compatible API (pydantic models).

Requests accept unknown fields and ignore them (clients send many optional OpenAI
fields); fields SGL cannot honour with a non-neutral value (penalties, logit_bias,
best_of, ...) are rejected by the server with a 400 that names them. Tool calls
(``tools``, ``tool_choice``, ``parallel_tool_calls``) are described in
``sgl.server.tools``.

Structured-output fields, beyond OpenAI's ``response_format``:

==================  ================================================================
field               meaning
==================  ================================================================
``regex``           the output matches this Python ``re`` pattern (whole text)
``grammar``         a context-free grammar; ``grammar_syntax`` is ``lark`` (default),
                    ``gbnf``, ``ebnf`` or ``structural_tag`` (the tag's JSON text)
``choices``         the output is exactly one of these strings
``json_schema``     a JSON Schema (dict or JSON text), as SGLang's extra field
``ebnf``            SGLang's spelling of a GBNF/EBNF grammar
``guided_regex``,   vLLM's spellings (``guided_json`` = a schema,
``guided_choice``,  ``guided_grammar`` = GBNF/EBNF grammar)
``guided_grammar``,
``guided_json``
``structured_outputs``  vLLM >= 0.12: ``{"regex"|"choice"|"grammar"|"json"|"structural_tag": ...}``
``structural_tag``  SGLang's / vLLM's free text with tagged JSON segments:
                    ``{"type": "structural_tag", "structures": [{"begin", "schema",
                    "end"}], "triggers": [...]}`` or XGrammar's ``"format":
                    {"type": "triggered_tags", ...}`` (also as ``response_format``)
==================  ================================================================

``guided_grammar`` and ``structured_outputs.grammar`` are read as Lark when they look
like Lark (vLLM's rule), else as GBNF. ``guided_decoding_backend`` may be ``auto`` or
``sgl``; ``guided_whitespace_pattern`` is refused (use ``x-guidance``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- structured outputs -----------------------------------------------------------
class JsonSchemaFormat(_Lenient):
    name: str = "output"
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None
    structures: list[dict[str, Any]] | None = None  # type structural_tag
    triggers: list[str] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ConstraintFields(_Lenient):
    """The structured-output fields shared by both endpoints."""

    response_format: ResponseFormat | None = None
    regex: str | None = None
    grammar: str | None = None
    grammar_syntax: Literal["lark", "gbnf", "ebnf", "structural_tag"] = "lark"
    choices: list[str] | None = None
    json_schema: dict[str, Any] | str | None = None
    ebnf: str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_json: dict[str, Any] | str | None = None
    structured_outputs: dict[str, Any] | None = None  # vLLM >= 0.12: {"json"|"regex"|"choice"|"grammar": ...}
    structural_tag: dict[str, Any] | str | None = None  # vLLM's extra field (dict or JSON text)
    guided_whitespace_pattern: str | None = None
    guided_decoding_backend: str | None = None


class SamplingFields(ConstraintFields):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    min_tokens: int = Field(default=0, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = -1
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # a signed 64-bit integer, as vLLM
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class FunctionCall(_Lenient):
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI sends it


class ToolCall(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message answers this call


class FunctionDef(_Lenient):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: bool | None = None


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False


# --- responses --------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    """A completion; also each chunk of a streamed one (given the stream's id and time)."""

    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: str = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class ResponseToolCall(BaseModel):
    id: str
    type: str = "function"
    function: FunctionCall


class ResponseMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ResponseToolCall] | None = Field(default=None, exclude_if=lambda v: v is None)  # absent when none


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: str = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class DeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    index: int
    id: str | None = None
    type: str | None = None
    function: DeltaFunction


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ChatCompletionResponse):
    """One chunk of a streamed chat completion (given the stream's id and time)."""

    object: str = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "sgl"  # clients (sgl.RuntimeEndpoint) read this to tell servers apart


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    location: str | None = None  # where in a constraint: "line 2, column 5", "/properties/age"


class ErrorResponse(BaseModel):
    error: ErrorDetail
