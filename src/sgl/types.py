"""Types shared by every layer: sampling parameters and the constraint spec.

A bottom layer (it imports nothing from ``sgl``): the language, the backends, the engine
and the server all use these one definitions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

GREEDY_TEMPERATURE = 1e-5  # a smaller temperature samples greedily (vLLM's _SAMPLING_EPS)


@dataclass
class SamplingParams:
    max_tokens: int = 128
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0  # with logprobs: also the k most likely tokens at each step
    frequency_penalty: float = 0.0  # subtracted per earlier occurrence in the output
    presence_penalty: float = 0.0  # subtracted once a token occurred in the output
    ignore_eos: bool = False  # EOS cannot be sampled (stop tokens and strings still stop)
    repetition_penalty: float = 1.0  # HF/SGLang: logits of ids in the prompt or output scaled (1 = off)
    stop_regex: str | tuple[str, ...] | None = None  # SGLang's: stop at the first match in the text
    logprob_start_len: int | None = None  # with logprobs: also the prompt's, from this token on (None/-1: no)

    def __post_init__(self) -> None:
        # refused here, not deep in the engine: a NaN temperature used to sample from NaN
        # probabilities and end the request with no text and no error
        for name in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0 < self.repetition_penalty <= 2:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        if isinstance(self.stop_regex, list):
            self.stop_regex = tuple(self.stop_regex)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature < GREEDY_TEMPERATURE:  # logits / 1e-300 overflow: treated as greedy (as vLLM)
            self.temperature = 0.0
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ValueError(f"seed must fit in 64 bits, got {self.seed}")


@dataclass
class ConstraintSpec:
    """A constraint as the user wrote it; each backend compiles it for its vocabulary."""

    regex: str | None = None
    json_schema: dict | str | None = None
    grammar: str | None = None
    grammar_syntax: str = "lark"  # "lark" | "gbnf" | "ebnf"
    choices: Sequence[str] | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in (self.regex, self.json_schema, self.grammar, self.choices))


def guess_grammar_syntax(text: str) -> str:
    """The ``grammar_syntax`` of grammar text that does not say (vLLM's rule for
    ``guided_grammar``): ``"gbnf"`` with ``::=`` outside comments (GBNF/EBNF rules), else ``"lark"``."""
    for line in text.splitlines():
        code = line.split("#", 1)[0] if not line.lstrip().startswith("//") else ""
        if "::=" in code:
            return "gbnf"
    return "lark"
