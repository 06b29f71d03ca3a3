"""Keep a model that exposes no logits inside a grammar: let it write, repair where it errs.

Grammar Prompting (Wang et al., arXiv 2305.19234, §3.2) decodes with an API model
under a grammar without token masks: the model writes freely; an Earley parser finds the
longest prefix of its output that the grammar can still complete and the terminals
allowed after it; a correction is chosen there and the model resumes from the repaired
text. Here the correction is written by a small local *draft* model under the grammar's
token masks (``sgl.constrain.Matcher``), a few tokens up to the next lexeme boundary.

Token healing: if the valid prefix ends inside a lexeme that is not complete (``tru`` of
``true``), the repair starts at that lexeme's start; and the draft model re-generates
the last token of the prefix (the engine's ``HealingConstraint``: its output must begin
with that token's bytes), so it never has to continue from an unnatural token boundary.

``guide`` accepts any ``Callable[[str], str]`` (the continuation of the text it is
given), an SGL ``Backend``, an object with ``.generate(text, ...)`` (an OpenAI-compatible
client wrapper) or a ``LogitModel``.
"""

from __future__ import annotations

import collections
import inspect
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .correction_log import CorrectionLog

# Bytes tried first when looking for example strings: readable ones.
_BYTE_ORDER = list(dict.fromkeys(
    list(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list(b" \"'{}[](),:;.-+*/_=<>!?#$%&@\\^`|~\n\t") + list(range(256))
))
MAX_EXAMPLE_STATES = 50_000  # breadth-first search budget per lexer state
# A partial lexeme longer than this (a long string) is kept rather than rewritten whole;
# the draft's token healing still re-generates its last token.
MAX_HEAL_CHARS = 32


class BacktrackError(RuntimeError):
    """Backtracking gave up (corrections or resumptions ran out).

    ``prefix``: the longest grammar-valid text reached (nothing the model wrote that the
    grammar accepts is lost); ``log``: the corrections made; ``last_output``: the model's
    last continuation as it came.
    """

    def __init__(self, message: str, prefix: str, log: CorrectionLog, last_output: str = ""):
        super().__init__(message)
        self.prefix = prefix
        self.text = prefix
        self.log = log
        self.last_output = last_output


class Candidate(NamedTuple):
    """A lexeme the grammar allows next, with a shortest example of it."""

    terminal: str
    example: str

    def __str__(self) -> str:
        return f"{self.terminal} {self.example!r}"


@dataclass
class GuideResult:
    """What ``guide`` returns. ``text`` is accepted by the grammar when ``complete``."""

    text: str
    complete: bool
    log: CorrectionLog
    model_calls: int = 0
    draft_tokens: int = 0
    draft_reused_tokens: int = 0  # context positions the draft served from its KV cache
    discarded: str = ""  # text the model wrote after a complete sentence
    seconds: float = 0.0
    model_seconds: float = 0.0
    draft_seconds: float = 0.0

    @property
    def corrections(self) -> int:
        return len(self.log)

    def __str__(self) -> str:
        return self.text


# ============================================================== grammar position


@dataclass
class _Position:
    """Where a text stands in the grammar."""

    valid: int  # characters of the longest valid prefix
    state: tuple  # (Earley column, lexer state) after it
    lexeme_start: int  # character where the lexeme in progress at ``valid`` started
    whole: bool  # the whole text is a valid prefix


def _chars_within(text: str, n_bytes: int) -> int:
    """The most characters of ``text`` whose UTF-8 fits in ``n_bytes``."""
    if n_bytes >= len(text.encode("utf-8")):
        return len(text)
    return len(text.encode("utf-8")[:n_bytes].decode("utf-8", errors="ignore"))


def locate(cg: Any, text: str) -> _Position:
    """The longest valid prefix of ``text`` and the state after it."""
    data = text.encode("utf-8")
    walked = cg.walk(data)
    chars = _chars_within(text, walked.consumed)
    if len(text[:chars].encode("utf-8")) != walked.consumed:  # stopped inside a character: back off
        walked = cg.walk(text[:chars].encode("utf-8"))
    return _Position(chars, walked.state, _chars_within(text, walked.lexeme_start), chars == len(text))


def heal_point(cg: Any, text: str, pos: _Position) -> tuple[int, tuple]:
    """Where a repair starts: before the lexeme in progress if it is not complete (and
    not longer than ``MAX_HEAL_CHARS``), else at the end of the valid prefix."""
    if (cg.lexeme_complete(pos.state) or pos.lexeme_start >= pos.valid
            or pos.valid - pos.lexeme_start > MAX_HEAL_CHARS):
        return pos.valid, pos.state
    cut = pos.lexeme_start
    return cut, cg.walk(text[:cut].encode("utf-8")).state


def first_own_lexeme_end(cg: Any, state: tuple, data: bytes) -> int | None:
    """Where the first whole non-ignored lexeme that starts inside ``data`` ends (a byte
    offset in ``data``), read from ``state``; None if there is none yet.

    A lexeme is whole once the next byte starts another one, or when nothing can extend it.
    """
    ignore = cg.tables.ignore
    walked = cg.walk(data, state)
    for k, (end, lexemes) in enumerate(walked.lexeme_ends):
        # the first lexeme to end may have begun before ``data`` (then it is not ours)
        if (k > 0 or state[1] == 0) and not lexemes <= ignore:
            return end
    if walked.consumed < len(data):
        return None
    own = bool(walked.lexeme_ends) or state[1] == 0
    whole = own and cg.lexeme_maximal(walked.state) and not cg.lexeme_ids(walked.state) <= ignore
    return len(data) if whole else None


def _shortest_examples(lex: Any, start: int) -> dict[int, bytes]:
    """Per lexeme id, a shortest byte string leading from ``start`` to a state accepting it."""
    found: dict[int, bytes] = {}
    parent: dict[int, tuple[int, int] | None] = {start: None}
    queue = collections.deque([start])
    wanted = set(lex.lexemes)
    while queue and len(parent) < MAX_EXAMPLE_STATES and not wanted <= found.keys():
        s = queue.popleft()
        for lid in lex.accepts[s]:
            if lid not in found:
                found[lid] = _path(parent, s)
        row = lex.row(s)
        for b in _BYTE_ORDER:
            t = row[b]
            if t >= 0 and t not in parent:
                parent[t] = (s, b)
                queue.append(t)
    return found


def _path(parent: dict, s: int) -> bytes:
    out = bytearray()
    while parent[s] is not None:
        s, b = parent[s]
        out.append(b)
    return bytes(reversed(out))


def candidates_at(cg: Any, state: tuple) -> list[Candidate]:
    """The non-ignored lexemes that may come next from ``state``, each with an example.

    Inside a lexeme: the ways to complete it; at (or after) a complete lexeme: the
    lexemes that may start next. Every example is checked against the grammar.
    """
    col, s = state
    lex = cg.lexer.for_lexemes(col.allowed)
    examples: dict[int, bytes] = {}
    if s != 0:
        examples.update((lid, ex) for lid, ex in _shortest_examples(lex, s).items() if ex)
    if s == 0 or lex.accepting[s]:
        nxt_col = col if s == 0 else cg.parser.scan(col, lex.accepts[s])
        if nxt_col is not None:
            nlex = cg.lexer.for_lexemes(nxt_col.allowed)
            for lid, ex in _shortest_examples(nlex, 0).items():
                if ex and (s == 0 or lex.row(s)[ex[0]] < 0):  # else it would extend the current lexeme
                    examples.setdefault(lid, ex)
    out = []
    for lid in sorted(examples):
        ex = examples[lid]
        if lid in cg.tables.ignore or cg.advance_bytes(state, ex) is None:
            continue
        out.append(Candidate(cg.lexeme_names[lid], ex.decode("utf-8", errors="replace")))
    return out


# ====================================================================== grammars


def compile_text_grammar(grammar: Any, grammar_syntax: str | None = None, vocab: Any = None) -> Any:
    """A ``CompiledGrammar`` from Lark/GBNF text, a JSON Schema dict, a ``ConstraintSpec``
    or a ``CompiledGrammar`` (recompiled when ``vocab`` differs from its own)."""
    from sgl.types import ConstraintSpec

    from .logit_model import compile_for

    if isinstance(grammar, ConstraintSpec) and (grammar.choices is not None or grammar.is_empty()):
        raise ValueError("the ConstraintSpec holds no grammar, schema or regex")
    if grammar is None:
        raise TypeError("a grammar is needed: Lark/GBNF text, a JSON Schema dict or a CompiledGrammar")
    return compile_for(grammar, vocab, grammar_syntax)


def obtain_correction_pairs(text: str, grammar: Any,
                            grammar_syntax: str | None = None) -> tuple[str, list[Candidate]]:
    """The longest prefix of ``text`` the grammar can still complete, and what may follow it.

    ``candidates``: one ``Candidate(terminal, example)`` per lexeme allowed next (ignored
    lexemes such as whitespace left out), the example a shortest string of it found by a
    breadth-first search of the lexer DFA (checked to be accepted after the prefix).
    """
    cg = compile_text_grammar(grammar, grammar_syntax)
    pos = locate(cg, text)
    return text[: pos.valid], candidates_at(cg, pos.state)


# ====================================================================== the model


def _call_kwargs(fn: Callable, wanted: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``wanted`` that ``fn`` accepts (by name or **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return wanted
    return {k: v for k, v in wanted.items() if k in params}


def _as_text(out: Any) -> str:
    if isinstance(out, str):
        return out
    if hasattr(out, "text"):
        return out.text
    if isinstance(out, Mapping) and "text" in out:
        return out["text"]
    choices = getattr(out, "choices", None)  # an OpenAI completion object
    if choices:
        first = choices[0]
        return getattr(first, "text", None) or first.message.content
    raise TypeError(f"the model returned {type(out).__name__}, not text")


def model_caller(model: Any, prompt: str, max_new_tokens: int, temperature: float,
                 stop_at: str | None) -> Callable[[str], str]:
    """``fn(text) -> continuation of prompt + text`` for any supported kind of model."""
    from sgl.backends.base import Backend, GenerateRequest
    from sgl.types import SamplingParams

    from .logit_model import LogitModel

    stop = (stop_at,) if stop_at else ()
    if isinstance(model, Backend):
        def call_backend(text: str) -> str:
            params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, stop=stop)
            return model.generate(GenerateRequest(prompt=prompt + text, params=params)).text
        return call_backend
    if isinstance(model, LogitModel):
        return lambda text: model.complete(prompt + text, max_new_tokens, temperature, stop)
    if callable(model):
        return lambda text: _as_text(model(prompt + text))
    if hasattr(model, "generate"):
        kwargs = _call_kwargs(model.generate, {"max_tokens": max_new_tokens, "max_new_tokens": max_new_tokens,
                                               "temperature": temperature, "stop": list(stop) or None})
        return lambda text: _as_text(model.generate(prompt + text, **kwargs))
    raise TypeError(f"cannot call {type(model).__name__} as a model: give a function str -> str, "
                    "a Backend, or an object with .generate(text)")


class _Repairer:
    """The draft model writing short constrained repairs; loaded on the first repair."""

    def __init__(self, draft: Any, grammar: Any, grammar_syntax: str | None, text_grammar: Any,
                 prompt: str, temperature: float, max_tokens: int, seed: int | None):
        """``grammar`` as the user gave it (compiled again for the draft's vocabulary);
        ``text_grammar`` its text-only compilation, used to find lexeme boundaries."""
        self.draft, self.grammar, self.grammar_syntax = draft, grammar, grammar_syntax
        self.text_grammar = text_grammar
        self.prompt = prompt
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.model: Any = None
        self.reused_tokens = 0  # context tokens the draft's engine took from its prefix cache

    def _load(self) -> None:
        from .logit_model import resolve_logit_model

        self.model = resolve_logit_model(self.draft)  # None: the default model, loaded once
        self.cg = compile_text_grammar(self.grammar, self.grammar_syntax, self.model.vocab)
        self.prompt_ids = self.model.encode_prompt(self.prompt)

    def repair(self, prefix: str, state: tuple) -> tuple[str, int, bool]:
        """Text to append to ``prefix`` (whose grammar state is ``state``):
        (text, draft tokens, whether the draft ended the sentence)."""
        from sgl.constrain import Matcher

        if self.model is None:
            self._load()
        vocab = self.model.vocab
        ids = self.model.encode_text(prefix) if prefix else []
        healed = b""
        if ids:  # token healing: the draft re-generates the prefix's last token
            healed = vocab.token_bytes[ids[-1]] or b""
            ids = ids[:-1]
        matcher = Matcher(self.cg)
        if matcher.consume_tokens(ids) != len(ids):
            raise RuntimeError("the draft vocabulary's tokens of a valid prefix were refused")

        def done(out: list[int]) -> bool:
            data = vocab.decode(out)
            return first_own_lexeme_end(self.text_grammar, state, data[len(healed):]) is not None

        out, reason, cached = self.model.generate(self.prompt_ids + ids, self.max_tokens, self.temperature,
                                                  self.seed, matcher=matcher, healed_prefix=healed, should_stop=done)
        self.reused_tokens += cached
        data = vocab.decode(out)[len(healed):]
        end = first_own_lexeme_end(self.text_grammar, state, data)
        if end is not None and reason != "eos":
            data = data[:end]  # the repair ends on a lexeme boundary; the model starts the next one
        return _decode_whole_chars(data), len(out), reason == "eos"


def _decode_whole_chars(data: bytes) -> str:
    for cut in range(len(data), max(-1, len(data) - 4), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="ignore")


# ========================================================================= guide


def guide(model: Any, grammar: Any, prompt: str, draft_model: Any = None, max_grammar_corrections: int = 20,
          stop_at: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
          verbose: bool = False, *, grammar_syntax: str | None = None, draft_max_tokens: int = 16,
          max_resumes: int = 8, seed: int | None = None) -> GuideResult:
    """Generate text in ``grammar`` with ``model``, repairing its output where it leaves it.

    ``model``: ``Callable[[str], str]`` returning the continuation of the text it gets
    (``prompt`` + the output so far), an SGL ``Backend``, an object with
    ``.generate(text)`` or a ``LogitModel``. ``grammar``: Lark or GBNF text (detected by
    ``::=``; or say ``grammar_syntax``), a ``CompiledGrammar`` or a JSON Schema dict.
    ``draft_model``: the local model writing repairs (default ``LocalModel()``), loaded
    only when a repair is needed. ``stop_at``: the model's output is cut at this string and
    the model is then taken to have stopped. ``max_new_tokens``: per model call (for
    callables that take no limit, theirs). ``draft_max_tokens``: per repair.

    The text is done when the grammar accepts it and the model stopped (or wrote beyond
    a complete sentence: that rest is ``discarded``). A valid but incomplete
    continuation makes the model resume (``max_resumes`` times); an invalid one, or
    an empty one, costs a correction. When ``max_grammar_corrections`` are spent a
    ``BacktrackError`` carries the longest valid text and the log.
    """
    t_start = time.perf_counter()
    cg = compile_text_grammar(grammar, grammar_syntax)
    call = model_caller(model, prompt, max_new_tokens, temperature, stop_at)
    repairer = _Repairer(draft_model, grammar, grammar_syntax, cg, prompt, temperature, draft_max_tokens, seed)
    log = CorrectionLog()
    result = GuideResult(text="", complete=False, log=log)
    text = ""
    resumes = 0

    def finish(final: str, discarded: str = "") -> GuideResult:
        result.text, result.complete, result.discarded = final, True, discarded
        result.draft_reused_tokens = repairer.reused_tokens
        result.seconds = time.perf_counter() - t_start
        if verbose:
            print(f"[sgl.backtrack] done: {len(log)} correction(s), {result.model_calls} model call(s)",
                  file=sys.stderr)
        return result

    while True:
        t0 = time.perf_counter()
        cont = call(text)
        result.model_calls += 1
        result.model_seconds += time.perf_counter() - t0
        stopped = False
        if stop_at and stop_at in cont:
            cont, stopped = cont[: cont.index(stop_at)], True
        candidate = text + cont
        pos = locate(cg, candidate)
        if cg.can_end(*pos.state):  # complete; whatever the model wrote past it is dropped
            return finish(candidate[: pos.valid], candidate[pos.valid:])
        if pos.whole and cont and not stopped and resumes < max_resumes:
            resumes += 1  # valid so far, cut short (e.g. by the model's token limit): go on
            text = candidate
            continue
        kind = "syntax" if not pos.whole else "incomplete"
        if len(log) >= max_grammar_corrections:
            raise BacktrackError(_give_up_message(log, kind, candidate, pos, max_grammar_corrections, resumes,
                                                  max_resumes), candidate[: pos.valid], log, cont)
        cut, state = heal_point(cg, candidate, pos)
        t0 = time.perf_counter()
        repair, n_tokens, ended = repairer.repair(candidate[:cut], state)
        seconds = time.perf_counter() - t0
        result.draft_seconds += seconds
        result.draft_tokens += n_tokens
        corr = log.add(position=cut, rejected=candidate[cut:], repair=repair,
                       candidates=[str(c) for c in candidates_at(cg, state)], kind=kind,
                       healed=candidate[cut: pos.valid], context=candidate[:cut],
                       draft_tokens=n_tokens, seconds=seconds)
        if verbose:
            print(f"[sgl.backtrack] {corr.summary()}", file=sys.stderr)
        text = candidate[:cut] + repair
        if ended and cg.accepts_text(text):
            return finish(text)


def _give_up_message(log: CorrectionLog, kind: str, text: str, pos: _Position, limit: int,
                     resumes: int, max_resumes: int) -> str:
    where = f"at char {pos.valid}: {text[pos.valid: pos.valid + 30]!r}" if kind == "syntax" else "(text incomplete)"
    return (f"gave up after {len(log)} correction(s) (max_grammar_corrections={limit}, "
            f"{resumes}/{max_resumes} resumptions); last problem {where}; "
            f"the longest valid text ({pos.valid} chars) is in .prefix, the repairs in .log")
