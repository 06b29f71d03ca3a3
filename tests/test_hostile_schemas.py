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
