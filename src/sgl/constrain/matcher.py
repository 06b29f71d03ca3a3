"""The per-sequence matcher: token masks, advance, rollback, forced tokens."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from . import gc_policy
from .bitmask import fill_bitmask
from .compiled import CompiledGrammar
from .earley import EarleySet
from .errors import ConstraintError

MAX_FORCED_BYTES = 256


def utf8_prefix(data: bytes) -> bytes:
    """The longest prefix of ``data`` made of whole, valid UTF-8 characters."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data[: e.start]  # e.start: where the first bad or incomplete character begins
    return data


class Matcher:
    """Follows one sequence through a compiled constraint, token by token.

    The state is a stack of (Earley column, lexer state) pairs, one per accepted token;
    columns are immutable and shared, so ``copy`` and ``rollback`` are cheap.
    """

    def __init__(self, compiled: CompiledGrammar):
        if compiled.masks is None:
            raise ValueError("this grammar was compiled without a vocabulary")
        self.compiled = compiled
        self.vocab = compiled.vocab
        self._eos = frozenset(compiled.vocab.eos_token_ids)
        self.reset()

    def reset(self) -> None:
        self._stack: list[tuple[EarleySet, int]] = [(self.compiled.initial, 0)]
        self._tokens: list[int] = []
        self._terminated = False
        # (state, token, state after it) of the last mask_ahead_is_cached: the caller that
        # looked one token ahead usually advances by that token next (see _next_state)
        self._peek: tuple | None = None

    def copy(self, history: bool = True) -> Matcher:
        """An independent matcher in the same state; ``history=False`` keeps only the
        current state (O(1) however long the text; the copy cannot roll back)."""
        other = Matcher.__new__(Matcher)
        other.compiled, other.vocab, other._eos = self.compiled, self.vocab, self._eos
        other._stack = list(self._stack) if history else self._stack[-1:]
        other._tokens = list(self._tokens) if history else []
        other._terminated = self._terminated
        other._peek = self._peek
        return other

    # -- masks ---------------------------------------------------------------------
    def allowed_words(self) -> np.ndarray:
        """The current mask as uint32 words (read-only, shared with the cache)."""
        if self._terminated:
            return np.zeros(self.compiled.masks.tokens.n_words, dtype=np.uint32)
        col, s = self._stack[-1]
        # a hit reads the cache without the lock: a dict lookup is atomic, and an entry,
        # once written (under the lock, complete and read-only), never changes
        words = col.mask_cache.get(s)
        if words is not None:
            return words
        with self.compiled.lock:
            words = self.compiled.masks.mask(col, s)
        gc_policy.after_mask_miss()  # outside the grammar's lock: it may collect
        return words

    def fill_bitmask(self, out, row: int = 0) -> None:
        """Write the allowed tokens into ``out[row]`` (int32 words, bit set = allowed).

        ``out``: a numpy array or a torch tensor (CPU, or CUDA through a pinned buffer).
        """
        fill_bitmask(self, out, row)

    def mask_is_cached(self) -> bool:
        """Is the current state's full mask already computed (so reading it costs nothing)?"""
        if self._terminated:
            return True
        col, s = self._stack[-1]
        return s in col.mask_cache

    def prefetch(self, token_ids: Iterable[int]) -> int:
        """Compute and cache the masks of the states one token ahead, after each of
        ``token_ids`` (those the constraint allows and whose mask is not cached yet), so
        that a matcher reaching one of them finds its mask ready. Changes nothing else.

        For a helper thread while the model computes the next logits (masks are made under
        the grammar's lock, which is released inside the native walks). Returns how many
        masks it computed. A state whose mask fails (budget) is skipped: the matcher
        that reaches it raises then, as without prefetching.
        """
        made = 0
        for t in token_ids:
            nxt = self._next_state(int(t))
            if nxt is None or int(t) in self._eos:
                continue
            col, s = nxt
            if s in col.mask_cache:
                continue
            try:
                with self.compiled.lock:
                    if s in col.mask_cache:
                        continue
                    self.compiled.masks.mask(col, s)
            except ConstraintError:
                continue
            gc_policy.after_mask_miss()
            made += 1
        return made

    def mask_ahead_is_cached(self, token_id: int) -> bool:
        """Would ``prefetch([token_id])`` have nothing to do: is the mask of the state after
        ``token_id`` cached, or is there none to make (the token is refused, or EOS)?
        Cheap (one token through the lexer): lets a caller skip waking a helper thread."""
        t = int(token_id)
        nxt = self._next_state(t)
        if not self._terminated:
            self._peek = (self._stack[-1], t, nxt)
        if nxt is None or t in self._eos:
            return True
        col, s = nxt
        return s in col.mask_cache

    def is_allowed(self, token_id: int) -> bool:
        words = self.allowed_words()
        return bool((int(words[token_id >> 5]) >> (token_id & 31)) & 1)

    def accepts_token(self, token_id: int) -> bool:
        """Would ``advance(token_id)`` succeed? Reads one token, never the whole mask.

        ``is_allowed`` builds the mask, which can walk the whole vocabulary on a cache
        miss; this only runs the token's bytes through the lexer and parser.
        """
        return self._next_state(token_id) is not None

    def _next_state(self, token_id: int):
        """The state after ``token_id`` (unchanged for an accepted EOS), None if forbidden."""
        if self._terminated:
            return None
        top = self._stack[-1]
        peek = self._peek
        if peek is not None and peek[0] is top and peek[1] == token_id:
            # the same token from the same state (the tuple, kept alive by the memo): the
            # result is the same; saves the walk, e.g. a step's advance after a look-ahead
            return peek[2]
        col, s = top
        if token_id in self._eos:
            with self.compiled.lock:
                return (col, s) if self.compiled.can_end(col, s) else None
        if not 0 <= token_id < len(self.vocab.token_bytes):
            return None
        data = self.vocab.token_bytes[token_id]
        if not data:
            return None
        with self.compiled.lock:
            return self.compiled.advance_bytes((col, s), data)

    # -- state -----------------------------------------------------------------------
    def advance(self, token_id: int) -> bool:
        """Consume one token; False (and no change) if the constraint forbids it."""
        nxt = self._next_state(token_id)
        if nxt is None:
            return False
        self._stack.append(nxt)
        self._tokens.append(token_id)
        if token_id in self._eos:
            self._terminated = True
        return True

    def consume_tokens(self, token_ids) -> int:
        """Advance over several tokens; returns how many were accepted before the first refusal."""
        for i, t in enumerate(token_ids):
            if not self.advance(int(t)):
                return i
        return len(token_ids)

    def rollback(self, n: int = 1) -> None:
        """Undo the last ``n`` tokens."""
        if n < 0 or n > len(self._tokens):
            raise ValueError(f"cannot roll back {n} tokens: only {len(self._tokens)} consumed")
        if n:
            del self._stack[-n:]
            del self._tokens[-n:]
            self._terminated = False

    def is_accepting(self) -> bool:
        """Is the text so far a complete match (EOS allowed now, or already taken)?"""
        if self._terminated:
            return True
        col, s = self._stack[-1]
        with self.compiled.lock:
            return self.compiled.can_end(col, s)

    def is_terminated(self) -> bool:
        """Has EOS been consumed, or can nothing follow the text so far?"""
        if self._terminated:
            return True
        state = self._stack[-1]
        with self.compiled.lock:
            return self.compiled.can_end(*state) and not self._next_bytes(state)

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    @property
    def column(self) -> EarleySet:
        """The parser column the matcher is at (its masks are cached there, per lexer
        state: matchers and texts that reach the same parse share it)."""
        return self._stack[-1][0]

    # -- forced text -------------------------------------------------------------------
    def forced_bytes(self) -> bytes:
        """The bytes the constraint forces next (only one possible byte at each step)."""
        if self._terminated:
            return b""
        state = self._stack[-1]
        out = bytearray()
        with self.compiled.lock:
            while len(out) < MAX_FORCED_BYTES:
                if self.compiled.can_end(*state):
                    break
                nxt_bytes = self._next_bytes(state)
                if len(nxt_bytes) != 1:
                    break
                b = nxt_bytes[0]
                state = self.compiled.advance_bytes(state, bytes([b]))
                out.append(b)
        return bytes(out)

    def _next_bytes(self, state) -> list[int]:
        """Bytes that may come next (greedy lexing: continue the lexeme, or start the next)."""
        cg = self.compiled
        col, s = state
        lex = cg.lexer.for_lexemes(col.lexing)
        live = lex.table_row(s) >= 0
        if lex.accepting[s] and (nxt := cg.parser.scan(col, lex.accepts[s])) is not None:
            live = live | (cg.lexer.for_lexemes(nxt.lexing).table_row(0) >= 0)
        return np.nonzero(live)[0][:2].tolist()

    def forced_tokens(self) -> list[int]:
        """Canonical tokens of the forced text that the model could not tokenize otherwise.

        The forced text is tokenized on its own; its last token is held back unless the
        text ends the constraint, since free text that follows could merge with it.
        """
        return self.canonical_tokens(self.forced_bytes())

    def canonical_tokens(self, data: bytes) -> list[int]:
        """The tokenizer's own tokens for appending (a prefix of) ``data`` here.

        ``data`` is cut at a UTF-8 boundary and encoded on its own. Tokens are kept while
        their bytes follow ``data`` (a normalizing tokenizer may change the text) and the
        constraint accepts them; the last kept one is held back unless all of ``data`` was
        kept and the constraint ends there, since text that follows could merge with it.
        """
        text = utf8_prefix(data).decode("utf-8")
        if not text:
            return []
        ids = self.vocab.encode(text)
        probe, pos, kept = self.copy(), 0, 0
        for t in ids:
            piece = self.vocab.token_bytes[t]
            if not piece or not data.startswith(piece, pos) or not probe.advance(t):
                break
            pos, kept = pos + len(piece), kept + 1
        if kept == len(ids) and probe.is_terminated():
            return ids
        return ids[: max(kept - 1, 0)]

    # -- probabilities -------------------------------------------------------------------
    def grammar_logprob(self) -> float:
        """Log-probability of the lexemes read so far under the (weighted) grammar.

        The sentence probability once the text is complete, the prefix probability
        (Stolcke) before that.
        """
        from .stolcke import StolckeParser

        cg = self.compiled
        parser = getattr(cg, "_stolcke", None)
        if parser is None:
            parser = cg._stolcke = StolckeParser(cg.grammar)
        col, s = self._stack[-1]
        with cg.lock:
            if s != 0:
                lex = cg.lexer.for_lexemes(col.lexing)
                if lex.accepting[s] and (nxt := cg.parser.scan(col, lex.accepts[s])) is not None:
                    col = nxt
            seq = [frozenset(x) - set(cg.grammar.ignore) for x in cg.scanned_lexemes(col)]
        st = parser.parse([x for x in seq if x])
        if st is None:
            return -math.inf
        if self.is_accepting():
            return parser.sentence_logprob(st)
        return parser.prefix_logprob(st)
