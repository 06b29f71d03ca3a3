"""Keys in any order at any object size, none twice (issue 9: no valid output refused).

Optional members loop in the grammar like other keys; the parser keeps a key from coming
twice in one object (``grammar.UniqueKeys``, ``EarleyParser._track_keys``), so big
objects accept every order of their keys with a grammar linear in the members, where a
set of used keys in the grammar costs 2^n states. JSON-Schema-Test-Suite-style groups
(every label checked against ``jsonschema``), decided on bytes and token by token;
repeated keys written as raw text (a dict cannot hold them); random walks from the
masks never dead-end; the compiled and the Python parser give the same masks.
"""

from __future__ import annotations

import json
import random
import warnings

import jsonschema
import numpy as np
import pytest

from sgl.constrain import Matcher, allocate_bitmask, compile_json_schema
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.json_schema import json_schema_grammar

INT, STR, BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
BIG = {f"k{i:02d}": INT for i in range(40)}  # far past any set-of-used-keys budget
NAMES = [f"n{i}" for i in range(12)]


def _obj(keys, value=1) -> dict:
    return {k: value for k in keys}


GROUPS = [
    {
        "description": "40 optional keys in any order",
        "schema": {"type": "object", "properties": BIG, "additionalProperties": False},
        "tests": [
            ("schema order", _obj(sorted(BIG)), True),
            ("reversed", _obj(sorted(BIG, reverse=True)), True),
            ("shuffled", _obj(random.Random(1).sample(sorted(BIG), 40)), True),
            ("a late key first", {"k39": 1, "k00": 1, "k20": 1}, True),
            ("empty", {}, True),
            ("a wrong value late", {"k30": 1, "k01": "x"}, False),
            ("an undeclared key", {"k30": 1, "zz": 1}, False),
        ],
    },
    {
        "description": "required keys among 30 optional ones, any order",
        "schema": {
            "type": "object",
            "properties": {**BIG, "id": STR, "kind": {"enum": ["a", "b"]}},
            "required": ["kind", "id"],
        },
        "tests": [
            ("required last", {"k05": 1, "k02": 1, "id": "x", "kind": "a"}, True),
            ("required first, reversed", {"kind": "b", "id": "x", "k39": 1, "k00": 1}, True),
            ("required between", {"k10": 1, "id": "x", "k01": 1, "kind": "a", "k00": 1}, True),
            ("other keys too", {"zz": [1], "id": "x", "kind": "a", "k07": 1}, True),
            ("a required one missing", {"k10": 1, "id": "x", "k01": 1}, False),
            ("a required one wrong", {"id": "x", "kind": "c"}, False),
        ],
    },
    {
        "description": "the same names in nested and sibling objects",
        "schema": {
            "type": "object",
            "properties": {
                **{n: INT for n in NAMES},
                "inner": {"type": "object", "properties": {**{n: INT for n in NAMES}, "inner": {"type": "object"}}},
                "items": {"type": "array", "items": {"type": "object", "properties": {n: INT for n in NAMES}}},
            },
            "additionalProperties": False,
        },
        "tests": [
            ("outer key again inside", {"n3": 1, "inner": {"n3": 2, "n1": 1}, "n1": 3}, True),
            ("'inner' inside inner", {"inner": {"inner": {"inner": 1}, "n0": 1}, "n0": 2}, True),
            ("every item its own keys", {"items": [_obj(NAMES[::-1]), _obj(NAMES), {}], "n5": 1}, True),
            ("items then outer keys", {"n9": 1, "items": [{"n9": 1}, {"n9": 2}], "n8": 0}, True),
            ("inner key wrong", {"inner": {"n3": "x"}}, False),
        ],
    },
    {
        "description": "maxProperties on a big object",
        "schema": {"type": "object", "properties": BIG, "maxProperties": 3, "minProperties": 2},
        "tests": [
            ("three, out of order", {"k30": 1, "k02": 1, "k11": 1}, True),
            ("two, one undeclared", {"zz": 1, "k02": 1}, True),
            ("four", {"k30": 1, "k02": 1, "k11": 1, "k00": 1}, False),
            ("one", {"k30": 1}, False),
        ],
    },
    {
        "description": "values spelled like the keys",
        "schema": {
            "type": "object",
            "properties": {n: {"enum": NAMES} for n in NAMES},
            "additionalProperties": {"enum": NAMES},
        },
        "tests": [
            ("each key its own name", {n: n for n in NAMES[::-1]}, True),
            ("names under other keys", {"zz": "n1", "n1": "n1", "yy": "n2"}, True),
            ("a value outside the enum", {"n1": "zz"}, False),
        ],
    },
    {
        "description": "anyOf of two big objects sharing names",
        "schema": {
            "anyOf": [
                {"type": "object", "properties": {n: INT for n in NAMES}, "required": ["n0"], "additionalProperties": False},
                {"type": "object", "properties": {n: STR for n in NAMES}, "required": ["n11"], "additionalProperties": False},
            ]
        },
        "tests": [
            ("first, reversed", {n: 1 for n in NAMES[::-1]}, True),
            ("second, shuffled", {n: "x" for n in random.Random(2).sample(NAMES, 12)}, True),
            ("mixed value types", {"n0": 1, "n11": "x"}, False),
            ("neither required key", {"n5": 1}, False),
        ],
    },
]
IDS = [g["description"] for g in GROUPS]

# repeated keys (raw text), per group index: never accepted
DUPLICATES = {
    0: ['{"k01": 1, "k01": 2}', '{"k39": 1, "k00": 1, "k39": 1}', '{"k05": 1, "k06": 1, "k07": 1, "k06": 1}'],
    1: ['{"id": "x", "kind": "a", "id": "y"}', '{"k03": 1, "id": "x", "kind": "a", "k03": 1}',
        '{"kind": "a", "k03": 1, "id": "x", "k03": 1}'],
    2: ['{"n1": 1, "inner": {"n2": 1}, "n1": 2}', '{"inner": {"n2": 1, "n3": 1, "n2": 1}}',
        '{"items": [{"n4": 1, "n4": 1}]}', '{"inner": {}, "inner": {}}', '{"items": [], "n0": 1, "items": []}'],
    3: ['{"k30": 1, "k30": 1}'],
    4: ['{"n1": "n1", "n1": "n1"}', '{"n2": "n1", "n1": "n2", "n2": "n2"}'],
    5: ['{"n0": 1, "n1": 1, "n0": 1}', '{"n11": "x", "n3": "y", "n3": "z"}'],
}


def _compile(schema, vocab=None, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_json_schema(schema, vocab, **options)


@pytest.mark.parametrize("group", GROUPS, ids=IDS)
def test_labels_agree_with_jsonschema(group):
    v = jsonschema.Draft202012Validator(group["schema"])
    for description, data, valid in group["tests"]:
        assert v.is_valid(data) == valid, (group["description"], description)


@pytest.mark.parametrize("any_order", [False, True])
@pytest.mark.parametrize("k", range(len(GROUPS)), ids=IDS)
def test_every_instance_is_decided_exactly(k, any_order):
    group = GROUPS[k]
    cg = _compile(group["schema"], any_order=any_order)
    for description, data, valid in group["tests"]:
        assert cg.accepts_text(json.dumps(data)) == valid, (group["description"], description)
        assert cg.accepts_text(json.dumps(data, indent=2)) == valid, (group["description"], description)
    for text in DUPLICATES[k]:
        assert not cg.accepts_text(text), (group["description"], text)


def _accepts(cg, vocab, text: str) -> bool:
    m = Matcher(cg)
    return all(m.advance(t) for t in vocab.encode(text)) and m.is_accepting()


def test_token_by_token(llama3_vocab):
    for k, group in enumerate(GROUPS):
        cg = _compile(group["schema"], llama3_vocab)
        for description, data, valid in group["tests"]:
            assert _accepts(cg, llama3_vocab, json.dumps(data)) == valid, (group["description"], description)
        for text in DUPLICATES[k]:
            assert not _accepts(cg, llama3_vocab, text), (group["description"], text)


def _allowed(m: Matcher, n_vocab: int) -> np.ndarray:
    bm = allocate_bitmask(1, n_vocab)
    m.fill_bitmask(bm)
    return np.nonzero(np.unpackbits(bm[0].view(np.uint8), bitorder="little")[:n_vocab])[0]


def _no_repeats(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), keys
    return dict(pairs)


WALKS = [
    {"type": "object", "properties": {n: {"enum": [1]} for n in NAMES[:4]}, "additionalProperties": False},
    {"type": "object", "properties": {n: {"enum": [1]} for n in NAMES}, "additionalProperties": False, "maxProperties": 3},
    {"type": "object", "properties": {n: {"enum": [1]} for n in NAMES}, "required": ["n7"], "additionalProperties": False},
    GROUPS[4]["schema"],
]


@pytest.mark.parametrize("k", range(len(WALKS)))
def test_random_walks_never_dead_end_nor_repeat(llama3_vocab, k):
    """Every key used (or the most allowed): the ``,`` that would lead nowhere is not
    offered (a dead end the grammar alone cannot see); every finished walk is valid and
    repeats no key."""
    schema = WALKS[k]
    cg = _compile(schema, llama3_vocab, whitespace="compact")
    eos = set(llama3_vocab.eos_token_ids)
    rng = random.Random(k)
    finished = 0
    for _ in range(6):
        m = Matcher(cg)
        ids: list[int] = []
        for _step in range(200):
            allowed = [t for t in _allowed(m, llama3_vocab.n_vocab).tolist() if t not in eos]
            if m.is_accepting() and (not allowed or rng.random() < 0.1):
                break
            assert allowed, llama3_vocab.decode(ids)
            t = rng.choice(allowed)
            assert m.advance(t)
            ids.append(t)
        if m.is_accepting():
            finished += 1
            value = json.loads(llama3_vocab.decode(ids), object_pairs_hook=_no_repeats)
            jsonschema.validate(value, schema)
    assert finished >= 1


def test_compiled_and_python_parsers_give_the_same_masks(llama3_vocab, monkeypatch):
    schema = GROUPS[1]["schema"]
    text = '{"k03": 1, "id": "x", "k01": 2, "kind": "a", "k02": 3}'
    masks = []
    for native in ("1", "0"):
        monkeypatch.setenv("SGL_NATIVE", native)
        cg = CompiledGrammar(json_schema_grammar(schema, track_keys=True), llama3_vocab)
        m, seen = Matcher(cg), []
        for t in llama3_vocab.encode(text):
            seen.append(_allowed(m, llama3_vocab.n_vocab))
            assert m.advance(t)
        masks.append(seen)
    assert all(np.array_equal(a, b) for a, b in zip(*masks, strict=True))


def test_big_objects_stay_small_grammars():
    """Rules grow with the members, not 2^members (before: plans that kept schema order)."""
    for n in (20, 80):
        cg = _compile({"type": "object", "properties": {f"p{i}": INT for i in range(n)}})
        assert len(cg.grammar.rules) < 10 * n
        assert cg.grammar.unique_keys is not None


def test_a_grammar_for_elsewhere_keeps_the_set_of_used_keys():
    """Without ``track_keys`` (e.g. a grammar embedded in another) nothing is left to the
    parser: the grammar itself never repeats a key."""
    g = json_schema_grammar({"type": "object", "properties": {n: INT for n in NAMES}})
    assert g.unique_keys is None
    cg = CompiledGrammar(g)
    assert cg.accepts_text('{"n3": 1, "n0": 1}') and not cg.accepts_text('{"n3": 1, "n0": 1, "n3": 1}')


@pytest.mark.parametrize("prefix", [
    '{"n0": 1, "n1": 1, "n2": 1, "n3": 1',  # every key used
    '{"n3": 1, "n0": 1, "n2": 1, "n1": 1',
])
def test_no_comma_once_every_key_is_used(llama3_vocab, prefix):
    """After the last unused key a ``,`` could only dead-end (the grammar lets the
    members loop, the parser refuses them all): not offered, ``}`` is."""
    schema = WALKS[0]
    cg = _compile(schema, llama3_vocab, whitespace="compact")
    m = Matcher(cg)
    assert all(m.advance(t) for t in llama3_vocab.encode(prefix))
    offered = {llama3_vocab.decode([t]) for t in _allowed(m, llama3_vocab.n_vocab).tolist()}
    assert b"}" in offered and not any(b"," in t for t in offered), offered
    nested = {"type": "object", "properties": {"x": schema, "y": INT}, "additionalProperties": False}
    cg = _compile(nested, llama3_vocab, whitespace="compact")
    m = Matcher(cg)
    assert all(m.advance(t) for t in llama3_vocab.encode('{"y": 1, "x": ' + prefix))
    offered = {llama3_vocab.decode([t]) for t in _allowed(m, llama3_vocab.n_vocab).tolist()}
    assert b"}" in offered and not any(b"," in t for t in offered), offered
    assert all(m.advance(t) for t in llama3_vocab.encode("}"))  # the outer object: "x" is used, "y" too
    offered = {llama3_vocab.decode([t]) for t in _allowed(m, llama3_vocab.n_vocab).tolist()}
    assert b"}" in offered and not any(b"," in t for t in offered), offered


REQUIRED_MIX = {
    "type": "object",
    "properties": {"a": INT, "b": STR, "c": BOOL, "d": INT, "e": STR},
    "required": ["d", "a", "c"],
    "minProperties": 4,
}


def test_counted_required_members_give_the_masks_of_the_set_of_used_keys(llama3_vocab):
    """With ``track_keys`` the grammar counts the required members read (the parser
    refuses a repeat); without it the grammar tracks the set of used keys. Same
    language, so the same masks at every step of random walks."""
    tracked = CompiledGrammar(json_schema_grammar(REQUIRED_MIX, track_keys=True, whitespace="compact"),
                              llama3_vocab)
    plain = CompiledGrammar(json_schema_grammar(REQUIRED_MIX, whitespace="compact"), llama3_vocab)
    eos = set(llama3_vocab.eos_token_ids)
    rng = random.Random(7)
    for _ in range(6):
        mt, mp = Matcher(tracked), Matcher(plain)
        for _step in range(60):
            a, b = _allowed(mt, llama3_vocab.n_vocab), _allowed(mp, llama3_vocab.n_vocab)
            assert np.array_equal(a, b)
            choices = [t for t in a.tolist() if t not in eos]
            if not choices or (mt.is_accepting() and rng.random() < 0.2):
                break
            t = rng.choice(choices)
            assert mt.advance(t) and mp.advance(t)


def test_many_required_members_any_order_linear_rules():
    """30 required members: any order accepted (a set of used keys would need 2^30
    states; schema order was the fallback), rules linear in the members."""
    names = [f"r{i:02d}" for i in range(30)]
    schema = {"type": "object", "properties": {n: INT for n in names}, "required": names,
              "additionalProperties": False}
    cg = _compile(schema)
    assert len(cg.grammar.rules) < 10 * len(names)
    rng = random.Random(3)
    order = names[:]
    rng.shuffle(order)
    assert cg.accepts_text(json.dumps(_obj(order)))
    assert not cg.accepts_text(json.dumps(_obj(order[:-1])))
    assert not cg.accepts_text(json.dumps(_obj(order))[:-1] + ', "r00": 1}')
