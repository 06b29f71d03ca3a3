"""Issue 14 (and 16, constrain side), the direct checks: typed validation at the API,
nesting limits, Lark imports, large choices through a trie, compile budgets, empty
languages refused. The subprocess corpus is tests/hostile/."""

from __future__ import annotations

import math
import random
import re
import string
import sys
import time

import pytest

from sgl.constrain import (
    CompileBudget,
    CompileBudgetExceeded,
    ConstraintError,
    compile_choices,
    compile_grammar,
    compile_json_schema,
    compile_regex,
)
from sgl.constrain.api import MAX_NESTING, MAX_TEXT_NESTING


@pytest.mark.parametrize(
    "call",
    [
        lambda: compile_grammar(b'start: "a"'),
        lambda: compile_grammar(None, syntax="gbnf"),
        lambda: compile_grammar('start: "a"', syntax=None),
        lambda: compile_grammar('start: "a"', start=5),
        lambda: compile_choices(None),
        lambda: compile_choices("yes"),
        lambda: compile_choices([1, 2]),
        lambda: compile_choices(["ok", "\ud800"]),
        lambda: compile_regex(b"a+"),
        lambda: compile_json_schema(None),
        lambda: compile_json_schema(b"{}"),
        lambda: compile_json_schema({"type": "object", "properties": {1: {}}}),
        lambda: compile_json_schema({"enum": [{"a", "b"}]}),
        lambda: compile_json_schema({"type": "string"}, frobnicate=True),
        lambda: compile_json_schema({"type": "object"}, any_order="yes"),
        lambda: compile_json_schema({"type": "string"}, budget=30),
    ],
)
def test_wrong_types_are_constraint_errors(call):
    with pytest.raises(ConstraintError):
        call()


@pytest.mark.parametrize(
    "schema, where",
    [
        ({"type": "number", "minimum": math.nan}, "#/minimum"),
        ({"type": "number", "maximum": math.inf}, "#/maximum"),
        ({"enum": [1, -math.inf]}, "#/enum/1"),
        ({"properties": {"a": {"const": math.nan}}}, "#/properties/a/const"),
        ('{"type": "number", "maximum": NaN}', None),
        ('{"enum": [Infinity]}', None),
        ('{"minimum": 1e99999}', "#/minimum"),
    ],
)
def test_nan_and_infinity_are_refused_with_their_place(schema, where):
    with pytest.raises(ConstraintError) as e:
        compile_json_schema(schema)
    assert e.value.location == where


def test_schema_nesting_works_to_the_limit_and_is_refused_beyond_with_a_pointer():
    def nest(depth):
        s = {"type": "integer"}
        for _ in range(depth):
            s = {"type": "array", "items": s, "maxItems": 1}
        return s

    g = compile_json_schema(nest(300))  # 600 objects deep, well past Python's recursion limit
    assert g.accepts_text("[" * 300 + "7" + "]" * 300)
    with pytest.raises(ConstraintError, match="nested more than") as e:
        compile_json_schema(nest(MAX_NESTING))
    assert e.value.location.startswith("#/items/items/")
    assert sys.getrecursionlimit() < 5000  # the raised limit lives only while compiling


@pytest.mark.parametrize("syntax, text", [
    ("regex", "(" * 400 + "a" + ")" * 400),
    ("gbnf", "root ::= " + "(" * 400 + '"a"' + ")" * 400),
    ("lark", "start: " + "(" * 300 + '"a"' + ")" * 300),
])
def test_text_nesting_works_to_the_limit_and_is_refused_beyond(syntax, text):
    compile = (lambda t: compile_regex(t)) if syntax == "regex" else (lambda t: compile_grammar(t, syntax=syntax))
    assert compile(text).accepts_text("a")
    deeper = text.replace("(", "((", 1).replace(")", "))", 1)
    deeper = deeper.replace("(", "(" * (MAX_TEXT_NESTING - text.count("(") + 2), 1)
    deeper = deeper.replace(")", ")" * (MAX_TEXT_NESTING - text.count(")") + 2), 1)
    with pytest.raises(ConstraintError, match="nest more than") as e:
        compile(deeper)
    assert e.value.location.startswith("line 1, column")


def test_parentheses_in_quotes_and_classes_do_not_count():
    text = 'root ::= "' + "(" * 2000 + '" [(]'
    assert compile_grammar(text, syntax="gbnf").accepts_text("(" * 2001)


def test_lark_imports_only_the_bundled_common_grammar(tmp_path, monkeypatch):
    (tmp_path / "evil.lark").write_text('SECRET: "top-secret"\n')
    monkeypatch.chdir(tmp_path)
    for text in ("%import .evil (SECRET)\nstart: SECRET", "%import evil.SECRET\nstart: SECRET",
                 "%import os.path\nstart: \"a\""):
        with pytest.raises(ConstraintError, match="%import .*is not allowed"):
            compile_grammar(text)
    g = compile_grammar("%import common (INT, WS)\n%ignore WS\nstart: INT+")
    assert g.accepts_text("12 34")


def _words(n, seed):
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        out.add("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 12))))
    return sorted(out)


def test_ten_thousand_choices_compile_well_under_a_second(llama3_vocab):
    words = _words(10_000, 1)
    compile_choices(["warm", "up"], llama3_vocab)
    t = time.process_time()  # CPU time: the machine is shared, a starved compile is not slow
    g = compile_choices(words, llama3_vocab)
    assert time.process_time() - t < 1.0
    for w in words[::997]:
        assert g.accepts_text(w)
        assert not g.accepts_text(w + "!") and not g.accepts_text(w[:-1] + "!")


def test_a_hundred_thousand_choices_compile_in_seconds():
    words = _words(100_000, 2)
    t = time.process_time()
    g = compile_choices(words)
    assert time.process_time() - t < 10.0
    assert all(g.accepts_text(w) for w in words[::9973])
    assert not g.accepts_text("zzzzzzzzzzzzzzz")


def test_choices_that_are_prefixes_of_each_other_and_the_empty_string():
    g = compile_choices(["", "a", "ab", "abc", "b"])
    for text, ok in [("", True), ("a", True), ("abc", True), ("ac", False), ("abcd", False)]:
        assert g.accepts_text(text) is ok


def test_a_long_word_list_regex_goes_through_the_trie_with_re_semantics():
    words = _words(3_000, 3) + ["with space", "naïve", "日本"]
    pattern = "|".join(words)
    assert len(pattern) > 10_000
    g = compile_regex(pattern)
    for probe in words[::101] + ["with", "naïv", "日本語", "zz"]:
        assert g.accepts_text(probe) is bool(re.fullmatch(pattern, probe)), probe


@pytest.mark.parametrize("budget, call", [
    ("choice_states", lambda b: compile_choices(_words(100, 4), budget=b)),
    # a word list inside a regex: refused as the trie's budget, no fallback to characters
    ("choice_states", lambda b: compile_regex("(?:" + "|".join(_words(100, 4)) + ")x", budget=b)),
    ("lexemes", lambda b: compile_grammar('start: "a" "b"', budget=b)),
    ("rules", lambda b: compile_grammar('start: a | b\na: "a"\nb: "b"', budget=b)),
    # (compile_regex would fall back to a grammar of characters: a grammar's terminal does not)
    ("dfa_states", lambda b: compile_grammar("start: /[ab]*a[ab]{12}/", budget=b)),
    ("seconds", lambda b: compile_json_schema({"type": "object", "properties": {"a": {"type": "string"}}}, budget=b)),
])
def test_a_compile_over_budget_names_the_budget(budget, call):
    small = CompileBudget(seconds=0.0 if budget == "seconds" else 30.0, rules=2 if budget == "rules" else 1000,
                          lexemes=1 if budget == "lexemes" else 1000, dfa_states=100 if budget == "dfa_states" else 50_000,
                          choice_states=50 if budget == "choice_states" else 1_000_000)
    with pytest.raises(CompileBudgetExceeded) as e:
        call(small)
    assert budget in str(e.value)
    assert e.value.budget == budget


@pytest.mark.parametrize("call", [
    lambda: compile_grammar("root ::= []", syntax="gbnf"),
    lambda: compile_grammar(r'root ::= "\uD800"', syntax="gbnf"),
    lambda: compile_grammar('root ::= "a" [] "b"', syntax="gbnf"),
    lambda: compile_regex("\x00\ud800"),
    lambda: compile_regex(r"[^\s\S]"),
    lambda: compile_grammar('start: a\na: "(" a ")"'),
])
def test_empty_languages_are_refused_at_compile(call):
    with pytest.raises(ConstraintError, match="matches no text"):
        call()


def test_a_dead_branch_is_pruned_not_offered():
    g = compile_grammar('root ::= "a" | "b" []', syntax="gbnf")
    assert g.accepts_text("a") and not g.accepts_text("b")


def test_a_mask_over_its_time_budget_names_the_budget(llama3_vocab):
    """The per-mask budget: an ambiguous grammar's mask stops with a clear error when
    over ``mask_seconds`` (0 here, so any mask not cached yet is over), and masks
    within the default budget."""
    from sgl.constrain import Matcher, allocate_bitmask

    text = 'start: s\ns: s s | "a"'
    out = allocate_bitmask(1, llama3_vocab.n_vocab)
    tight = Matcher(compile_grammar(text, llama3_vocab, budget=CompileBudget(mask_seconds=0.0)))
    with pytest.raises(CompileBudgetExceeded, match=r"one token mask .*\(budget: mask_seconds\)"):
        tight.fill_bitmask(out)
    m = Matcher(compile_grammar(text, llama3_vocab))
    aa = llama3_vocab.token_id(b"aa")
    for _ in range(100):
        m.fill_bitmask(out)
        assert (out[0, aa >> 5] >> (aa & 31)) & 1
        assert m.advance(aa)
    assert m.is_accepting()


def _long_choices() -> list[str]:
    rng = random.Random(7)
    base = "".join(rng.choices("abcdé日😀 ", k=700))
    return [base, base + "z", base[:300], base[:650] + "q" * 100, "".join(rng.choices("xyz", k=500)), "short"]


def test_long_choices_are_exact():
    choices = _long_choices()
    g = compile_choices(choices)
    for c in choices:
        assert g.accepts_text(c)
        assert not g.accepts_text(c + "!")
        assert g.accepts_text(c[:-1]) is (c[:-1] in choices)
    assert not g.accepts_text(choices[0][:64]) and not g.accepts_text(choices[0][:400])


def test_long_choices_masks_are_the_prefix_tokens(llama3_vocab):
    """Each mask (from the start to the end of a long choice) allows exactly the tokens
    that keep the text a prefix of some choice, and EOS exactly on a choice."""
    import numpy as np

    from sgl.constrain import Matcher, allocate_bitmask

    choices = [c.encode() for c in _long_choices()]
    vocab, n_vocab = llama3_vocab, llama3_vocab.n_vocab
    eos = set(vocab.eos_token_ids)
    pieces = {c[i:j] for c in choices for i in range(len(c)) for j in range(i + 1, min(i + 33, len(c) + 1))}
    cands = [t for t, b in enumerate(vocab.token_bytes[:n_vocab]) if b and b in pieces]
    m = Matcher(compile_choices([c.decode() for c in choices], vocab))
    out = allocate_bitmask(1, n_vocab)
    text, rng = b"", random.Random(3)
    for _ in range(200):
        m.fill_bitmask(out)
        bits = np.unpackbits(out[0].view(np.uint8), bitorder="little")[:n_vocab]
        allowed = set(np.nonzero(bits)[0].tolist())
        want = {t for t in cands if any(c.startswith(text + vocab.token_bytes[t]) for c in choices)}
        if text in choices:
            want |= eos
        assert allowed == want, (len(text), sorted(allowed ^ want)[:5])
        body = sorted(t for t in allowed if t not in eos)
        if not body:
            break
        # along the longest choice, through the ends of the others and several chunks
        on_path = [t for t in body if choices[1].startswith(text + vocab.token_bytes[t])] or body
        pick = max(on_path, key=lambda t: len(vocab.token_bytes[t])) if rng.random() < 0.5 else rng.choice(on_path)
        assert m.advance(pick)
        text += vocab.token_bytes[pick]
    assert len(text) > 3 * 64  # past several chunks of a long choice


def _out_of_time(*args, **kwargs):
    raise CompileBudgetExceeded("a step ran over its time budget (budget: seconds)", budget="seconds")


@pytest.mark.parametrize("module, name, schema", [
    # a string's pattern with length bounds (emit_scalars, then restrict_length's materialize)
    ("sgl.constrain.json_schema.emit_scalars", "json_string_node",
     {"type": "object", "properties": {"t1": {"type": "string", "pattern": "^[a-c]+$"}}}),
    ("sgl.constrain.automata.derivatives", "materialize",
     {"type": "string", "pattern": "^(ab|c)+d$", "minLength": 3, "maxLength": 7}),
    # keys matched by patterns, the rest refused (emit_objects' key regions)
    ("sgl.constrain.json_schema.emit_objects", "json_string_node",
     {"type": "object", "patternProperties": {"^x[0-9]": {"type": "integer"}}, "additionalProperties": False}),
    # two string branches tested for overlap (facets' _strings_disjoint)
    ("sgl.constrain.json_schema.facets", "materialize",
     {"oneOf": [{"type": "string", "pattern": "^t2a"}, {"type": "string", "pattern": "^t2b"}]}),
])
def test_running_out_of_time_inside_the_frontend_is_a_time_budget_error(monkeypatch, module, name, schema):
    """A compile that runs out of time says so (``budget == "seconds"``): the frontend's
    "too complex" refusals and approximations are for size budgets, not for the clock."""
    import importlib

    monkeypatch.setattr(importlib.import_module(module), name, _out_of_time)
    with pytest.raises(CompileBudgetExceeded) as e:
        compile_json_schema(schema)
    assert e.value.budget == "seconds"
