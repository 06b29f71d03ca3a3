"""Concrete JSON values: ``enum``/``const`` facets, membership of a value in a schema, exact-value rules."""

from __future__ import annotations

import json
from functools import lru_cache
from urllib.parse import quote

from ..automata.compiler import LiteralAlt
from ..automata.ranges import NumPiece, number_regex, to_decimal
from ..json_strings import literal_string, string_set
from ..regex_ast import Alt, Node
from .common import (
    _PTR_SAFE,
    ANNOTATIONS,
    DEFAULT_BASE,
    SCALAR_KEYWORDS,
    _json_type,
    expr_matches,
    json_equal,
)
from .facets import ArraySpec, Facets, ObjectSpec
from .refs import SAnd, SNot, Sub


class ValueSets:
    """``enum``/``const``, validation of concrete values, and rules for exact values (a mixin of ``JsonSchemaCompiler``)."""

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
            return f.strs is not None and expr_matches(f.strs, value)
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
        f.nums = tuple(NumPiece(d, d) for d in sorted(set(numbers)))
        f.values = tuple(others)
        return f

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
                rhs += [comma, self.exact_nt(v)] if i else [self.exact_nt(v)]
            self.b.rule(name, (*rhs, rb))
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
