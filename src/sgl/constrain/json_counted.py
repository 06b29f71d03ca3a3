"""JSON strings of a bounded length (``minLength``/``maxLength`` alone), DFA built directly.

The language is ``json_chars(ANY_CHAR){lo,hi}``, with or without either quote: ``lo`` to
``hi`` encoded characters, each spelled as ``json_strings`` says (the whole string of a
length bound up to ``MAX_LEXEME_LENGTH``, and the chunk lexemes of longer ones in
``json_schema.emit_scalars``). Through ``automata.compiler.to_dfa`` that is a Thompson NFA and a
subset construction of ~20 states per character (~45 ms for ``maxLength: 1000``, ~6 ms
here); here it is a copy, per count, of the automaton of one encoded
character (the "reader": a start, 19 inner states and a sink), laid out as numpy blocks:

- block ``c`` (``c`` characters read): the boundary state ``B_c`` (the reader's start)
  and one copy of each inner reader state; a completed character (the reader's sink)
  leads to ``B_{c+1}``, the first row of the next block;
- ``B_hi`` reads no character (its block is that one row); without ``hi``, ``B_lo``
  reads a character as ``B_{lo-1}`` does, through block ``lo - 1``'s inner states, whose
  completed character leads back to ``B_lo`` (for ``lo == 0``: one block, looping);
- accepting: ``B_c`` for ``c >= lo``, or with a closing quote the state after it, read
  at such a ``B_c`` (the quote is no character's first byte); an opening quote is the
  start's one way into ``B_0``.

The result is minimal: the reader is minimal and prefix-free, and states of different
blocks differ in how many characters they still need or allow (tests compare the state
count and the language with ``to_dfa`` on random bounds). ``CountedChars`` is the node
for it: a ``Seq`` whose items are the regex path's node (so every other consumer sees the
same language), with ``direct_byte_dfa`` for ``to_dfa``.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from .automata.derivatives import ANY_CHAR
from .automata.dfa import ByteDFA, _too_many_states
from .regex_ast import Node, Repeat, Seq, literal

_QUOTE = 0x22


class CountedChars(Seq):
    """``lo`` to ``hi`` (None: no bound) JSON-encoded characters, after an opening quote
    if ``opening`` and before a closing one if ``closing``.

    Equal nodes are equal by their items (the bounds and quotes decide them);
    ``to_dfa`` calls ``direct_byte_dfa``.
    """

    def __init__(self, lo: int, hi: int | None, opening: bool = True, closing: bool = True):  # noqa: D107
        from .json_strings import json_chars

        q = literal('"')
        items: tuple[Node, ...] = (Repeat(json_chars(ANY_CHAR), lo, hi),)
        super().__init__((q,) * opening + items + (q,) * closing)
        object.__setattr__(self, "bounds", (lo, hi, opening, closing))

    def __repr__(self) -> str:
        lo, hi, opening, closing = self.bounds
        return f"CountedChars({lo}, {hi}, opening={opening}, closing={closing})"

    def direct_byte_dfa(self, max_states: int = 50_000) -> ByteDFA:
        """The minimal ``ByteDFA`` of this lexeme (see the module)."""
        return counted_dfa(*self.bounds, max_states=max_states)

    def __reduce__(self):  # the frozen dataclass pickles by fields: rebuild from bounds
        return (CountedChars, self.bounds)


def counted_states(lo: int, hi: int | None, opening: bool, closing: bool) -> int:
    """How many states ``counted_dfa`` makes (to check a budget before building)."""
    k = len(_reader())  # rows per full block
    return _full_blocks(lo, hi) * k + (hi is not None or lo > 0) + opening + closing


def _full_blocks(lo: int, hi: int | None) -> int:
    """Blocks of a start and inner states: one per count below ``hi`` (or ``lo``; one
    looping block for ``lo == 0`` without ``hi``); then the lone row of ``B_hi``/``B_lo``."""
    return hi if hi is not None else max(lo, 1)


def counted_dfa(lo: int, hi: int | None, opening: bool, closing: bool, max_states: int = 50_000) -> ByteDFA:
    """The DFA of ``lo`` to ``hi`` encoded characters (see the module), start 0.

    Raises ``CompileBudgetExceeded`` (budget ``dfa_states``) beyond ``max_states``."""
    if lo < 0 or (hi is not None and hi < lo) or (hi == 0 and not (opening or closing)):
        raise ValueError(f"bad character count bounds {lo}..{hi}")
    n = counted_states(lo, hi, opening, closing)
    if n > max_states:
        raise _too_many_states(max_states)
    block = _reader()
    k = block.shape[0]  # B_c and the inner states; local id k is the next block's B
    full = _full_blocks(lo, hi)
    first = int(opening)  # the opening quote's state comes first
    offsets = first + k * np.arange(full, dtype=np.int32)
    table = np.empty((n, 256), dtype=np.int32)
    body = table[first : first + full * k].reshape(full, k, 256)
    # dead everywhere, then the live entries offset: ~3x faster than adding everywhere
    # and writing -1 back through a broadcast mask (tables of 255 characters: ~5 MB)
    body[...] = -1
    np.add(block[None], offsets[:, None, None], out=body, where=block[None] >= 0)
    end = first + full * k  # the lone row: B_hi, or B_lo without hi (lo > 0)
    if hi is not None:
        table[end] = -1
    elif lo > 0:  # B_lo reads a character as B_{lo-1} does (its inner states lead to B_lo)
        table[end] = np.where(block[0] >= 0, block[0] + offsets[lo - 1], -1)
    else:  # one block: a character leads back to B_0
        body[body == end] = first
    done = first + k * np.arange(lo, (lo if hi is None else hi) + 1)  # B_c for c >= lo
    accepting = np.zeros(n, dtype=bool)
    if opening:
        table[0] = -1
        table[0, _QUOTE] = 1
    if closing:  # the last state: after the closing quote
        table[n - 1] = -1
        table[done, _QUOTE] = n - 1
        accepting[n - 1] = True
    else:
        accepting[done] = True
    dfa = ByteDFA(table, accepting)
    if opening:
        # the lexer's content key, from the bounds (the table follows from them): hashing
        # a 255-character string's 5 MB table and scanning it for a way back to the
        # start cost ~15 ms of its compile. With the opening quote nothing leads back to
        # state 0 and it does not accept, so the table is its own fresh-start form.
        dfa.content_key = hashlib.sha256(repr(("counted", lo, hi, closing)).encode()).digest()[:16]
    return dfa


@lru_cache(maxsize=1)
def _reader() -> np.ndarray:
    """One block in local ids: row 0 the reader's start, rows 1.. its inner states, target
    ``k`` (one past the block) a completed character."""
    from .automata.compiler import to_dfa
    from .json_strings import json_chars

    d = to_dfa(json_chars(ANY_CHAR))
    table = d.table.astype(np.int64)
    (sink,) = np.flatnonzero(d.accepting)
    assert not (table[sink] >= 0).any() and not (table == 0).any(), "an encoded character is prefix-free"
    inner = [s for s in range(len(table)) if s not in (0, sink)]
    k = 1 + len(inner)
    local = np.full(len(table) + 1, -1, dtype=np.int64)  # index -1 (dead) stays -1
    local[0] = 0
    local[inner] = 1 + np.arange(len(inner))
    local[sink] = k
    block = local[table[[0, *inner]]].astype(np.int32)
    block.setflags(write=False)
    return block
