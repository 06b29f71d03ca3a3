"""json_keys.KeyNotIn: the "any key but these" lexeme built from the key trie must be
the regex path's automaton (same language, same minimal state count)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sgl.constrain import compile_json_schema
from sgl.constrain.automata.compiler import general_dfa, to_dfa
from sgl.constrain.automata.dfa import ByteDFA
from sgl.constrain.json_keys import KeyNotIn
from sgl.constrain.json_strings import json_string_node
from sgl.constrain.regex_ast import Chars

ALPHABET = ["a", "b", "c", "A", "_", "-", " ", "/", '"', "\\", "\n", "\x00", "\x7f", "é", "ü", "\u2028", "😀", "\udfff"]


def _regex_path(key: KeyNotIn) -> ByteDFA:
    """The same lexeme through escaping + determinising + minimising (no shortcuts)."""
    return general_dfa(json_string_node(key.decoded))


def _same_language(a: ByteDFA, b: ByteDFA) -> bool:
    """Both trim: walk the product, comparing acceptance and which bytes go on."""
    seen, todo = {(0, 0)}, [(0, 0)]
    while todo:
        x, y = todo.pop()
        if a.accepting[x] != b.accepting[y]:
            return False
        ra, rb = a.table[x], b.table[y]
        if ((ra >= 0) != (rb >= 0)).any():
            return False
        for pair in set(zip(ra[ra >= 0].tolist(), rb[rb >= 0].tolist(), strict=True)):
            if pair not in seen:
                seen.add(pair)
                todo.append(pair)
    return True


def _check(names: tuple[str, ...], max_nodes: int = 300) -> None:
    key = KeyNotIn(names, max_nodes)
    direct, old = to_dfa(key), _regex_path(key)
    assert _same_language(direct, old), (names, max_nodes)
    assert direct.n_states == old.n_states, (names, max_nodes, direct.n_states, old.n_states)
    assert not (direct.table[0] >= 0).any() or direct.table[0, ord('"')] >= 0


@pytest.mark.parametrize("names", [
    ("a",), ("",), ("ab", "ac", "b"), ("userId", "groupId", "id"), ("/", '"', "\\"),
    ("é", "éa", "x"), ("\n", "a\tb"), ("😀", "a😀"), ("\x7f", "ü"), ("a/b", "a\\b", 'a"b'),
    ("\udfff",), ("a\ud800b", "ab"),  # lone surrogates: no JSON spelling
])
def test_direct_dfa_is_the_regex_paths(names):
    _check(names)


def test_direct_dfa_on_random_key_sets_and_cuts():
    rng = random.Random(7)
    for _ in range(120):
        names = tuple(sorted({"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 4)))
                              for _ in range(rng.randint(1, 6))}))
        _check(names, rng.choice([300, 3, 5, 8]))


def test_realistic_property_names():
    words = ["name", "type", "description", "properties", "items", "required", "enum", "format",
             "default", "minimum", "maximum", "userId", "groupId", "created_at", "updated_at", "apiVersion"]
    _check(tuple(words))


def test_cut_at_the_root_is_the_empty_language():
    d = to_dfa(KeyNotIn(("ab", "cd"), 1))  # two nodes below the root: cut at depth 0
    assert d.n_states == 1 and not d.accepting.any() and (d.table < 0).all()


def test_key_dfa_is_shared_by_equal_name_sets():
    assert KeyNotIn(("a", "b"), 300) == KeyNotIn(("a", "b"), 300)
    assert hash(KeyNotIn(("a", "b"), 300)) == hash(KeyNotIn(("a", "b"), 300))
    assert KeyNotIn(("a", "b"), 300) != KeyNotIn(("a", "c"), 300)


def test_schema_with_additional_properties_reads_escaped_keys():
    schema = {"type": "object", "properties": {"ab": {"type": "integer"}, "é": {"type": "integer"}},
              "additionalProperties": {"type": "string"}}
    g = compile_json_schema(schema)
    ok = [{"ab": 1}, {"x": "y"}, {"a": "y"}, {"abc": "y"}, {"é": 2}, {"éé": "z"}, {"a\"b": "q"}]
    for value in ok:
        for ensure_ascii in (True, False):
            assert g.accepts_text(json.dumps(value, ensure_ascii=ensure_ascii)), value
    # a declared key with an undeclared value type: only the declared member may read it
    assert not g.accepts_text('{"ab": "x"}')
    assert not g.accepts_text('{"\\u00e9": "x"}')
    assert g.accepts_text('{"\\u00e9x": "x"}')


def test_direct_dfa_rows_stay_within_the_budget():
    from sgl.constrain.errors import CompileBudgetExceeded

    rng = random.Random(3)
    names = tuple("".join(rng.choice("abcdefgh") for _ in range(8)) for _ in range(200))
    with pytest.raises(CompileBudgetExceeded):
        KeyNotIn(names, 10_000).direct_byte_dfa(max_states=50)
    assert np.asarray(KeyNotIn(names, 10_000).direct_byte_dfa().accepting).sum() == 1


def test_regex_nodes_hash_once_and_pickle_without_the_cached_hash():
    import pickle

    from sgl.constrain.regex_ast import Chars, Repeat, Seq

    a = Seq((Chars(((1, 2),)), Repeat(Chars(((3, 3),)), 0, None)))
    b = Seq((Chars(((1, 2),)), Repeat(Chars(((3, 3),)), 0, None)))
    assert a == b and hash(a) == hash(b) and a is not b
    assert hash(a) != hash(Seq((Chars(((1, 2),)),)))
    assert "_hash_once" not in a.__getstate__()
    back = pickle.loads(pickle.dumps(a))
    assert back == a and hash(back) == hash(a)


def test_key_lexeme_is_not_escaped_unless_walked():
    key = KeyNotIn(("alpha", "beta"), 300)
    (body,) = key.items  # what split_counters looks at
    assert "_items" not in body.__dict__
    to_dfa(key)
    assert "_items" not in body.__dict__


def test_key_lexeme_pickles():
    import pickle

    key = KeyNotIn(("a", "bc"), 300)
    back = pickle.loads(pickle.dumps(key))
    assert back == key and hash(back) == hash(key)
    assert _same_language(to_dfa(back), to_dfa(key))


def test_one_byte_construction_is_the_per_state_one():
    """Names spelled one byte a character take a one-pass construction: the same table
    (states, order, pruning) as every row built on its own, on random sets (prefixes of
    each other, the empty name, cuts) and on sets it must leave to the general one."""
    rng = random.Random(11)
    one_byte = ["a", "b", "c", "A", "_", "-", " ", "~", "0"]
    for i in range(300):
        alphabet = one_byte if i % 3 else one_byte + ["/", '"', "\\", "\n", "é", "😀", "\x7f"]
        names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 12))}
        names |= {n[: rng.randint(0, len(n))] for n in list(names)[:2]}  # prefixes of names
        names = tuple(sorted(names))
        for max_nodes in (300, rng.choice([1, 2, 3, 5, 8, 20])):
            key = KeyNotIn(names, max_nodes)
            fast, slow = key.direct_byte_dfa(), key.direct_byte_dfa(batched=False)
            assert np.array_equal(fast.table, slow.table), (names, max_nodes)
            assert np.array_equal(fast.accepting, slow.accepting), (names, max_nodes)
    _check(("a", "ab", "abc", "b", ""))
    _check(tuple("".join(rng.choice(one_byte) for _ in range(rng.randint(1, 9))) for _ in range(40)))


def test_one_byte_characters_are_spelled_as_themselves_only():
    from sgl.constrain.json_keys import ONE_BYTE_KEY_CHARS

    for ch in map(chr, range(0x20, 0x7F)):
        d = to_dfa(json_string_node(Chars(((ord(ch), ord(ch)),))))
        words, todo = set(), [(0, b"")]
        while todo:
            s, w = todo.pop()
            if d.accepting[s]:
                words.add(w)
            for b in np.flatnonzero(d.table[s] >= 0).tolist():
                todo.append((int(d.table[s, b]), w + bytes([b])))
        assert (words == {b'"' + ch.encode() + b'"'}) == (ch in ONE_BYTE_KEY_CHARS), (ch, words)
