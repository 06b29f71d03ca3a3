"""The regex frontend (``parse_regex``) and the byte automaton (``to_dfa``).

The oracle is Python's own ``re.fullmatch``: every check compares the DFA's
verdict on the UTF-8 bytes of a string with ``re``'s verdict on the string.
"""

from __future__ import annotations

import functools
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import require_shared
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sgl.constrain.automata.compiler import (
    LiteralAlt,
    general_dfa,
    to_dfa,
    utf8_sequences,
)
from sgl.constrain.automata.dfa import ByteDFA
from sgl.constrain.errors import CompileBudgetExceeded, ConstraintError
from sgl.constrain.json_counted import CountedChars
from sgl.constrain.json_keys import KeyNotIn
from sgl.constrain.json_strings import json_string_node
from sgl.constrain.regex import parse_regex, regex_grammar
from sgl.constrain.regex_ast import (
    EMPTY,
    NOTHING,
    Alt,
    Bytes,
    Chars,
    Repeat,
    Seq,
    alt,
    literal,
    repeat,
    seq,
)

PATTERNS = [
    r"[\w.+-]+@[\w-]+\.[\w.]+",  # e-mail
    r"\d{4}-\d{2}-\d{2}",  # ISO date
    r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}",  # IPv4
    r'[^"\\]*',
    r'"(?:[^"\\]|\\.)*"',  # a JSON-ish string
    r"\d{3}-\d{4}",
    r"(a|b)*?c",
    r"[\u00e0-\u00ff]+",
    r"(?i)hello",
    r".{2,5}",
    r"\w+@\w+\.com",
    r"[^a]",
    r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?",  # JSON number
    r"(true|false|null)",
    r"[A-Z][a-z]*( [A-Z][a-z]*)*",
    r"\s*\S+\s*",
    r"(?i)[a-z]+",
    r"(?i)[^k]*",
    r"(?i)stra(ss|ß)e",
    r"(?i)[ſk-m]x",
    r"(?s).{0,3}",
    r"a{2,}",
    r"(ab|a)*b?",
    r"x?y?z?",
    r"(?:)",
    r"[^\x00-\x7f]+",
    r"[😀-😂]+",
    r"中文?",
    r"^\d+$",
    r"\A(a|b)\Z",
    r"(?a)\w+\d",
    r"\W+",
    r"[\d_]*",
    r"(?x) a + b  # a comment",
    r"(?i:ab)c",
    r"[a-c][^a-c]",
    r"(a|)+",
    r"((a|b)c?){2,3}",
    r"\((\d+,)*\d+\)",
    r"[-+]?\d*\.?\d+",
    r"https?://[a-z0-9.-]+(/[a-z0-9._-]*)*",
    r"(?m)^ab$",
    r".*",
    r"[\s\S]",
    r"\D\d",
    r"\u00e9|e\u0301",
    # shapes of JSON-Schema lexemes (bounded strings, keys, formats, ranges, punctuation)
    r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,40}"',
    r'"(?:[^"\\]|\\.){2,5}"',
    r'"(?:|[^"\\a](?:[^"\\]|\\.)*|\\.(?:[^"\\]|\\.)*|a(?:|[^"\\b](?:[^"\\]|\\.)*|b(?:[^"\\]|\\.)+))"',
    r'"(?:red|green|blue|gr[ae]y|\u00e9t\u00e9)"',
    r"-?(?:[1-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])",
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})",
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    r"[ \t\n\r]{0,8},[ \t\n\r]{0,8}",
    # counters over items that can come back to their start, or end early
    r"(?:a*b)?",
    r"(?:a*b){0,3}c",
    r"(?:[a-z]*@){2,}",
    r"(?:(?:ab)*c){1,2}",
    r"(?:ab|c){2,}",
    r"(?:a|ab){2,4}b?",
    r"(?:x(?:dx)*c)",
]

# Characters worth trying against every pattern: ASCII classes, Latin-1, CJK,
# astral, and the case-folding traps (Kelvin sign, long s, dotless i, sharp s).
BASE_ALPHABET = 'ab cxyz019_@.-\n\t"\\AKSZké\u00e0\u00ff中文😀😁\u212aſıİßẞΣσς٣²\u00a0\u2028'


def _alphabet(pattern: str) -> list[str]:
    return sorted(set(BASE_ALPHABET) | {c for c in pattern if not 0xD800 <= ord(c) <= 0xDFFF})


@functools.cache
def compiled(pattern: str) -> ByteDFA:
    return to_dfa(parse_regex(pattern))


def agree(pattern: str, text: str) -> None:
    assume(not any(0xD800 <= ord(c) <= 0xDFFF for c in text))
    expected = re.fullmatch(pattern, text) is not None
    assert compiled(pattern).matches(text.encode("utf-8")) == expected, (pattern, text)


@st.composite
def near_misses(draw, pattern: str) -> str:
    """A string ``re`` generates for ``pattern``, then maybe one random edit."""
    text = draw(st.from_regex(re.compile(pattern), fullmatch=True))
    alphabet = _alphabet(pattern)
    edit = draw(st.sampled_from(["none", "insert", "delete", "replace"]))
    if edit == "none":
        return text
    if edit == "insert":
        i = draw(st.integers(0, len(text)))
        return text[:i] + draw(st.sampled_from(alphabet)) + text[i:]
    if not text:
        return text
    i = draw(st.integers(0, len(text) - 1))
    if edit == "delete":
        return text[:i] + text[i + 1 :]
    return text[:i] + draw(st.sampled_from(alphabet)) + text[i + 1 :]


FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("pattern", PATTERNS)
@FAST
@given(data=st.data())
def test_matches_re_fullmatch_on_random_text(pattern: str, data) -> None:
    text = data.draw(st.text(alphabet=_alphabet(pattern), max_size=10))
    agree(pattern, text)


@pytest.mark.parametrize("pattern", PATTERNS)
@FAST
@given(data=st.data())
def test_matches_re_fullmatch_near_the_language(pattern: str, data) -> None:
    agree(pattern, data.draw(near_misses(pattern)))


def test_patterns_are_exercised_both_ways() -> None:
    """Guard against a vacuous oracle: the fixed probes hit both verdicts often."""
    hits = {True: 0, False: 0}
    for pattern in PATTERNS:
        for text in ["", "a", "ab", "abc", "hello", "123-4567", "2024-01-31", "é", "😀😁"]:
            verdict = re.fullmatch(pattern, text) is not None
            assert compiled(pattern).matches(text.encode()) == verdict, (pattern, text)
            hits[verdict] += 1
    assert hits[True] > 30 and hits[False] > 100


# -- structural properties -----------------------------------------------------


def _coreachable(d: ByteDFA) -> np.ndarray:
    ok = d.accepting.copy()
    while True:
        succ_ok = np.where(d.table >= 0, ok[d.table.clip(0)], False).any(axis=1)
        new = ok | succ_ok
        if (new == ok).all():
            return ok
        ok = new


def _reachable(d: ByteDFA) -> np.ndarray:
    seen = np.zeros(d.n_states, dtype=bool)
    seen[0] = True
    frontier = [0]
    while frontier:
        nxt = {int(t) for s in frontier for t in d.table[s] if t >= 0 and not seen[t]}
        for t in nxt:
            seen[t] = True
        frontier = list(nxt)
    return seen


def _n_equivalence_classes(d: ByteDFA) -> int:
    """Moore's refinement from scratch: the size of the minimal equivalent DFA."""
    part = d.accepting.astype(np.int64)
    count = len(np.unique(part))
    while True:
        succ = np.where(d.table >= 0, part[d.table.clip(0)], -1)
        sig = np.concatenate([part[:, None], succ], axis=1)
        _, part = np.unique(sig, axis=0, return_inverse=True)
        part = part.reshape(-1)
        if len(np.unique(part)) == count:
            return count
        count = len(np.unique(part))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dfa_is_minimal_trim_and_well_formed(pattern: str) -> None:
    d = compiled(pattern)
    assert d.table.dtype == np.int32 and d.table.shape == (d.n_states, 256)
    assert d.accepting.dtype == bool and d.accepting.shape == (d.n_states,)
    assert d.table.min() >= -1 and d.table.max() < d.n_states
    assert _reachable(d).all()
    assert _coreachable(d).all(), "a state that cannot reach acceptance survived"
    assert _n_equivalence_classes(d) == d.n_states, "two states are equivalent"


@pytest.mark.parametrize(
    ("pattern", "n_states"),
    [
        ("(a|b)*", 1),
        ("a*", 1),
        ("(a|b)*?", 1),
        (r"(?:)", 1),
        ("a|b", 2),
        ("(a*)*b", 2),
        ("(ab)*", 2),
        ("a{3}", 4),
        ("a{0,3}", 4),
        ("[ab]c|[ab]d", 3),
        ("é", 3),  # two UTF-8 bytes
        ("😀", 5),
        (r"(?s).", 9),  # all of UTF-8: E0, ED, F0, F4 need their own second-byte states
    ],
)
def test_minimal_state_counts(pattern: str, n_states: int) -> None:
    assert compiled(pattern).n_states == n_states


def test_empty_language_is_a_single_rejecting_state() -> None:
    for node in (NOTHING, seq(literal("a"), NOTHING), Chars(())):
        d = to_dfa(node)
        assert d.n_states == 1 and not d.accepting[0] and (d.table == -1).all()
    d = to_dfa(EMPTY)
    assert d.n_states == 1 and d.accepting[0] and (d.table == -1).all()


def test_bytes_nodes_match_raw_bytes() -> None:
    d = to_dfa(seq(Bytes(((0x80, 0xFF),)), literal("a")))
    assert d.matches(b"\xffa") and d.matches(b"\x80a")
    assert not d.matches(b"aa") and not d.matches("éa".encode())


def test_surrogates_are_never_emitted() -> None:
    d = to_dfa(Chars(((0xD000, 0xE000),)))
    assert d.matches("\ud7ff".encode()) and d.matches("\ue000".encode())
    assert not d.matches(b"\xed\xa0\x80")  # what U+D800 would encode to
    assert not d.matches(b"\xed\xbf\xbf")
    assert to_dfa(Chars(((0xD800, 0xDFFF),))).table.max() == -1


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 0x10FFFF),
    st.integers(0, 0x10FFFF),
    st.lists(st.integers(0, 0x10FFFF), min_size=1, max_size=20),
)
def test_utf8_sequences_cover_exactly_the_range(a: int, b: int, probes: list[int]) -> None:
    lo, hi = min(a, b), max(a, b)
    seqs = utf8_sequences(lo, hi)
    probes += [lo, hi, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000]
    for cp in probes:
        if 0xD800 <= cp <= 0xDFFF:
            continue
        enc = chr(cp).encode()
        hits = sum(
            len(s) == len(enc) and all(r0 <= x <= r1 for x, (r0, r1) in zip(enc, s, strict=True))
            for s in seqs
        )
        assert hits == (1 if lo <= cp <= hi else 0), (lo, hi, cp)


# -- Python semantics details -------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [r"\d", r"\w", r"\s", r"\D", r"\W", r"\S", r"(?a)\d", r"(?a)\w", r"(?a)\s", r"[^\W\d]"],
)
def test_unicode_categories_follow_python(pattern: str) -> None:
    probes = "0٣९²½Ⅻ_aZéß中ª\u00a0\u2028\u3000\u200b\x1c\x85\t\n -😀𝟘"
    for c in probes:
        assert compiled(pattern).matches(c.encode()) == bool(re.fullmatch(pattern, c)), (pattern, c)


@pytest.mark.parametrize(
    "pattern", ["(?i)k", "(?i)s", "(?i)i", "(?i)ß", "(?i)σ", "(?i)µ", "(?i)[^s]"]
)
def test_ignorecase_folds_like_python(pattern: str) -> None:
    probes = "kK\u212asSſiIıİßẞσΣςµμΜxǅǄǆ"
    for c in probes:
        assert compiled(pattern).matches(c.encode()) == bool(re.fullmatch(pattern, c)), (pattern, c)


def test_dollar_does_not_absorb_a_trailing_newline() -> None:
    d = compiled("a$")
    assert d.matches(b"a") and not d.matches(b"a\n")
    assert re.fullmatch("a$", "a\n") is None


def test_dot_excludes_newline_unless_dotall() -> None:
    assert not compiled(".").matches(b"\n") and compiled("(?s).").matches(b"\n")


def test_regex_grammar_has_one_terminal() -> None:
    g = regex_grammar(r"\d+")
    assert g.start == "start" and list(g.terminals) == ["T"]
    assert [r.rhs for r in g.rules] == [("T",)]
    assert to_dfa(g.terminals["T"].pattern).matches(b"42")
    assert [r.rhs for r in regex_grammar(r"\d*").rules] == [("T",), ()]


# -- refusals and errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "keyword", "offset"),
    [
        ("ab(?=c)", "lookahead", 2),
        ("x(?!y)", "neg_lookahead", 1),
        ("(?<=a)b", "lookbehind", 0),
        ("a|(?<!a)b", "neg_lookbehind", 2),
        (r"(a)b\1", "backref", 4),
        (r"[\1](a)\1", "backref", 7),  # \1 inside a class is an octal escape
        ("(?P<x>a)(?P=x)", "backref", 8),
        ("(a)?(?(1)b|c)", "conditional", 4),
        (r"foo\bbar", "boundary", 3),
        (r"[\b]x\B", "nonboundary", 5),
        ("(?>ab)c", "atomic", 0),
        ("ab*+", "possessive", 2),
        ("a^b", "anchor", 1),
        ("^a|b$c", "anchor", 4),
        (r"a\Zb", "anchor", 1),
    ],
)
def test_unsupported_constructs_are_refused_with_offset(
    pattern: str, keyword: str, offset: int
) -> None:
    with pytest.raises(ConstraintError) as info:
        parse_regex(pattern)
    assert info.value.keyword == keyword
    assert info.value.location == f"offset {offset}"
    assert "not supported" in str(info.value) or "only supported" in str(info.value)


@pytest.mark.parametrize(
    ("pattern", "offset"), [("ab(", 2), ("a{2,1}", 2), ("xy[a-", 2), (r"a\q", 1)]
)
def test_bad_syntax_reports_re_error_position(pattern: str, offset: int) -> None:
    with pytest.raises(re.error) as expected:
        re.compile(pattern)
    assert expected.value.pos == offset
    with pytest.raises(ConstraintError) as info:
        parse_regex(pattern)
    assert info.value.location == f"offset {offset}"
    assert "invalid regex" in str(info.value)


def test_edge_anchors_are_no_ops() -> None:
    for pattern in [r"^ab$", r"\Aab\Z", r"^(?:ab)$", r"(?:^ab|^ab$)", "^^ab$$"]:
        d = to_dfa(parse_regex(pattern))
        assert d.matches(b"ab") and not d.matches(b"ab\n") and not d.matches(b"a")


# -- budgets and speed ----------------------------------------------------------------


@pytest.mark.parametrize(
    "node",
    [
        Repeat(Repeat(literal("b"), 1000, 1000), 1000, 1000),  # b{1000}{1000}
        Repeat(Repeat(Repeat(literal("a"), 100, 100), 100, 100), 100, 100),
        seq(
            repeat(alt(literal("a"), literal("b"))),
            literal("a"),
            Repeat(alt(literal("a"), literal("b")), 20, 20),
        ),
        Repeat(Repeat(literal("a"), 0, 1), 5000, 5000),  # (a?){5000}: quadratic closures
    ],
    ids=["nested-1000", "triple-100", "nth-from-end-20", "optional-chain"],
)
def test_hostile_patterns_hit_the_budget_quickly(node) -> None:
    t0 = time.thread_time()
    with pytest.raises(CompileBudgetExceeded):
        to_dfa(node)
    # a bound for "no hang" (the budget stops it after ~1 s of work), not a speed figure:
    # this thread's CPU time still grows on a machine whose other jobs fill the caches
    assert time.thread_time() - t0 < 6.0


@pytest.mark.parametrize(
    "pattern", [r"(a|b)*a(a|b){20}", r".*a.{40}", r"(x{1000}){1000}", r"\w{1000}"]
)
def test_hostile_regex_text_raises_budget_error(pattern: str) -> None:
    t0 = time.thread_time()
    with pytest.raises(CompileBudgetExceeded):
        to_dfa(parse_regex(pattern))
    assert time.thread_time() - t0 < 2.0


def test_small_budget_is_honoured() -> None:
    with pytest.raises(CompileBudgetExceeded):
        to_dfa(parse_regex("a{100}"), max_states=50)
    assert to_dfa(parse_regex("a{40}"), max_states=50).n_states == 41


def test_thousand_state_dfa_builds_fast() -> None:
    t0 = time.thread_time()
    d = to_dfa(parse_regex(r"(a|aa)*b{1000}"))  # large but benign: 1001 states
    elapsed = time.thread_time() - t0
    assert d.n_states == 1001
    assert d.matches(b"aaa" + b"b" * 1000) and not d.matches(b"a" + b"b" * 999)
    assert elapsed < 1.0, elapsed  # a guard against blow-ups; speed itself is in bench/dfa_compile.py


# -- the compositional construction: fast paths against the general one -----------------


def _canonical(d: ByteDFA) -> tuple:
    """States renumbered in BFS order over bytes: equal iff the DFAs are isomorphic."""
    order, new = [0], {0: 0}
    rows = d.table.tolist()
    for s in order:
        for t in rows[s]:
            if t >= 0 and t not in new:
                new[t] = len(order)
                order.append(t)
    table = [[new[t] if t >= 0 else -1 for t in rows[s]] for s in order]
    return tuple(map(tuple, table)), tuple(bool(d.accepting[s]) for s in order)


def _general(node, max_states: int = 50_000) -> ByteDFA:
    """``to_dfa`` without the fast paths: no literal/counter chains, no gluing of
    sequences, Hopcroft for every minimisation, no cross-call cache."""
    return general_dfa(node, max_states, fast=False)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_fast_paths_match_the_general_construction(pattern: str) -> None:
    node = parse_regex(pattern)
    assert _canonical(to_dfa(node)) == _canonical(_general(node)), pattern


# Random trees over a few leaves whose UTF-8 encodings overlap (ASCII, a two-byte
# letter, all non-ASCII, raw high bytes): counters, nesting and empty pieces.
_LEAVES = [
    literal("a"),
    literal("b"),
    Chars(((ord("a"), ord("c")),)),
    literal("é"),
    Chars(((0x80, 0x10FFFF),)),
    Chars(((ord("a"), ord("a")), (0x4E2D, 0x4E2D))),
    Bytes(((0x80, 0xFF),)),
    Chars(()),
    EMPTY,
]


def _trees(leaves=_LEAVES):
    def extend(inner):
        counts = st.tuples(st.integers(0, 3), st.sampled_from([None, 0, 1, 2, 3]))
        return st.one_of(
            st.lists(inner, max_size=3).map(lambda xs: Seq(tuple(xs))),
            st.lists(inner, max_size=3).map(lambda xs: Alt(tuple(xs))),
            st.tuples(inner, counts).map(
                lambda t: Repeat(t[0], t[1][0], None if t[1][1] is None else t[1][0] + t[1][1])
            ),
        )

    return st.recursive(st.sampled_from(leaves), extend, max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(_trees())
def test_random_trees_fast_equals_general_and_minimal(node) -> None:
    d = to_dfa(node)
    assert _canonical(d) == _canonical(_general(node))
    assert _reachable(d).all()
    if d.accepting.any():
        assert _coreachable(d).all()
    assert _n_equivalence_classes(d) == d.n_states


def _as_re(node) -> str:
    """A Python regex for a Chars-only tree (the oracle for random trees)."""
    if isinstance(node, Chars):
        if not node.ranges:
            return "(?!)"
        return "[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in node.ranges) + "]"
    if isinstance(node, Seq):
        return "(?:" + "".join(map(_as_re, node.items)) + ")"
    if isinstance(node, Alt):
        return "(?:" + "|".join(map(_as_re, node.items)) + ")" if node.items else "(?!)"
    hi = "" if node.max is None else node.max
    return f"(?:{_as_re(node.item)}){{{node.min},{hi}}}"


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(_trees([leaf for leaf in _LEAVES if not isinstance(leaf, Bytes)]), st.data())
def test_random_trees_match_re(node, data) -> None:
    d = to_dfa(node)
    oracle = re.compile(_as_re(node), re.DOTALL)
    for _ in range(10):
        text = data.draw(st.text(alphabet="abcé中\x80ÿ", max_size=8))
        assert d.matches(text.encode()) == (oracle.fullmatch(text) is not None), (node, text)


def _plain(node):
    """The same language as plain regex_ast nodes, for the general path: a KeyNotIn (its
    DFA built from the key trie) as a JSON string of its decoded node
    (tests/test_json_keys.py), a LiteralAlt (a trie of words) as an Alt of its items, a
    CountedChars as the Seq of its items."""
    if isinstance(node, KeyNotIn):
        return json_string_node(node.decoded)
    if isinstance(node, LiteralAlt):
        return Alt(node.items)
    if isinstance(node, CountedChars):  # its DFA built per count (json_counted)
        return Seq(node.items)
    return node


def _schema_lexemes(limit_per_subset: int = 2) -> list:
    """Terminal patterns of real schemas (the first few of each JSONSchemaBench subset)."""
    from sgl.constrain.json_schema import json_schema_grammar

    root = require_shared("jsonschemabench", "dev")
    out = {}  # distinct patterns, in order
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(sub.glob("*.json"))[:limit_per_subset]:
            try:
                grammar = json_schema_grammar(json.loads(f.read_text(encoding="utf-8")))
            except Exception:  # noqa: BLE001 - schemas the frontend refuses are not the subject
                continue
            for term in grammar.terminals.values():
                p = term.pattern
                node = (literal(p) if term.literal else parse_regex(p)) if isinstance(p, str) else p
                out.setdefault(node, None)
    return list(out)


def test_real_schema_lexemes_fast_equals_general() -> None:
    nodes = _schema_lexemes()
    assert len(nodes) > 100
    checked = 0
    for node in nodes:
        try:
            d = to_dfa(node)
        except CompileBudgetExceeded:
            continue  # a few real patterns are too large; both paths share that check
        if d.n_states <= 1000:  # the general path is slow on long counter chains
            try:
                general = _general(_plain(node))
            except CompileBudgetExceeded:
                continue  # a direct construction (KeyNotIn) fits where the regex path does not
            assert _canonical(d) == _canonical(general)
            checked += 1
    assert checked > 100


def test_json_lexemes_compile_fast() -> None:
    """Bounded strings, many property names, formats: compositional builds are quick."""
    from sgl.constrain.json_schema import json_schema_grammar

    schemas = [
        {"type": "string", "maxLength": 300},
        {"type": "object", "properties": {f"property_{i}": {"type": "integer"} for i in range(30)}},
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "email"},
        {"type": "string", "format": "uri"},
        {"type": "integer", "minimum": -12345, "maximum": 678901},
    ]
    t0 = time.thread_time()
    longest = 0
    for schema in schemas:
        for term in json_schema_grammar(schema).terminals.values():
            p = term.pattern
            node = (literal(p) if term.literal else parse_regex(p)) if isinstance(p, str) else p
            longest = max(longest, to_dfa(node).n_states)
    assert longest > 3000  # the 300-character string: a long counter chain
    assert time.thread_time() - t0 < 1.5


def test_budgets_apply_to_cached_items() -> None:
    node = Repeat(Repeat(literal("a"), 100, 100), 0, None)  # (a{100})*, item cached
    assert to_dfa(node).n_states == 100
    with pytest.raises(CompileBudgetExceeded):
        to_dfa(node, max_states=50)
    with pytest.raises(CompileBudgetExceeded):
        to_dfa(node, max_nfa=100)


def test_concurrent_calls_agree() -> None:
    patterns = PATTERNS[-15:] * 2  # the JSON-like lexemes and counters
    expected = {p: _canonical(to_dfa(parse_regex(p))) for p in patterns}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: _canonical(to_dfa(parse_regex(p))), patterns))
    assert got == [expected[p] for p in patterns]


# Sequences whose items are mostly single code points (a constant JSON string whose
# "/" may also be spelled "\/" is one): runs of them are glued as one literal chain
# (``_Compiler._glue_pieces``). Code points of 1-4 UTF-8 bytes, the surrogate edge,
# and the pieces that break a run (a class, an alternative, a repeat, an empty item).
_POINTS = [Chars(((cp, cp),)) for cp in (0x22, 0x2F, 0x5C, ord("a"), 0xE9, 0x4E2D, 0x1F600, 0xD7FF, 0xE000)]
_BREAKS = [
    Alt((literal("/"), literal("\\/"))),
    Chars(((ord("a"), ord("c")),)),
    Repeat(literal("é"), 0, 2),
    Repeat(Chars(((ord("0"), ord("9")),)), 1, None),
    Chars(((0xD800, 0xD800),)),  # a lone surrogate: no text, so the whole Seq is empty
    EMPTY,
]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(_POINTS + _POINTS + _BREAKS), min_size=2, max_size=12))
def test_runs_of_code_points_glue_as_literals(items) -> None:
    node = Seq(tuple(items))
    d = to_dfa(node)
    assert _canonical(d) == _canonical(_general(node))
    assert _n_equivalence_classes(d) == d.n_states


@given(st.lists(st.text(alphabet="ab\u00e9", max_size=3), max_size=4), st.lists(st.text(alphabet="ab\u00e9", max_size=3), max_size=4))
def test_word_lists_compare_with_alternatives_by_their_items(words, others):
    # a LiteralAlt equals an Alt of the same items (its length checked first, so a
    # comparison with NOTHING builds no items) and has no boolean operators
    from sgl.constrain.automata.derivatives import has_boolean_ops

    w = LiteralAlt(tuple(words))
    o = Alt(LiteralAlt(tuple(others)).items)
    assert (w == o) == (tuple(dict.fromkeys(words)) == tuple(dict.fromkeys(others)))
    assert (w == NOTHING) == (not words) and (w != NOTHING) == bool(words)
    assert w == Alt(LiteralAlt(tuple(words)).items) and not has_boolean_ops(w)
