"""Large counts in JSON Schema (issue 14): ``maxLength: 10**9``, ``minItems: 10**5``
compile in milliseconds and stay exact, counted in binary by the grammar
(``constrain/counters.py``'s ``CountedRepeat``) instead of unrolled states or one huge lexeme."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sgl.constrain import ConstraintError, Matcher, allocate_bitmask, compile_json_schema
from sgl.constrain.compiled import compile_ir
from sgl.constrain.counters import CountedRepeat
from sgl.constrain.grammar import Grammar, GrammarBuilder


@pytest.mark.parametrize("lo,hi", [(0, 0), (0, 1), (1, 1), (0, 7), (3, 8), (5, 5), (6, 37), (16, 16), (9, None), (0, None)])
def test_counted_repeat_derives_exactly_the_counts_in_range(lo, hi):
    b = GrammarBuilder()
    a, sep = b.literal("a"), b.literal(",")
    rep = CountedRepeat(b.rule, "r", (sep, a))
    b.rule("start", (b.literal("["), *rep.between(lo, hi), b.literal("]")))
    cg = compile_ir(Grammar("start", b.rules, b.terminals, [], "counted"))
    for n in range(0, 45):
        assert cg.accepts_text("[" + ",a" * n + "]") == (n >= lo and (hi is None or n <= hi)), (lo, hi, n)
    assert not cg.accepts_text("[,a,]") and not cg.accepts_text("[a]")


def _lengths(lo: int, hi: int | None) -> list[int]:
    near = [0, 1, 2, lo - 1, lo, lo + 1] + ([hi - 1, hi, hi + 1] if hi is not None and hi < 5000 else [])
    return sorted({n for n in near if 0 <= n <= 5000})


@pytest.mark.parametrize("lo,hi", [(0, 10**9), (1500, None), (1200, 1203), (0, 2000), (10**6, None)])
def test_long_string_bounds_compile_and_stay_exact(lo, hi):
    schema = {"type": "string", "minLength": lo} | ({} if hi is None else {"maxLength": hi})
    cg = compile_json_schema(schema, None)
    for n in _lengths(lo, hi):
        want = n >= lo and (hi is None or n <= hi)
        for text in ("x" * n, "é" * n, "\n" * n, '"' * n, "😀" * n):
            assert cg.accepts_text(json.dumps(text)) == want, (lo, hi, n, text[:1])
            assert cg.accepts_text(json.dumps(text, ensure_ascii=False)) == want, (lo, hi, n, text[:1])
    assert not cg.accepts_text('"abc') and not cg.accepts_text('"\\x"') and not cg.accepts_text('"\\ud800"')


@pytest.mark.parametrize("mn,mx,prefix", [(0, 30000, 0), (5, 25000, 0), (25000, None, 0), (25000, 25003, 2), (20001, 20001, 0), (0, 10**12, 1)])
def test_large_item_counts_compile_and_stay_exact(mn, mx, prefix):
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": mn}
    if mx is not None:
        schema["maxItems"] = mx
    if prefix:
        schema["prefixItems"] = [{"type": "integer", "minimum": 7}] * prefix
    cg = compile_json_schema(schema, None)
    near = {0, 1, 2, 3, mn - 1, mn, mn + 1} | ({mx - 1, mx, mx + 1} if mx is not None and mx < 10**5 else set())
    for n in sorted(x for x in near if x >= 0):
        want = mn <= n and (mx is None or n <= mx)
        assert cg.accepts_text(json.dumps([7 + i for i in range(n)])) == want, (mn, mx, n)
    if prefix and mn == 0:
        assert not cg.accepts_text("[1]")  # the prefix item's own schema still applies


def test_random_walk_over_a_long_string_keeps_a_valid_prefix(llama3_vocab):
    """Every token the mask allows advances the matcher; a long value is accepted."""
    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 10**9}},
              "required": ["s"], "additionalProperties": False}
    cg = compile_json_schema(schema, llama3_vocab)
    rng = random.Random(0)
    m = Matcher(cg)
    n = llama3_vocab.n_vocab
    for _ in range(40):
        bm = allocate_bitmask(1, n)
        m.fill_bitmask(bm)
        allowed = np.flatnonzero(np.unpackbits(bm[0].view(np.uint8), bitorder="little")[:n])
        ids = [int(t) for t in allowed if int(t) not in llama3_vocab.eos_token_ids]
        if not ids:
            break
        assert m.advance(rng.choice(ids))
    m2 = Matcher(cg)
    assert all(m2.advance(t) for t in llama3_vocab.encode('{"s": "' + "ab" * 1500 + '"}')) and m2.is_accepting()


def test_a_counted_string_never_competes_with_another_string_lexeme():
    """Inside ``contains`` two element rules share a position: a quote lexeme next to a
    whole-string lexeme would refuse valid strings, so that case is refused instead."""
    with pytest.raises(ConstraintError, match="contains"):
        compile_json_schema({"type": "array", "contains": {"type": "string", "maxLength": 5000}, "items": {"type": "string"}}, None)
    cg = compile_json_schema({"type": "array", "contains": {"type": "string", "maxLength": 5000},
                              "items": {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "integer"}]}}, None)
    assert cg.accepts_text('["ab", 1]') and not cg.accepts_text("[1]") and not cg.accepts_text('["abcd"]')
