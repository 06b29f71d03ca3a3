"""A bounded load test of the OpenAI-compatible server on loopback.

N clients each send R streamed chat requests one after another (a fixed total of
N x R), cycling through the kinds of ``--mix``: ``tools`` (default) is free text, tool
calls (``tool_choice`` required and auto), strict JSON Schemas (``strict: true``, a
schema that does not forbid other keys itself) and a call-or-answer request (tools +
``response_format``); ``constraints`` is free text, regex, JSON Schema and choices.
Every request must come back complete (HTTP 200, a finish_reason, ``[DONE]``) and every
constrained answer must satisfy its constraint (tool-call arguments validated against
the function's parameters); the run fails (exit 1) otherwise. Prints throughput and
latency / time-to-first-token percentiles, overall and per kind, as markdown tables.

    python bench/server_load.py                       # 32 clients, starts `python -m sgl.server` (SmolLM2-135M)
    python bench/server_load.py --clients 8 --requests 4 --max-tokens 16 --mix constraints
    python bench/server_load.py --url http://127.0.0.1:30000 --api-key KEY   # an already running server
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sgl.telemetry.metrics import percentile  # noqa: E402

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "rank": {"type": "integer", "minimum": 1, "maximum": 99}},
          "required": ["city", "rank"], "additionalProperties": False}
# strict: true must forbid the keys this schema does not declare (it does not say so itself)
LOOSE = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0,
                                                                                             "maximum": 120}},
         "required": ["name", "age"]}
ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 24}}, "required": ["answer"],
          "additionalProperties": False}
COLOURS = ["red", "green", "blue", "yellow"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Get the time in a timezone", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}, "required": ["zone"],
    "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def _fmt(name: str, schema: dict, strict: bool | None = None) -> dict:
    spec = {"name": name, "schema": schema} | ({} if strict is None else {"strict": strict})
    return {"response_format": {"type": "json_schema", "json_schema": spec}}


def _valid(schema: dict):
    """A check that the answer is JSON valid against ``schema``, no other keys allowed."""
    closed = dict(schema, additionalProperties=False)

    def check(text: str, calls: list) -> bool:
        return not calls and _validates(text, closed)

    return check


def _validates(text: str, schema: dict) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _calls_ok(text: str, calls: list) -> bool:
    """Complete calls of declared functions whose arguments match their parameters."""
    return bool(calls) and not text and all(
        c["name"] in PARAMETERS and _validates(c["arguments"], PARAMETERS[c["name"]]) for c in calls)


def _call_or_answer(text: str, calls: list) -> bool:
    return _calls_ok(text, calls) if calls else _validates(text, ANSWER)


def _auto(text: str, calls: list) -> bool:
    return _calls_ok(text, calls) if calls else bool(text)


MIXES = {  # (kind, question, extra body, check(text, calls) of the answer or None)
    "tools": [
        ("free", "Tell me a fact about the moon.", {}, None),
        ("tool_required", "What is the weather in Paris?", {"tools": TOOLS, "tool_choice": "required"}, _calls_ok),
        ("strict_schema", "Invent a person, as JSON.", _fmt("person", LOOSE, True), _valid(LOOSE)),
        ("tool_auto", "What time is it in Tokyo?", {"tools": TOOLS}, _auto),
        ("free", "Write one sentence about the sea.", {}, None),
        ("tool_named", "Weather in Oslo?", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
         _calls_ok),
        ("strict_schema", "Name a big city and its rank, as JSON.", _fmt("city", SCHEMA), _valid(SCHEMA)),
        ("call_or_answer", "What is 2 + 2?", {"tools": TOOLS} | _fmt("answer", ANSWER, True), _call_or_answer),
    ],
    "constraints": [
        ("plain", "Tell me a fact about the moon.", {}, None),
        ("regex", "Give a year between 1900 and 1999.", {"regex": r"19[0-9]{2}"},
         lambda t, c: re.fullmatch(r"19[0-9]{2}", t)),
        ("json", "Name a big city and its rank, as JSON.", _fmt("city", SCHEMA), _valid(SCHEMA)),
        ("choices", "Pick a colour.", {"choices": COLOURS}, lambda t, c: t in COLOURS),
    ],
}


@dataclass
class Sample:
    kind: str
    ok: bool
    latency_s: float
    ttft_s: float | None
    completion_tokens: int
    finish_reason: str | None
    satisfied: bool | None  # None: unconstrained, or cut by max_tokens
    error: str = ""


def one_request(client: httpx.Client, url: str, model: str, index: int, max_tokens: int, mix: str = "tools") -> Sample:
    workload = MIXES[mix]
    kind, question, extra, check = workload[index % len(workload)]
    body = {"model": model, "messages": [{"role": "user", "content": f"{question} (#{index})"}], "max_tokens": max_tokens,
            "temperature": 0.7, "seed": index, "stream": True, "stream_options": {"include_usage": True}} | extra
    start = time.perf_counter()
    ttft, text, finish, tokens, done = None, "", None, 0, False
    calls: list[dict] = []
    try:
        with client.stream("POST", url + "/chat/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                return Sample(kind, False, time.perf_counter() - start, None, 0, None, None, f"HTTP {r.status_code}: {r.text[:200]}")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    return Sample(kind, False, time.perf_counter() - start, ttft, 0, None, None, str(event["error"]))
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices", []):
                    delta = choice.get("delta", {}).get("content") or ""
                    tool_calls = choice.get("delta", {}).get("tool_calls") or []
                    if (delta or tool_calls) and ttft is None:
                        ttft = time.perf_counter() - start
                    text += delta
                    calls += [{"name": t["function"]["name"], "arguments": t["function"]["arguments"]} for t in tool_calls]
                    finish = choice.get("finish_reason") or finish
    except httpx.HTTPError as e:
        return Sample(kind, False, time.perf_counter() - start, ttft, 0, None, None, f"{type(e).__name__}: {e}")
    latency = time.perf_counter() - start
    complete = done and finish is not None
    satisfied = None if check is None or finish == "length" else bool(check(text, calls))
    return Sample(kind, complete and satisfied is not False, latency, ttft, tokens, finish, satisfied,
                  "" if complete and satisfied is not False else
                  "incomplete stream" if not complete else f"constraint broken: {text!r} {calls!r}")


def run_load(url: str, model: str, clients: int, requests: int, max_tokens: int, api_key: str | None,
             mix: str = "tools") -> tuple[list[Sample], float]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    samples: list[Sample] = []
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        with httpx.Client(headers=headers, timeout=600) as client:
            for r in range(requests):
                sample = one_request(client, url, model, c * requests + r, max_tokens, mix)
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, time.perf_counter() - start


def table(samples: list[Sample], wall: float, clients: int, requests: int, max_tokens: int) -> str:
    ok = [s for s in samples if s.ok]
    lat = sorted(s.latency_s for s in ok)
    ttft = sorted(s.ttft_s for s in ok if s.ttft_s is not None)
    tokens = sum(s.completion_tokens for s in ok)
    checked = [s for s in samples if s.satisfied is not None]

    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1000:.0f}" if values else "-"

    rows = [
        ("clients x requests", f"{clients} x {requests} (max_tokens {max_tokens})"),
        ("answered / sent", f"{len(ok)} / {clients * requests}"),
        ("lost or failed", str(clients * requests - len(ok))),
        ("constraints satisfied", f"{sum(bool(s.satisfied) for s in checked)} / {len(checked)} checked"),
        ("wall time", f"{wall:.1f} s"),
        ("throughput", f"{len(ok) / wall:.2f} req/s, {tokens / wall:.1f} completion tok/s"),
        ("latency p50 / p90 / p99", f"{ms(lat, 0.5)} / {ms(lat, 0.9)} / {ms(lat, 0.99)} ms"),
        ("TTFT p50 / p90 / p99", f"{ms(ttft, 0.5)} / {ms(ttft, 0.9)} / {ms(ttft, 0.99)} ms"),
    ]
    out = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    out += ["", "| kind | answered | valid / checked | latency p50 / p99 (ms) |", "|---|---|---|---|"]
    for kind in dict.fromkeys(s.kind for s in samples):
        mine = [s for s in samples if s.kind == kind]
        lat_k = sorted(s.latency_s for s in mine if s.ok)
        checked_k = [s for s in mine if s.satisfied is not None]
        out.append(f"| {kind} | {sum(s.ok for s in mine)} / {len(mine)} | {sum(bool(s.satisfied) for s in checked_k)} / "
                   f"{len(checked_k)} | {ms(lat_k, 0.5)} / {ms(lat_k, 0.99)} |")
    return "\n".join(out)


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "sgl.server", "--port", str(port), "--max-running", str(args.max_running), "--log-level", "warning"]
    if args.model:
        cmd += ["--model", args.model]
    if args.backend:
        cmd += ["--backend", args.backend]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not come up in 300 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="an already running server (http://host:port); default: start one")
    p.add_argument("--api-key")
    p.add_argument("--model", help="model for the started server (default: SmolLM2-135M)")
    p.add_argument("--backend", help="MODULE:ATTR backend for the started server")
    p.add_argument("--max-running", type=int, default=32, help="the started server's --max-running")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--mix", choices=sorted(MIXES), default="tools", help="the kinds of requests (see above)")
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--json", metavar="PATH", help="also write the samples and summary here")
    args = p.parse_args(argv)

    proc = None
    base = args.url.rstrip("/").removesuffix("/v1") if args.url else None
    if base is None:
        proc, base = start_server(args)
    try:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        model = httpx.get(base + "/v1/models", headers=headers).json()["data"][0]["id"]
        with httpx.Client(headers=headers, timeout=600) as warm:  # warm-up: every kind's compile and caches
            for i in range(len(MIXES[args.mix])):
                one_request(warm, base + "/v1", model, i, 4, args.mix)
        samples, wall = run_load(base + "/v1", model, args.clients, args.requests, args.max_tokens, args.api_key, args.mix)
        metrics = httpx.get(base + "/metrics", headers=headers).text
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\nserver_load: {model} at {base}\n")
    print(table(samples, wall, args.clients, args.requests, args.max_tokens))
    for s in samples:
        if not s.ok:
            print(f"FAILED {s.kind}: {s.error}", file=sys.stderr)
    wanted = ("sgl:constraint_satisfaction_rate", "sgl:requests_total", "sgl:e2e_request_latency_seconds_")
    print("\nserver-side /metrics:\n" + "\n".join(line for line in metrics.splitlines() if line.startswith(wanted)))
    if args.json:
        Path(args.json).write_text(json.dumps({"wall_s": wall, "samples": [s.__dict__ for s in samples]}, indent=1))
    failed = args.clients * args.requests - sum(s.ok for s in samples)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
