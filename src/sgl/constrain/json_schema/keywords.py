"""Keywords to facets: type-specific keywords, applicators (allOf/anyOf/oneOf/not/if), dependencies, keyword checks."""

from __future__ import annotations

import re
from contextlib import contextmanager
from decimal import Decimal

from ..automata.derivatives import ANY_CHAR as _ANY_CHAR
from ..automata.derivatives import ANY_STRING, mk_and
from ..automata.ranges import NumPiece, intersect_pieces, to_decimal
from ..errors import ConstraintError
from ..json_formats import APPROXIMATE_FORMATS, format_node
from ..json_strings import pattern_node
from ..regex_ast import Repeat
from .common import (
    KEYWORD_SHAPES,
    MAX_ONE_OF_EXACT,
    TYPES,
    _compiled_pattern,
    _is_num,
    _ptr_escape,
    _Refused,
)
from .facets import ArraySpec, Facets, Layer, ObjectSpec, any_facets
from .refs import FALSE, TRUE, SAnd, SNot, Sub, is_true

_NO_CUT = 1 << 30


class _Cycle(ConstraintError):
    """A schema that refers to itself without going through a property or item."""

    def __init__(self, key, monotone: bool, ptr: str) -> None:
        super().__init__("circular $ref: a schema refers to itself without going through a property or item",
                         ptr, keyword="$ref")
        self.key, self.monotone = key, monotone


def _at(ptr: str, kw: str) -> str:
    """The pointer of keyword ``kw`` of the schema at ``ptr`` (spelled for a message only:
    every keyword of every subschema is checked, and spelling each place cost more than
    the checks)."""
    return f"{ptr}/{_ptr_escape(kw)}"


# the keywords ``sub_facets`` reads inside ``negated()`` (oneOf, not, if, dependencies)
_NEGATING = frozenset(("oneOf", "not", "if", "dependentRequired", "dependentSchemas", "dependencies"))


# every keyword check_keywords checks (the others pass unchecked: skipped at once)
CHECKED_KEYWORDS = frozenset(KEYWORD_SHAPES)


class KeywordFacets:
    """The facets of a schema from its keywords (a mixin of ``JsonSchemaCompiler``)."""

    # -- facets ------------------------------------------------------------------
    def facets(self, ref) -> Facets:
        key = ref.key
        got = self.facets_memo.get(key)
        if got is not None:
            return got
        if key in self.in_progress:
            raise _Cycle(key, self.in_progress[key] == self.negations, getattr(ref, "ptr", "#") or "#")
        depth = len(self.in_progress)
        self.in_progress[key] = self.negations
        try:
            self.check_time()
            if isinstance(ref, SAnd):
                f = self.facets(ref.items[0])
                for r in ref.items[1:]:
                    f = self.intersect(f, self.facets(r), getattr(r, "ptr", ""))
            elif isinstance(ref, SNot):
                with self.negated():
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
            del self.in_progress[key]
        # facets computed with a cycle cut below an outer schema are that schema's
        # first iterate, not this one's: only the cycle's head keeps them
        if depth <= self.cut_at:
            self.cut_at = _NO_CUT
            self.facets_memo[key] = f
        return f

    @contextmanager
    def negated(self):
        """Around subschemas that are not monotone in the outer ones (not, oneOf, if):
        a cycle through them has no least fixpoint, and stays refused."""
        self.negations += 1
        try:
            yield
        finally:
            self.negations -= 1

    def any_of_branch(self, ref) -> Facets:
        """A branch of anyOf. A branch that comes back to a schema being computed, through
        allOf/anyOf/$ref only, adds nothing to it: ``X = A ∪ (B ∩ X)`` has the least
        fixpoint ``A``, so the branch counts as empty (what a validator that terminates
        accepts); every other circular $ref is refused."""
        try:
            return self.facets(ref)
        except _Cycle as e:
            if not e.monotone or e.key not in self.in_progress:
                raise
            self.cut_at = min(self.cut_at, list(self.in_progress).index(e.key))
            return Facets()

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
            branches = [self.any_of_branch(self.sub(sch, s, f"{p}/anyOf/{i}")) for i, sch in enumerate(node["anyOf"])]
            f = self.intersect(f, self.union(branches), p)
        if _NEGATING.isdisjoint(node):
            return f  # most subschemas: no keyword below, and no context to enter
        with self.negated():
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

    # -- keyword checks --------------------------------------------------------------
    def check_keywords(self, s: Sub) -> None:
        node, p = s.node, s.ptr
        for kw, val in node.items():
            shape = KEYWORD_SHAPES.get(kw)
            if shape is None:
                continue  # (annotations: description, title, default, examples, ...)
            if not shape[0](val, self.draft):
                must = shape[1]
                if kw == "items" and isinstance(val, list):
                    must = "be a schema or an array of schemas"
                raise self.malformed(f"{kw} must {must}", _at(p, kw), kw)
            if kw == "patternProperties":
                for pat in val:
                    try:
                        _compiled_pattern(pat)
                    except re.error as e:
                        raise ConstraintError(f"invalid regex {pat!r}: {e}", _at(p, kw), keyword=kw) from None

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
        if "array" in types and (spec := self.array_spec(s)) is not None:
            f.arrays = (spec,)
        if "object" in types and (spec := self.object_spec(s)) is not None:
            f.objects = (spec,)
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
        v = node.get("exclusiveMinimum")
        if _is_num(v) and (lo is None or to_decimal(v) >= lo):
            lo, lo_open = to_decimal(v), True
        v = node.get("exclusiveMaximum")
        if _is_num(v) and (hi is None or to_decimal(v) <= hi):
            hi, hi_open = to_decimal(v), True
        piece = NumPiece(lo, hi, lo_open, hi_open, "scale" if integer else "any", 0)
        if "multipleOf" in node:
            m = to_decimal(node["multipleOf"]).normalize()
            _, digs, exp = m.as_tuple()
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
            seen = self._evaluated_here(s, "items", "contains")
            if seen is not None:
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
        member = self.member_sub
        props = tuple((k, member(v, s, "properties", k)) for k, v in node.get("properties", {}).items())
        patterns = tuple((k, member(v, s, "patternProperties", k)) for k, v in node.get("patternProperties", {}).items())
        additional = TRUE
        if "additionalProperties" in node:
            additional = self.sub(node["additionalProperties"], s, f"{p}/additionalProperties")
        layers = [Layer(props, patterns, additional)]
        if "unevaluatedProperties" in node and "additionalProperties" not in node:
            un = self.sub(node["unevaluatedProperties"], s, f"{p}/unevaluatedProperties")
            seen = None if is_true(un) else self._evaluated_here(s, "properties", "dependentSchemas")
            if seen is not None:
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

    def _evaluated_here(self, s: Sub, what: str, also: str):
        """``_evaluated`` for ``unevaluatedItems``/``unevaluatedProperties`` (``what``:
        "items"/"properties") next to it; None when all is evaluated or after ``refuse``
        (``also``: the other applicator named in the message)."""
        seen = self._evaluated(s, what)
        kw = f"unevaluated{what.capitalize()}"
        if seen is None:
            self.refuse(f"{kw} is only supported next to allOf/$ref (not anyOf/oneOf/not/if/{also})", f"{s.ptr}/{kw}", kw)
        return None if seen is True else seen

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
        deps = []  # (name, names it requires, schema it applies or None, pointer)
        for kw in ("dependentRequired", "dependentSchemas", "dependencies"):
            for k, v in node.get(kw, {}).items():
                if isinstance(v, list):  # (every value of dependentRequired; schemas in dependentSchemas)
                    deps.append((k, list(v), None, f"{p}/{kw}"))
                else:
                    deps.append((k, [], self.sub(v, s, f"{p}/{kw}/{_ptr_escape(k)}"), f"{p}/{kw}"))
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
