"""SGL: a structured generation language and engine for LLMs.

SGLang's frontend language: ``import sgl`` where SGLang programs say
``import sglang as sgl``. ``sgl.LocalModel`` (torch) is imported on first use.
"""

from typing import TYPE_CHECKING, Any

from sgl._extras import MissingExtraError
from sgl._version import __version__
from sgl.errors import BackendError, ConstraintError, GenerationTimeout, ProgramError, SglError
from sgl.lang.api import (
    assistant,
    assistant_begin,
    assistant_end,
    gen,
    gen_int,
    gen_string,
    image,
    select,
    separate_reasoning,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
    video,
)
from sgl.lang.choices import (
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from sgl.lang.compiler import CompiledProgram, compile
from sgl.lang.diagnostics import Diagnostic
from sgl.lang.global_config import global_config
from sgl.lang.state import ProgramState, ProgramStateGroup
from sgl.runtime.function import SglFunction, function
from sgl.runtime.interpreter import (
    flush_cache,
    get_default_backend,
    get_server_info,
    set_default_backend,
)

_LAZY = {
    "LocalModel": "sgl.backends.local",
    "OpenAI": "sgl.backends.openai",
    "RuntimeEndpoint": "sgl.backends.openai",
    "Runtime": "sgl.backends.runtime",
    "Engine": "sgl.backends.runtime",
    "get_stats": "sgl.telemetry.metrics",
    "OptimalSampler": "sgl.decode.optimal",
}

if TYPE_CHECKING:  # the lazy names' real types, for type checkers (py.typed)
    from sgl.backends.local import LocalModel
    from sgl.backends.openai import OpenAI, RuntimeEndpoint
    from sgl.backends.runtime import Engine, Runtime
    from sgl.decode.optimal import OptimalSampler
    from sgl.telemetry.metrics import get_stats


def __getattr__(name: str) -> Any:
    # LocalModel pulls in torch; import it only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgl' has no attribute {name!r}")


__all__ = [
    "Engine",
    "LocalModel",
    "Runtime",
    "OpenAI",
    "OptimalSampler",
    "RuntimeEndpoint",
    "get_stats",
    "BackendError",
    "CompiledProgram",
    "ConstraintError",
    "Diagnostic",
    "GenerationTimeout",
    "MissingExtraError",
    "ProgramError",
    "ProgramState",
    "ProgramStateGroup",
    "SglError",
    "SglFunction",
    "__version__",
    "assistant",
    "assistant_begin",
    "assistant_end",
    "compile",
    "flush_cache",
    "function",
    "gen",
    "gen_int",
    "gen_string",
    "get_default_backend",
    "get_server_info",
    "global_config",
    "greedy_token_selection",
    "image",
    "select",
    "separate_reasoning",
    "set_default_backend",
    "system",
    "system_begin",
    "system_end",
    "token_length_normalized",
    "unconditional_likelihood_normalized",
    "user",
    "user_begin",
    "user_end",
    "video",
]
