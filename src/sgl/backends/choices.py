"""How ``select`` scores its choices: SGLang's method objects.

Each method is callable as in SGLang (``sgl.token_length_normalized(choices=...,
normalized_prompt_logprobs=..., input_token_logprobs=..., output_token_logprobs=...)``
returns a `ChoicesDecision`), and backends use the same objects to turn per-token
log-probabilities into one score per choice (`ChoicesSamplingMethod.scores`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class ChoicesDecision:
    """What a choices method decided: the chosen string and what it looked at."""

    decision: str
    meta_info: dict[str, Any] | None = None


def _logprob(entry: Any) -> float:
    # SGLang token entries are (logprob, token_id, text) tuples; plain floats also work
    return float(entry[0] if isinstance(entry, list | tuple) else entry)


def _logprob_or_zero(entry: Any) -> float:
    # SGLang's first unconditional entry has no logprob (None): it counts as 0
    if entry is None or (isinstance(entry, list | tuple) and entry[0] is None):
        return 0.0
    return _logprob(entry)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _argmax_first(values: Sequence[float]) -> int:
    if not values:
        raise ValueError("no choices to select from")
    return max(range(len(values)), key=values.__getitem__)


class ChoicesSamplingMethod(ABC):
    """A scoring method for ``sgl.select``; backends receive it (or its ``name``)."""

    name = ""
    requires_unconditional_logprobs = False

    @abstractmethod
    def scores(
        self,
        token_logprobs: Sequence[Sequence[float]],
        unconditional_logprobs: Sequence[Sequence[float]] | None = None,
    ) -> list[float]:
        """One score per choice (higher is better) from each choice's token log-probabilities."""

    def __call__(
        self,
        *,
        choices: Sequence[str],
        normalized_prompt_logprobs: Sequence[float],
        input_token_logprobs: Sequence[Sequence[Any]],
        output_token_logprobs: Sequence[Sequence[Any]],
        unconditional_token_logprobs: Sequence[Sequence[Any]] | None = None,
    ) -> ChoicesDecision:
        """Decide as SGLang's method of the same name does."""
        if self.requires_unconditional_logprobs and unconditional_token_logprobs is None:
            raise ValueError("unconditional token logprobs are required for this method")
        lps = [[_logprob(t) for t in option] for option in input_token_logprobs]
        unc = None
        if unconditional_token_logprobs is not None:
            unc = [[_logprob_or_zero(t) for t in option] for option in unconditional_token_logprobs]
        scores = self._decision_scores(list(normalized_prompt_logprobs), lps, unc)
        meta = {
            "normalized_prompt_logprobs": list(normalized_prompt_logprobs),
            "input_token_logprobs": [list(o) for o in input_token_logprobs],
            "output_token_logprobs": [list(o) for o in output_token_logprobs],
            **self._extra_meta(lps, unc, scores),
        }
        if unconditional_token_logprobs is not None:
            meta["unconditional_token_logprobs"] = [list(o) for o in unconditional_token_logprobs]
        return ChoicesDecision(decision=choices[_argmax_first(scores)], meta_info=meta)

    def _decision_scores(self, normalized: list[float], lps: list[list[float]],
                         unc: list[list[float]] | None) -> list[float]:
        return self.scores(lps, unc)

    def _extra_meta(self, lps: list[list[float]], unc: list[list[float]] | None,
                    scores: list[float]) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"<choices method {self.name}>"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChoicesSamplingMethod) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the best mean token log-probability."""

    name = "token_length_normalized"

    def scores(self, token_logprobs, unconditional_logprobs=None) -> list[float]:
        return [mean(lp) for lp in token_logprobs]

    def _decision_scores(self, normalized, lps, unc) -> list[float]:
        return normalized  # SGLang decides on the normalized prompt logprobs it is given


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Position by position, keep the choices tied for the best log-probability.

    A choice shorter than the longest is padded with its own mean. The score of a
    choice is the number of positions it survived (the winner's is the largest).
    """

    name = "greedy_token_selection"

    def scores(self, token_logprobs, unconditional_logprobs=None) -> list[float]:
        rows = _greedy_matrix(token_logprobs)
        width = len(rows[0]) if rows else 0
        alive = list(range(len(rows)))
        scores = [0.0] * len(rows)
        for j in range(width):
            best = max(rows[i][j] for i in alive)
            for i in alive:
                scores[i] = j + (1.0 if rows[i][j] == best else 0.0)
            alive = [i for i in alive if rows[i][j] == best]
            if len(alive) == 1:
                break
        for i in alive:
            scores[i] = width + 1.0
        return scores

    def _extra_meta(self, lps, unc, scores) -> dict[str, Any]:
        return {"greedy_logprob_matrix": _greedy_matrix(lps)}


def _greedy_matrix(token_logprobs: Sequence[Sequence[float]]) -> list[list[float]]:
    width = max((len(lp) for lp in token_logprobs), default=0)
    return [list(lp) + [mean(lp)] * (width - len(lp)) for lp in token_logprobs]


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """Mean of log p(token | prompt) - log p(token | the choice alone).

    The first token has no unconditional context: its unconditional term is 0.
    """

    name = "unconditional_likelihood_normalized"
    requires_unconditional_logprobs = True

    def scores(self, token_logprobs, unconditional_logprobs=None) -> list[float]:
        if unconditional_logprobs is None:
            raise ValueError("unconditional token logprobs are required for this method")
        out = []
        for lp, unc in zip(token_logprobs, unconditional_logprobs, strict=True):
            if len(lp) != len(unc):
                raise ValueError("input and unconditional token logprobs must have the same length")
            out.append(mean([a - b for a, b in zip(lp, unc, strict=True)]))
        return out

    def _extra_meta(self, lps, unc, scores) -> dict[str, Any]:
        return {"normalized_unconditional_prompt_logprobs": scores}


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
METHODS = {m.name: m for m in (token_length_normalized, greedy_token_selection,
                                unconditional_likelihood_normalized)}
METHOD_NAMES = tuple(METHODS)


def method_name(method: ChoicesSamplingMethod | str | None) -> str:
    """The backend name of ``method`` (an SGLang-style object, its class, or a string)."""
    if method is None:
        return token_length_normalized.name
    if isinstance(method, type):  # SGLang code sometimes passes the class itself
        method = method.__name__
    name = method if isinstance(method, str) else getattr(method, "name", None)
    if not name:
        name = type(method).__name__
    name = _camel_to_snake(name)
    if name not in METHOD_NAMES:
        raise ValueError(
            f"unknown choices_method {method!r}; expected one of {', '.join(METHOD_NAMES)}"
        )
    return name


def get_method(method: ChoicesSamplingMethod | str | None) -> ChoicesSamplingMethod:
    """The method object for ``method`` (any spelling `method_name` accepts)."""
    return METHODS[method_name(method)]


def _camel_to_snake(name: str) -> str:
    # SGLang's classes are TokenLengthNormalized etc.; accept those spellings too
    if "_" in name or name.islower():
        return name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
