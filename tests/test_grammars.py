"""Grammar-text frontends: Lark, GBNF (llama.cpp) and transformers-cfg EBNF -> IR.

Oracles are independent of the code under test: for GBNF/EBNF a character-level Earley
recognizer over the parsed rules (no lexing, no merging), for Lark Lark's own Earley
parser, for JSON ``json.loads``.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import re._constants as sre_c
import re._parser as sre_parse
import zlib
from pathlib import Path

import lark
import pytest
from conftest import require_shared

from sgl.constrain.errors import ConstraintError
from sgl.constrain.gbnf import (
    GAlt,
    GChars,
    GRef,
    GRep,
    GSeq,
    ebnf_grammar,
    gbnf_grammar,
    parse_rules,
)
from sgl.constrain.lark_grammar import LAZY_IDIOMS, lark_grammar

# ---------------------------------------------------------------------------
# Every real grammar file converts, or is refused for a stated reason
# ---------------------------------------------------------------------------

# path relative to data/grammars -> a piece of the refusal message
REFUSED = {
    "grammar-guide/benchmarks_json.lark": "line 3, column 31",  # template placeholder ~$NUM_REPEATS
    "grammar-guide/benchmarks_json.ebnf": "unfilled template placeholder",  # $REPEATED_STRING_VALUES
    "grammar-guide/python.lark": "_DEDENT, _INDENT have no pattern",
    "syncode/larkm_grammars_from_lark/python.lark": "_DEDENT, _INDENT have no pattern",
    "syncode/parsers_grammars/python_grammar.lark": "_DEDENT, _INDENT have no pattern",
    "llguidance/lark.lark": "terminal REGEXP uses a lazy quantifier",
    "llguidance/rfc.lark": "Empty terminals are not allowed",  # llguidance's dialect allows ""
    "syncode/larkm_grammars_from_lark/lark.lark": "terminal OP uses a negative lookahead",
    "outlines/common.lark": "start rule 'start' is not defined",  # a terminal library
    "syncode/larkm_grammars_from_lark/common.lark": "start rule 'start' is not defined",
    "syncode/larkm_grammars_from_lark/unicode.lark": "start rule 'start' is not defined",
}


def _grammar_files() -> list[str]:
    from conftest import shared_data

    root = shared_data() / "grammars"
    if not root.exists():
        return ["<missing>"]
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".lark", ".gbnf", ".ebnf")
    )


def _convert(rel: str):
    path = require_shared("grammars") / rel
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".lark":
        return lark_grammar(text)
    return (gbnf_grammar if path.suffix == ".gbnf" else ebnf_grammar)(text)


@pytest.mark.parametrize("rel", _grammar_files())
def test_real_grammar_converts_or_is_refused_clearly(rel):
    if rel == "<missing>":
        require_shared("grammars")
    if rel in REFUSED:
        with pytest.raises(ConstraintError) as info:
            _convert(rel)
        assert REFUSED[rel] in str(info.value)
    else:
        g = _convert(rel)
        g.validate()
        assert g.rules and g.terminals


def test_grammar_file_count():
    require_shared("grammars")  # skips with the path when the shared data is absent
    assert len(_grammar_files()) >= 60


# ---------------------------------------------------------------------------
# GBNF parser details and errors
# ---------------------------------------------------------------------------


def test_gbnf_escapes_classes_and_repetition():
    rules = parse_rules(
        r"""root ::= "\x41\u00e9\U0001F600\t\"\\" [^a-z\n\]] x{2,3} x{2,} x{4} .
x ::= "x" # comment
""")
    seq = rules["root"]
    assert isinstance(seq, GSeq)
    lit = seq.items[0]
    assert [c.ranges[0][0] for c in lit.items] == [0x41, 0xE9, 0x1F600, 9, ord('"'), ord("\\")]
    cls = seq.items[1]
    assert not any(lo <= ord("q") <= hi for lo, hi in cls.ranges)
    assert not any(lo <= ord("]") <= hi for lo, hi in cls.ranges)
    assert any(lo <= ord("A") <= hi for lo, hi in cls.ranges)
    assert [(r.min, r.max) for r in seq.items[2:5]] == [(2, 3), (2, None), (4, 4)]
    assert seq.items[5].ranges == ((0, 0x10FFFF),)


def test_gbnf_multiline_rules_and_empty_alternative():
    g = gbnf_grammar('ws ::= | " "\nroot ::=\n  "a" (\n "b" |\n "c" ) ws |\n')
    g.validate()
    assert any(r.lhs == "root" and r.rhs == () for r in g.rules)


@pytest.mark.parametrize(
    "text, message, where",
    [
        # literals may hold raw newlines (as in llama.cpp): the one left open is the last
        ('root ::= "a\nx ::= "b"', "unterminated", "line 2, column 9"),
        ("root ::= foo\n", "undefined rule 'foo'", "line 1, column 10"),
        ('root ::= "a"\nroot ::= "b"\n', "defined twice", "line 2, column 1"),
        ('root ::= "a" )\n', "expected end of rule", "line 1, column 14"),
        ("root ::= [a-z\n", "unterminated character class", "line 1, column 10"),
        ('root ::= "\\q"\n', "unknown escape", "line 1, column 11"),
        ('root ::= "a"{3,1}\n', "max < min", "line 1, column 13"),
        ('root ::= ("a" | "b"\n', "expected ')'", "line 2, column 1"),
        ("root = 'a'\n", "expected '::='", "line 1, column 6"),
        ("root ::= * \n", "must follow an item", "line 1, column 10"),
        ('root ::= "a" $X\n', "template placeholder", "line 1, column 14"),
    ],
)
def test_gbnf_errors_have_line_and_column(text, message, where):
    with pytest.raises(ConstraintError) as info:
        gbnf_grammar(text)
    assert message in str(info.value)
    assert info.value.location == where


def test_gbnf_missing_root():
    with pytest.raises(ConstraintError, match="no 'root' rule"):
        gbnf_grammar('main ::= "a"\n')
    assert gbnf_grammar('main ::= "a"\n', start="main").start == "main"


# ---------------------------------------------------------------------------
# Lark frontend details
# ---------------------------------------------------------------------------


def test_lark_features():
    g = lark_grammar(r"""
?start: item+
item: WORD | NUM | _sep{"x"} | "a".."c" | KW
_sep{t}: "[" t "]"
KW.2: "select"i
WORD: /[a-z]+/i
%import common.INT -> NUM
%import common.WS
%ignore WS
""")
    g.validate()
    assert g.ignore == ["WS"]
    assert g.terminals["KW"].pattern == "(?i:select)"
    assert g.terminals["WORD"].pattern == "(?i:[a-z]+)"
    assert all(r.weight == 1.0 for r in g.rules)


@pytest.mark.parametrize(
    "text, message, where",
    [
        ("start: A\nA: /a(?=b)/\n", "terminal A uses a lookahead", None),
        ("start: A\nA: /(a)\\1/\n", "terminal A uses a backreference", None),
        ("start: A\nA: /^a/\n", "terminal A uses an anchor", None),
        ("start: A\nA: /a+?b/\n", "terminal A uses a lazy quantifier", None),
        ('start: a b\na: "x"\n', "Lark grammar error", "line 1, column 10"),
        ('start: "x" )\n', "Lark grammar", "line 1, column 12"),
        ("start: _INDENT\n%declare _INDENT\n", "_INDENT have no pattern", "line 1, column 8"),
        ('begin: "x"\n', "start rule 'start' is not defined", None),
    ],
)
def test_lark_errors(text, message, where):
    with pytest.raises(ConstraintError) as info:
        lark_grammar(text)
    assert message in str(info.value)
    if where:
        assert info.value.location == where


def _longest_viable_match(regex: str, text: str) -> int | None:
    """Length of the lexeme a greedy lexer cuts from ``text`` with ``regex`` (brute force)."""
    best = None
    for end in range(len(text) + 1):
        if re.fullmatch(regex, text[:end]):
            best = end
    return best


@pytest.mark.parametrize(
    "original, opening",
    [
        (r'".*?(?<!\\)(\\\\)*?"', '"'),  # common.ESCAPED_STRING
        (r'".*?(?<!\\)(\\\\)*?"(?:i)?', '"'),
        (r'"(?:[^"\\]|\\.)*?"', '"'),
        (r'".*?"', '"'),
        (r"`.*?`", "`"),
        ("\\/\\*(.|\n)*?\\*\\/", "/*"),
    ],
)
def test_lazy_idiom_rewrites_cut_the_same_lexemes(original, opening):
    """Lark's lexer runs ``re.match`` (shortest for lazy); we lex greedily (longest)."""
    from sgl.constrain.lark_grammar import rewrite_lazy_idioms

    rewritten = rewrite_lazy_idioms(original, dotall=False)
    assert rewritten != original
    assert "*?" not in rewritten and "(?<" not in rewritten
    rng = random.Random(7)
    alphabet = '"\\ab*/`\n i'
    checked = 0
    for _ in range(3000):
        text = opening + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        m = re.match(original, text)
        ours = _longest_viable_match(rewritten, text)
        if m is None:
            assert ours is None, (text, rewritten)
        else:
            checked += 1
            # a longer greedy cut is fine only where Lark would cut there too (the
            # optional (?:i) flag suffix)
            assert ours is not None, (text, rewritten)
            assert ours == m.end() or re.match(original, text[:ours]).end() == ours, (
                text,
                rewritten,
            )
    assert checked > 50
    assert len(LAZY_IDIOMS) >= 4


# ---------------------------------------------------------------------------
# Independent oracle: character-level Earley over the parsed GBNF rules
# ---------------------------------------------------------------------------


def _char_bnf(rules: dict):
    """GBNF AST -> {nonterminal: [rhs, ...]}; a terminal is a tuple of code point ranges."""
    out: dict[str, list[tuple]] = {}
    counter = [0]

    def fresh() -> str:
        counter[0] += 1
        return f"_{counter[0]}"

    def sym(e) -> list:
        if isinstance(e, GChars):
            return [e.ranges]
        if isinstance(e, GRef):
            return [e.name]
        if isinstance(e, GSeq):
            return [s for it in e.items for s in sym(it)]
        if isinstance(e, GAlt):
            n = fresh()
            out[n] = [tuple(sym(it)) for it in e.items]
            return [n]
        x = sym(e.item)
        n = fresh()
        if e.max is None:
            star = fresh()
            out[star] = [(), tuple(x) + (star,)]
            out[n] = [tuple(x) * e.min + (star,)]
        else:
            alts = [tuple(x) * k for k in range(e.min, e.max + 1)]
            out[n] = alts
        return [n]

    for name, body in rules.items():
        items = body.items if isinstance(body, GAlt) else (body,)
        out[name] = [tuple(sym(it)) for it in items]
    return out


def _earley_accepts(bnf: dict, start: str, text: str) -> bool:
    nullable: set[str] = set()
    changed = True
    while changed:
        changed = False
        for lhs, alts in bnf.items():
            if lhs not in nullable and any(
                all(isinstance(s, str) and s in nullable for s in rhs) for rhs in alts
            ):
                nullable.add(lhs)
                changed = True
    cps = [ord(c) for c in text]
    sets: list[set] = [set() for _ in range(len(cps) + 1)]
    for i in range(len(bnf[start])):
        sets[0].add((start, i, 0, 0))
    for pos in range(len(cps) + 1):
        work = list(sets[pos])
        while work:
            lhs, ai, dot, origin = work.pop()
            rhs = bnf[lhs][ai]
            if dot < len(rhs):
                s = rhs[dot]
                if isinstance(s, str):
                    for j in range(len(bnf[s])):
                        item = (s, j, 0, pos)
                        if item not in sets[pos]:
                            sets[pos].add(item)
                            work.append(item)
                    if s in nullable:
                        item = (lhs, ai, dot + 1, origin)
                        if item not in sets[pos]:
                            sets[pos].add(item)
                            work.append(item)
                elif pos < len(cps) and any(lo <= cps[pos] <= hi for lo, hi in s):
                    sets[pos + 1].add((lhs, ai, dot + 1, origin))
            else:
                for plhs, pai, pdot, porigin in list(sets[origin]):
                    prhs = bnf[plhs][pai]
                    if pdot < len(prhs) and prhs[pdot] == lhs:
                        item = (plhs, pai, pdot + 1, porigin)
                        if item not in sets[pos]:
                            sets[pos].add(item)
                            work.append(item)
    return any(
        lhs == start and dot == len(bnf[lhs][ai]) and origin == 0
        for lhs, ai, dot, origin in sets[-1]
    )


def _min_heights(rules: dict) -> dict[str, int]:
    """Shortest derivation height of each rule, to steer generation to an end."""
    inf = 10**9
    h = {n: inf for n in rules}

    def height(e) -> int:
        if isinstance(e, GChars):
            return 0
        if isinstance(e, GRef):
            return h[e.name]
        if isinstance(e, GSeq):
            return max((height(i) for i in e.items), default=0)
        if isinstance(e, GAlt):
            return min(height(i) for i in e.items)
        return 0 if e.min == 0 else height(e.item)

    changed = True
    while changed:
        changed = False
        for n, body in rules.items():
            v = height(body) + 1
            if v < h[n]:
                h[n], changed = v, True
    return h


def _generate(rules: dict, start: str, rng: random.Random, max_depth: int = 12) -> str:
    heights = _min_heights(rules)

    def height(e) -> int:
        if isinstance(e, GRef):
            return heights[e.name]
        if isinstance(e, (GSeq,)):
            return max((height(i) for i in e.items), default=0)
        if isinstance(e, GAlt):
            return min(height(i) for i in e.items)
        if isinstance(e, GRep):
            return 0 if e.min == 0 else height(e.item)
        return 0

    def gen(e, depth: int) -> str:
        if isinstance(e, GChars):
            ranges = e.ranges
            ascii_part = [(lo, min(hi, 0x7E)) for lo, hi in ranges if lo <= 0x7E and hi >= 0x20]
            ascii_part = [(max(lo, 0x20), hi) for lo, hi in ascii_part]
            pick = ascii_part if ascii_part and rng.random() < 0.9 else ranges
            lo, hi = rng.choice(pick)
            cp = rng.randint(lo, hi)
            while 0xD800 <= cp <= 0xDFFF:
                cp = rng.randint(lo, hi)
            return chr(cp)
        if isinstance(e, GRef):
            return gen(rules[e.name], depth + 1)
        if isinstance(e, GSeq):
            return "".join(gen(i, depth) for i in e.items)
        if isinstance(e, GAlt):
            items = e.items
            if depth > max_depth:
                best = min(height(i) for i in items)
                items = [i for i in items if height(i) == best]
            return gen(rng.choice(items), depth)
        hi = e.max if e.max is not None else e.min + 3
        n = e.min if depth > max_depth else rng.randint(e.min, min(hi, e.min + 3))
        return "".join(gen(e.item, depth + 1) for _ in range(n))

    return gen(rules[start], 0)


def _mutate(text: str, rng: random.Random, alphabet: str) -> str:
    i = rng.randint(0, len(text))
    op = rng.random()
    if op < 0.4 and text:
        i = min(i, len(text) - 1)
        return text[:i] + text[i + 1 :]
    if op < 0.8:
        return text[:i] + rng.choice(alphabet) + text[i:]
    i = min(i, len(text) - 1)
    return text[:i] + rng.choice(alphabet) + text[i + 1 :] if text else text


def _compile(g):
    from sgl.constrain import compile_ir

    return compile_ir(g)


def _accepts(cg, text: str) -> bool:
    return cg.accepts_text(text)


GBNF_CASES = [
    ("llama.cpp/json.gbnf", 60),
    ("llama.cpp/json_arr.gbnf", 30),
    ("llama.cpp/arithmetic.gbnf", 60),
    ("llama.cpp/c.gbnf", 25),
    ("llama.cpp/chess.gbnf", 30),
    ("llama.cpp/english.gbnf", 20),
    ("llama.cpp/list.gbnf", 20),
    ("transformers-cfg/json.ebnf", 30),
    ("transformers-cfg/SMILES/generic.ebnf", 25),
    ("transformers-cfg/geo_query.ebnf", 15),
    ("transformers-cfg/overnight.ebnf", 15),
    ("transformers-cfg/cIE.ebnf", 15),
    ("transformers-cfg/custom_json_grammars/grammars/student.ebnf", 20),
    ("transformers-cfg/balanced_parentheses.ebnf", 20),
]


@pytest.mark.parametrize("rel, n", GBNF_CASES)
def test_gbnf_language_matches_char_level_oracle(rel, n):
    """Generated sentences are accepted; mutants are accepted iff the oracle accepts them.

    This checks the lexeme merging: greedy lexing over merged lexemes must give exactly
    the character-level language.
    """
    text = (require_shared("grammars") / rel).read_text(encoding="utf-8")
    dialect = "gbnf" if rel.endswith(".gbnf") else "ebnf"
    cg = _compile((gbnf_grammar if dialect == "gbnf" else ebnf_grammar)(text))
    rules = parse_rules(text, dialect)
    bnf = _char_bnf(rules)
    # A stable seed: hash() of a str changes from one process to the next.
    rng = random.Random(zlib.crc32(rel.encode()))
    accepted = rejected = 0
    for _ in range(n):
        sentence = _generate(rules, "root", rng)
        if len(sentence) > 300:
            continue
        assert _accepts(cg, sentence), (rel, sentence)
        alphabet = "".join(sorted(set(sentence))) + ' \n"{}[],:0a-.('
        for _ in range(3):
            mutant = _mutate(sentence, rng, alphabet)
            expected = _earley_accepts(bnf, "root", mutant)
            assert _accepts(cg, mutant) == expected, (rel, mutant, expected)
            accepted += expected
            rejected += not expected
    assert rejected > 0


def test_gbnf_json_accepts_only_json():
    text = (require_shared("grammars") / "llama.cpp/json.gbnf").read_text()
    cg = _compile(gbnf_grammar(text))
    rules = parse_rules(text)
    rng = random.Random(3)
    n_ok = 0
    for _ in range(150):
        sentence = _generate(rules, "root", rng)
        json.loads(sentence)
        for _ in range(4):
            mutant = _mutate(sentence, rng, '{}[]",:0123456789 \n\\aeftu-.')
            if _accepts(cg, mutant):
                n_ok += 1
                assert isinstance(json.loads(mutant), dict), mutant
    assert n_ok > 20


def test_gbnf_merges_regular_parts_into_lexemes():
    text = (require_shared("grammars") / "llama.cpp/json.gbnf").read_text()
    g = gbnf_grammar(text)
    # string, number, ws, "{" ws ... become multi-character lexemes
    assert sum(1 for t in g.terminals.values() if not t.literal) >= 6
    assert len(g.terminals) <= 15
    # a fully regular grammar is one lexeme
    chess = gbnf_grammar((require_shared("grammars") / "llama.cpp/chess.gbnf").read_text())
    assert len(chess.terminals) == 1


@pytest.mark.parametrize(
    "grammar, good, bad",
    [
        # the greedy-lexing trap: [a-z]* must not swallow the x
        ('root ::= [a-z]* "x"\n', ["x", "abx", "xxx"], ["ab", "abxy", ""]),
        ('root ::= ("a" | "ab") "c"\n', ["ac", "abc"], ["ab", "abbc"]),
        ('root ::= "a"* "a" "b"\n', ["ab", "aaab"], ["b", "aa"]),
        ('root ::= x x\nx ::= "a" | "aa"\n', ["aa", "aaa", "aaaa"], ["a", "aaaaa"]),
        ('root ::= ws "{" ws "}" ws\nws ::= [ ]*\n', ["{}", "  { }  "], ["{ } }"]),
        ('root ::= "" | "a" root\n', ["", "aaa"], ["b"]),
        ("root ::= [é]+ [è]\n", ["éè", "ééè"], ["è", "é"]),
        ('root ::= "a"{2,3} "a"?\n', ["aa", "aaa", "aaaa"], ["a", "aaaaa"]),
    ],
)
def test_gbnf_small_tricky_languages(grammar, good, bad):
    cg = _compile(gbnf_grammar(grammar))
    for s in good:
        assert _accepts(cg, s), (grammar, s)
    for s in bad:
        assert not _accepts(cg, s), (grammar, s)


# ---------------------------------------------------------------------------
# Lark: generated sentences parse with Lark and with us; mutants agree
# ---------------------------------------------------------------------------


def _sample_regex(pattern: str, rng: random.Random) -> str:
    """A random string matching a Python regex (the subset Lark terminals use)."""

    def gen(tree, icase: bool) -> str:
        out = []
        for op, arg in tree:
            if op == sre_c.LITERAL:
                c = chr(arg)
                out.append(c.swapcase() if icase and rng.random() < 0.5 else c)
            elif op == sre_c.NOT_LITERAL:
                out.append(rng.choice([c for c in "abcXYZ019 _-" if ord(c) != arg]))
            elif op == sre_c.ANY:
                out.append(rng.choice("abc xyz019_-+"))
            elif op == sre_c.IN:
                out.append(_sample_class(arg, rng))
            elif op == sre_c.BRANCH:
                out.append(gen(rng.choice(arg[1]), icase))
            elif op == sre_c.SUBPATTERN:
                flags = arg[1]
                out.append(gen(arg[3], icase or bool(flags & re.IGNORECASE)))
            elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT):
                lo, hi, sub = arg
                hi = min(hi, lo + 3)
                out.append("".join(gen(sub, icase) for _ in range(rng.randint(lo, hi))))
            else:
                raise NotImplementedError(op)
        return "".join(out)

    return gen(sre_parse.parse(pattern), False)


def _sample_class(items, rng: random.Random) -> str:
    cands: list[str] = []
    negate = False
    for op, arg in items:
        if op == sre_c.NEGATE:
            negate = True
        elif op == sre_c.LITERAL:
            cands.append(chr(arg))
        elif op == sre_c.RANGE:
            lo, hi = arg
            cands += [chr(c) for c in range(lo, min(hi, lo + 60) + 1)]
        elif op == sre_c.CATEGORY:
            cands += {
                sre_c.CATEGORY_DIGIT: "0123456789",
                sre_c.CATEGORY_SPACE: " \t\n",
                sre_c.CATEGORY_WORD: "abcXYZ_09",
            }.get(arg, "")
    if negate:
        pool = [c for c in "abcxyzXYZ0189 _-+.,;:!?" if c not in cands]
        return rng.choice(pool)
    return rng.choice(cands)


def _generate_lark(g, rng: random.Random, max_depth: int = 8) -> list[str]:
    """Random lexeme sequence from the IR (rules over terminals), biased to be short."""
    by_lhs: dict[str, list] = {}
    for r in g.rules:
        by_lhs.setdefault(r.lhs, []).append(r.rhs)
    inf = 10**9
    size = {n: inf for n in by_lhs}  # fewest lexemes a nonterminal derives

    def cost(rhs) -> int:
        return sum(1 if s in g.terminals else size[s] for s in rhs)

    changed = True
    while changed:
        changed = False
        for n, alts in by_lhs.items():
            v = min(cost(rhs) for rhs in alts)
            if v < size[n]:
                size[n], changed = v, True

    def gen(sym: str, depth: int, out: list[str]) -> None:
        if sym in g.terminals:
            t = g.terminals[sym]
            out.append(t.pattern if t.literal else _sample_regex(t.pattern, rng))
            return
        alts = by_lhs[sym]
        if depth > max_depth or rng.random() < 0.5:
            best = min(cost(rhs) for rhs in alts)
            alts = [rhs for rhs in alts if cost(rhs) == best]
        for s in rng.choice(alts):
            gen(s, depth + 1, out)

    out: list[str] = []
    gen(g.start, 0, out)
    return out


def _lark_accepts(parser: lark.Lark, text: str) -> bool:
    try:
        parser.parse(text)
        return True
    except lark.exceptions.LarkError:
        return False


LARK_CASES = [
    ("outlines/json.lark", True),
    ("outlines/arithmetic.lark", True),
    ("grammar-guide/json.lark", True),
    ("syncode/parsers_grammars/json_grammar.lark", True),
    ("syncode/parsers_grammars/calc_grammar.lark", True),
    # SQL: keywords and CNAME overlap, and JOIN_TYPE /FULL\sOUTER/ can swallow the
    # space after FULL: greedy lexing differs from Lark's dynamic lexer, so only
    # generated sentences are compared, not mutants.
    ("grammar-guide/sql.lark", False),
]


@pytest.mark.parametrize("rel, compare_mutants", LARK_CASES)
def test_lark_sentences_agree_with_lark(rel, compare_mutants):
    text = (require_shared("grammars") / rel).read_text(encoding="utf-8")
    g = lark_grammar(text)
    parser = lark.Lark(text, parser="earley", lexer="dynamic")
    rng = random.Random(11)
    sentences = []
    for _ in range(40):
        lexemes = _generate_lark(g, rng)
        sentence = " ".join(lexemes)
        if len(sentence) <= 300:
            sentences.append(sentence)
            assert _lark_accepts(parser, sentence), (rel, sentence)
    assert len(sentences) >= 20
    cg = _compile(g)
    for sentence in sentences:
        assert _accepts(cg, sentence), (rel, sentence)
    if not compare_mutants:
        return
    alphabet = '{}[]",:0123456789 .eE-+*/()\\ab'
    disagreements = []
    for sentence in sentences:
        for _ in range(5):
            mutant = _mutate(sentence, rng, alphabet)
            if _accepts(cg, mutant) != _lark_accepts(parser, mutant):
                disagreements.append(mutant)
    assert not disagreements, (rel, disagreements[:5])


def test_paths_are_relative():
    for rel in _grammar_files():
        assert not Path(rel).is_absolute()


def _random_gbnf(rng: random.Random) -> str:
    """A small random GBNF grammar over a, b, é (é and è share a UTF-8 lead byte)."""
    names = ["root", "r1", "r2"][: rng.randint(1, 3)]

    def expr(depth: int) -> str:
        r = rng.random()
        if depth > 2 or r < 0.3:
            k = rng.random()
            if k < 0.4:
                return '"' + "".join(rng.choice("ab") for _ in range(rng.randint(1, 2))) + '"'
            if k < 0.6:
                return rng.choice(["[ab]", "[a]", "[è-é]", "[^aé]"])
            return rng.choice(names)
        if r < 0.55:
            return " ".join(expr(depth + 1) for _ in range(rng.randint(2, 3)))
        if r < 0.75:
            return "(" + " | ".join(expr(depth + 1) for _ in range(rng.randint(2, 3))) + ")"
        return "(" + expr(depth + 1) + ")" + rng.choice(["*", "+", "?", "{1,2}", "{0,2}"])

    lines = []
    for name in names:
        alts = [expr(0) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.15:
            alts.append('""')
        lines.append(f"{name} ::= " + " | ".join(alts))
    return "\n".join(lines) + "\n"


def test_gbnf_random_grammars_match_char_level_oracle():
    """Lexeme merging on random small grammars: exact on every string up to length 4."""
    from sgl.constrain import compile_ir

    rng = random.Random(2024)
    strings = ["".join(p) for n in range(5) for p in itertools.product("abé", repeat=n)]
    tested = 0
    while tested < 40:
        text = _random_gbnf(rng)
        try:
            cg = compile_ir(gbnf_grammar(text))
        except ConstraintError:  # e.g. a start rule that derives no text
            continue
        bnf = _char_bnf(parse_rules(text))
        for s in strings:
            assert cg.accepts_text(s) == _earley_accepts(bnf, "root", s), (text, s)
        tested += 1


def test_gbnf_rule_name_at_end_of_input_is_an_error_not_a_hang():
    from sgl.constrain import ConstraintError
    from sgl.constrain.gbnf import gbnf_grammar

    with pytest.raises(ConstraintError, match="b"):
        gbnf_grammar('root ::= "a" b')
