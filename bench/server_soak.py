"""A bounded soak of the OpenAI-compatible server on loopback, with hostile clients.

Starts ``python -m sgl.server`` on 127.0.0.1 (the default model, an API key, a short
compile budget and read timeout) and, for ``--seconds``, runs ``--clients`` threads that
each send a random mix (seeded) of

* valid requests (plain, regex, JSON Schema, choices; streamed or not): 200;
* hostile ones (NaN, malformed JSON, lone surrogates, deep schemas and grammars, a prompt
  over the context, an empty language, a huge seed, a constraint over the compile budget,
  a wrong key with a 3 MB body, a body over the limit, a body that trickles): their 4xx;
* cancelled ones (a stream dropped after its first chunk, a request given up after
  0.3 s).

Then it waits for the server to go quiet and checks: no 5xx; no request lost (each got
its expected status, or was cancelled by the client); the server's RSS (its compile
workers included) back within ``--rss-slack-mb`` of the warm baseline; its threads and
open files back to the baseline; ``/metrics`` ``sgl:requests_total`` agreeing with the
clients' counts (ok + cancelled = answered 200 + cancelled; rejected = 4xx; error = 0).
Exit status 1 if any check fails. Linux only (reads /proc).

    python bench/server_soak.py                          # 60 s, 12 clients
    python bench/server_soak.py --seconds 20 --clients 6
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-soak"
AUTH = {"Authorization": f"Bearer {KEY}"}
COMPILE_BUDGET_S = 2.0
READ_TIMEOUT_S = 2.0


def chat(**extra) -> dict:
    return {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8} | extra


def deep(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def raw(body: dict) -> bytes:
    return json.dumps(body).encode()


PREFIX = b'{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4,'
SCHEMA = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}}, "required": ["colour"]}
VALID = {  # name: body (expected 200)
    "plain": chat(),
    "regex": chat(regex=r"[a-z]{3,8}"),
    "json": chat(response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}, max_tokens=16),
    "choices": chat(choices=["red", "green", "blue"]),
}
HOSTILE = {  # name: (raw body, expected status, headers)
    "nan": (PREFIX + b'"temperature":NaN}', 400, AUTH),
    "malformed": (b'{"messages": [', 400, AUTH),
    "not-utf8": (b'{"messages":[{"role":"user","content":"\xff"}]}', 400, AUTH),
    "surrogate": (PREFIX + b'"regex":"a\\ud800"}', 400, AUTH),
    "deep-schema": (raw(chat(json_schema=deep(450))), 400, AUTH),
    "deep-grammar": (raw(chat(grammar="root ::= " + "(" * 3000 + '"a"' + ")" * 3000, grammar_syntax="gbnf")), 400, AUTH),
    "exclusive-1e308": (raw(chat(json_schema={"type": "number", "exclusiveMinimum": 1e308})), 400, AUTH),
    "long-prompt": (raw(chat(messages=[{"role": "user", "content": "hello " * 10_000}])), 400, AUTH),
    "empty-language": (raw(chat(regex="a[^\\s\\S]")), 400, AUTH),
    "seed": (raw(chat(seed=2**70)), 422, AUTH),
    "over-budget": (raw(chat(choices=[f"w{i * 7919 % 100003}z" for i in range(6000)])), 400, AUTH),
    "no-key-3MB": (b"x" * 3_000_000, 401, {}),
    "too-big": (b"x" * 2_000_000, 413, AUTH),
}
MIX = ([("valid", k) for k in VALID] * 6 + [("hostile", k) for k in HOSTILE]
       + [("stream", k) for k in VALID] * 2 + [("cancel-stream", "plain"), ("cancel-wait", "json"), ("slow-body", "")])


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: collections.Counter = field(default_factory=collections.Counter)
    statuses: collections.Counter = field(default_factory=collections.Counter)  # (kind, status)
    answered_200: int = 0  # requests the server answered 200 in full
    rejected_4xx: int = 0
    cancelled: int = 0  # requests the client gave up
    lost: list[str] = field(default_factory=list)  # wrong status, exception, or a 5xx

    def add(self, kind: str, status: int | str, expected: int | None) -> None:
        with self.lock:
            self.sent[kind] += 1
            self.statuses[(kind, status)] += 1
            if status == "cancelled":
                self.cancelled += 1
            elif status == expected == 200:
                self.answered_200 += 1
            elif status == expected and isinstance(status, int) and 400 <= status < 500:
                self.rejected_4xx += 1
            else:
                self.lost.append(f"{kind}: got {status}, expected {expected}")


def one(client: httpx.Client, base: str, port: int, kind: str, name: str, tally: Tally) -> None:
    url = base + "/v1/chat/completions"
    try:
        if kind == "valid":
            r = client.post(url, json=VALID[name] | {"temperature": 0.7}, headers=AUTH)
            ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
            tally.add(name, r.status_code if ok else f"{r.status_code} {r.text[:120]}", 200)
        elif kind == "hostile":
            body, expected, headers = HOSTILE[name]
            r = client.post(url, content=body, headers={"Content-Type": "application/json", **headers})
            error = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
            shaped = {"message", "type", "param", "code"} <= set(error)
            tally.add(name, r.status_code if shaped else f"{r.status_code} (not an error object)", expected)
        elif kind == "stream":
            with client.stream("POST", url, json=VALID[name] | {"stream": True}, headers=AUTH) as r:
                lines = [line for line in r.iter_lines() if line]
            events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
            finished = any(c.get("finish_reason") for e in events for c in e.get("choices", []))
            ok = r.status_code == 200 and lines and lines[-1] == "data: [DONE]" and finished
            tally.add(f"stream-{name}", r.status_code if ok else f"{r.status_code} incomplete stream", 200)
        elif kind == "cancel-stream":
            with client.stream("POST", url, json=VALID[name] | {"stream": True, "max_tokens": 64}, headers=AUTH) as r:
                for _ in r.iter_lines():
                    break  # drop the connection after the first chunk
            tally.add(kind, "cancelled", None)
        elif kind == "cancel-wait":
            try:
                client.post(url, json=VALID[name] | {"max_tokens": 64}, headers=AUTH, timeout=0.3)
                tally.add(kind, 200, 200)  # finished before the client gave up
            except httpx.TimeoutException:
                tally.add(kind, "cancelled", None)
        elif kind == "slow-body":
            tally.add(kind, slow_body(port), 408)
    except Exception as e:  # noqa: BLE001 - a lost request
        tally.add(f"{kind}-{name}", f"exception {type(e).__name__}: {e}", None)


def slow_body(port: int) -> int | str:
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S + 10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\"")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    m = re.match(rb"HTTP/1.1 (\d+)", answer)
    return int(m.group(1)) if m else f"no answer ({answer[:40]!r})"


def client_loop(base: str, port: int, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < until:
            kind, name = rng.choice(MIX)
            one(client, base, port, kind, name, tally)


# --- the server process -----------------------------------------------------------------
def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "sgl.server", "--host", "127.0.0.1", "--port", str(port), "--api-key", KEY,
           "--max-tokens-limit", "64", "--compile-timeout", str(COMPILE_BUDGET_S), "--read-timeout", str(READ_TIMEOUT_S),
           "--compile-workers", "2", "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base, port
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("server did not come up in 300 s")


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def resources(pid: int) -> dict[str, float]:
    """The server's threads and open files, and RSS (MB) with its child processes."""
    rss = 0.0
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError, KeyError):
            rss += int(_status(p)["VmRSS"].split()[0]) / 1024
    return {"rss_mb": rss, "threads": int(_status(pid)["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def requests_total(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", headers=AUTH).text
    out: dict[str, float] = collections.defaultdict(float)
    for m in re.finditer(r'^sgl:requests_total\{status="(\w+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    for m in re.finditer(r"^sgl:num_requests_running (\S+)$", text, re.M):
        out["running"] = float(m.group(1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="how long the clients send (default: 60)")
    p.add_argument("--clients", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss-slack-mb", type=float, default=300.0, help="RSS may end this far above the warm baseline")
    p.add_argument("--settle", type=float, default=40.0, help="seconds to wait for threads and files to return")
    args = p.parse_args(argv)
    if not Path("/proc/self/status").exists():
        raise SystemExit("server_soak reads /proc (Linux only)")

    proc, base, port = start_server(args)
    try:
        tally = Tally()
        for kind, name in sorted(set(MIX)):  # warm-up: every case once (compiles, caches, workers)
            one(httpx.Client(timeout=120), base, port, kind, name, Tally())
        time.sleep(12)  # idle worker threads of the warm-up retire (anyio: after 10 s)
        before, base_metrics = resources(proc.pid), requests_total(base)
        until = time.monotonic() + args.seconds
        started = time.monotonic()
        threads = [threading.Thread(target=client_loop, args=(base, port, args.seed + i, until, tally))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        peak = dict(before)
        while any(t.is_alive() for t in threads):
            now_res = resources(proc.pid)
            peak = {k: max(peak[k], now_res[k]) for k in peak}
            time.sleep(1.0)
        wall = time.monotonic() - started
        # anyio retires a worker thread idle for 10 s at the next call that needs a thread
        time.sleep(11)
        one(httpx.Client(timeout=120), base, port, "valid", "plain", tally)
        settle_until = time.monotonic() + args.settle
        while True:  # quiet: nothing running, threads and files back (idle threads retire)
            after, metrics = resources(proc.pid), requests_total(base)
            delta = {k: metrics.get(k, 0.0) - base_metrics.get(k, 0.0) for k in ("ok", "cancelled", "rejected", "error")}
            counted = delta["ok"] + delta["cancelled"] == tally.answered_200 + tally.cancelled
            back = after["threads"] <= before["threads"] + 2 and after["fds"] <= before["fds"] + 2
            if (counted and back and metrics.get("running", 0) == 0) or time.monotonic() > settle_until:
                break
            time.sleep(1.0)
        alive = proc.poll() is None and httpx.get(base + "/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()

    total = sum(tally.sent.values())
    checks = [
        ("server alive, no 5xx, none lost", alive and not tally.lost, f"{len(tally.lost)} lost"),
        ("RSS back within the slack", after["rss_mb"] <= before["rss_mb"] + args.rss_slack_mb,
         f"{before['rss_mb']:.0f} -> {after['rss_mb']:.0f} MB (peak {peak['rss_mb']:.0f})"),
        ("threads back", after["threads"] <= before["threads"] + 2,
         f"{before['threads']} -> {after['threads']} (peak {peak['threads']})"),
        ("open files back", after["fds"] <= before["fds"] + 2, f"{before['fds']} -> {after['fds']} (peak {peak['fds']})"),
        ("/metrics ok + cancelled = 200s + client cancels", counted,
         f"{delta['ok']:.0f} + {delta['cancelled']:.0f} vs {tally.answered_200} + {tally.cancelled}"),
        ("/metrics rejected = 4xx", delta["rejected"] == tally.rejected_4xx, f"{delta['rejected']:.0f} vs {tally.rejected_4xx}"),
        ("/metrics error = 0", delta["error"] == 0, f"{delta['error']:.0f}"),
    ]
    print(f"\nserver_soak: {args.clients} clients, {wall:.0f} s, {total} requests ({total / wall:.1f}/s), seed {args.seed}\n")
    print("| check | result | detail |\n|---|---|---|")
    for name, ok, detail in checks:
        print(f"| {name} | {'pass' if ok else 'FAIL'} | {detail} |")
    print("\n| case | count | statuses |\n|---|---|---|")
    for kind in sorted(tally.sent):
        statuses = ", ".join(f"{s}: {n}" for (k, s), n in sorted(tally.statuses.items(), key=str) if k == kind)
        print(f"| {kind} | {tally.sent[kind]} | {statuses} |")
    for line in tally.lost[:20]:
        print("LOST", line, file=sys.stderr)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
