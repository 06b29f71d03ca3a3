"""``ProgramState``: the ``s`` a program appends to; text, variables, messages, forks.

A state executes what is appended to it at once (through its interpreter), except a
fork, which queues work on its own thread so that forks decode in parallel, and a
streamed run, whose program runs on a background thread while the caller reads
``text_iter()``. Text only ever grows while a reader can follow it by offset (a
streamed run); only `separate_reasoning` in an unstreamed run rewrites its tail.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sgl.errors import ProgramError

from .expr import ConcatAndAppend, RoleBegin, RoleEnd, SglExpr, VarScopeBegin, VarScopeEnd


@dataclass(frozen=True)
class Parsed:
    """The structured reading of a generated value (`ProgramState.parsed`): ``value``,
    or ``error`` saying why the text does not parse or validate."""

    value: Any = None
    error: str | None = None


class StateMethods:
    """``system`` / ``user`` / ``assistant`` (an expression, or ``with`` a block),
    ``var_scope``, ``gen`` and ``select``, built on ``self += expr`` and ``get_var``:
    shared by running and tracing states."""

    def gen(self, name: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """``s += sgl.gen(name, ...)``; returns the variable's value."""
        from .api import gen

        self += gen(name, *args, **kwargs)
        return self.get_var(name) if name is not None else None

    def select(self, name: str | None = None, *args: Any, **kwargs: Any) -> Any:
        """``s += sgl.select(name, ...)``; returns the chosen string."""
        from .api import select

        self += select(name, *args, **kwargs)
        return self.get_var(name) if name is not None else None

    def _role_common(self, role: str, expr: Any = None) -> Any:
        if expr is not None:
            self += RoleBegin(role) + expr + RoleEnd(role)
            return None
        return self._role_scope(role)

    @contextmanager
    def _role_scope(self, role: str) -> Iterator[None]:
        self += RoleBegin(role)
        yield
        self += RoleEnd(role)

    def system(self, expr: Any = None) -> Any:
        """Append ``expr`` as a system message, or ``with s.system():``."""
        return self._role_common("system", expr)

    def user(self, expr: Any = None) -> Any:
        """Append ``expr`` as a user message, or ``with s.user():``."""
        return self._role_common("user", expr)

    def assistant(self, expr: Any = None) -> Any:
        """Append ``expr`` as an assistant message, or ``with s.assistant():``."""
        return self._role_common("assistant", expr)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """Capture the text appended inside the block into variable ``name``."""
        self += VarScopeBegin(name)
        yield
        self += VarScopeEnd(name)


class ProgramState(StateMethods):
    """The state of one program run (SGLang's ``ProgramState``)."""

    def __init__(self, interpreter: Any, *, stream: bool = False):
        self._interp = interpreter
        self._stream = stream
        self._cond = threading.Condition(threading.RLock())
        self._text = ""
        self._vars: dict[str, Any] = {}
        self._meta: dict[str, dict] = {}
        self._messages: list[dict[str, str]] = []
        self._role: str | None = None
        self._role_start = 0
        self._scopes: dict[str, int] = {}
        self._spans: dict[str, tuple[int, int]] = {}  # where each gen/select value sits in the text
        self._truncated: dict[str, str] = {}  # variables cut by max_tokens: reading one raises
        self._parsed: dict[str, Parsed] = {}  # gen(json_schema=..., dtype=...): the structured value
        self._fork_start = 0
        self._streaming_vars: set[str] = set()
        self._error: BaseException | None = None
        self._background = stream  # the program runs on another thread (run(stream=True))
        self._finished = False
        self._worker: ThreadPoolExecutor | None = None  # forks queue their work here
        self._pending: list[Future] = []
        self.ret_value: Any = None

    # --- appending -----------------------------------------------------------
    def __iadd__(self, other: Any) -> ProgramState:
        if other is None:
            raise ValueError("tried to append None to the state")
        if self._worker is not None:
            self._pending.append(self._worker.submit(self._interp.execute, self, other))
        else:
            self._interp.execute(self, other)
        return self

    # --- forks ---------------------------------------------------------------
    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ProgramStateGroup:
        """``size`` copies of this state that run in parallel until ``join()``."""
        self.sync()
        children = []
        for _ in range(int(size)):
            child = ProgramState(self._interp)
            with self._cond:
                child._text = self._text
                child._vars = dict(self._vars)
                child._messages = list(self._messages)
                child._role, child._role_start = self._role, self._role_start
                child._fork_start = len(self._text)
            child._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sgl-fork")
            children.append(child)
        return ProgramStateGroup(children, self)

    @contextmanager
    def copy(self, position_ids_offset: Any = None) -> Iterator[ProgramState]:
        """A single fork, joined when the block ends."""
        group = self.fork(1)
        try:
            yield group[0]
        finally:
            group.join()

    # --- reading -------------------------------------------------------------
    def sync(self) -> None:
        """Wait for queued work (forks) or the background run (streams); re-raise its error."""
        pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()
        if self._background:
            with self._cond:
                self._cond.wait_for(lambda: self._finished)
            if self._error is not None:
                raise self._error

    def text(self) -> str:
        """All text so far (prompt and generations)."""
        self._sync_quietly()
        return self._text

    def messages(self) -> list[dict[str, str]]:
        """The role messages so far, in the OpenAI format."""
        self._sync_quietly()
        return [dict(m) for m in self._messages]

    def variables(self) -> dict[str, Any]:
        """A copy of all variables."""
        self._sync_quietly()
        return dict(self._vars)

    def get_var(self, name: str) -> Any:
        """The value of variable ``name`` (waits for it in a streamed run)."""
        if self._pending:
            self.sync()
        with self._cond:
            if self._background:
                self._cond.wait_for(
                    lambda: (
                        self._finished or (name in self._vars and name not in self._streaming_vars)
                    )
                )
            if name not in self._vars:
                known = ", ".join(sorted(self._vars)) or "none"
                raise KeyError(f"variable {name!r} is not defined (defined: {known})")
            if name in self._truncated:
                raise ProgramError(self._truncated[name], self)
            return self._vars[name]

    def set_var(self, name: str, value: Any) -> None:
        with self._cond:
            self._vars[name] = value
            self._truncated.pop(name, None)  # a value the program sets itself is whole
            self._parsed.pop(name, None)  # ... and has no structured reading
            self._cond.notify_all()

    def parsed(self, name: str) -> Any:
        """The structured value of variable ``name``: the pydantic model instance for
        ``gen(json_schema=Model)`` / ``gen(dtype=Model)``, the JSON value for a schema
        dict or JSON text, the typed value for ``dtype=int`` etc. (``state[name]`` stays
        the text for ``json_schema``). Raises ProgramError if the value was cut by
        ``max_tokens`` or does not parse or validate, KeyError if it is not defined."""
        self.get_var(name)  # waits for it; raises if it is undefined or was cut short
        with self._cond:
            reading = self._parsed.get(name)
        if reading is None:
            raise ProgramError(
                f"variable {name!r} has no parsed value: generate it with json_schema= or dtype=", self
            )
        if reading.error is not None:
            raise ProgramError(f"the value of {name!r} does not parse: {reading.error}", self)
        return reading.value

    def get_meta_info(self, name: str) -> dict | None:
        """What the backend reported for variable ``name`` (finish reason, scores, ...)."""
        self._sync_quietly()
        return self._meta.get(name)

    def error(self) -> BaseException | None:
        """The error that stopped this run, if any."""
        return self._error

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self._vars

    def __repr__(self) -> str:
        return f"ProgramState({self._text!r})"

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        """Text as it is produced (``run(stream=True)``); of one variable if ``var_name``.

        Without streaming, yields the whole text (or value) once. Re-raises the run's
        error after the text produced before it.
        """
        if not self._background:
            yield self.text() if var_name is None else str(self.get_var(var_name))
            return
        pos = 0
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda p=pos: self._stream_done(var_name) or len(self._current(var_name)) > p
                )
                out = self._current(var_name)[pos:]
                done = self._stream_done(var_name)
            pos += len(out)
            if out:
                yield out
            if done and pos >= len(self._current(var_name)):
                break
        if self._error is not None:
            raise self._error

    async def text_async_iter(
        self, var_name: str | None = None, return_meta_data: bool = False
    ) -> AsyncIterator[Any]:
        """`text_iter` for asyncio: ``async for chunk in state.text_async_iter("answer")``.

        With ``return_meta_data`` each chunk comes as ``(chunk, meta)``, ``meta`` being
        the variable's meta info so far (None until the backend reported it).
        """
        loop = asyncio.get_running_loop()
        chunks = self.text_iter(var_name)
        done = object()
        try:
            while True:
                # the blocking wait for the next chunk runs on a worker thread
                chunk = await loop.run_in_executor(None, next, chunks, done)
                if chunk is done:
                    return
                if return_meta_data:
                    meta = self._meta.get(var_name) if var_name is not None else None
                    yield chunk, meta
                else:
                    yield chunk
        finally:
            chunks.close()

    def _stream_done(self, var_name: str | None) -> bool:
        if self._finished:
            return True
        return (
            var_name is not None and var_name in self._vars and var_name not in self._streaming_vars
        )

    def _current(self, var_name: str | None) -> str:
        if var_name is None:
            return self._text
        value = self._vars.get(var_name, "")
        return value if isinstance(value, str) else ""

    def _sync_quietly(self) -> None:
        # Readers of text/messages want what exists; errors surface via error()/sync().
        pending, self._pending = self._pending, []
        for fut in pending:
            if fut.exception() is not None and self._error is None:
                self._error = fut.exception()

    # --- the interpreter's API ----------------------------------------------------
    # Every write to a state goes through these (the interpreter touches no private
    # attribute). None of them waits for queued fork work: the interpreter calls them
    # from that work itself.
    @property
    def streamed(self) -> bool:
        """Whether this run streams (readers may already have seen the text)."""
        return self._stream

    @property
    def current_role(self) -> str | None:
        """The role opened and not yet closed, if any."""
        return self._role

    @property
    def message_count(self) -> int:
        """How many role messages were closed so far."""
        return len(self._messages)

    def current_text(self) -> str:
        """The text so far, without waiting for anything (the interpreter's prompt)."""
        return self._text

    def current_value(self, name: str) -> Any:
        """Variable ``name`` as it is now (None if unset), without waiting or raising."""
        return self._vars.get(name)

    def fork_text(self) -> str:
        """The text this fork added after it was forked."""
        return self._text[self._fork_start :]

    def append(self, text: str) -> None:
        """Append ``text`` (a constant, a role marker, a chosen value)."""
        with self._cond:
            self._text += text
            self._cond.notify_all()

    def begin_stream(self, name: str | None) -> None:
        """A value will be streamed into variable ``name`` (readers wait for its end)."""
        if name is None:
            return
        with self._cond:
            self._vars[name] = ""
            self._streaming_vars.add(name)

    def stream_delta(self, name: str | None, delta: str, cancelled: threading.Event) -> bool:
        """Append ``delta`` to the text and to variable ``name`` together, unless
        ``cancelled`` is set (checked under the lock: nothing lands after a timeout)."""
        with self._cond:
            if cancelled.is_set():
                return False
            self._text += delta
            if name is not None:
                self._vars[name] = self._vars.get(name, "") + delta
            self._cond.notify_all()
            return True

    def end_stream(self, name: str | None) -> None:
        """The streamed value of ``name`` is complete (or abandoned)."""
        with self._cond:
            self._streaming_vars.discard(name)
            self._cond.notify_all()

    def record_var(self, name: str, value: Any, meta: Any, start: int, *, truncated: str | None = None,
                   parsed: Parsed | None = None) -> None:
        """Set a generated variable: its value, its meta info and its span (from text
        offset ``start`` to the end of the text), all at once. ``truncated``: why the
        value is incomplete (reading it then raises ProgramError with that message);
        ``parsed``: its structured reading (`parsed`)."""
        with self._cond:
            self._spans[name] = (start, len(self._text))
            self._meta[name] = meta
            self.set_var(name, value)
            if truncated:
                self._truncated[name] = truncated
            if parsed is not None:
                self._parsed[name] = parsed

    def rewrite_value_text(self, name: str, text: str) -> bool:
        """Replace the text of ``name``'s value with ``text`` where that value still ends
        the text and the run is not streamed (no reader has seen it); False otherwise."""
        with self._cond:
            span = self._spans.get(name)
            if span is None or span[1] != len(self._text) or self._stream:
                return False
            self._text = self._text[: span[0]] + text
            self._spans[name] = (span[0], len(self._text))
            return True

    def open_role(self, role: str, prefix: str) -> None:
        """Append the role's ``prefix`` and start its message (roles do not nest)."""
        if self._role is not None:
            raise ProgramError(f"cannot open role {role!r} inside role {self._role!r}: roles do not nest", self)
        self.append(prefix)
        with self._cond:
            self._role, self._role_start = role, len(self._text)

    def close_role(self, role: str, suffix_for: Callable[[str], str]) -> None:
        """End the open ``role``: append ``suffix_for(content)`` and record the message."""
        if self._role != role:
            raise ProgramError(f"role {role!r} ended but the open role is {self._role!r}", self)
        content = self._text[self._role_start :]
        self.append(suffix_for(content))
        with self._cond:
            self._messages.append({"role": role, "content": content.lstrip()})
            self._role = None

    def begin_scope(self, name: str) -> None:
        """Start capturing the text appended from here into variable ``name``."""
        self._scopes[name] = len(self._text)

    def end_scope(self, name: str) -> None:
        """Set variable ``name`` to the text appended since `begin_scope`."""
        self.set_var(name, self._text[self._scopes.pop(name) :])

    def finish(self, error: BaseException | None = None) -> None:
        """The program returned (or failed with ``error``): wake every reader."""
        with self._cond:
            if error is not None and self._error is None:
                self._error = error
            self._finished = True
            self._cond.notify_all()


class ForkGroup:
    """The states of ``s.fork(n)`` as a sequence (run or traced): ``forks[i]``, ``len``, ``for``."""

    states: list[Any]

    def __getitem__(self, i: int) -> Any:
        return self.states[i]

    def __setitem__(self, i: int, value: Any) -> None:
        # ``forks[i] += x`` re-assigns the same object
        if value is not self.states[i]:
            raise TypeError("cannot replace a fork; append to it with forks[i] += ...")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> Any:
        """``forks += x``: the same expression to every fork, a list of one per fork, or
        ``fn(i)`` for fork ``i``."""
        if isinstance(other, SglExpr | str):
            for state in self.states:
                state += other
        elif isinstance(other, list | tuple):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} values for {len(self.states)} forks")
            for state, value in zip(self.states, other, strict=True):
                state += value
        elif isinstance(other, Callable):
            for i, state in enumerate(self.states):
                state += other(i)
        else:
            raise TypeError(f"cannot append {type(other).__name__} to forks")
        return self


class ProgramStateGroup(ForkGroup):
    """The states returned by ``s.fork(n)``: ``forks[i]``, ``forks += ...``, ``forks.join()``."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState):
        self.states = states
        self.src_state = src_state

    def join(self, mode: str = "gather_variable") -> None:
        """Wait for all forks; then gather their new variables into lists on the source
        state (``"gather_variable"``) or append their new text (``"concate_and_append"``)."""
        if mode not in ("gather_variable", "concate_and_append"):
            raise ValueError(f"invalid join mode {mode!r}")
        try:
            for state in self.states:
                state.sync()
        finally:
            for state in self.states:
                if state._worker is not None:
                    state._worker.shutdown(wait=True)
                    state._worker = None
        if mode == "gather_variable":
            src_vars = self.src_state._vars
            before = set(src_vars)
            for state in self.states:
                for key, value in state._vars.items():
                    if key not in before:
                        src_vars.setdefault(key, []).append(value)
        else:
            self.src_state += ConcatAndAppend(list(self.states))
