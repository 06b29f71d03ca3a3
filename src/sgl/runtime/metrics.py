"""Serving metrics: latency and time-to-first-token percentiles, tokens/s, constraint
satisfaction, prefix-cache hit rate, mask time; Prometheus text and ``get_stats()``.

One process-wide ``Metrics`` (``get_metrics()``) collects everything: the HTTP server
records each request, the local engine may record mask times and set the prefix-cache
gauge. Percentiles are over the most recent ``window`` samples (10,000 by default), so
they follow the current load and memory stays bounded; ``_sum``/``_count`` and the
counters cover the whole life of the process, as Prometheus expects.

Per-request JSON-lines trace logs live in ``sgl.runtime.trace`` (``SGL_TRACE=path``).
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
            self.started = time.time()

    # --- recording ---
    def observe_request(
        self,
        *,
        latency_s: float,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        status: str = "ok",
        constraint: str | None = None,
    ) -> None:
        """Record one finished request. ``constraint`` is ``"satisfied"``, ``"violated"``,
        ``"truncated"`` (stopped by max_tokens before the grammar could finish) or None
        (unconstrained, or not checked)."""
        with self._lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            if status != "ok":
                return
            self.latency.add(latency_s)
            if ttft_s is not None:
                self.ttft.add(ttft_s)
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            if completion_tokens and latency_s > 0:
                self.tokens_per_s.add(completion_tokens / latency_s)
            if constraint is not None:
                if constraint not in self.constraint:
                    raise ValueError(f"unknown constraint outcome {constraint!r}")
                self.constraint[constraint] += 1

    def observe_status(self, status: str) -> None:
        """Count a request that ended before generating (rejected, failed, cancelled)."""
        with self._lock:
            self.requests[status] = self.requests.get(status, 0) + 1

    def observe_mask_time(self, seconds: float) -> None:
        """Time to compute one grammar mask (the engine calls this per constrained step)."""
        with self._lock:
            self.mask_time.add(seconds)

    def set_prefix_cache_hit_rate(self, rate: float) -> None:
        """The engine's prefix-cache hit rate (0..1): cached prompt tokens / prompt tokens."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"a hit rate is between 0 and 1, got {rate}")
        with self._lock:
            self.prefix_cache_hit_rate = rate

    @contextlib.contextmanager
    def track_running(self) -> Iterator[None]:
        """Count a request as in flight for the duration of the block."""
        with self._lock:
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1

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

    def render_prometheus(self, prefix: str = "sgl") -> str:
        """The metrics in Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            out: list[str] = []
            for name, help_text, dist in (
                ("request_latency_seconds", "Request latency, received to last byte.", self.latency),
                ("time_to_first_token_seconds", "Time from request to the first output text.", self.ttft),
                ("request_tokens_per_second", "Completion tokens per second of request latency.", self.tokens_per_s),
                ("mask_time_seconds", "Time to compute one grammar token mask.", self.mask_time),
            ):
                _summary(out, f"{prefix}_{name}", help_text, dist)
            _metric(out, f"{prefix}_requests_total", "counter", "Requests by final status.",
                    [({"status": s}, n) for s, n in sorted(self.requests.items())] or [({"status": "ok"}, 0)])
            _metric(out, f"{prefix}_prompt_tokens_total", "counter", "Prompt tokens processed.", [({}, self.prompt_tokens)])
            _metric(out, f"{prefix}_completion_tokens_total", "counter", "Completion tokens generated.", [({}, self.completion_tokens)])
            _metric(out, f"{prefix}_constrained_requests_total", "counter",
                    "Constrained requests by outcome (output checked against its constraint).",
                    [({"outcome": k}, v) for k, v in self.constraint.items()])
            rate = self.constraint_satisfaction_rate()
            _metric(out, f"{prefix}_constraint_satisfaction_rate", "gauge",
                    "Satisfied / (satisfied + violated) constrained outputs.", [({}, math.nan if rate is None else rate)])
            hit = self.prefix_cache_hit_rate
            _metric(out, f"{prefix}_prefix_cache_hit_rate", "gauge",
                    "Share of prompt tokens served from the prefix cache (set by the engine).", [({}, math.nan if hit is None else hit)])
            _metric(out, f"{prefix}_requests_running", "gauge", "Requests in flight.", [({}, self.running)])
            return "\n".join(out) + "\n"


def _summary(out: list[str], name: str, help_text: str, dist: Distribution) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} summary")
    for q, v in dist.quantiles().items():
        out.append(f'{name}{{quantile="{q}"}} {_num(v)}')
    out.append(f"{name}_sum {_num(dist.total)}")
    out.append(f"{name}_count {dist.count}")


def _metric(out: list[str], name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{label_text}}} {_num(value)}" if label_text else f"{name} {_num(value)}")


def _num(v: float) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(v)
    return str(v)


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_default = Metrics()


def get_metrics() -> Metrics:
    """The process-wide collector (the server and the local engine share it)."""
    return _default


def get_stats() -> dict[str, Any]:
    """A snapshot of the process-wide metrics, for in-process runs (``sgl.get_stats()``)."""
    return _default.snapshot()


__all__ = ["Distribution", "Metrics", "get_metrics", "get_stats", "percentile"]
