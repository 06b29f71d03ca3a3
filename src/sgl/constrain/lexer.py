"""The lexer: one DFA per set of lexemes the parser allows next, built once and cached.

A ``LexerDFA`` runs all allowed lexemes in parallel (the product of their DFAs).
Lexing is greedy: a lexeme ends when the next byte cannot extend it, and a state where
several lexemes accept hands all of them to the parser. Every lexeme DFA is given a
start state without incoming edges, so state 0 of a ``LexerDFA`` always means "no
byte of the current lexeme read yet".
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from .automata.dfa import DEAD, ByteDFA
from .errors import CompileBudgetExceeded
from .native import _native, native_enabled

MAX_LEXER_STATES = 200_000


def with_fresh_start(dfa: ByteDFA) -> ByteDFA:
    """An equivalent DFA whose start state has no incoming edges and never accepts ε.

    A lexeme must be non-empty (an empty one would never advance the lexer); the
    frontend's grammar keeps ε through an optional rule instead (see ``compiled``).
    """
    table, acc = dfa.table, dfa.accepting
    if not (table == 0).any() and not acc[0]:
        return dfa
    shifted = np.where(table >= 0, table + 1, DEAD).astype(np.int32)
    new_table = np.vstack([shifted[0:1], shifted])
    new_acc = np.concatenate([[False], acc])
    return ByteDFA(new_table, new_acc)


def dfa_key(dfa: ByteDFA) -> bytes:
    """A content hash of a DFA: equal DFAs share lexers (and their token walks) across grammars.

    The table goes in as whichever spelling of it is shorter, decided by its content
    alone (so equal tables hash alike): its live entries as (index, target) pairs when
    most of it is dead (key literals, punctuation), else the whole table (an "other
    keys" lexeme is ~90% live: the pairs were 3x its bytes, and hashing them most of its
    lexer's setup). SHA-256 (hardware-assisted on x86 and ARM) hashes ~2x faster than
    BLAKE2b here; 16 bytes of it are kept.
    """
    h = hashlib.sha256()
    flat = np.ascontiguousarray(dfa.table, dtype=np.int32).reshape(-1)
    live = np.flatnonzero(flat >= 0)
    h.update(np.int64(dfa.table.shape[0]).tobytes())
    if 2 * len(live) < len(flat):  # pairs: 8 bytes a live entry, against 4 an entry
        h.update(b"L")
        h.update(live.astype(np.int32).tobytes())
        h.update(flat[live].tobytes())
    else:
        h.update(b"T")
        h.update(np.maximum(flat, -1).tobytes())  # any dead entry reads as -1
    h.update(np.ascontiguousarray(dfa.accepting, dtype=bool).tobytes())
    return h.digest()[:16]


EXPAND_AHEAD = 256  # rows built per expansion, beyond the ones asked for (see LexerCore.expand)
UNKNOWN = -2  # a table entry of a state whose row is not built yet


def _global_states(dfas: list[ByteDFA]):
    """All component DFAs in one table of "global" states (component offset + state).

    Returns ``(big, acc_global, owner, offsets, sizes)``: ``big[g, byte]`` the next global
    state (row ``G = sum(sizes)`` is the dead state, looping on itself), which states
    accept, which component owns each, and where each component starts.
    """
    sizes = np.array([d.n_states for d in dfas], dtype=np.int64)
    offsets = (np.cumsum(sizes) - sizes).astype(np.int64)
    dead_row = int(sizes.sum())
    # int32, filled in place: a long maxLength makes component tables of 100k+ states
    big = np.empty((dead_row + 1, 256), dtype=np.int32)
    big[dead_row] = dead_row
    for d, off in zip(dfas, offsets, strict=True):
        part = big[off : off + d.n_states]
        np.add(d.table, int(off), out=part, casting="unsafe")
        part[d.table < 0] = dead_row
    acc_global = np.concatenate([d.accepting for d in dfas] + [np.array([False])])
    owner = np.concatenate([np.full(d.n_states, j) for j, d in enumerate(dfas)] + [np.array([-1])])
    return big, acc_global, owner, offsets, sizes


def make_core(dfas: list[ByteDFA], keys: tuple = (), parts: Callable[[], list] | None = None
              ) -> LexerCore | NativeLexerCore:
    """The product lexer of ``dfas`` (``keys``: their ``dfa_key``s, if known): compiled
    when the native kernel is in use. ``parts()``: their C ``Dfa``s, where the caller
    keeps them (``_LexerCache.native_parts``)."""
    # no lexemes (the text must end here): one state, nothing to walk natively
    return NativeLexerCore(dfas, keys, parts) if native_enabled() and dfas else LexerCore(dfas)


_native_dfas: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_native_dfas_lock = threading.Lock()


def native_dfa(dfa: ByteDFA, key: bytes | None = None):
    """``dfa`` as a checked C ``Dfa``; one per content while any product holds it, so a
    new lexeme set shares its lexemes' tables instead of copying them."""
    if key is not None:
        with _native_dfas_lock:
            hit = _native_dfas.get(key)
        if hit is not None:
            return hit
    table = np.ascontiguousarray(dfa.table, dtype=np.int32)
    # read-only: the C Dfa then uses it in place instead of copying megabytes (a DFA is
    # never changed once built; its tables are shared by the compile caches anyway)
    table.flags.writeable = False
    out = _native.Dfa(table, np.ascontiguousarray(dfa.accepting, dtype=np.uint8))
    if key is not None:
        with _native_dfas_lock:
            out = _native_dfas.setdefault(key, out)
    return out


class NativeLexerCore:
    """``LexerCore``'s twin over the C ``Product`` (same interface, same language).

    The C walks build rows as they reach them, with no round trip to Python.
    """

    def __init__(self, dfas: list[ByteDFA], keys: tuple = (), parts: Callable[[], list] | None = None):
        # the accepting flags as given; as bool arrays on first use (``_acc``): a lexer of a
        # new lexeme set is made on a mask miss, and most never read a component's flags
        self._acc_src = [d.accepting for d in dfas]
        # components are local states, -1 dead (``single_live`` reads them like global
        # states at offset 0 with a dead state of -1)
        self._offsets, self._dead = np.zeros(len(dfas), dtype=np.int64), -1
        if parts is None:
            keys = keys if len(keys) == len(dfas) else (None,) * len(dfas)
            got = [native_dfa(d, k) for d, k in zip(dfas, keys, strict=True)]
        else:
            got = parts()
        self.product = _native.Product(tuple(got), MAX_LEXER_STATES)
        self._rows: dict[int, list[int]] = {}
        self.accepts = _NativeAccepts(self)
        self.accepting = _NativeAccepting(self.product)
        self.walk_cache: dict = {}
        self.key: tuple = ()
        self.uid = -1
        self.table_bytes = 0  # its lexemes' tables (set when shared: ``core_nbytes``)
        self._k = len(dfas)
        # (body, end, table, accepting) of a one-lexeme "other keys" core: its table's
        # any-string body and end states (``json_keys._one_byte_dfa``), for
        # ``MaskComputer._key_body_walk``
        self.string_body: tuple | None = None

    @functools.cached_property
    def _acc(self) -> list[np.ndarray]:
        """Each component's accepting flags (bool, by local state)."""
        return [np.asarray(a, dtype=bool) for a in self._acc_src]

    def components(self, state: int) -> np.ndarray:
        """The product state's component (global) states."""
        return np.frombuffer(self.product.comp(int(state)), dtype=np.int32)

    def state_of_local(self, q: int) -> int:
        """For a one-lexeme core: the state id of its DFA's state ``q``."""
        try:
            return self.product.intern(int(q).to_bytes(4, "little", signed=True))  # one int32
        except OverflowError as e:
            raise self._budget(e) from e

    def _budget(self, e: OverflowError):
        return CompileBudgetExceeded(f"lexer for {self._k} lexemes exceeds {MAX_LEXER_STATES} states")

    def row(self, state: int) -> list[int]:
        row = self._rows.get(state)
        if row is None:
            row = self._rows[state] = self.table_row(state).tolist()
        return row

    def run(self, state: int, data, start: int) -> tuple[int, int]:
        """``data[start:]`` read from ``state`` until a byte has no way on: ``(index of
        that byte or len(data), the state before it)``. In C, with no row kept here
        (``row``'s lists of 256 ints, ~2.7 KB each, were most of what masks left)."""
        try:
            return self.product.run(state, data, start)
        except OverflowError as e:
            raise self._budget(e) from e

    def table_row(self, state: int) -> np.ndarray:
        try:
            return np.frombuffer(self.product.row(state), dtype=np.int32)
        except OverflowError as e:
            raise self._budget(e) from e

    @property
    def n_states(self) -> int:
        return self.product.n_states

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(table (n, 256) int32, accepting bool)`` with every reachable row built."""
        try:
            self.product.expand_all()
        except OverflowError as e:
            raise self._budget(e) from e
        table, acc = self.product.arrays()
        return np.frombuffer(table, dtype=np.int32).reshape(-1, 256), np.frombuffer(acc, dtype=np.uint8).astype(bool)

    @property
    def flat_table(self) -> np.ndarray:
        return self.arrays()[0].astype(np.int64).ravel()

    def accepting_array(self) -> np.ndarray:
        return self.arrays()[1]


def single_live(core, state: int) -> tuple[int, int] | None:
    """``(position, local state)`` when exactly one lexeme of ``core`` is still alive in
    ``state`` (the others are dead and stay dead), else None. Cached per core."""
    cache = core.__dict__.setdefault("_single", {})
    if state in cache:
        return cache[state]
    comp = core.components(state)
    live = np.nonzero(comp != core._dead)[0]
    out = None
    if live.size == 1:
        j = int(live[0])
        out = (j, int(comp[j]) - int(core._offsets[j]))
    cache[state] = out
    return out


class _NativeAccepting(dict):
    """``accepting[state]`` of a native core: filled on first use like ``_NativeAccepts``
    (a state's accepting flag is fixed when the state is made)."""

    def __init__(self, product):
        super().__init__()
        self._product = product

    def __missing__(self, state) -> bool:
        out = self[state] = self._product.accepting(int(state))
        return out


class _NativeAccepts(dict):
    """``accepts[state]``: a dict filled on first use (``__missing__``), so that a hit is
    a plain dict lookup with no Python frame (the boundary recursion reads it per group)."""

    def __init__(self, core: NativeLexerCore):
        super().__init__()
        self._core = core

    def __missing__(self, state: int) -> tuple[int, ...]:
        core = self._core
        comp = core.components(state).tolist()
        out = self[state] = tuple(j for j, q in enumerate(comp) if q >= 0 and core._acc[j][q])
        return out


class LexerCore:
    """The product DFA of an ordered tuple of lexeme DFAs; shared by content; built lazily.

    A product state gets an id (and its ``accepts``) when a built row first leads to it;
    its own row is built on first use (``row``, ``table_row``, ``expand``), so a lexer
    costs what is visited, not the size of the whole product (which explodes for many
    overlapping lexemes). This is the pure-Python implementation; ``NativeLexerCore``
    is its compiled twin.

    ``table[state, byte]`` -> state, -1 (dead) or ``UNKNOWN`` (not built); ``accepts[state]``
    holds the *positions* (in the tuple) of the lexemes complete in that state;
    ``accepting`` says whether any is. ``walk_cache`` keeps, per (token table, state),
    the walk of the whole vocabulary (see ``mask.py``). Thread-safe: cores are shared
    across grammars, and so across the grammars' locks.
    """

    def __init__(self, dfas: list[ByteDFA]):
        # A product state is the vector of its components' global states; its identity
        # is that vector read as a mixed-radix number (0 digit = dead).
        k = len(dfas)
        big, self._acc_global, self._owner, offsets, sizes = _global_states(dfas)
        dead_row = int(sizes.sum())
        self._offsets, self._dead = offsets, dead_row
        self._big = big
        local_plus1 = np.zeros(dead_row + 1, dtype=np.int64)  # global state -> local + 1 (dead -> 0)
        local_plus1[:dead_row] = np.arange(dead_row) - np.repeat(offsets, sizes) + 1
        self._local_plus1 = local_plus1
        # A product state's key: its components read as a mixed-radix number when that fits
        # in 62 bits (exact); otherwise a 64-bit hash, checked for collisions, with the
        # component bytes as the exact identity.
        radix = sizes + 1
        self._exact = float(np.prod(radix.astype(float))) < 2.0**62
        if self._exact:
            self._mult = (np.cumprod(radix) // radix).astype(np.int64)
        else:
            self._mult = np.random.default_rng(0).integers(1, 2**62, size=k, dtype=np.int64) | 1
        self._k = k
        self._lock = threading.RLock()
        self._index: dict = {}
        self._comps: list[np.ndarray] = []
        self._expanded: list[bool] = []
        self._rows: list[list[int] | None] = []
        self.accepts: list[tuple[int, ...]] = []
        self.table = np.full((16, 256), UNKNOWN, dtype=np.int32)
        self.accepting = np.zeros(16, dtype=bool)
        self.n_states = 0
        self._flat: np.ndarray | None = None
        with np.errstate(over="ignore"):  # hashed keys wrap around on purpose
            start_key = int((local_plus1[offsets] * self._mult).sum())
        self._register(start_key, offsets.copy())
        self.walk_cache: dict = {}
        self.string_body: tuple | None = None  # (see NativeLexerCore; only the C walks use it)
        self.key: tuple = ()
        self.uid = -1
        self.table_bytes = 0  # its lexemes' tables (set when shared: ``core_nbytes``)

    def _identity(self, key: int, comp: np.ndarray):
        return key if self._exact else comp.tobytes()

    def _register(self, key: int, comp: np.ndarray) -> int:
        """A new product state: its id and accepts; its row stays UNKNOWN."""
        t = self.n_states
        if t >= MAX_LEXER_STATES:
            raise CompileBudgetExceeded(f"lexer for {self._k} lexemes exceeds {MAX_LEXER_STATES} states")
        self._index[self._identity(key, comp)] = t
        self._comps.append(comp)
        self._expanded.append(False)
        self._rows.append(None)
        acc = tuple(int(self._owner[g]) for g in comp if self._acc_global[g])
        self.accepts.append(acc)
        if t >= self.table.shape[0]:  # grow by doubling: new arrays, old ones stay valid for readers
            cap = 2 * self.table.shape[0]
            table = np.full((cap, 256), UNKNOWN, dtype=np.int32)
            table[:t] = self.table[:t]
            accepting = np.zeros(cap, dtype=bool)
            accepting[:t] = self.accepting[:t]
            self.table, self.accepting = table, accepting
        self.accepting[t] = bool(acc)
        self.n_states = t + 1
        return t

    def expand(self, states, ahead: int = EXPAND_AHEAD) -> None:
        """Build the rows of ``states``, then of the states they lead to, breadth first,
        until about ``ahead`` rows are built: a walk rarely stops at one new state, and
        one numpy pass per level is far cheaper than one per state."""
        with self._lock:
            todo = [s for s in dict.fromkeys(int(x) for x in states) if not self._expanded[s]]
            built = 0
            while todo:
                new = self._expand_level(todo)
                built += len(todo)
                todo = new[: max(0, ahead - built)]

    def _expand_level(self, todo: list[int]) -> list[int]:
        """Build the rows of ``todo`` (all unbuilt); returns the states first seen here."""
        first_new = self.n_states
        k, mult = self._k, self._mult
        comp_mat = np.stack([self._comps[f] for f in todo], axis=1)  # (k, F)
        nxt = self._big[comp_mat]  # (k, F, 256) global states
        live = self._local_plus1[nxt]
        with np.errstate(over="ignore"):
            keys = (live * mult[:, None, None]).sum(axis=0)  # (F, 256)
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        if not self._exact:
            flat = nxt.reshape(k, -1)
            if not (flat[:, first[inverse.reshape(-1)]] == flat).all():
                raise CompileBudgetExceeded(f"lexer for {k} lexemes: state hash collision")
        any_live = live.any(axis=0).reshape(-1)
        targets = np.empty(uniq.size, dtype=np.int32)
        for j, (key, flat_at) in enumerate(zip(uniq.tolist(), first.tolist(), strict=True)):
            if not any_live[flat_at]:
                targets[j] = DEAD
                continue
            f, b = divmod(flat_at, 256)
            comp = nxt[:, f, b]
            t = self._index.get(self._identity(key, comp))
            targets[j] = self._register(key, comp) if t is None else t
        rows = targets[inverse.reshape(len(todo), 256)]
        self.table[todo] = rows
        for s, row in zip(todo, rows.tolist(), strict=True):
            self._rows[s] = row
            self._expanded[s] = True
        return list(range(first_new, self.n_states))

    def components(self, state: int) -> np.ndarray:
        """The product state's component (global) states."""
        return self._comps[state]

    def state_of_local(self, q: int) -> int:
        """For a one-lexeme core: the state id of its DFA's state ``q``."""
        comp = np.array([q], dtype=np.int64)
        with np.errstate(over="ignore"):
            key = int((self._local_plus1[comp] * self._mult).sum())
        with self._lock:
            t = self._index.get(self._identity(key, comp))
            return self._register(key, comp) if t is None else t

    def expand_all(self) -> None:
        """Build every reachable state (the numpy walks need the whole table)."""
        while True:
            with self._lock:
                todo = [s for s in range(self.n_states) if not self._expanded[s]]
            if not todo:
                return
            self.expand(todo, ahead=len(todo))

    def row(self, state: int) -> list[int]:
        """The row of ``state`` as a Python list (targets or -1), built if needed."""
        row = self._rows[state]
        if row is None:
            self.expand([state])
            row = self._rows[state]
        return row

    def run(self, state: int, data, start: int) -> tuple[int, int]:
        """``data[start:]`` read from ``state`` until a byte has no way on: ``(index of
        that byte or len(data), the state before it)`` (``NativeLexerCore.run``'s twin)."""
        row, i, n = self.row, start, len(data)
        while i < n:
            nxt = row(state)[data[i]]
            if nxt < 0:
                break
            state, i = nxt, i + 1
        return i, state

    def table_row(self, state: int) -> np.ndarray:
        """The row of ``state`` as a numpy array, built if needed."""
        self.row(state)
        return self.table[state]

    def accepting_array(self) -> np.ndarray:
        """``accepting`` for every reachable state (for the numpy walks)."""
        self.expand_all()
        return self.accepting[: self.n_states]

    @property
    def flat_table(self) -> np.ndarray:
        """The whole table as int64, flat (for the numpy walks): builds every state."""
        self.expand_all()
        with self._lock:
            if self._flat is None or self._flat.size != self.n_states * 256:
                self._flat = self.table[: self.n_states].astype(np.int64).ravel()
            return self._flat


class _Accepts(dict):
    """``accepts[state]`` of a ``LexerDFA``: a core's lexeme positions as grammar lexeme
    ids (a dict filled on first use, like ``_NativeAccepts``)."""

    def __init__(self, core: LexerCore, order: list[int]):
        super().__init__()
        self._core, self._order = core, order

    def __missing__(self, state: int) -> frozenset[int]:
        out = self[state] = frozenset(self._order[k] for k in self._core.accepts[state])
        return out


class LexerDFA:
    """A ``LexerCore`` seen from one grammar: ``accepts[state]`` are that grammar's lexeme ids."""

    def __init__(self, lexemes: frozenset[int], core: LexerCore, order: list[int]):
        self.lexemes = lexemes
        self.core = core
        self.order = order  # core position -> grammar lexeme id
        self.walk_cache = core.walk_cache
        self.accepts = _Accepts(core, order)
        self.row = core.row
        self.run = core.run
        self.table_row = core.table_row
        # state -> (lexer, state) where only one lexeme is left alive, or None (mask._one_lexeme)
        self.one_lexeme: dict[int, tuple] = {}
        # (state, position) -> (token, lexemes alive at its end) for the tokens inside
        # that lexeme from that state (key_masks.key_candidates)
        self.key_tokens: dict[tuple[int, int], list] = {}
        # state -> (lexeme, its lexer, its state) of each alive key, or None (mask._key_parts)
        self.key_parts: dict[int, list | None] = {}
        # (token table, state, used keys or None) -> the walks of the alive unused keys
        # there (mask.KeyParts), composed once per used set (mask._key_parts)
        self.key_walks: dict[tuple, object] = {}
        # (state, used keys) -> the tokens dropped there (key_masks.used_key_tokens)
        self.used_dead: dict[tuple, object] = {}

    @property
    def accepting(self) -> np.ndarray:
        return self.core.accepting


# entries of ``LexerDFA.key_walks`` / ``used_dead`` kept per lexer before each starts over:
# one per (state, set of used keys) met, which a wide object can make combinatorially many
MAX_KEY_SETS = 1024

_cores: OrderedDict[tuple, LexerCore] = OrderedDict()
_cores_lock = threading.Lock()
_core_uids = itertools.count()
MAX_SHARED_CORES = 4096
# The shared cores' estimated bytes (``core_nbytes``), at most: the count bound alone let
# a core's product rows, walks and lexeme tables add up without limit (a long maxLength
# string's table is megabytes, and a core keeps it alive past the DFA cache's own bound).
# Kept as a running total: a new core is weighed with the ``REWEIGH`` most recently used
# ones (the ones whose walks and states grow), least recently used out while over. (Weighing
# every core every 64 new ones cost ~4 ms per weighing at 4,096 cores, inside the first
# masks of large schemas, which make hundreds of cores; 8 reweighed per new core still cost
# ~1 us of MaskBench's mean mask, 2 nothing measurable.) The estimate counts a table once per
# core holding it (most are also in the DFA cache), so it runs high: compiling MaskBench's
# --limit 10 schemas four times over, 256 MB built 5,180 cores (unbounded 3,673, 128 MB
# 8,876) at 710 MB RSS (unbounded 756, 128 MB 703; bench/mask_memory.py --repeat 4).
MAX_SHARED_CORE_BYTES = 256 << 20
REWEIGH = 2
_weights: dict[tuple, int] = {}  # core key -> its weight when last weighed
_weight_total = [0]
# a vocabulary walk's bytes, on average (MaskBench, Llama-3: 12,303 walks, 48 MB); the
# walks are weighed by count (their arrays are not summed on every check)
WALK_BYTES = 4096


def core_nbytes(core: LexerCore | NativeLexerCore) -> int:
    """What a shared core holds, estimated: its product states (a 1 KB row, the component
    vector and per-state facts; only the facts where the product is its one lexeme's DFA),
    its lexemes' tables (``table_bytes``, set when shared) and its vocabulary walks."""
    k = core._k
    per_state = 96 + (4 * k + 1024 if k > 1 or not hasattr(core, "product") else 0)
    return core.n_states * per_state + core.table_bytes + len(core.walk_cache) * WALK_BYTES


def _shared_core(key: tuple, dfas: list[ByteDFA], parts: Callable[[], list] | None = None) -> LexerCore:
    with _cores_lock:
        core = _cores.get(key)
        if core is not None:
            _cores.move_to_end(key)
            return core
    core = make_core(dfas, key, parts)
    core.key = key
    core.uid = next(_core_uids)  # never reused, unlike id(): names the core in walk caches
    core.table_bytes = sum(d.table.nbytes for d in dfas)
    with _cores_lock:
        _cores[key] = core
        _reweigh(key, core)
        for k in itertools.islice(reversed(_cores), 1, 1 + REWEIGH):
            _reweigh(k, _cores[k])
        while len(_cores) > MAX_SHARED_CORES or (_weight_total[0] > MAX_SHARED_CORE_BYTES and len(_cores) > 1):
            k, _ = _cores.popitem(last=False)
            _weight_total[0] -= _weights.pop(k, 0)
    return core


def _reweigh(key: tuple, core) -> None:
    """Weigh ``core`` again into the running total. Call with ``_cores_lock`` held."""
    w = core_nbytes(core)
    _weight_total[0] += w - _weights.get(key, 0)
    _weights[key] = w


def shared_cores_nbytes() -> int:
    """The shared cores' estimated bytes (``core_nbytes``), all together."""
    with _cores_lock:
        return sum(map(core_nbytes, _cores.values()))


def shared_cores() -> list[LexerCore]:
    """The lexer cores shared across grammars now (least recently used first)."""
    with _cores_lock:
        return list(_cores.values())


def clear_shared_cores() -> None:
    """Forget the shared lexer cores: the next lexers are built afresh (with the native
    kernel or not, as ``SGL_NATIVE`` says then)."""
    with _cores_lock:
        _cores.clear()
        _weights.clear()
        _weight_total[0] = 0


def _prepared(dfa: ByteDFA) -> tuple[ByteDFA, bytes]:
    """``with_fresh_start(dfa)`` and its ``dfa_key``, remembered on the DFA object (a DFA
    with a ``content_key`` attribute is already fresh-start and keyed by it: its
    construction guarantees that equal keys mean equal tables, and keys of that kind
    are digests of another text than tables, so they never meet a ``dfa_key``): the
    compile cache hands out the same objects for repeated lexemes, and hashing a large
    table again on every compile cost more than the rest of the lexer's setup.

    Kept on the DFA (``_fresh_key``: the fresh copy, None when the DFA is its own fresh
    form, and the key), so it lives exactly as long as the DFA: a process-wide table of
    them held the last 4,096 DFAs alive whatever the compile cache's byte bound dropped
    (~190 MB of lexeme tables after MaskBench's 382 schemas)."""
    hit = dfa.__dict__.get("_fresh_key")
    if hit is not None:
        return dfa if hit[0] is None else hit[0], hit[1]
    key = getattr(dfa, "content_key", None)
    if key is not None:  # a construction that vouches for both (json_counted: a long maxLength)
        fresh = dfa
    else:
        fresh = with_fresh_start(dfa)
        key = dfa_key(fresh)
    dfa._fresh_key = (None if fresh is dfa else fresh, key)  # (not the DFA itself: no cycle)
    return fresh, key


# Lexeme tables larger than this are prepared at compile, smaller ones when a lexer first
# needs them. Default 0: all at compile. Lazy preparation (256 KiB here) cut MaskBench's
# compile p90 by ~13% but moved the hashing into first masks: mask mean +4% and p99 +6%
# in the same runs (docs/benchmarks.md, "stop 23"), and masks come first in issue 9.
LAZY_PREPARE_BYTES = 0


class Lexer:
    """Builds and caches one ``LexerDFA`` per set of allowed lexemes.

    A lexeme's fresh-start DFA and content key (``_prepared``) can be made the first
    time a lexer of a set holding it is built instead of here (``LAZY_PREPARE_BYTES``;
    off by default, as it costs the masks more than it saves the compile): a schema's grammar has lexemes no
    text ever reaches (most of a large schema's), and for a new lexeme the content hash
    is most of the setup (an "other keys" lexeme: ~0.1-0.3 ms, a big object's most
    costly part of the lexer setup). The lexers built are the same. Lexemes whose table
    is over ``LAZY_PREPARE_BYTES`` (by default: all) are prepared here all the same: hashing a
    ``maxLength`` string's 5-20 MB table takes 4-30 ms, which the first mask reaching
    it would pay (one MaskBench mask went from 7 to 27 ms that way).
    """

    def __init__(self, dfas: list[ByteDFA]):
        self._cache = _LexerCache(list(dfas))
        for i, d in enumerate(dfas):
            if d.table.nbytes > LAZY_PREPARE_BYTES:
                self._cache.prepared(i)
        # ``for_lexemes(lexemes)``: the lexer of the lexeme set ``lexemes`` (built on first use,
        # then cached); a hit is a plain dict lookup (the boundary recursion makes one per group)
        self.for_lexemes: Callable[[frozenset[int]], LexerDFA] = self._cache.__getitem__

    @property
    def dfas(self) -> list[ByteDFA]:
        """Every lexeme's DFA with a fresh start (all prepared now)."""
        return [self._cache.prepared(i)[0] for i in range(len(self._cache.raw))]

    @property
    def keys(self) -> list[bytes]:
        """Every lexeme's content key (all prepared now)."""
        return [self._cache.prepared(i)[1] for i in range(len(self._cache.raw))]


class _LexerCache(dict):
    """``Lexer``'s lexers by lexeme set, built on first use (``__missing__``). It holds
    the lexeme tables, not the ``Lexer``: no reference cycle through ``for_lexemes``."""

    def __init__(self, raw: list[ByteDFA]):
        super().__init__()
        self.raw = raw
        self._prep: list[tuple[ByteDFA, bytes] | None] = [None] * len(raw)
        self._native: list = [None] * len(raw)
        self._order_key: list[tuple[bytes, int] | None] = [None] * len(raw)

    def prepared(self, i: int) -> tuple[ByteDFA, bytes]:
        got = self._prep[i]
        if got is None:
            got = self._prep[i] = _prepared(self.raw[i])
            self._order_key[i] = (got[1], i)
        return got

    def native_parts(self, order: list[int]) -> list:
        """The C ``Dfa``s (``native_dfa``) of lexemes ``order``, each kept here once made:
        a new lexeme set (a filtered key position's, on a mask miss) then costs no
        lookup per lexeme in the shared dictionary (most of building its product)."""
        got = [self._native[i] for i in order]
        for k, d in enumerate(got):
            if d is None:
                fresh, key = self.prepared(order[k])
                d = got[k] = self._native[order[k]] = native_dfa(fresh, key)
        return got

    def __missing__(self, lexemes: frozenset[int]) -> LexerDFA:
        prep = self._prep
        for i in lexemes:
            if prep[i] is None:
                self.prepared(i)
        # a product's lexemes in content order (shared by every grammar with that content)
        order = sorted(lexemes, key=self._order_key.__getitem__)
        core = _shared_core(tuple([prep[i][1] for i in order]), [prep[i][0] for i in order],
                            lambda: self.native_parts(order))
        if len(order) == 1 and core.string_body is None:
            dfa = prep[order[0]][0]
            body = getattr(dfa, "string_body", None)  # an "other keys" lexeme
            if body is not None:
                core.string_body = (*body, np.ascontiguousarray(dfa.table, dtype=np.int32),
                                    np.asarray(dfa.accepting, dtype=np.uint8))
        lex = self[lexemes] = LexerDFA(lexemes, core, order)
        return lex
