"""A request's constraint: which field gave it (``response_format``, ``regex``,
``grammar``, ``choices``, SGLang's and vLLM's spellings, structural tags), as one
``ConstraintSpec``; JSON Schemas made strict by the server's rule (``schemas``); the
``guided_*`` options honoured or refused, never ignored."""

from __future__ import annotations

import json
from typing import Any

from sgl.types import ConstraintSpec, guess_grammar_syntax

from .api_errors import APIError
from .protocol import SamplingFields
from .schemas import resolve_strict
from .tools import ToolPlan

JSON_OBJECT_SCHEMA = {"type": "object"}  # response_format json_object: any JSON object


def constraint_of(body: SamplingFields, strict_default: bool = True) -> tuple[ConstraintSpec | None, str | None]:
    """The request's one constraint and the name of the field that gave it.

    A JSON Schema is made strict (undeclared keys forbidden) when the request says
    ``strict: true``, or says nothing and ``strict_default`` is on (see ``schemas``)."""

    def schema(value: Any, name: str, strict: bool | None = None) -> ConstraintSpec:
        return ConstraintSpec(json_schema=resolve_strict(_parsed(value, name, "the schema"), strict, strict_default))

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
                "json": lambda v: schema(v, "structured_outputs.json"),
                "structural_tag": lambda v: structural_tag_spec(v, "structured_outputs.structural_tag", strict_default),
                }.get(key)
        if make is None:
            raise APIError(400, f"structured_outputs.{key} is not supported (use regex, choice, grammar, json or "
                           "structural_tag)",
                           param=f"structured_outputs.{key}")
        if value is not None:
            found.append((f"structured_outputs.{key}", make(value)))
    _check_guided_options(body)
    if rf is not None and rf.type == "structural_tag":
        found.append(("response_format", structural_tag_spec(rf.model_dump(exclude_none=True), "response_format",
                                                             strict_default)))
    if body.structural_tag is not None:
        found.append(("structural_tag", structural_tag_spec(body.structural_tag, "structural_tag", strict_default)))
    if len(found) > 1:
        raise APIError(400, f"one constraint per request, got {', '.join(n for n, _ in found)}", param=found[1][0])
    if not found:
        return None, None
    name, spec = found[0]
    if spec.choices is not None and not spec.choices:
        raise APIError(400, f"{name} is empty", param=name)
    return spec, name


def answer_schema(spec: ConstraintSpec | None, param: str | None, tools: ToolPlan) -> dict | bool | None:
    """The JSON Schema of a non-call answer when a request has tools and a constraint:
    only a ``response_format`` (json_schema / json_object) with ``tool_choice`` auto may
    be combined with tools (vLLM's rule: a call, or an answer in the format)."""
    if spec is None:
        return None
    if param != "response_format" or spec.json_schema is None:
        raise APIError(400, f"{param} cannot be combined with tools (a json_schema or json_object response_format "
                       "can; or use tool_choice 'none')", param=param)
    if tools.mode != "auto":
        raise APIError(400, "response_format cannot be combined with a required or named tool_choice (the answer is a "
                       "call); use tool_choice 'auto'", param="response_format")
    return spec.json_schema


def structural_tag_spec(value: Any, param: str, strict_default: bool) -> ConstraintSpec:
    """A structural tag (SGLang's / vLLM's, a dict or JSON text) as a constraint: its JSON
    text in ``grammar_syntax="structural_tag"`` (compiled by ``sgl.constrain.structural_tag``);
    each tag's JSON Schema made strict as a ``response_format`` schema would be."""
    value = _parsed(value, param, "the structural tag")
    if not isinstance(value, dict):
        raise APIError(400, f"{param}: a structural tag must be an object", param=param, code="invalid_constraint")
    value = dict(value)
    value.setdefault("type", "structural_tag")
    if isinstance(value.get("structures"), list):
        value["structures"] = [_strict_schema_in(s, "schema", strict_default) for s in value["structures"]]
    fmt = value.get("format")
    if isinstance(fmt, dict):
        if isinstance(fmt.get("tags"), list):
            fmt = fmt | {"tags": [_strict_content(t, strict_default) for t in fmt["tags"]]}
        elif fmt.get("type") == "tag":
            fmt = _strict_content(fmt, strict_default)
        value["format"] = fmt
    return ConstraintSpec(grammar=json.dumps(value, ensure_ascii=False, sort_keys=True), grammar_syntax="structural_tag")


def _parsed(value: Any, param: str, what: str) -> Any:
    """``value``, parsed when it is JSON text; a 400 naming ``param`` when it does not parse."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise APIError(400, f"{param}: {what} is not valid JSON: {e.msg}", param=param, code="invalid_constraint",
                       location=f"line {e.lineno}, column {e.colno}") from None


def _strict_content(tag: Any, strict_default: bool) -> Any:
    if isinstance(tag, dict) and isinstance(tag.get("content"), dict):
        return tag | {"content": _strict_schema_in(tag["content"], "json_schema", strict_default)}
    return tag


def _strict_schema_in(holder: Any, key: str, strict_default: bool) -> Any:
    """``holder`` with its schema under ``key`` resolved for strictness (a malformed
    holder is left to the compiler, which names what is wrong)."""
    if isinstance(holder, dict) and isinstance(holder.get(key), dict | bool):
        return holder | {key: resolve_strict(holder[key], None, strict_default)}
    return holder


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


def constraint_size(spec: ConstraintSpec) -> int:
    value = spec.json_schema if spec.json_schema is not None else spec.regex or spec.grammar or spec.choices
    return len(value.encode()) if isinstance(value, str) else len(json.dumps(value).encode())


__all__ = ["answer_schema", "constraint_of", "constraint_size", "describe_constraint", "guess_grammar_syntax",
           "structural_tag_spec"]
