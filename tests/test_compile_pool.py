"""The server's compile pool: a deadline covers the client's compile (and the wait for
a free worker), not the start of a worker process the server had to replace."""

import time

import pytest

from sgl.server.compile_pool import CompilePool
from sgl.types import ConstraintSpec


def _timed(pool: CompilePool, pattern: str, timeout_s: float) -> tuple[tuple | None, float]:
    t = time.monotonic()
    outcome = pool.compile(ConstraintSpec(regex=pattern), timeout_s)
    return outcome, time.monotonic() - t


def test_a_new_worker_does_not_spend_the_clients_budget():
    pool = CompilePool(1)
    try:
        outcome, first = _timed(pool, "a+", 60)  # starts the worker
        assert outcome == ("ok", None)
        warm = min(_timed(pool, f"b{i}+", 60)[1] for i in range(3))
        budget = 5 * warm + 0.05  # ample for a compile in a running worker
        if first < 2 * budget:
            pytest.skip(f"a worker started in {first:.3f} s, too close to a warm compile ({warm:.3f} s) to tell")
        pool.close()  # the next call has to start a new worker (as after a compile was killed)
        outcome, elapsed = _timed(pool, "c+", budget)
        assert outcome == ("ok", None), (outcome, elapsed, budget)  # None: the start was counted
    finally:
        pool.close()


def test_a_compile_past_its_deadline_is_stopped():
    pool = CompilePool(1)
    try:
        assert pool.compile(ConstraintSpec(regex="a+"), 60) == ("ok", None)
        # (a|b)*a(a|b){18}: a DFA of 2**19 states, far past a 0.2 s budget
        outcome, elapsed = _timed(pool, "(a|b)*a(a|b){18}", 0.2)
        assert outcome is None and elapsed < 10
        assert pool.compile(ConstraintSpec(regex="x"), 60) == ("ok", None)  # replaced
    finally:
        pool.close()
