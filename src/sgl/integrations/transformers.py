"""SGL constraints in Hugging Face transformers: a batch-aware ``LogitsProcessor``.

::

    from sgl.integrations.transformers import SGLLogitsProcessor

    proc = SGLLogitsProcessor(tokenizer, json_schema=Character)   # or regex=, grammar=, choices=
    out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=200)

Every row of the batch gets its own `Matcher`. At each step the processor reads the
tokens each row gained since the last call (the prompt, left padding included, is
skipped), advances that row's matcher and masks the row's logits to the tokens the
constraint allows; EOS is allowed once the text is complete. A row that has finished
(it took EOS, or ``generate`` pads it after its end) is left alone. Greedy search,
sampling (the warpers run after this processor), beam search (rows reordered between
steps follow their parent's matcher) and assisted generation (``assistant_model=`` or
``prompt_lookup_num_tokens=``: rejected candidates are rolled back) all work.

A processor starts over when a call's prompts differ from the previous call's, so one
instance can serve several ``generate`` calls; call `reset` between calls whose new
prompts extend the old ones (a chat's next turn), which would look like a continuation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sgl._extras import require

require("sgl.integrations.transformers", "transformers", "torch", "transformers")

import torch  # noqa: E402
from transformers import LogitsProcessor  # noqa: E402

from sgl.constrain import (  # noqa: E402
    CompiledGrammar,
    ConstraintError,
    Matcher,
    Vocabulary,
    allocate_bitmask,
    apply_bitmask,
    fill_next_token_bitmasks,
)
from sgl.constrain.bitmask import mask_logits_row  # noqa: E402
from sgl.integrations._common import compile_constraint  # noqa: E402
from sgl.integrations.prefetch import (  # noqa: E402
    LookaheadPolicy,
    best_only_job,
    lookahead_job,
    shared_prefetcher,
)

_ROW_DTYPES = (torch.float32, torch.float16, torch.float64)


def _rows_apply(scores: torch.Tensor) -> bool:
    """Can ``scores`` be masked in place row by row through numpy (CPU, contiguous, a
    numpy float dtype)?"""
    return (scores.device.type == "cpu" and scores.dtype in _ROW_DTYPES and scores.is_contiguous()
            and not scores.requires_grad)


def _ahead_is_cached(m: Matcher, token: int) -> bool:
    """`Matcher.mask_ahead_is_cached`, a hint: a token whose walk fails (a budget) is not
    prefetched; the step that takes it raises as usual. The matcher remembers the walk,
    so the next step's advance by that token reuses it."""
    try:
        return m.mask_ahead_is_cached(token)
    except ConstraintError:
        return True


def _ids(value: int | Iterable[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


class SGLLogitsProcessor(LogitsProcessor):
    """Constrain ``model.generate`` to a JSON Schema, pydantic model, regex, grammar or choices.

    ``tokenizer``: the model's transformers tokenizer. Give exactly one of
    ``json_schema`` (dict, JSON text or pydantic model class), ``regex``, ``grammar``
    (Lark by default, or ``grammar_syntax="gbnf"`` / ``"ebnf"``) or ``choices``;
    ``json_options`` go to `compile_json_schema` (e.g. ``{"whitespace": "compact"}``).
    ``eos_token_id``: the ids that end generation, when the model's
    ``generation_config`` uses others than the tokenizer's ``eos_token_id``.
    ``prefetch`` (off by default): after each step, a helper thread computes the masks of
    the states that each row's best allowed tokens lead to, while the model computes the
    next logits (CPU scores): the first visit of a state then rarely costs a decoding
    step its mask, which cuts the processor's tail latency, for more CPU time in all
    (docs/benchmarks.md, h5-hf: total CPU per token +2-28% with ``"auto"`` and
    +49-57% with ``2``, against prefetch off).
    ``"auto"`` prefetches the best token's state, and the second-best's only while rows
    recently took their second-best token often (sampling; never under greedy search,
    where those masks would be wasted); an int ``k`` always prefetches the ``k`` best.
    See ``sgl.integrations.prefetch`` (``prefetch_stats`` says what was taken).
    Raises `ConstraintError` for a constraint that does not compile.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        json_schema: Any = None,
        regex: str | None = None,
        grammar: str | None = None,
        grammar_syntax: str = "lark",
        choices: Sequence[str] | None = None,
        json_options: Mapping[str, Any] | None = None,
        eos_token_id: int | Iterable[int] | None = None,
        prefetch: int | str = 0,
    ) -> None:
        eos = _ids(eos_token_id) or None
        vocab = Vocabulary.from_tokenizer(tokenizer, eos_token_ids=eos)
        compiled = compile_constraint(vocab, json_schema=json_schema, regex=regex, grammar=grammar,
                                      grammar_syntax=grammar_syntax, choices=choices,
                                      json_options=json_options)
        self._init(compiled, pad_token_id=getattr(tokenizer, "pad_token_id", None), prefetch=prefetch)

    @classmethod
    def from_compiled(cls, compiled: CompiledGrammar, pad_token_id: int | None = None,
                      prefetch: int | str = 0) -> SGLLogitsProcessor:
        """A processor for a constraint already compiled with a vocabulary."""
        self = cls.__new__(cls)
        self._init(compiled, pad_token_id=pad_token_id, prefetch=prefetch)
        return self

    def _init(self, compiled: CompiledGrammar, pad_token_id: int | None, prefetch: int | str) -> None:
        if compiled.vocab is None:
            raise ConstraintError("the constraint was compiled without a vocabulary")
        self._policy = LookaheadPolicy(prefetch)  # raises ValueError for a bad setting
        self.compiled = compiled
        self.prefetch = prefetch
        # tokens a row may take past the constraint's end: generate pads finished rows
        self._end_ids = frozenset(compiled.vocab.eos_token_ids) | frozenset(_ids(pad_token_id))
        self.reset()

    def reset(self) -> None:
        """Forget the current generation (the next call starts a new one)."""
        self.matchers: list[Matcher] = []
        # per row, per generated position: did the matcher take that token?
        self._taken: list[list[bool]] = []
        # per row: after how many generated tokens the row finished (None: still going)
        self._done_at: list[int | None] = []
        self._prompt_len = 0
        self._prev: torch.Tensor | None = None
        self._prev_bytes: bytes | None = None  # _prev's bytes, when on the CPU
        self._bitmask: Any = None
        # the helper's guesses (two best tokens per row) at the last step, and the tokens
        # the rows then took (set by the usual one-token step only)
        self._predicted: list | None = None
        self._stepped: list[int] | None = None

    @property
    def prefetch_stats(self) -> dict[str, Any]:
        """How often rows took the token the helper ranked best / second-best, and which
        ranks it prefetches now (see `LookaheadPolicy`)."""
        return self._policy.stats()

    @property
    def finished(self) -> list[bool]:
        """Per row of the current batch: has it finished (EOS taken, or padded)?"""
        return [d is not None for d in self._done_at]

    # -- the LogitsProcessor interface ------------------------------------------------
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Mask ``scores`` (batch, vocab) in place to the tokens each row may take next."""
        if input_ids.dim() != 2 or scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise ValueError(f"expected input_ids (batch, len) and scores (batch, vocab), got "
                             f"{tuple(input_ids.shape)} and {tuple(scores.shape)}")
        self._stepped = None
        self.follow(input_ids)
        if self._stepped is not None and self._predicted is not None:
            self._policy.observe(self._predicted, self._stepped)
        rows = [None if done is not None else m for m, done in zip(self.matchers, self._done_at, strict=True)]
        if _rows_apply(scores):
            # the row's cached mask words straight onto its logits: one C pass per row that
            # reads the words and writes only the masked logits (no bitmask copy, no
            # unpacked bools, nothing allocated)
            arr = scores.numpy()
            for i, m in enumerate(rows):
                if m is not None:
                    mask_logits_row(arr[i], m.allowed_words())
        else:
            batch, width = scores.shape
            if self._bitmask is None or self._bitmask.shape != (batch, (width + 31) // 32):
                # sized by the logits, which may be wider than the tokenizer: the extra ids stay masked
                self._bitmask = allocate_bitmask(batch, width)
            fill_next_token_bitmasks(rows, self._bitmask)
            apply_bitmask(scores, self._bitmask)
        self._predicted = None
        if self._policy.enabled and scores.device.type == "cpu":
            self._look_ahead(rows, scores)
        return scores

    def _look_ahead(self, rows: list[Matcher | None], scores: torch.Tensor) -> None:
        """Hand the helper thread the masks of the next step (see `LookaheadPolicy`).

        Greedy (as observed): the best token is predicted here, and the helper is woken
        only for rows whose next state has no mask yet; otherwise the helper ranks the
        tokens itself and records its guesses in ``_predicted``."""
        if self._policy.greedy:
            if not self._policy.look_now():
                return
            # numpy's argmax is several times faster than torch's on CPU (~15 vs ~140 µs
            # over 49k logits, one thread)
            best = (scores.numpy().argmax(axis=-1) if _rows_apply(scores) else scores.argmax(dim=-1)).tolist()
            self._predicted = [None if m is None else (b, None) for m, b in zip(rows, best, strict=True)]
            todo = [(m.copy(history=False), b) for m, b in zip(rows, best, strict=True)
                    if m is not None and not _ahead_is_cached(m, b)]
            self._policy.looked(bool(todo))
            if todo:
                shared_prefetcher().submit(best_only_job(todo))
            return
        ahead = [None if m is None else m.copy(history=False) for m in rows]
        self._predicted = [None] * len(rows)
        shared_prefetcher().submit(lookahead_job(ahead, scores, self._policy.ranks(), self._predicted))

    # -- following the batch ------------------------------------------------------------
    def follow(self, input_ids: torch.Tensor) -> None:
        """Bring one matcher per row up to ``input_ids`` (what a call does first; the
        same ids again change nothing).

        Usually each row gained one token. Beam search reorders rows (each follows the
        row it came from); assisted generation goes back to the last accepted candidate
        (the row is rewound to where the ids differ).
        """
        prev = self._prev
        if self._one_step(input_ids):
            return
        if not self._same_prompts(input_ids):
            self._start(input_ids)
            return
        assert prev is not None
        n = min(prev.shape[1], input_ids.shape[1])
        before = prev[:, :n]
        if not torch.equal(input_ids[:, :n], before):
            before = self._reorder(input_ids[:, :n], before)
        differs = input_ids[:, :n] != before
        first = torch.where(differs.any(dim=1), differs.to(torch.int8).argmax(dim=1), n).tolist()
        for row, pos in enumerate(first):
            self._rewind(row, pos - self._prompt_len)
            start = self._prompt_len + len(self._taken[row])
            self._advance(row, input_ids[row, start:].tolist())
        self._remember(input_ids)

    def _one_step(self, input_ids: torch.Tensor) -> bool:
        """The usual step (greedy or sampling): every row gained one token and nothing
        before it changed. Then each row takes its new token, with one comparison instead
        of the general reorder/rewind checks. Returns False, doing nothing, otherwise."""
        prev = self._prev
        if prev is None or input_ids.shape[0] != prev.shape[0] or input_ids.shape[1] != prev.shape[1] + 1:
            return False
        ids = self._host_ids(input_ids)
        if ids is not None and self._prev_bytes is not None:
            # CPU ids: the old ids' bytes against the new ids less their last column;
            # numpy slicing and a memcmp cost a few µs where each torch op costs 5-15 (its
            # dispatcher, cold after the model's forward pass)
            if ids[:, :-1].tobytes() != self._prev_bytes:
                return False
            tokens = ids[:, -1].tolist()
        elif prev.device != input_ids.device or not torch.equal(input_ids[:, :-1], prev):
            return False
        else:
            tokens = input_ids[:, -1].tolist()
        for row, token in enumerate(tokens):
            self._advance(row, [token])
        self._remember(input_ids, ids)
        self._stepped = tokens
        return True

    @staticmethod
    def _host_ids(input_ids: torch.Tensor) -> Any:
        """``input_ids`` as an int64 numpy array when it is on the CPU (shared memory, no
        copy), else None."""
        if input_ids.device.type != "cpu" or input_ids.dtype != torch.int64 or input_ids.requires_grad:
            return None
        return input_ids.numpy()

    def _remember(self, input_ids: torch.Tensor, ids: Any = False) -> None:
        """Keep ``input_ids`` for the next call's comparison (``ids``: its `_host_ids`,
        when the caller has it)."""
        self._prev = input_ids
        if ids is False:
            ids = self._host_ids(input_ids)
        self._prev_bytes = None if ids is None else ids.tobytes()

    def _same_prompts(self, input_ids: torch.Tensor) -> bool:
        """Is ``input_ids`` a step of the generation seen so far (same batch, same prompts)?"""
        prev = self._prev
        p = self._prompt_len
        if prev is None or prev.shape[0] != input_ids.shape[0] or input_ids.shape[1] <= p:
            return False
        return prev.device == input_ids.device and torch.equal(input_ids[:, :p], prev[:, :p])

    def _start(self, input_ids: torch.Tensor) -> None:
        fresh = Matcher(self.compiled)
        batch = input_ids.shape[0]
        self.matchers = [fresh.copy() for _ in range(batch)]
        self._taken = [[] for _ in range(batch)]
        self._done_at = [None] * batch
        self._prompt_len = input_ids.shape[1]
        self._remember(input_ids)

    def _reorder(self, now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """Beam search permutes and duplicates rows: when every row equals an earlier
        row, each continues from that row's state. Returns the earlier ids in the new
        row order (unchanged when the rows are not a reordering)."""
        same = (now[:, None, :] == before[None, :, :]).all(dim=-1)  # (row now, row before)
        if not bool(same.any(dim=1).all()):
            return before
        parents = same.to(torch.int8).argmax(dim=1).tolist()
        self.matchers = [self.matchers[p].copy() for p in parents]
        self._taken = [list(self._taken[p]) for p in parents]
        self._done_at = [self._done_at[p] for p in parents]
        return before[parents]

    def _rewind(self, row: int, keep: int) -> None:
        """Forget row ``row``'s generated tokens after the first ``keep``."""
        taken = self._taken[row]
        if keep >= len(taken):
            return
        self.matchers[row].rollback(sum(taken[keep:]))
        del taken[keep:]
        done = self._done_at[row]
        if done is not None and done > keep:
            self._done_at[row] = None

    def _advance(self, row: int, tokens: list[int]) -> None:
        matcher, taken = self.matchers[row], self._taken[row]
        for t in tokens:
            if self._done_at[row] is not None:
                taken.append(False)
                continue
            if matcher.advance(t):
                taken.append(True)
                if t in self._end_ids and matcher.is_terminated():
                    self._done_at[row] = len(taken)
                continue
            if t in self._end_ids:  # generate stopped this row (a stopping criterion) and pads it
                taken.append(False)
                self._done_at[row] = len(taken)
                continue
            raise ConstraintError(
                f"row {row} took token {t}, which the constraint does not allow: was another "
                "logits processor applied after this one, or the scores changed after it?"
            )
