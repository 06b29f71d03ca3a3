"""One scripted backend for the tests that are about the language, the runtime or the
server, not the model: canned answers, every call recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from sgl.backends.base import Backend, Capabilities, GenerateRequest, GenerateResult, SelectResult


class ScriptedBackend(Backend):
    """Answers ``outputs`` in order, or ``respond(request)``; ``select`` picks
    ``choose(prompt, choices)`` (default the first). Records ``requests``, ``selects``
    and the ``prefixes`` run_batch warms; counts token usage as a real backend does."""

    capabilities = Capabilities(prefix_cache=True)

    def __init__(
        self,
        outputs: list[str] | None = None,
        respond: Callable[[GenerateRequest], str] | None = None,
        choose: Callable[[str, list[str]], int] | None = None,
        *,
        finish_reason: str = "stop",
        delay: float = 0.0,
        chunk: int = 2,
    ) -> None:
        self.outputs = list(outputs or [])
        self.respond = respond
        self.choose = choose or (lambda prompt, choices: 0)
        self.finish_reason = finish_reason
        self.delay = delay  # seconds per generate call and per streamed chunk
        self.chunk = chunk  # characters per streamed chunk
        self.requests: list[GenerateRequest] = []
        self.selects: list[tuple[str, list[str], str]] = []
        self.prefixes: list[str] = []
        self.lock = threading.Lock()

    def answer(self, request: GenerateRequest) -> str:
        with self.lock:
            self.requests.append(request)
            if self.respond is None:
                return self.outputs.pop(0)
        return self.respond(request)  # outside the lock: responders may block (barriers)

    def result(self, request: GenerateRequest, text: str) -> GenerateResult:
        return self.count_usage(GenerateResult(
            text, token_ids=list(range(len(text))), finish_reason=self.finish_reason,
            meta={"scripted": True, "prompt_tokens": len(request.prompt), "completion_tokens": len(text)}))

    def generate(self, request: GenerateRequest) -> GenerateResult:
        text = self.answer(request)
        time.sleep(self.delay)
        return self.result(request, text)

    def generate_stream(self, request: GenerateRequest) -> Iterator[str]:
        text = self.answer(request)
        for i in range(0, len(text), self.chunk):
            time.sleep(self.delay)
            yield text[i:i + self.chunk]
        return self.result(request, text)

    def select(self, prompt, choices, method="token_length_normalized") -> SelectResult:
        self.selects.append((prompt, list(choices), method))
        index = self.choose(prompt, list(choices))
        return SelectResult(index, [0.0 if i == index else -1.0 for i in range(len(choices))])

    def role_text(self, role: str, content: str) -> tuple[str, str]:
        return f"<|{role}|>", "<|end|>\n"

    def cache_prefix(self, prefix: str) -> None:
        self.prefixes.append(prefix)
