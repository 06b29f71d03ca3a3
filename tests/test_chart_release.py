"""A dropped grammar frees its Earley chart by reference counting: the columns' parent
and children links are cut when the parser goes, so the chart is not left for the cyclic
collector (which, after ``gc.freeze``, only its periodic full collection would run)."""

from __future__ import annotations

import gc
import weakref

from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.json_schema import json_schema_grammar


def _grow_chart(cg: CompiledGrammar, depth: int) -> None:
    """Scan every allowed lexeme from every column, ``depth`` levels deep."""
    frontier = [cg.initial]
    for _ in range(depth):
        nxt = []
        for col in frontier:
            for lexeme in sorted(col.allowed):
                child = cg.parser.scan(col, frozenset({lexeme}))
                if child is not None:
                    nxt.append(child)
        frontier = nxt


def test_dropped_grammar_frees_its_chart_without_the_cyclic_collector() -> None:
    cg = CompiledGrammar(json_schema_grammar({"type": "array", "items": {"type": "integer"}}), None)
    _grow_chart(cg, 4)
    columns = cg.parser.columns
    assert len(columns) > 3 and any(c.children for c in columns)
    refs = [weakref.ref(c) for c in columns]
    del columns
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del cg
        assert all(r() is None for r in refs), "a column outlived its grammar"
    finally:
        if was_enabled:
            gc.enable()


def test_compile_thread_keeps_no_result_alive() -> None:
    """The reused compile thread drops its last job: a grammar the caller (and the
    compile cache) let go of is freed then, not inside the next compile."""
    from sgl.constrain import api, compile_json_schema

    cg = compile_json_schema({"type": "array", "items": {"type": "boolean"}})
    api._cache.clear()
    ref = weakref.ref(cg)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del cg
        assert ref() is None
    finally:
        if was_enabled:
            gc.enable()
