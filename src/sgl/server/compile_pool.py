"""Constraint compiles for the server: bounded, with a deadline that stops the work.

The constraint compiler (``sgl.constrain``) has no cancellation hook: its time budget
(``CompiledGrammar(budget_s=...)``) is checked only between lexeme DFAs, not in the
frontends (JSON Schema, Lark, GBNF), the regex-to-DFA step or the parser tables, and the
public ``compile_*`` functions do not take a budget. A compile on a thread therefore
cannot be stopped: a timed-out request used to leave its thread burning a core.

So ``CompilePool`` runs compiles in ``workers`` child processes. A compile that runs
past its deadline has its process killed (and replaced on the next use), so one client
can hold at most ``workers`` cores, for at most the deadline each. The compiled grammar
stays in the worker (its compile cache); the server asks the worker whether an output
matches it (``accepts``), so a valid constraint is compiled once, not twice.

A worker's start (a fresh interpreter importing the compilers: ~1 s of CPU, 4-6 s of
wall time on a loaded 2-core machine) is not the constraint's time: a compile's deadline
runs from when its worker is ready. Counted, it refused every constraint after a kill
while the machine was loaded, and killed each replacement before it could start.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from typing import Any

from sgl.types import ConstraintSpec

log = logging.getLogger("sgl.server")

ACCEPTS_TIMEOUT_S = 2.0  # at most this long to check an output against its constraint
STARTUP_S = 120.0  # a worker still starting after this long is killed (and replaced)
READY = ("ready",)  # what a worker sends once it has imported the compilers
# one small constraint of each kind, compiled by a worker before it says it is ready
WARM_UP = (ConstraintSpec(regex="a"), ConstraintSpec(json_schema={"type": "integer"}), ConstraintSpec(choices=["a"]),
           ConstraintSpec(grammar='start: "a"'), ConstraintSpec(grammar='root ::= "a"', grammar_syntax="gbnf"))
Outcome = tuple  # ("ok", value) | ("invalid", message, location) | ("complex", message) | ("unsupported", message)


def compile_constraint(spec: ConstraintSpec) -> Any:
    """Compile ``spec`` without a vocabulary (validates it; checks outputs later)."""
    from sgl.constrain import compile_spec

    if spec.is_empty():
        spec = ConstraintSpec(choices=[])  # refused by the compiler with its own message
    return compile_spec(spec)


def try_compile(spec: ConstraintSpec) -> tuple[Any, Outcome]:
    """``(compiled or None, outcome)``: every failure of the compiler on a client's
    constraint is an outcome, never an exception."""
    from sgl.constrain.errors import ConstraintError

    try:
        return compile_constraint(spec), ("ok", None)
    except ConstraintError as e:
        return None, ("invalid", str(e), e.location)
    except (RecursionError, MemoryError):
        return None, ("complex", "the constraint is too complex to compile (nested too deeply, or a range too large)")
    except Exception as e:  # noqa: BLE001 - a compiler bug, triggered by this input only
        log.warning("compiling %r failed", spec, exc_info=True)
        return None, ("unsupported", f"the constraint cannot be compiled ({type(e).__name__}: {e})")


def _worker_main(conn: Any) -> None:
    """A worker process: answers ``("compile", spec)`` and ``("accepts", spec, text)``
    (after ``READY``, once the compilers are imported)."""
    for spec in WARM_UP:
        try_compile(spec)
    conn.send(READY)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        op, spec = message[0], message[1]
        compiled, outcome = try_compile(spec)
        if op == "accepts" and compiled is not None:
            try:
                outcome = ("ok", bool(compiled.accepts_text(message[2])))
            except Exception as e:  # noqa: BLE001 - reported, the worker lives on
                outcome = ("unsupported", f"{type(e).__name__}: {e}")
        conn.send(outcome)


class _Worker:
    def __init__(self, ctx: Any):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="sgl-compile")
        self.process.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False

    def wait_ready(self, timeout_s: float) -> bool:
        """Has the worker started (``READY`` received)? Waits up to ``timeout_s``. One
        still starting is left to finish (a later call finds it ready), unless it has
        been starting for ``STARTUP_S``: then it is killed."""
        if not self.ready and self.conn.poll(max(0.0, timeout_s)):
            self.ready = self.conn.recv() == READY
        if not self.ready and time.monotonic() - self.started > STARTUP_S:
            self.kill()
        return self.ready

    def call(self, message: tuple, timeout_s: float) -> Outcome | None:
        """The worker's answer, or None when the deadline passed (the worker is then dead)."""
        self.conn.send(message)
        if self.conn.poll(timeout_s):
            return self.conn.recv()
        self.kill()
        return None

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class CompilePool:
    """``workers`` compile processes, started when first needed; thread-safe (callers
    block, so call it from worker threads)."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"a compile pool needs at least one worker, got {workers}")
        self.size = workers
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(workers):
            self._idle.put(None)  # a slot; its process starts on first use
        self._lock = threading.Lock()
        self._all: set[_Worker] = set()

    def call(self, message: tuple, timeout_s: float, start_counts: bool = False) -> Outcome | None:
        """Send ``message`` to an idle worker; None if it ran past ``timeout_s`` (waiting
        for a free worker counts against the deadline too; a worker's start does not,
        unless ``start_counts``: then a worker not started by the deadline is left to
        start, and the answer is None)."""
        deadline = time.monotonic() + timeout_s
        try:
            worker = self._idle.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        try:
            if time.monotonic() >= deadline:  # spent waiting: no worker is started (or killed) for it
                return None
            if worker is None or not worker.process.is_alive():
                worker = _Worker(self._ctx)
                with self._lock:
                    self._all.add(worker)
            if not worker.ready:
                asked = time.monotonic()
                if not worker.wait_ready(deadline - asked if start_counts else STARTUP_S):
                    return None
                if not start_counts:
                    deadline += time.monotonic() - asked
            answer = worker.call(message, max(0.0, deadline - time.monotonic()))
            if answer is None:
                with self._lock:
                    self._all.discard(worker)
                worker = None
            return answer
        except (OSError, EOFError):  # the worker died (e.g. killed by the OS): replaced next time
            worker = None
            return ("unsupported", "the compile worker died")
        finally:
            self._idle.put(worker)

    def compile(self, spec: ConstraintSpec, timeout_s: float) -> Outcome | None:
        return self.call(("compile", spec), timeout_s)

    def accepts(self, spec: ConstraintSpec, text: str, timeout_s: float) -> bool | None:
        """Does ``text`` match ``spec``? None if that could not be decided in time."""
        answer = self.call(("accepts", spec, text), timeout_s, start_counts=True)
        return answer[1] if answer is not None and answer[0] == "ok" else None

    def close(self) -> None:
        """Stop every worker."""
        with self._lock:
            workers, self._all = list(self._all), set()
        for worker in workers:
            worker.kill()


class PoolChecker:
    """A compiled constraint living in a ``CompilePool`` worker: ``accepts_text`` as
    ``CompiledGrammar``'s (None when undecided in time)."""

    def __init__(self, pool: CompilePool, spec: ConstraintSpec, timeout_s: float):
        # short: the check only feeds /metrics, and must not hold the response long
        # behind other compiles (undecided: no outcome is counted)
        self.pool, self.spec, self.timeout_s = pool, spec, min(timeout_s, ACCEPTS_TIMEOUT_S)

    def accepts_text(self, text: str) -> bool | None:
        return self.pool.accepts(self.spec, text, self.timeout_s)


__all__ = ["CompilePool", "PoolChecker", "compile_constraint", "try_compile"]
