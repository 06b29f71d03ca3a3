"""Runs SGL programs: calls the Python function with a ProgramState and turns each
appended ``gen``/``select``/role into backend calls (SGLang's StreamExecutor, eager).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from sgl.backends.base import Backend, GenerateRequest, GenerateResult
from sgl.errors import BackendError, GenerationTimeout, ProgramError, SglError
from sgl.lang.dtypes import DTYPE_REGEX, parse_value
from sgl.lang.expr import (
    ConcatAndAppend,
    Constant,
    ExprList,
    GenExpr,
    RoleBegin,
    RoleEnd,
    SelectExpr,
    SeparateReasoning,
    SglExpr,
    VarScopeBegin,
    VarScopeEnd,
)
from sgl.lang.global_config import global_config
from sgl.lang.state import Parsed, ProgramState
from sgl.types import ConstraintSpec, SamplingParams

# --- the default backend ------------------------------------------------------
_default_lock = threading.Lock()  # the default backend lives in global_config


def set_default_backend(backend: Backend | None) -> None:
    """The backend used when ``run`` gets none (SGLang's name)."""
    global_config.default_backend = backend


def get_default_backend() -> Backend:
    """The default backend; a ``LocalModel()`` is created on first use if none was set."""
    with _default_lock:
        if global_config.default_backend is None:
            try:
                from sgl.backends.local import LocalModel
            except ImportError as e:
                raise BackendError(
                    f"no backend: call sgl.set_default_backend(...) or pass backend= ({e})"
                ) from e
            global_config.default_backend = LocalModel()
        return resolve_backend(global_config.default_backend)


def resolve_backend(backend: Any) -> Backend:
    """``backend`` itself, the backend behind an ``sgl.Runtime``/``sgl.Engine``
    (SGLang's ``.endpoint``), or for None the default backend."""
    if backend is None:
        return get_default_backend()
    endpoint = getattr(backend, "endpoint", None)
    return endpoint if isinstance(endpoint, Backend) else backend


def flush_cache(backend: Any = None, empty_cache: bool = True) -> bool:
    """Drop the backend's cached prompt prefixes (SGLang's ``sgl.flush_cache``); False
    when there is no backend yet or it caches nothing."""
    backend = backend if backend is not None else global_config.default_backend
    if backend is None:
        return False
    return bool(resolve_backend(backend).flush_cache(empty_cache=empty_cache))


def get_server_info(backend: Any = None) -> dict[str, Any] | None:
    """What the backend runs (SGLang's ``sgl.get_server_info``); None with no backend."""
    backend = backend if backend is not None else global_config.default_backend
    if backend is None:
        return None
    return resolve_backend(backend).get_server_info()


# --- run-level defaults -------------------------------------------------------
@dataclass
class RunDefaults:
    """Sampling settings given to ``run``; each ``gen`` may override them."""

    max_new_tokens: int = 128
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    stop_regex: Any = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None

    def __post_init__(self) -> None:
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        self.stop_token_ids = tuple(self.stop_token_ids or ())


RUN_OPTIONS = tuple(f.name for f in fields(RunDefaults))

def split_run_options(
    kwargs: dict[str, Any], program_args: Sequence[str] = ()
) -> tuple[RunDefaults, dict[str, Any]]:
    """Separate sampling options from program arguments (both arrive as ``run`` kwargs);
    a name the program itself takes (say ``seed``) stays a program argument."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in RUN_OPTIONS and k not in program_args}
    return RunDefaults(**options), kwargs


def _pick(value: Any, default: Any) -> Any:
    """A gen's own setting, or the run's default where the gen left it None."""
    return default if value is None else value


# --- the interpreter ----------------------------------------------------------
class Interpreter:
    """Executes appended expressions for the states of one run."""

    def __init__(self, backend: Backend, defaults: RunDefaults, deadline: float | None = None):
        self.backend = backend
        self.defaults = defaults
        self.deadline = deadline  # time.monotonic() value, for the whole run

    def execute(self, state: ProgramState, expr: Any) -> None:
        if isinstance(expr, str):
            state.append(expr)
        elif isinstance(expr, Constant):
            state.append(expr.value)
        elif isinstance(expr, ExprList):
            for item in expr.items:
                self.execute(state, item)
        elif isinstance(expr, GenExpr):
            self._gen(state, expr)
        elif isinstance(expr, SelectExpr):
            self._select(state, expr)
        elif isinstance(expr, RoleBegin):
            self._role_begin(state, expr.role)
        elif isinstance(expr, RoleEnd):
            self._role_end(state, expr.role)
        elif isinstance(expr, VarScopeBegin):
            state.begin_scope(expr.name)
        elif isinstance(expr, VarScopeEnd):
            state.end_scope(expr.name)
        elif isinstance(expr, SeparateReasoning):
            self._separate_reasoning(state, expr)
        elif isinstance(expr, ConcatAndAppend):
            state.append("".join(s.fork_text() for s in expr.states))
        elif isinstance(expr, SglExpr):
            raise ProgramError(f"cannot execute {type(expr).__name__}")
        else:
            raise TypeError(
                f"cannot append {type(expr).__name__} to the state; use str(...) for values"
            )

    # --- gen ---
    def request_for(self, state: ProgramState, g: GenExpr) -> GenerateRequest:
        d = self.defaults

        top_k = _pick(g.top_k, d.top_k)
        params = SamplingParams(
            max_tokens=_pick(g.max_tokens, d.max_new_tokens),
            min_tokens=_pick(g.min_tokens, d.min_tokens),
            stop=_pick(g.stop, d.stop),
            stop_token_ids=_pick(g.stop_token_ids, d.stop_token_ids),
            temperature=_pick(g.temperature, d.temperature),
            top_p=_pick(g.top_p, d.top_p),
            top_k=max(0, top_k),  # SGLang spells "off" as -1
            min_p=_pick(g.min_p, d.min_p),
            seed=_pick(g.seed, d.seed),
            frequency_penalty=_pick(g.frequency_penalty, d.frequency_penalty),
            presence_penalty=_pick(g.presence_penalty, d.presence_penalty),
            ignore_eos=bool(_pick(g.ignore_eos, d.ignore_eos)),
            repetition_penalty=_pick(g.repetition_penalty, d.repetition_penalty),
            stop_regex=_pick(g.stop_regex, d.stop_regex),
            logprobs=bool(_pick(g.return_logprob, d.return_logprob)),
            top_logprobs=int(_pick(g.top_logprobs_num, d.top_logprobs_num) or 0),
            logprob_start_len=_pick(g.logprob_start_len, d.logprob_start_len),
        )
        regex = DTYPE_REGEX[g.dtype] if g.dtype else g.regex
        constraint = ConstraintSpec(
            regex=regex,
            json_schema=g.json_schema,
            grammar=g.grammar,
            grammar_syntax=g.grammar_syntax,
        )
        return GenerateRequest(
            prompt=state.current_text(),
            params=params,
            constraint=None if constraint.is_empty() else constraint,
        )

    def _gen(self, state: ProgramState, g: GenExpr) -> None:
        request = self.request_for(state, g)
        deadline = self._deadline(g.timeout)
        what = f"gen {g.name!r}" if g.name else "gen"
        n = g.n or 1
        start = len(state.current_text())
        if n == 1 and g.sampler is None and (state.streamed or deadline is not None):
            meta = self._gen_streaming(state, g.name, request, deadline, what)
            texts, metas = [meta.pop("text")], [meta]
        else:
            requests = [request] if n == 1 else [_nth_sample(request, i) for i in range(n)]
            results = self._call(lambda: self._generate(g, requests), state, what, deadline)
            texts = [r.text for r in results]
            metas = [self._result_meta(g, req, r) for req, r in zip(requests, results, strict=True)]
            state.append(texts[0])  # as SGLang: with n samples, the text continues with the first
        if g.dtype == "str":  # a string cut short is closed, never left unterminated
            closings = [_close_string(text) for text in texts]
            if closings[0]:
                state.append(closings[0])
            texts = [text + closing for text, closing in zip(texts, closings, strict=True)]
            for meta, closing in zip(metas, closings, strict=True):
                if closing:
                    meta.update(truncated=True, closed_with=closing)
        if g.name is None:
            return
        values = [self._value(g, text, meta) for text, meta in zip(texts, metas, strict=True)]
        cut = [_cut_value_error(g, request, text, meta) for text, meta in zip(texts, metas, strict=True)]
        readings = [_reading(g, text, value, meta) for text, value, meta in zip(texts, values, metas, strict=True)]
        if g.value_is_model:  # dtype=Model: the variable holds the instance where it validated
            values = [r.value if r is not None and r.error is None else v for r, v in zip(readings, values, strict=True)]
        state.record_var(g.name, values[0] if n == 1 else values, metas[0] if n == 1 else metas, start,
                         truncated="; ".join(c for c in cut if c) or None, parsed=_one_reading(readings))

    def _generate(self, g: GenExpr, requests: list[GenerateRequest]) -> list[GenerateResult]:
        if g.sampler is not None:
            return [g.sampler.generate_one(r.prompt, r.params, r.constraint) for r in requests]
        if len(requests) == 1:
            return [self.backend.generate(requests[0])]
        return self.backend.generate_batch(requests)

    def _result_meta(self, g: GenExpr, request: GenerateRequest, result: GenerateResult) -> dict:
        meta = {
            "finish_reason": result.finish_reason,
            "completion_tokens": len(result.token_ids),
            **result.meta,
        }
        if result.logprobs is not None:
            meta["logprobs"] = result.logprobs
        if request.params.logprobs:
            meta.update(self._logprob_meta(g, request, result))
        return meta

    def _logprob_meta(self, g: GenExpr, request: GenerateRequest, result: GenerateResult) -> dict:
        """SGLang's logprob fields, from the backend (token text, prompt logprobs) where it can."""
        d = self.defaults

        start = _pick(g.logprob_start_len, d.logprob_start_len)
        top_n = request.params.top_logprobs
        with_text = bool(_pick(g.return_text_in_logprobs, d.return_text_in_logprobs))
        if result.logprobs is None:
            raise ProgramError(f"{type(self.backend).__name__} does not return logprobs")
        if self.backend.capabilities.prompt_logprobs and g.sampler is None:
            return self.backend.logprob_meta(request.prompt, result, start, top_n, with_text)
        if (start is not None and start >= 0) or top_n or with_text:
            raise ProgramError(
                f"{type(self.backend).__name__} returns output token logprobs only "
                "(no logprob_start_len, top_logprobs_num or return_text_in_logprobs)"
            )
        return {
            "output_token_logprobs": [
                (lp, t, None) for t, lp in zip(result.token_ids, result.logprobs, strict=False)
            ],
            "input_token_logprobs": [],
        }

    @staticmethod
    def _value(g: GenExpr, text: str, meta: dict) -> Any:
        """The variable's value: the text, or for ``dtype`` the parsed value."""
        if not g.dtype:
            return text
        try:
            return parse_value(g.dtype, text)
        except ValueError as e:
            meta["dtype_error"] = str(e)  # keep the raw text (e.g. cut by max_tokens)
            return text

    def _gen_streaming(
        self,
        state: ProgramState,
        name: str | None,
        request: GenerateRequest,
        deadline: float | None,
        what: str,
    ) -> dict:
        """Stream deltas into the state as they come; stop reading at the deadline."""
        cancelled = threading.Event()
        collected: list[str] = []
        state.begin_stream(name)

        def consume() -> None:
            stream = self.backend.generate_stream(request)
            try:
                for delta in stream:
                    if not state.stream_delta(name, delta, cancelled):
                        break
                    collected.append(delta)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # lets a backend stop decoding early

        try:
            self._call(consume, state, what, deadline, on_timeout=cancelled.set)
        finally:
            state.end_stream(name)
        return {"finish_reason": "stream", "text": "".join(collected)}

    # --- select ---
    def _select(self, state: ProgramState, sel: SelectExpr) -> None:
        prompt = state.current_text()
        result = self._call(
            lambda: self.backend.select(prompt, sel.choices, sel.method),
            state,
            f"select {sel.name!r}" if sel.name else "select",
            self._deadline(sel.timeout),
        )
        index = result.index
        if sel.temperature > 0 and result.scores:
            index = _sample_index(
                result.scores,
                sel.temperature,
                sel.seed if sel.seed is not None else self.defaults.seed,
            )
        choice = sel.choices[index]
        start = len(state.current_text())
        state.append(choice)
        if sel.name is not None:
            meta = {**result.meta, "scores": list(result.scores), "index": index, "method": sel.method}
            state.record_var(sel.name, choice, meta, start)

    # --- separate_reasoning ---
    def _separate_reasoning(self, state: ProgramState, expr: SeparateReasoning) -> None:
        """Split each target's value into answer (variable, text) and reasoning.

        The text is rewritten only where the value is still the end of the text and the
        run is not streamed (a streamed reader has already seen it): then the state's
        text and the open role's message hold the answer alone, as in SGLang.
        """
        from sgl.lang.reasoning import split_reasoning

        for target in expr.targets():
            name = target.name
            value = state.current_value(name)
            if not isinstance(value, str):
                raise ProgramError(
                    f"separate_reasoning needs the text of {name!r}, not {type(value).__name__}", state
                )
            try:
                reasoning, answer = split_reasoning(value, expr.model_type)
            except ValueError as e:
                raise ProgramError(str(e), state) from e
            state.rewrite_value_text(name, answer)
            state.set_var(expr.process_name_for_reasoning(name), reasoning)
            state.set_var(name, answer)

    # --- roles ---
    def _role_begin(self, state: ProgramState, role: str) -> None:
        default_system = self.backend.default_system_prompt
        if state.current_role is None and not state.message_count and role != "system" and default_system:
            self._role_begin(state, "system")
            state.append(default_system)
            self._role_end(state, "system")
        state.open_role(role, self.backend.role_text(role, "")[0])

    def _role_end(self, state: ProgramState, role: str) -> None:
        state.close_role(role, lambda content: self.backend.role_text(role, content)[1])

    # --- calling the backend ---
    def _deadline(self, call_timeout: float | None) -> float | None:
        if call_timeout is None:
            return self.deadline
        call_deadline = time.monotonic() + call_timeout
        return call_deadline if self.deadline is None else min(call_deadline, self.deadline)

    def _call(
        self,
        fn: Callable[[], Any],
        state: ProgramState,
        what: str,
        deadline: float | None,
        on_timeout: Callable[[], None] | None = None,
    ) -> Any:
        """``fn()`` with backend errors typed; with a deadline, run it on a helper thread
        and give up waiting at the deadline (the text so far stays in ``state``)."""
        if deadline is None:
            try:
                return fn()
            except Exception as e:  # noqa: BLE001 - re-raised typed
                self._raise_typed(e, state, what)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GenerationTimeout(f"timed out before {what}", state)
        box: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=target, name="sgl-call", daemon=True).start()
        if not done.wait(remaining):
            if on_timeout is not None:
                on_timeout()
            raise GenerationTimeout(f"{what} did not finish within the timeout", state)
        if "error" in box:
            self._raise_typed(box["error"], state, what)
        return box["value"]

    @staticmethod
    def _raise_typed(error: BaseException, state: ProgramState, what: str) -> None:
        if isinstance(error, SglError):  # ConstraintError included: the text so far is never lost
            if error.state is None:
                error.state = state
            raise error
        raise BackendError(
            f"backend failed during {what}: {type(error).__name__}: {error}", state
        ) from error


def _close_string(text: str) -> str:
    """What closes ``text``, a JSON string the ``str`` dtype's regex started ("" if complete).

    The shortest completion: a closing quote, after finishing a half-written escape
    (a lone backslash becomes an escaped backslash).
    """
    if text == "":
        return '""'  # cut before the opening quote
    if not text.startswith('"'):
        return ""
    body = text[1:]
    i, n = 0, len(body)
    while i < n:
        if body[i] == "\\":
            if i + 1 == n:
                return '\\"'
            i += 2
        elif body[i] == '"':
            return ""  # closed
        else:
            i += 1
    return '"'


def _cut_value_error(g: GenExpr, request: GenerateRequest, text: str, meta: dict) -> str | None:
    """Why a constrained value cut by ``max_tokens`` is broken, or None if it is whole."""
    if meta.get("finish_reason") != "length" or request.constraint is None:
        return None
    if g.dtype:
        if "dtype_error" not in meta:
            return None
    elif g.regex is not None:
        import re

        try:
            if re.fullmatch(g.regex, text) is not None:
                return None
        except re.error:
            return None  # a regex only the constraint engine reads: cannot tell
    elif g.json_schema is not None:
        try:
            json.loads(text)
            return None
        except ValueError:
            pass
    else:
        return None  # a grammar: no Python-side check
    meta["truncated"] = True
    return (f"the value of {g.name!r} was cut by max_tokens={request.params.max_tokens} before the "
            f"constraint was complete ({text[-40:]!r}); raise max_tokens (the raw text is in the state's text)")


def _reading(g: GenExpr, text: str, value: Any, meta: dict) -> Parsed | None:
    """The structured reading of one generated value (None for plain text)."""
    if g.model is not None:
        try:
            return Parsed(g.model.model_validate_json(text))
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            meta["parse_error"] = str(e)
            return Parsed(error=str(e))
    if g.json_schema is not None:
        try:
            return Parsed(json.loads(text))
        except ValueError as e:
            meta["parse_error"] = str(e)
            return Parsed(error=f"not JSON: {e}")
    if g.dtype:
        error = meta.get("dtype_error")
        return Parsed(error=error) if error else Parsed(value)
    return None


def _one_reading(readings: list[Parsed | None]) -> Parsed | None:
    """The reading of ``gen``'s variable: of its one value, or a list for ``n`` samples."""
    if len(readings) == 1 or readings[0] is None:
        return readings[0]
    errors = [r.error for r in readings if r.error is not None]
    return Parsed(error="; ".join(errors)) if errors else Parsed([r.value for r in readings])


def _nth_sample(request: GenerateRequest, i: int) -> GenerateRequest:
    """Sample ``i`` of ``gen(n=...)``: a seeded request gets seed + i (reproducible, distinct)."""
    seed = request.params.seed
    params = replace(request.params, seed=None if seed is None else seed + i)
    return replace(request, params=params)


def _sample_index(scores: list[float], temperature: float, seed: int | None) -> int:
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    return random.Random(seed).choices(range(len(scores)), weights=weights)[0]


# --- running a program ----------------------------------------------------------
def run_program(
    func: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    *,
    backend: Backend | None,
    defaults: RunDefaults,
    stream: bool = False,
    timeout: float | None = None,
    raise_errors: bool = True,
) -> ProgramState:
    """Run ``func(state, *args, **kwargs)``; a streamed run returns at once."""
    deadline = None if timeout is None else time.monotonic() + timeout
    backend = resolve_backend(backend)
    interp = Interpreter(backend, defaults, deadline)
    state = ProgramState(interp, stream=stream)
    if stream:
        threading.Thread(
            target=_run_body, args=(func, state, args, kwargs), name="sgl-stream", daemon=True
        ).start()
        return state
    error = _run_body(func, state, args, kwargs)
    if error is not None and raise_errors:
        raise error
    return state


def _run_body(
    func: Callable[..., Any], state: ProgramState, args: tuple, kwargs: dict
) -> BaseException | None:
    error: BaseException | None = None
    try:
        state.ret_value = func(state, *args, **kwargs)
    except SglError as e:
        if e.state is None:
            e.state = state
        error = e
    except Exception as e:  # noqa: BLE001 - the program's own bug, typed with its state
        wrapped = ProgramError(f"{type(e).__name__} in program: {e}", state)
        wrapped.__cause__ = e
        error = wrapped
    state.finish(error)
    if global_config.verbosity >= 2:
        print(state.current_text())
    return error
