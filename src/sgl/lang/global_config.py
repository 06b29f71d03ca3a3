"""``sgl.global_config``: SGLang's frontend settings object.

``default_backend`` is the same setting as `sgl.set_default_backend` (None until one is
set or first needed). ``verbosity >= 2`` prints each program's text when it finishes.
``enable_precache_with_tracing``: ``run_batch`` prefills the program's traced prefix
before its runs (backends with a prefix cache). The other flags are SGLang's; SGL keeps
them so code that sets them runs, and they change nothing (docs/sglang_compat.md).
"""

from __future__ import annotations

from typing import Any


class GlobalConfig:
    """Process-wide frontend settings (SGLang's ``global_config``)."""

    def __init__(self) -> None:
        # the backend ``run`` uses when given none (None until one is set or first needed);
        # the runtime reads and fills it (`sgl.set_default_backend`, `get_default_backend`)
        self.default_backend: Any = None
        self.verbosity = 0
        self.enable_precache_with_tracing = True
        # SGLang flags without an effect here: forks join by text, and special tokens
        # never reach generated text.
        self.enable_parallel_encoding = True
        self.skip_special_tokens_in_output = True
        self.spaces_between_special_tokens_in_out = True

    def __repr__(self) -> str:
        return f"GlobalConfig(default_backend={self.default_backend!r}, verbosity={self.verbosity})"


global_config = GlobalConfig()
