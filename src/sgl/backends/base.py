"""What every backend (local engine, HTTP server) offers the runtime."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sgl.types import ConstraintSpec, SamplingParams


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
    # SGLang's select meta where the backend has it: input_token_logprobs (per choice,
    # (logprob, token_id, text) tuples), normalized_prompt_logprobs, ...
    meta: dict[str, Any] = field(default_factory=dict)


class TokenUsage:
    """Tokens a backend has processed (SGLang's ``backend.token_usage``); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += int(prompt_tokens)
            self.completion_tokens += int(completion_tokens)

    def reset(self) -> None:
        with self._lock:
            self.prompt_tokens = 0
            self.completion_tokens = 0

    def __repr__(self) -> str:
        return f"TokenUsage(prompt_tokens={self.prompt_tokens}, completion_tokens={self.completion_tokens})"


_USAGE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers beyond the `Backend` methods; the runtime reads these
    instead of probing attributes. The defaults describe a plain one-call-at-a-time model."""

    # concurrent generate() calls share one running batch (an engine with continuous
    # batching, an HTTP server): callers just call concurrently
    continuous_batching: bool = False
    # generate_batch() is faster than one generate() per request, and concurrent calls
    # gain from being gathered into it (opt-in: run_batch then uses a RequestBatcher)
    gathers_batches: bool = False
    max_batch: int = 1  # the most requests one generate_batch() call should get
    # logprob_meta(): prompt logprobs, top-k logprobs and token text (SGLang's meta fields)
    prompt_logprobs: bool = False
    prefix_cache: bool = False  # cache_prefix() keeps a prefix's KV for later requests


class Backend(ABC):
    """A model the interpreter can call. Implementations must be thread-safe."""

    capabilities: Capabilities = Capabilities()
    # a system message inserted before the first non-system role (a chat template's default)
    default_system_prompt: str | None = None

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

    def shutdown(self) -> None:
        """SGLang's name for `close`: release the backend (its engine thread, connections)."""
        self.close()

    @property
    def token_usage(self) -> TokenUsage:
        """Prompt and completion tokens of every generation so far (``.reset()`` to restart)."""
        usage = self.__dict__.get("_token_usage")
        if usage is None:
            with _USAGE_LOCK:
                usage = self.__dict__.setdefault("_token_usage", TokenUsage())
        return usage

    def count_usage(self, result: GenerateResult) -> GenerateResult:
        """Add ``result``'s token counts (its meta, else its token ids) to `token_usage`."""
        meta = result.meta
        self.token_usage.add(meta.get("prompt_tokens") or 0,
                             meta.get("completion_tokens", len(result.token_ids)) or 0)
        return result

    def flush_cache(self, empty_cache: bool = True) -> bool:
        """Drop cached prompt prefixes; False where the backend has none to drop."""
        return False

    def get_server_info(self) -> dict[str, Any]:
        """What the backend runs (SGLang's ``get_server_info``)."""
        return {"backend": type(self).__name__}

    def cache_prefix(self, prefix: str) -> None:  # noqa: B027 - optional hook
        """Compute and keep the KV of ``prefix`` where the backend caches prefixes."""

    def logprob_meta(self, prompt: str, result: GenerateResult, logprob_start_len: int | None = None,
                     top_logprobs_num: int = 0, return_text_in_logprobs: bool = False) -> dict[str, Any]:
        """SGLang's logprob fields of ``meta_info`` (``capabilities.prompt_logprobs``)."""
        raise NotImplementedError(f"{type(self).__name__} does not report prompt logprobs")
