"""``@sgl.function`` and the ``SglFunction`` it returns: ``run``, ``run_batch``, ``bind``.

Here in ``runtime`` (not ``lang``): running a program needs the interpreter, and the
language layer imports nothing from the runtime.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any, overload

from sgl.errors import BackendError, ProgramError
from sgl.lang.compiler import compile as compile_program
from sgl.lang.global_config import global_config
from sgl.lang.tracer import Call, StopTracing, TracerState, current_trace, trace_program

from .batch import run_batch
from .interpreter import resolve_backend, run_program, split_run_options


@overload
def function(func: Callable[..., Any], *, num_api_spec_tokens: int | None = None) -> SglFunction: ...


@overload
def function(func: None = None, *, num_api_spec_tokens: int | None = None
             ) -> Callable[[Callable[..., Any]], SglFunction]: ...


def function(func: Callable[..., Any] | None = None, *, num_api_spec_tokens: int | None = None
             ) -> SglFunction | Callable[[Callable[..., Any]], SglFunction]:
    """Decorate ``def prog(s, ...)`` as an SGL program (``@sgl.function`` or ``@sgl.function()``).

    ``num_api_spec_tokens`` is accepted for SGLang compatibility and ignored.
    """
    if func is not None:
        return SglFunction(func, num_api_spec_tokens)
    return lambda f: SglFunction(f, num_api_spec_tokens)


class SglFunction:
    """An SGL program. Call it (or ``.run``) to execute it once; ``.run_batch`` for many."""

    def __init__(
        self,
        func: Callable[..., Any],
        num_api_spec_tokens: int | None = None,
        bind_arguments: dict | None = None,
    ):
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens  # SGLang compatibility; unused
        self.bind_arguments = dict(bind_arguments or {})
        params = list(inspect.signature(func).parameters.values())
        self.arg_names = [
            p.name
            for p in params[1:]
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        self.arg_defaults = [p.default for p in params[1:] if p.default is not p.empty]
        self._compiled: Any = None
        self._compile_lock = threading.Lock()
        self._pinned: Any = None  # (backend, handle) of pin()
        functools.update_wrapper(self, func)

    def __repr__(self) -> str:
        return f"<SglFunction {self.func.__qualname__}>"

    def bind(self, **kwargs: Any) -> SglFunction:
        """A copy with some program arguments fixed."""
        unknown = [k for k in kwargs if k not in self.arg_names]
        if unknown:
            raise TypeError(f"{self.__name__}() has no argument {unknown[0]!r}")
        bound = SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})
        bound._compiled = self._compiled
        return bound

    def compile(self, *, backend: Any = None) -> Any:
        """The CompiledProgram (IR and diagnostics, computed once); its ``run`` and
        ``run_batch`` run this function (on ``backend`` unless given another)."""
        with self._compile_lock:
            if self._compiled is None:
                self._compiled = compile_program(self)
            return dataclasses.replace(self._compiled, function=self, backend=backend)

    def trace(self, *args: Any, backend: Any = None, **kwargs: Any) -> Any:
        """The expressions this program appends, recorded without any model call
        (a `sgl.lang.tracer.ProgramTrace`). Arguments not given are placeholders;
        tracing stops where the program needs a generated value."""
        return trace_program(self.func, self.arg_names, args, {**kwargs, **self.bind_arguments},
                             name=self.__name__)

    def prefix(self, backend: Any = None) -> str:
        """The text every run of this program starts with (bound arguments included)."""
        # as SGLang: a placeholder used where only a real value works ends the prefix
        trace = trace_program(self.func, self.arg_names, (), dict(self.bind_arguments),
                              name=self.__name__, stop_on=(StopTracing, TypeError, AttributeError))
        return trace.prefix(backend)

    def cache(self, backend: Any = None) -> str:
        """Prefill the program's constant prefix into the backend's prefix cache (no
        effect on backends without one); returns the prefix."""
        backend = resolve_backend(backend)
        prefix = self.prefix(backend)
        if prefix:
            backend.cache_prefix(prefix)
        return prefix

    def pin(self, backend: Any = None) -> Any:
        """Like `cache`, and keep the prefix from eviction until `unpin`."""
        backend = resolve_backend(backend)
        if not hasattr(backend, "pin_prefix"):
            raise BackendError(f"{type(backend).__name__} cannot pin prefixes")
        self.unpin()
        prefix = self.prefix(backend)
        self._pinned = (backend, backend.pin_prefix(prefix)) if prefix else None
        return self._pinned[1] if self._pinned else None

    def unpin(self, backend: Any = None) -> None:
        """Release what `pin` kept (nothing if nothing is pinned)."""
        pinned, self._pinned = getattr(self, "_pinned", None), None
        if pinned is not None:
            pinned[0].unpin_prefix(pinned[1])

    def check(self) -> None:
        """Raise ProgramError if the compiler found errors."""
        compiled = self.compile()
        if not compiled.ok:
            raise ProgramError(
                f"{self.__name__} does not compile:\n{compiled.format()}",
                diagnostics=compiled.errors,
            )

    def run(
        self,
        *args: Any,
        backend: Any = None,
        stream: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run once. Sampling options (``max_new_tokens``, ``temperature``, ``top_p``,
        ``top_k``, ``min_p``, ``stop``, ``stop_token_ids``, ``min_tokens``, ``seed``) set
        defaults for every gen; other kwargs are the program's arguments. ``timeout``
        (seconds) bounds the whole run. Raises ProgramError / BackendError /
        GenerationTimeout with ``.state``; with ``stream=True`` returns at once (read
        ``state.text_iter()``)."""
        self.check()
        defaults, program_kwargs = split_run_options(dict(kwargs), self.arg_names)
        program_kwargs.update(self.bind_arguments)
        return run_program(
            self.func,
            args,
            program_kwargs,
            backend=backend,
            defaults=defaults,
            stream=stream,
            timeout=timeout,
        )

    def run_batch(
        self,
        batch_kwargs: Sequence[dict[str, Any] | Sequence[Any]],
        *,
        backend: Any = None,
        num_threads: int | str = "auto",
        progress_bar: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> list[Any]:
        """Run once per kwargs dict (or tuple of positional values) on a thread pool.
        Results come back in order; a failed run keeps its partial state and its error
        (``state.error()``) while the others go on. ``timeout`` is per run."""
        self.check()
        defaults, rest = split_run_options(dict(options))
        if rest:
            raise TypeError(f"run_batch got unexpected options: {', '.join(rest)}")
        items = [self._as_kwargs(item) for item in batch_kwargs]
        self._precache(backend, len(items))
        return run_batch(
            self.func,
            items,
            backend=backend,
            defaults=defaults,
            num_threads=num_threads,
            progress_bar=progress_bar,
            timeout=timeout,
        )

    def _as_kwargs(self, item: dict[str, Any] | Sequence[Any]) -> dict[str, Any]:
        if isinstance(item, dict):
            return {**item, **self.bind_arguments}
        if not isinstance(item, list | tuple):
            raise TypeError(f"run_batch items must be dicts or tuples, not {type(item).__name__}")
        if len(item) > len(self.arg_names):
            raise TypeError(
                f"{self.__name__}() takes {len(self.arg_names)} arguments ({len(item)} given)"
            )
        return {**dict(zip(self.arg_names, item, strict=False)), **self.bind_arguments}

    def _precache(self, backend: Any, n_runs: int) -> None:
        """As SGLang: before a batch, prefill the shared prefix once, so the runs that
        start together all find it cached (``global_config.enable_precache_with_tracing``)."""
        if n_runs < 2 or not global_config.enable_precache_with_tracing:
            return
        resolved = resolve_backend(backend)
        if not resolved.capabilities.prefix_cache:
            return  # nothing to warm: skip tracing the program
        self.cache(resolved)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        outer = current_trace()
        if outer is not None:  # called from a program being traced: trace this one too
            sub = self.trace(*args, **{k: v for k, v in kwargs.items() if k != "backend"})
            outer.nodes.append((0, Call(self.__name__, sub)))
            state = TracerState(sub)
            return state
        return self.run(*args, **kwargs)
