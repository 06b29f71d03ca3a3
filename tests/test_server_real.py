"""The OpenAI-compatible server as a real process: ``python -m sgl.server`` on loopback
with the real SmolLM2 model, driven by the official ``openai`` client, ``instructor`` and
SGL programs through ``sgl.OpenAI`` (the in-process protocol tests: test_server.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import httpx
import jsonschema
import pytest
from conftest import start_server, stop_server
from fastapi.testclient import TestClient
from test_server import stream_events

from sgl.server.app import ServerSettings, create_app
from sgl.telemetry import trace
from sgl.telemetry.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_package):
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


@pytest.mark.slow
@pytest.mark.parametrize("at_least_one", [False, True])
def test_real_structural_tag(server, client, at_least_one):
    """Free text with tagged calls (SGLang's / vLLM's structural_tag): every tagged
    segment matches its schema; with at_least_one (XGrammar's format) a call is there."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
              "additionalProperties": False}
    if at_least_one:
        response_format = {"type": "structural_tag", "format": {
            "type": "triggered_tags", "triggers": ["<function="], "at_least_one": True, "stop_after_first": True,
            "tags": [{"begin": "<function=get_weather>", "content": {"type": "json_schema", "json_schema": schema},
                      "end": "</function>"}]}}
    else:
        response_format = {"type": "structural_tag", "triggers": ["<function="], "structures": [
            {"begin": "<function=get_weather>", "schema": schema, "end": "</function>"}]}
    question = ("To get the weather, write <function=get_weather>{\"city\": CITY}</function>. "
                "What is the weather in Paris?")
    r = ask(server, client, question, max_tokens=48, response_format=response_format)
    text = r.choices[0].message.content
    segments = re.findall(r"<function=get_weather>(.*?)</function>", text, flags=re.S)
    if at_least_one:
        assert r.choices[0].finish_reason == "stop" and len(segments) == 1 and text.endswith("</function>"), text
    for segment in segments:
        jsonschema.validate(json.loads(segment), schema)
    if r.choices[0].finish_reason == "stop":  # a complete answer has no dangling trigger
        assert text.count("<function=") == len(segments), text


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
@pytest.mark.parametrize("question", ["What is the weather in Paris?", "What is 2 + 2? Answer in JSON."])
def test_real_tools_with_response_format(server, client, question):
    """tool_choice auto + response_format: a valid call, or an answer valid in the format."""
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}}, "required": ["answer"],
              "additionalProperties": False}
    r = ask(server, client, question, max_tokens=40, tools=[REAL_WEATHER],
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    choice = r.choices[0]
    if choice.finish_reason == "tool_calls":
        arguments = json.loads(choice.message.tool_calls[0].function.arguments)
        jsonschema.validate(arguments, REAL_WEATHER["function"]["parameters"])
    else:
        assert choice.finish_reason == "stop", choice.message
        jsonschema.validate(json.loads(choice.message.content), schema)


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
