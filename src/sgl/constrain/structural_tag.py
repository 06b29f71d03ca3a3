"""Structural tags: free text in which tagged segments are constrained.

A structural tag (SGLang's and vLLM's ``structural_tag``, after XGrammar) says: the
output is free text until one of the ``triggers`` appears; a trigger opens one of the
tags whose ``begin`` starts with it; the tag's content is constrained (a JSON Schema,
a regex, a fixed string or any text) and closed by its ``end``; then free text again.
Two spellings are read:

* SGLang's / vLLM's original one::

    {"type": "structural_tag", "triggers": ["<function="],
     "structures": [{"begin": "<function=f>", "schema": {...}, "end": "</function>"}]}

* XGrammar's ``triggered_tags`` format (vLLM's newer one)::

    {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [...],
     "tags": [{"begin": ..., "content": {"type": "json_schema", "json_schema": {...}},
               "end": ...}], "at_least_one": false, "stop_after_first": false}}

  (``content`` types: ``json_schema``, ``regex`` (``pattern``), ``const_string``
  (``value``), ``any_text``; a ``"format"`` may also be one ``"tag"``: the whole output).
  As in XGrammar, ``at_least_one`` means the output opens with a tag, and
  ``stop_after_first`` that it ends with the first tag.

``structural_tag_grammar`` lowers a tag to the grammar IR. The lexer is greedy, so free
text cannot be one lexeme that a trigger then follows (the text lexeme would read the
trigger too): the text before a trigger and the trigger itself are one lexeme,
``(text without any trigger) + trigger``, which cannot go on once the trigger is read;
the text after the last tag is a lexeme that contains no trigger. Each tag's content
grammar (from the JSON Schema or regex frontend) is embedded under its own names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .automata.derivatives import ANY_CHAR, ANY_STRING, materialize, mk_and, mk_not, mk_seq
from .errors import ConstraintError
from .grammar import Grammar, GrammarBuilder, Terminal
from .regex_ast import Node, alt, literal

MAX_TRIGGERS = 64
MAX_TAGS = 512
_TEXT_STATES = 4000  # derivative-DFA states of the free-text lexemes
_TEXT_SIZE = 200_000  # their regex size


@dataclass(frozen=True)
class Tag:
    """One tag: the text that opens it, its content constraint, the text that closes it."""

    begin: str
    content: dict[str, Any]  # {"type": "json_schema" | "regex" | "const_string" | "any_text", ...}
    end: str


@dataclass(frozen=True)
class TriggeredTags:
    """A structural tag in one normal form (both request spellings lower to it)."""

    triggers: tuple[str, ...]
    tags: tuple[Tag, ...]
    at_least_one: bool = False  # the output opens with a tag (XGrammar's reading)
    stop_after_first: bool = False  # the output ends with the first tag
    free_text: bool = True  # text may come before, between and after the tags


def parse_structural_tag(value: Any) -> TriggeredTags:
    """Read a structural tag (a dict or its JSON text) in either spelling; a malformed
    one is a ``ConstraintError`` naming the field."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"structural tag is not valid JSON: {e.msg}", f"line {e.lineno}, column {e.colno}") from None
    if not isinstance(value, dict):
        raise ConstraintError(f"a structural tag must be an object, not {type(value).__name__}")
    kind = value.get("type", "structural_tag")
    if kind != "structural_tag":
        raise ConstraintError(f"structural tag type must be 'structural_tag', not {kind!r}", "type")
    if "format" in value:
        return _from_format(value["format"])
    structures = _list(value.get("structures"), "structures")
    tags = []
    for i, s in enumerate(structures):
        if not isinstance(s, dict):
            raise ConstraintError("a structure must be an object", f"structures.{i}")
        schema = s.get("schema", s.get("json_schema"))
        if schema is None:
            raise ConstraintError("a structure needs a schema", f"structures.{i}.schema")
        tags.append(Tag(_text(s.get("begin"), f"structures.{i}.begin"), {"type": "json_schema", "json_schema": schema},
                        _text(s.get("end", ""), f"structures.{i}.end", empty_ok=True)))
    triggers = value.get("triggers")
    return _checked(tuple(_text(t, f"triggers.{i}") for i, t in enumerate(_list(triggers, "triggers"))), tuple(tags),
                    False, False)


def _from_format(fmt: Any) -> TriggeredTags:
    if not isinstance(fmt, dict):
        raise ConstraintError("format must be an object", "format")
    kind = fmt.get("type")
    if kind == "tag":  # one tag, the whole output: its begin is its own trigger
        tag = _tag(fmt, "format")
        return _checked((tag.begin,), (tag,), True, True, free_text=False)
    if kind != "triggered_tags":
        raise ConstraintError(f"format type {kind!r} is not supported (use 'triggered_tags' or 'tag')", "format.type")
    tags = tuple(_tag(t, f"format.tags.{i}") for i, t in enumerate(_list(fmt.get("tags"), "format.tags")))
    triggers = tuple(_text(t, f"format.triggers.{i}") for i, t in enumerate(_list(fmt.get("triggers"), "format.triggers")))
    flags = []
    for name in ("at_least_one", "stop_after_first"):
        flag = fmt.get(name, False)
        if not isinstance(flag, bool):
            raise ConstraintError(f"{name} must be true or false", f"format.{name}")
        flags.append(flag)
    return _checked(triggers, tags, *flags)


def _tag(value: Any, where: str) -> Tag:
    if not isinstance(value, dict):
        raise ConstraintError("a tag must be an object", where)
    content = value.get("content", {"type": "any_text"})
    if not isinstance(content, dict) or content.get("type") not in ("json_schema", "regex", "const_string", "any_text"):
        raise ConstraintError("content must be an object of type json_schema, regex, const_string or any_text",
                              f"{where}.content")
    return Tag(_text(value.get("begin"), f"{where}.begin"), content, _text(value.get("end", ""), f"{where}.end", empty_ok=True))


def _checked(triggers: tuple[str, ...], tags: tuple[Tag, ...], at_least_one: bool, stop_after_first: bool,
             free_text: bool = True) -> TriggeredTags:
    if not triggers or len(triggers) > MAX_TRIGGERS:
        raise ConstraintError(f"give 1 to {MAX_TRIGGERS} triggers", "triggers")
    if not tags or len(tags) > MAX_TAGS:
        raise ConstraintError(f"give 1 to {MAX_TAGS} tags", "tags")
    for i, tag in enumerate(tags):
        if not any(tag.begin.startswith(t) for t in triggers):
            raise ConstraintError(f"tag begin {tag.begin!r} does not start with a trigger", f"tags.{i}.begin")
    return TriggeredTags(triggers, tags, at_least_one, stop_after_first, free_text)


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise ConstraintError(f"{where} must be a non-empty list", where)
    return value


def _text(value: Any, where: str, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise ConstraintError(f"{where} must be a {'' if empty_ok else 'non-empty '}string", where)
    return value


# --- lowering ------------------------------------------------------------------------------
def structural_tag_grammar(text: Any, start: str = "start") -> Grammar:
    """The grammar IR of a structural tag (a dict or its JSON text); ``start`` names its
    start rule."""
    spec = parse_structural_tag(text)
    b = GrammarBuilder()
    any_trigger = alt(*(literal(t) for t in spec.triggers))
    early = mk_seq(ANY_STRING, any_trigger, ANY_CHAR, ANY_STRING)  # a trigger with text after it
    bare, after_text = b.fresh("tag"), b.fresh("text_tag")  # a tag right here; free text, then a tag
    upto: dict[str, str] = {}  # trigger -> the lexeme "free text, then this trigger" (built once)
    for i, tag in enumerate(spec.tags):
        # the shortest trigger: in free text, it is the first one to appear
        trigger = min((t for t in spec.triggers if tag.begin.startswith(t)), key=len)
        body = _tag_body(b, tag, trigger, i)
        b.rule(bare, [b.literal(trigger), *body])
        if spec.free_text:
            if trigger not in upto:
                upto[trigger] = b.terminal(_plain(mk_and(mk_seq(ANY_STRING, literal(trigger)), mk_not(early))),
                                           "upto_trigger")
            b.rule(after_text, [upto[trigger], *body])
    ends: list[list[str]] = [[]]  # what may follow the tags: nothing, or free text without a trigger
    if spec.free_text:
        nonempty = mk_seq(ANY_CHAR, ANY_STRING)
        ends.append([b.terminal(_plain(mk_and(nonempty, mk_not(mk_seq(ANY_STRING, any_trigger, ANY_STRING)))), "text")])
    # XGrammar's reading of at_least_one: the output opens with a tag
    first = bare if spec.at_least_one or not spec.free_text else after_text
    if spec.stop_after_first:
        b.rule(start, [first])
    else:
        many = b.fresh("tags")
        b.rule(many, [first])
        if spec.free_text:
            b.rule(many, [many, after_text])
        for end in ends:
            b.rule(start, [many, *end])
    if not spec.at_least_one:
        for end in ends:
            b.rule(start, end)
    return b.build(start, source="structural tag")


def _plain(expr: Any) -> Node:
    return materialize(expr, max_states=_TEXT_STATES, max_size=_TEXT_SIZE)


def _tag_body(b: GrammarBuilder, tag: Tag, trigger: str, index: int) -> list[str]:
    """The symbols after the trigger: the rest of ``begin``, the content, ``end``."""
    out = [b.literal(tag.begin[len(trigger):])] if len(tag.begin) > len(trigger) else []
    content = tag.content
    kind = content["type"]
    if kind == "any_text":  # up to the first occurrence of end (end included)
        if not tag.end:
            raise ConstraintError("any_text content needs an end", f"tags.{index}.end")
        end = literal(tag.end)
        early_end = mk_seq(ANY_STRING, end, ANY_CHAR, ANY_STRING)
        return [*out, b.terminal(_plain(mk_and(mk_seq(ANY_STRING, end), mk_not(early_end))), "any_text")]
    if kind == "const_string":
        out.append(b.literal(_text(content.get("value"), f"tags.{index}.content.value")))
    else:
        out.append(_embed(b, _content_grammar(content, index), f"tag{index}"))
    if tag.end:
        out.append(b.literal(tag.end))
    return out


def _content_grammar(content: dict[str, Any], index: int) -> Grammar:
    if content["type"] == "regex":
        from .regex import regex_grammar

        return regex_grammar(_text(content.get("pattern"), f"tags.{index}.content.pattern"))
    from .api import _load_schema, schema_of
    from .json_schema import json_schema_grammar

    schema = content.get("json_schema", content.get("schema"))
    if schema is None:
        raise ConstraintError("json_schema content needs a json_schema", f"tags.{index}.content.json_schema")
    try:
        return json_schema_grammar(_load_schema(schema_of(schema)))
    except ConstraintError as e:
        raise ConstraintError(f"tag {index}: {e}", e.location) from None


def _embed(b: GrammarBuilder, g: Grammar, prefix: str) -> str:
    """Copy ``g``'s rules and terminals into ``b`` under names starting with ``prefix``;
    the name of its start symbol there."""
    if g.ignore:
        raise ConstraintError("a tag's content grammar may not ignore terminals (e.g. %ignore)")
    names = {name: f"{prefix}:{name}" for name in [*g.terminals, *(r.lhs for r in g.rules)]}
    for name, t in g.terminals.items():
        b.terminals[names[name]] = Terminal(names[name], t.pattern, t.literal)
    for r in g.rules:
        b.rule(names[r.lhs], [names[s] for s in r.rhs], r.weight)
    return names[g.start]


__all__ = ["Tag", "TriggeredTags", "parse_structural_tag", "structural_tag_grammar"]
