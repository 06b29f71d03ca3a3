"""The OpenAI-compatible server.

Part 1 runs the app in-process over a scripted Backend (protocol: request mapping,
errors, limits, streaming format, metrics, traces). Part 2 starts ``python -m
sgl.server`` as a real process on loopback with the real SmolLM2 model and talks to it
with the official ``openai`` client and with SGL programs through ``sgl.OpenAI``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
from conftest import start_server, stop_server
from fastapi.testclient import TestClient

from sgl.backends.base import Backend, GenerateRequest, GenerateResult, SelectResult
from sgl.server.app import ServerSettings, create_app
from sgl.telemetry import trace
from sgl.telemetry.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-key"


# =====================================================================================
# Part 1: in-process, scripted backend
# =====================================================================================
class ScriptedBackend(Backend):
    """Answers ``text`` (or the last allowed choice) and records every request."""

    default_system_prompt = "You are scripted."

    def __init__(self, text: str = "Hello there, world") -> None:
        self.text = text
        self.requests: list[GenerateRequest] = []

    def _answer(self, request: GenerateRequest) -> str:
        c = request.constraint
        return c.choices[-1] if c is not None and c.choices else self.text

    def _result(self, request: GenerateRequest, text: str) -> GenerateResult:
        n = len(text.split())
        k = request.params.top_logprobs
        return GenerateResult(text=text, token_ids=list(range(10, 10 + n)), finish_reason="eos",
                              logprobs=[-0.25] * n if request.params.logprobs else None,
                              top_logprobs=[[(t, -0.25), (t + 100, -2.0)][:k] for t in range(10, 10 + n)] if k else None,
                              meta={"prompt_tokens": len(request.prompt.split())})

    def generate(self, request: GenerateRequest) -> GenerateResult:
        self.requests.append(request)
        return self._result(request, self._answer(request))

    def generate_stream(self, request: GenerateRequest) -> Iterator[str]:
        self.requests.append(request)
        text = self._answer(request)
        yield from re.findall(r"\S+\s*", text)
        return self._result(request, text)

    def select(self, prompt, choices, method="token_length_normalized"):
        return SelectResult(0, [0.0] * len(choices))

    def role_text(self, role: str, content: str) -> tuple[str, str]:
        return f"<{role}>", f"</{role}>\n"

    def decode_token(self, token_id: int) -> str:
        return f"w{token_id}"


@pytest.fixture
def scripted():
    backend = ScriptedBackend()
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
    backend = ScriptedBackend()
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


# =====================================================================================
# Part 2: a real server process with the real model, through the openai client
# =====================================================================================
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python -m sgl.server`` with the default model (SmolLM2-135M) on a free port."""
    if importlib.util.find_spec("sgl.backends.local") is None:
        pytest.skip("sgl.backends.local is not available")
    folder = tmp_path_factory.mktemp("server")
    trace_path = folder / "trace.jsonl"
    proc, base, log = start_server(folder, "--api-key", KEY, "--max-tokens-limit", "64", "--max-num-seqs", "8", "--seed", "0",
                                   "--max-body-bytes", "100000", "--trace", str(trace_path), "--log-level", "warning")
    model = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"][0]["id"]
    yield {"base": base, "url": base + "/v1", "model": model, "trace": trace_path, "proc": proc}
    stop_server(proc, log)


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server["url"], api_key=KEY, max_retries=0, timeout=120)


def ask(server, client, question: str, max_tokens: int = 16, **kwargs):
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=server["model"], messages=[{"role": "user", "content": question}],
                                          max_tokens=max_tokens, **kwargs)


@pytest.mark.slow
def test_real_chat(server, client):
    r = ask(server, client, "What is the capital of France?", max_tokens=8)
    assert r.choices[0].message.role == "assistant"
    assert "Paris" in r.choices[0].message.content
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 8


@pytest.mark.slow
def test_real_streaming(server, client):
    question = "Name three fruits."
    stream = ask(server, client, question, max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3  # really incremental
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-2].choices[0].finish_reason in ("stop", "length")
    whole = ask(server, client, question, max_tokens=12).choices[0].message.content
    assert text == whole  # greedy: the stream is the same answer, delivered in pieces


@pytest.mark.slow
def test_real_json_schema(server, client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    r = ask(server, client, "Invent a person. Reply in JSON with name and age.", max_tokens=32,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}})
    content = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop", content
    jsonschema.validate(json.loads(content), schema)


REAL_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_real_tool_calls(server, client, choice):
    question = "What is the weather in Paris?"
    r = ask(server, client, question, max_tokens=40, tools=[REAL_WEATHER], tool_choice=choice)
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message
    calls = r.choices[0].message.tool_calls
    assert calls and all(c.function.name == "get_weather" and c.id.startswith("call_") for c in calls)
    arguments = json.loads(calls[0].function.arguments)
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    # streamed: the same call, as tool_call deltas
    chunks = list(ask(server, client, question, max_tokens=40, tools=[REAL_WEATHER], tool_choice=choice, stream=True))
    deltas = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert [json.loads(d.function.arguments) for d in deltas] == [json.loads(c.function.arguments) for c in calls]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the call and its result go back into the conversation; auto lets the model answer
    messages = [{"role": "user", "content": question}, r.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": calls[0].id, "content": "18 degrees and sunny"}]
    followup = client.chat.completions.create(model=server["model"], messages=messages, tools=[REAL_WEATHER],
                                              max_tokens=24, temperature=0)
    assert followup.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["TOOLS", "JSON_SCHEMA"])
def test_real_instructor(server, client, mode):
    instructor = pytest.importorskip("instructor", reason="instructor is in the test extra")
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=20)
        country: str = Field(max_length=20)

    patched = instructor.from_openai(client, mode=getattr(instructor.Mode, mode))
    city = patched.chat.completions.create(
        model=server["model"], response_model=City, max_retries=0, max_tokens=64, temperature=0,
        messages=[{"role": "user", "content": "Name the capital of France and its country."}])
    assert isinstance(city, City) and city.name and city.country


@pytest.mark.slow
def test_real_top_logprobs(server, client):
    question = "Name a colour."
    r = ask(server, client, question, max_tokens=6, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:  # greedy: the chosen token is the most likely one, listed first
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-4)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    chunks = list(ask(server, client, question, max_tokens=6, logprobs=True, top_logprobs=3, stream=True, n=2))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        streamed = [t for c in mine if c.logprobs for t in c.logprobs.content]
        assert [(t.token, t.top_logprobs[1].token) for t in streamed] == [(t.token, t.top_logprobs[1].token) for t in content]
        assert sum(1 for c in mine if c.logprobs and c.logprobs.content) >= 3  # sent with their text, not all at the end
    c = client.completions.create(model=server["model"], prompt="The sky is", max_tokens=4, temperature=0, logprobs=3)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.top_logprobs) and all(len(top) == 3 for top in lp.top_logprobs)
    # greedy: the most likely token (after the first, which token healing may constrain)
    assert all(max(top, key=top.get) == token for token, top in zip(lp.tokens[1:], lp.top_logprobs[1:], strict=True))
    assert all(top[t] == pytest.approx(x) for t, x, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True) if t in top)


@pytest.mark.slow
def test_real_regex_choices_and_grammar(server, client):
    pattern = r"(yes|no), [0-9]{1,2}"
    r = ask(server, client, "Is water wet? Answer yes or no, then a number.", max_tokens=8, extra_body={"regex": pattern})
    assert re.fullmatch(pattern, r.choices[0].message.content), r.choices[0].message.content
    colours = ["red", "green", "blue"]
    r = ask(server, client, "What colour is the sky?", max_tokens=4, extra_body={"choices": colours})
    assert r.choices[0].message.content in colours
    grammar = 'start: "The answer is " NUMBER "."\nNUMBER: /[0-9]{1,3}/\n'
    r = ask(server, client, "What is 2 + 2?", max_tokens=12, extra_body={"grammar": grammar})
    content = r.choices[0].message.content
    assert re.fullmatch(r"The answer is [0-9]{1,3}\.", content), content
    r = client.completions.create(model=server["model"], prompt="The year the Berlin wall fell: ", max_tokens=6,
                                  temperature=0, extra_body={"regex": r"1[0-9]{3}"})
    assert re.fullmatch(r"1[0-9]{3}", r.choices[0].text)


@pytest.mark.slow
def test_real_error_statuses(server, client):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        ask(server, client, "x", extra_body={"regex": "(ab"})
    assert info.value.body["location"] == "offset 0" or "offset" in info.value.body["location"]
    with pytest.raises(openai.BadRequestError) as info:
        ask(server, client, "x", response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}})
    assert info.value.body["location"].startswith("/properties/a")
    with pytest.raises(openai.BadRequestError) as info:
        ask(server, client, "x", extra_body={"grammar": "start: a\n"})
    assert "line 1" in info.value.body["location"]
    with pytest.raises(openai.UnprocessableEntityError) as info:
        ask(server, client, "x", temperature=9)
    assert "temperature" in info.value.body["message"]
    with pytest.raises(openai.APIStatusError) as info:
        ask(server, client, "x" * 120_000)
    assert info.value.status_code == 413
    bad_key = openai.OpenAI(base_url=server["url"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()


@pytest.mark.slow
def test_real_client_disconnect_cancels_generation(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": server["model"], "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
            "max_tokens": 64, "stream": True}

    def metric(name: str) -> float:
        text = httpx.get(server["base"] + "/metrics", headers=headers).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    before = metric('sgl:requests_total{status="cancelled"}')
    stamps = []
    with httpx.stream("POST", server["url"] + "/chat/completions", json=body, headers=headers, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                stamps.append(time.monotonic())
            if len(stamps) >= 6:  # the role chunk and 5 tokens, then hang up
                break
    per_token = (stamps[-1] - stamps[1]) / 4
    left = time.monotonic()
    # the rest of the story (~58 tokens) would take 58 * per_token; the server must stop well before
    deadline = left + max(3.0, 20 * per_token)
    while metric('sgl:requests_total{status="cancelled"}') == before or metric("sgl:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the server kept generating after the client left"
        time.sleep(0.1)
    records = [r for r in trace.read_trace(server["trace"]) if r.get("type") == "request"]
    assert all(len(r["outputs"][0]) < 400 for r in records)  # the story was never finished and logged


@pytest.mark.slow
def test_real_client_disconnect_cancels_non_streamed_generation(server):
    """A client that gives up on a plain (non-streamed) request frees its engine slot too."""
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": server["model"], "messages": [{"role": "user", "content": "Write a long story about a ship."}],
            "max_tokens": 64, "min_tokens": 64, "temperature": 0, "n": 4}

    def running() -> float:
        text = httpx.get(server["base"] + "/metrics", headers=headers).text
        match = re.search(r"^sgl:num_requests_running (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    with pytest.raises(httpx.TimeoutException):
        httpx.post(server["url"] + "/chat/completions", json=body, headers=headers, timeout=1.0)
    left = time.monotonic()
    # 4 x 64 tokens take many seconds on a CPU; cancelled requests end at the next step
    while running() > 0:
        assert time.monotonic() < left + 2.5, "the server kept generating after the client left"
        time.sleep(0.05)


@pytest.mark.slow
def test_real_proxy_forwards_model_logprobs_and_usage(server):
    """``sgl serve --backend`` over sgl.OpenAI: a proxy in front of the real server."""
    from sgl.backends.openai import OpenAI
    from sgl.server.main import served_name

    upstream = OpenAI(base_url=server["url"], api_key=KEY, timeout=60, max_retries=0)
    args = type("Args", (), {"model_name": None, "model": None})()
    name = served_name(args, upstream)
    assert name == server["model"]
    with TestClient(create_app(upstream, ServerSettings(model_name=name, metrics=Metrics()))) as proxy:
        body = {"model": name, "messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 5,
                "temperature": 0, "logprobs": True, "top_logprobs": 2}
        answer = proxy.post("/v1/chat/completions", json=body).json()
        assert answer["model"] == server["model"] and answer["usage"]["completion_tokens"] > 0
        content = answer["choices"][0]["logprobs"]["content"]
        assert "".join(t["token"] for t in content) == answer["choices"][0]["message"]["content"]
        assert all(len(t["top_logprobs"]) == 2 for t in content)
        events = stream_events(proxy, body | {"stream": True, "stream_options": {"include_usage": True}})
        assert events[-1]["usage"]["completion_tokens"] == answer["usage"]["completion_tokens"]
        streamed = [t["token"] for e in events if e["choices"] and e["choices"][0].get("logprobs") for t in e["choices"][0]["logprobs"]["content"]]
        assert streamed == [t["token"] for t in content]
    upstream.close()


@pytest.mark.slow
def test_sgl_program_through_openai_backend(server):
    import sgl
    from sgl.backends.openai import OpenAI

    @sgl.function
    def profile(s, name):
        s += sgl.user(f"Describe {name} briefly.")
        s += sgl.assistant("Age: " + sgl.gen("age", regex=r"[1-9][0-9]", max_tokens=4)
                           + ". Mood: " + sgl.select("mood", choices=["happy", "sad", "calm"]))
        s += sgl.user("One word for them?")
        s += sgl.assistant(sgl.gen("word", max_tokens=4, temperature=0))

    backend = OpenAI(model=server["model"], base_url=server["url"], api_key=KEY, timeout=60, max_retries=1)
    assert backend.server_kind == "sgl"
    state = profile.run(name="Ada", backend=backend)
    assert state.error() is None, state.error()
    assert re.fullmatch(r"[1-9][0-9]", state["age"])
    assert state["mood"] in ("happy", "sad", "calm")
    assert state["word"].strip()
    endpoint = sgl.RuntimeEndpoint(server["base"], api_key=KEY) if hasattr(sgl, "RuntimeEndpoint") else None
    if endpoint is not None:
        assert endpoint.model == server["model"]
