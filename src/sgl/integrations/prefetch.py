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

Prefetching is off by default (``SGLLogitsProcessor(prefetch=0)``): it moves first
visits off the critical path but costs CPU time in all (the look-ahead itself, and a
mask made on a helper running beside the model costs more than on the calling thread).
Which tokens to prefetch is a `LookaheadPolicy`. Greedy search only ever takes the best
token, so masks made for the second-best are pure waste there (they were ~3/4 of the
helper's CPU time in the h4 benchmark); sampling takes the second-best often enough for
its mask to pay. The processor cannot see how ``generate`` picks tokens, so the
policy "auto" watches: the helper records each row's two best allowed tokens, the next
call says which one the row took, and a rank is prefetched only while it is recently
taken often enough. While rows take their best token (greedy), the calling thread
predicts it itself (one argmax) and wakes the helper only when that token leads to a
state whose mask is not cached yet: most steps then cost the helper nothing.
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


def top_two(scores: np.ndarray) -> tuple[int | None, int | None]:
    """The ids of the two largest scores of one row that are not masked (-inf), best
    first (None where there is none). Two linear passes, no sort: cheaper than
    `best_allowed` with k=2 (``argpartition``), and run at every step."""
    n = scores.shape[0]
    best = int(scores.argmax()) if n else 0
    if not n or not scores[best] > -np.inf:
        return None, None
    left = int(scores[:best].argmax()) if best > 0 else None
    right = best + 1 + int(scores[best + 1:].argmax()) if best + 1 < n else None
    second = right if left is None or (right is not None and scores[right] > scores[left]) else left
    if second is None or not scores[second] > -np.inf:
        return best, None
    return best, second


AUTO = "auto"


class LookaheadPolicy:
    """Which ranks of each row's allowed tokens the helper prefetches.

    ``setting``: an int ``k`` prefetches the ``k`` best, always; "auto" prefetches a
    rank (best, second-best) only while rows recently took a token of that rank at
    least `MIN_RATE` of the time. The rates are moving averages over about `WINDOW`
    row-steps, kept across ``generate`` calls (they describe how the caller decodes).
    They start at "greedy" (best always taken, second never): the common case costs
    nothing to learn, and sampling turns the second rank on within a few steps.
    While the best token's rate is at least `GREEDY_RATE` (`greedy`), only the best is
    predicted (by the caller: the second rank's rate is not measured then).

    Greedy look-aheads back off: a step whose next state already had its mask doubles
    the number of steps until the next look-ahead (up to `MAX_INTERVAL`); a look-ahead
    that finds a state without one, or a row that did not take the predicted token,
    resets it to every step. Once a generation's states are known the per-step check
    (an argmax and one token's walk, ~15-60 µs) is then mostly skipped, while bursts
    of new states (a new key, a new string) are still prefetched after at most
    `MAX_INTERVAL` - 1 steps on the calling thread.
    """

    MIN_RATE = 0.1  # below this a rank's masks are mostly wasted helper CPU
    GREEDY_RATE = 0.9
    WINDOW = 32
    MAX_INTERVAL = 8

    def __init__(self, setting: int | str) -> None:
        if setting != AUTO and (not isinstance(setting, int) or isinstance(setting, bool) or setting < 0):
            raise ValueError(f"prefetch must be 'auto' or an int >= 0, got {setting!r}")
        self.setting = setting
        self.rates = [1.0, 0.0]  # per rank: how often rows took their best / second-best
        self.steps = 0  # row-steps observed
        self.took = [0, 0]  # row-steps that took the best / second-best
        self._interval = 1  # greedy: steps from one look-ahead to the next
        self._wait = 0  # greedy: look-aheads still to skip
        self.skipped = 0  # greedy steps without a look-ahead

    @property
    def enabled(self) -> bool:
        return self.setting != 0

    @property
    def greedy(self) -> bool:
        """"auto", and rows recently took their best token (nearly) every time."""
        return self.setting == AUTO and self.rates[0] >= self.GREEDY_RATE

    def look_now(self) -> bool:
        """Greedy: should this step look ahead (False: skip it, backing off)?"""
        if self._wait > 0:
            self._wait -= 1
            self.skipped += 1
            return False
        return True

    def looked(self, found_missing: bool) -> None:
        """Greedy: a look-ahead found a state without its mask (or none did)."""
        self._interval = 1 if found_missing else min(2 * self._interval, self.MAX_INTERVAL)
        self._wait = self._interval - 1

    def ranks(self) -> int | list[int]:
        """A fixed ``k`` (prefetch the k best), or the ranks (0: best, 1: second) to prefetch."""
        if self.setting != AUTO:
            return int(self.setting)
        if self.greedy:
            return [0]
        return [r for r, rate in enumerate(self.rates) if rate >= self.MIN_RATE]

    def observe(self, predicted: list[tuple[int | None, int | None] | None], taken: list[int]) -> None:
        """Per row, the two best tokens the helper saw at the last step (None: it did not
        get to that row, or the row has finished) and the token the row then took."""
        a = 1.0 / self.WINDOW
        for guess, token in zip(predicted, taken, strict=False):
            if guess is None or guess[0] is None:
                continue
            self.steps += 1
            if guess[0] != token:  # not greedy after all: look ahead at every step again
                self._interval, self._wait = 1, 0
            for rank in (0, 1):
                hit = guess[rank] == token
                self.took[rank] += hit
                if rank == 0 or guess[1] is not None:  # (greedy: the second is not predicted)
                    self.rates[rank] += a * (hit - self.rates[rank])

    def stats(self) -> dict[str, Any]:
        """Counts for benchmarks and tests."""
        return {"steps": self.steps, "took_best": self.took[0], "took_second": self.took[1],
                "rates": [round(r, 3) for r in self.rates], "ranks": self.ranks(), "skipped": self.skipped}


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


def best_only_job(todo: list[tuple[Matcher, int]]) -> Callable[[], int]:
    """The job for a greedy step: prefetch the state after each given (matcher copy,
    token), which the caller found uncached (`Matcher.mask_ahead_is_cached`)."""
    return lambda: sum(m.prefetch((t,)) for m, t in todo)


def lookahead_job(matchers: list[Matcher | None], scores: Any, ranks: int | list[int],
                  predicted: list | None = None) -> Callable[[], int]:
    """The job for one step: per live row, prefetch the states after its best tokens.
    ``matchers``: history-free copies (None for finished rows); ``scores``: the step's
    masked scores, a CPU torch tensor (read by the helper, never written); ``ranks``: a
    ``k`` (the k best) or a list of ranks (0: best, 1: second-best), see
    `LookaheadPolicy.ranks`. ``predicted``, when given (one slot per row): the job
    writes each row's two best tokens there, for `LookaheadPolicy.observe`."""

    def job() -> int:
        rows = scores.detach().float().numpy()
        made = 0
        for row, m in enumerate(matchers):
            if m is None:
                continue
            if isinstance(ranks, int) and ranks > 2:
                tokens = best_allowed(rows[row], ranks)
                guess = (tokens + [None, None])[:2]
            else:
                guess = top_two(rows[row])
                picked = range(ranks) if isinstance(ranks, int) else ranks
                tokens = [guess[r] for r in picked if guess[r] is not None]
            if predicted is not None:
                predicted[row] = (guess[0], guess[1])
            if tokens:
                made += m.prefetch(tokens)
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
