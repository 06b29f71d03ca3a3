"""Two-model "optimal sampling": tokens drawn from a geometric mixture of two models.

At every step the base model gives ``p_base`` and the teacher gives ``p_teacher`` over
the same vocabulary; the sampler draws from

    q_α(x) ∝ p_base(x)^(1-α) · p_teacher(x)^α

with ``α`` chosen per token from the two distributions by one of the rules in
`alpha` (``kl_symmetry``, ``ess_balance``, ``entropy``, ``fixed``; see
``docs/decoding.md``). Each prompt is two requests in the engines' continuous batches
(the base prompt in the base model's engine, the teacher prompt in the teacher's; one
engine when both are the same model) joined by an `sgl.engine.policy.Pairing`, whose
logits policy is the mixture: the engine's step masks (one ``sgl.constrain.Matcher``
per sequence, the mask applied to both models before α is chosen), advances the
matcher and checks every end (EOS, stop strings, constraint complete, length); the
mixture replaces only the sampling distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .alpha import ALPHA_METHODS, LogPair, check_alpha_range, choose_alpha, logsumexp_rows
from .logit_model import check_same_vocabulary, compile_for, resolve_logit_model


@dataclass
class OptimalResult:
    """What ``OptimalSampler.generate`` returns; also readable as a dict (``r["alphas"]``).

    Per prompt: ``generated_texts``, ``generated_ids``, ``num_tokens``,
    ``finish_reasons``; with diagnostics, per generated token: ``alphas``,
    ``ess_ratios`` (normalised ESS of the weights p_teacher/q of the distribution
    actually sampled: how many teacher samples one draw from q is worth),
    ``ess_base`` (the same for p_base), ``kl_base`` = KL(q‖p_base) and
    ``kl_teacher`` = KL(q‖p_teacher).
    """

    generated_texts: list[str]
    generated_ids: list[list[int]]
    num_tokens: list[int]
    finish_reasons: list[str]
    alphas: list[list[float]] | None = None
    ess_ratios: list[list[float]] | None = None
    ess_base: list[list[float]] | None = None
    kl_base: list[list[float]] | None = None
    kl_teacher: list[list[float]] | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [k for k in self.__dataclass_fields__ if getattr(self, k) is not None]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.keys() else default


@dataclass
class StepMix:
    """One step of the mixture for a batch: what was sampled from and why."""

    logq: np.ndarray  # (B, V) log q of the distribution sampled from (before temperature)
    alpha: np.ndarray  # (B,)
    ess_teacher: np.ndarray  # (B,)
    ess_base: np.ndarray
    kl_base: np.ndarray
    kl_teacher: np.ndarray


# result field -> the StepMix array it is read from, one value per generated token
_DIAGNOSTICS = {"alphas": "alpha", "ess_ratios": "ess_teacher", "ess_base": "ess_base", "kl_base": "kl_base",
                "kl_teacher": "kl_teacher"}


@dataclass
class MixtureRequest:
    """One prompt of `OptimalSampler` as two engine requests joined by a `Pairing`.

    ``base`` (sampled from the mixture) runs in the base model's engine, ``teacher``
    (the teacher's prompt, fed the same tokens) in the teacher's; both share the
    engines' continuous batches with any other request.
    """

    base: Any  # sgl.engine.request.SeqRequest
    teacher: Any
    pairing: Any  # sgl.engine.policy.Pairing


class OptimalSampler:
    """Sample from q ∝ p_base^(1−α)·p_teacher^α with α chosen per token.

    ``model_base``, ``model_teacher``: local models sharing a vocabulary (``LocalModel``,
    ``LogitModel``, a checkpoint path, or None for the default model; the same object may
    be both). ``alpha_method``: "kl_symmetry", "ess_balance", "entropy" or "fixed"
    (with ``fixed_alpha``, not clamped). α is clamped to [alpha_min, alpha_max].
    ``constraint_to_target``: sample only among the teacher's top tokens (top-k and/or
    nucleus top-p of p_teacher; ``target_top_k``/``target_top_p``, default top-p 0.95);
    giving either of those turns the restriction on too. ``teacher_prompt``: a prefix (e.g.
    a system message) added to each prompt for the teacher, or a function base prompt ->
    teacher prompt. ``base_temperature``/``teacher_temperature`` scale each model's logits
    before the mixture (the ``temperature`` of ``generate`` applies to q).
    """

    def __init__(self, model_base: Any, model_teacher: Any, alpha_method: str = "kl_symmetry",
                 alpha_min: float = 0.5, alpha_max: float = 1.0, fixed_alpha: float | None = None,
                 constraint_to_target: bool = False, target_top_k: int | None = None,
                 target_top_p: float | None = None, *, teacher_prompt: str | Callable[[str], str] | None = None,
                 base_temperature: float = 1.0, teacher_temperature: float = 1.0):
        if alpha_method not in ALPHA_METHODS:
            raise ValueError(f"unknown alpha_method {alpha_method!r} (use one of {', '.join(ALPHA_METHODS)})")
        if alpha_method == "fixed":
            if fixed_alpha is None or not 0.0 <= fixed_alpha <= 1.0:
                raise ValueError("alpha_method='fixed' needs 0 <= fixed_alpha <= 1")
        check_alpha_range(alpha_min, alpha_max)
        if target_top_k is not None and target_top_k < 1:
            raise ValueError("target_top_k must be >= 1")
        if target_top_p is not None and not 0.0 < target_top_p <= 1.0:
            raise ValueError("target_top_p must be in (0, 1]")
        if base_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError("model temperatures must be positive")
        self.base = resolve_logit_model(model_base)
        self.teacher = self.base if model_teacher is model_base else resolve_logit_model(model_teacher)
        check_same_vocabulary(self.base, self.teacher)
        self.alpha_method = alpha_method
        self.alpha_min, self.alpha_max = alpha_min, alpha_max
        self.fixed_alpha = fixed_alpha
        self.restrict = constraint_to_target or target_top_k is not None or target_top_p is not None
        self.target_top_k = target_top_k
        self.target_top_p = target_top_p if (target_top_p is not None or target_top_k is not None) else 0.95
        self.teacher_prompt = teacher_prompt
        self.base_temperature, self.teacher_temperature = base_temperature, teacher_temperature

    @property
    def vocab(self) -> Any:
        return self.base.vocab

    # -- one step ---------------------------------------------------------------
    def mix(self, logits_base: Any, logits_teacher: Any) -> StepMix:
        """The mixture for one step from the two models' logits ([B, V] tensors or arrays;
        under a constraint the engine's step masks both rows first)."""
        import torch

        lb_logits = torch.as_tensor(logits_base).double() / self.base_temperature
        lt_logits = torch.as_tensor(logits_teacher).double() / self.teacher_temperature
        lb = torch.log_softmax(lb_logits.reshape(-1, lb_logits.shape[-1]), dim=-1).numpy()
        lt = torch.log_softmax(lt_logits.reshape(-1, lt_logits.shape[-1]), dim=-1).numpy()
        pair = LogPair.from_logp(lb, lt)
        alpha = choose_alpha(self.alpha_method, pair, lb, lt, self.alpha_min, self.alpha_max, self.fixed_alpha)
        logq = pair.log_mixture(np.clip(alpha, 0.0, 1.0))
        # the ends are exactly one model, on its own support (not the common one)
        logq = np.where((alpha <= 0.0)[:, None], lb, logq)
        logq = np.where((alpha >= 1.0)[:, None], lt, logq)
        if self.restrict:
            logq = self._restrict_to_target(logq, lt)
        return StepMix(logq, alpha, *self._diagnostics(logq, lb, lt))

    def _restrict_to_target(self, logq: np.ndarray, lt: np.ndarray) -> np.ndarray:
        """Keep q only on the teacher's top-k / top-p tokens (the engine's truncation), renormalised."""
        import torch

        from sgl.engine.sampler import Sampler

        cut = Sampler(1.0, self.target_top_k or 0, self.target_top_p or 1.0, seed=0)
        kept = torch.stack([cut.probs(row) > 0 for row in torch.from_numpy(lt)]).numpy()
        keep = kept & np.isfinite(lt) & np.isfinite(logq)
        out = np.where(keep, logq, -np.inf)
        empty = ~keep.any(axis=-1)
        out[empty] = logq[empty]  # the teacher's top tokens all refused: keep q as it was
        return out - logsumexp_rows(out)[:, None]

    @staticmethod
    def _diagnostics(logq: np.ndarray, lb: np.ndarray, lt: np.ndarray) -> tuple[np.ndarray, ...]:
        """(ESS of p_teacher/q, ESS of p_base/q, KL(q‖p_base), KL(q‖p_teacher)) per row."""
        on = np.isfinite(logq)
        q = np.where(on, np.exp(np.where(on, logq, 0.0)), 0.0)

        def ess(logp: np.ndarray) -> np.ndarray:
            both = on & np.isfinite(logp)  # q > 0 but p = 0 adds nothing to Σ p²/q
            x = np.where(both, 2.0 * np.where(both, logp, 0.0) - np.where(both, logq, 0.0), -np.inf)
            return np.exp(-logsumexp_rows(x))

        def kl(logp: np.ndarray) -> np.ndarray:
            gap = np.where(on, np.where(on, logq, 0.0) - np.where(np.isfinite(logp), logp, -np.inf), 0.0)
            return np.sum(np.where(on, q * gap, 0.0), axis=-1)

        return ess(lt), ess(lb), kl(lb), kl(lt)

    # -- generation ----------------------------------------------------------------
    def _teacher_text(self, prompt: str) -> str:
        tp = self.teacher_prompt
        if tp is None:
            return prompt
        return tp(prompt) if callable(tp) else tp + prompt

    def requests(self, prompts: str | Sequence[str], max_tokens: int = 100, temperature: float = 1.0,
                 constraint: Any = None, seed: int | None = None, *, teacher_prompts: Sequence[str] | None = None,
                 top_k: int = 0, top_p: float = 1.0, stop: Sequence[str] = ()) -> list[MixtureRequest]:
        """The engine requests of `generate` (same arguments), to submit with other work."""
        from sgl.constrain import Matcher
        from sgl.engine.policy import Pairing
        from sgl.engine.request import SeqRequest
        from sgl.types import SamplingParams

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        t_prompts = list(teacher_prompts) if teacher_prompts is not None else [self._teacher_text(p) for p in prompts]
        if len(t_prompts) != len(prompts):
            raise ValueError("teacher_prompts must have one entry per prompt")
        base_ids = [self.base.encode_prompt(p) for p in prompts]
        teacher_ids = [self.teacher.encode_prompt(p) for p in t_prompts]
        if any(not ids for ids in base_ids + teacher_ids):
            raise ValueError("prompts must not be empty")
        compiled = compile_for(constraint, self.vocab)
        params = SamplingParams(max_tokens=max_tokens, stop=tuple(stop), temperature=temperature, top_p=top_p,
                                top_k=top_k, seed=seed)
        out = []
        for b_ids, t_ids in zip(base_ids, teacher_ids, strict=True):
            pairing = Pairing(self._combine)
            matcher = Matcher(compiled) if compiled is not None else None
            out.append(MixtureRequest(SeqRequest(b_ids, params, matcher, policy=pairing),
                                      SeqRequest(t_ids, params, policy=pairing, follows=True), pairing))
        return out

    def _combine(self, lead: Any, other: Any) -> tuple[Any, StepMix]:
        """`Pairing`'s policy: the mixture of one base row and one teacher row (both masked)."""
        import torch

        mix = self.mix(lead[None].cpu(), other[None].cpu())
        return torch.from_numpy(mix.logq[0]), mix

    def generate(self, prompts: str | Sequence[str], max_tokens: int = 100, temperature: float = 1.0,
                 collect_diagnostics: bool = False, constraint: Any = None, seed: int | None = None, *,
                 teacher_prompts: Sequence[str] | None = None, top_k: int = 0, top_p: float = 1.0,
                 stop: Sequence[str] = ()) -> OptimalResult:
        """Generate a continuation of each prompt in the models' engines (continuous batching).

        ``constraint``: a ``ConstraintSpec``, ``CompiledGrammar`` or JSON-schema dict,
        enforced per sequence on both models' distributions before α is chosen.
        ``temperature`` (→ 0: argmax), ``top_k``, ``top_p`` apply to q (each prompt has
        its own sampler, seeded with ``seed``). ``teacher_prompts`` overrides the
        teacher's prompts (default: ``teacher_prompt`` applied to each).
        """
        reqs = self.requests(prompts, max_tokens, temperature, constraint, seed, teacher_prompts=teacher_prompts,
                             top_k=top_k, top_p=top_p, stop=stop)
        if not reqs:
            return OptimalResult([], [], [], [])
        handles = [(self.base.engine.submit(r.base), self.teacher.engine.submit(r.teacher)) for r in reqs]
        for base, teacher in handles:
            base.result()
            teacher.result()
        result = self._result([r.pairing.leader for r in reqs])
        if collect_diagnostics:
            for key, attr in _DIAGNOSTICS.items():
                setattr(result, key, [[float(getattr(m, attr)[0]) for m in r.pairing.infos[:n]]
                                      for r, n in zip(reqs, result.num_tokens, strict=True)])
        return result

    def _result(self, states: Sequence[Any]) -> OptimalResult:
        """Texts, ids (without EOS) and reasons: "eos" when the text ended itself (EOS or
        the constraint complete), else "stop" or "length"."""
        ids, texts, reasons = [], [], []
        for st in states:
            out = st.out
            if out.finish_reason == "error":
                raise RuntimeError(out.meta.get("error", "generation failed"))
            own = out.token_ids[:-1] if out.finish_reason == "eos" else list(out.token_ids)
            reason = "eos" if st.completed else out.finish_reason  # a complete constraint counts as EOS
            ids.append(own)
            texts.append(out.text if reason == "stop" else self.base.decode(own))  # cut at the stop string
            reasons.append(reason)
        return OptimalResult(texts, ids, [len(x) for x in ids], reasons)

    def generate_one(self, prompt: str, params: Any = None, constraint_spec: Any = None) -> Any:
        """The runtime's entry point: one ``gen`` call as a ``GenerateResult``.

        ``params``: ``sgl.backends.base.SamplingParams`` (max_tokens, temperature, top_k,
        top_p, seed, stop are honoured); ``constraint_spec``: ``ConstraintSpec`` or None.
        Diagnostics go to ``meta`` ("alphas", "ess_ratios", "alpha_method").
        """
        from sgl.backends.base import GenerateResult
        from sgl.types import SamplingParams

        params = params or SamplingParams()
        stop = tuple(params.stop) if not isinstance(params.stop, str) else (params.stop,)
        r = self.generate([prompt], max_tokens=params.max_tokens, temperature=params.temperature,
                          collect_diagnostics=True, constraint=constraint_spec, seed=params.seed,
                          top_k=params.top_k, top_p=params.top_p, stop=stop)
        meta = {"alpha_method": self.alpha_method, "alphas": r.alphas[0], "ess_ratios": r.ess_ratios[0],
                "sampler": "optimal"}
        return GenerateResult(text=r.generated_texts[0], token_ids=r.generated_ids[0],
                              finish_reason=r.finish_reasons[0], meta=meta)
