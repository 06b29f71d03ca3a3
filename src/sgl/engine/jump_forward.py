"""Jump-forward decoding, the tokenization side.

When the constraint forces text (JSON keys and punctuation, the rest of the only choice
left), the engine appends it without sampling and feeds all of its tokens to the model in
one forward pass. The model must not see a split it would never produce, so the forced
text is tokenized canonically, and the boundary with the tokens just sampled is
re-tokenized: a sampled ``"`` followed by forced ``, "age": `` becomes the tokenizer's
``",`` `` "`` ... rather than ``"`` ``,`` `` "`` .... Only tokens the model has not been
fed yet (the pending ones) can be replaced for free; older ones stay as they are.

Typical use in a decode loop, right after sampling and advancing ``pending``::

    jump = jump_forward(matcher, vocab, generated, max_retokenize=len(pending))
    if jump is not None:
        del generated[len(generated) - jump.replace:]
        generated += jump.tokens          # matcher already advanced over them
        # feed the surviving pending tokens + jump.tokens in one forward pass
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sgl.constrain.matcher import Matcher
from sgl.constrain.vocab import Vocabulary

from .request import common_prefix


@dataclass(frozen=True)
class JumpForward:
    """A change to the end of the generated tokens: drop ``replace``, append ``tokens``.

    ``replace`` counts only pending tokens (never more than ``max_retokenize``); the
    bytes after the change are the old bytes plus a prefix of the forced text.
    """

    replace: int
    tokens: list[int]


def jump_forward(
    matcher: Matcher,
    vocab: Vocabulary,
    generated: Sequence[int],
    max_retokenize: int = 1,
) -> JumpForward | None:
    """Append the text the constraint forces, re-tokenizing the boundary; None if nothing.

    ``generated`` are the tokens the matcher has consumed (its last tokens, at least);
    the last ``max_retokenize`` of them must still be pending, i.e. not yet fed to the
    model. The forced text (``matcher.forced_bytes()``, cut at a UTF-8 boundary) is
    encoded together with the bytes of the last ``r`` generated tokens, trying
    ``r = max_retokenize`` first and fewer when that fails (special tokens in the window,
    invalid UTF-8, tokens the constraint refuses, or a held-back token that would swallow
    pending bytes); ``r = 0`` is plain ``Matcher.forced_tokens``. The last new token is
    held back unless the forced text ends the constraint. On success the matcher is
    rolled back over the replaced tokens and advanced over the new ones.
    """
    forced = matcher.forced_bytes()
    if not forced:
        return None
    window = max(0, min(max_retokenize, len(generated), matcher.num_tokens))
    for r in range(window, -1, -1):
        jump = _retokenize(matcher, vocab, list(generated[len(generated) - r :]), forced)
        if jump is not None:
            _apply(matcher, jump, list(generated[len(generated) - jump.replace :]))
            return jump
    return None


def _retokenize(
    matcher: Matcher, vocab: Vocabulary, tail: list[int], forced: bytes
) -> JumpForward | None:
    """Re-encode ``tail`` (the last consumed tokens) + ``forced``; None if no gain."""
    if any(vocab.token_bytes[t] is None for t in tail):
        return None  # special tokens (EOS, ...) have no text to re-encode
    probe = matcher.copy()
    probe.rollback(len(tail))
    tail_bytes = vocab.decode(tail)
    ids = probe.canonical_tokens(tail_bytes + forced)
    # canonical_tokens keeps a prefix of the data: it must reach past the pending bytes,
    # or pending text would be lost (or nothing forced would be added)
    if len(vocab.decode(ids)) <= len(tail_bytes):
        return None
    keep = common_prefix(ids, tail)  # unchanged pending tokens stay, already correct
    return JumpForward(replace=len(tail) - keep, tokens=ids[keep:])


def _apply(matcher: Matcher, jump: JumpForward, replaced: list[int]) -> None:
    """Roll the matcher back over ``replaced`` and advance it over the new tokens."""
    matcher.rollback(jump.replace)
    accepted = matcher.consume_tokens(jump.tokens)
    if accepted != len(jump.tokens):  # a probe from this very state accepted them
        matcher.rollback(accepted)
        matcher.consume_tokens(replaced)
        raise RuntimeError("the matcher refused tokens that a copy of it accepted")


def canonical_split_ok(vocab: Vocabulary, ids: Sequence[int]) -> bool:
    """Is ``ids`` exactly how the tokenizer encodes its own text (valid UTF-8)?"""
    try:
        text = vocab.decode(ids).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return vocab.encode(text) == list(ids)
