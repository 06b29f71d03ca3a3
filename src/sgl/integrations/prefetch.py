"""Masks one token ahead, computed by a helper thread while the model computes the logits.

A logits processor is called once per decoding step, and between two calls the model
runs its forward pass (milliseconds to hundreds of milliseconds). The step's masked
scores already say which tokens the next state will likely follow: greedy search takes
the largest, sampling one of the largest. So after each call the processor hands the
helper thread each row's matcher (a history-free copy) and its scores; the helper takes
the ``k`` best allowed tokens and computes the masks of the states they lead to
(`Matcher.prefetch`). When the next call arrives, its mask is usually cached, and the
first visit of a state no longer lands on the decoding step's critical path.

The work is a hint: a wrong guess costs only the helper's CPU time, an error in it is
dropped (the step that needs the mask computes it and raises as usual). Only the latest
job is kept: a step that arrives before the helper started on the previous job replaces
it. The helper's CPU time is counted (``cpu_ns``) so that benchmarks can report it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sgl.constrain import Matcher


def best_allowed(scores: np.ndarray, k: int) -> list[int]:
    """The ids of the ``k`` largest finite scores of one row, best first."""
    if k == 1:
        i = int(scores.argmax())
        return [i] if np.isfinite(scores[i]) else []
    k = min(k, scores.shape[0])
    top = np.argpartition(scores, -k)[-k:]
    top = top[np.argsort(-scores[top])]
    return [int(i) for i in top if np.isfinite(scores[i])]


class Prefetcher:
    """One daemon thread that runs the latest submitted job (see the module docstring)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._job: Callable[[], Any] | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self.cpu_ns = 0  # the helper thread's CPU time, all jobs
        self.jobs = 0
        self.masks = 0  # masks computed ahead

    def submit(self, job: Callable[[], int]) -> None:
        """Run ``job`` (it returns how many masks it made) on the helper, replacing a
        job still waiting."""
        with self._cv:
            self._job = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sgl-mask-prefetch", daemon=True)
                self._thread.start()
            self._cv.notify()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no job is queued or running (tests, benchmarks); False on timeout."""
        end = time.monotonic() + timeout
        with self._cv:
            while self._job is not None or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._job is None:
                    self._cv.wait()
                job, self._job, self._busy = self._job, None, True
            t0 = time.thread_time_ns()
            made = 0
            try:
                made = job()
            except Exception:  # noqa: BLE001 - a hint: the step itself recomputes and reports
                pass
            with self._cv:
                self.cpu_ns += time.thread_time_ns() - t0
                self.jobs += 1
                self.masks += made
                self._busy = False
                self._cv.notify_all()


def lookahead_job(matchers: list[Matcher | None], scores: Any, k: int) -> Callable[[], int]:
    """The job for one step: per live row, prefetch the states after its ``k`` best
    tokens. ``matchers``: history-free copies (None for finished rows); ``scores``: the
    step's masked scores, a CPU torch tensor (read by the helper, never written)."""

    def job() -> int:
        rows = scores.detach().float().numpy()
        made = 0
        for row, m in enumerate(matchers):
            if m is not None:
                made += m.prefetch(best_allowed(rows[row], k))
        return made

    return job


_shared: Prefetcher | None = None
_shared_lock = threading.Lock()


def shared_prefetcher() -> Prefetcher:
    """The process's helper (one thread for every processor: masks of one grammar are
    made under its lock anyway)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Prefetcher()
        return _shared
