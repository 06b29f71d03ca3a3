"""A constrained value cut by ``max_tokens`` is never silently broken: ``gen_string`` /
``dtype=str`` is closed (the shortest completion, marked ``truncated`` in its meta);
other constrained values that are incomplete raise where the program reads them."""

from __future__ import annotations

import json

import pytest

import sgl


@pytest.mark.parametrize(
    ("cut", "closed", "value"),
    [('"Par', '"Par"', "Par"), ('"a\\', '"a\\\\"', "a\\"), ("", '""', ""), ('"done"', '"done"', "done")],
)
def test_gen_string_cut_by_max_tokens_is_closed(scripted, cut, closed, value):
    @sgl.function
    def prog(s):
        with s.var_scope("json"):
            s += '{"name": ' + sgl.gen_string("name", max_tokens=2) + "}"

    state = prog.run(backend=scripted([cut], finish_reason="length"))
    assert state["name"] == value
    assert state.text() == '{"name": ' + closed + "}"
    assert json.loads(state["json"]) == {"name": value}
    meta = state.get_meta_info("name")
    assert meta.get("truncated", False) == (closed != cut)


def test_cut_int_and_json_raise_where_read_but_whole_values_do_not(scripted):
    @sgl.function
    def prog(s):
        s += sgl.gen_int("n", max_tokens=1)
        s += sgl.gen("j", json_schema={"type": "object"}, max_tokens=3)
        s += sgl.gen("r", regex=r"[0-9]+", max_tokens=2)

    state = prog.run(backend=scripted(["-", '{"a": ', "12"], finish_reason="length"))
    with pytest.raises(sgl.ProgramError, match="max_tokens=1"):
        state["n"]
    with pytest.raises(sgl.ProgramError, match="cut by max_tokens=3"):
        state["j"]
    assert state["r"] == "12"  # cut, but a complete match
    assert state.get_meta_info("j")["truncated"] is True
    state["j"] = {}  # a value the program sets itself is whole
    assert state["j"] == {}


def test_program_reading_a_cut_value_fails_with_its_partial_state(scripted):
    @sgl.function
    def prog(s):
        s += sgl.gen("j", json_schema={"type": "object"}, max_tokens=3)
        s += "parsed: " + str(json.loads(s["j"]))

    with pytest.raises(sgl.ProgramError, match="cut by max_tokens") as info:
        prog.run(backend=scripted(['{"a', "x"], finish_reason="length"))
    assert info.value.state.text() == '{"a'


@pytest.mark.slow
def test_decode_json_with_small_max_tokens_on_the_model(model):
    # SGLang's test_decode_json shape, with budgets small enough to cut the strings
    @sgl.function
    def decode_json(s):
        s += "Generate a JSON object to describe the basic city information of Paris.\n"
        with s.var_scope("json_output"):
            s += "{\n"
            s += '  "name": ' + sgl.gen_string(max_tokens=3) + ",\n"
            s += '  "population": ' + sgl.gen_int(max_tokens=8) + ",\n"
            s += '  "country": ' + sgl.gen_string(max_tokens=2) + "\n"
            s += "}"

    state = decode_json.run(backend=model, temperature=0)
    obj = json.loads(state["json_output"])
    assert isinstance(obj["name"], str) and isinstance(obj["population"], int)
