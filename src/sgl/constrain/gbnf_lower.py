"""Lowering of a parsed GBNF / EBNF grammar to the grammar IR: regular parts merged
into lexemes where greedy lexing stays exact (see ``gbnf.py``), the rest as rules."""

from __future__ import annotations

from .counters import LARGE_COUNT
from .errors import CompileBudgetExceeded, check_deadline
from .gbnf_lexemes import _Candidate, _co_allowed, _cross_extension, _Glushkov, _Lexeme, _TooBig
from .gbnf_parse import GAlt, GChars, GExpr, GRef, GRep, GSeq, _refs
from .grammar import Grammar, GrammarBuilder, Terminal
from .regex_ast import NOTHING, Alt, Chars, Node, Repeat, Seq, nullable

MAX_NESTED_COPIES = 2_000  # a repetition lowered to rules, times the ones nested in it
MAX_CHECKED_LEXEMES = 3_000  # lexemes of one grammar checked pairwise for safe merging


# ---------------------------------------------------------------------------
# Regular parts: which rules do not recurse, and their regex
# ---------------------------------------------------------------------------


def _regular_rules(rules: dict[str, GExpr]) -> set[str]:
    """Rules from which no recursion is reachable: their language is regular."""
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    regular: set[str] = set()

    def visit(name: str) -> bool:
        s = state.get(name)
        if s == 1:
            return False
        if s == 2:
            return name in regular
        state[name] = 1
        ok = True
        for ref in _refs(rules[name]):
            ok = visit(ref.name) and ok
        state[name] = 2
        if ok:
            regular.add(name)
        return ok

    for name in rules:
        visit(name)
    return regular


def _to_regex(e: GExpr, rules: dict[str, GExpr], memo: dict[str, Node]) -> Node:
    if isinstance(e, GChars):
        return Chars(e.ranges) if e.ranges else NOTHING
    if isinstance(e, GRef):
        if e.name not in memo:
            memo[e.name] = _to_regex(rules[e.name], rules, memo)
        return memo[e.name]
    if isinstance(e, GSeq):
        return Seq(tuple(_to_regex(i, rules, memo) for i in e.items))
    if isinstance(e, GAlt):
        return Alt(tuple(_to_regex(i, rules, memo) for i in e.items))
    return Repeat(_to_regex(e.item, rules, memo), e.min, e.max)


def _is_nothing(n: Node) -> bool:
    if isinstance(n, Chars):
        return not n.ranges
    if isinstance(n, Seq):
        return any(_is_nothing(i) for i in n.items)
    if isinstance(n, Alt):
        return all(_is_nothing(i) for i in n.items)
    if isinstance(n, Repeat):
        return n.min > 0 and _is_nothing(n.item)
    return False


def _non_empty(n: Node) -> Node:
    """A node for ``L(n)`` minus the empty string (a lexeme must consume something)."""
    if not nullable(n):
        return n
    if isinstance(n, Alt):
        items = (_non_empty(i) for i in n.items)
        return Alt(tuple(i for i in items if not _is_nothing(i)))
    if isinstance(n, Seq):
        if not n.items:
            return NOTHING
        head, rest = n.items[0], Seq(n.items[1:])
        # head and rest are both nullable here: nonempty = (head+ rest) | (rest+)
        return Alt((Seq((_non_empty(head), rest)), _non_empty(rest)))
    if isinstance(n, Repeat):
        if n.max == 0:
            return NOTHING
        # drop the leading empty iterations: one nonempty item, then any further ones
        rest_max = None if n.max is None else n.max - 1
        return Seq((_non_empty(n.item), Repeat(n.item, 0, rest_max)))
    return n


# ---------------------------------------------------------------------------
# Lowering to the IR
# ---------------------------------------------------------------------------


class _Lowering:
    def __init__(self, rules: dict[str, GExpr], start: str, dialect: str):
        self.rules = rules
        self.start = start
        self.dialect = dialect
        self.regular = _regular_rules(rules)
        self.regex_memo: dict[str, Node] = {}
        self.split: set = set()  # candidates not to merge (lowered piece by piece)
        self.cands: dict[object, _Candidate | None] = {}
        self.char_automata: dict[tuple, _Glushkov] = {}
        self.cross: dict[tuple[str, str], int] = {}

    def run(self) -> Grammar:
        while True:
            grammar, lexemes = self.generate()
            bad = self.violations(grammar, lexemes)
            if not bad:
                return grammar
            self.split |= bad

    # -- candidates ------------------------------------------------------
    def is_regular(self, e: GExpr) -> bool:
        return all(r.name in self.regular for r in _refs(e))

    def candidate(self, key, e: GExpr) -> _Candidate | None:
        """The lexeme to merge ``e`` into, or None when it is lowered piece by piece."""
        if key in self.split:
            return None
        if key not in self.cands:
            self.cands[key] = self.make_candidate(e) if self.is_regular(e) else None
        return self.cands[key]

    def make_candidate(self, e: GExpr) -> _Candidate | None:
        node = _to_regex(e, self.rules, self.regex_memo)
        pattern = _non_empty(node)
        if _is_nothing(pattern):
            return None
        try:
            automaton = _Glushkov(pattern)
        except _TooBig:
            return None
        return _Candidate(pattern, nullable(node), repr(pattern), automaton)

    # -- generation ------------------------------------------------------
    def generate(self) -> tuple[Grammar, dict[str, _Lexeme]]:
        self.b = GrammarBuilder()
        self.lexemes: dict[str, _Lexeme] = {}
        self.by_ident: dict[str, str] = {}
        emitted: set[str] = set()
        self.todo = [self.start]
        while self.todo:
            check_deadline(f"lowering the {self.dialect.upper()} grammar")
            name = self.todo.pop()
            if name not in emitted:
                emitted.add(name)
                self.emit_rule(name)
        return self.b.build(self.start, source=self.dialect), self.lexemes

    def emit_rule(self, name: str) -> None:
        body = self.rules[name]
        cand = self.candidate(("rule", name), body)
        if cand is not None:
            self.emit_merged(name, cand, ("rule", name))
        else:
            for alt in body.items if isinstance(body, GAlt) else (body,):
                self.b.rule(name, self.lower_seq(alt))

    def emit_merged(self, lhs: str, cand: _Candidate, key) -> None:
        self.b.rule(lhs, (self.lexeme(cand, key, hint=lhs.split("#")[0]),))
        if cand.nullable:
            self.b.rule(lhs, ())

    def lexeme(self, cand: _Candidate, key, hint: str) -> str:
        name = self.by_ident.get(cand.ident)
        if name is None:
            name = self.b.fresh(f"<{hint}>")
            self.b.terminals[name] = Terminal(name, cand.pattern)
            self.by_ident[cand.ident] = name
            self.lexemes[name] = _Lexeme(cand.automaton, cand.ident, set())
        self.lexemes[name].candidates.add(key)
        return name

    def char_terminal(self, ranges) -> str:
        if not ranges:
            return self.b.terminal(NOTHING, hint="[]")
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            name = self.b.literal(chr(ranges[0][0]))
        else:
            name = self.b.terminal(Chars(ranges), hint="[class]")
        if name not in self.lexemes:
            if ranges not in self.char_automata:
                self.char_automata[ranges] = _Glushkov(Chars(ranges))
            self.lexemes[name] = _Lexeme(self.char_automata[ranges], repr(ranges), set())
        return name

    def lower_seq(self, e: GExpr) -> list[str]:
        """Symbols for a sequence; maximal runs of regular items are merge candidates."""
        items = e.items if isinstance(e, GSeq) else (e,)
        out: list[str] = []
        run: list[GExpr] = []
        for it in items:
            if self.is_regular(it):
                run.append(it)
            else:
                out += self.lower_run(run)
                run = []
                out += self.lower_item(it)
        out += self.lower_run(run)
        return out

    def lower_run(self, run: list[GExpr]) -> list[str]:
        key = ("run",) + tuple(id(it) for it in run)
        cand = self.candidate(key, GSeq(tuple(run))) if len(run) > 1 else None
        if cand is None:
            return [s for it in run for s in self.lower_item(it)]
        return [self.merged_symbol(key, cand)]

    def merged_symbol(self, key, cand: _Candidate) -> str:
        if not cand.nullable:
            return self.lexeme(cand, key, hint="lex")
        lhs = self.b.fresh("lex")
        self.emit_merged(lhs, cand, key)
        return lhs

    def lower_item(self, e: GExpr) -> list[str]:
        if isinstance(e, GChars):
            return [self.char_terminal(e.ranges)]
        if isinstance(e, GRef):
            self.todo.append(e.name)
            return [e.name]
        key = ("node", id(e))
        cand = self.candidate(key, e)
        if cand is not None:
            return [self.merged_symbol(key, cand)]
        if isinstance(e, GSeq):
            return self.lower_seq(e)
        if isinstance(e, GAlt):
            lhs = self.b.fresh("alt")
            for alt in e.items:
                self.b.rule(lhs, self.lower_seq(alt))
            return [lhs]
        return [self.lower_repeat(e)]

    def counted_terminal(self, e: GRep) -> str:
        """``[class]{m,n}`` with a large count: one terminal, which the compiler counts
        by rules over chunk lexemes (``counters``) instead of unrolling it."""
        x = Chars(e.item.ranges)
        name = self.b.terminal(Repeat(x, e.min, e.max), hint="[count]")
        if name not in self.lexemes:
            # for the merge check, X+ stands for it: a superset, so the check stays safe
            self.lexemes[name] = _Lexeme(_Glushkov(Repeat(x, 1, None)), repr((x, e.min, e.max)), set())
        return name

    def lower_group(self, e: GExpr) -> str:
        """One symbol for ``e`` (a fresh rule when it lowers to several)."""
        syms = self.lower_item(e)
        if len(syms) == 1:
            return syms[0]
        lhs = self.b.fresh("grp")
        self.b.rule(lhs, syms)
        return lhs

    def lower_repeat(self, e: GRep) -> str:
        if isinstance(e.item, GChars) and e.item.ranges and max(e.min, e.max or 0) > LARGE_COUNT:
            return self.counted_terminal(e)
        copies = _repeat_copies(e)
        if copies > MAX_NESTED_COPIES:
            # X{0,100} inside {0,100} is a chain of optionals in a chain of optionals:
            # 10,000 ways to split "x"*k, which parsing (not compiling) would pay for
            raise CompileBudgetExceeded(
                f"nested repetitions in the {self.dialect.upper()} grammar multiply to {copies} "
                f"copies, over the budget of {MAX_NESTED_COPIES} (budget: rules)", budget="rules"
            )
        x = self.lower_group(e.item)
        lhs = self.b.fresh("rep")
        prefix = [x] * e.min
        if e.max is None:
            # star -> ε | star x : left recursion keeps Earley's item sets small
            star = self.b.fresh("star")
            self.b.rule(star, ())
            self.b.rule(star, (star, x))
            self.b.rule(lhs, prefix + [star])
            return lhs
        tail: list[str] = []
        if e.max > e.min:  # a chain of nested optionals: unambiguous
            opt = None
            for _ in range(e.max - e.min):
                new = self.b.fresh("opt")
                self.b.rule(new, ())
                self.b.rule(new, (x,) if opt is None else (x, opt))
                opt = new
            tail = [opt]
        self.b.rule(lhs, prefix + tail)
        return lhs

    # -- the merge check -------------------------------------------------
    def violations(self, g: Grammar, lexemes: dict[str, _Lexeme]) -> set:
        """Candidates whose lexemes greedy lexing could cut at the wrong place.

        Two lexemes are *co-allowed* when both may be allowed at the same lexeme
        boundary. For each merged lexeme ``s`` and each ``t`` co-allowed with it (``t`` =
        ``s`` included), no byte that may start what follows ``t`` may extend a complete
        match of ``t`` within ``s``. Single characters extend nothing, so only merged
        ``s`` matter.
        """
        merged = [t for t, lx in lexemes.items() if lx.candidates]
        if not merged:
            return set()
        if len(lexemes) > MAX_CHECKED_LEXEMES:  # the check below is quadratic in them
            raise CompileBudgetExceeded(
                f"the {self.dialect.upper()} grammar needs {len(lexemes)} lexemes, over the "
                f"{MAX_CHECKED_LEXEMES} whose tokenization can be checked (budget: lexemes)", budget="lexemes"
            )
        co_allowed, follow_bytes, first_bytes = _co_allowed(g, lexemes)
        bad: set = set()
        for s in merged:
            ls = lexemes[s]
            for t, lt in lexemes.items():
                if not (first_bytes[t] & first_bytes[s] and follow_bytes[t] and s in co_allowed[t]):
                    continue
                key = (lt.ident, ls.ident)
                if key not in self.cross:
                    self.cross[key] = _cross_extension(lt.automaton, ls.automaton)
                if self.cross[key] & follow_bytes[t]:
                    bad |= ls.candidates | lt.candidates
        return bad


def _repeat_copies(e: GExpr) -> int:
    """How many copies of its innermost items nested bounded repetitions make."""
    if isinstance(e, GRep):
        return max(1, e.max if e.max is not None else e.min) * _repeat_copies(e.item)
    if isinstance(e, GSeq | GAlt):
        return max((_repeat_copies(it) for it in e.items), default=1)
    return 1
