"""Grammar emission for objects: members, other keys, and key-order planning (no key repeated)."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from itertools import combinations

from ..automata.derivatives import ANY_STRING, in_chars, mk_and, mk_not
from ..errors import CompileBudgetExceeded, ConstraintError
from ..json_keys import KeyNotIn, key_trie, not_in_set
from ..json_strings import json_string_node, literal_string, pattern_node
from ..regex_ast import NOTHING, Chars, Node, Repeat, alt, literal, negate, normalize_ranges, seq
from .common import (
    MAX_ANY_ORDER_RULES,
    MAX_COUNT_STATES,
    MAX_DEFAULT_ORDER_RULES,
    MAX_PATTERN_PROPERTIES,
    MIN_ORDER_RULES,
)
from .facets import ObjectSpec
from .refs import TRUE, is_false, mk_sand


class ObjectEmitter:
    """Object rules (a mixin of ``JsonSchemaCompiler``)."""

    # -- objects --------------------------------------------------------------------------
    def _key_lexeme(self, name: str) -> str:
        got = self._keys.get(name)  # every name once (members, then their loose keys)
        if got is None:
            # printable ASCII but for the quote, backslash and slash (one JSON spelling): a literal
            if name.isascii() and name.isprintable() and not ('"' in name or "\\" in name or "/" in name):
                got = self._keys[name] = self.b.literal(json.dumps(name))
            else:
                got = self._keys[name] = self.term(json_string_node(literal_string(name)), "key")
            self.string_keys.add(got)
        return got

    def object_rules(self, name: str, spec: ObjectSpec, ptr: str) -> bool:
        colon = self.punct(":")
        # declared names: properties of every layer, then required-only names
        declared = list(dict.fromkeys([n for la in spec.layers for n, _ in la.props] + list(spec.required)))
        members = []  # (name, kv_nonterminal, required)
        layers, names = spec.layers, spec.names
        # one layer (most objects): its schema_for is already what mk_sand makes of it
        one = layers[0] if len(layers) == 1 else None
        for n in declared:
            req = n in spec.required
            ok_name = not names or all(self.ref_contains(r, n) for r in names)
            if one is not None:
                ref = one.schema_for(n)
            else:
                ref = mk_sand(*(la.schema_for(n) for la in layers)) if layers else TRUE
            v = self.value_nt(ref) if ok_name else None
            if v is None:
                if req:
                    return False
                continue
            kv = f"{name}@kv{len(members)}"
            self.b.rule(kv, (self._key_lexeme(n), colon, v))
            members.append((n, kv, req))
        extras = self._extra_members(name, spec, declared, ptr)
        return self._member_rules(name, spec, members, extras, ptr)

    def _extra_members(self, name: str, spec: ObjectSpec, declared: list[str], ptr: str) -> list[str]:
        """kv nonterminals for keys other than the declared ones, one per key region."""
        colon = self.punct(":")
        patterns = list(dict.fromkeys(p for la in spec.layers for p, _ in la.patterns))
        regions = _prefix_regions(patterns) if len(patterns) > MAX_PATTERN_PROPERTIES else None
        if len(patterns) > MAX_PATTERN_PROPERTIES and regions is None:
            self.refuse(f"more than {MAX_PATTERN_PROPERTIES} patternProperties on one object "
                        "(other than literal prefixes ^abc)", ptr, "patternProperties")
            patterns = patterns[:MAX_PATTERN_PROPERTIES]
        name_langs = [NOTHING if (f := self.facets(r)).strs is None else f.strs for r in spec.names]
        out = []
        # the common case, "any key but the declared": its lexeme is a KeyNotIn, whose DFA
        # is built from the key trie (json_keys), exactly unless the trie is huge; the
        # decoded node is not needed
        direct = bool(declared) and not patterns and not spec.names
        if direct:
            max_nodes = MAX_KEY_TRIE_NODES
            if (key_trie(tuple(declared), max_nodes)[1] is not None and max(map(len, declared)) <= MAX_EXACT_KEY_LENGTH
                    and key_trie(tuple(declared), MAX_EXACT_KEY_TRIE_NODES)[1] is None):
                max_nodes = MAX_EXACT_KEY_TRIE_NODES  # exact: its DFA grows like the trie, not faster
            not_declared, exact = None, key_trie(tuple(declared), max_nodes)[1] is None
        else:
            not_declared, exact = not_in_set(tuple(declared), MAX_KEY_TRIE_NODES)  # (see json_keys)
        if not exact:
            self.note("many declared properties: other keys sharing a long prefix with them are not allowed", ptr)
        if regions is None:
            regions = (r for size in range(len(patterns) + 1) for r in _pattern_regions(patterns, size))
        for chosen, region in regions:
            refs = []
            for la in spec.layers:
                hit = [r for p, r in la.patterns if p in chosen]
                refs.extend(hit if hit else [la.additional])
            ref = mk_sand(*refs)
            if is_false(ref):
                continue
            cache_key = (tuple(declared), chosen, tuple(patterns), tuple(r.key for r in spec.names))
            key_term = self._extra_keys.get(cache_key)
            if key_term is None:
                try:
                    if direct:  # no patterns, no propertyNames: the language is not_declared
                        key_node = KeyNotIn(tuple(declared), max_nodes)
                        if key_node.cut == 0:  # cut at the root: no other key
                            key_node = NOTHING
                    else:
                        key_node = json_string_node(mk_and(not_declared, *name_langs, *region()),
                                                    max_states=600, max_size=8000)
                except CompileBudgetExceeded as e:
                    if e.budget == "seconds":
                        raise  # the compile's time ran out: not these keys' complexity
                    self.refuse(f"key constraints too complex: {e.message}", ptr, "patternProperties")
                    continue
                except ConstraintError as e:
                    self.refuse(e.message, ptr, "patternProperties")
                    continue
                key_term = self._extra_keys[cache_key] = "" if key_node == NOTHING else self.term(key_node, "key")
            if not key_term:
                continue
            self.string_keys.add(key_term)
            v = self.value_nt(ref)
            if v is None:
                continue
            kv = f"{name}@x{len(out)}"
            self.b.rule(kv, (key_term, colon, v))
            out.append(kv)
        return out

    def _member_rules(
        self, name: str, spec: ObjectSpec, members: list, extras: list, ptr: str
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
        if self.opts.track_keys:
            return self._tracked_member_rules(name, members, extras, n_req, K, mn, mx, ptr)
        tracks, free = self._order_plan(members, K, ptr)
        extra_nt = self._either(f"{name}@extra", extras)
        if len(tracks) == 1 and not free and (len(members) + 1) * (K + 1) * 2 > MAX_COUNT_STATES:
            self.refuse("minProperties/maxProperties too large to unroll", ptr, "maxProperties")
            K, mn, mx = 1, 0, None
        self._order_rules(name, members, tracks, free, extra_nt, K, mn, mx)
        self._check_size()
        return True

    def _tracked_member_rules(
        self, name: str, members: list, extras: list, n_req: int, K: int, mn: int, mx: int | None, ptr: str
    ) -> bool:
        """Members with ``track_keys``: the parser refuses a repeated declared key, so every
        member loops like other keys and the grammar only counts the *required* ones read
        (``r``, no key twice: ``r == n_req`` is all of them) and the members so far (``c``
        capped at ``K``). States ``(r, c)`` grow like ``n_req * K`` where a set of used
        required keys grew like ``2 ** n_req``; the language is the any-order one, which
        the set spelled within its budget and which plans past it narrowed to schema order.

        S(r, c): other keys or optional members (``@extra``) keep ``r``; a required one
        (``@req``) takes ``r + 1``; ``}`` once ``r == n_req`` and ``c >= mn``.
        """
        lbrace, rbrace, comma = self.punct("{"), self.punct("}"), self.punct(",")
        for n, _, _ in members:
            self.loose_keys.add(self._key_lexeme(n))
        extra_nt = self._either(f"{name}@extra", [kv for _, kv, req in members if not req] + extras)
        req_nt = self._either(f"{name}@req", [kv for _, kv, req in members if req])
        if (n_req + 1) * (K + 1) * 2 > MAX_COUNT_STATES:
            self.refuse("minProperties/maxProperties too large to unroll", ptr, "maxProperties")
            K, mn, mx = 1, 0, None
        for r in range(n_req + 1):
            for c in range(K + 1):
                if r > c and c < K:
                    continue  # unreachable: fewer members than required ones read
                s = f"{name}@S{r}c{c}"
                if r == n_req and c >= mn:
                    self.b.rule(s, (rbrace,))
                if mx is not None and c >= mx:
                    continue
                sep = (comma,) if c > 0 else ()
                nc = min(c + 1, K)
                if extra_nt is not None:
                    self.b.rule(s, sep + (extra_nt, f"{name}@S{r}c{nc}"))
                if r < n_req:
                    self.b.rule(s, sep + (req_nt, f"{name}@S{r + 1}c{nc}"))
        self.b.rule(name, (lbrace, f"{name}@S0c0"))
        self._check_size()
        return True

    def _either(self, name: str, kvs: list) -> str | None:
        """``name`` deriving any one of ``kvs`` (None when there are none)."""
        for kv in kvs:
            self.b.rule(name, (kv,))
        return name if kvs else None

    def _order_plan(self, members: list, K: int, ptr: str) -> tuple[list, list]:
        """Which declared members keep their schema order (``tracks``: lists of member
        indices, each in schema order, interleaved freely) and which may come in any
        order (``free``), for grammars without ``track_keys`` (with it, optional members
        loop like other keys: ``_tracked_member_rules``). Every declared key comes at
        most once whatever the plan.

        An object has no order, and a valid instance may write its keys in any order
        (models often follow ``required``'s order, or put a discriminating key first).
        The first plan within the budget wins: every member in any order; required ones
        and as many optional ones as fit (in schema order) in any order, the other
        optional ones in schema order among themselves; required ones in schema order and
        optional ones in any order; each group in schema order, interleaved freely. Past
        every budget: plain schema order. ``any_order`` raises the budget. A free order
        costs states exponential in the number of free members (a set of used keys),
        hence the budget; plans that keep some order are noted in ``warnings``; see
        docs/json_schema_objects.md.
        """
        req = [i for i, m in enumerate(members) if m[2]]
        opt = [i for i, m in enumerate(members) if not m[2]]
        pool = sorted(req + opt)  # schema order
        n = len(pool)
        budget = MAX_ANY_ORDER_RULES if self.opts.any_order else MAX_DEFAULT_ORDER_RULES
        # the whole schema's budget bounds compile time: the first objects (root first)
        # get free orders, later ones the small plans used before issue 9 once it is spent
        if self.order_rules_left <= 0:  # spent: required keep their order, small plans only
            budget, plans = MIN_ORDER_RULES, [([req], opt), ([req, opt], [])]
        else:
            budget = min(budget, max(self.order_rules_left, MIN_ORDER_RULES))
            plans = [([], pool)]
            k = _most_free(req, opt, K, budget)
            if k is not None and len(opt) <= 2 * k + 2:  # a few free among many: not worth the rules
                plans.append(([opt[k:]], req + opt[:k]))
            plans += [([opt], req), ([req], opt), ([req, opt], [])]
        for tracks, free in plans:
            tracks = [t for t in tracks if t]
            cost = _order_cost(tracks, free, K)
            if cost <= budget:
                self.order_rules_left -= cost
                kept = [what for what, group in (("required", req), ("optional", opt)) if len(group) > 1
                        and any(len([i for i in t if i in group]) > 1 for t in tracks)]
                if kept:
                    self.note(f"{n} properties are too many to track in any order: {' and '.join(kept)} ones "
                              "keep their schema order among themselves", ptr)
                return tracks, free
        self.note(f"{n} properties are too many for free order: schema order is used", ptr)
        return ([sorted(pool)] if n else []), []

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


def _most_free(req: list, opt: list, K: int, budget: int) -> int | None:
    """How many optional members (in schema order) can be free next to the free required
    ones, the others kept in one schema-order track, within ``budget``; None if none."""
    best = None
    for k in range(len(opt) + 1):
        if _order_cost([t for t in [opt[k:]] if t], req + opt[:k], K) > budget:
            break
        best = k
    return best


def _order_cost(tracks: list, free: list, K: int) -> int:
    """About how many rules ``_order_rules`` makes for this plan: its states (the free
    members used, a position per track, the count when ``K > 1`` counts members) times
    the rules of a state (the free members not used yet, half on average; two per track;
    ``}`` and other keys)."""
    states = 2 ** len(free) * (K + 1 if K > 1 else 1)
    for t in tracks:
        states *= len(t) + 1
    return states * (len(free) // 2 + 2 * len(tracks) + 2)


MAX_KEY_TRIE_NODES = 300  # each costs ~300 automaton states once JSON-escaped


# printable ASCII but for " \ and /: the characters JSON writes one way only (raw)
ONE_SPELLING = Chars(((0x20, 0x21), (0x23, 0x2E), (0x30, 0x5B), (0x5D, 0x7E)))
MAX_EXACT_KEY_TRIE_NODES = 50_000  # with no patternProperties: the direct DFA (json_keys)
MAX_EXACT_KEY_LENGTH = 256  # the trie is built recursively


def _pattern_regions(patterns: list[str], size: int):
    """The key regions that match exactly ``size`` of the patterns: (chosen, parts of
    the region's language, given lazily: a pattern may be refused)."""
    for chosen in combinations(patterns, size):
        yield chosen, lambda chosen=chosen: [pattern_node(p) for p in chosen] + [
            mk_not(pattern_node(p)) for p in patterns if p not in chosen]


_LITERAL_PREFIX = re.compile(rf"\^([^\\.^$*+?{{}}\[\]|()]{{0,{MAX_EXACT_KEY_LENGTH}}})")


def _prefix_regions(patterns: list[str]) -> list | None:
    """Key regions of patterns that are all literal prefixes (``^x-``), or None.

    A key matches the patterns that are prefixes of it: one chain, named by its longest
    one. So there are as many regions as patterns plus one (no pattern), not ``2**k``,
    and each is a plain node: the longest prefix, then anything that does not start
    with a longer pattern's rest (strings off a trie, built directly).
    """
    prefixes = []
    for p in patterns:
        m = _LITERAL_PREFIX.fullmatch(p)
        if m is None or not all(in_chars(ONE_SPELLING, ord(ch)) for ch in m.group(1)):
            return None
        prefixes.append(m.group(1))
    if sum(map(len, prefixes)) > MAX_EXACT_KEY_TRIE_NODES:
        return None
    of = dict(zip(prefixes, patterns, strict=True))
    regions: list = [((), lambda: [_not_starting_with(tuple(prefixes))])]
    for p in prefixes:
        chosen = tuple(of[q] for q in prefixes if p.startswith(q))
        longer = [q[len(p):] for q in prefixes if q != p and q.startswith(p)]
        regions.append((chosen, lambda p=p, longer=tuple(longer): [
            seq(literal_string(p), _not_starting_with(longer) if longer else ANY_STRING)]))
    return regions


@lru_cache(maxsize=1024)
def _not_starting_with(prefixes: tuple[str, ...]) -> Node:
    """Decoded strings that start with none of ``prefixes`` (checked by ``_prefix_regions``:
    one-spelling characters, the trie within ``MAX_EXACT_KEY_TRIE_NODES``), exactly.

    Two disjoint parts: strings of one-spelling characters off the prefixes' trie (each
    trie node: another such character, then any of them), and strings with some other
    character. With raw characters only, the automaton stays about as small as the trie,
    where a complement over all characters costs every node the JSON escape sequences.
    (A string starts with a one-spelling prefix exactly when its run of one-spelling
    characters does.)
    """
    trie = key_trie(prefixes, MAX_EXACT_KEY_TRIE_NODES)[0]
    rest = Repeat(ONE_SPELLING, 0, None)
    other_char = negate(ONE_SPELLING)

    def build(node: dict) -> Node:
        if "" in node:
            return NOTHING  # everything from here on starts with a prefix
        kids = sorted(ch for ch in node if ch != "")
        parts = [seq()]
        others = negate(Chars(normalize_ranges(other_char.ranges + tuple((ord(c), ord(c)) for c in kids))))
        if others.ranges:
            parts.append(seq(others, rest))
        parts += [seq(literal(ch), build(node[ch])) for ch in kids]
        return alt(*parts)

    return seq(build(trie), alt(seq(), seq(other_char, ANY_STRING)))
