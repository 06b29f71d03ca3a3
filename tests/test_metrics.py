"""Serving metrics (percentiles, rates, Prometheus text) and JSON-lines trace logs."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sgl.telemetry import trace
from sgl.telemetry.metrics import Distribution, Metrics, get_metrics, get_stats, percentile

# One Prometheus sample line: name{labels} value (text format 0.0.4)
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$')


def parse_prometheus(text: str) -> dict[str, dict]:
    """A strict reader of the exposition format: every family has HELP then TYPE, then
    its samples; returns {family: {"type", "samples": {(name, labels): value}}}."""
    families: dict[str, dict] = {}
    current = None
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in families, f"family {name} twice"
            current = families[name] = {"type": None, "samples": {}}
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert current is families[name] and kind in ("counter", "gauge", "summary", "histogram", "untyped")
            current["type"] = kind
        else:
            m = SAMPLE_RE.match(line)
            assert m, f"bad sample line: {line!r}"
            name, labels, value = m.group(1), m.group(2) or "", m.group(4)
            family = next(f for f in families if name == f or name in (f + "_sum", f + "_count"))
            assert families[family] is current, f"{name} outside its family"
            families[family]["samples"][(name, labels)] = float(value)  # float() reads NaN, +Inf
    return families


def test_percentile_matches_numpy():
    rng = random.Random(0)
    for n in (1, 2, 7, 100, 1001):
        values = sorted(rng.expovariate(1.0) for _ in range(n))
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))
    assert math.isnan(percentile([], 0.5))


def test_distribution_window_bounds_memory_but_counts_everything():
    d = Distribution(window=10)
    for v in range(100):
        d.add(float(v))
    assert d.count == 100 and d.total == sum(range(100))
    assert len(d.samples) == 10
    assert d.quantiles((0.0, 1.0)) == {0.0: 90.0, 1.0: 99.0}  # only the recent window


def test_request_metrics_and_stats():
    m = Metrics()
    latencies = [0.1 * (i + 1) for i in range(10)]
    for i, lat in enumerate(latencies):
        m.observe_request(latency_s=lat, ttft_s=lat / 10, prompt_tokens=5, completion_tokens=20,
                          constraint=["satisfied", "satisfied", "violated", "truncated", None][i % 5])
    m.observe_status("cancelled")
    m.observe_status("error")
    s = m.snapshot()
    assert s["requests"] == {"ok": 10, "cancelled": 1, "error": 1}
    assert s["latency_s"]["p50"] == pytest.approx(np.percentile(latencies, 50))
    assert s["latency_s"]["p99"] == pytest.approx(np.percentile(latencies, 99))
    assert s["ttft_s"]["p90"] == pytest.approx(np.percentile([x / 10 for x in latencies], 90))
    assert s["tokens_per_s"]["p50"] == pytest.approx(np.percentile([20 / x for x in latencies], 50))
    assert s["prompt_tokens"] == 50 and s["completion_tokens"] == 200
    assert s["constraint"] == {"satisfied": 4, "violated": 2, "truncated": 2}
    assert s["constraint_satisfaction_rate"] == pytest.approx(4 / 6)  # truncated outputs are not judged
    assert s["prefix_cache_hit_rate"] is None
    with pytest.raises(ValueError):
        m.observe_request(latency_s=1.0, constraint="maybe")


def test_gauges_mask_time_and_running():
    m = Metrics()
    m.set_prefix_cache_hit_rate(0.25)
    with pytest.raises(ValueError):
        m.set_prefix_cache_hit_rate(1.5)
    for us in (10, 20, 30, 1000):
        m.observe_mask_time(us * 1e-6)
    with m.track_running(), m.track_running():
        assert m.snapshot()["running"] == 2
    s = m.snapshot()
    assert s["running"] == 0 and s["prefix_cache_hit_rate"] == 0.25
    assert s["mask_time_s"]["p50"] == pytest.approx(25e-6)


def test_prometheus_text_is_well_formed():
    from prometheus_client.parser import text_string_to_metric_families

    m = Metrics()
    for lat in (0.2, 0.4, 0.6):
        m.observe_request(latency_s=lat, ttft_s=0.1, prompt_tokens=3, completion_tokens=6, constraint="satisfied")
    m.observe_request(latency_s=1.0, completion_tokens=6, constraint="violated")
    m.observe_status("cancelled")
    m.set_prefix_cache_hit_rate(0.5)
    m.start_waiting()
    m.observe_mask_time(3e-4)
    families = {f.name: f for f in text_string_to_metric_families(m.render_prometheus())}

    def value(family: str, sample: str, **labels) -> float:
        return next(s.value for s in families[family].samples if s.name == sample and s.labels == labels)

    e2e = "sgl:e2e_request_latency_seconds"
    assert families[e2e].type == "histogram"
    assert value(e2e, e2e + "_count") == 4 and value(e2e, e2e + "_sum") == pytest.approx(2.2)
    assert value(e2e, e2e + "_bucket", le="0.5") == 2  # 0.2 and 0.4
    tpot = "sgl:time_per_output_token_seconds"
    assert value(tpot, tpot + "_sum") == pytest.approx((0.1 + 0.3 + 0.5) / 5)  # (latency - ttft) / (tokens - 1)
    assert value("sgl:time_to_first_token_seconds", "sgl:time_to_first_token_seconds_count") == 3
    assert value("sgl:grammar_mask_time_seconds", "sgl:grammar_mask_time_seconds_bucket", le="0.0005") == 1
    assert families["sgl:requests"].type == "counter"
    assert value("sgl:requests", "sgl:requests_total", status="cancelled") == 1
    assert value("sgl:generation_tokens", "sgl:generation_tokens_total") == 24
    assert value("sgl:constrained_requests", "sgl:constrained_requests_total", outcome="truncated") == 0
    assert value("sgl:constraint_satisfaction_rate", "sgl:constraint_satisfaction_rate") == 0.75
    assert value("sgl:prefix_cache_hit_rate", "sgl:prefix_cache_hit_rate") == 0.5
    assert value("sgl:num_requests_waiting", "sgl:num_requests_waiting") == 1
    m.stop_waiting(0.2)
    families = {f.name: f for f in text_string_to_metric_families(m.render_prometheus())}
    assert value("sgl:num_requests_waiting", "sgl:num_requests_waiting") == 0
    assert value("sgl:request_queue_time_seconds", "sgl:request_queue_time_seconds_sum") == pytest.approx(0.2)


def test_process_wide_metrics_feed_get_stats():
    before = get_stats()["completion_tokens"]
    get_metrics().observe_request(latency_s=0.5, completion_tokens=3)
    assert get_stats()["completion_tokens"] == before + 3


# --- traces -------------------------------------------------------------------------------
@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "trace.jsonl"
    trace.configure_trace(path)
    yield path
    trace.reset_trace_config()


def test_tracing_is_off_by_default_and_costs_nothing(monkeypatch):
    monkeypatch.delenv(trace.ENV_VAR, raising=False)
    trace.reset_trace_config()
    try:
        assert trace.begin_trace("prompt") is None
        trace.record_token(None, 1, "x")  # no-ops
        trace.record_token_from_logits(None, np.zeros(4), 1, "x")
        trace.end_trace(None)
    finally:
        trace.reset_trace_config()


def test_sgl_trace_env_var_enables_tracing(tmp_path):
    path = tmp_path / "env-trace.jsonl"
    code = (
        "from sgl.telemetry import trace as t\n"
        "tr = t.begin_trace('p', {'kind': 'regex', 'value': 'a+'}, request_id='r1')\n"
        "t.record_token(tr, 7, 'a', 'forced', -0.1, [('a', -0.1), ('b', -2.5)], 0.3)\n"
        "t.end_trace(tr, 'stop', masks=1)\n"
    )
    env = dict(os.environ, SGL_TRACE=str(path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    (record,) = trace.read_trace(path)
    assert record["type"] == "generation" and record["request_id"] == "r1"
    assert record["text"] == "a" and record["finish_reason"] == "stop" and record["meta"] == {"masks": 1}
    assert record["tokens"] == [{"text": "a", "id": 7, "kind": "forced", "logprob": -0.1,
                                 "top": [["a", -0.1], ["b", -2.5]], "masked_mass": 0.3}]


def test_record_token_from_logits_computes_logprob_top_and_masked_mass(trace_file):
    logits = np.array([2.0, 1.0, 0.5, -1.0, 3.0], dtype=np.float32)
    allowed = np.array([True, True, False, False, False])
    with trace.request_context("req-42"):
        tr = trace.begin_trace("p")
    assert tr.request_id == "req-42"  # picks up the server's request id
    trace.record_token_from_logits(tr, logits, 0, "a", "sampled", allowed=allowed, decode=lambda i: "abcde"[i], k=3)
    trace.end_trace(tr, "stop")
    (record,) = trace.read_trace(trace_file)
    tok = record["tokens"][0]
    p = np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum()
    assert tok["logprob"] == pytest.approx(math.log(p[0]))
    assert [t for t, _ in tok["top"]] == ["e", "a", "b"]
    assert tok["top"][0][1] == pytest.approx(math.log(p[4]))
    assert tok["masked_mass"] == pytest.approx(p[2] + p[3] + p[4])


def test_unpacked_bitmask_row_matches_bool_mask():
    # the engine hands token_stats its bitmask row unpacked (telemetry imports no constrain)
    from sgl.constrain.bitmask import unpack_bitmask

    rng = np.random.default_rng(1)
    allowed = rng.random(70) < 0.3
    packed = np.zeros((70 + 31) // 32, dtype=np.int32)
    for i in np.flatnonzero(allowed):  # the matcher's layout: bit i % 32 of word i // 32
        packed[i // 32] |= np.int32(np.uint32(1 << (i % 32)).astype(np.int32))
    assert np.array_equal(unpack_bitmask(packed, 70), allowed)
    logits = rng.normal(size=70)
    _, _, from_packed = trace.token_stats(logits, 0, allowed=unpack_bitmask(packed, 70))
    _, _, from_bool = trace.token_stats(logits, 0, allowed=allowed)
    assert from_packed == pytest.approx(from_bool)
    with pytest.raises(TypeError, match="unpack_bitmask"):  # packed words are refused, not misread
        trace.token_stats(logits, 0, allowed=packed)


def test_unknown_kind_is_refused(trace_file):
    tr = trace.begin_trace()
    with pytest.raises(ValueError, match="unknown token kind"):
        trace.record_token(tr, 1, "x", "guessed")


def test_read_trace_names_the_bad_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"type": "request"}\n\nnot json\n')
    with pytest.raises(ValueError, match=r"t.jsonl:3"):
        trace.read_trace(path)


def test_concurrent_writers_never_interleave_lines(trace_file):
    import threading

    def work(n: int) -> None:
        for i in range(50):
            tr = trace.begin_trace("x" * 500, request_id=f"{n}-{i}")
            trace.record_token(tr, i, "y" * 100)
            trace.end_trace(tr)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = Path(trace_file).read_text().splitlines()
    assert len(lines) == 200
    assert all(json.loads(line)["tokens"][0]["text"] == "y" * 100 for line in lines)
