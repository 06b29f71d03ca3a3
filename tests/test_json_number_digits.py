"""compile_json_schema's opt-in ``max_fraction_digits``: numbers spelt with at most N digits
after the point. The default grammar keeps JSON's unbounded digits."""

from __future__ import annotations

import pytest

from sgl.constrain import ConstraintError, compile_json_schema

AMOUNT = {"type": "number", "multipleOf": 0.01, "minimum": 0}  # MaskBench Github_easy/o17460's field


def accepted(schema, texts, **options) -> list[str]:
    g = compile_json_schema(schema, None, **options)
    return [t for t in texts if g.accepts_text(t)]


def test_default_keeps_unbounded_digits():
    texts = ["10.0000000000", "0.12345678901", "1e5", "-2.5E-3"]
    assert accepted({"type": "number"}, texts) == texts
    # a multiple of 0.01 may be written with any number of trailing zeros
    assert accepted(AMOUNT, ["10.00000000000", "10.5", "10.001"]) == ["10.00000000000", "10.5"]


def test_cap_bounds_fraction_digits_only():
    texts = ["10.000000", "10.0000000", "0.123456", "0.1234567", "1e5", "1.5e-300", "123456789012", "-3.25"]
    assert accepted({"type": "number"}, texts, max_fraction_digits=6) == [
        "10.000000", "0.123456", "1e5", "1.5e-300", "123456789012", "-3.25"]
    assert accepted(AMOUNT, ["10.000000", "10.0000000", "10.5", "10.001"], max_fraction_digits=6) == [
        "10.000000", "10.5"]
    assert accepted({"type": "number"}, ["2", "2.0", "2e1"], max_fraction_digits=0) == ["2", "2e1"]
    # the schema's other constraints still hold
    assert accepted({"type": "number", "minimum": 0.5, "maximum": 1000}, ["0.4", "0.50", "999.999999", "1000.0000001"],
                    max_fraction_digits=6) == ["0.50", "999.999999"]


def test_exact_values_need_a_short_enough_spelling():
    schema = {"enum": [0.1234567, 1, "x"]}
    assert accepted(schema, ["0.1234567", "1.234567e-1", "1", '"x"'], max_fraction_digits=6) == [
        "1.234567e-1", "1", '"x"']


def test_inside_objects_and_arrays():
    schema = {"type": "object", "properties": {"a": {"type": "array", "items": AMOUNT}}, "required": ["a"],
              "additionalProperties": False}
    assert accepted(schema, ['{"a": [1.50, 2.000000]}', '{"a": [1.5000000]}'], max_fraction_digits=6) == [
        '{"a": [1.50, 2.000000]}']


@pytest.mark.parametrize("bad", [-1, True, 1.5, "6"])
def test_bad_values_are_constraint_errors(bad):
    with pytest.raises(ConstraintError, match="max_fraction_digits"):
        compile_json_schema({"type": "number"}, None, max_fraction_digits=bad)
