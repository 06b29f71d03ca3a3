"""JSON-Schema-Test-Suite-style cases for combinations the official suite leaves out
(issue 9 part 4, issue 15): ``oneOf``/``anyOf`` branches that hold only ``required`` (or
only some keywords) next to the parent's ``properties``, ``not: {required: [...]}``
inside a ``$ref``'d definition, ``oneOf`` whose branches overlap, keys written in
another order than the schema's, and objects that must never repeat a key.

Every label is checked against ``jsonschema`` first (so a wrong label fails loudly);
then every instance is decided on bytes, in both key-order modes, and token by token
through the Llama-3 tokenizer.
"""

from __future__ import annotations

import json
import warnings

import jsonschema
import pytest

from sgl.constrain import ConstraintError, Matcher, compile_json_schema

INT, STR, NULL = {"type": "integer"}, {"type": "string"}, {"type": "null"}

GROUPS = [
    {
        "description": "oneOf branches holding only required, next to the parent's closed properties",
        "schema": {
            "type": "object",
            "properties": {"a": INT, "b": STR, "c": NULL},
            "additionalProperties": False,
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
        },
        "tests": [
            ("first branch", {"a": 1}, True),
            ("second branch with an optional key", {"b": "x", "c": None}, True),
            ("optional key first", {"c": None, "b": "x"}, True),
            ("both branches", {"b": "x", "a": 1}, False),
            ("both branches, schema order", {"a": 1, "b": "x"}, False),
            ("neither branch", {"c": None}, False),
            ("parent's property schema still applies", {"a": "x"}, False),
            ("parent's additionalProperties still applies", {"a": 1, "d": 1}, False),
        ],
    },
    {
        "description": "required keys from allOf/oneOf branches, written in required order",
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "resultPath": {"type": "string", "minLength": 1},
                "deviceTags": {"type": "array", "items": STR},
                "start": {"type": "number"},
                "end": {"type": "number"},
                "duration": {"type": "number"},
                "aggregation": {"type": "string"},
            },
            "allOf": [
                {"required": ["resultPath", "aggregation"]},
                {"oneOf": [{"required": ["start", "end"]}, {"required": ["duration"]}]},
            ],
        },
        "tests": [
            ("required keys first", {"resultPath": "$", "aggregation": "avg", "start": 1, "end": 2}, True),
            ("then an optional one", {"aggregation": "avg", "resultPath": "$", "duration": 5, "deviceTags": []}, True),
            ("schema order", {"resultPath": "$", "start": 1, "end": 2, "aggregation": "avg"}, True),
            ("both oneOf branches", {"resultPath": "$", "aggregation": "avg", "start": 1, "end": 2, "duration": 3}, False),
            ("no oneOf branch", {"resultPath": "$", "aggregation": "avg"}, False),
            ("half a branch", {"resultPath": "$", "aggregation": "avg", "start": 1}, False),
            ("allOf's required missing", {"resultPath": "$", "duration": 1}, False),
        ],
    },
    {
        "description": "oneOf branches constraining only part of the parent object",
        "schema": {
            "type": "object",
            "properties": {"kind": {"enum": ["box", "tag"]}, "size": INT, "label": STR},
            "required": ["kind"],
            "oneOf": [
                {"properties": {"kind": {"const": "box"}}, "required": ["size"]},
                {"properties": {"kind": {"const": "tag"}}, "required": ["label"]},
            ],
        },
        "tests": [
            ("box", {"kind": "box", "size": 1}, True),
            ("box, keys reversed", {"size": 1, "kind": "box"}, True),
            ("tag, keys reversed", {"label": "x", "kind": "tag"}, True),
            ("box with a label too", {"kind": "box", "size": 1, "label": "x"}, True),
            ("box without a size", {"kind": "box", "label": "x"}, False),
            ("tag without a label", {"kind": "tag", "size": 1}, False),
            ("size of the wrong type", {"kind": "box", "size": "1"}, False),
        ],
    },
    {
        "description": "oneOf whose branches overlap",
        "schema": {
            "type": "object",
            "properties": {"a": INT, "b": INT},
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}, {"properties": {"a": {"minimum": 10}}}],
        },
        "tests": [
            ("only the first branch", {"a": 5}, True),
            ("first and third", {"a": 15}, False),
            ("only the third (a absent)", {}, True),
            ("second and third", {"b": 1}, False),
            ("first and second", {"a": 5, "b": 1}, False),
            ("first and second, reversed", {"b": 1, "a": 5}, False),
        ],
    },
    {
        "description": "not of required inside a $ref'd definition",
        "schema": {
            "$defs": {
                "noSecret": {"not": {"required": ["secret"]}},
                "user": {
                    "type": "object",
                    "properties": {"name": STR, "secret": STR},
                    "required": ["name"],
                    "allOf": [{"$ref": "#/$defs/noSecret"}],
                },
            },
            "type": "object",
            "properties": {"user": {"$ref": "#/$defs/user"}, "admin": {"type": "object", "properties": {"secret": STR}}},
        },
        "tests": [
            ("no secret", {"user": {"name": "x"}}, True),
            ("a secret", {"user": {"name": "x", "secret": "s"}}, False),
            ("a secret first", {"user": {"secret": "s", "name": "x"}}, False),
            ("other keys are fine", {"user": {"name": "x", "other": 1}}, True),
            ("the admin may have one", {"admin": {"secret": "s"}, "user": {"name": "y"}}, True),
        ],
    },
    {
        "description": "draft-07: not of required behind a $ref whose siblings are ignored",
        "schema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": {"noB": {"type": "object", "properties": {"a": INT}, "not": {"required": ["b"]}}},
            "properties": {"x": {"$ref": "#/definitions/noB", "required": ["zzz"]}},
        },
        "tests": [
            ("sibling required is ignored", {"x": {"a": 1}}, True),
            ("b present", {"x": {"a": 1, "b": 2}}, False),
            ("b first", {"x": {"b": 2, "a": 1}}, False),
        ],
    },
    {
        "description": "not of a two-name required",
        "schema": {"type": "object", "properties": {"a": INT, "b": STR}, "not": {"required": ["a", "b"]}},
        "tests": [
            ("one of them", {"a": 1}, True),
            ("both", {"b": "x", "a": 1}, False),
            ("none", {}, True),
        ],
    },
    {
        "description": "oneOf of required and not-required (exactly one must hold)",
        "schema": {"type": "object", "properties": {"a": INT, "b": STR}, "oneOf": [{"required": ["a"]}, {"not": {"required": ["b"]}}]},
        "tests": [
            ("a without b: both branches", {"a": 1}, False),
            ("a and b", {"a": 1, "b": "x"}, True),
            ("b and a", {"b": "x", "a": 1}, True),
            ("nothing", {}, True),
            ("only b", {"b": "x"}, False),
        ],
    },
    {
        "description": "anyOf branches narrowing the parent's property type",
        "schema": {
            "type": "object",
            "properties": {"a": {"type": ["integer", "string"]}, "b": INT},
            "anyOf": [
                {"properties": {"a": INT}, "required": ["a"]},
                {"properties": {"a": STR}, "required": ["b"]},
            ],
        },
        "tests": [
            ("integer a", {"a": 1}, True),
            ("string a alone", {"a": "x"}, False),
            ("string a with b", {"a": "x", "b": 1}, True),
            ("string a after b", {"b": 1, "a": "x"}, True),
            ("b alone", {"b": 1}, True),
            ("null a", {"a": None, "b": 1}, False),
        ],
    },
    {
        "description": "if/then/else on required",
        "schema": {
            "type": "object",
            "properties": {"a": INT, "b": STR},
            "if": {"required": ["a"]},
            "then": {"required": ["b"]},
            "else": {"not": {"required": ["b"]}},
        },
        "tests": [
            ("a and b", {"a": 1, "b": "x"}, True),
            ("b and a", {"b": "x", "a": 1}, True),
            ("a alone", {"a": 1}, False),
            ("nothing", {}, True),
            ("b alone", {"b": "x"}, False),
        ],
    },
]

IDS = [g["description"] for g in GROUPS]


def _compile(schema, vocab=None, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_json_schema(schema, vocab, **options)


@pytest.mark.parametrize("group", GROUPS, ids=IDS)
def test_labels_agree_with_jsonschema(group):
    cls = jsonschema.validators.validator_for(group["schema"])
    v = cls(group["schema"])
    for description, data, valid in group["tests"]:
        assert v.is_valid(data) == valid, (group["description"], description)


@pytest.mark.parametrize("any_order", [False, True])
@pytest.mark.parametrize("group", GROUPS, ids=IDS)
def test_every_instance_is_decided_exactly(group, any_order):
    cg = _compile(group["schema"], any_order=any_order)
    for description, data, valid in group["tests"]:
        assert cg.accepts_text(json.dumps(data)) == valid, (group["description"], description)


def test_token_by_token(llama3_vocab):
    for group in GROUPS:
        cg = _compile(group["schema"], llama3_vocab)
        for description, data, valid in group["tests"]:
            m = Matcher(cg)
            ok = all(m.advance(t) for t in llama3_vocab.encode(json.dumps(data))) and m.is_accepting()
            assert ok == valid, (group["description"], description)


# ---------------------------------------------------------------------------
# an object never repeats a key (issue 15)

_PROPS = {"a": INT, "b": STR, "c": {"type": "boolean"}}
_DUPLICATES = ['{"a": 1, "a": 2}', '{"b": "x", "a": 1, "a": 2}', '{"a": 1, "b": "x", "a": 2}', '{"c": true, "b": "x", "c": false}']
_OBJECT_SHAPES = {
    "open": {"type": "object", "properties": _PROPS},
    "required b": {"type": "object", "properties": _PROPS, "required": ["b"]},
    "closed": {"type": "object", "properties": _PROPS, "additionalProperties": False},
    "additional schema": {"type": "object", "properties": _PROPS, "additionalProperties": INT},
    "patternProperties": {"type": "object", "properties": _PROPS, "patternProperties": {"^[a-c]$": {}, "^x": INT}},
    "maxProperties": {"type": "object", "properties": _PROPS, "maxProperties": 3},
    "oneOf required": {"type": "object", "properties": _PROPS, "oneOf": [{"required": ["a"]}, {"required": ["c"]}]},
}


@pytest.mark.parametrize("any_order", [False, True])
@pytest.mark.parametrize("shape", sorted(_OBJECT_SHAPES))
def test_a_declared_key_never_comes_twice(shape, any_order):
    cg = _compile(_OBJECT_SHAPES[shape], any_order=any_order)
    for text in _DUPLICATES:
        assert not cg.accepts_text(text), (shape, text)
    assert cg.accepts_text('{"c": true, "b": "x", "a": 1}') or shape == "oneOf required"


@pytest.mark.parametrize("any_order", [False, True])
def test_many_properties_never_repeat_either(any_order):
    """30 members, 5 required: every order of them (optional keys loop in the grammar,
    the parser refuses a repeated key), and no key twice."""
    props = {f"p{i:02d}": INT for i in range(30)}
    schema = {"type": "object", "properties": props, "required": ["p00", "p05", "p10", "p20", "p29"]}
    w: list = []
    cg = compile_json_schema(schema, None, any_order=any_order, warnings=w)
    assert not any("too many" in x for x in w)
    required = '"p00": 0, "p05": 5, "p10": 10, "p20": 20, "p29": 29'
    assert cg.accepts_text("{" + required + "}")
    assert cg.accepts_text("{" + ", ".join(f'"p{i:02d}": {i}' for i in reversed(range(30))) + "}")
    assert not cg.accepts_text("{" + ", ".join(f'"p{i:02d}": {i}' for i in reversed(range(30))) + ', "p07": 7}')
    assert cg.accepts_text('{"p03": 3, ' + required + ', "p04": 4}')  # optional ones late
    assert not cg.accepts_text("{" + required + ', "p03": 3, "p03": 4}')
    assert not cg.accepts_text('{"p03": 3, ' + required + ', "p03": 4}')
    assert not cg.accepts_text('{"p00": 0, ' + required + "}")


def test_pydantic_model_never_writes_a_key_twice(llama3_vocab):
    pydantic = pytest.importorskip("pydantic", reason="pydantic is not installed")

    class Item(pydantic.BaseModel):
        name: str
        price: float | None = None
        tags: list[str] = []

    cg = _compile(Item.model_json_schema(), llama3_vocab)

    def accepts(text: str) -> bool:
        m = Matcher(cg)
        return all(m.advance(t) for t in llama3_vocab.encode(text)) and m.is_accepting()

    assert accepts(json.dumps({"name": "x", "price": 1.5, "tags": ["a"]}))
    assert accepts(json.dumps({"tags": [], "name": "x"}))
    assert not accepts('{"name": "x", "price": 1.5, "price": 2.5}')
    assert not accepts('{"name": "x", "tags": [], "price": 1.0, "tags": []}')


# ---------------------------------------------------------------------------
# fewer refusals: format "regex", uniqueItems relaxed by name


def test_format_regex_is_ecma_syntax_up_to_a_nesting_depth():
    w: list = []
    cg = compile_json_schema({"type": "string", "format": "regex"}, None, warnings=w)
    for good in ["^[a-z]+$", r"^\d{4}-\d{2}$", "(?<n>a)\\k<n>", "(?<=a+)b", "[^]", r"\cA", r"^https?\:\/\/", "x|"]:
        assert cg.accepts_text(json.dumps(good)), good
    for bad in ["(unclosed", "a)b", r"\a", "(?i)abc", "(?P<n>x)", "*a", "a**"]:
        assert not cg.accepts_text(json.dumps(bad)), bad
    # deeper than the depth followed: accepted whatever is inside (the over-approximation)
    assert cg.accepts_text(json.dumps("((((a(b))))"))
    assert any("format 'regex'" in x and "/format" in x for x in w)


def test_lenient_can_name_the_keywords_it_relaxes():
    schema = {"type": "array", "items": {"type": "object"}, "uniqueItems": True}
    with pytest.raises(ConstraintError) as e:
        compile_json_schema(schema, None)
    assert e.value.keyword == "uniqueItems"
    w: list = []
    with pytest.warns(UserWarning, match="uniqueItems"):
        cg = compile_json_schema(schema, None, lenient=["uniqueItems"], warnings=w)
    assert cg.accepts_text("[{}, {}]") and any("uniqueItems" in x for x in w)
    # other refusals stay refusals
    with pytest.raises(ConstraintError) as e:
        compile_json_schema({**schema, "not": {"multipleOf": 3}}, None, lenient=["uniqueItems"])
    assert e.value.keyword == "not"
    with pytest.raises(ConstraintError):
        compile_json_schema(schema, None, lenient="uniqueItems")


def test_other_keys_may_extend_declared_names_however_many():
    """Other keys are "any string but a declared name", exactly, even when the declared
    names make a large trie (it used to be cut, refusing keys that share a long prefix
    with a declared one: MaskBench o30911's "builtin ")."""
    words = ["cert", "client", "header", "issuer", "subject", "serial", "digest", "session"]
    names = [a + b + c for a in words for b in words for c in words[:2]]  # 128 names, ~700 trie nodes
    cg = _compile({"type": "object", "properties": {n: INT for n in names}})
    assert cg.accepts_text(json.dumps({names[0] + " ": "x", names[5]: 1, "certclient": [], "": None}))
    assert cg.accepts_text(json.dumps({names[0][:-1] + "é": "x", names[7] + "\n": "x"}))
    assert not cg.accepts_text(json.dumps({names[0]: "x"}))  # a declared name takes its own schema
    assert not cg.accepts_text(f'{{"{names[3]}": 1, "{names[3]}": 2}}')
