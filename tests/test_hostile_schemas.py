"""Hostile JSON Schemas that llguidance compiles and SGL now compiles too (issue 14),
with the exact language; the ones that must stay refused, refused."""

from __future__ import annotations

import pytest

from sgl.constrain import ConstraintError, compile_json_schema

D = "#/$defs/"


def _accepts(schema, texts: dict[str, bool]) -> None:
    g = compile_json_schema(schema)
    for text, want in texts.items():
        assert g.accepts_text(text) is want, text


def test_a_recursive_anyof_branch_adds_nothing():
    # t = array of t | t | integer: the least fixpoint is integers and nested arrays of them
    t = {"anyOf": [{"type": "array", "items": {"$ref": D + "t"}}, {"$ref": D + "t"}, {"type": "integer"}]}
    _accepts({"$defs": {"t": t}, "$ref": D + "t"},
             {"1": True, "[1,[2,[]]]": True, "[]": True, '"a"': False, '["a"]': False, "{}": False})


def test_mutually_recursive_anyofs_take_both_branches():
    # t = u | integer, u = t | string: both are integer | string; a schema reached
    # while the cycle was cut (t inside u) must not keep its partial facets
    defs = {"t": {"anyOf": [{"$ref": D + "u"}, {"type": "integer"}]},
            "u": {"anyOf": [{"$ref": D + "t"}, {"type": "string"}]}}
    for root in ({"anyOf": [{"$ref": D + "u"}, {"$ref": D + "t"}]}, {"allOf": [{"$ref": D + "u"}, {"$ref": D + "t"}]}):
        _accepts({"$defs": defs, **root}, {"1": True, '"a"': True, "true": False, "[]": False})


def test_a_cut_cycle_under_allof_keeps_the_intersection():
    # t = (t | string) & {maxLength: 2}: strings of at most 2 characters
    t = {"allOf": [{"anyOf": [{"$ref": D + "t"}, {"type": "string"}]}, {"maxLength": 2, "type": "string"}]}
    _accepts({"$defs": {"t": t}, "$ref": D + "t"}, {'"ab"': True, '"abc"': False, "1": False})


@pytest.mark.parametrize("t", [
    {"allOf": [{"$ref": D + "t"}]},  # X = X: no least fixpoint worth compiling (empty)
    {"anyOf": [{"not": {"$ref": D + "t"}}, {"type": "integer"}]},  # X = not X | int: no fixpoint
    {"oneOf": [{"$ref": D + "t"}, {"type": "integer"}]},  # not monotone
    {"if": {"$ref": D + "t"}, "then": {"type": "integer"}},
])
def test_other_circular_refs_stay_refused(t):
    with pytest.raises(ConstraintError, match="circular"):
        compile_json_schema({"$defs": {"t": t}, "$ref": D + "t"})


def _random_keys(rng, pieces: list[str], n: int) -> list[str]:
    return ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 4))) for _ in range(n)]


@pytest.mark.parametrize("additional", [True, False, {"type": "null"}])
def test_many_literal_prefix_pattern_properties_compile_exactly(additional):
    # more than MAX_PATTERN_PROPERTIES patterns: regions by the longest matching prefix
    import json
    import random

    jsonschema = pytest.importorskip("jsonschema")
    pats = {"^x-": {"type": "integer"}, "^x-a": {"minimum": 5}, "^ab": {"type": "string"},
            "^abc": {"maxLength": 2}, "^q": {"type": "boolean"}, "^zz": {"type": "integer"}, "^": {"not": {"const": 7}}}
    schema = {"type": "object", "patternProperties": pats, "additionalProperties": additional,
              "properties": {"x-ab": {"type": "integer"}}}
    g = compile_json_schema(schema)
    rng = random.Random(5)
    values = [1, 7, 9, "s", "long", True, None]
    checked = 0
    for key in _random_keys(rng, ["x-", "a", "b", "c", "q", "é", "z", "x", "-"], 300):
        for v in values:
            inst = {key: v}
            want = jsonschema.Draft202012Validator(schema).is_valid(inst)
            assert g.accepts_text(json.dumps(inst)) is want, inst
            assert g.accepts_text(json.dumps(inst, ensure_ascii=False)) is want, inst
            checked += want
    assert checked > 100


def test_the_corpus_case_of_200_prefix_patterns_compiles():
    words = ["jq", "bmd", "bm", "xaq", "xaos", "e"] + [f"w{i}" for i in range(200)]
    g = compile_json_schema({"type": "object", "patternProperties": {f"^{w}": {"type": "integer"} for w in words}})
    assert g.accepts_text('{"bmdx": 1, "w17z": 2, "other": "s"}')
    assert not g.accepts_text('{"w199": "s"}') and not g.accepts_text('{"bm": []}')


def test_many_patterns_that_are_not_literal_prefixes_stay_refused():
    pats = {f"^a{i}+$": {"type": "integer"} for i in range(6)}
    with pytest.raises(ConstraintError, match="patternProperties"):
        compile_json_schema({"type": "object", "patternProperties": pats})
