"""``numbers="canonical"``: each number only in its shortest plain spelling, every value
kept (the opt-in for generation that makes ``type: integer`` come out as ``25``)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl.constrain import ConstraintError, compile_json_schema


def canonical(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text in ("0", "-0") else text


def in_schema(value: Decimal, schema: dict) -> bool:
    if schema.get("type") == "integer" and value != value.to_integral_value():
        return False
    if "minimum" in schema and value < Decimal(str(schema["minimum"])):
        return False
    if "maximum" in schema and value > Decimal(str(schema["maximum"])):
        return False
    return "multipleOf" not in schema or value % Decimal(str(schema["multipleOf"])) == 0


_SCHEMAS = st.fixed_dictionaries(
    {"type": st.sampled_from(["integer", "number"])},
    optional={"minimum": st.integers(-300, 300), "maximum": st.integers(-300, 300),
              "multipleOf": st.sampled_from([0.01, 0.5, 5, 0.25])},
)
_VALUES = st.tuples(st.integers(-40_000, 40_000), st.integers(0, 3)).map(lambda t: Decimal(t[0]).scaleb(-t[1]))


@settings(max_examples=40, deadline=None)
@given(_SCHEMAS, st.lists(_VALUES, min_size=12, max_size=12))
def test_the_canonical_spelling_of_every_valid_value_and_no_other(schema, values):
    try:
        g = compile_json_schema(schema, None, numbers="canonical")
    except ConstraintError:
        return  # a multipleOf refused with these bounds: refused in both modes
    exact = compile_json_schema(schema, None)
    for value in values:
        want = in_schema(value, schema)
        text = canonical(value)
        assert g.accepts_text(text) == want, (schema, text)
        assert exact.accepts_text(text) == want, (schema, text)
        for other in (text + ".0", text + "e0", f"{text}0e-1"):
            assert not g.accepts_text(other), (schema, other)


@pytest.mark.parametrize(("text", "want"), [
    ("175", True), ("1.75e2", False), ("175.0", False), ("0175", False), ("251", False),
])
def test_integer_in_a_range(text, want):
    schema = {"type": "integer", "minimum": 50, "maximum": 250}
    assert compile_json_schema(schema, None, numbers="canonical").accepts_text(text) == want
    assert compile_json_schema(schema, None).accepts_text(text) == (text in ("175", "1.75e2", "175.0"))


def test_asked_from_inside_the_schema_and_checked():
    schema = {"type": "object", "properties": {"x": {"type": "number"}}, "x-sgl": {"numbers": "canonical"}}
    g = compile_json_schema(schema, None)
    assert g.accepts_text('{"x": -0.5}') and not g.accepts_text('{"x": -0.50}') and not g.accepts_text('{"x": -0}')
    with pytest.raises(ConstraintError, match="x-sgl/numbers"):
        compile_json_schema({"type": "number", "x-sgl": {"numbers": "short"}}, None)
    with pytest.raises(ConstraintError, match="numbers must be"):
        compile_json_schema({"type": "number"}, None, numbers="short")
