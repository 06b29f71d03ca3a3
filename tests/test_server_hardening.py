"""A hostile client gets a 4xx with an OpenAI error object: never a 500, a dead server,
a silent empty answer, a connection held forever or a file from the server's disk.

Most tests run against a real ``python -m sgl.server`` process (the default model, a
short compile budget and read timeout); a few run the app in-process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import start_server, stop_server
from fastapi.testclient import TestClient

from sgl.server.app import ServerSettings, create_app
from sgl.telemetry.metrics import Metrics
from sgl.types import SamplingParams

KEY = "sk-hardening"
AUTH = {"Authorization": f"Bearer {KEY}"}
COMPILE_BUDGET_S = 2.0
READ_TIMEOUT_S = 2.0
SECRET = "TOPSECRETVALUE"


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_package):
    """A server whose working directory holds ``evil.lark`` (for the %import test)."""
    folder = tmp_path_factory.mktemp("hardening")
    (folder / "evil.lark").write_text(f'SECRET: "{SECRET}"\n')
    proc, base, log = start_server(
        folder, "--api-key", KEY, "--max-tokens-limit", "16", "--max-num-seqs", "4", "--seed", "0",
        "--compile-timeout", str(COMPILE_BUDGET_S), "--compile-workers", "1", "--read-timeout", str(READ_TIMEOUT_S),
        "--max-connections", "64", "--log-level", "warning", cwd=folder)
    yield {"base": base, "proc": proc, "log": folder / "server.log", "port": int(base.rsplit(":", 1)[1])}
    stop_server(proc, log)


def chat(**extra) -> dict:
    return {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0} | extra


def post(server, body: bytes | dict, path: str = "/v1/chat/completions", headers: dict | None = None,
         timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server["base"] + path, content=content, timeout=timeout,
                      headers={"Content-Type": "application/json", **AUTH, **(headers or {})})


def assert_error(r: httpx.Response, status: int | tuple[int, ...], needle: str = "") -> dict:
    """An OpenAI error object with ``status``, whose message contains ``needle``."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert needle in error["message"], error
    return error


def assert_alive(server) -> None:
    r = post(server, chat(max_tokens=2))
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert server["proc"].poll() is None


def deep_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def with_schema(schema) -> dict:
    return chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})


CHAT_PREFIX = b'{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4,'
HOSTILE = [  # (name, raw body, status, message part, param)
    ("NaN temperature", CHAT_PREFIX + b'"temperature":NaN}', 400, "NaN is not a JSON number", None),
    ("Infinity maximum", CHAT_PREFIX + b'"json_schema":{"type":"number","maximum":Infinity}}', 400, "Infinity", None),
    ("1e999 minimum", CHAT_PREFIX + b'"json_schema":{"type":"number","minimum":1e999}}', 400, "out of the range", None),
    ("schema 450 deep", json.dumps(with_schema(deep_schema(450))).encode(), 400, "nested deeper than", "response_format"),
    ("regex lone surrogate", CHAT_PREFIX + b'"regex":"a\\ud800"}', 400, "lone surrogate", "regex"),
    ("prompt lone surrogate", b'{"messages":[{"role":"user","content":"Hi \\udc00"}]}', 400, "lone surrogate",
     "messages.0.content"),
    ("GBNF 3000 deep", json.dumps(chat(grammar="root ::= " + "(" * 3000 + '"a"' + ")" * 3000, grammar_syntax="gbnf")).encode(),
     400, "nest more than", "grammar"),
    ("Lark 3000 deep", json.dumps(chat(grammar="start: " + "(" * 3000 + '"a"' + ")" * 3000)).encode(), 400,
     "nest more than", "grammar"),
    ("seed 2**70", json.dumps(chat(seed=2**70)).encode(), 422, "seed", "seed"),
    ("prompt longer than the context", json.dumps(chat(messages=[{"role": "user", "content": "hello " * 10_000}])).encode(),
     400, "the context holds", None),
    ("malformed JSON", b'{"messages": [', 400, "not valid JSON", None),
    ("not UTF-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "not valid UTF-8", None),
    ("not an object", b"[1, 2]", 400, "must be a JSON object", None),
    # refused when it compiles (the language is empty), before any token is generated
    ("empty language", json.dumps(chat(regex="a[^\\s\\S]")).encode(), 400, "matches no text", "regex"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, body, status, needle, param", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_client_mistakes_are_4xx_error_objects(server, name, body, status, needle, param):
    error = assert_error(post(server, body), status, needle)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert_alive(server)


@pytest.mark.slow
def test_huge_number_bound_is_refused_at_the_budget_or_followed(server):
    """``exclusiveMinimum: 1e308`` is satisfiable (309-digit integers, 1.5e308) but its
    compile takes ~1.7 s here, near the test server's 2 s budget: either answer is right,
    a 400 that names the budget or a 200 whose text is a prefix of such a number (it once
    depended on how fast the compile was, and faster compiles turned it into a 200)."""
    schema = {"type": "number", "exclusiveMinimum": 1e308}
    r = post(server, json.dumps(with_schema(schema)).encode())
    if r.status_code == 400:
        error = assert_error(r, 400, f"budget of {COMPILE_BUDGET_S:g} s")
        assert error["param"] == "response_format"
    else:
        assert r.status_code == 200, r.text
        from sgl.constrain import compile_json_schema

        text = r.json()["choices"][0]["message"]["content"].encode()
        assert text and compile_json_schema(schema).walk(text).consumed == len(text), text
    assert_alive(server)


@pytest.mark.slow
def test_routes_and_methods_answer_error_objects(server):
    assert_error(post(server, {}, path="/v1/nope"), 404, "Not Found")
    assert_error(httpx.get(server["base"] + "/v1/chat/completions", headers=AUTH), 405)


@pytest.mark.slow
def test_tiny_temperature_is_greedy_not_empty(server):
    greedy = post(server, chat(max_tokens=6)).json()["choices"][0]
    tiny = post(server, chat(max_tokens=6, temperature=1e-300)).json()["choices"][0]
    assert tiny["message"]["content"] and tiny["message"] == greedy["message"]


@pytest.mark.slow
def test_streamed_empty_language_is_refused_not_stopped(server):
    # An empty language is refused at compile now, so a streamed request gets the 400
    # before any event (it used to fail at the first token, as an error event).
    with httpx.stream("POST", server["base"] + "/v1/chat/completions", headers=AUTH, timeout=60,
                      json=chat(regex="a[^\\s\\S]", stream=True)) as r:
        r.read()
    error = assert_error(r, 400, "matches no text")
    assert error["param"] == "regex" and '"finish_reason"' not in r.text


def _lark_imports_refused() -> bool:
    """Does the Lark frontend refuse ``%import`` of a local file? (another change)"""
    from sgl.constrain import compile_grammar
    from sgl.constrain.errors import ConstraintError

    here = Path(__file__).resolve().parent
    probe = here / "_sgl_import_probe.lark"
    old = os.getcwd()
    try:
        probe.write_text('X: "x"\n')
        os.chdir(here)
        compile_grammar("%import ._sgl_import_probe (X)\nstart: X")
    except ConstraintError:
        return True
    except Exception:  # noqa: BLE001 - not a clean refusal
        return False
    finally:
        os.chdir(old)
        probe.unlink(missing_ok=True)
    return False


@pytest.mark.slow
def test_lark_import_does_not_read_the_servers_files(server):
    assert _lark_imports_refused(), "the Lark frontend resolved %import against the working directory"
    r = post(server, chat(grammar="%import .evil (SECRET)\nstart: SECRET", max_tokens=8))
    error = assert_error(r, 400, "import")
    assert error["param"] == "grammar" and SECRET not in r.text
    assert_alive(server)


def _children_cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid``'s child processes (the compile workers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process CPU times from /proc (Linux)")
def test_compile_budget_stops_the_compile(server):
    # six regex terminals of ~16k DFA states each (each under every size budget): seconds
    # of compile in all, over the server's time budget (a long choice list no longer is)
    pairs = ["ab", "cd", "ef", "gh", "ij", "kl"]
    grammar = "start: " + " | ".join(f"T{i}" for i in range(len(pairs))) + "\n" + "\n".join(
        f"T{i}: /({x}|{y})*{x}({x}|{y}){{14}}/" for i, (x, y) in enumerate(pairs))
    results: list[httpx.Response] = []

    def hostile() -> None:
        results.append(post(server, chat(grammar=grammar)))

    threads = [threading.Thread(target=hostile) for _ in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.5)
    plain = post(server, chat(max_tokens=2))  # others are still served while the compiles run
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert plain.status_code == 200
    for r in results:
        error = assert_error(r, 400, f"budget of {COMPILE_BUDGET_S:g} s")
        assert error["code"] == "constraint_too_complex" and error["param"] == "grammar"
    assert elapsed < 3 * COMPILE_BUDGET_S + 10  # all three stopped at the budget (waiting counts against it)
    before = _children_cpu_s(server["proc"].pid)
    time.sleep(1.5)
    assert _children_cpu_s(server["proc"].pid) - before < 0.3  # no compile burns on in the background
    assert_alive(server)


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _raw(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server["port"]))
    s.settimeout(READ_TIMEOUT_S + 10)
    return s


@pytest.mark.slow
def test_slow_body_gets_408_and_is_closed(server):
    s = _raw(server)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"messages\"")
    started = time.monotonic()
    answer = b""
    while chunk := s.recv(4096):
        answer += chunk
    s.close()
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer
    assert time.monotonic() - started < READ_TIMEOUT_S + 5
    assert_alive(server)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts the server's open files in /proc (Linux)")
def test_slow_clients_are_cut_off(server):
    pid = server["proc"].pid
    assert_alive(server)
    baseline = _open_fds(pid)
    sockets = [_raw(server) for _ in range(50)]
    for i, s in enumerate(sockets):  # half trickle their headers, half their body
        if i % 2:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        else:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                      + b"\r\nContent-Length: 1000\r\n\r\n{\"mess")
    deadline = time.monotonic() + READ_TIMEOUT_S + 10
    for s in sockets:
        with contextlib.suppress(OSError):
            s.sendall(b"X")  # one more byte: it must not restart any deadline
    closed = 0
    for s in sockets:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            while s.recv(4096):
                pass
            closed += 1
        s.close()
    assert closed == 50
    time.sleep(0.5)
    assert _open_fds(pid) <= baseline + 2
    assert_alive(server)


@pytest.mark.slow
def test_api_key_is_checked_before_the_body(server):
    r = httpx.post(server["base"] + "/v1/chat/completions", content=b"x" * 3_000_000, timeout=30,
                   headers={"Content-Type": "application/json"})
    assert_error(r, 401, "API key")
    assert_error(post(server, b"x" * 3_000_000), 413, "larger than the limit")
    assert_alive(server)


@pytest.mark.slow
def test_rejections_are_counted_in_metrics(server):
    def rejected() -> float:
        text = httpx.get(server["base"] + "/metrics", headers=AUTH).text
        lines = [ln for ln in text.splitlines() if ln.startswith("sgl:requests_total{") and 'status="rejected"' in ln]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

    before = rejected()
    post(server, b"{")
    post(server, chat(seed=2**70))
    assert rejected() == before + 2


# --- in-process ------------------------------------------------------------------------
class BuggyBackend:
    """A backend with a bug: building the prompt fails."""

    default_system_prompt = None

    def role_text(self, role: str, content: str) -> tuple[str, str]:
        raise RuntimeError("a bug in the server")


def test_server_bug_is_500_error_object_with_request_id(caplog):
    app = create_app(BuggyBackend(), ServerSettings(model_name="m", metrics=Metrics()))  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    error = assert_error(r, 500, "request id")
    assert error["type"] == "server_error"
    rid = error["message"].rsplit(" ", 1)[1].rstrip(")")
    assert any(rid in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("field, value", [("temperature", math.nan), ("temperature", math.inf), ("top_p", math.nan),
                                          ("min_p", -math.inf), ("seed", 2**70), ("temperature", -0.5)])
def test_sampling_params_refuse_bad_numbers(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_sampling_params_tiny_temperature_is_greedy():
    assert SamplingParams(temperature=1e-300).temperature == 0.0
    assert SamplingParams(temperature=0.7).temperature == 0.7
    assert SamplingParams(seed=2**64 - 1).seed == 2**64 - 1


def test_python_api_refuses_nan_temperature_instead_of_empty_text():
    from test_lang import ScriptedBackend as LangBackend

    import sgl

    @sgl.function
    def prog(s):
        s += sgl.gen("a", temperature=math.nan)

    backend = LangBackend(["never"])
    with pytest.raises(Exception, match="temperature must be a finite number"):
        prog.run(backend=backend)["a"]
    assert backend.requests == []


@pytest.mark.slow
def test_connections_over_the_limit_get_503(server):
    held = [_raw(server) for _ in range(64)]  # the server's --max-connections
    try:
        time.sleep(0.3)
        r = post(server, chat(max_tokens=2), timeout=10)
        assert r.status_code == 503  # uvicorn's limit_concurrency
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert_alive(server)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's RSS from /proc (Linux)")
def test_schema_with_1000_properties_is_fine(server):
    def rss_mb() -> float:
        status = Path(f"/proc/{server['proc'].pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    before = rss_mb()
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1000)}}  # 28 KB
    r = post(server, with_schema(schema) | {"max_tokens": 8})
    assert r.status_code == 200, r.text
    assert rss_mb() - before < 300  # the lexer used to allocate 2 GB for this schema
    assert_alive(server)

