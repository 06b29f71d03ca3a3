"""Tool calls for ``/v1/chat/completions``: the prompt, the constraint, the parsing.

The format (what the model writes, enforced by a grammar): one call is the JSON object
``{"name": NAME, "arguments": {...}}`` whose arguments match that function's
``parameters`` schema; several calls (``parallel_tool_calls``, the default) may be a
JSON array of such objects. The functions and this format are described to the model
in the system message.

``tool_choice``:

* ``"none"`` (or no ``tools``): plain chat; the tools are not shown to the model.
* ``"required"``: the answer is one call (or, with ``parallel_tool_calls``, an array
  of calls) of any listed function: one JSON-Schema constraint (an ``anyOf`` of one
  call object per function, compact whitespace).
* ``{"type": "function", "function": {"name": F}}``: exactly one call of ``F``.
* ``"auto"`` (the default with tools): free text or calls, in two constrained passes:
  the first pass allows either text that does not start with ``{``/``[`` or only that
  opening bracket (``AUTO_FIRST_PASS``); if the model opened a call, a second pass
  generates it under the ``"required"`` constraint. So in auto mode a plain answer
  cannot start with ``{`` or ``[``.
* ``"auto"`` with a ``response_format`` (``json_schema``/``json_object``; vLLM's rule):
  a call or an answer in that format, in one pass under one JSON Schema
  (``call_or_answer_schema``); an answer that is exactly ``{"name": F, "arguments": ...}``
  with ``F`` a listed function is read as a call. Streamed, it is sent when complete.

The answer becomes ``message.tool_calls`` (ids ``call_...``, ``arguments`` as JSON
text) with ``finish_reason: "tool_calls"``. Earlier calls (assistant messages with
``tool_calls``) are written back into the prompt in the same format; ``tool``
messages are rendered in the backend's ``tool`` role.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from .protocol import ChatCompletionRequest, FunctionCall, ResponseToolCall, ToolCall
from .schemas import resolve_strict

AUTO_FIRST_PASS = r"\s*(?:[\[{]|[^\[{\s][\s\S]*)?"  # a plain answer, or the opening of a call
COMPACT = {"whitespace_flexible": False}  # llguidance's spelling, read by sgl.constrain


@dataclass
class ToolPlan:
    """What a request's ``tools`` and ``tool_choice`` ask for."""

    mode: str  # "auto" or "required" (a named function is "required" with one function)
    functions: list[dict[str, Any]]  # the functions shown to the model (name, description, parameters)
    call_schema: dict[str, Any]  # the JSON Schema of a call (or of calls)
    parallel: bool
    json_answer: bool = False  # auto with a response_format: a non-call answer is JSON in that format

    @property
    def names(self) -> frozenset[str]:
        """The names of the functions the model may call."""
        return frozenset(f["name"] for f in self.functions)


class ToolError(ValueError):
    """A bad ``tools``/``tool_choice``; ``param`` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def plan_tools(body: ChatCompletionRequest, strict_default: bool) -> ToolPlan | None:
    """The request's tool plan, or None for plain chat (no tools, or tool_choice none)."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise ToolError("tool_choice needs tools", "tool_choice")
        return None
    if choice == "none":
        return None
    names = [t.function.name for t in body.tools]
    if len(set(names)) != len(names):
        raise ToolError("tools have duplicate function names", "tools")
    functions = [_function(t.function, strict_default) for t in body.tools]
    mode, parallel = "required", body.parallel_tool_calls
    if choice is None or choice == "auto":
        mode = "auto"
    elif not isinstance(choice, str):
        if choice.function.name not in names:
            raise ToolError(f"tool_choice names function {choice.function.name!r}, which is not in tools",
                            "tool_choice")
        functions = [f for f in functions if f["name"] == choice.function.name]
        parallel = False
    rf = body.response_format
    json_answer = mode == "auto" and rf is not None and rf.type in ("json_schema", "json_object")
    return ToolPlan(mode, functions, calls_schema(functions, parallel), parallel, json_answer)


def _function(fn: Any, strict_default: bool) -> dict[str, Any]:
    params = fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
    return {"name": fn.name, "description": fn.description,
            "parameters": resolve_strict(params, fn.strict, strict_default)}


def calls_schema(functions: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """The JSON Schema of the model's answer: one call, or (``parallel``) also an array."""
    calls = [{"type": "object",
              "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
              "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    if not parallel:
        return one | {"x-guidance": COMPACT}
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}], "x-guidance": COMPACT}


def call_or_answer_schema(plan: ToolPlan, answer: dict | bool) -> dict[str, Any]:
    """``tool_choice`` auto with a ``response_format``: the JSON Schema of a call (or
    calls) or of an answer matching ``answer``, in one pass. The answer's ``$defs`` /
    ``definitions`` move to the root, where its ``#/$defs/...`` references point."""
    calls = {k: v for k, v in plan.call_schema.items() if k != "x-guidance"}
    out: dict[str, Any] = {"x-guidance": COMPACT}
    if isinstance(answer, dict):
        answer = dict(answer)
        for key in ("$defs", "definitions"):
            if key in answer:
                out[key] = answer.pop(key)
    return out | {"anyOf": [calls, answer]}


def system_text(plan: ToolPlan) -> str:
    """The instructions that tell the model about the functions and the format."""
    listing = "\n".join(json.dumps({k: v for k, v in f.items() if v is not None}, ensure_ascii=False)
                        for f in plan.functions)
    how = 'To call a function, reply with only a JSON object {"name": <function name>, "arguments": <arguments object>}'
    if plan.parallel:
        how += ", or a JSON array of such objects to call several"
    if plan.mode == "auto":
        how += ". Otherwise answer with JSON in the requested format" if plan.json_answer else ". Otherwise answer in plain text"
    return f"You can call these functions:\n{listing}\n{how}."


def opened_call(text: str) -> bool:
    """Did a first (auto) pass open a call?"""
    return text.lstrip()[:1] in ("{", "[")


def parse_calls(text: str, names: frozenset[str] | None = None) -> list[ResponseToolCall] | None:
    """The calls in the model's answer, or None when it is not a complete call. With
    ``names`` (an answer that may also be JSON in a response format), only objects of
    exactly ``name`` (one of ``names``) and ``arguments`` are calls."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or "arguments" not in item:
            return None
        if names is not None and (set(item) != {"name", "arguments"} or item["name"] not in names):
            return None
        arguments = json.dumps(item["arguments"], ensure_ascii=False)
        calls.append(ResponseToolCall(id=new_call_id(), function=FunctionCall(name=item["name"], arguments=arguments)))
    return calls or None


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def render_calls(calls: list[ToolCall]) -> str:
    """Earlier calls, written back into the prompt in the model's own format."""
    objects = []
    for call in calls:
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError:
            arguments = call.function.arguments  # kept as the client sent it
        objects.append({"name": call.function.name, "arguments": arguments})
    return json.dumps(objects[0] if len(objects) == 1 else objects, ensure_ascii=False)


__all__ = ["AUTO_FIRST_PASS", "ToolError", "ToolPlan", "call_or_answer_schema", "calls_schema", "opened_call", "parse_calls", "plan_tools",
           "render_calls", "system_text"]
