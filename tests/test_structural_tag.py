"""Structural tags (sgl.constrain.structural_tag): free text with constrained tagged segments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sgl.constrain import ConstraintError, Matcher, compile_grammar
from sgl.constrain.structural_tag import parse_structural_tag

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}

LEGACY = {"type": "structural_tag", "triggers": ["<function="], "structures": [
    {"begin": "<function=get_weather>", "schema": WEATHER, "end": "</function>"},
    {"begin": "<function=add>", "schema": ADD, "end": "</function>"}]}


def triggered(**flags):
    """The same tags in XGrammar's ``triggered_tags`` spelling."""
    tags = [{"begin": s["begin"], "content": {"type": "json_schema", "json_schema": s["schema"]}, "end": s["end"]}
            for s in LEGACY["structures"]]
    return {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<function="], "tags": tags} | flags}


def compiled(tag, vocab=None):
    return compile_grammar(json.dumps(tag), vocab, syntax="structural_tag")


CALL = '<function=get_weather>{"city": "Paris"}</function>'


@pytest.mark.parametrize("tag", [LEGACY, triggered()], ids=["sglang", "xgrammar"])
@pytest.mark.parametrize("text, ok", [
    ("", True),
    ("Just text, with < and <function but no trigger.", True),
    (f"Let me look. {CALL} Done.", True),
    (CALL, True),
    ('<function=add>{"a": 1}</function><function=add>{"a": 2}</function>', True),
    ('x <function=get_weather>{"town": "Paris"}</function>', False),  # key the strict schema forbids
    ("x <function=nope>{}</function>", False),  # a trigger must open a declared tag
    ('x <function=get_weather>{"city": "Paris"}', False),  # unclosed
    ("x <function=", False),
])
def test_text_and_tags(tag, text, ok):
    assert compiled(tag).accepts_text(text) is ok


@pytest.mark.parametrize("flags, text, ok", [
    ({"at_least_one": True}, "no call", False),
    ({"at_least_one": True}, f"a call: {CALL} after", False),  # XGrammar: the output opens with a tag
    ({"at_least_one": True}, f"{CALL} after {CALL}", True),
    ({"stop_after_first": True}, f"{CALL} more text", False),
    ({"stop_after_first": True}, f"before {CALL}", True),
    ({"stop_after_first": True}, "no call at all", True),
    ({"at_least_one": True, "stop_after_first": True}, "text only", False),
    ({"at_least_one": True, "stop_after_first": True}, CALL, True),
    ({"at_least_one": True, "stop_after_first": True}, f"x {CALL}", False),
])
def test_xgrammar_flags(flags, text, ok):
    assert compiled(triggered(**flags)).accepts_text(text) is ok


@pytest.mark.parametrize("content, good, bad", [
    ({"type": "regex", "pattern": r"\d+"}, "<n>42</n>", "<n>4x</n>"),
    ({"type": "const_string", "value": "yes"}, "<n>yes</n>", "<n>no</n>"),
    ({"type": "any_text"}, "<n>any < text</n>", "<n>a</n>b</n>"),  # any_text ends at the first end
])
def test_content_kinds(content, good, bad):
    tag = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<n>"], "at_least_one": True,
                                                "stop_after_first": True,
                                                "tags": [{"begin": "<n>", "content": content, "end": "</n>"}]}}
    g = compiled(tag)
    assert g.accepts_text(good) and not g.accepts_text(bad)


def test_overlapping_triggers():
    """A trigger that starts another: the shorter one, written first, opens the tag."""
    tag = LEGACY | {"triggers": ["<f", "<function="]}
    g = compiled(tag)
    assert g.accepts_text(f"say {CALL} then") and g.accepts_text(f"<f{CALL[2:]}")
    assert not g.accepts_text("say <fun") and g.accepts_text("say <g")


def test_single_tag_format_is_the_whole_output():
    g = compiled({"type": "structural_tag", "format": {"type": "tag", "begin": "<x>", "end": "</x>",
                                                       "content": {"type": "json_schema", "json_schema": ADD}}})
    assert g.accepts_text('<x>{"a": 3}</x>')
    assert not g.accepts_text('text <x>{"a": 3}</x>') and not g.accepts_text("")


@pytest.mark.parametrize("tag, needle", [
    ({"type": "structural_tag", "structures": [], "triggers": ["<f"]}, "structures must be a non-empty list"),
    (LEGACY | {"triggers": []}, "triggers must be a non-empty list"),
    (LEGACY | {"triggers": ["<tool>"]}, "does not start with a trigger"),
    ({"type": "structural_tag", "triggers": ["<f"], "structures": [{"begin": "<f>", "end": "</f>"}]}, "needs a schema"),
    ({"type": "regex"}, "type must be 'structural_tag'"),
    ({"type": "structural_tag", "format": {"type": "sequence"}}, "format type 'sequence' is not supported"),
    ({"type": "structural_tag", "triggers": ["<f"], "structures": [{"begin": "<f>", "schema": {"type": "nope"}}]},
     "tag 0:"),
])
def test_malformed_tags_are_constraint_errors(tag, needle):
    with pytest.raises(ConstraintError, match=needle):
        compiled(tag)


def test_both_spellings_parse_to_one_form():
    a, b = parse_structural_tag(LEGACY), parse_structural_tag(json.dumps(triggered()))
    assert a == b and a.free_text and not a.at_least_one


def test_token_masks_follow_the_tags(llama3_vocab):
    """With a real vocabulary: the tokens of a valid text are allowed step by step, and
    once a trigger is written, only the declared tags can go on."""
    g = compiled(LEGACY, llama3_vocab)
    m = Matcher(g)
    for token in llama3_vocab.encode(f"Sure. {CALL} Bye."):
        assert m.is_allowed(token)
        assert m.advance(token)
    assert m.is_accepting()
    m = Matcher(g)
    for token in llama3_vocab.encode("Calling <function="):
        assert m.advance(token)
    words = m.allowed_words()
    allowed = np.nonzero(np.unpackbits(words.view(np.uint8), bitorder="little"))[0]
    texts = {llama3_vocab.token_bytes[t] for t in allowed if t < llama3_vocab.n_vocab}
    assert texts and all(t and (b"get_weather>".startswith(t) or b"add>".startswith(t)) for t in texts), texts
