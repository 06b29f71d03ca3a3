"""Grammar emission for arrays: counted items, prefixItems, contains, uniqueItems."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

from ..counters import CountedRepeat
from .common import MAX_COUNT_STATES, MAX_UNIQUE_VALUES, json_equal
from .emit_scalars import is_counted_string
from .facets import ArraySpec
from .refs import Sub, mk_sand, mk_snot
from .values import _CHUNKED


class ArrayEmitter:
    """Array rules (a mixin of ``JsonSchemaCompiler``)."""

    # -- arrays -------------------------------------------------------------------------
    def array_rules(self, name: str, spec: ArraySpec, ptr: str) -> bool:
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
        if (L + 1) * (K + 1) > MAX_COUNT_STATES and c_ref is None and P < MAX_COUNT_STATES:
            return self._counted_array(name, spec)
        if (L + 1) * (K + 1) > MAX_COUNT_STATES:
            self.refuse("minItems/maxItems/prefixItems/contains too large to unroll", ptr, "maxItems")
            L = min(L, P)
            mx = None
            mn = min(mn, L)
        if c_ref is not None and self._counted_strings_compete(spec, c_ref):
            # two element nonterminals at one position: a quote lexeme next to another
            # string lexeme would make greedy lexing refuse valid strings
            self.refuse("a string length over the lexeme budget is not supported inside 'contains'", ptr, "contains")
            return False
        elems: dict = {}

        def elem(i: int, counted: bool | None):
            """Nonterminal of element i: counted (matches contains), uncounted, or plain (None)."""
            k = (min(i, L if mx is None else i), counted)
            if k in elems:
                return elems[k]
            ref = spec.elem(i)
            if counted is not None:
                ref = mk_sand(ref, c_ref if counted else mk_snot(c_ref))
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
            if c_ref is None or (c_max is None and c >= c_min):  # no contains, or satisfied for good
                options = [(elem(i, None), c)]
            else:
                options = [(elem(i, True), min(c + 1, K)), (elem(i, False if c_max is not None else None), c)]
            for nt, nc in options:
                if nt is None or (c_max is not None and nc > c_max):
                    continue
                self.b.rule(sname, sep + (nt, state(ni, nc)))
                todo.append((ni, nc))
        self.b.rule(name, (lb, state(0, 0)))
        self._check_size()
        return True

    def _counted_strings_compete(self, spec: ArraySpec, c_ref) -> bool:
        """Would an element matching or not matching ``contains`` be a counted string?"""
        for base in {*spec.prefix, spec.items}:
            for ref in (mk_sand(base, c_ref), mk_sand(base, mk_snot(c_ref))):
                f = self.facets(ref)
                pieces = () if f.strs is None else f.strs.items if id(f.strs) in _CHUNKED else (f.strs,)
                if any(is_counted_string(p) for p in pieces):
                    return True
        return False

    def _counted_array(self, name: str, spec: ArraySpec) -> bool:
        """minItems/maxItems too large to unroll (no ``contains``): the prefix items one by
        one, then ``", " item`` counted in binary (``CountedRepeat``), exact for any count."""
        lb, rb, comma = self.punct("["), self.punct("]"), self.punct(",")
        P, mn, mx = len(spec.prefix), spec.min_items, spec.max_items
        item = self.value_nt(spec.items)
        for i in range(P):  # S_i: i prefix elements written
            here = f"{name}@{i}"
            if i >= mn:
                self.b.rule(here, (rb,))
            nt = self.value_nt(spec.prefix[i])
            if nt is not None and (mx is None or i < mx):
                self.b.rule(here, (() if i == 0 else (comma,)) + (nt, f"{name}@{i + 1}"))
        tail = f"{name}@{P}"
        lo, hi = max(mn - P, 0), None if mx is None else mx - P
        some = item is not None and hi != 0  # items after the prefix
        if lo == 0 and (not some or P == 0):
            self.b.rule(tail, (rb,))
        if some:
            rest = CountedRepeat(self.b.rule, name, (comma, item))
            if P == 0:  # the first item has no comma before it
                self.b.rule(tail, (item, *rest.between(max(lo - 1, 0), None if hi is None else hi - 1), rb))
            else:
                self.b.rule(tail, (*rest.between(lo, hi), rb))
        self.b.rule(name, (lb, f"{name}@0"))
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
