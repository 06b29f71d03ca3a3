"""Compile-path pieces that keep per-process costs out of compiles (issue 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.dfa import sorted_unique
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
    from sgl.constrain.derivatives import mk_and
    from sgl.constrain.errors import CompileBudgetExceeded
    from sgl.constrain.json_formats import format_node
    from sgl.constrain.regex import parse_regex

    a = json_strings.json_string_node(parse_regex("[a-c]+x"))
    b = json_strings.json_string_node(parse_regex("[a-c]+x"))
    assert a is b
    assert a == json_strings._json_string_node(parse_regex("[a-c]+x"), 2000, 20_000)
    uri = json_strings.json_string_node(format_node("uri"))
    assert uri is json_strings.json_string_node(format_node("uri"))
    hard = mk_and(parse_regex("(a|b)*a(a|b){12}"), parse_regex("(a|b)*b(a|b){11}"))
    for _ in range(2):
        with pytest.raises(CompileBudgetExceeded):
            json_strings.json_string_node(hard, max_states=50)
