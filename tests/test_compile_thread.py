"""What the compile thread keeps alive: nothing of a finished compile."""

from __future__ import annotations

import gc
import weakref


def _assert_freed_by_refcount(holder: list) -> None:
    """The object in ``holder`` (its only reference) is freed when that reference goes,
    with the cyclic collector off: nothing else keeps it alive."""
    ref = weakref.ref(holder[0])
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        holder.clear()
        assert ref() is None
    finally:
        if was_enabled:
            gc.enable()


def test_compile_thread_keeps_no_result_alive() -> None:
    """The reused compile thread drops its last job: a grammar the caller (and the
    compile cache) let go of is freed then, not inside the next compile."""
    from sgl.constrain import api, compile_json_schema

    holder = [compile_json_schema({"type": "array", "items": {"type": "boolean"}})]
    api.clear_cache()
    _assert_freed_by_refcount(holder)


def test_a_worker_slow_to_drop_its_job_keeps_no_result_alive(monkeypatch) -> None:
    """The compile thread wakes its caller before it lets go of the finished job; on a
    loaded machine it can be descheduled in between, and the caller runs on. The result
    must not live in what the job still holds then (the test above, looped 2,000 times
    beside three busy threads with a 1 us switch interval, lost that race 6 times).
    Here the wake-up itself lingers, so the race is lost every time."""
    import threading
    import time

    from sgl.constrain import api, compile_json_schema

    class LateEvent(threading.Event):
        def set(self) -> None:
            super().set()
            time.sleep(0.5)  # the caller runs on while the worker still holds the job

    monkeypatch.setattr(threading, "Event", LateEvent)
    holder = [compile_json_schema({"type": "array", "items": {"type": "integer"}, "maxItems": 7})]
    monkeypatch.undo()
    api.clear_cache()
    _assert_freed_by_refcount(holder)
