"""The OpenAI-compatible server in-process over a scripted Backend: request mapping,
errors, limits, streaming format, metrics, traces (the real model in a real server
process: test_server_real.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from scripted import ScriptedBackend

from sgl.backends.base import GenerateRequest, GenerateResult, SelectResult
from sgl.server.app import ServerSettings, create_app
from sgl.telemetry import trace
from sgl.telemetry.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-key"


class ServerScripted(ScriptedBackend):
    """The shared scripted backend, answering as a chat model would: ``text`` (or the last
    allowed choice) in whole words, with logprobs when asked, EOS at the end."""

    default_system_prompt = "You are scripted."

    def __init__(self, text: str = "Hello there, world") -> None:
        super().__init__(respond=self._respond, chunk=1)
        self.text = text

    def _respond(self, request: GenerateRequest) -> str:
        c = request.constraint
        return c.choices[-1] if c is not None and c.choices else self.text

    def result(self, request: GenerateRequest, text: str) -> GenerateResult:
        n = len(text.split())
        k = request.params.top_logprobs
        return GenerateResult(text=text, token_ids=list(range(10, 10 + n)), finish_reason="eos",
                              logprobs=[-0.25] * n if request.params.logprobs else None,
                              top_logprobs=[[(t, -0.25), (t + 100, -2.0)][:k] for t in range(10, 10 + n)] if k else None,
                              meta={"prompt_tokens": len(request.prompt.split())})

    def generate_stream(self, request: GenerateRequest) -> Iterator[str]:
        text = self.answer(request)
        yield from re.findall(r"\S+\s*", text)
        return self.result(request, text)

    def select(self, prompt, choices, method="token_length_normalized"):
        return SelectResult(0, [0.0] * len(choices))

    def role_text(self, role: str, content: str) -> tuple[str, str]:
        return f"<{role}>", f"</{role}>\n"

    def decode_token(self, token_id: int) -> str:
        return f"w{token_id}"


@pytest.fixture
def scripted():
    backend = ServerScripted()
    settings = ServerSettings(model_name="scripted", api_key=KEY, max_tokens_limit=100, max_body_bytes=20_000,
                              max_constraint_bytes=2_000, metrics=Metrics())
    with TestClient(create_app(backend, settings)) as client:
        client.headers["Authorization"] = f"Bearer {KEY}"
        yield client, backend, settings


def chat_body(**extra):
    return {"model": "scripted", "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 8} | extra


def test_models_and_health(scripted):
    client, _, _ = scripted
    assert client.get("/health").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["scripted"] and models["data"][0]["owned_by"] == "sgl"


def test_model_card_by_id(scripted):
    client, _, _ = scripted
    assert client.get("/v1/models/scripted").json()["id"] == "scripted"
    r = client.get("/v1/models/gpt-4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_serve_flags_take_vllm_and_sglang_spellings():
    from sgl.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["serve", "my/model", "--served-model-name", "m", "--max-num-seqs", "4", "--max-model-len", "512",
                              "--dtype", "bfloat16", "--device", "cpu", "--seed", "7", "--no-strict-schemas"])
    assert (args.model_pos, args.model_name, args.max_running, args.max_context, args.dtype, args.seed, args.strict_schemas) == (
        "my/model", "m", 4, 512, "bfloat16", 7, False)
    args = parser.parse_args(["serve", "--model-path", "p", "--max-running-requests", "3", "--context-length", "256"])
    assert (args.model, args.max_running, args.max_context, args.strict_schemas) == ("p", 3, 256, True)
    for argv in (["serve", "--model-na", "x"], ["serve", "--max-num", "2"]):  # no prefix matching
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


@pytest.mark.parametrize("command", ["serve", "run"])
def test_model_flags_reach_the_engine(command, model_package):
    """Issue 10: `sgl serve --model PATH --max-running 4` (and `sgl run`) build the
    LocalModel through one factory that passes every engine flag on."""
    pytest.importorskip("torch")
    from sgl.cli import build_parser, make_backend
    from sgl.engine.model_loader import resolve_checkpoint
    from sgl.server.main import build_backend

    try:
        folder = str(resolve_checkpoint(None).folder)
    except FileNotFoundError as e:
        pytest.skip(f"the packaged model is not installed: {e}")
    argv = [command, *(["program.py"] if command == "run" else []), "--model", folder, "--max-running", "4",
            "--kv-budget-mb", "64", "--max-context", "512"]
    args = build_parser().parse_args(argv)
    backend = build_backend(args) if command == "serve" else make_backend(args)
    try:
        info = backend.get_server_info()
        assert (info["max_running_requests"], info["kv_budget_mb"], info["context_length"]) == (4, 64.0, 512)
    finally:
        backend.close()


def test_chat_prompt_is_built_with_role_text(scripted):
    client, backend, _ = scripted
    r = client.post("/v1/chat/completions", json=chat_body(messages=[
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "scripted"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello there, world"}
    assert body["choices"][0]["finish_reason"] == "stop"
    n_prompt = len(backend.requests[-1].prompt.split())  # the script counts words as tokens
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 3, "total_tokens": n_prompt + 3}
    assert backend.requests[-1].prompt == (
        "<system>You are scripted.</system>\n<user>Hi!</user>\n<assistant>Hello.</assistant>\n<user>Bye</user>\n<assistant>"
    )
    client.post("/v1/chat/completions", json=chat_body(
        messages=[{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Q"},
                  {"role": "assistant", "content": "A: "}], continue_final_message=True))
    assert backend.requests[-1].prompt == "<system>Be terse.</system>\n<user>Q</user>\n<assistant>A: "


def test_sampling_parameters_reach_the_backend(scripted):
    client, backend, _ = scripted
    client.post("/v1/chat/completions", json=chat_body(max_completion_tokens=5, temperature=0.2, top_p=0.5, top_k=7,
                                                       min_p=0.1, seed=3, stop="\n", min_tokens=2, n=2))
    first, second = backend.requests[-2:]
    p = first.params
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.min_p, p.seed, p.stop, p.min_tokens) == (5, 0.2, 0.5, 7, 0.1, 3, ("\n",), 2)
    assert second.params.seed == 4  # n samples must differ


@pytest.mark.parametrize(
    "extra, field, value",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}, "strict": True}}},
         "json_schema", {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}, "strict": False}}},
         "json_schema", {"type": "object", "properties": {"a": {"type": "integer"}}}),
        ({"response_format": {"type": "json_object"}}, "json_schema", {"type": "object"}),
        ({"regex": r"\d+"}, "regex", r"\d+"),
        ({"guided_regex": r"\d+"}, "regex", r"\d+"),
        ({"structured_outputs": {"regex": r"\d+"}}, "regex", r"\d+"),
        ({"choices": ["a", "b"]}, "choices", ["a", "b"]),
        ({"guided_choice": ["a", "b"]}, "choices", ["a", "b"]),
        ({"grammar": 'start: "x"', "grammar_syntax": "lark"}, "grammar", 'start: "x"'),
        ({"ebnf": 'root ::= "x"'}, "grammar", 'root ::= "x"'),
        ({"guided_grammar": 'root ::= "x"  # GBNF'}, "grammar", 'root ::= "x"  # GBNF'),
        ({"guided_grammar": 'start: "x"  // Lark', "guided_decoding_backend": "auto"}, "grammar", 'start: "x"  // Lark'),
        ({"structured_outputs": {"grammar": 'start: "x"'}}, "grammar", 'start: "x"'),
    ],
)
def test_constraint_fields_reach_the_backend(scripted, extra, field, value):
    client, backend, _ = scripted
    r = client.post("/v1/chat/completions", json=chat_body(**extra))
    assert r.status_code == 200, r.text
    spec = backend.requests[-1].constraint
    got = getattr(spec, field)
    assert (list(got) if field == "choices" else got) == value
    if field == "grammar" and "grammar_syntax" not in extra:  # vLLM's rule: "::=" means GBNF, else Lark
        assert spec.grammar_syntax == ("gbnf" if "::=" in value else "lark")


ST_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ST_LEGACY = {"type": "structural_tag", "triggers": ["<function="],
             "structures": [{"begin": "<function=get_weather>", "schema": ST_SCHEMA, "end": "</function>"}]}
ST_FORMAT = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<function="], "tags": [
    {"begin": "<function=get_weather>", "content": {"type": "json_schema", "json_schema": ST_SCHEMA}, "end": "</function>"}]}}


@pytest.mark.parametrize("extra", [
    {"response_format": ST_LEGACY},
    {"response_format": ST_FORMAT},
    {"structural_tag": ST_LEGACY},
    {"structural_tag": json.dumps(ST_LEGACY)},  # vLLM sends JSON text
    {"structured_outputs": {"structural_tag": json.dumps(ST_FORMAT)}},
], ids=["response_format", "response_format-xgrammar", "extra-field", "extra-field-text", "structured_outputs"])
def test_structural_tag_fields_reach_the_backend(scripted, extra):
    """Every spelling becomes one structural-tag constraint, its schemas made strict."""
    client, backend, _ = scripted
    r = client.post("/v1/chat/completions", json=chat_body(**extra))
    assert r.status_code == 200, r.text
    spec = backend.requests[-1].constraint
    assert spec.grammar_syntax == "structural_tag"
    tag = json.loads(spec.grammar)
    schema = tag["structures"][0]["schema"] if "structures" in tag else tag["format"]["tags"][0]["content"]["json_schema"]
    assert schema["additionalProperties"] is False  # the server's strict default


@pytest.mark.parametrize("extra, needle", [
    ({"structural_tag": "{not json"}, "not valid JSON"),
    ({"structural_tag": ST_LEGACY | {"triggers": ["<tool>"]}}, "does not start with a trigger"),
    ({"response_format": {"type": "structural_tag", "triggers": ["<f"]}}, "structures must be a non-empty list"),
    ({"structural_tag": ST_LEGACY, "regex": "a"}, "one constraint per request"),
])
def test_bad_structural_tags_are_400(scripted, extra, needle):
    client, backend, _ = scripted
    r = client.post("/v1/chat/completions", json=chat_body(**extra))
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    assert backend.requests == []


@pytest.mark.parametrize(
    "extra, param, location",
    [
        ({"regex": "[0-9]+(ab"}, "regex", "offset"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"age": {"type": "integer", "minimum": "ten"}}}}}},
         "response_format", "/properties/age/minimum"),
        ({"grammar": 'start: "a" b\n'}, "grammar", "line 1, column"),
        ({"grammar": 'root ::= "a" (\n', "grammar_syntax": "gbnf"}, "grammar", "line "),
    ],
)
def test_constraint_compile_errors_are_400_with_location(scripted, extra, param, location):
    client, backend, _ = scripted
    r = client.post("/v1/chat/completions", json=chat_body(**extra))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_constraint"
    assert location in error["location"] and error["location"] in error["message"]
    assert backend.requests == []  # refused before the model ran


@pytest.mark.parametrize(
    "extra, status, needle",
    [
        ({"regex": "a", "choices": ["a"]}, 400, "one constraint per request"),
        ({"max_tokens": 101}, 400, "above the limit of 100"),
        ({"regex": "a" * 2001}, 400, "above the limit of 2000"),
        ({"n": 9}, 400, "n=9"),
        ({"presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"logit_bias": {"1": 5}}, 400, "logit_bias"),
        ({"tools": [{"type": "function"}]}, 422, "tools.0.function"),
        ({"tool_choice": "required"}, 400, "tool_choice needs tools"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}},
         400, "'g', which is not in tools"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "regex": "a"}, 400, "regex cannot be combined with tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}], "tool_choice": "required"},
         400, "tools: "),
        ({"model": "gpt-4"}, 404, "'gpt-4' is not served here"),
        ({"choices": []}, 400, "choices is empty"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400, "needs json_schema.schema"),
        ({"structured_outputs": {"whitespace_pattern": " "}}, 400, "structured_outputs.whitespace_pattern"),
        ({"guided_json": {"type": "object"}, "guided_whitespace_pattern": " "}, 400, "guided_whitespace_pattern"),
        ({"guided_regex": "a", "guided_decoding_backend": "xgrammar"}, 400, "guided_decoding_backend 'xgrammar'"),
        ({"structural_tag": {"type": "structural_tag", "structures": [], "triggers": []}}, 400, "structural_tag"),
        ({"temperature": 5}, 422, "temperature"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 422, "messages.0.role"),
        ({"messages": []}, 422, "messages"),
        ({"response_format": {"type": "yaml"}}, 422, "response_format.type"),
    ],
)
def test_bad_requests_say_what_is_wrong(scripted, extra, status, needle):
    client, backend, _ = scripted
    r = client.post("/v1/chat/completions", json=chat_body(**extra))
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert backend.requests == []


def test_compile_time_limit(scripted):
    client, backend, settings = scripted
    settings.compile_timeout_s = 1e-6  # nothing compiles that fast
    r = client.post("/v1/chat/completions", json=chat_body(regex=r"[a-z]+@[a-z]+\.com"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "constraint_too_complex"


def test_malformed_json_is_400(scripted):
    client, _, _ = scripted
    r = client.post("/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 400 and "not valid JSON" in error["message"] and "line 1, column 15" in error["message"]
    assert error["param"] is None and error["code"] == "invalid_json"


def test_body_limit_413_and_api_key_401(scripted):
    client, backend, _ = scripted
    big = chat_body(messages=[{"role": "user", "content": "x" * 30_000}])
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and "larger than the limit of 20000 bytes" in r.json()["error"]["message"]
    # chunked upload (no Content-Length): counted while read
    r = client.post("/v1/chat/completions", content=iter([json.dumps(big).encode()]), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        r = client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/metrics", headers=headers).status_code == 401
    assert client.get("/health", headers={"Authorization": ""}).status_code == 200
    assert client.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": "", "X-API-Key": KEY}).status_code == 200
    assert len(backend.requests) == 1


def test_streaming_chat_chunks(scripted):
    client, _, _ = scripted
    with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True})) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"} and len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "Hello there, world"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3


def test_completions_echo_logprobs_and_streaming(scripted):
    client, backend, _ = scripted
    r = client.post("/v1/completions", json={"model": "scripted", "prompt": ["One", "Two"], "echo": True, "logprobs": 1})
    body = r.json()
    assert [c["text"] for c in body["choices"]] == ["OneHello there, world", "TwoHello there, world"]
    assert body["choices"][0]["logprobs"]["tokens"] == ["w10", "w11", "w12"]
    assert body["choices"][0]["logprobs"]["token_logprobs"] == [-0.25] * 3
    assert backend.requests[-1].params.max_tokens == 16  # OpenAI's default for completions
    with client.stream("POST", "/v1/completions", json={"prompt": "x", "stream": True, "choices": ["no", "yes"]}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line and line != "data: [DONE]"]
    assert "".join(e["choices"][0]["text"] for e in events) == "yes"
    assert events[0]["object"] == "text_completion"


def test_chat_logprobs(scripted):
    client, _, _ = scripted
    body = client.post("/v1/chat/completions", json=chat_body(logprobs=True)).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [(t["token"], t["logprob"]) for t in content] == [("w10", -0.25), ("w11", -0.25), ("w12", -0.25)]


def test_top_logprobs_plain_and_streamed(scripted):
    client, _, _ = scripted
    content = client.post("/v1/chat/completions", json=chat_body(logprobs=True, top_logprobs=2)).json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["w10", "w11", "w12"]
    assert content[0]["top_logprobs"] == [{"token": "w10", "logprob": -0.25, "bytes": [119, 49, 48]},
                                          {"token": "w110", "logprob": -2.0, "bytes": [119, 49, 49, 48]}]
    assert client.post("/v1/chat/completions", json=chat_body(top_logprobs=2)).status_code == 400  # needs logprobs
    body = client.post("/v1/completions", json={"prompt": "x", "logprobs": 2}).json()
    assert body["choices"][0]["logprobs"]["top_logprobs"][1] == {"w11": -0.25, "w111": -2.0}
    # streamed, n=2: every choice's logprobs arrive (a backend without live output sends them last)
    events = stream_events(client, chat_body(logprobs=True, top_logprobs=1, stream=True, n=2))
    for index in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == index]
        tokens = [t for c in mine if c.get("logprobs") for t in c["logprobs"]["content"]]
        assert [(t["token"], len(t["top_logprobs"])) for t in tokens] == [("w10", 1), ("w11", 1), ("w12", 1)]
        assert "".join(c["delta"].get("content", "") for c in mine) == "Hello there, world"
    with client.stream("POST", "/v1/completions", json={"prompt": ["a", "b"], "n": 2, "stream": True, "logprobs": 1}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    texts = {}
    for e in events:
        texts[e["choices"][0]["index"]] = texts.get(e["choices"][0]["index"], "") + e["choices"][0]["text"]
    assert texts == {i: "Hello there, world" for i in range(4)}


def test_metrics_count_requests_and_constraint_outcomes(scripted):
    client, _, settings = scripted
    client.post("/v1/chat/completions", json=chat_body(regex=r"Hello there, world"))  # satisfied
    client.post("/v1/chat/completions", json=chat_body(regex=r"[0-9]+"))  # the script breaks it: violated
    client.post("/v1/chat/completions", json=chat_body(choices=["x", "y"]))  # satisfied
    client.post("/v1/chat/completions", json=chat_body(regex="("))  # rejected: not counted as a generation
    stats = settings.metrics.snapshot()
    assert stats["requests"]["ok"] == 3
    assert stats["constraint"] == {"satisfied": 2, "violated": 1, "truncated": 0}
    text = client.get("/metrics").text
    assert 'sgl:constrained_requests_total{outcome="violated"} 1.0' in text
    assert "sgl:e2e_request_latency_seconds_count 3.0" in text and "sgl:num_requests_running 0.0" in text


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_call_required_and_named(scripted, choice):
    client, backend, _ = scripted
    backend.text = CALL_TEXT
    r = client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER, ADD], tool_choice=choice))
    assert r.status_code == 200, r.text
    choice0 = r.json()["choices"][0]
    assert choice0["finish_reason"] == "tool_calls" and choice0["message"]["content"] is None
    (call,) = choice0["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    request = backend.requests[-1]
    schema = request.constraint.json_schema
    named = isinstance(choice, dict)
    calls = [schema] if named else schema["anyOf"][0]["anyOf"]  # required + parallel: one call or an array
    assert [c["properties"]["name"]["const"] for c in calls] == (["get_weather"] if named else ["get_weather", "add"])
    assert calls[0]["properties"]["arguments"]["additionalProperties"] is False  # strict by default
    assert "get_weather" in request.prompt and '{"name": <function name>' in request.prompt


def test_tool_choice_auto_answers_or_calls(scripted):
    client, backend, _ = scripted
    r = client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER]))  # auto by default
    message = r.json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello there, world"} and r.json()["choices"][0]["finish_reason"] == "stop"
    assert backend.requests[-1].constraint.regex is not None and len(backend.requests) == 1
    backend.text = " " + CALL_TEXT
    body = client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER], tool_choice="auto")).json()
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    first, second = backend.requests[-2:]
    assert first.constraint.regex is not None and second.constraint.json_schema is not None
    assert body["usage"]["completion_tokens"] == 2 * len(CALL_TEXT.split())  # both passes count
    r = client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER], tool_choice="none"))
    assert r.json()["choices"][0]["message"]["content"] == " " + CALL_TEXT  # no tools: plain text
    assert backend.requests[-1].constraint is None and "get_weather" not in backend.requests[-1].prompt


def stream_events(client, body):
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_tool_call_streamed(scripted, choice):
    client, backend, _ = scripted
    backend.text = CALL_TEXT
    events = stream_events(client, chat_body(tools=[WEATHER], tool_choice=choice, stream=True, n=2))
    for index in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert not any(c["delta"].get("content") for c in mine[1:])  # the call is not sent as text
        calls = [t for c in mine for t in c["delta"].get("tool_calls", [])]
        assert [(t["index"], t["function"]["name"], t["function"]["arguments"]) for t in calls] == [(0, "get_weather", '{"city": "Paris"}')]
        assert calls[0]["id"].startswith("call_") and mine[-1]["finish_reason"] == "tool_calls"
    backend.text = "Sunny, I think."
    events = stream_events(client, chat_body(tools=[WEATHER], stream=True))
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "Sunny, I think."
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


ANSWER = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("text, is_call", [('{"answer": "sunny"}', False), ('{"name": "get_weather", "arguments": {"city": "Oslo"}}', True)])
def test_tools_with_response_format_call_or_answer(scripted, text, is_call, stream):
    """tool_choice auto + response_format: one pass under 'a call or the format'."""
    client, backend, _ = scripted
    backend.text = text
    body = chat_body(tools=[WEATHER], response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER}},
                     stream=stream)
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert len(backend.requests) == 1  # no second pass
    schema = backend.requests[0].constraint.json_schema
    assert len(schema["anyOf"]) == 2 and schema["anyOf"][1]["additionalProperties"] is False  # strict answer
    assert "JSON in the requested format" in backend.requests[0].prompt
    if stream:
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        deltas = [e["choices"][0]["delta"] for e in events if e.get("choices")]
        calls = [t for d in deltas for t in d.get("tool_calls") or []]
        content = "".join(d.get("content") or "" for d in deltas)
        finish = events[-1]["choices"][0]["finish_reason"]
    else:
        message = r.json()["choices"][0]["message"]
        calls, content, finish = message.get("tool_calls") or [], message["content"] or "", r.json()["choices"][0]["finish_reason"]
    if is_call:
        assert finish == "tool_calls" and calls[0]["function"]["name"] == "get_weather" and not content
    else:
        assert finish == "stop" and not calls and json.loads(content) == {"answer": "sunny"}


def test_tools_with_a_format_need_auto(scripted):
    client, backend, _ = scripted
    rf = {"type": "json_object"}
    r = client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER], tool_choice="required", response_format=rf))
    assert r.status_code == 400 and "tool_choice 'auto'" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json=chat_body(tools=[WEATHER], response_format=ST_LEGACY))
    assert r.status_code == 400 and "a json_schema or json_object response_format can" in r.json()["error"]["message"]
    assert backend.requests == []


def test_tool_results_go_back_into_the_prompt(scripted):
    client, backend, _ = scripted
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]
    r = client.post("/v1/chat/completions", json=chat_body(messages=messages, tools=[WEATHER]))
    assert r.status_code == 200, r.text
    prompt = backend.requests[-1].prompt
    assert prompt.startswith("<system>Be brief.\n\nYou can call these functions:\n")
    assert ('<assistant>{"name": "get_weather", "arguments": {"city": "Paris"}}</assistant>\n'
            "<tool>18 C, sunny</tool>\n<assistant>") in prompt


def test_strict_schema_default_is_a_setting(scripted):
    client, backend, settings = scripted
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}}
    client.post("/v1/chat/completions", json=chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    strict = backend.requests[-1].constraint.json_schema
    assert strict["additionalProperties"] is False and strict["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the request's own dict is not changed
    settings.strict_schemas = False
    client.post("/v1/chat/completions", json=chat_body(guided_json=schema))
    assert backend.requests[-1].constraint.json_schema == schema
    client.post("/v1/chat/completions", json=chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}))
    assert backend.requests[-1].constraint.json_schema == strict


def test_trace_log_has_one_line_per_request(tmp_path):
    path = tmp_path / "server-trace.jsonl"
    backend = ServerScripted()
    try:
        with TestClient(create_app(backend, ServerSettings(model_name="m", trace_path=str(path), metrics=Metrics()))) as client:
            client.post("/v1/chat/completions", json=chat_body(model="m", regex="Hello.*"))
            with client.stream("POST", "/v1/completions", json={"prompt": "p", "stream": True}) as r:
                list(r.iter_lines())
    finally:
        trace.reset_trace_config()
    records = trace.read_trace(path)
    assert [r["endpoint"] for r in records] == ["chat", "completions"]
    first = records[0]
    assert first["type"] == "request" and first["outputs"] == ["Hello there, world"]
    assert first["constraint"] == {"kind": "regex", "value": "Hello.*"} and first["constraint_outcomes"] == ["satisfied"]
    assert first["latency_s"] > 0 and records[1]["ttft_s"] is not None


class ToApp:
    """An httpx transport that hands each request to the in-process app (a TestClient)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request):
        import httpx

        r = self.client.request(request.method, request.url.path, content=request.read(),
                                headers=dict(request.headers))
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("kind", ["sgl", "sglang", "vllm", "vllm-legacy", "openai"])
def test_openai_backend_spellings_reach_sgl_serve(scripted, kind):
    """Issue 11: `sgl.OpenAI` in each server's spelling against `sgl serve`: every
    constraint arrives as the one it was; a hosted-API regex goes as an anchored JSON
    Schema pattern (whole text, not a substring), and the wrapper's tokens come on top of
    the user's max_tokens."""
    from sgl.backends.openai import WRAPPER_TOKENS, OpenAI
    from sgl.constrain import compile_spec
    from sgl.types import ConstraintSpec, SamplingParams

    client, backend, _ = scripted
    answers = {"regex": "123", "choices": "no (maybe)", "grammar": "b"}
    current: list[str] = []  # the answer to the constraint being sent
    backend.respond = lambda r: (json.dumps({"value": current[-1]}) if r.constraint.json_schema is not None
                                 else current[-1])
    http = OpenAI(model="scripted", base_url="http://testserver/v1", api_key=KEY, server_kind=kind,
                  transport=ToApp(client), max_retries=0)
    specs = [ConstraintSpec(regex=r"\d{3}"), ConstraintSpec(choices=["yes", "no (maybe)"])]
    if kind != "openai":  # hosted APIs take JSON Schema only
        specs.append(ConstraintSpec(grammar='root ::= "a" | "b"', grammar_syntax="gbnf"))
    for spec in specs:
        current.append(answers[_kind(spec)])
        result = http.generate(GenerateRequest("Hi!", SamplingParams(max_tokens=5), spec))
        got = backend.requests[-1]
        assert result.text == answers[_kind(spec)]
        if kind == "openai":
            assert got.params.max_tokens == 5 + WRAPPER_TOKENS
            compiled = compile_spec(got.constraint)
            assert compiled.accepts_text(json.dumps({"value": answers[_kind(spec)]}))
            if spec.regex is not None:  # anchored: the pattern must match the whole value
                assert not compiled.accepts_text(json.dumps({"value": "x123"}))
                assert not compiled.accepts_text(json.dumps({"value": "1234"}))
            continue
        assert got.params.max_tokens == 5
        c = got.constraint
        if spec.regex is not None:
            assert c.regex == spec.regex
        elif spec.choices is not None:  # SGLang has no choice field: an alternation regex
            assert (list(c.choices) == spec.choices if kind != "sglang"
                    else c.regex == "|".join(re.escape(x) for x in spec.choices))
        else:
            assert (c.grammar, c.grammar_syntax) == (spec.grammar, "gbnf")


def _kind(spec) -> str:
    return "regex" if spec.regex is not None else "choices" if spec.choices is not None else "grammar"
