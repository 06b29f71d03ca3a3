"""Constants, budgets, options and small helpers shared by the JSON Schema compiler."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..automata.derivatives import MAX_CODEPOINT, derivative, nullable
from ..automata.ranges import to_decimal
from ..errors import ConstraintError
from ..json_strings import _translate_ecma
from ..regex_ast import NOTHING, Chars, Repeat

TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")
DEFAULT_BASE = "https://sgl.invalid/schema.json"
_PTR_SAFE = "/~!$&'()*+,;=:@"

# Budgets: compile in seconds on hostile inputs (CompileBudgetExceeded beyond).
MAX_SCHEMA_BYTES = 8_000_000
MAX_RULES = 400_000
MAX_SECONDS = 20.0
MAX_ANY_ORDER_RULES = 6_000  # object member-order rules per object with any_order=True
MAX_DEFAULT_ORDER_RULES = 2_000  # the same by default (see ObjectEmitter._order_plan)
MAX_SCHEMA_ORDER_RULES = 5_000  # member-order rules per schema (x3 with any_order=True)
MIN_ORDER_RULES = 500  # per object once the schema's budget is spent (required in schema order)
MAX_COUNT_STATES = 20_000  # unrolled minItems/maxItems/min/maxProperties states
MAX_PATTERN_PROPERTIES = 4  # key regions are 2**k
MAX_LEXEME_LENGTH = 1_000  # longer length bounds on plain strings are counted by the grammar
STRING_CHUNK = 128  # characters per chunk lexeme of such a string (json_counted.CountedChars)
MAX_UNION = 64  # alternatives kept when intersecting unions
MAX_ONE_OF_EXACT = 64  # overlapping oneOf branches separated exactly (each minus all the others)
MAX_UNIQUE_VALUES = 8  # uniqueItems over a finite element set of at most this size
MAX_EXACT_NUMBER_POINTS = 64  # enum numbers spelled every way; beyond, plain spellings

SCALAR_KEYWORDS = frozenset(
    "type nullable minimum maximum exclusiveMinimum exclusiveMaximum multipleOf minLength "
    "maxLength pattern".split()
)
ANNOTATIONS = frozenset(
    "$schema $id $anchor $dynamicAnchor $comment $defs definitions $vocabulary title description "
    "default examples deprecated readOnly writeOnly contentMediaType contentEncoding "
    "contentSchema format".split()
)

# keywords whose value holds subschemas: by name, in a list, or itself one
MAP_KEYWORDS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
LIST_KEYWORDS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
SCHEMA_KEYWORDS = frozenset({
    "not", "if", "then", "else", "items", "additionalItems", "contains", "additionalProperties",
    "propertyNames", "unevaluatedItems", "unevaluatedProperties",
})

# ---------------------------------------------------------------------------
# Helpers


def _pattern_search(pattern: str, text: str) -> bool:
    try:
        return _compiled_pattern(pattern).search(text) is not None
    except re.error:
        return False


_PATTERN_CACHE: dict[str, re.Pattern] = {}


def _compiled_pattern(pattern: str) -> re.Pattern:
    got = _PATTERN_CACHE.get(pattern)
    if got is None:
        got = _PATTERN_CACHE[pattern] = re.compile(_translate_ecma(pattern))
    return got


def _is_int(x) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer())


def _is_num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _json_type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    raise ConstraintError(f"not a JSON value: {v!r}")


def json_equal(a, b) -> bool:
    """JSON Schema equality: numbers by value, objects unordered, no bool/number mixing."""
    ta, tb = _json_type(a), _json_type(b)
    if ta != tb:
        return False
    if ta == "number":
        return to_decimal(a) == to_decimal(b)
    if ta == "array":
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta == "object":
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return a == b


def _ptr_escape(s: str) -> str:
    return s.replace("~", "~0").replace("/", "~1")


def expr_matches(expr, text: str) -> bool:
    """Is the decoded string ``text`` in a string-language expression?"""
    if isinstance(expr, Repeat) and isinstance(expr.item, Chars):
        # a character class repeated (any string, a length bound): one char per item, so
        # no derivatives (enum values checked against a plain string type, one by one)
        if len(text) < expr.min or (expr.max is not None and len(text) > expr.max):
            return False
        ranges = expr.item.ranges
        if ranges == ((0, MAX_CODEPOINT),):
            return True
        return all(any(lo <= ord(ch) <= hi for lo, hi in ranges) for ch in text)
    e = expr
    for ch in text:
        e = derivative(e, ord(ch))
        if e == NOTHING:
            return False
    return nullable(e)


@dataclass
class Options:
    any_order: bool = False
    lenient: bool | frozenset = False  # True, or the keywords whose refusals become warnings
    whitespace: str = "flexible"
    max_whitespace: int = 8
    warnings: list | None = None
    track_keys: bool = False  # the parser refuses repeated keys (grammar.UniqueKeys): optional members may loop
    max_fraction_digits: int | None = None  # opt-in cap on digits after a number's point
    numbers: str = "json"  # "canonical": numbers only in their shortest plain spelling (opt-in)


class _Refused(Exception):
    """Internal: a construct is refused; converted to ConstraintError or a warning."""


def _is_schema(v) -> bool:
    return isinstance(v, dict | bool)


def _is_names(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _shapes(keywords, ok, must: str) -> dict:
    return dict.fromkeys(keywords, (ok, must))


# keyword -> (is its value well-formed? (value, draft), what it must be), for
# keywords.check_keywords
KEYWORD_SHAPES = {
    "type": (lambda v, d: v != [] and all(t in TYPES for t in v) if isinstance(v, list) else v in TYPES,
             f"be one of {', '.join(TYPES)} or a list of them"),
    **_shapes(MAP_KEYWORDS, lambda v, d: isinstance(v, dict) and all(map(_is_schema, v.values())),
              "be an object of schemas"),
    "required": (lambda v, d: _is_names(v), "be an array of strings"),
    **_shapes(LIST_KEYWORDS, lambda v, d: isinstance(v, list) and v and all(map(_is_schema, v)),
              "be a non-empty array of schemas"),
    # (an array of items that are not all schemas: "a schema or an array of schemas")
    "items": (lambda v, d: all(map(_is_schema, v)) if isinstance(v, list) else _is_schema(v),
              "be a schema"),
    **_shapes(SCHEMA_KEYWORDS - {"items"}, lambda v, d: _is_schema(v), "be a schema"),
    **_shapes(("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
               "minContains", "maxContains"), lambda v, d: _is_int(v) and v >= 0,
              "be a non-negative integer"),
    **_shapes(("minimum", "maximum"), lambda v, d: _is_num(v), "be a number"),
    **_shapes(("exclusiveMinimum", "exclusiveMaximum"),
              lambda v, d: _is_num(v) or (isinstance(v, bool) and d <= 4), "be a number"),
    "multipleOf": (lambda v, d: _is_num(v) and v > 0, "be a number > 0"),
    **_shapes(("pattern", "format", "$ref", "$dynamicRef", "$id", "$anchor"),
              lambda v, d: isinstance(v, str), "be a string"),
    "enum": (lambda v, d: isinstance(v, list), "be an array"),
    "dependentRequired": (lambda v, d: isinstance(v, dict) and all(map(_is_names, v.values())),
                          "map names to arrays of strings"),
    "dependencies": (lambda v, d: isinstance(v, dict)
                     and all(_is_schema(x) or _is_names(x) for x in v.values()),
                     "map names to schemas or arrays of strings"),
    **_shapes(("uniqueItems", "nullable"), lambda v, d: isinstance(v, bool), "be a boolean"),
}
