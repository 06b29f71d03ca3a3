"""What every backend (local engine, HTTP server) offers the runtime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class GenerateRequest:
    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)
    constraint: ConstraintSpec | None = None


@dataclass
class GenerateResult:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" | "length" | "eos" | "error"
    logprobs: list[float] | None = None
    # with params.top_logprobs: per token, the (token id, logprob) pairs of the most likely tokens
    top_logprobs: list[list[tuple[int, float]]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # timings, forced-token counts, ...


@dataclass
class SelectResult:
    index: int
    scores: list[float]  # one per choice, higher is better


class Backend(ABC):
    """A model the interpreter can call. Implementations must be thread-safe."""

    @abstractmethod
    def generate(self, request: GenerateRequest) -> GenerateResult: ...

    def generate_stream(self, request: GenerateRequest) -> Iterator[str]:
        """Text deltas as they are produced; the default yields the whole text once."""
        yield self.generate(request).text

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        return [self.generate(r) for r in requests]

    @abstractmethod
    def select(self, prompt: str, choices: Sequence[str], method: str = "token_length_normalized") -> SelectResult: ...

    @abstractmethod
    def role_text(self, role: str, content: str) -> tuple[str, str]:
        """The (prefix, suffix) that wrap ``content`` in ``role`` in the model's chat template."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
