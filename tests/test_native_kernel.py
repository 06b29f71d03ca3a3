"""The native mask kernel against its numpy fallback, and random walks through every frontend.

The C kernel (``sgl/constrain/extension.c``: trie walk, token walks, lazy product lexer)
and the numpy walks with the pure-Python lexer must give bit-identical masks. Each case
walks a seeded random path of allowed tokens with the native kernel, then replays it
with ``SGL_NATIVE=0`` on fresh lexers, comparing the mask at every step.
"""

from __future__ import annotations

import json
import os
import random
import re
import zlib

import jsonschema
import numpy as np
import pytest
from conftest import require_shared, shared_data

from sgl.constrain import CompileBudget, Matcher, lexer
from sgl.constrain.compiled import CompiledGrammar, choices_grammar
from sgl.constrain.gbnf import ebnf_grammar, gbnf_grammar
from sgl.constrain.json_schema import json_schema_grammar
from sgl.constrain.lark_grammar import lark_grammar
from sgl.constrain.mask import native_enabled
from sgl.constrain.native import extension
from sgl.constrain.regex import regex_grammar
from sgl.constrain.token_trie import build_trie


def test_ci_builds_the_extension():
    if extension is None:
        if os.environ.get("CI"):
            pytest.fail("the C mask kernel was not built in CI (setup.py ext_modules)")
        pytest.skip("the C mask kernel is not built here (no compiler at install): numpy fallback in use")
    assert native_enabled() or os.environ.get("SGL_NATIVE") == "0"


def _needs_native():
    if extension is None:
        pytest.skip("the C mask kernel is not built (no compiler at install)")


# ---------------------------------------------------------------------------- cases

REGEXES = [
    r"[0-9]{3}-[0-9]{4}",
    r"(cat|dog|bird)s?( and (cat|dog|bird)s?)*",
    r"[A-Za-z_][A-Za-z0-9_]{0,30}",
    r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?",
    r'"([^"\\]|\\.)*"',
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z",
    r"(a|ab|abc)+c",
    r"[\u00e0-\u00ff\u4e00-\u4e0f]{1,8}",
    # counting states (the walk's counting shortcut): ASCII, mixed with a loop, and
    # a class whose characters are not all ASCII
    r"[a-z ]{2,20}!",
    r"[a-zA-Z]{3}[a-z0-9]*",
    r"[^\n]{0,25}\n",
]

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "array", "items": {"type": "number"}, "maxItems": 4},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "bc", "def"]}},
                                      "ok": {"type": "boolean"}, "note": {"type": ["string", "null"]}}},
    {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "integer", "minimum": 10}]},
    {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.(com|org)$"},
    {"type": "object", "properties": {"s": {"type": "string", "maxLength": 40},
                                      "t": {"type": "string", "minLength": 3, "maxLength": 9}}},
    # length bounds alone: one lexeme built directly, and chunk lexemes beyond 1,000
    {"type": "string", "minLength": 2, "maxLength": 1000},
    {"type": "object", "properties": {"s": {"type": "string", "minLength": 3, "maxLength": 1500}}},
]


def _grammar_cases() -> list[tuple[str, str]]:
    root = shared_data() / "grammars"
    if not root.exists():
        return []
    files = sorted(p for p in root.rglob("*") if p.suffix in (".lark", ".gbnf", ".ebnf"))
    return [(p.suffix[1:], str(p.relative_to(root))) for p in files]


def _maskbench_schemas(limit: int = 24) -> list[str]:
    root = shared_data() / "maskbench" / "dev"
    if not root.exists():
        return []
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.json"))
    return random.Random(7).sample(files, min(limit, len(files)))


def _load_maskbench(rel: str):
    path = require_shared("maskbench", "dev") / rel
    case = json.loads(path.read_text(encoding="utf-8"))
    if "schema" in case:
        return case["schema"]
    for parent in path.resolve().parents:
        candidate = parent / case["schema_file"]
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    pytest.skip(f"schema file of {rel} not found")


def _ir(kind: str, spec):
    from sgl.constrain.errors import ConstraintError

    try:
        if kind == "regex":
            return regex_grammar(spec)
        if kind == "json":
            return json_schema_grammar(spec)
        if kind == "choices":
            return choices_grammar(spec)
        text = (require_shared("grammars") / spec).read_text(encoding="utf-8")
        return {"lark": lark_grammar, "gbnf": gbnf_grammar, "ebnf": ebnf_grammar}[kind](text)
    except ConstraintError as e:
        pytest.skip(f"refused by the frontend (covered elsewhere): {e}")


# ---------------------------------------------------------------------------- walks


# The budgets are wall time: the pure-Python masks of a large grammar take seconds of CPU,
# which a loaded machine stretches past the default 20 s per mask (a failure, not a skip).
# These tests compare masks; speed is the benchmarks' business.
SLOW_OK = CompileBudget(seconds=600, mask_seconds=600)


def _fresh(ir, vocab, native: bool, monkeypatch) -> Matcher:
    """A matcher over lexers built from scratch with (or without) the native kernel."""
    from sgl.constrain.errors import ConstraintError

    monkeypatch.setenv("SGL_NATIVE", "1" if native else "0")
    lexer.clear_shared_cores()
    try:
        return Matcher(CompiledGrammar(ir, vocab, budget=SLOW_OK))
    except ConstraintError as e:
        pytest.skip(f"refused at compile (covered elsewhere): {e}")


def _allowed(words: np.ndarray) -> np.ndarray:
    return np.nonzero(np.unpackbits(words.view(np.uint8), bitorder="little"))[0]


def _random_walk(m: Matcher, seed: int, steps: int, eos: set[int]) -> tuple[list[int], list[np.ndarray]]:
    rng = random.Random(seed)
    tokens, masks = [], []
    for _ in range(steps):
        words = m.allowed_words().copy()
        masks.append(words)
        choices = [t for t in _allowed(words).tolist() if t not in eos]
        if not choices:
            break
        t = rng.choice(choices)
        assert m.advance(t), f"the mask allowed token {t} but advance refused it"
        tokens.append(t)
    return tokens, masks


def _check_identical(ir, vocab, monkeypatch, seed: int, steps: int = 24) -> None:
    eos = set(vocab.eos_token_ids)
    tokens, native_masks = _random_walk(_fresh(ir, vocab, True, monkeypatch), seed, steps, eos)
    m = _fresh(ir, vocab, False, monkeypatch)
    for i, want in enumerate(native_masks):
        got = m.allowed_words()
        if not np.array_equal(got, want):
            diff = np.nonzero(np.unpackbits((got ^ want).view(np.uint8), bitorder="little"))[0][:5]
            pieces = [vocab.token_bytes[t] for t in diff]
            pytest.fail(f"step {i}: native and numpy masks differ on tokens {diff.tolist()} {pieces}")
        if i < len(tokens):
            assert m.advance(tokens[i])


@pytest.mark.parametrize("pattern", REGEXES)
def test_native_equals_numpy_regex(pattern, llama3_vocab, monkeypatch):
    _needs_native()
    _check_identical(_ir("regex", pattern), llama3_vocab, monkeypatch, zlib.crc32(pattern.encode()))


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_native_equals_numpy_schema(i, llama3_vocab, monkeypatch):
    _needs_native()
    _check_identical(_ir("json", SCHEMAS[i]), llama3_vocab, monkeypatch, i)


@pytest.mark.parametrize("rel", _maskbench_schemas() or ["<no maskbench data>"])
def test_native_equals_numpy_maskbench(rel, llama3_vocab, monkeypatch):
    _needs_native()
    _check_identical(_ir("json", _load_maskbench(rel)), llama3_vocab, monkeypatch, zlib.crc32(rel.encode()))


@pytest.mark.parametrize("kind,rel", _grammar_cases() or [("lark", "<no grammar data>")])
def test_native_equals_numpy_grammar_files(kind, rel, llama3_vocab, monkeypatch):
    _needs_native()
    _check_identical(_ir(kind, rel), llama3_vocab, monkeypatch, zlib.crc32(rel.encode()), steps=12)


def test_native_equals_numpy_choices(llama3_vocab, monkeypatch):
    _needs_native()
    words = ["apple", "apple pie", "banana", "band", "bandana", "Zürich", "日本", "a b c"]
    _check_identical(_ir("choices", words), llama3_vocab, monkeypatch, 3)


def test_trie_matches_sorted_tokens(llama3_vocab):
    """Every token is found at the end of its bytes' path in the trie, subtrees nest."""
    from sgl.constrain.compiled import token_table

    table = token_table(llama3_vocab)
    node_byte, depth, end, tok, ids = build_trie(table.tok_bytes, table.tok_off, table.real_ids)
    assert sorted(ids.tolist()) == sorted(table.real_ids.tolist())
    rng = random.Random(0)
    for i in rng.sample(range(len(node_byte)), 2000):
        assert i < end[i] <= len(node_byte)
        # children are one deeper; the subtree's nodes are all deeper than i
        assert (depth[i + 1 : end[i]] > depth[i]).all()
        for t in ids[tok[i] : tok[i + 1]].tolist():
            data = llama3_vocab.token_bytes[t]
            assert len(data) == depth[i] and data[-1] == node_byte[i]


def test_lexer_budget_is_a_constraint_error(llama3_vocab, monkeypatch):
    """A product lexer over its state budget fails with CompileBudgetExceeded, natively too."""
    from sgl.constrain.errors import CompileBudgetExceeded

    _needs_native()
    monkeypatch.setattr(lexer, "MAX_LEXER_STATES", 20)
    m = _fresh(_ir("regex", r"[a-z]{0,40}"), llama3_vocab, True, monkeypatch)
    with pytest.raises(CompileBudgetExceeded, match="exceeds 20 states"):
        m.allowed_words()


def _utf8_prefix_ok(data: bytes) -> bool:
    import codecs

    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _parents(depth: np.ndarray) -> np.ndarray:
    """Each preorder trie node's parent (-1 at depth 1), by walking the path down."""
    path: list[int] = []
    parent = []
    for i, d in enumerate(depth.tolist()):
        del path[d - 1 :]
        parent.append(path[-1] if path else -1)
        path.append(i)
    return np.array(parent, dtype=np.int64)


def test_utf8_subtree_flags_match_a_decoder():
    """The per-node UTF-8 flag (the walk's shortcut for string bodies) says exactly whether
    every token below the node, from the node's byte on, is (cut-short) well-formed UTF-8."""
    from sgl.constrain.token_trie import utf8_subtrees

    toks = [b"a", b"ab", "é".encode(), "é".encode()[:1], "€x".encode(), b"\xed\xa0\x80", b"\xc0\xaf",
            "𝄞".encode(), "𝄞".encode()[:2], b"\x80a", b"a\xff", "ü!".encode(), b"\xf4\x90\x80\x80", b"\xe0\x80"]
    raw = b"".join(toks)
    off = np.concatenate([[0], np.cumsum([len(t) for t in toks])]).astype(np.int64)
    node_byte, depth, end, tok, ids = build_trie(np.frombuffer(raw, dtype=np.uint8), off, np.arange(len(toks)))
    flags = utf8_subtrees(node_byte, depth, _parents(depth))
    for i in range(node_byte.size):
        below = [toks[int(t)] for t in ids[tok[i] : tok[end[i]]]]
        assert bool(flags[i]) == all(_utf8_prefix_ok(b[depth[i] - 1 :]) for b in below), i


def test_max_chars_below_counts_characters():
    """The per-node character count (the counting shortcut's bound) is the most
    characters (UTF-8 lead or ASCII bytes) of any token below the node, from its byte on."""
    from sgl.constrain.token_trie import MAX_CHARS, max_chars_below

    toks = [b"a", b"abc", "é".encode(), "éa".encode(), "€€x".encode(), b"\x80\x80", "ab日本".encode(), b"z" * 300]
    raw = b"".join(toks)
    off = np.concatenate([[0], np.cumsum([len(t) for t in toks])]).astype(np.int64)
    node_byte, depth, end, tok, ids = build_trie(np.frombuffer(raw, dtype=np.uint8), off, np.arange(len(toks)))
    counts = max_chars_below(node_byte, depth, _parents(depth))
    for i in range(node_byte.size):
        below = [toks[int(t)][depth[i] - 1 :] for t in ids[tok[i] : tok[end[i]]]]
        want = max(sum((c & 0xC0) != 0x80 for c in b) for b in below)
        assert counts[i] == min(want, MAX_CHARS), i


def test_native_dfa_and_product_reject_bad_input():
    """The C ``Dfa`` checks every target once; ``Product`` takes only ``Dfa`` objects and
    checks the states it is asked to intern: bad input is a Python exception, not a crash."""
    _needs_native()
    table = np.full((2, 256), -1, dtype=np.int32)
    table[0, ord("a")] = 1
    acc = np.array([0, 1], dtype=np.uint8)
    with pytest.raises(ValueError, match="bad target"):
        bad = table.copy()
        bad[1, 0] = 2
        extension.Dfa(bad, acc)
    with pytest.raises(ValueError, match="bad target"):
        bad.flags.writeable = False  # a read-only table is used in place: checked the same
        extension.Dfa(bad, acc)
    with pytest.raises(ValueError, match="bad target"):
        bad = table.copy()
        bad[0, 5] = -3
        bad.flags.writeable = False
        extension.Dfa(bad, acc)
    with pytest.raises(ValueError, match="inconsistent"):
        extension.Dfa(table[:1], acc)
    frozen = table.copy()
    frozen.flags.writeable = False
    held = extension.Dfa(frozen, acc)
    del frozen  # the Dfa keeps the buffer alive
    assert np.frombuffer(extension.Product((held,), 4).row(0), dtype=np.int32)[ord("a")] == 1
    with pytest.raises(TypeError):
        extension.Product((table,), 10)
    with pytest.raises(ValueError):
        extension.Product((), 10)
    dfa = extension.Dfa(table, acc)
    assert dfa.n_states == 2
    prod = extension.Product((dfa, dfa), 10)
    row = np.frombuffer(prod.row(0), dtype=np.int32)
    assert row[ord("a")] == 1 and (np.delete(row, ord("a")) == -1).all()
    assert prod.accepting(1) and not prod.accepting(0)
    assert np.frombuffer(prod.comp(1), dtype=np.int32).tolist() == [1, 1]
    assert prod.intern(np.array([-1, 1], dtype=np.int32).tobytes()) == 2
    assert prod.intern(np.array([-1, -1], dtype=np.int32).tobytes()) == -1
    with pytest.raises(ValueError, match="out of range"):
        prod.intern(np.array([2, 0], dtype=np.int32).tobytes())
    with pytest.raises(IndexError):
        prod.row(99)


def test_walk_roots_equals_walk_trie_from_every_root(llama3_vocab, monkeypatch):
    """``walk_roots`` (a whole-vocabulary walk that leaves out the roots whose byte is dead
    in the state's row before reading their nodes) gives the same words and the same
    boundaries, in the same order, as ``walk_trie`` from every depth-1 node; and so with
    loop memos (``loop_frontier``: below a root entered in a loopy state, the memo's
    tokens and a walk of its exits only). States of several lexers (keys, strings with
    and without excluded keys, a pattern, numbers, a product of all), each reachable one
    up to a bound. Bad input is a Python exception."""
    _needs_native()
    ir = _ir("json", {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "number"},
                                                       "p": {"type": "string", "pattern": "^[a-z ]+(x|\\\\)?$"},
                                                       "tags": {"type": "array", "items": {"enum": ["ab", "ac"]}}},
                      "additionalProperties": {"type": "integer"}})
    m = _fresh(ir, llama3_vocab, True, monkeypatch)
    masks = m.compiled.masks
    tokens = masks.tokens
    trie = (tokens.packed_trie, tokens.subtree_bytes, tokens.max_chars, tokens.trie[4])
    roots = tokens.trie_roots
    lexers = [masks.lexer.for_lexemes(frozenset((i,))) for i in range(len(masks.lexer.dfas))]
    lexers.append(masks.lexer.for_lexemes(frozenset(range(len(masks.lexer.dfas)))))
    states = []
    for lex in lexers:
        todo, seen = [0], {0}
        while todo and len(seen) < 40:
            s = todo.pop()
            states.append((lex.core, s))
            for t in set(lex.core.row(s)) - seen - {-1}:
                seen.add(t)
                todo.append(t)
    memos: dict[bytes, tuple] = {}
    for core, s in states:  # the signatures the walks report, then their memos
        got = extension.walk_roots(*trie, core.product, tokens.root_of_byte, s,
                                   np.zeros(tokens.n_words, dtype=np.uint32))
        if got[3] is not None and got[3] not in memos:
            memos[got[3]] = extension.loop_frontier(tokens.packed_trie, tokens.subtree_bytes, tokens.root_of_byte,
                                                    got[3], tokens.trie[4], tokens.n_words)
    assert memos  # string bodies met
    args = tuple((sig, *memo) for sig, memo in memos.items())
    used = 0
    for core, s in states:
        want_words = np.zeros(tokens.n_words, dtype=np.uint32)
        want = extension.walk_trie(*trie, core.product, roots, np.full(roots.shape, s, dtype=np.int32), want_words)
        for memo_args in (), args:
            got_words = np.zeros(tokens.n_words, dtype=np.uint32)
            got = extension.walk_roots(*trie, core.product, tokens.root_of_byte, s, got_words, memo_args)
            assert got[:3] == want and np.array_equal(got_words, want_words), (core, s, len(memo_args))
            used += bool(memo_args) and got[3] is None and want_words.any()
    assert len(states) > 100 and used > 20
    words = np.zeros(tokens.n_words, dtype=np.uint32)
    product = lexers[-1].core.product
    with pytest.raises(ValueError, match="state out of range"):
        extension.walk_roots(*trie, product, tokens.root_of_byte, product.n_states + 5, words)
    bad = tokens.root_of_byte.copy()
    bad[7] = tokens.packed_trie.size
    with pytest.raises(ValueError, match="out of range"):
        extension.walk_roots(*trie, product, bad, 0, words)
    with pytest.raises(ValueError, match="root_of_byte"):
        extension.walk_roots(*trie, product, tokens.root_of_byte[:255], 0, words)
    sig, bits, exits, off, dense = args[0]
    n_ex = len(exits) // 4
    far = np.full(n_ex, tokens.packed_trie.size, dtype=np.int32).tobytes()  # every exit out of the trie
    neg = np.full(n_ex, -1, dtype=np.int32).tobytes()
    past = np.frombuffer(off, dtype=np.int32).copy()
    past[1:256] = n_ex + 5  # offsets past the exits (their ends stay right)
    back = np.frombuffer(off, dtype=np.int32).copy()
    back[1:256] = -1  # and before them
    for broken in ((sig[:32], bits, exits, off, dense), (sig, bits[:8], exits, off, dense),
                   (sig, bits, exits[:-4], off, dense), (sig, bits, exits, off, dense[:-4]),
                   (sig, bits, far, off, dense), (sig, bits, neg, off, dense),
                   (sig, bits, exits, past.tobytes(), dense), (sig, bits, exits, back.tobytes(), dense)):
        with pytest.raises(ValueError, match="malformed memos"):
            for core, s in states:  # (checked where a walk first meets a loopy root)
                extension.walk_roots(*trie, core.product, tokens.root_of_byte, s, words, (broken,))


# ---------------------------------------------------------------------------- soundness


def _walk_to_end(m: Matcher, vocab, seed: int, max_steps: int = 80) -> bytes | None:
    """Random allowed tokens (EOS taken when allowed after half the steps, and checks
    of disallowed tokens along the way); the text if the walk ended, else None."""
    rng = random.Random(seed)
    eos = set(vocab.eos_token_ids)
    out = bytearray()
    for step in range(max_steps):
        words = m.allowed_words()
        allowed = _allowed(words)
        assert allowed.size, f"dead end after {bytes(out)!r}: nothing allowed, not accepting"
        if step >= max_steps // 2 and any(t in eos for t in allowed.tolist()):
            assert m.is_accepting()
            return bytes(out)
        # the mask and the one-token check agree, on allowed and on forbidden tokens
        for t in rng.sample(range(vocab.n_vocab), 20):
            if t < len(vocab.token_bytes) and vocab.token_bytes[t]:
                assert m.accepts_token(t) == bool((int(words[t >> 5]) >> (t & 31)) & 1)
        choices = [t for t in allowed.tolist() if t not in eos] or allowed.tolist()
        t = rng.choice(choices)
        assert m.advance(t)
        if t in eos:
            return bytes(out)
        out += vocab.token_bytes[t]
    return None


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_random_walk_schema_outputs_validate(i, llama3_vocab):
    from sgl.constrain import compile_json_schema

    m = Matcher(compile_json_schema(SCHEMAS[i], llama3_vocab))
    for seed in range(4):
        text = _walk_to_end(m.copy(), llama3_vocab, seed)
        if text is not None:
            jsonschema.validate(json.loads(text), SCHEMAS[i])


@pytest.mark.parametrize("pattern", REGEXES)
def test_random_walk_regex_outputs_match(pattern, llama3_vocab):
    from sgl.constrain import compile_regex

    m = Matcher(compile_regex(pattern, llama3_vocab))
    for seed in range(4):
        text = _walk_to_end(m.copy(), llama3_vocab, seed)
        if text is not None:
            assert re.fullmatch(pattern, text.decode("utf-8")), text


@pytest.mark.parametrize("kind,rel", [c for c in _grammar_cases() if "json" in c[1] or "arith" in c[1]][:6]
                         or [("lark", "<no grammar data>")])
def test_random_walk_grammar_no_dead_end(kind, rel, llama3_vocab):
    from sgl.constrain.errors import ConstraintError

    try:
        m = Matcher(CompiledGrammar(_ir(kind, rel), llama3_vocab))
    except ConstraintError as e:
        pytest.skip(f"refused at compile: {e}")
    for seed in range(2):
        _walk_to_end(m.copy(), llama3_vocab, seed, max_steps=40)


def test_choices_walk_ends_in_a_choice(llama3_vocab):
    from sgl.constrain import compile_choices

    words = ["apple", "apple pie", "banana", "band", "bandana"]
    m = Matcher(compile_choices(words, llama3_vocab))
    for seed in range(6):
        text = _walk_to_end(m.copy(), llama3_vocab, seed, max_steps=10)
        assert text is None or text.decode() in words


def test_lexers_of_both_kinds_mixed_give_the_same_masks(llama3_vocab, monkeypatch):
    """Native lexers cached before ``SGL_NATIVE=0`` meet Python ones made after it (their
    boundary results are trie nodes, continued as tokens by the numpy walk)."""
    _needs_native()
    ir = _ir("json", SCHEMAS[2])
    eos = set(llama3_vocab.eos_token_ids)
    native = _fresh(ir, llama3_vocab, True, monkeypatch)
    _random_walk(native, 5, 6, eos)  # warms some native lexers, leaves others unbuilt
    monkeypatch.setenv("SGL_NATIVE", "0")
    mixed = Matcher(CompiledGrammar(ir, llama3_vocab))  # shares the cached native lexers
    tokens, mixed_masks = _random_walk(mixed, 11, 24, eos)
    kinds = {type(c).__name__ for c in lexer.shared_cores()}
    assert kinds == {"NativeLexerCore", "LexerCore"}, kinds  # the walk did cross both kinds
    pure = _fresh(ir, llama3_vocab, False, monkeypatch)
    for i, want in enumerate(mixed_masks):
        assert np.array_equal(pure.allowed_words(), want), f"step {i}"
        if i < len(tokens):
            assert pure.advance(tokens[i])
