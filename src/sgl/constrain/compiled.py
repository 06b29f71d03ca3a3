"""A grammar compiled for one vocabulary: lexeme DFAs, parser tables, token table."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

from . import gc_policy
from .automata.compiler import DEFAULT_MAX_TRIE_STATES, LiteralAlt, literal_dfa, to_dfa
from .counters import split_counters
from .earley import EarleyParser, EarleySet, build_tables
from .errors import CompileBudgetExceeded, ConstraintError
from .format_lexemes import dfa_for
from .grammar import Grammar, Rule, Terminal, prune
from .lexer import Lexer
from .mask import DEFAULT_MASK_SECONDS, MaskComputer, can_end
from .regex import parse_regex
from .token_trie import TokenTable

if TYPE_CHECKING:
    from .automata.dfa import ByteDFA
    from .regex_ast import Node
    from .vocab import Vocabulary

DEFAULT_COMPILE_BUDGET_S = 30.0


@dataclass(frozen=True)
class CompileBudget:
    """Limits on one compile; a constraint over any of them is refused with a
    ``CompileBudgetExceeded`` (a ``ConstraintError``) naming the budget.

    Pass one to the ``compile_*`` functions (``budget=CompileBudget(seconds=5)``) to
    tighten or loosen the defaults:

    - ``seconds``: wall time of the compile (checked between its phases and lexemes).
    - ``rules``: grammar rules after the frontend (the schema/grammar's size).
    - ``lexemes``: distinct terminals (each gets its own DFA).
    - ``dfa_states``: states one construction step of one lexeme's DFA may build.
    - ``choice_states``: states of the trie of one alternation of literal strings
      (choices, enums, ``a|b|c`` regexes): one per byte not shared as a prefix.
    - ``mask_seconds``: wall time of computing one token mask (checked between the
      parser's scans and the vocabulary walks), when masking, not compiling.
    """

    seconds: float = DEFAULT_COMPILE_BUDGET_S
    rules: int = 500_000
    lexemes: int = 20_000
    dfa_states: int = 50_000
    choice_states: int = DEFAULT_MAX_TRIE_STATES
    mask_seconds: float = DEFAULT_MASK_SECONDS

    def over(self, name: str, value: object, limit: object) -> CompileBudgetExceeded:
        return CompileBudgetExceeded(f"the constraint needs {value} {name.replace('_', ' ')}, over the budget of {limit} "
                                     f"(budget: {name})", budget=name)


class Walk(NamedTuple):
    """What `CompiledGrammar.walk` read: ``consumed`` bytes (all of them if the data is
    a valid prefix), the (column, lexer state) after them, the byte where the lexeme in
    progress started, and ``(byte offset, lexeme ids)`` where each earlier lexeme ended."""

    consumed: int
    state: tuple[EarleySet, int]
    lexeme_start: int
    lexeme_ends: list[tuple[int, frozenset[int]]]


class CompiledGrammar:
    """A grammar ready to drive ``Matcher`` objects; share one across sequences.

    ``vocab`` may be None for text-only use (``accepts_text``). Compile work that is
    proportional to the vocabulary happens lazily, once per lexer state, and is cached
    here, so the first masks of a new constraint cost more than later ones. ``budget``
    bounds the compile (``CompileBudget``; ``budget_s`` is the older spelling of its
    ``seconds``). A grammar that matches no text is refused: it could only dead-end.
    """

    def __init__(self, grammar: Grammar, vocab: Vocabulary | None = None, *, budget: CompileBudget | None = None,
                 budget_s: float | None = None) -> None:
        start = time.perf_counter()
        budget = budget or CompileBudget()
        if budget_s is not None:
            budget = replace(budget, seconds=budget_s)
        if not grammar.is_trimmed():  # prune validated its output (frontends hand over pruned grammars)
            grammar.validate()
        if len(grammar.rules) > budget.rules:
            raise budget.over("rules", len(grammar.rules), budget.rules)
        if len(grammar.terminals) > budget.lexemes:
            raise budget.over("lexemes", len(grammar.terminals), budget.lexemes)
        # large counted repetitions become chunk lexemes counted by rules (not unrolled)
        grammar = split_counters(grammar, lambda node: terminal_dfa(node, False, budget))
        self.grammar = grammar
        self.vocab = vocab
        dfas = self._terminal_dfas(grammar, start, budget)
        # a terminal with an empty language (``[]``, a lone surrogate) kills its rules
        dead = frozenset(n for n, d in dfas.items() if _accepts_nothing(d.accepting))
        if dead or not grammar.is_trimmed():  # frontends hand over pruned grammars
            grammar = prune(grammar, dead)
        grammar = _split_empty_terminals(grammar, dfas)
        self.lexeme_names = list(grammar.terminals)
        lexeme_ids = {n: i for i, n in enumerate(self.lexeme_names)}
        dfas = [self._dfa_cache[n] for n in self.lexeme_names]
        self.nbytes = sum(d.table.nbytes for d in dfas)  # for caches that weigh grammars
        ignore = frozenset(lexeme_ids[n] for n in grammar.ignore)
        self.tables = build_tables(grammar, lexeme_ids, ignore)
        self.lexer = Lexer(dfas)
        self.parser = EarleyParser(self.tables)
        self.initial = self.parser.initial()
        self.lock = threading.RLock()  # caches are shared across matchers and threads
        self.masks = None
        if vocab is not None:
            self.masks = MaskComputer(token_table(vocab), self.lexer, self.parser, tuple(vocab.eos_token_ids),
                                      budget.mask_seconds)
        self.compile_seconds = time.perf_counter() - start
        if self.compile_seconds > budget.seconds:
            raise budget.over("seconds", f"{self.compile_seconds:.1f}", budget.seconds)
        gc_policy.after_compile()

    def _terminal_dfas(self, grammar: Grammar, start: float, budget: CompileBudget) -> dict:
        self._dfa_cache = {}
        for name, term in grammar.terminals.items():
            if time.perf_counter() - start > budget.seconds:
                raise budget.over("seconds", f"over {budget.seconds:.0f}", budget.seconds)
            try:
                self._dfa_cache[name] = terminal_dfa(term.pattern, term.literal, budget)
            except ConstraintError as e:
                extra = {"budget": e.budget} if isinstance(e, CompileBudgetExceeded) else {}
                raise type(e)(f"terminal {name}: {e.message}", e.location or name, keyword=e.keyword, **extra) from e
        return self._dfa_cache

    def accepts_text(self, data: bytes | str) -> bool:
        """Is ``data`` a complete sentence of the grammar? (no tokenizer involved)"""
        if isinstance(data, str):
            data = data.encode("utf-8")
        state = self.advance_bytes((self.initial, 0), data)
        return state is not None and self.can_end(*state)

    def advance_bytes(self, state: tuple[EarleySet, int], data: bytes) -> tuple[EarleySet, int] | None:
        """The (column, lexer state) after ``data``, or None if ``data`` cannot be read."""
        col, s = state
        lex = self.lexer.for_lexemes(col.lexing)
        i, s = lex.run(s, data, 0)  # as far as the lexeme in progress goes
        while i < len(data):  # byte i cannot extend it: it ends here, or nothing reads on
            if not lex.accepting[s]:
                return None
            col = self.parser.scan(col, lex.accepts[s])
            if col is None:
                return None
            lex = self.lexer.for_lexemes(col.lexing)
            j, s = lex.run(0, data, i)
            if j == i:
                return None
            i = j
        return col, s

    def walk(self, data: bytes, state: tuple[EarleySet, int] | None = None) -> Walk:
        """Read ``data`` from ``state`` (default: the start) as far as the grammar allows.

        The greedy lexing of `advance_bytes` (a lexeme continues while it can; it ends
        where the next byte only starts another), reporting where it stopped and where
        each lexeme ended: a `Walk`. ``walk(data).consumed == len(data)`` means ``data``
        is a valid prefix.
        """
        col, s = state or (self.initial, 0)
        lex = self.lexer.for_lexemes(col.lexing)
        start, ends = 0, []
        i, s = lex.run(s, data, 0)
        while i < len(data):  # byte i cannot extend the lexeme in progress
            if not lex.accepting[s]:
                return Walk(i, (col, s), start, ends)
            ncol = self.parser.scan(col, lex.accepts[s])
            if ncol is None:
                return Walk(i, (col, s), start, ends)
            nlex = self.lexer.for_lexemes(ncol.lexing)
            j, ns = nlex.run(0, data, i)
            if j == i:
                return Walk(i, (col, s), start, ends)
            ends.append((i, frozenset(lex.accepts[s])))
            col, lex, start, s, i = ncol, nlex, i, ns, j
        return Walk(len(data), (col, s), start, ends)

    def lexeme_complete(self, state: tuple[EarleySet, int]) -> bool:
        """Whether the lexeme in progress at ``state`` could end here (True between lexemes)."""
        col, s = state
        return s == 0 or bool(self.lexer.for_lexemes(col.lexing).accepting[s])

    def lexeme_maximal(self, state: tuple[EarleySet, int]) -> bool:
        """Whether the lexeme in progress at ``state`` is complete and no byte extends it."""
        col, s = state
        lex = self.lexer.for_lexemes(col.lexing)
        return s != 0 and bool(lex.accepting[s]) and bool((lex.table_row(s) < 0).all())

    def lexeme_ids(self, state: tuple[EarleySet, int]) -> frozenset[int]:
        """The lexemes the text in progress at ``state`` would end as (empty if none)."""
        col, s = state
        return frozenset(self.lexer.for_lexemes(col.lexing).accepts[s]) if s else frozenset()

    def can_end(self, col: EarleySet, s: int) -> bool:
        return can_end(self.parser, col, self.lexer.for_lexemes(col.lexing), s)

    def scanned_lexemes(self, col: EarleySet) -> list[frozenset[str]]:
        """The lexemes read to reach ``col``, as sets of terminal names (for probabilities)."""
        out = []
        while col.parent is not None:
            out.append(frozenset(self.lexeme_names[i] for i in col.lexemes))
            col = col.parent
        return out[::-1]


_dfa_cache: OrderedDict = OrderedDict()
_dfa_cache_lock = threading.Lock()
DFA_CACHE_SIZE = 8192
# lexeme tables kept, in all (full after MaskBench's 382 schemas). 64 MB was tried: compiling
# the same schemas again (bench/mask_memory.py --repeat) then rebuilt the largest schemas'
# tables every time (3.9 s of DFA builds against 1.4 s) and its peak RSS was higher, not
# lower (docs/benchmarks.md, h11-rss)
DFA_CACHE_BYTES = 256 << 20
_dfa_cache_bytes = 0
_SHIPPED_LIMITS = CompileBudget()  # format_lexemes' DFAs: built with to_dfa's defaults, which these are


def terminal_dfa(pattern: str | Node, is_literal: bool = False, budget: CompileBudget | None = None) -> ByteDFA:
    """The DFA of a terminal pattern, shared across grammars (JSON lexemes repeat a lot)."""
    limits = {} if budget is None else {"max_states": budget.dfa_states, "max_trie_states": budget.choice_states}
    key = (pattern, is_literal, tuple(sorted(limits.items())))
    with _dfa_cache_lock:
        dfa = _dfa_cache.get(key)
        if dfa is not None:
            _dfa_cache.move_to_end(key)
            return dfa
    shipped = None
    if budget is None or (budget.dfa_states >= _SHIPPED_LIMITS.dfa_states
                          and budget.choice_states >= _SHIPPED_LIMITS.choice_states):
        shipped = dfa_for(pattern)  # a format's lexeme, built within the default limits
    if shipped is not None:
        dfa = shipped
    elif isinstance(pattern, str) and is_literal:
        dfa = literal_dfa(pattern.encode("utf-8"))
    else:
        dfa = to_dfa(parse_regex(pattern) if isinstance(pattern, str) else pattern, **limits)
    if dfa.table.nbytes > DFA_CACHE_BYTES // 4:
        return dfa  # a huge lexeme (100,000 choices) would push out every other one
    with _dfa_cache_lock:
        global _dfa_cache_bytes
        old = _dfa_cache.pop(key, None)
        _dfa_cache_bytes += dfa.table.nbytes - (0 if old is None else old.table.nbytes)
        _dfa_cache[key] = dfa
        while len(_dfa_cache) > DFA_CACHE_SIZE or _dfa_cache_bytes > DFA_CACHE_BYTES:
            _, old = _dfa_cache.popitem(last=False)
            _dfa_cache_bytes -= old.table.nbytes
    return dfa


def _accepts_nothing(accepting) -> bool:
    """``not accepting.any()``; for a bool array, its bytes searched for a 1 (~20x faster
    than numpy's reduction on these short arrays: once per lexeme per compile)."""
    if accepting.dtype == bool:
        return 1 not in accepting.tobytes()
    return not accepting.any()


def _split_empty_terminals(grammar: Grammar, dfas: dict) -> Grammar:
    """Lexemes must be non-empty: a terminal T that matches "" becomes T? over a non-empty T."""
    empty = {n for n, d in dfas.items() if d.accepting[0]}
    if not empty:
        return grammar
    rules = []
    for r in grammar.rules:
        rules.append(Rule(r.lhs, tuple(f"{s}?ε" if s in empty else s for s in r.rhs), r.weight))
    for n in empty:
        rules.append(Rule(f"{n}?ε", (n,)))
        rules.append(Rule(f"{n}?ε", ()))
    terminals: dict[str, Terminal] = dict(grammar.terminals)
    out = Grammar(grammar.start, rules, terminals, list(grammar.ignore), grammar.source, grammar.unique_keys)
    if grammar.is_trimmed():  # T?ε is used where T was, and derives text as T does
        out.mark_trimmed()
    return out


def token_table(vocab: Vocabulary) -> TokenTable:
    """The ``TokenTable`` (tokens' bytes, their trie) of ``vocab``, built once per
    vocabulary object and kept on it."""
    cached = getattr(vocab, "_sgl_token_table", None)
    if cached is None:
        if hasattr(vocab, "byte_matrix"):
            cached = TokenTable(*vocab.byte_matrix(), vocab.n_vocab)
        else:
            cached = TokenTable.from_token_bytes(list(vocab.token_bytes), vocab.n_vocab)
        try:
            vocab._sgl_token_table = cached
        except AttributeError:
            pass
    return cached


def compile_ir(grammar: Grammar, vocab: Vocabulary | None = None, **options: Any) -> CompiledGrammar:
    """Compile a grammar IR for ``vocab``."""
    return CompiledGrammar(grammar, vocab, **options)


def choices_grammar(choices: Sequence[str]) -> Grammar:
    """A grammar accepting exactly one of ``choices``."""
    from .grammar import GrammarBuilder

    if not choices:
        raise ConstraintError("choices must not be empty")
    for c in choices:
        if not isinstance(c, str):
            raise ConstraintError(f"choice {c!r} is not a string")
    for i, c in enumerate(choices):
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:
            raise ConstraintError(f"choice {i} holds a lone surrogate, which no text can contain", f"choice {i}") from None
    b = GrammarBuilder()
    short = [c for c in choices if len(c) <= LONG_CHOICE]
    if short:
        # one lexeme for all short choices: a single DFA (a trie of them) does the work
        b.rule("start", (b.terminal(LiteralAlt(tuple(short)), hint="choice"),))
    for c in dict.fromkeys(c for c in choices if len(c) > LONG_CHOICE):
        b.rule("start", tuple(b.literal(c[i:i + CHOICE_CHUNK]) for i in range(0, len(c), CHOICE_CHUNK)))
    return b.build("start", source="choices")


# Choices longer than this are not put in the trie but spelled as literal chunks of
# CHOICE_CHUNK characters (rules over shared chunk lexemes): a trie of 1,000 strings of
# 750 characters is a 745,000-state DFA, too large to walk the vocabulary through at
# every state. Exact with greedy lexing: chunks are the same length in characters
# (UTF-8 is prefix-free, so none is a proper prefix of another) except a string's last
# one, after which only the end of the text comes.
LONG_CHOICE = 256
CHOICE_CHUNK = 64
