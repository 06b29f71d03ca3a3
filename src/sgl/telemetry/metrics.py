"""Serving metrics: latency and time-to-first-token percentiles, tokens/s, constraint
satisfaction, prefix-cache hit rate, mask time; Prometheus text and ``get_stats()``.

One process-wide ``Metrics`` (``get_metrics()``) collects everything: the HTTP server
records each request, the local engine may record mask times and set the prefix-cache
gauge. ``snapshot()`` (``get_stats()``) gives percentiles over the most recent
``window`` samples (10,000 by default). ``render_prometheus()`` exports, through
``prometheus_client`` (one registry per ``Metrics``), vLLM-style families with an
``sgl:`` prefix: histograms ``sgl:time_to_first_token_seconds``,
``sgl:time_per_output_token_seconds``, ``sgl:e2e_request_latency_seconds``,
``sgl:request_queue_time_seconds``, ``sgl:grammar_mask_time_seconds``; counters
``sgl:requests_total{status}``, ``sgl:prompt_tokens_total``,
``sgl:generation_tokens_total``, ``sgl:constrained_requests_total{outcome}``; gauges
``sgl:num_requests_running``, ``sgl:num_requests_waiting``, ``sgl:kv_cache_usage_perc``,
``sgl:prefix_cache_hit_rate``, ``sgl:constraint_satisfaction_rate``.

Per-request JSON-lines trace logs live in ``sgl.telemetry.trace`` (``SGL_TRACE=path``).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

QUANTILES = (0.5, 0.9, 0.99)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of sorted values, interpolating linearly between ranks
    (numpy's default method); NaN for no values."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


@dataclass
class Distribution:
    """Recent samples of one quantity plus lifetime sum and count."""

    window: int = 10_000
    samples: deque = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.samples = deque(maxlen=self.window)

    def add(self, value: float) -> None:
        self.samples.append(value)
        self.total += value
        self.count += 1

    def quantiles(self, qs: Iterable[float] = QUANTILES) -> dict[float, float]:
        ordered = sorted(self.samples)
        return {q: percentile(ordered, q) for q in qs}

    def summary(self) -> dict[str, float]:
        """``{"p50", "p90", "p99", "mean", "count"}`` (mean over the window)."""
        out = {f"p{round(q * 100)}": v for q, v in self.quantiles().items()}
        out["mean"] = sum(self.samples) / len(self.samples) if self.samples else math.nan
        out["count"] = self.count
        return out


class Metrics:
    """Thread-safe collector; one per process is usual (``get_metrics()``)."""

    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self._window = window
        self.reset()

    def _make_prometheus(self) -> None:
        self.registry = r = CollectorRegistry()
        latency_buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
        self._ttft = Histogram("sgl:time_to_first_token_seconds", "Time from request to the first output token.",
                               buckets=latency_buckets, registry=r)
        self._tpot = Histogram("sgl:time_per_output_token_seconds", "Time per output token after the first.",
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r)
        self._e2e = Histogram("sgl:e2e_request_latency_seconds", "Request latency, received to last byte.",
                              buckets=latency_buckets, registry=r)
        self._queue = Histogram("sgl:request_queue_time_seconds", "Time a request waited for a free generation slot.",
                                buckets=latency_buckets, registry=r)
        self._mask = Histogram("sgl:grammar_mask_time_seconds", "Time to compute one grammar token mask.",
                               buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1), registry=r)
        self._requests = Counter("sgl:requests", "Requests by final status.", ["status"], registry=r)
        self._prompt = Counter("sgl:prompt_tokens", "Prompt tokens processed.", registry=r)
        self._generation = Counter("sgl:generation_tokens", "Completion tokens generated.", registry=r)
        self._constrained = Counter("sgl:constrained_requests", "Constrained requests by outcome (output checked "
                                    "against its constraint).", ["outcome"], registry=r)
        for outcome in ("satisfied", "violated", "truncated"):
            self._constrained.labels(outcome)
        self._running = Gauge("sgl:num_requests_running", "Requests generating.", registry=r)
        self._waiting = Gauge("sgl:num_requests_waiting", "Requests waiting for a generation slot.", registry=r)
        self._kv = Gauge("sgl:kv_cache_usage_perc", "Share of the KV cache in use, 0..1 (set by the engine).", registry=r)
        self._hit = Gauge("sgl:prefix_cache_hit_rate", "Share of prompt tokens served from the prefix cache.", registry=r)
        self._hit.set(math.nan)
        self._satisfaction = Gauge("sgl:constraint_satisfaction_rate", "Satisfied / (satisfied + violated) constrained outputs.",
                                   registry=r)
        self._satisfaction.set_function(lambda: math.nan if (v := self.constraint_satisfaction_rate()) is None else v)

    def reset(self) -> None:
        with self._lock:
            w = self._window
            self.latency = Distribution(w)  # seconds, request received -> last byte
            self.ttft = Distribution(w)  # seconds, request received -> first output text
            self.tokens_per_s = Distribution(w)  # completion tokens / latency, per request
            self.mask_time = Distribution(w)  # seconds per grammar mask (engine-reported)
            self.requests: dict[str, int] = {}  # by status: ok, error, cancelled, rejected
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.constraint: dict[str, int] = {"satisfied": 0, "violated": 0, "truncated": 0}
            self.prefix_cache_hit_rate: float | None = None
            self.running = 0
            self.waiting = 0
            self.started = time.time()
            self._make_prometheus()

    # --- recording ---
    def observe_request(
        self,
        *,
        latency_s: float,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        constraint: str | None = None,
    ) -> None:
        """Record one finished request. ``constraint`` is ``"satisfied"``, ``"violated"``,
        ``"truncated"`` (stopped by max_tokens before the grammar could finish) or None
        (unconstrained, or not checked)."""
        with self._lock:
            self.requests["ok"] = self.requests.get("ok", 0) + 1
            self._requests.labels("ok").inc()
            self.latency.add(latency_s)
            self._e2e.observe(latency_s)
            self._prompt.inc(prompt_tokens)
            self._generation.inc(completion_tokens)
            if ttft_s is not None:
                self.ttft.add(ttft_s)
                self._ttft.observe(ttft_s)
                if completion_tokens > 1:
                    self._tpot.observe(max(0.0, latency_s - ttft_s) / (completion_tokens - 1))
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            if completion_tokens and latency_s > 0:
                self.tokens_per_s.add(completion_tokens / latency_s)
            if constraint is not None:
                if constraint not in self.constraint:
                    raise ValueError(f"unknown constraint outcome {constraint!r}")
                self.constraint[constraint] += 1
                self._constrained.labels(constraint).inc()

    def observe_status(self, status: str) -> None:
        """Count a request that ended before generating (rejected, failed, cancelled)."""
        with self._lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            self._requests.labels(status).inc()

    def observe_mask_time(self, seconds: float) -> None:
        """Time to compute one grammar mask (the engine calls this per constrained step)."""
        with self._lock:
            self.mask_time.add(seconds)
            self._mask.observe(seconds)

    def set_kv_cache_usage(self, fraction: float) -> None:
        """The engine's KV-cache use, 0..1."""
        self._kv.set(fraction)

    def start_waiting(self) -> None:
        """A request now waits for a generation slot."""
        with self._lock:
            self.waiting += 1
            self._waiting.inc()

    def stop_waiting(self, queued_s: float | None) -> None:
        """The request stopped waiting after ``queued_s`` seconds (None: it gave up)."""
        with self._lock:
            self.waiting -= 1
            self._waiting.dec()
        if queued_s is not None:
            self._queue.observe(queued_s)

    def set_prefix_cache_hit_rate(self, rate: float) -> None:
        """The engine's prefix-cache hit rate (0..1): cached prompt tokens / prompt tokens."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"a hit rate is between 0 and 1, got {rate}")
        with self._lock:
            self.prefix_cache_hit_rate = rate
            self._hit.set(rate)

    @contextlib.contextmanager
    def track_running(self) -> Iterator[None]:
        """Count a request as in flight for the duration of the block."""
        with self._lock:
            self.running += 1
            self._running.inc()
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
                self._running.dec()

    # --- reading ---
    def constraint_satisfaction_rate(self) -> float | None:
        """satisfied / (satisfied + violated); truncated outputs are not counted."""
        checked = self.constraint["satisfied"] + self.constraint["violated"]
        return self.constraint["satisfied"] / checked if checked else None

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain numbers (what ``get_stats()`` returns)."""
        with self._lock:
            return {
                "requests": dict(self.requests),
                "running": self.running,
                "waiting": self.waiting,
                "latency_s": self.latency.summary(),
                "ttft_s": self.ttft.summary(),
                "tokens_per_s": self.tokens_per_s.summary(),
                "mask_time_s": self.mask_time.summary(),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "constraint": dict(self.constraint),
                "constraint_satisfaction_rate": self.constraint_satisfaction_rate(),
                "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
                "uptime_s": time.time() - self.started,
            }

    def render_prometheus(self) -> str:
        """The metrics in Prometheus text exposition format (``prometheus_client``)."""
        return generate_latest(self.registry).decode()


_default = Metrics()


def get_metrics() -> Metrics:
    """The process-wide collector (the server and the local engine share it)."""
    return _default


def get_stats() -> dict[str, Any]:
    """A snapshot of the process-wide metrics, for in-process runs (``sgl.get_stats()``)."""
    return _default.snapshot()


__all__ = ["Distribution", "Metrics", "get_metrics", "get_stats", "percentile"]
