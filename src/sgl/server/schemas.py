"""JSON-Schema helpers of the server: ``strict`` schemas.

OpenAI's ``"strict": true`` means the output has exactly the declared keys. A JSON
Schema that does not say ``additionalProperties`` allows any other key, and a small
model given that freedom may keep inventing keys until ``max_tokens``. So a strict
request's schema is rewritten: every object schema that declares its keys and says
nothing about other keys gets ``"additionalProperties": false``. A request without
``strict`` follows the server's default (``ServerSettings.strict_schemas``, on unless
``sgl serve --no-strict-schemas``); ``"strict": false`` keeps JSON Schema's own
meaning (undeclared keys allowed).
"""

from __future__ import annotations

from typing import Any

# keywords whose value is one subschema / a list of subschemas / a map of subschemas
_ONE = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames",
        "additionalProperties", "unevaluatedItems", "unevaluatedProperties")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# an object schema with these beside it may get its keys from elsewhere: left alone
_OPEN = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf",
         "oneOf", "$ref", "if", "dependentSchemas")


def strict_schema(schema: Any) -> Any:
    """A copy of ``schema`` in which object schemas that list ``properties`` (or say
    ``"type": "object"``) and say nothing about other keys forbid them."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ONE or key in _LIST:
            out[key] = strict_schema(value)
        elif key in _MAP and isinstance(value, dict):
            out[key] = {k: strict_schema(v) for k, v in value.items()}
        else:
            out[key] = value
    declares_object = "properties" in schema or schema.get("type") == "object"
    if declares_object and not any(k in schema for k in _OPEN):
        out["additionalProperties"] = False
    return out


def resolve_strict(schema: Any, strict: bool | None, default: bool) -> Any:
    """``schema`` as a request with ``strict`` (None: the server's ``default``) means it."""
    return strict_schema(schema) if (default if strict is None else strict) else schema


__all__ = ["resolve_strict", "strict_schema"]
