"""Facets (the value set of a schema, by JSON type) and their algebra: union, intersection, complement."""

from __future__ import annotations

from dataclasses import dataclass

from ..automata.derivatives import ANY_STRING, materialize, mk_alt, mk_and, mk_not
from ..automata.ranges import NumPiece, complement_piece, intersect_pieces
from ..errors import CompileBudgetExceeded, ConstraintError
from ..regex_ast import NOTHING
from .common import MAX_UNION, _pattern_search, _Refused, json_equal
from .refs import FALSE, TRUE, is_false, is_true, mk_sand, mk_snot

# ---------------------------------------------------------------------------
# Facets: the value set of a schema, by JSON type


def _cached_hash(spec) -> int:
    """The hash the frozen dataclass would compute (of its fields' tuple), kept on the
    object: specs are memo keys (``value_memo``: ``("object", spec)``), hashed on every
    lookup, and each hash walked every member's ``Sub`` (a Python ``__hash__`` call each)."""
    got = spec.__dict__.get("_hash")
    if got is None:
        got = hash(tuple(map(spec.__dict__.__getitem__, spec.__dataclass_fields__)))
        object.__setattr__(spec, "_hash", got)
    return got


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

    __hash__ = _cached_hash

    def schema_for(self, name: str):
        """The schema of member ``name`` (``mk_sand`` of what applies, else ``additional``)."""
        if not self.patterns:  # (most layers)
            got = self._by_name.get(name)
            return self.additional if got is None else mk_sand(*got)
        refs = list(self._by_name.get(name, ()))
        refs += [r for p, r in self.patterns if _pattern_search(p, name)]
        return mk_sand(*refs) if refs else self.additional

    def trivial(self) -> bool:
        return all(is_true(r) for _, r in self.props + self.patterns) and is_true(self.additional)


@dataclass(frozen=True)
class ObjectSpec:
    layers: tuple = ()
    required: tuple = ()  # names, in order of appearance
    min_props: int = 0
    max_props: int | None = None
    names: tuple = ()  # propertyNames schemas (all must hold)
    __hash__ = _cached_hash

    def trivial(self) -> bool:
        return (all(la.trivial() for la in self.layers) and not self.required and self.min_props == 0
                and self.max_props is None and all(map(is_true, self.names)))


@dataclass(frozen=True)
class ArraySpec:
    prefix: tuple = ()
    items: object = TRUE
    min_items: int = 0
    max_items: int | None = None
    contains: tuple = ()  # ((ref, min, max|None), ...)
    unique: bool = False
    __hash__ = _cached_hash

    def elem(self, i: int):
        return self.prefix[i] if i < len(self.prefix) else self.items

    def trivial(self) -> bool:
        return (all(map(is_true, self.prefix)) and is_true(self.items) and self.min_items == 0
                and self.max_items is None and not self.contains and not self.unique)


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
        return (not (self.null or self.bools or self.nums or self.arrays or self.objects or self.values)
                and (self.strs is None or self.strs == NOTHING))


def any_facets() -> Facets:
    return Facets(True, frozenset({True, False}), (NumPiece(),), ANY_STRING, (ArraySpec(),), (ObjectSpec(),))


# _strings_disjoint's answers by the intersection (a pure function of it, automaton
# built within fixed budgets): oneOf/anyOf branches and required members ask about the
# same few string languages again and again, within a schema and across schemas
_DISJOINT: dict = {}
_DISJOINT_SIZE = 4096


class FacetAlgebra:
    """Union, intersection, disjointness and complement of facets (a mixin of ``JsonSchemaCompiler``)."""

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
        if any(self.facets_contains(b, x) for x in a.values) or any(self.facets_contains(a, y) for y in b.values):
            return False
        if any((m := self.merge_arrays(x, y)) is not None and not self._array_impossible(m)
               for x in a.arrays for y in b.arrays):
            return False
        return not any((m := self.merge_objects(x, y)) is not None and not self._object_impossible(m)
                       for x in a.objects for y in b.objects)

    def _strings_disjoint(self, x, y) -> bool:
        both = mk_and(x, y)
        got = _DISJOINT.get(both)
        if got is None:
            try:
                got = materialize(both, max_states=500, max_size=5000) == NOTHING
            except CompileBudgetExceeded as e:
                if e.budget == "seconds":
                    raise  # out of time: an answer kept here would depend on the clock
                if isinstance(e.__context__, RecursionError):
                    return False  # depends on the stack here: not kept
                got = False
            if len(_DISJOINT) >= _DISJOINT_SIZE:
                _DISJOINT.clear()
            _DISJOINT[both] = got
        return got

    def _array_impossible(self, s: ArraySpec) -> bool:
        return any(self._ref_empty(s.elem(i)) for i in range(min(s.min_items, len(s.prefix) + 1)))

    def _object_impossible(self, s: ObjectSpec) -> bool:
        return any(self._ref_empty(mk_sand(*(la.schema_for(name) for la in s.layers))) for name in s.required)

    def _ref_empty(self, ref) -> bool:
        if is_false(ref):
            return True
        try:
            f = self.facets(ref)
        except ConstraintError:
            return False
        if f.strs is not None and f.strs != NOTHING:
            return not (f.null or f.bools or f.nums or f.values) and self._strings_disjoint(f.strs, ANY_STRING)
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
