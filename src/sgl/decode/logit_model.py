"""``LogitModel``: the few pieces of a local model the decoders in `sgl.decode` need.

Forward with a KV cache (``DecodeSession``, kept between calls), the tokenizer and the
vocabulary. It adapts ``LocalModel`` objects and loads checkpoints on its own when the
local backend is not available. Decoding itself is the engine's one per-token step
(`sgl.engine.step.SeqState`): masks, healing, sampling and every end condition.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GREEDY_TEMPERATURE = 1e-5  # temperatures at or below this mean argmax


@dataclass
class LogitModel:
    """What the decoders here need from a local model: logits with a KV cache, and text.

    ``llama`` is an ``sgl.engine.llama.Llama``; ``vocab`` the ``Vocabulary`` of its
    logits; ``tokenizer`` a ``tokenizers.Tokenizer`` for prompts (special tokens such as
    ``<|im_start|>`` written in the prompt are recognised), or None to use ``vocab``.
    Build one with ``resolve_logit_model``.
    """

    llama: Any
    vocab: Any
    tokenizer: Any = None
    name: str = "model"
    source: Any = None  # the object this view was made from (e.g. the LocalModel)
    _sessions: dict = field(default_factory=dict, repr=False)
    _engine: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_vocab(self) -> int:
        return int(self.llama.config.vocab_size)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt (no BOS added; special-token names are special tokens)."""
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return self.vocab.encode(text)

    def encode_text(self, text: str) -> list[int]:
        """Canonical ids of generated text (special-token names stay plain text)."""
        return self.vocab.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.vocab.decode(ids).decode("utf-8", errors="replace")

    @property
    def engine(self) -> Any:
        """The continuous-batching engine running this model: the ``LocalModel``'s own
        when the view was made from one, else one made on first use."""
        engine = getattr(self.source, "engine", None)
        if engine is not None:
            return engine
        with self._lock:
            if self._engine is None:
                from sgl.engine.scheduler import Engine, EngineConfig

                self._engine = Engine(self.llama, self.vocab.token_bytes, self.vocab.eos_token_ids,
                                      EngineConfig(kv_budget_mb=128.0), vocab=self.vocab)
            return self._engine

    def session(self, capacity: int = 512) -> DecodeSession:
        """A fresh single-sequence decoding session with its own KV cache."""
        return DecodeSession(self, capacity)

    def complete(self, text: str, max_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int | None = None, session: str = "default") -> str:
        """The model's unconstrained continuation of ``text`` (a black-box style call).

        Calls with the same ``session`` name reuse the KV cache of the previous call's
        context as far as the new context starts with it.
        """
        with self._lock:
            sess = self._sessions.get(session)
            if sess is None:
                sess = self._sessions[session] = self.session()
            ids, _reason = sess.generate(self.encode_prompt(text), max_tokens, engine_sampler(temperature, seed=seed),
                                         stop_texts=tuple(stop))
        text = self.decode(ids)
        cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
        return text[:cut]

    def as_black_box(self, max_tokens: int = 64, temperature: float = 0.0,
                     stop: Sequence[str] = ()) -> Callable[[str], str]:
        """``fn(text) -> continuation`` over this model, with its own KV session."""
        name = f"black-box-{id(object())}"

        def fn(text: str) -> str:
            return self.complete(text, max_tokens, temperature, stop, session=name)

        return fn


def engine_sampler(temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> Any:
    """The engine's `sgl.engine.sampler.Sampler` (one greedy rule, top-k and top-p for every
    decoder); a temperature at or below ``GREEDY_TEMPERATURE`` means argmax."""
    from sgl.engine.sampler import Sampler

    return Sampler(temperature if temperature > GREEDY_TEMPERATURE else 0.0, top_k, top_p, seed=seed)


class DecodeSession:
    """One sequence's KV cache, kept between calls (the engine's `CachedSequence`).

    ``prefill(ids)`` runs only the part of ``ids`` after the longest common prefix with
    what the cache already holds, which is how repeated calls on a growing text
    (black-box resumption, repairs) stay cheap. The reuse is per session (the engine's
    shared prefix cache is not used here).
    """

    def __init__(self, model: LogitModel, capacity: int = 512):
        from sgl.engine.speculative import CachedSequence

        self.model = model
        self.seq = CachedSequence(model.llama, capacity)

    @property
    def reused_tokens(self) -> int:
        """Context positions served from the cache, over all prefills."""
        return self.seq.reused_tokens

    def prefill(self, ids: Sequence[int]) -> Any:
        """Logits ([V] float32) of the next token after ``ids``."""
        if not ids:
            raise ValueError("cannot decode from an empty context")
        return self.seq.catch_up(list(ids))

    def step(self, token: int) -> Any:
        """Append one token; the logits after it."""
        return self.seq.feed([int(token)])

    def generate(self, context: Sequence[int], max_tokens: int, sampler: Any = None, *,
                 matcher: Any = None, stop_texts: Sequence[str] = (), healed_prefix: bytes = b"",
                 should_stop: Callable[[list[int]], bool] | None = None) -> tuple[list[int], str]:
        """Sample up to ``max_tokens`` after ``context``; returns (new ids without EOS, reason).

        ``sampler``: an engine ``Sampler`` (`engine_sampler`; default greedy).
        ``matcher``: an ``sgl.constrain.Matcher`` already in the state after the
        context's constrained part; its mask is applied and it is advanced.
        ``healed_prefix``: token healing (the engine's ``HealingConstraint``): the
        generated bytes must begin with these bytes (the context's removed last token).
        ``should_stop(ids)`` is asked after every token. Reasons: "eos" (EOS, or the
        constraint complete), "stop" (a stop text or ``should_stop``), "length".
        Each token is the engine's step (`SeqState.step`), with every token sampled
        (no lazy masks, no jump-forward: the draft's choices stay its own).
        """
        import torch

        from sgl.engine.step import SeqState, StepContext, plain_params
        from sgl.engine.token_healing import HealingConstraint, HealingIndex

        if max_tokens <= 0:
            return [], "length"
        vocab = self.model.vocab
        healing = HealingConstraint(healed_prefix, HealingIndex.for_vocab(vocab)) if healed_prefix else None
        ctx = StepContext(vocab.token_bytes, frozenset(vocab.eos_token_ids), lazy_masks=False, jump_forward=False)
        state = SeqState(ctx, context, plain_params(max_tokens, stop=stop_texts), max_tokens, matcher, healing,
                         sampler if sampler is not None else engine_sampler(0.0))
        with torch.inference_mode():  # the step masks the logits in place
            return self._decode(state, self.prefill(context), should_stop)

    def _decode(self, state: Any, logits: Any, should_stop: Callable[[list[int]], bool] | None
                ) -> tuple[list[int], str]:
        """Step ``state`` from ``logits`` to its end; (ids without EOS, this class's reason)."""
        while True:
            state.step(logits)
            ids = state.out.token_ids
            if state.out.finish_reason == "error":
                raise RuntimeError(state.out.meta["error"])
            if state.out.finish_reason == "eos":
                return ids[:-1], "eos"
            if state.out.finish_reason == "stop" and not state.completed:
                return ids, "stop"
            if should_stop is not None and ids and should_stop(ids):
                return ids, "stop"
            if state.done:
                return ids, "eos" if state.completed else "length"
            logits = self.step(ids[-1])


@functools.lru_cache(maxsize=4)
def load_logit_model(path: str | None = None) -> LogitModel:
    """The model at ``path`` (``None``: SmolLM2-135M-Instruct), loaded once per process.

    Through ``sgl.backends.local.LocalModel`` when it is available (same vocabulary, EOS
    ids and weights as the local backend), else straight from the checkpoint.
    """
    try:
        from sgl.backends.local import LocalModel
    except ImportError:
        LocalModel = None
    if LocalModel is not None:
        return _adapt_local_model(LocalModel(path))
    from tokenizers import Tokenizer

    from sgl.constrain.vocab import Vocabulary
    from sgl.engine.llama import Llama
    from sgl.engine.model_loader import resolve_checkpoint

    ck = resolve_checkpoint(path)
    llama = Llama.from_folder(ck.folder)
    tok_file = ck.folder / "tokenizer.json"
    vocab = Vocabulary.from_tokenizer(str(tok_file), n_vocab=llama.config.vocab_size)
    return LogitModel(llama, vocab, Tokenizer.from_file(str(tok_file)), name=ck.folder.name)


def resolve_logit_model(model: Any = None) -> LogitModel:
    """A ``LogitModel`` from None (the default model), a path, a ``LogitModel``, a
    ``LocalModel`` (see `_adapt_local_model`), or a ``(llama, vocab[, tokenizer])`` tuple.
    """
    import os

    if isinstance(model, LogitModel):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_logit_model(None if model is None else str(model))
    if isinstance(model, tuple):
        return LogitModel(*model)
    return _adapt_local_model(model)


def _adapt_local_model(obj: Any) -> LogitModel:
    """A ``LocalModel`` (or any object with its ``.model``, a ``Llama``, and its ``.vocab``
    or ``.tokenizer``) viewed as a ``LogitModel``."""
    from sgl.constrain.vocab import Vocabulary
    from sgl.engine.llama import Llama

    llama = getattr(obj, "model", None)
    if not isinstance(llama, Llama):
        raise TypeError(f"cannot use {type(obj).__name__} as a local model: its .model is no sgl.engine.llama.Llama")
    vocab, tokenizer = getattr(obj, "vocab", None), getattr(obj, "tokenizer", None)
    if not isinstance(vocab, Vocabulary):
        if tokenizer is None:
            raise TypeError(f"cannot use {type(obj).__name__} as a local model: no vocabulary or tokenizer")
        vocab = Vocabulary.from_tokenizer(tokenizer, n_vocab=llama.config.vocab_size)
    return LogitModel(llama, vocab, tokenizer, name=type(obj).__name__, source=obj)


def check_same_vocabulary(a: LogitModel, b: LogitModel) -> None:
    """Raise ValueError unless the two models' logits index the same tokens."""
    if a.n_vocab != b.n_vocab or a.vocab.n_vocab != b.vocab.n_vocab:
        raise ValueError(
            f"models do not share a vocabulary: {a.name} has {a.n_vocab} logits, {b.name} has {b.n_vocab}"
        )
    if a.vocab is not b.vocab and a.vocab.fingerprint != b.vocab.fingerprint:
        raise ValueError(
            f"models do not share a vocabulary: fingerprints {a.vocab.fingerprint[:12]} ({a.name}) "
            f"and {b.vocab.fingerprint[:12]} ({b.name}) differ"
        )


def compile_for(constraint: Any, vocab: Any, grammar_syntax: str | None = None) -> Any:
    """The ``CompiledGrammar`` of a decoder's constraint for ``vocab`` (None for None).

    ``constraint``: a ``ConstraintSpec``, a JSON Schema dict, Lark/GBNF text (GBNF when
    it has ``::=``, or as ``grammar_syntax`` says) or a ``CompiledGrammar`` (compiled
    again when its vocabulary is another). Through `constrain.compile_spec` and its cache.
    """
    from sgl.constrain import CompiledGrammar, compile_spec
    from sgl.types import ConstraintSpec

    if isinstance(constraint, CompiledGrammar):
        if vocab is None or (constraint.vocab is not None and constraint.vocab.fingerprint == vocab.fingerprint):
            return constraint
        return CompiledGrammar(constraint.grammar, vocab)
    if isinstance(constraint, Mapping):
        constraint = ConstraintSpec(json_schema=dict(constraint))
    elif isinstance(constraint, str):
        syntax = grammar_syntax or ("gbnf" if "::=" in constraint else "lark")
        constraint = ConstraintSpec(grammar=constraint, grammar_syntax=syntax)
    elif constraint is not None and not isinstance(constraint, ConstraintSpec):
        raise TypeError(f"a constraint must be a ConstraintSpec, Lark/GBNF text, a JSON Schema dict or a "
                        f"CompiledGrammar, not {type(constraint).__name__}")
    return compile_spec(constraint, vocab)
