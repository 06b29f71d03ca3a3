"""Compile-path pieces that keep per-process costs out of compiles (issue 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sgl.constrain.automata.dfa import sorted_unique
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.errors import ConstraintError
from sgl.constrain.grammar import Grammar, Rule, Terminal

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("n", [0, 1, 2, 7, 300])
def test_sorted_unique_is_np_unique(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        a = rng.integers(0, max(n // 3, 1) + 1, size=n, dtype=np.int64)
        got = sorted_unique(a)
        assert got.dtype == a.dtype
        assert got.tolist() == np.unique(a).tolist()


def test_first_compile_does_not_import_numpy_ma() -> None:
    """np.unique's plain path imports numpy.ma (~15 ms) on first use; lexeme DFAs must
    not pay it inside the first compile of a process."""
    code = (
        "import sys\n"
        "from sgl.constrain import compile_json_schema\n"
        "compile_json_schema({'type': 'object', 'properties': {'a': {'type': 'number'},"
        " 'b': {'enum': ['x', 'yy']}, 'c': {'type': 'string', 'format': 'date'}}})\n"
        "print('numpy.ma' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_unpruned_grammar_is_still_validated() -> None:
    """CompiledGrammar skips validation only for grammars ``prune`` vouched for."""
    g = Grammar("s", [Rule("s", ("a", "missing"))], {"a": Terminal("a", "a", True)})
    with pytest.raises(ConstraintError, match="undefined symbol"):
        CompiledGrammar(g)


def test_json_string_lexemes_are_shared_across_compiles() -> None:
    """An equal decoded language gives the very same lexeme node (its DFA is then found
    by identity), the same as building it afresh; a refusal is not remembered."""
    from sgl.constrain import json_strings
    from sgl.constrain.automata.derivatives import mk_and
    from sgl.constrain.errors import CompileBudgetExceeded
    from sgl.constrain.json_formats import format_node
    from sgl.constrain.regex import parse_regex

    a = json_strings.json_string_node(parse_regex("[a-c]+x"))
    b = json_strings.json_string_node(parse_regex("[a-c]+x"))
    assert a is b
    assert a == json_strings.build_json_string_node(parse_regex("[a-c]+x"), 2000, 20_000)
    uri = json_strings.json_string_node(format_node("uri"))
    assert uri is json_strings.json_string_node(format_node("uri"))
    hard = mk_and(parse_regex("(a|b)*a(a|b){12}"), parse_regex("(a|b)*b(a|b){11}"))
    for _ in range(2):
        with pytest.raises(CompileBudgetExceeded):
            json_strings.json_string_node(hard, max_states=50)


def _canonical(table: np.ndarray, accepting: np.ndarray) -> tuple:
    """A DFA's rows renumbered in breadth-first order from the start (bytes ascending):
    two minimal DFAs of one language give the same result."""
    order, seen = [0], {0: 0}
    for s in order:
        for t in table[s].tolist():
            if t >= 0 and t not in seen:
                seen[t] = len(order)
                order.append(t)
    rows = tuple(tuple(seen[t] if t >= 0 else -1 for t in table[s].tolist()) for s in order)
    return rows, tuple(bool(accepting[s]) for s in order)


def test_shipped_format_lexemes_match_a_fresh_build() -> None:
    """format_lexemes.bin is what the code builds today: the decoded language, the
    lexeme and (up to state numbering) the DFA of every format. On failure, write it
    again: ``python -m sgl.constrain.format_lexemes``."""
    import pickle
    import zlib

    from sgl.constrain import format_lexemes
    from sgl.constrain.json_formats import FORMAT_REGEXES

    stored = pickle.loads(format_lexemes.DATA.read_bytes())
    assert stored["fingerprint"] == format_lexemes.fingerprint(FORMAT_REGEXES)
    assert set(stored["formats"]) == set(FORMAT_REGEXES)
    for name, blob in stored["formats"].items():
        decoded, lexeme, table, accepting = pickle.loads(zlib.decompress(blob))
        f_decoded, f_lexeme, f_table, f_accepting = format_lexemes.build_entry(name)
        assert decoded == f_decoded, name
        assert lexeme == f_lexeme, name
        assert _canonical(table, accepting) == _canonical(f_table, f_accepting), name


def test_shipped_formats_are_used_and_checked() -> None:
    """A format's lexeme and DFA come from the file in a fresh process, and the compiled
    grammar accepts and refuses what the format says."""
    code = (
        "from sgl.constrain import compile_json_schema, format_lexemes\n"
        "g = compile_json_schema({'type': 'object', 'properties': {'u': {'type': 'string', 'format': 'uri'},"
        " 'e': {'type': 'string', 'format': 'email'}}, 'required': ['u']})\n"
        "print(format_lexemes.loaded_count(), g.accepts_text('{\"u\": \"https://x.org/a?b=c\", \"e\": \"a@b.co\"}'),"
        " g.accepts_text('{\"u\": \"no scheme\"}'), g.accepts_text('{\"u\": \"a:b\", \"e\": \"nope\"}'))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "True", "False", "False"]


def test_a_stale_or_missing_file_is_ignored(tmp_path, monkeypatch) -> None:
    """Another fingerprint (the format regexes changed) or no file: formats are built."""
    from sgl.constrain import format_lexemes

    monkeypatch.setattr(format_lexemes, "DATA", tmp_path / "missing.bin")
    try:
        format_lexemes.forget_file()
        assert format_lexemes.shipped_format("uri", {"uri": "x"}) is None
        format_lexemes.forget_file()
        monkeypatch.setattr(format_lexemes, "DATA", Path(format_lexemes.__file__).with_name("format_lexemes.bin"))
        assert format_lexemes.shipped_format("uri", {"uri": "not the regex it was built from"}) is None
    finally:
        format_lexemes.forget_file()  # read again, with the real regexes, by the next test


@pytest.mark.parametrize("value, message, location", [
    ({"a": {"b/c": [1, {"~d": float("nan")}]}}, "nan is not a JSON number", "#/a/b~1c/1/~0d"),
    ({"x": [None, "s", 3, True, {1: 2}]}, "object key 1 is not a string", "#/x/4"),
    ({"p": ({"q": {1, 2}},)}, "a set is not a JSON value", "#/p/0/q"),
    ({"a": {"b": {"c": {}}}}, "schema is nested more than 3 objects deep", "#/a/b/c"),
])
def test_check_json_value_names_the_place(value, message, location) -> None:
    """Places are spelled as JSON pointers only for the message; they stay exact."""
    from sgl.constrain.api import check_json_value

    with pytest.raises(ConstraintError) as e:
        check_json_value(value, 3)
    assert (e.value.message, e.value.location) == (message, location)


def test_check_json_value_bounds_nested_lists() -> None:
    from sgl.constrain.api import check_json_value

    v: list = []
    for _ in range(200):
        v = [v]
    check_json_value(v, 100)  # pointers of 400 characters: within 64 per level
    for _ in range(3000):
        v = [v]
    with pytest.raises(ConstraintError, match="nested more than 10 levels deep"):
        check_json_value(v, 10)


_T = {"a": Terminal("a", "a", True), "b": Terminal("b", "b", True)}


@pytest.mark.parametrize("g, message", [
    (Grammar("s", [Rule("s", ("a", "x")), Rule("x", ("b",)), Rule("a", ("b",))], dict(_T)), "both a terminal and a rule"),
    (Grammar("s", [Rule("s", ("a",), -1.0)], dict(_T)), "negative weight"),
    (Grammar("s", [Rule("s", ("a",))], dict(_T), ["zz"]), "ignored terminal 'zz' is undefined"),
])
def test_prune_still_names_what_validate_refuses(g, message) -> None:
    """prune checks its output without walking every symbol again: faults are still refused."""
    from sgl.constrain.grammar import prune

    with pytest.raises(ConstraintError, match=message):
        prune(g)


def test_prune_keeps_rules_bottom_up_in_their_order() -> None:
    from sgl.constrain.grammar import prune

    rules = [Rule("s", ("x", "y")), Rule("y", ("b",)), Rule("dead", ("nope",)), Rule("x", ("a",)),
             Rule("y", ("a", "y")), Rule("s", ("u",)), Rule("lost", ("a",))]
    out = prune(Grammar("s", rules, dict(_T)))
    assert [(r.lhs, r.rhs) for r in out.rules] == [("y", ("b",)), ("y", ("a", "y")), ("x", ("a",)), ("s", ("x", "y"))]
    assert set(out.terminals) == {"a", "b"} and out.is_trimmed()
