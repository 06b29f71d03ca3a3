"""`constrain.compile_spec`: the one place a constraint spec becomes a grammar."""

from __future__ import annotations

import pydantic
import pytest

from sgl.constrain import CompiledGrammar, ConstraintError, compile_spec
from sgl.errors import SglError
from sgl.types import ConstraintSpec


class Point(pydantic.BaseModel):
    x: int
    y: int


@pytest.mark.parametrize(
    "spec, good, bad",
    [
        (ConstraintSpec(regex=r"[0-9]{2}"), "42", "4x"),
        (ConstraintSpec(json_schema={"type": "integer"}), "17", '"17"'),
        (ConstraintSpec(json_schema=Point), '{"x": 1, "y": 2}', '{"x": 1}'),
        (ConstraintSpec(grammar='start: "a"+'), "aaa", "ab"),
        (ConstraintSpec(grammar='root ::= "b"+', grammar_syntax="gbnf"), "bb", "ba"),
        (ConstraintSpec(choices=["yes", "no"]), "no", "maybe"),
    ],
)
def test_each_kind_compiles(spec, good, bad):
    cg = compile_spec(spec)
    assert isinstance(cg, CompiledGrammar)
    assert cg.accepts_text(good) and not cg.accepts_text(bad)


def test_empty_spec_is_no_constraint():
    assert compile_spec(None) is None
    assert compile_spec(ConstraintSpec()) is None


def test_two_constraints_are_refused_not_ranked():
    with pytest.raises(ConstraintError, match="regex and grammar|json_schema and regex"):
        compile_spec(ConstraintSpec(regex="a", json_schema={"type": "string"}))
    with pytest.raises(ConstraintError, match="one string"):
        compile_spec(ConstraintSpec(choices="yes"))


def test_constraint_errors_are_in_the_one_hierarchy():
    with pytest.raises(SglError) as info:
        compile_spec(ConstraintSpec(regex="("))
    assert isinstance(info.value, ValueError)  # a bad argument, as before


def test_cache_is_shared_and_bounded():
    """The same spec compiles once; the cache does not keep every spec it ever saw."""
    first = compile_spec(ConstraintSpec(regex="cache-probe-0"))
    assert compile_spec(ConstraintSpec(regex="cache-probe-0")) is first
    for i in range(1, 200):
        compile_spec(ConstraintSpec(regex=f"cache-probe-{i}"))
    assert compile_spec(ConstraintSpec(regex="cache-probe-0")) is not first  # evicted
