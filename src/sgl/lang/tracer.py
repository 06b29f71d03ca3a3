"""Tracing a program without a model (SGLang's ``f.trace()`` and prefix extraction).

The program runs against a `TracerState`: appends are recorded as expressions instead
of executed, program arguments that are not bound are `TracedArgument` placeholders and
generated variables are `TracedVariable` placeholders. Anything that needs a real value
(``str(arg)``, ``if s["x"] == ...``, ``s.text()``) stops the trace there; what was
recorded up to that point is the trace. Nothing is sent to any backend.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .expr import (
    Constant,
    ExprList,
    GenExpr,
    RoleBegin,
    RoleEnd,
    SelectExpr,
    SglExpr,
    VarScopeBegin,
    VarScopeEnd,
)
from .state import ForkGroup, StateMethods


class StopTracing(Exception):
    """The program needed a value that only a real run has."""


class _Placeholder(SglExpr):
    """A value known only at run time; using it as a value stops the trace."""

    def _stop(self, *args: Any, **kwargs: Any) -> Any:
        raise StopTracing(f"{self!r} has no value while tracing")

    __str__ = __len__ = __iter__ = __bool__ = __int__ = __float__ = __getitem__ = _stop
    __eq__ = __lt__ = __gt__ = __le__ = __ge__ = __contains__ = _stop
    __hash__ = object.__hash__

    def __format__(self, spec: str) -> str:
        # as SGLang: an f-string would bake a placeholder into the prompt text
        raise TypeError(f"cannot put {self!r} inside an f-string while tracing; use + instead")


class TracedArgument(_Placeholder):
    """A program argument that was not given (bound) when tracing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Argument({self.name!r})"


class TracedVariable(_Placeholder):
    """``s["name"]`` read while tracing: the value a gen/select will produce."""

    def __init__(self, name: str, state_id: int) -> None:
        self.name = name
        self.state_id = state_id

    def __repr__(self) -> str:
        return f"Variable({self.name!r}, state=%{self.state_id})"


class Fork(SglExpr):
    def __init__(self, size: int, child_ids: list[int]) -> None:
        self.size, self.child_ids = size, child_ids

    def __repr__(self) -> str:
        return f"Fork({self.size}) -> {', '.join(f'%{i}' for i in self.child_ids)}"


class Join(SglExpr):
    def __init__(self, mode: str, child_ids: list[int]) -> None:
        self.mode, self.child_ids = mode, child_ids

    def __repr__(self) -> str:
        return f"Join({self.mode!r}, {', '.join(f'%{i}' for i in self.child_ids)})"


class Call(SglExpr):
    """Another SGL function called while tracing (its own trace is ``trace``)."""

    def __init__(self, name: str, trace: ProgramTrace) -> None:
        self.name, self.trace = name, trace

    def __repr__(self) -> str:
        return f"Call({self.name})"


class TracerState(StateMethods):
    """What a traced program appends to (the ``s`` of a trace)."""

    def __init__(self, trace: ProgramTrace) -> None:
        self._trace = trace
        self.id = trace._new_state()
        self.ret_value: Any = None

    def _record(self, expr: Any) -> None:
        if isinstance(expr, str):
            expr = Constant(expr)
        if isinstance(expr, ExprList):
            for item in expr.items:
                self._record(item)
            return
        if not isinstance(expr, SglExpr):
            raise TypeError(f"cannot append {type(expr).__name__} to the state; use str(...) for values")
        self._trace.nodes.append((self.id, expr))

    def __iadd__(self, other: Any) -> TracerState:
        if other is None:
            raise ValueError("tried to append None to the state")
        self._record(other)
        return self

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> TracerStateGroup:
        children = [TracerState(self._trace) for _ in range(int(size))]
        self._record(Fork(int(size), [c.id for c in children]))
        return TracerStateGroup(children, self)

    @contextmanager
    def copy(self, position_ids_offset: Any = None) -> Iterator[TracerState]:
        group = self.fork(1)
        yield group[0]
        group.join()

    def get_var(self, name: str) -> TracedVariable:
        return TracedVariable(name, self.id)

    __getitem__ = get_var

    def set_var(self, name: str, value: Any) -> None:
        self._trace.assigned[name] = value

    __setitem__ = set_var

    def _stop(self, *args: Any, **kwargs: Any) -> Any:
        raise StopTracing("the program reads its state's text while tracing")

    text = messages = sync = get_meta_info = error = variables = text_iter = _stop

    def __repr__(self) -> str:
        return f"TracerState(%{self.id})"


class TracerStateGroup(ForkGroup):
    """``s.fork(n)`` while tracing."""

    def __init__(self, states: list[TracerState], src: TracerState) -> None:
        self.states, self.src = states, src

    def join(self, mode: str = "gather_variable") -> None:
        self.src._record(Join(mode, [s.id for s in self.states]))


class _TraceNode:
    """SGLang's ``tracer.last_node``: ``print_graph_dfs()`` gives the whole trace."""

    def __init__(self, trace: ProgramTrace) -> None:
        self._trace = trace

    def print_graph_dfs(self) -> str:
        return self._trace.pretty()


class ProgramTrace:
    """The expressions a program appends, per state, in order (from ``f.trace()``).

    ``nodes``: ``(state_id, expr)`` pairs, state 0 being the program's own state;
    ``stopped``: why tracing stopped early (None if the program ran to its end).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[tuple[int, SglExpr]] = []
        self.assigned: dict[str, Any] = {}
        self.stopped: str | None = None
        self.ret_value: Any = None
        self._states = 0

    def _new_state(self) -> int:
        self._states += 1
        return self._states - 1

    @property
    def last_node(self) -> _TraceNode:
        return _TraceNode(self)

    def expressions(self, state_id: int = 0) -> list[SglExpr]:
        """What was appended to one state (0: the program's own)."""
        return [e for sid, e in self.nodes if sid == state_id]

    def prefix(self, backend: Any = None) -> str:
        """The text every run starts with: the program state's leading constant text.

        Role markers count as text when ``backend`` gives their chat-template text
        (with its default system prompt, as a run would add it); without one the
        prefix ends at the first role.
        """
        out: list[str] = []
        roles_seen = False
        for expr in self.expressions(0):
            if isinstance(expr, Constant):
                out.append(expr.value)
            elif isinstance(expr, RoleBegin | RoleEnd) and backend is not None:
                if isinstance(expr, RoleBegin):
                    default_system = getattr(backend, "default_system_prompt", None)
                    if not roles_seen and expr.role != "system" and default_system:
                        pre, suf = backend.role_text("system", default_system)
                        out.append(pre + default_system + suf)
                    out.append(backend.role_text(expr.role, "")[0])
                else:
                    out.append(backend.role_text(expr.role, "")[1])
                roles_seen = True
            else:
                break
        return "".join(out)

    def pretty(self) -> str:
        """One line per recorded expression: ``%state: expr``."""
        lines = []
        for sid, expr in self.nodes:
            lines.append(f"%{sid}: {_describe(expr)}")
        if self.stopped:
            lines.append(f"(tracing stopped: {self.stopped})")
        return "\n".join(lines) + "\n"

    def print_graph(self) -> None:
        print(self.pretty(), end="")

    def __repr__(self) -> str:
        return f"<ProgramTrace {self.name}: {len(self.nodes)} expressions>"


def _describe(expr: SglExpr) -> str:
    if isinstance(expr, Constant):
        return f"Constant({expr.value!r})"
    if isinstance(expr, GenExpr):
        return f"Gen({expr.name!r})"
    if isinstance(expr, SelectExpr):
        return f"Select({expr.name!r}, choices={expr.choices!r})"
    if isinstance(expr, RoleBegin | RoleEnd):
        return f"{type(expr).__name__}({expr.role})"
    if isinstance(expr, VarScopeBegin | VarScopeEnd):
        return f"{type(expr).__name__}({expr.name!r})"
    return repr(expr)


_local = threading.local()


def current_trace() -> ProgramTrace | None:
    """The trace being recorded on this thread, if any (nested SGL calls join it)."""
    return getattr(_local, "trace", None)


def trace_program(
    func: Callable[..., Any],
    arg_names: list[str],
    args: tuple,
    kwargs: dict[str, Any],
    *,
    name: str = "program",
    stop_on: tuple[type[BaseException], ...] = (StopTracing,),
) -> ProgramTrace:
    """Run ``func`` against a `TracerState`; arguments not given are placeholders."""
    trace = ProgramTrace(name)
    given = dict(zip(arg_names, args, strict=False))
    given.update(kwargs)
    arguments = {n: given.get(n, TracedArgument(n)) for n in arg_names}
    arguments.update({k: v for k, v in given.items() if k not in arguments})
    state = TracerState(trace)
    outer = current_trace()
    _local.trace = trace
    try:
        trace.ret_value = state.ret_value = func(state, **arguments)
    except stop_on as e:
        trace.stopped = f"{type(e).__name__}: {e}"
    finally:
        _local.trace = outer
    return trace
