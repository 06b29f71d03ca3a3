"""JSON Schema (draft 2020-12 and draft-07 spellings) -> grammar IR.

``json_schema_grammar(schema)`` returns a ``Grammar`` whose language is the JSON
texts valid against the schema (with a bounded-whitespace layout). How:

1. Every (sub)schema becomes ``Facets``: the set of values it allows, split by JSON
   type. Scalars are exact sets (number intervals, a string-language expression,
   booleans, null); arrays and objects are lists of ``ArraySpec``/``ObjectSpec``
   whose element/property schemas stay *references* (``Sub``/``SAnd``/``SNot``), so
   recursive ``$ref``\\ s become recursive nonterminals. ``allOf`` intersects facets,
   ``anyOf`` unites them, ``not`` complements them (where the complement is
   expressible), ``oneOf`` is a union when the branches are disjoint (else
   ``A∧¬B ∨ ¬A∧B``), ``if``/``then``/``else`` is ``(if∧then) ∨ (¬if∧else)``.
2. Facets become rules: one lexeme per scalar set (a whole JSON string, quotes
   included, with pattern/format/length/enum folded in; a number with its bounds
   encoded exactly, see ``numeric_range``), literal lexemes for keys, and punctuation
   lexemes with the bounded whitespace merged in.

Greedy lexing is exact by construction: a number is never followed by a lexeme that
starts with a digit, ``.``, ``e`` or a sign; a string lexeme ends at its closing quote;
whitespace is merged only *after* ``{ [ , :`` and *before* ``} ] , :``.

A keyword that cannot be honoured raises ``ConstraintError(message, location=<JSON
pointer>, keyword=...)``; with ``lenient=True`` the keyword is dropped instead (the
output may then violate it) and a warning is recorded (``warnings`` list, and
``warnings.warn``); ``lenient={"uniqueItems", ...}`` does so for the named keywords
only. Never silently ignored. Unknown keywords and unknown ``format``
values are annotations and are ignored, as validators do.
"""

from __future__ import annotations

import gc
import json
import re
import time
import warnings as _warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from itertools import combinations
from urllib.parse import quote, unquote, urldefrag, urljoin

from .automaton import LiteralAlt
from .errors import CompileBudgetExceeded, ConstraintError, check_deadline
from .grammar import Grammar, GrammarBuilder, Terminal, prune
from .json_formats import (
    ANY_CHAR as _ANY_CHAR,
)
from .json_formats import (
    ANY_STRING,
    APPROXIMATE_FORMATS,
    derivative,
    format_node,
    json_string_node,
    literal_string,
    mk_alt,
    mk_and,
    mk_not,
    nullable,
    pattern_node,
    string_set,
)
from .numeric_range import (
    NumPiece,
    complement_piece,
    intersect_pieces,
    number_regex,
    points_regex,
    to_decimal,
)
from .regex_ast import NOTHING, Alt, Chars, Node, Repeat, alt, chars, literal, repeat, seq

TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")
DEFAULT_BASE = "https://sgl.invalid/schema.json"
_PTR_SAFE = "/~!$&'()*+,;=:@"

# Budgets: compile in seconds on hostile inputs (CompileBudgetExceeded beyond).
MAX_SCHEMA_BYTES = 8_000_000
MAX_RULES = 400_000
MAX_SECONDS = 20.0
MAX_ANY_ORDER_RULES = 6_000  # object member-order rules per object with any_order=True
MAX_DEFAULT_ORDER_RULES = 2_000  # the same by default (see JsonSchemaCompiler._order_plan)
MAX_COUNT_STATES = 20_000  # unrolled minItems/maxItems/min/maxProperties states
MAX_PATTERN_PROPERTIES = 4  # key regions are 2**k
MAX_UNION = 64  # alternatives kept when intersecting unions
MAX_ONE_OF_EXACT = 64  # overlapping oneOf branches separated exactly (each minus all the others)
MAX_UNIQUE_VALUES = 8  # uniqueItems over a finite element set of at most this size
MAX_EXACT_NUMBER_POINTS = 64  # enum numbers spelled every way; beyond, plain spellings

SCALAR_KEYWORDS = frozenset(
    "type nullable minimum maximum exclusiveMinimum exclusiveMaximum multipleOf minLength "
    "maxLength pattern".split()
)
ANNOTATIONS = frozenset(
    "$schema $id $anchor $dynamicAnchor $comment $defs definitions $vocabulary title description "
    "default examples deprecated readOnly writeOnly contentMediaType contentEncoding "
    "contentSchema format".split()
)


# ---------------------------------------------------------------------------
# Schema references


class Sub:
    """A schema of the document: the JSON node, its base URI and its JSON pointer."""

    __slots__ = ("node", "base", "ptr", "uri")

    def __init__(self, node, base: str, ptr: str, uri: str = ""):
        self.node, self.base, self.ptr, self.uri = node, base, ptr, uri

    @property
    def key(self):
        return ("b", self.node) if isinstance(self.node, bool) else ("s", id(self.node))

    def __eq__(self, other):
        return isinstance(other, Sub) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return f"Sub({self.ptr or '#'})"


@dataclass(frozen=True)
class SAnd:
    items: tuple

    @property
    def key(self):
        return ("and",) + tuple(i.key for i in self.items)


@dataclass(frozen=True)
class SNot:
    item: object

    @property
    def key(self):
        return ("not", self.item.key)


TRUE = Sub(True, "", "")
FALSE = Sub(False, "", "")


def mk_sand(*refs):
    flat: dict = {}
    for r in refs:
        if isinstance(r, SAnd):
            for i in r.items:
                flat[i.key] = i
        elif isinstance(r, Sub) and r.node is True:
            continue
        elif isinstance(r, Sub) and r.node is False:
            return FALSE
        else:
            flat[r.key] = r
    items = [flat[k] for k in sorted(flat, key=repr)]
    if not items:
        return TRUE
    return items[0] if len(items) == 1 else SAnd(tuple(items))


def mk_snot(ref):
    if isinstance(ref, SNot):
        return ref.item
    if isinstance(ref, Sub) and isinstance(ref.node, bool):
        return FALSE if ref.node else TRUE
    return SNot(ref)


def is_true(ref) -> bool:
    return isinstance(ref, Sub) and ref.node is True


def is_false(ref) -> bool:
    return isinstance(ref, Sub) and ref.node is False


# ---------------------------------------------------------------------------
# Facets: the value set of a schema, by JSON type


@dataclass(frozen=True)
class Layer:
    """``properties`` + ``patternProperties`` + ``additionalProperties`` of one schema."""

    props: tuple = ()  # ((name, ref), ...) in schema order
    patterns: tuple = ()  # ((pattern, ref), ...)
    additional: object = TRUE

    def __post_init__(self):
        by_name: dict = {}
        for n, r in self.props:
            by_name.setdefault(n, []).append(r)
        object.__setattr__(self, "_by_name", by_name)

    def schema_for(self, name: str):
        refs = list(self._by_name.get(name, ()))
        refs += [r for p, r in self.patterns if _pattern_search(p, name)]
        return mk_sand(*refs) if refs else self.additional

    def trivial(self) -> bool:
        return (
            all(is_true(r) for _, r in self.props)
            and all(is_true(r) for _, r in self.patterns)
            and is_true(self.additional)
        )


@dataclass(frozen=True)
class ObjectSpec:
    layers: tuple = ()
    required: tuple = ()  # names, in order of appearance
    min_props: int = 0
    max_props: int | None = None
    names: tuple = ()  # propertyNames schemas (all must hold)

    def trivial(self) -> bool:
        return (
            all(la.trivial() for la in self.layers)
            and not self.required
            and self.min_props == 0
            and self.max_props is None
            and all(is_true(n) for n in self.names)
        )


@dataclass(frozen=True)
class ArraySpec:
    prefix: tuple = ()
    items: object = TRUE
    min_items: int = 0
    max_items: int | None = None
    contains: tuple = ()  # ((ref, min, max|None), ...)
    unique: bool = False

    def elem(self, i: int):
        return self.prefix[i] if i < len(self.prefix) else self.items

    def trivial(self) -> bool:
        return (
            all(is_true(p) for p in self.prefix)
            and is_true(self.items)
            and self.min_items == 0
            and self.max_items is None
            and not self.contains
            and not self.unique
        )


@dataclass
class Facets:
    null: bool = False
    bools: frozenset = frozenset()
    nums: tuple = ()  # NumPiece union
    strs: object = None  # decoded string-language expression, None = no strings
    arrays: tuple = ()  # ArraySpec union
    objects: tuple = ()  # ObjectSpec union
    values: tuple = ()  # concrete arrays/objects (from enum/const)

    def is_empty(self) -> bool:
        return (
            not self.null
            and not self.bools
            and not self.nums
            and (self.strs is None or self.strs == NOTHING)
            and not self.arrays
            and not self.objects
            and not self.values
        )


def any_facets() -> Facets:
    return Facets(True, frozenset({True, False}), (NumPiece(),), ANY_STRING, (ArraySpec(),), (ObjectSpec(),))


# ---------------------------------------------------------------------------
# Helpers


def _pattern_search(pattern: str, text: str) -> bool:
    try:
        return _compiled_pattern(pattern).search(text) is not None
    except re.error:
        return False


_PATTERN_CACHE: dict[str, re.Pattern] = {}


def _compiled_pattern(pattern: str) -> re.Pattern:
    got = _PATTERN_CACHE.get(pattern)
    if got is None:
        from .json_formats import _translate_ecma

        got = _PATTERN_CACHE[pattern] = re.compile(_translate_ecma(pattern))
    return got


def _is_int(x) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or (isinstance(x, float) and x.is_integer())


def _is_num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _json_type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    raise ConstraintError(f"not a JSON value: {v!r}")


def json_equal(a, b) -> bool:
    """JSON Schema equality: numbers by value, objects unordered, no bool/number mixing."""
    ta, tb = _json_type(a), _json_type(b)
    if ta != tb:
        return False
    if ta == "number":
        return to_decimal(a) == to_decimal(b)
    if ta == "array":
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta == "object":
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return a == b


def _ptr_escape(s: str) -> str:
    return s.replace("~", "~0").replace("/", "~1")


def _expr_matches(expr, text: str) -> bool:
    """Is the decoded string ``text`` in a string-language expression?"""
    e = expr
    for ch in text:
        e = derivative(e, ord(ch))
        if e == NOTHING:
            return False
    return nullable(e)


@dataclass
class Options:
    any_order: bool = False
    lenient: bool | frozenset = False  # True, or the keywords whose refusals become warnings
    whitespace: str = "flexible"
    max_whitespace: int = 8
    warnings: list | None = None


class _Refused(Exception):
    """Internal: a construct is refused; converted to ConstraintError or a warning."""


# ---------------------------------------------------------------------------
# The compiler


class JsonSchemaCompiler:
    """Compiles one schema document; see ``json_schema_grammar``."""

    def __init__(self, schema, opts: Options):
        self.opts = opts
        self.t0 = time.perf_counter()
        self.root = schema
        self.draft = self._draft(schema)
        self.resources: dict[str, tuple] = {}  # uri (no fragment) -> (node, ptr)
        self.anchors: dict[str, tuple] = {}  # uri#anchor -> (node, base, ptr)
        self.dynamic_anchors: dict[str, int] = {}
        self.base_of: dict[int, str] = {}
        self.ptr_of: dict[int, str] = {}
        root_base = DEFAULT_BASE
        if isinstance(schema, dict) and isinstance(schema.get("$id"), str):
            root_base = urldefrag(urljoin(DEFAULT_BASE, schema["$id"]))[0]
        self.root_base = root_base
        self.resources[DEFAULT_BASE] = (schema, "")
        self._scan(schema, root_base, "", root=True)
        self.facets_memo: dict = {}
        self.in_progress: set = set()
        self.b = GrammarBuilder()
        self.value_memo: dict = {}
        self.pending: list = []
        self.validators: dict = {}
        self._punct: dict[str, str] = {}
        self._terms: dict[int, tuple] = {}
        self._strings: dict = {}  # string expression -> lexeme node
        self._keys: dict[str, str] = {}  # property name -> key terminal
        self._extra_keys: dict = {}  # (declared, patterns...) -> key terminal for other keys

    # -- errors ------------------------------------------------------------------
    def refuse(self, message: str, ptr: str, keyword: str | None = None) -> None:
        """Raise, or with ``lenient`` record a warning and let the caller drop the keyword."""
        if not self.lenient_about(keyword):
            raise ConstraintError(message, ptr or "#", keyword=keyword)
        text = f"{message} (at {ptr or '#'}); keyword ignored, output may not satisfy it"
        if self.opts.warnings is not None:
            self.opts.warnings.append(text)
        _warnings.warn(text, stacklevel=3)

    def lenient_about(self, keyword: str | None) -> bool:
        """Does a refusal of ``keyword`` become a warning? (``lenient``: True or a set of keywords)"""
        lenient = self.opts.lenient
        return lenient is True or (isinstance(lenient, frozenset) and keyword in lenient)

    def note(self, message: str, ptr: str) -> None:
        """Record a documented deviation that is not a refusal: a sound restriction (output
        still valid, fewer outputs allowed) or a documented over-approximation (format "regex")."""
        text = f"{message} (at {ptr or '#'})"
        if self.opts.warnings is not None and text not in self.opts.warnings:
            self.opts.warnings.append(text)

    def malformed(self, message: str, ptr: str, keyword: str | None = None):
        return ConstraintError(f"malformed schema: {message}", ptr or "#", keyword=keyword)

    def check_time(self) -> None:
        check_deadline("compiling the schema")
        if time.perf_counter() - self.t0 > MAX_SECONDS:
            raise CompileBudgetExceeded(f"JSON schema compilation exceeded {MAX_SECONDS:.0f} s")

    # -- documents, $id, $anchor, $ref ------------------------------------------------
    @staticmethod
    def _draft(schema) -> int:
        if isinstance(schema, dict):
            s = schema.get("$schema", "")
            if isinstance(s, str):
                for d in ("draft-03", "draft-04", "draft-06", "draft-07"):
                    if d in s:
                        return int(d[-2:])
                if "2019-09" in s:
                    return 2019
        return 2020

    def _scan(self, node, base: str, ptr: str, root: bool = False) -> None:
        """Register ``$id`` resources and anchors; remember each schema's base and pointer."""
        if not isinstance(node, dict):
            return
        sid = node.get("$id")
        if isinstance(sid, str) and not (self.draft < 2019 and "$ref" in node):
            uri, frag = urldefrag(urljoin(base, sid))
            if frag and not uri.rstrip("#"):
                uri = base
            if frag and self.draft < 2019:  # draft-07 "$id": "#foo" is an anchor
                self.anchors[f"{urldefrag(base)[0]}#{frag}"] = (node, base, ptr)
            else:
                base = uri
                self.resources.setdefault(uri, (node, ptr))
        elif root:
            self.resources.setdefault(base, (node, ptr))
        self.base_of[id(node)] = base
        self.ptr_of[id(node)] = ptr
        for key in ("$anchor", "$dynamicAnchor"):
            a = node.get(key)
            if isinstance(a, str):
                self.anchors[f"{base}#{a}"] = (node, base, ptr)
                if key == "$dynamicAnchor":
                    self.dynamic_anchors[a] = self.dynamic_anchors.get(a, 0) + 1
        for kw, val in node.items():
            p = f"{ptr}/{_ptr_escape(kw)}"
            if kw in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"):
                if isinstance(val, dict):
                    for k, v in val.items():
                        self._scan(v, base, f"{p}/{_ptr_escape(k)}")
            elif kw == "dependencies" and isinstance(val, dict):
                for k, v in val.items():
                    self._scan(v, base, f"{p}/{_ptr_escape(k)}")
            elif kw in ("allOf", "anyOf", "oneOf", "prefixItems") or (kw == "items" and isinstance(val, list)):
                if isinstance(val, list):
                    for i, v in enumerate(val):
                        self._scan(v, base, f"{p}/{i}")
            elif kw in (
                "not", "if", "then", "else", "items", "additionalItems", "contains", "additionalProperties",
                "propertyNames", "unevaluatedItems", "unevaluatedProperties",
            ):
                self._scan(val, base, p)

    def sub(self, node, parent: Sub | None, ptr: str) -> Sub:
        """A handle for a child schema (its base is known from the scan)."""
        if isinstance(node, bool):
            return TRUE if node else FALSE
        base = self.base_of.get(id(node))
        if base is None:
            base = parent.base if parent is not None else self.root_base
        return Sub(node, base, self.ptr_of.get(id(node), ptr))

    def root_sub(self) -> Sub:
        return self.sub(self.root, None, "")

    def resolve(self, ref: str, at: Sub, keyword: str = "$ref") -> Sub | None:
        """The schema a ``$ref`` points to; None (after ``refuse``) when unresolvable."""
        target = urljoin(at.base, ref)
        uri, frag = urldefrag(target)
        if not uri:
            uri = at.base
        if frag and not frag.startswith("/"):
            got = self.anchors.get(f"{uri}#{frag}")
            if got is None:
                self.refuse(f"$ref {ref!r}: anchor not found", at.ptr, keyword)
                return None
            node, base, ptr = got
            return Sub(node, base, ptr) if not isinstance(node, bool) else (TRUE if node else FALSE)
        res = self.resources.get(uri)
        if res is None:
            self.refuse(f"remote $ref {ref!r} is not supported (only references inside the schema)", at.ptr, keyword)
            return None
        node, ptr = res
        base = uri
        if frag:
            for raw in frag.split("/")[1:]:
                tok = unquote(raw).replace("~1", "/").replace("~0", "~")
                if isinstance(node, dict) and tok in node:
                    node = node[tok]
                elif isinstance(node, list) and tok.isdigit() and int(tok) < len(node):
                    node = node[int(tok)]
                else:
                    self.refuse(f"$ref {ref!r}: JSON pointer does not resolve", at.ptr, keyword)
                    return None
                ptr = f"{ptr}/{_ptr_escape(tok)}"
                if isinstance(node, dict) and id(node) in self.base_of:
                    base = self.base_of[id(node)]
        if isinstance(node, bool):
            return TRUE if node else FALSE
        if not isinstance(node, dict):
            self.refuse(f"$ref {ref!r} does not point to a schema", at.ptr, keyword)
            return None
        return Sub(node, self.base_of.get(id(node), base), self.ptr_of.get(id(node), ptr))

    # -- validation of concrete values (enum filtering, property names) ------------
    def ref_contains(self, ref, value) -> bool:
        """Is the JSON ``value`` valid against a reference? (exact, via jsonschema for Subs)"""
        if isinstance(ref, SAnd):
            return all(self.ref_contains(r, value) for r in ref.items)
        if isinstance(ref, SNot):
            return not self.ref_contains(ref.item, value)
        if isinstance(ref.node, bool):
            return ref.node
        return self._validator(ref).is_valid(value)

    def _validator(self, sub: Sub):
        v = self.validators.get(id(sub.node))
        if v is not None:
            return v
        import jsonschema
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT7, DRAFT202012

        spec = DRAFT7 if self.draft < 2019 else DRAFT202012
        resources = [(uri, Resource(contents=node, specification=spec)) for uri, (node, _) in self.resources.items()]
        registry = Registry().with_resources(resources)
        cls = jsonschema.Draft7Validator if self.draft < 2019 else jsonschema.Draft202012Validator
        # validate through a reference from the document root, so that $id/$ref inside
        # the subschema resolve exactly as they do in the document
        schema = {"$ref": f"{DEFAULT_BASE}#{quote(sub.ptr, safe=_PTR_SAFE)}"}
        v = cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)
        self.validators[id(sub.node)] = v
        return v

    def facets_contains(self, f: Facets, value) -> bool:
        t = _json_type(value)
        if t == "null":
            return f.null
        if t == "boolean":
            return value in f.bools
        if t == "number":
            d = to_decimal(value)
            return any(p.contains(d) for p in f.nums)
        if t == "string":
            return f.strs is not None and _expr_matches(f.strs, value)
        if any(json_equal(value, v) for v in f.values):
            return True
        if t == "array":
            return any(self._array_contains(s, value) for s in f.arrays)
        return any(self._object_contains(s, value) for s in f.objects)

    def _array_contains(self, s: ArraySpec, v: list) -> bool:
        if len(v) < s.min_items or (s.max_items is not None and len(v) > s.max_items):
            return False
        if not all(self.ref_contains(s.elem(i), x) for i, x in enumerate(v)):
            return False
        for c, mn, mx in s.contains:
            n = sum(1 for x in v if self.ref_contains(c, x))
            if n < mn or (mx is not None and n > mx):
                return False
        if s.unique and any(json_equal(v[i], v[j]) for i in range(len(v)) for j in range(i)):
            return False
        return True

    def _object_contains(self, s: ObjectSpec, v: dict) -> bool:
        if len(v) < s.min_props or (s.max_props is not None and len(v) > s.max_props):
            return False
        if any(r not in v for r in s.required):
            return False
        for k, x in v.items():
            if not all(self.ref_contains(n, k) for n in s.names):
                return False
            if not all(self.ref_contains(la.schema_for(k), x) for la in s.layers):
                return False
        return True

    # -- facets ------------------------------------------------------------------
    def facets(self, ref) -> Facets:
        key = ref.key
        got = self.facets_memo.get(key)
        if got is not None:
            return got
        if key in self.in_progress:
            raise ConstraintError(
                "circular $ref: a schema refers to itself without going through a property or item",
                getattr(ref, "ptr", "#") or "#",
                keyword="$ref",
            )
        self.in_progress.add(key)
        try:
            self.check_time()
            if isinstance(ref, SAnd):
                f = self.facets(ref.items[0])
                for r in ref.items[1:]:
                    f = self.intersect(f, self.facets(r), getattr(r, "ptr", ""))
            elif isinstance(ref, SNot):
                inner = self.facets(ref.item)
                try:
                    f = self.complement(inner, getattr(ref.item, "ptr", ""))
                except _Refused as e:
                    # reached from contains/maxContains or oneOf: cannot negate the subschema
                    self.refuse(f"cannot negate a subschema ({e})", getattr(ref.item, "ptr", "") or "#", "not")
                    f = any_facets()
            else:
                f = self.sub_facets(ref)
        finally:
            self.in_progress.discard(key)
        self.facets_memo[key] = f
        return f

    def sub_facets(self, s: Sub) -> Facets:
        node = s.node
        if node is True:
            return any_facets()
        if node is False:
            return Facets()
        if not isinstance(node, dict):
            raise self.malformed(f"a schema must be an object or a boolean, not {type(node).__name__}", s.ptr)
        self.check_keywords(s)
        if "$ref" in node and self.draft < 2019:
            # draft-07 and earlier: $ref replaces its siblings
            target = self.resolve(node["$ref"], s)
            return any_facets() if target is None else self.facets(target)
        if "enum" in node or "const" in node:
            return self.value_facets(s)
        f = self.own_facets(s)
        p = s.ptr
        for kw in ("$ref", "$dynamicRef"):
            if kw in node:
                if kw == "$dynamicRef" and not self._static_dynamic_ref(node[kw]):
                    self.refuse("$dynamicRef with several $dynamicAnchor candidates is not supported", p, kw)
                    continue
                target = self.resolve(node[kw], s, kw)
                if target is not None:
                    f = self.intersect(f, self.facets(target), p)
        if "allOf" in node:
            for i, sch in enumerate(node["allOf"]):
                f = self.intersect(f, self.facets(self.sub(sch, s, f"{p}/allOf/{i}")), p)
        if "anyOf" in node:
            branches = [self.facets(self.sub(sch, s, f"{p}/anyOf/{i}")) for i, sch in enumerate(node["anyOf"])]
            f = self.intersect(f, self.union(branches), p)
        if "oneOf" in node:
            subs = [self.sub(sch, s, f"{p}/oneOf/{i}") for i, sch in enumerate(node["oneOf"])]
            one = self.one_of(subs, f"{p}/oneOf", f)
            if one is not None:
                f = one
        if "not" in node:
            neg = self.try_complement(self.sub(node["not"], s, f"{p}/not"), f"{p}/not", "not")
            if neg is not None:
                f = self.intersect(f, neg, p)
        if "if" in node and ("then" in node or "else" in node):
            cond = self.if_then_else(s)
            if cond is not None:
                f = self.intersect(f, cond, p)
        for dep in self.dependency_facets(s):
            f = self.intersect(f, dep, p)
        return f

    def _static_dynamic_ref(self, ref: str) -> bool:
        frag = urldefrag(ref)[1]
        return not frag or frag.startswith("/") or self.dynamic_anchors.get(frag, 0) <= 1

    # -- keyword checks --------------------------------------------------------------
    def check_keywords(self, s: Sub) -> None:
        node, p = s.node, s.ptr
        for kw, val in node.items():
            at = f"{p}/{_ptr_escape(kw)}"
            if kw == "type":
                names = val if isinstance(val, list) else [val]
                if not names and isinstance(val, list) or any(t not in TYPES for t in names):
                    raise self.malformed(f"type must be one of {', '.join(TYPES)} or a list of them", at, kw)
            elif kw in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"):
                if not isinstance(val, dict) or not all(isinstance(v, dict | bool) for v in val.values()):
                    raise self.malformed(f"{kw} must be an object of schemas", at, kw)
                if kw == "patternProperties":
                    for pat in val:
                        try:
                            _compiled_pattern(pat)
                        except re.error as e:
                            raise ConstraintError(f"invalid regex {pat!r}: {e}", at, keyword=kw) from None
            elif kw == "required":
                if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
                    raise self.malformed("required must be an array of strings", at, kw)
            elif kw in ("allOf", "anyOf", "oneOf", "prefixItems"):
                if not isinstance(val, list) or not val or not all(isinstance(v, dict | bool) for v in val):
                    raise self.malformed(f"{kw} must be a non-empty array of schemas", at, kw)
            elif kw == "items":
                if isinstance(val, list):
                    if not all(isinstance(v, dict | bool) for v in val):
                        raise self.malformed("items must be a schema or an array of schemas", at, kw)
                elif not isinstance(val, dict | bool):
                    raise self.malformed("items must be a schema", at, kw)
            elif kw in (
                "not", "if", "then", "else", "contains", "additionalProperties", "additionalItems",
                "propertyNames", "unevaluatedItems", "unevaluatedProperties",
            ):
                if not isinstance(val, dict | bool):
                    raise self.malformed(f"{kw} must be a schema", at, kw)
            elif kw in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains"):
                if not _is_int(val) or val < 0:
                    raise self.malformed(f"{kw} must be a non-negative integer", at, kw)
            elif kw in ("minimum", "maximum"):
                if not _is_num(val):
                    raise self.malformed(f"{kw} must be a number", at, kw)
            elif kw in ("exclusiveMinimum", "exclusiveMaximum"):
                if not (_is_num(val) or (isinstance(val, bool) and self.draft <= 4)):
                    raise self.malformed(f"{kw} must be a number", at, kw)
            elif kw == "multipleOf":
                if not _is_num(val) or val <= 0:
                    raise self.malformed("multipleOf must be a number > 0", at, kw)
            elif kw in ("pattern", "format", "$ref", "$dynamicRef", "$id", "$anchor"):
                if not isinstance(val, str):
                    raise self.malformed(f"{kw} must be a string", at, kw)
            elif kw == "enum":
                if not isinstance(val, list):
                    raise self.malformed("enum must be an array", at, kw)
            elif kw == "dependentRequired":
                if not isinstance(val, dict) or not all(
                    isinstance(v, list) and all(isinstance(x, str) for x in v) for v in val.values()
                ):
                    raise self.malformed("dependentRequired must map names to arrays of strings", at, kw)
            elif kw == "dependencies":
                if not isinstance(val, dict) or not all(
                    isinstance(v, dict | bool) or (isinstance(v, list) and all(isinstance(x, str) for x in v))
                    for v in val.values()
                ):
                    raise self.malformed("dependencies must map names to schemas or arrays of strings", at, kw)
            elif kw in ("uniqueItems", "nullable"):
                if not isinstance(val, bool):
                    raise self.malformed(f"{kw} must be a boolean", at, kw)

    # -- enum / const -------------------------------------------------------------------
    def value_facets(self, s: Sub) -> Facets:
        return self.facets_of_values(self.enum_values(s), s.ptr)

    def enum_values(self, s: Sub) -> list:
        """The values of ``enum``/``const`` that satisfy the schema's other keywords."""
        node = s.node
        values = list(node["enum"]) if "enum" in node else None
        if "const" in node:
            c = node["const"]
            values = [c] if values is None else [v for v in values if json_equal(v, c)]
        rest = {k for k in node if k not in ANNOTATIONS and k not in ("enum", "const")}
        if rest and rest <= SCALAR_KEYWORDS:
            # type and scalar bounds only: our own facets decide (fast for big enums)
            own = self.own_facets(s)
            values = [v for v in values if self.facets_contains(own, v)]
        elif rest:  # other keywords narrow the list: validate each value exactly
            values = [v for v in values if self.ref_contains(s, v)]
        return values

    def facets_of_values(self, values: list, ptr: str) -> Facets:
        f = Facets()
        strings, numbers, others = [], [], []
        bools = set()
        for v in values:
            t = _json_type(v)
            if t == "null":
                f.null = True
            elif t == "boolean":
                bools.add(v)
            elif t == "number":
                numbers.append(to_decimal(v))
            elif t == "string":
                strings.append(v)
            elif not any(json_equal(v, o) for o in others):
                others.append(v)
        f.bools = frozenset(bools)
        if strings:
            f.strs = _string_set(tuple(sorted(set(strings))))
        uniq = sorted(set(numbers))
        f.nums = tuple(NumPiece(d, d) for d in uniq)
        f.values = tuple(others)
        return f

    # -- own (type-specific) keywords ---------------------------------------------------
    def own_facets(self, s: Sub) -> Facets:
        node, _p = s.node, s.ptr
        t = node.get("type")
        types = set(TYPES) if t is None else set(t if isinstance(t, list) else [t])
        if t is not None and node.get("nullable") is True:
            types.add("null")
        f = Facets()
        f.null = "null" in types
        if "boolean" in types:
            f.bools = frozenset({True, False})
        if "number" in types or "integer" in types:
            f.nums = self.number_facet(s, integer="number" not in types)
        if "string" in types:
            f.strs = self.string_facet(s)
        if "array" in types:
            spec = self.array_spec(s)
            f.arrays = () if spec is None else (spec,)
        if "object" in types:
            spec = self.object_spec(s)
            f.objects = () if spec is None else (spec,)
        return f

    def number_facet(self, s: Sub, integer: bool) -> tuple:
        node, _p = s.node, s.ptr
        lo = hi = None
        lo_open = hi_open = False
        if "minimum" in node:
            lo = to_decimal(node["minimum"])
            lo_open = node.get("exclusiveMinimum") is True
        if "maximum" in node:
            hi = to_decimal(node["maximum"])
            hi_open = node.get("exclusiveMaximum") is True
        for kw in ("exclusiveMinimum", "exclusiveMaximum"):
            v = node.get(kw)
            if _is_num(v):
                d = to_decimal(v)
                if kw == "exclusiveMinimum" and (lo is None or d >= lo):
                    lo, lo_open = d, True
                if kw == "exclusiveMaximum" and (hi is None or d <= hi):
                    hi, hi_open = d, True
        piece = NumPiece(lo, hi, lo_open, hi_open, "scale" if integer else "any", 0)
        if "multipleOf" in node:
            m = to_decimal(node["multipleOf"]).normalize()
            sign, digs, exp = m.as_tuple()
            c = int("".join(map(str, digs)))
            mult = NumPiece(kind="scale", scale=max(-exp, 0), mult=c * 10 ** max(exp, 0))
            piece = intersect_pieces(piece, mult) or NumPiece(Decimal(1), Decimal(0))
        return () if piece.is_empty() else (piece,)

    def string_facet(self, s: Sub):
        node, p = s.node, s.ptr
        parts = []
        lo = int(node.get("minLength", 0))
        hi = int(node["maxLength"]) if "maxLength" in node else None
        if lo or hi is not None:
            parts.append(Repeat(_ANY_CHAR, lo, hi))
        if "pattern" in node:
            try:
                parts.append(pattern_node(node["pattern"]))
            except ConstraintError as e:
                self.refuse(e.message, f"{p}/pattern", "pattern")
        fmt = node.get("format")
        if isinstance(fmt, str):
            try:
                fnode = format_node(fmt)
            except ConstraintError as e:
                self.refuse(e.message, f"{p}/format", "format")
                fnode = None
            if fnode is not None:
                parts.append(fnode)
            if fmt in APPROXIMATE_FORMATS:
                self.note(f"format {fmt!r} is checked up to a nesting depth (no regular language can check it exactly)", f"{p}/format")
        return mk_and(*parts) if parts else ANY_STRING

    def array_spec(self, s: Sub) -> ArraySpec | None:
        node, p = s.node, s.ptr
        prefix: list = []
        items = TRUE
        if isinstance(node.get("items"), list) or (self.draft < 2019 and "items" in node):
            raw = node.get("items")
            if isinstance(raw, list):
                prefix = [self.sub(x, s, f"{p}/items/{i}") for i, x in enumerate(raw)]
                if "additionalItems" in node:
                    items = self.sub(node["additionalItems"], s, f"{p}/additionalItems")
            else:
                items = self.sub(raw, s, f"{p}/items")
        else:
            if "prefixItems" in node:
                prefix = [self.sub(x, s, f"{p}/prefixItems/{i}") for i, x in enumerate(node["prefixItems"])]
            if "items" in node:
                items = self.sub(node["items"], s, f"{p}/items")
        uneval = None
        if "unevaluatedItems" in node and not is_true(self.sub(node["unevaluatedItems"], s, p)):
            seen = self._evaluated(s, "items")
            if seen is None:
                self.refuse(
                    "unevaluatedItems is only supported next to allOf/$ref (not anyOf/oneOf/not/if/contains)",
                    f"{p}/unevaluatedItems", "unevaluatedItems",
                )
            elif seen is not True:
                uneval = ArraySpec(prefix=(TRUE,) * seen, items=self.sub(node["unevaluatedItems"], s, f"{p}/unevaluatedItems"))
        mn = int(node.get("minItems", 0))
        mx = int(node["maxItems"]) if "maxItems" in node else None
        contains = ()
        if "contains" in node:
            cmin = int(node.get("minContains", 1))
            cmax = int(node["maxContains"]) if "maxContains" in node else None
            contains = ((self.sub(node["contains"], s, f"{p}/contains"), cmin, cmax),)
        unique = node.get("uniqueItems") is True
        spec = ArraySpec(tuple(prefix), items, mn, mx, contains, unique)
        if mx is not None and mn > mx:
            return None
        return spec if uneval is None else self.merge_arrays(spec, uneval)

    def object_spec(self, s: Sub) -> ObjectSpec | None:
        node, p = s.node, s.ptr
        props = tuple(
            (k, self.sub(v, s, f"{p}/properties/{_ptr_escape(k)}")) for k, v in node.get("properties", {}).items()
        )
        patterns = tuple(
            (k, self.sub(v, s, f"{p}/patternProperties/{_ptr_escape(k)}"))
            for k, v in node.get("patternProperties", {}).items()
        )
        additional = TRUE
        if "additionalProperties" in node:
            additional = self.sub(node["additionalProperties"], s, f"{p}/additionalProperties")
        layers = [Layer(props, patterns, additional)]
        if "unevaluatedProperties" in node and "additionalProperties" not in node:
            un = self.sub(node["unevaluatedProperties"], s, f"{p}/unevaluatedProperties")
            if not is_true(un):
                seen = self._evaluated(s, "properties")
                if seen is None:
                    self.refuse(
                        "unevaluatedProperties is only supported next to allOf/$ref (not anyOf/oneOf/not/if/dependentSchemas)",
                        f"{p}/unevaluatedProperties", "unevaluatedProperties",
                    )
                elif seen is not True:
                    names, pats = seen
                    layers.append(Layer(tuple((n, TRUE) for n in names), tuple((q, TRUE) for q in pats), un))
        required = tuple(dict.fromkeys(node.get("required", [])))
        names = ()
        if "propertyNames" in node:
            names = (self.sub(node["propertyNames"], s, f"{p}/propertyNames"),)
        mn = int(node.get("minProperties", 0))
        mx = int(node["maxProperties"]) if "maxProperties" in node else None
        if mx is not None and (mn > mx or len(required) > mx):
            return None
        return ObjectSpec(tuple(layers), required, mn, mx, names)

    def _evaluated(self, s: Sub, what: str, depth: int = 0):
        """What the in-place applicators of ``s`` evaluate, for unevaluated*.

        ``what="properties"``: (names, patterns) or True (all); ``"items"``: the evaluated
        prefix length or True. None when an applicator makes it depend on the instance
        (anyOf, oneOf, not, if, dependentSchemas, contains, $dynamicRef).
        """
        node = s.node
        if depth > 32:
            return None
        if isinstance(node, bool):  # boolean schemas produce no annotations
            return ((), ()) if what == "properties" else 0
        if {"anyOf", "oneOf", "not", "if", "dependentSchemas", "$dynamicRef"} & node.keys():
            return None
        if what == "items" and "contains" in node:
            return None
        if what == "properties":
            if "additionalProperties" in node or (depth and "unevaluatedProperties" in node):
                return True
            names = list(node.get("properties", {}))
            pats = list(node.get("patternProperties", {}))
        else:
            if (depth and "unevaluatedItems" in node) or ("items" in node and not isinstance(node["items"], list)):
                return True
            if isinstance(node.get("items"), list):
                if "additionalItems" in node:
                    return True
                count = len(node["items"])
            else:
                count = len(node.get("prefixItems", []))
        kids = [self.sub(x, s, f"{s.ptr}/allOf/{i}") for i, x in enumerate(node.get("allOf", []))]
        if "$ref" in node:
            target = self.resolve(node["$ref"], s)
            if target is None:
                return None
            kids.append(target)
        for k in kids:
            got = self._evaluated(k, what, depth + 1)
            if got is None or got is True:
                return got
            if what == "properties":
                names += [n for n in got[0] if n not in names]
                pats += [q for q in got[1] if q not in pats]
            else:
                count = max(count, got)
        return (tuple(names), tuple(pats)) if what == "properties" else count

    # -- dependencies, if/then/else, oneOf ------------------------------------------
    def dependency_facets(self, s: Sub) -> list[Facets]:
        node, p = s.node, s.ptr
        out = []
        deps: list = []
        for k, v in node.get("dependentRequired", {}).items():
            deps.append((k, list(v), None, f"{p}/dependentRequired"))
        for k, v in node.get("dependentSchemas", {}).items():
            deps.append((k, [], self.sub(v, s, f"{p}/dependentSchemas/{_ptr_escape(k)}"), f"{p}/dependentSchemas"))
        for k, v in node.get("dependencies", {}).items():
            if isinstance(v, list):
                deps.append((k, list(v), None, f"{p}/dependencies"))
            else:
                deps.append((k, [], self.sub(v, s, f"{p}/dependencies/{_ptr_escape(k)}"), f"{p}/dependencies"))
        for name, req, schema, at in deps:
            if schema is not None and is_true(schema) and not req:
                continue
            absent = Facets(objects=(ObjectSpec((Layer(((name, FALSE),)),)),))
            present = Facets(objects=(ObjectSpec(required=tuple([name] + req)),))
            if schema is not None:
                sf = self.facets(schema)
                present = self.intersect(present, Facets(objects=sf.objects, values=tuple(v for v in sf.values if isinstance(v, dict))), at)
            non_objects = any_facets()
            non_objects.objects = ()
            out.append(self.union([non_objects, absent, present]))
        return out

    def if_then_else(self, s: Sub) -> Facets | None:
        node, p = s.node, s.ptr
        cond = self.sub(node["if"], s, f"{p}/if")
        then = self.sub(node.get("then", True), s, f"{p}/then")
        other = self.sub(node.get("else", True), s, f"{p}/else")
        fc = self.facets(cond)
        try:
            neg = self.complement(fc, f"{p}/if")
        except _Refused as e:
            self.refuse(f"if/then/else: cannot negate the 'if' schema ({e})", f"{p}/if", "if")
            return None
        return self.union([self.intersect(fc, self.facets(then), p), self.intersect(neg, self.facets(other), p)])

    def one_of(self, subs: list, ptr: str, context: Facets) -> Facets | None:
        """``context`` ∧ (exactly one branch). Branches are first restricted to the
        context (the sibling keywords), which often makes them disjoint: oneOf of objects
        next to ``type: object`` no longer overlaps on strings."""
        raw = [self.facets(x) for x in subs]
        fs = [self.intersect(context, g, ptr) for g in raw]
        if all(self.disjoint_from_earlier(fs, i) for i in range(len(fs))):
            return self.union(fs)
        # exact: each branch minus all the others
        try:
            if len(fs) > MAX_ONE_OF_EXACT:  # quadratic in the branches
                raise _Refused(f"{len(fs)} branches, over the {MAX_ONE_OF_EXACT} separated exactly (budget)")
            negs = [self.complement(g, ptr) for g in raw]
            parts = []
            for i, f in enumerate(fs):
                g = f
                for j, n in enumerate(negs):
                    if j != i:
                        g = self.intersect(g, n, ptr)
                parts.append(g)
            return self.union(parts)
        except _Refused as e:
            self.refuse(f"oneOf branches may overlap and cannot be separated ({e})", ptr, "oneOf")
            return self.union(fs) if self.lenient_about("oneOf") else context

    def disjoint_from_earlier(self, fs: list, i: int) -> bool:
        self.check_time()  # n branches: n*(n-1)/2 checks
        return all(self.disjoint(fs[i], fs[j]) for j in range(i))

    def try_complement(self, ref, ptr: str, keyword: str) -> Facets | None:
        try:
            return self.complement(self.facets(ref), ptr)
        except _Refused as e:
            self.refuse(f"cannot express this 'not' ({e})", ptr, keyword)
            return None

    # -- facet algebra ------------------------------------------------------------------
    def union(self, fs: list[Facets]) -> Facets:
        out = Facets()
        strs = []
        for f in fs:
            out.null = out.null or f.null
            out.bools = out.bools | f.bools
            out.nums = out.nums + tuple(p for p in f.nums if p not in out.nums)
            if f.strs is not None:
                strs.append(f.strs)
            out.arrays = out.arrays + tuple(a for a in f.arrays if a not in out.arrays)
            out.objects = out.objects + tuple(o for o in f.objects if o not in out.objects)
            out.values = out.values + tuple(v for v in f.values if not any(json_equal(v, w) for w in out.values))
        if any(a.trivial() for a in out.arrays):
            out.arrays = (ArraySpec(),)
        if any(o.trivial() for o in out.objects):
            out.objects = (ObjectSpec(),)
        if strs:
            out.strs = ANY_STRING if ANY_STRING in strs else mk_alt(*strs)
        if len(out.arrays) > MAX_UNION or len(out.objects) > MAX_UNION or len(out.nums) > 10 * MAX_UNION:
            raise CompileBudgetExceeded("schema expands into too many alternatives")
        return out

    def intersect(self, a: Facets, b: Facets, ptr: str) -> Facets:
        out = Facets()
        out.null = a.null and b.null
        out.bools = a.bools & b.bools
        nums = []
        for x in a.nums:
            for y in b.nums:
                try:
                    z = intersect_pieces(x, y)
                except ValueError as e:
                    self.refuse(str(e), ptr, "multipleOf")
                    z = x
                if z is not None and z not in nums:
                    nums.append(z)
        out.nums = tuple(nums)
        if a.strs is not None and b.strs is not None:
            out.strs = mk_and(a.strs, b.strs)
        out.arrays = tuple(m for x in a.arrays for y in b.arrays if (m := self.merge_arrays(x, y)) is not None)
        out.objects = tuple(m for x in a.objects for y in b.objects if (m := self.merge_objects(x, y)) is not None)
        vals = [v for v in a.values if self.facets_contains(b, v)]
        vals += [v for v in b.values if self.facets_contains(a, v) and not any(json_equal(v, w) for w in vals)]
        out.values = tuple(vals)
        if len(out.arrays) > MAX_UNION or len(out.objects) > MAX_UNION or len(out.nums) > 10 * MAX_UNION:
            raise CompileBudgetExceeded("schema expands into too many alternatives (allOf of anyOf)")
        return out

    @staticmethod
    def merge_arrays(a: ArraySpec, b: ArraySpec) -> ArraySpec | None:
        n = max(len(a.prefix), len(b.prefix))
        prefix = tuple(mk_sand(a.elem(i), b.elem(i)) for i in range(n))
        mx = a.max_items if b.max_items is None else b.max_items if a.max_items is None else min(a.max_items, b.max_items)
        mn = max(a.min_items, b.min_items)
        if mx is not None and mn > mx:
            return None
        return ArraySpec(prefix, mk_sand(a.items, b.items), mn, mx, a.contains + b.contains, a.unique or b.unique)

    @staticmethod
    def merge_objects(a: ObjectSpec, b: ObjectSpec) -> ObjectSpec | None:
        mx = a.max_props if b.max_props is None else b.max_props if a.max_props is None else min(a.max_props, b.max_props)
        mn = max(a.min_props, b.min_props)
        req = tuple(dict.fromkeys(a.required + b.required))
        if mx is not None and (mn > mx or len(req) > mx):
            return None
        layers = tuple(la for la in a.layers + b.layers if not la.trivial())
        return ObjectSpec(layers, req, mn, mx, tuple(n for n in a.names + b.names if not is_true(n)))

    def disjoint(self, a: Facets, b: Facets) -> bool:
        """True only when no value can satisfy both (conservative)."""
        if (a.null and b.null) or (a.bools & b.bools):
            return False
        for x in a.nums:
            for y in b.nums:
                try:
                    if intersect_pieces(x, y) is not None:
                        return False
                except ValueError:
                    return False
        if a.strs is not None and b.strs is not None and not self._strings_disjoint(a.strs, b.strs):
            return False
        for x in a.values:
            if self.facets_contains(b, x):
                return False
        for y in b.values:
            if self.facets_contains(a, y):
                return False
        for x in a.arrays:
            for y in b.arrays:
                m = self.merge_arrays(x, y)
                if m is not None and not self._array_impossible(m):
                    return False
        for x in a.objects:
            for y in b.objects:
                m = self.merge_objects(x, y)
                if m is not None and not self._object_impossible(m):
                    return False
        return True

    def _strings_disjoint(self, x, y) -> bool:
        from .json_formats import materialize

        try:
            return materialize(mk_and(x, y), max_states=500, max_size=5000) == NOTHING
        except CompileBudgetExceeded:
            return False

    def _array_impossible(self, s: ArraySpec) -> bool:
        for i in range(min(s.min_items, len(s.prefix) + 1)):
            if self._ref_empty(s.elem(i)):
                return True
        return False

    def _object_impossible(self, s: ObjectSpec) -> bool:
        for name in s.required:
            ref = mk_sand(*(la.schema_for(name) for la in s.layers))
            if self._ref_empty(ref):
                return True
        return False

    def _ref_empty(self, ref) -> bool:
        if is_false(ref):
            return True
        try:
            f = self.facets(ref)
        except ConstraintError:
            return False
        if f.strs is not None and f.strs != NOTHING and (f.null or f.bools or f.nums or f.values):
            return False
        if f.strs is not None and f.strs != NOTHING:
            return self._strings_disjoint(f.strs, ANY_STRING)
        return f.is_empty()

    def complement(self, f: Facets, ptr: str) -> Facets:
        """All JSON values not in ``f``; raises ``_Refused`` where not expressible."""
        if f.values:
            raise _Refused("excluding specific arrays or objects")
        out = Facets()
        out.null = not f.null
        out.bools = frozenset({True, False}) - f.bools
        nums = [NumPiece()]
        for p in f.nums:
            try:
                comp = complement_piece(p)
            except ValueError as e:
                raise _Refused(str(e)) from None
            nums = [z for x in nums for y in comp if (z := intersect_pieces(x, y)) is not None]
        out.nums = tuple(nums)
        out.strs = ANY_STRING if f.strs is None else (None if f.strs == ANY_STRING else mk_not(f.strs))
        out.arrays = self._complement_specs(f.arrays, self._negate_array, ArraySpec(), self.merge_arrays)
        out.objects = self._complement_specs(f.objects, self._negate_object, ObjectSpec(), self.merge_objects)
        return out

    @staticmethod
    def _complement_specs(specs, negate, everything, merge) -> tuple:
        if not specs:
            return (everything,)
        if any(s.trivial() for s in specs):
            return ()
        acc = [everything]
        for s in specs:
            neg = negate(s)
            acc = [m for x in acc for y in neg if (m := merge(x, y)) is not None]
            if len(acc) > MAX_UNION:
                raise _Refused("the complement has too many alternatives")
        return tuple(acc)

    @staticmethod
    def _negate_array(s: ArraySpec) -> list[ArraySpec]:
        out = []
        if s.min_items > 0:
            out.append(ArraySpec(max_items=s.min_items - 1))
        if s.max_items is not None:
            out.append(ArraySpec(min_items=s.max_items + 1))
        for i, p in enumerate(s.prefix):
            if not is_true(p):
                out.append(ArraySpec(prefix=(TRUE,) * i + (mk_snot(p),), min_items=i + 1))
        if not is_true(s.items):
            if is_false(s.items):
                out.append(ArraySpec(min_items=len(s.prefix) + 1))
            elif not s.prefix:
                out.append(ArraySpec(contains=((mk_snot(s.items), 1, None),)))
            else:
                raise _Refused("negating items after prefixItems")
        for c, mn, mx in s.contains:
            if mn > 0:
                out.append(ArraySpec(contains=((c, 0, mn - 1),)))
            if mx is not None:
                out.append(ArraySpec(contains=((c, mx + 1, None),)))
        if s.unique:
            raise _Refused("negating uniqueItems")
        return out

    @staticmethod
    def _negate_object(s: ObjectSpec) -> list[ObjectSpec]:
        out = []
        if s.min_props > 0:
            out.append(ObjectSpec(max_props=s.min_props - 1))
        if s.max_props is not None:
            out.append(ObjectSpec(min_props=s.max_props + 1))
        for r in s.required:
            out.append(ObjectSpec((Layer(((r, FALSE),)),)))
        for la in s.layers:
            if la.patterns and not all(is_true(r) for _, r in la.patterns) or not is_true(la.additional):
                raise _Refused("negating patternProperties/additionalProperties")
            for name, _ in la.props:
                ref = la.schema_for(name)
                if not is_true(ref):
                    out.append(ObjectSpec((Layer(((name, mk_snot(ref)),)),), required=(name,)))
        if any(not is_true(n) for n in s.names):
            raise _Refused("negating propertyNames")
        return out

    # -- grammar -----------------------------------------------------------------------
    def punct(self, which: str) -> str:
        """Punctuation lexemes, whitespace merged (after ``{ [ , :``, before ``} ] , :``)."""
        got = self._punct.get(which)
        if got is not None:
            return got
        if self.opts.whitespace == "compact":
            text = {"{": "{", "}": "}", "[": "[", "]": "]", ",": ", ", ":": ": "}[which]
            name = self.b.literal(text)
        else:
            n = self.opts.max_whitespace
            sp = repeat(chars((0x20, 0x20), (0x09, 0x09)), 0, n)
            ws = alt(sp, seq(sp, repeat(literal("\r"), 0, 1), literal("\n"), repeat(chars((0x20, 0x20), (0x09, 0x09)), 0, 4 * n)))
            c = literal(which)
            node = {"{": seq(c, ws), "[": seq(c, ws), "}": seq(ws, c), "]": seq(ws, c), ",": seq(ws, c, ws), ":": seq(ws, c, ws)}[which]
            name = self.b.terminal(node, hint=f"'{which}'")
        self._punct[which] = name
        return name

    def term(self, node: Node, hint: str) -> str:
        """A terminal for ``node``, deduplicated by identity (GrammarBuilder keys by repr,
        which is slow for big nodes; equal nodes from our caches are the same object)."""
        got = self._terms.get(id(node))
        if got is not None:
            return got[0]
        name = self.b.fresh(hint)
        self.b.terminals[name] = Terminal(name, node)
        self._terms[id(node)] = (name, node)
        return name

    def value_nt(self, ref) -> str | None:
        """The nonterminal for values of ``ref`` (None when no value is possible)."""
        key = ref.key
        if key in self.value_memo:
            return self.value_memo[key]
        name = self.b.fresh("value")
        self.value_memo[key] = name
        alts = self.value_alternatives(ref)
        if not alts:
            self.value_memo[key] = None
            return None
        for rhs in alts:
            self.b.rule(name, rhs)
        self._check_size()
        return name

    def _check_size(self) -> None:
        if len(self.b.rules) > MAX_RULES:
            raise CompileBudgetExceeded(f"the grammar for this schema exceeds {MAX_RULES} rules")
        self.check_time()

    def value_alternatives(self, ref) -> list[tuple]:
        f = self.facets(ref)
        ptr = getattr(ref, "ptr", "") if isinstance(ref, Sub) else ""
        out: list[tuple] = []
        if f.null:
            out.append((self.b.literal("null"),))
        for v in (True, False):
            if v in f.bools:
                out.append((self.b.literal("true" if v else "false"),))
        if f.nums:
            node = self.number_node(f.nums, ptr)
            if node != NOTHING:
                out.append((self.term(node, "number"),))
        if f.strs is not None:
            pieces = f.strs.items if id(f.strs) in _CHUNKED else (f.strs,)
            for piece in pieces:
                node = self.string_node(piece, ptr)
                if node != NOTHING:
                    out.append((self.term(node, "string"),))
        for spec in f.arrays:
            nt = self.array_nt(spec, ptr)
            if nt is not None:
                out.append((nt,))
        # one of several object alternatives (anyOf/oneOf/if/not/dependencies): no key is
        # forced at the start anyway, so required keys may come in any order too
        several = len(f.objects) + any(isinstance(v, dict) for v in f.values) > 1
        for spec in f.objects:
            nt = self.object_nt(spec, ptr, free_required=several)
            if nt is not None:
                out.append((nt,))
        for v in f.values:
            out.append((self.exact_nt(v),))
        return out

    def number_node(self, pieces: tuple, ptr: str) -> Node:
        points = [p.lo for p in pieces if p.lo is not None and p.lo == p.hi and p.kind == "any"]
        others = [p for p in pieces if not (p.lo is not None and p.lo == p.hi and p.kind == "any")]
        parts = [points_regex(points, MAX_EXACT_NUMBER_POINTS)] if points else []
        for p in others:
            try:
                parts.append(number_regex(p))
            except (ValueError, CompileBudgetExceeded) as e:
                self.refuse(f"multipleOf: {e}", ptr, "multipleOf")
                parts.append(number_regex(replace(p, kind="any") if p.scale else replace(p, mult=1)))
        return alt(*parts) if parts else NOTHING

    def string_node(self, expr, ptr: str) -> Node:
        """The lexeme for a string-language expression (length folded into the pattern)."""
        got = self._strings.get(expr)
        if got is None:
            got = self._strings[expr] = self._string_node(expr, ptr)
        return got

    def _string_node(self, expr, ptr: str) -> Node:
        from .json_formats import LAnd, length_range, restrict_length

        items = list(expr.items) if isinstance(expr, LAnd) else [expr]
        lo, hi = 0, None
        rest = []
        for it in items:
            if isinstance(it, Repeat) and it.item == _ANY_CHAR:
                lo = max(lo, it.min)
                hi = it.max if hi is None else (hi if it.max is None else min(hi, it.max))
            else:
                rest.append(it)
        if hi is not None and lo > hi:
            return NOTHING
        try:
            if len(rest) == 1 and not _has_bool(rest[0]):
                if lo == 0 and hi is None:
                    node = rest[0]
                else:
                    node, exact = restrict_length(rest[0], lo, hi)
                    if not exact:
                        self.note("pattern/format combined with minLength/maxLength: long strings are restricted further", ptr)
                    length_range(node)
            elif not rest:
                node = Repeat(_ANY_CHAR, lo, hi)
            else:
                length = [Repeat(_ANY_CHAR, lo, hi)] if (lo or hi is not None) else []
                node = mk_and(*rest, *length)
            return json_string_node(node)
        except CompileBudgetExceeded as e:
            self.refuse(f"string constraints too complex to combine: {e.message}", ptr, "pattern")
            return json_string_node(ANY_STRING)

    # -- arrays -------------------------------------------------------------------------
    def array_nt(self, spec: ArraySpec, ptr: str) -> str | None:
        key = ("array", spec)
        if key in self.value_memo:
            return self.value_memo[key]
        name = self.b.fresh("array")
        self.value_memo[key] = name
        ok = self._array_rules(name, spec, ptr)
        if not ok:
            self.value_memo[key] = None
            self.b.rules = [r for r in self.b.rules if r.lhs != name]
            return None
        return name

    def _array_rules(self, name: str, spec: ArraySpec, ptr: str) -> bool:
        if spec.unique and (spec.max_items is None or spec.max_items > 1):
            got = self._unique_array(name, spec, ptr)
            if got is not None:
                return got
            spec = replace(spec, unique=False)
        contains = spec.contains
        if len(contains) > 1:
            self.refuse("several 'contains' constraints on one array are not supported", ptr, "contains")
            contains = contains[:1]
        lb, rb, comma = self.punct("["), self.punct("]"), self.punct(",")
        P = len(spec.prefix)
        mn, mx = spec.min_items, spec.max_items
        c_ref, c_min, c_max = contains[0] if contains else (None, 0, None)
        if c_ref is not None and c_max is not None and c_min > c_max:
            return False
        # positions matter up to L; counts up to K
        L = max(P, mn, 1) if mx is None else mx  # >= 1: state 0 is "nothing written yet"
        K = c_min if c_max is None else c_max + 1
        if (L + 1) * (K + 1) > MAX_COUNT_STATES:
            self.refuse("minItems/maxItems/prefixItems/contains too large to unroll", ptr, "maxItems")
            L = min(L, P)
            mx = None
            mn = min(mn, L)
        elems: dict = {}

        def elem(i: int, counted: bool | None):
            """Nonterminal of element i: counted (matches contains), uncounted, or plain (None)."""
            k = (min(i, L if mx is None else i), counted)
            if k in elems:
                return elems[k]
            base = spec.elem(i)
            if counted is True:
                ref = mk_sand(base, c_ref)
            elif counted is False:
                ref = mk_sand(base, mk_snot(c_ref))
            else:
                ref = base
            elems[k] = self.value_nt(ref)
            return elems[k]

        def state(i: int, c: int) -> str:
            return f"{name}@{i}.{c}"

        made: set = set()
        todo = [(0, 0)]
        # Next(i, c): i elements written, c of them counted; next is "]" or ", elem"
        while todo:
            i, c = todo.pop()
            if (i, c) in made:
                continue
            made.add((i, c))
            sname = state(i, c)
            sep = () if i == 0 else (comma,)
            if i >= mn and c >= c_min:
                self.b.rule(sname, (rb,))
            if mx is not None and i >= mx:
                continue
            ni = i + 1 if (mx is not None or i < L) else i  # past L all positions are alike
            options = []
            if c_ref is None:
                options.append((elem(i, None), c))
            else:
                sat = c_max is None and c >= c_min
                if sat:
                    options.append((elem(i, None), c))
                else:
                    options.append((elem(i, True), min(c + 1, K)))
                    options.append((elem(i, False) if c_max is not None else elem(i, None), c))
            for nt, nc in options:
                if nt is None or (c_max is not None and nc > c_max):
                    continue
                self.b.rule(sname, sep + (nt, state(ni, nc)))
                todo.append((ni, nc))
        self.b.rule(name, (lb, state(0, 0)))
        self._check_size()
        return True

    def _unique_array(self, name: str, spec: ArraySpec, ptr: str) -> bool | None:
        """uniqueItems over a small finite set of element values: subsets of distinct values."""
        if spec.prefix or spec.contains:
            self.refuse("uniqueItems with prefixItems/contains is not supported", ptr, "uniqueItems")
            return None
        values = self._finite_values(spec.items)
        if values is None or len(values) > MAX_UNIQUE_VALUES:
            self.refuse("uniqueItems is only supported for items with a few possible values", ptr, "uniqueItems")
            return None
        lb, rb, comma = self.punct("["), self.punct("]"), self.punct(",")
        nts = [self.exact_nt(v) for v in values]
        mx = len(values) if spec.max_items is None else min(spec.max_items, len(values))
        for size in range(len(values) + 1):
            for used in combinations(range(len(values)), size):
                sname = f"{name}@u{'.'.join(map(str, used))}"
                if size >= spec.min_items:
                    self.b.rule(sname, (rb,))
                if size < mx:
                    for j in range(len(values)):
                        if j not in used:
                            nxt = f"{name}@u{'.'.join(map(str, sorted(used + (j,))))}"
                            self.b.rule(sname, ((comma,) if size else ()) + (nts[j], nxt))
        self.b.rule(name, (lb, f"{name}@u"))
        return True

    def _finite_values(self, ref) -> list | None:
        if isinstance(ref, Sub) and isinstance(ref.node, dict) and ("enum" in ref.node or "const" in ref.node):
            if self.draft >= 2019 or "$ref" not in ref.node:
                self.facets(ref)  # keyword checks
                vals: list = []
                for v in self.enum_values(ref):
                    if not any(json_equal(v, w) for w in vals):
                        vals.append(v)
                return vals
        f = self.facets(ref)
        if f.arrays or f.objects:
            return None
        if f.strs is not None:
            return None  # could be finite, but we do not enumerate languages
        if any(p.lo is None or p.lo != p.hi for p in f.nums):
            return None
        vals: list = [None] if f.null else []
        vals += sorted(f.bools)
        vals += [int(p.lo) if p.lo == p.lo.to_integral_value() else float(p.lo) for p in f.nums]
        vals += list(f.values)
        return vals

    # -- objects --------------------------------------------------------------------------
    def object_nt(self, spec: ObjectSpec, ptr: str, free_required: bool = False) -> str | None:
        key = ("object", spec, free_required)
        if key in self.value_memo:
            return self.value_memo[key]
        name = self.b.fresh("object")
        self.value_memo[key] = name
        if not self._object_rules(name, spec, ptr, free_required):
            self.value_memo[key] = None
            self.b.rules = [r for r in self.b.rules if r.lhs != name and not r.lhs.startswith(name + "@")]
            return None
        return name

    def _key_lexeme(self, name: str) -> str:
        if all(0x20 <= ord(ch) < 0x7F and ch not in '"\\/' for ch in name):
            return self.b.literal(json.dumps(name))
        got = self._keys.get(name)
        if got is None:
            got = self._keys[name] = self.term(json_string_node(literal_string(name)), "key")
        return got

    def _object_rules(self, name: str, spec: ObjectSpec, ptr: str, free_required: bool = False) -> bool:
        colon = self.punct(":")
        # declared names: properties of every layer, then required-only names
        declared: list[str] = []
        for la in spec.layers:
            for n, _ in la.props:
                if n not in declared:
                    declared.append(n)
        for n in spec.required:
            if n not in declared:
                declared.append(n)
        members = []  # (name, kv_nonterminal, required)
        for n in declared:
            req = n in spec.required
            ok_name = all(self.ref_contains(r, n) for r in spec.names)
            ref = mk_sand(*(la.schema_for(n) for la in spec.layers)) if spec.layers else TRUE
            v = self.value_nt(ref) if ok_name else None
            if v is None:
                if req:
                    return False
                continue
            kv = f"{name}@kv{len(members)}"
            self.b.rule(kv, (self._key_lexeme(n), colon, v))
            members.append((n, kv, req))
        extras = self._extra_members(name, spec, declared, ptr)
        return self._member_rules(name, spec, members, extras, ptr, free_required)

    def _extra_members(self, name: str, spec: ObjectSpec, declared: list[str], ptr: str) -> list[str]:
        """kv nonterminals for keys other than the declared ones, one per key region."""
        colon = self.punct(":")
        patterns: list[str] = []
        for la in spec.layers:
            for p, _ in la.patterns:
                if p not in patterns:
                    patterns.append(p)
        if len(patterns) > MAX_PATTERN_PROPERTIES:
            self.refuse(f"more than {MAX_PATTERN_PROPERTIES} patternProperties on one object", ptr, "patternProperties")
            patterns = patterns[:MAX_PATTERN_PROPERTIES]
        name_langs = []
        for r in spec.names:
            f = self.facets(r)
            name_langs.append(f.strs if f.strs is not None else NOTHING)
        out = []
        not_declared, exact = _not_in_set(declared)
        if not exact:
            self.note("many declared properties: other keys sharing a long prefix with them are not allowed", ptr)
        for size in range(len(patterns) + 1):
            for chosen in combinations(patterns, size):
                refs = []
                for la in spec.layers:
                    hit = [r for p, r in la.patterns if p in chosen]
                    refs.extend(hit if hit else [la.additional])
                ref = mk_sand(*refs)
                if is_false(ref):
                    continue
                lang_parts = [not_declared] + name_langs
                try:
                    lang_parts += [pattern_node(p) for p in chosen]
                    lang_parts += [mk_not(pattern_node(p)) for p in patterns if p not in chosen]
                except ConstraintError as e:
                    self.refuse(e.message, ptr, "patternProperties")
                    continue
                cache_key = (tuple(declared), chosen, tuple(patterns), tuple(r.key for r in spec.names))
                key_term = self._extra_keys.get(cache_key)
                if key_term is None:
                    try:
                        key_node = json_string_node(mk_and(*lang_parts), max_states=600, max_size=8000)
                    except CompileBudgetExceeded as e:
                        self.refuse(f"key constraints too complex: {e.message}", ptr, "patternProperties")
                        continue
                    key_term = self._extra_keys[cache_key] = "" if key_node == NOTHING else self.term(key_node, "key")
                if not key_term:
                    continue
                v = self.value_nt(ref)
                if v is None:
                    continue
                kv = f"{name}@x{len(out)}"
                self.b.rule(kv, (key_term, colon, v))
                out.append(kv)
        return out

    def _member_rules(
        self, name: str, spec: ObjectSpec, members: list, extras: list, ptr: str, free_required: bool = False
    ) -> bool:
        mn, mx = spec.min_props, spec.max_props
        n_req = sum(1 for m in members if m[2])
        if mx is not None and n_req > mx:
            return False
        if not extras and mn > len(members):
            return False
        if mn <= n_req:
            mn = 0  # implied by the required members: no need to count for it
        # count cap: counts beyond K behave the same
        counting = mn > 0 or mx is not None
        K = (mx if mx is not None else mn) if counting else 1
        extra_nt = None
        if extras:
            extra_nt = f"{name}@extra"
            for kv in extras:
                self.b.rule(extra_nt, (kv,))
        tracks, free = self._order_plan(members, K, ptr, free_required)
        if len(tracks) == 1 and not free and (len(members) + 1) * (K + 1) * 2 > MAX_COUNT_STATES:
            self.refuse("minProperties/maxProperties too large to unroll", ptr, "maxProperties")
            K, mn, mx = 1, 0, None
        self._order_rules(name, members, tracks, free, extra_nt, K, mn, mx)
        self._check_size()
        return True

    def _order_plan(self, members: list, K: int, ptr: str, free_required: bool = False) -> tuple[list, list]:
        """Which declared members keep their schema order (``tracks``: lists of member
        indices, each in schema order, interleaved freely) and which may come in any
        order (``free``). Every declared key comes at most once whatever the plan.

        An object has no order. By default required members keep their schema order (so
        a closed object's next required key can be forced: jump-forward) and optional
        ones may come anywhere among them: in any order while they are few, else in
        schema order among themselves. With ``any_order``, or for one of several object
        alternatives (``free_required``: the required keys of ``oneOf``/``anyOf``
        branches, often written first), the required ones may come in any order too:
        the first plan within the budget wins among all members in any order; required
        ones in any order and optional ones in schema order among themselves; then the
        default plans. Past every budget: plain schema order. Plans that keep some order
        are noted in ``warnings``; see docs/json_schema_objects.md.
        """
        n = len(members)
        req = [i for i, m in enumerate(members) if m[2]]
        opt = [i for i, m in enumerate(members) if not m[2]]
        budget = MAX_ANY_ORDER_RULES if self.opts.any_order else MAX_DEFAULT_ORDER_RULES
        plans = [([req], opt), ([req, opt], [])]
        if self.opts.any_order or free_required:
            plans = [([], list(range(n))), ([opt], req)] + plans
        for tracks, free in plans:
            tracks = [t for t in tracks if t]
            if _order_cost(tracks, free, K) <= budget:
                kept = [what for what, group in (("required", req), ("optional", opt)) if group in tracks and len(group) > 1]
                if kept and (self.opts.any_order or free_required or kept != ["required"]):
                    self.note(f"{n} properties are too many to track in any order: {' and '.join(kept)} ones "
                              "keep their schema order among themselves", ptr)
                return tracks, free
        self.note(f"{n} properties are too many for free order: schema order is used", ptr)
        return ([list(range(n))] if n else []), []

    def _order_rules(self, name, members, tracks, free, extra_nt, K, mn, mx) -> None:
        """The members of one object as a state machine over (position in each track, set of
        free members used, members so far ``c`` capped at ``K``); see ``_order_plan``.

        S(state): other keys (``extra_nt``) may follow, or any free member not used yet, or
        the next member of a track through T; ``}`` once every required member is in and
        ``c >= mn``. T(t, state): the member at track t's position, or (if it is optional)
        T at the next position. Each key sequence has one derivation.
        """
        lbrace, rbrace, comma = self.punct("{"), self.punct("}"), self.punct(",")
        req_free = sum(1 << b for b, j in enumerate(free) if members[j][2])
        # tail_ok[t][p]: the members of track t from position p on are all optional
        tail_ok = []
        for track in tracks:
            ok = [True] * (len(track) + 1)
            for p in range(len(track) - 1, -1, -1):
                ok[p] = ok[p + 1] and not members[track[p]][2]
            tail_ok.append(ok)

        def key(pos, used, c):
            return ".".join(map(str, pos)) + f"u{used}c{c}"

        made: set = set()
        chains: set = set()
        todo = [((0,) * len(tracks), 0, 0)]
        while todo:
            state = todo.pop()
            if state in made:
                continue
            made.add(state)
            pos, used, c = state
            s = f"{name}@S{key(*state)}"
            sep = (comma,) if c > 0 else ()
            nc = min(c + 1, K)
            if c >= mn and used & req_free == req_free and all(tail_ok[t][p] for t, p in enumerate(pos)):
                self.b.rule(s, (rbrace,))
            if mx is not None and c >= mx:
                continue
            if extra_nt is not None:
                self.b.rule(s, sep + (extra_nt, f"{name}@S{key(pos, used, nc)}"))
                todo.append((pos, used, nc))
            for b, j in enumerate(free):
                if not used >> b & 1:
                    self.b.rule(s, sep + (members[j][1], f"{name}@S{key(pos, used | 1 << b, nc)}"))
                    todo.append((pos, used | 1 << b, nc))
            for t, track in enumerate(tracks):
                p = pos[t]
                if p < len(track):
                    self.b.rule(s, (f"{name}@T{t}.{key(pos, used, c)}",))
                while p < len(track):
                    here = pos[:t] + (p,) + pos[t + 1:]
                    tname = f"{name}@T{t}.{key(here, used, c)}"
                    if tname in chains:
                        break
                    chains.add(tname)
                    nxt = pos[:t] + (p + 1,) + pos[t + 1:]
                    self.b.rule(tname, sep + (members[track[p]][1], f"{name}@S{key(nxt, used, nc)}"))
                    todo.append((nxt, used, nc))
                    if members[track[p]][2] or p + 1 == len(track):
                        break
                    self.b.rule(tname, (f"{name}@T{t}.{key(nxt, used, c)}",))
                    p += 1
        self.b.rule(name, (lbrace, f"{name}@S{key((0,) * len(tracks), 0, 0)}"))

    # -- exact values (enum/const arrays and objects) -------------------------------
    def exact_nt(self, value) -> str:
        t = _json_type(value)
        if t == "null":
            return self.b.literal("null")
        if t == "boolean":
            return self.b.literal("true" if value else "false")
        if t == "number":
            d = to_decimal(value)
            return self.term(number_regex(NumPiece(d, d)), "number")
        if t == "string":
            return self.term(self.string_node(literal_string(value), ""), "string")
        key = ("exact", json.dumps(value, sort_keys=True))
        if key in self.value_memo:
            return self.value_memo[key]
        name = self.b.fresh("const")
        self.value_memo[key] = name
        if t == "array":
            lb, rb, comma = self.punct("["), self.punct("]"), self.punct(",")
            rhs = [lb]
            for i, v in enumerate(value):
                if i:
                    rhs.append(comma)
                rhs.append(self.exact_nt(v))
            rhs.append(rb)
            self.b.rule(name, tuple(rhs))
            return name
        colon = self.punct(":")
        members = []
        for i, (k, v) in enumerate(value.items()):
            kv = f"{name}@kv{i}"
            self.b.rule(kv, (self._key_lexeme(k), colon, self.exact_nt(v)))
            members.append((k, kv, True))
        tracks, free = self._order_plan(members, 1, "")
        self._order_rules(name, members, tracks, free, None, 1, 0, None)
        return name

    # -- entry --------------------------------------------------------------------------
    def build(self) -> Grammar:
        meta = self.root.get("$schema") if isinstance(self.root, dict) else None
        if isinstance(meta, str) and "json-schema.org" not in meta:
            self.refuse(f"unknown meta-schema {meta!r}: its vocabularies cannot be checked", "/$schema", "$schema")
        root = self.root_sub()
        start = self.value_nt(root)
        if start is None:
            raise ConstraintError("the schema matches no JSON value", "#")
        # states of the unrolled counters may have no rules (dead ends): prune, then validate
        return prune(
            Grammar(start, self.b.rules, self.b.terminals, [], "json_schema"),
            refusal=ConstraintError("the schema matches no JSON value", "#"),
        )


def _order_cost(tracks: list, free: list, K: int) -> int:
    """About how many rules ``_order_rules`` makes for this plan."""
    states = 2 ** len(free) * (K + 1)
    for t in tracks:
        states *= len(t) + 1
    return states * (2 * len(tracks) + len(free) + 2)


def _has_bool(e) -> bool:
    from .json_formats import has_boolean_ops

    return has_boolean_ops(e)


# Alternations of big string tries that become one lexeme per item (the automaton
# compiler budgets the size of one lexeme; the lexer runs the pieces in parallel).
_CHUNKED: dict[int, Node] = {}
ENUM_CHUNK_CHARS = 30_000


@lru_cache(maxsize=1024)
def _string_set(strings: tuple) -> Node:
    node = string_set(strings)
    if isinstance(node, LiteralAlt):  # one trie lexeme, however large: no chunks needed
        return node
    chunks, cur, size = [], [], 0
    for t in strings:
        cur.append(t)
        size += len(t) + 2
        if size > ENUM_CHUNK_CHARS:
            chunks.append(cur)
            cur, size = [], 0
    if cur:
        chunks.append(cur)
    if len(chunks) == 1:
        return node
    node = Alt(tuple(string_set(c) for c in chunks))
    _CHUNKED[id(node)] = node
    return node


MAX_KEY_TRIE_NODES = 300  # each costs ~300 automaton states once JSON-escaped


def _not_in_set(names) -> tuple[Node, bool]:
    return _not_in_set_cached(tuple(names))


@lru_cache(maxsize=1024)
def _not_in_set_cached(names: tuple) -> tuple[Node, bool]:
    """Decoded strings other than ``names`` (a complemented trie, built directly).

    Returns ``(node, exact)``. The trie is cut at the depth where it would exceed
    ``MAX_KEY_TRIE_NODES``: below the cut every string is excluded, which is sound
    (other keys that share a long prefix with a declared name are refused).
    """
    if not names:
        return ANY_STRING, True
    trie: dict = {}
    for t in names:
        node = trie
        for ch in t:
            node = node.setdefault(ch, {})
        node[""] = True
    # deepest level that keeps the trie within budget
    level, count, depth = [trie], 1, 0
    while level and depth < 60:
        nxt = [sub for nd in level for ch, sub in nd.items() if ch != ""]
        if count + len(nxt) > MAX_KEY_TRIE_NODES:
            break
        count += len(nxt)
        level = nxt
        depth += 1
    cut = depth if level and any(len(nd) > ("" in nd) for nd in level) else None
    exact = cut is None

    def build(node: dict, d: int) -> Node:
        if cut is not None and d >= cut:
            return NOTHING
        kids = sorted(ch for ch in node if ch != "")
        parts = []
        if "" not in node:
            parts.append(seq())  # this prefix itself is not a name
        used = tuple((ord(c), ord(c)) for c in kids)
        others = Chars(_complement_ranges(used))
        if others.ranges:
            parts.append(seq(others, ANY_STRING))
        for ch in kids:
            rest = build(node[ch], d + 1)
            if rest != NOTHING:
                parts.append(seq(literal(ch), rest))
        return alt(*parts) if parts else NOTHING

    return build(trie, 0), exact


def _complement_ranges(used: tuple) -> tuple:
    from .regex_ast import negate, normalize_ranges

    return negate(Chars(normalize_ranges(used))).ranges


def json_schema_grammar(
    schema: dict | str | bool,
    *,
    any_order: bool = False,
    lenient: bool | Iterable[str] = False,
    whitespace: str = "flexible",
    max_whitespace: int = 8,
    warnings: list | None = None,
) -> Grammar:
    """The grammar IR of the JSON texts valid against ``schema``.

    ``schema`` is a dict, a bool, or JSON text. ``any_order`` lets declared properties
    come in any order (each at most once; falls back to schema order, with a note in
    ``warnings``, when an object has too many properties for that); by default required
    properties follow the schema's order (except in one of several object alternatives,
    e.g. ``oneOf`` branches requiring different keys, where they are free too) and
    optional ones may come anywhere among them (in any order while they are few, else in
    schema order among themselves), other keys allowed between them
    (docs/json_schema_objects.md). A declared key never comes twice; a key that only
    ``additionalProperties``/``patternProperties`` allow can (no context-free grammar
    can track an unbounded set of names; llguidance and XGrammar neither). ``whitespace="compact"`` accepts exactly ``json.dumps``' default separators
    (``", "`` and ``": "``, no newlines); ``"flexible"`` accepts up to
    ``max_whitespace`` spaces/tabs, or one newline plus up to ``4*max_whitespace``
    spaces/tabs, after ``{ [ , :`` and before ``} ] , :`` (``json.dumps(indent=2)``
    output up to depth 16); a root ``"x-guidance": {"whitespace_flexible": false}`` (llguidance's
    spelling) asks for compact from inside the schema. ``lenient=True`` turns refusals into warnings (appended to
    ``warnings`` and issued with ``warnings.warn``), dropping the keyword (the output may
    then violate it, as llguidance's ``lenient``); ``lenient`` may instead name the keywords
    to relax, e.g. ``lenient=["uniqueItems"]`` (arrays of objects or free strings cannot be
    kept unique by a grammar); otherwise an unsupported keyword
    raises ``ConstraintError`` with its JSON pointer. Budgets raise
    ``CompileBudgetExceeded``.
    """
    if whitespace not in ("flexible", "compact"):
        raise ConstraintError(f"whitespace must be 'flexible' or 'compact', not {whitespace!r}")
    if not isinstance(max_whitespace, int) or max_whitespace < 0:
        raise ConstraintError("max_whitespace must be a non-negative integer")
    if isinstance(schema, str):
        if len(schema) > MAX_SCHEMA_BYTES:
            raise CompileBudgetExceeded(f"schema text is larger than {MAX_SCHEMA_BYTES} bytes")
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"schema is not valid JSON: {e.msg}", f"line {e.lineno}, column {e.colno}") from None
    if not isinstance(schema, dict | bool):
        raise ConstraintError(f"a schema must be an object or a boolean, not {type(schema).__name__}", "#")
    if isinstance(schema, dict) and len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise CompileBudgetExceeded(f"schema is larger than {MAX_SCHEMA_BYTES} bytes")
    whitespace = _schema_whitespace(schema, whitespace)
    opts = Options(any_order, _lenient_option(lenient), whitespace, max_whitespace, warnings)
    # millions of small immutable nodes: the cyclic GC would rescan them over and over
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return JsonSchemaCompiler(schema, opts).build()
    finally:
        if was_enabled:
            gc.enable()


def _lenient_option(lenient) -> bool | frozenset:
    """``lenient`` as True/False or a frozenset of keyword names."""
    if isinstance(lenient, bool):
        return lenient
    if isinstance(lenient, str) or not isinstance(lenient, Iterable) or not all(isinstance(k, str) for k in lenient):
        raise ConstraintError("lenient must be true/false or a list of keyword names, e.g. ['uniqueItems']")
    return frozenset(lenient)


def _schema_whitespace(schema: dict | bool, default: str) -> str:
    """The whitespace style a schema asks for itself, llguidance's way:
    ``"x-guidance": {"whitespace_flexible": false}`` at the root means compact.

    It lets a schema travel with its style through APIs that take only a schema (a
    program's ``gen(json_schema=...)``, an OpenAI ``response_format``).
    """
    ext = schema.get("x-guidance") if isinstance(schema, dict) else None
    if not isinstance(ext, dict) or "whitespace_flexible" not in ext:
        return default
    flexible = ext["whitespace_flexible"]
    if not isinstance(flexible, bool):
        raise ConstraintError("whitespace_flexible must be true or false", "#/x-guidance/whitespace_flexible")
    return "flexible" if flexible else "compact"
