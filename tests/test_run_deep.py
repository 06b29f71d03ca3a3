"""api.run_deep: compiles on reused big-stack threads, nested calls, deep recursion."""

from __future__ import annotations

import threading

import pytest

from sgl.constrain.api import run_deep
from sgl.constrain.errors import ConstraintError


def test_workers_are_reused_between_compiles():
    first = run_deep(threading.get_ident, "x")
    assert run_deep(threading.get_ident, "x") == first  # an idle worker, not a new thread
    assert first != threading.get_ident()


def test_nested_and_concurrent_calls_do_not_wait_on_each_other():
    inner = run_deep(lambda: run_deep(lambda: 7, "inner") + 1, "outer")
    assert inner == 8
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(run_deep(lambda: i, "x"))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == list(range(6))


def test_errors_and_deep_recursion_come_back_to_the_caller():
    def boom():
        raise ValueError("no")

    with pytest.raises(ValueError):
        run_deep(boom, "x")

    def down(n):
        return 0 if n == 0 else 1 + down(n - 1)

    assert run_deep(lambda: down(5000), "x") == 5000  # deeper than a default stack allows
    with pytest.raises(ConstraintError, match="nested too deeply"):
        run_deep(lambda: down(10**6), "the thing")
