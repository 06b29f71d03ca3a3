"""SGL programs on the real SmolLM2-135M-Instruct, after SGLang's own frontend tests
(``python/sglang/test/test_programs.py``): few-shot QA, multi-turn chat, select,
gen_int, JSON by regex and by schema, an IPv4 regex, dtypes, fork, streaming,
run_batch, the CLI and the characters example. Temperature 0 and small token budgets;
the assertions are about structure (matches, validates, is a choice), not content.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

import sgl

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

REGEX_INT = r"[-+]?[0-9]+"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+"
REGEX_STR = r"\"[\w\d\s]*\""
IPV4 = r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"


@pytest.fixture(scope="module")
def model(local_model):
    return local_model


def test_few_shot_qa_with_stop(model):
    @sgl.function
    def few_shot_qa(s, question):
        s += "The following are questions with answers.\n\n"
        s += "Q: What is the capital of France?\nA: Paris\n"
        s += "Q: What is the capital of Germany?\nA: Berlin\n"
        s += "Q: " + question + "\n"
        s += "A:" + sgl.gen("answer", stop="\n", max_tokens=8, temperature=0)

    state = few_shot_qa.run(question="What is the capital of Italy?", backend=model)
    answer = state["answer"]
    assert answer.strip() and "\n" not in answer
    assert state.text().endswith("A:" + answer)
    assert state.get_meta_info("answer")["finish_reason"] in ("stop", "eos", "length")


def test_multi_turn_roles(model):
    @sgl.function
    def chat(s, q1, q2):
        s += sgl.system("You are a helpful assistant.")
        s += sgl.user(q1)
        s += sgl.assistant(sgl.gen("answer_1", max_tokens=8))
        with s.user():
            s += q2
        with s.assistant():
            s += sgl.gen("answer_2", max_tokens=8)

    state = chat.run(q1="Name a color.", q2="Name another.", backend=model, temperature=0)
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[4]["content"] == state["answer_2"].lstrip()
    prefix, suffix = model.role_text("assistant", "")
    assert state.text().count(prefix) == 2 and state.text().endswith(suffix)


def test_select(model):
    @sgl.function
    def true_or_false(s, statement):
        s += "Determine whether the statement below is True, False, or Unknown.\n"
        s += "Statement: The capital of France is Paris.\nAnswer: True\n"
        s += "Statement: " + statement + "\n"
        s += "Answer:" + sgl.select("answer", ["True", "False", "Unknown"])

    state = true_or_false.run(statement="The capital of Canada is Tokyo.", backend=model)
    assert state["answer"] in ["True", "False", "Unknown"]
    assert len(state.get_meta_info("answer")["scores"]) == 3
    assert state.text().endswith("Answer:" + state["answer"])


def test_gen_int_and_dtypes(model):
    @sgl.function
    def dtype_gen(s):
        s += "The number of hours in a day is " + sgl.gen_int("hours", max_tokens=4) + ".\n"
        s += (
            "Q: What is the value of pi?\nA: "
            + sgl.gen("float_res", dtype=float, max_tokens=6)
            + "\n"
        )
        s += "Q: Is the sky blue?\nA: " + sgl.gen("bool_res", dtype=bool, max_tokens=3) + "\n"
        s += "Q: Name a fruit.\nA: " + sgl.gen("str_res", dtype=str, max_tokens=8) + "\n"

    state = dtype_gen.run(backend=model, temperature=0)
    assert type(state["hours"]) is int
    assert type(state["float_res"]) in (float,)
    assert type(state["bool_res"]) is bool
    # a str may be cut by max_tokens; when it is complete it was parsed from a JSON string
    meta = state.get_meta_info("str_res")
    assert isinstance(state["str_res"], str) and (
        "dtype_error" in meta or '"' + state["str_res"] in state.text()
    )


def test_json_by_regex(model):
    @sgl.function
    def decode_json(s):
        s += "Generate a JSON object to describe the basic city information of Paris.\n"
        with s.var_scope("json_output"):
            s += "{\n"
            s += '  "name": ' + sgl.gen(regex=REGEX_STR, max_tokens=8) + ",\n"
            s += '  "population": ' + sgl.gen(regex=REGEX_INT, max_tokens=6) + ",\n"
            s += '  "latitude": ' + sgl.gen(regex=REGEX_FLOAT, max_tokens=6) + "\n"
            s += "}"

    state = decode_json.run(backend=model, temperature=0)
    obj = json.loads(state["json_output"])
    assert isinstance(obj["name"], str) and isinstance(obj["population"], int)
    assert isinstance(obj["latitude"], int | float)


def test_json_by_schema(model):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }

    @sgl.function
    def person(s):
        s += sgl.user("Describe a person as JSON with a name and an age.")
        s += sgl.assistant(sgl.gen("person", max_tokens=40, json_schema=schema))

    state = person.run(backend=model, temperature=0)
    jsonschema.validate(json.loads(state["person"]), schema)


def test_typed_result_with_a_pydantic_model(model):
    pydantic = pytest.importorskip("pydantic", reason="typed results need pydantic models")

    class Person(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        name: str = pydantic.Field(max_length=12)
        age: int = pydantic.Field(ge=0, le=120)

    @sgl.function
    def person(s):
        s += sgl.user("Describe a person as JSON with a name and an age.")
        s += sgl.assistant(sgl.gen("text", max_tokens=40, json_schema=Person))
        s += sgl.user("Another one.")
        s += sgl.assistant(sgl.gen("obj", max_tokens=40, dtype=Person))

    state = person.run(backend=model, temperature=0)
    assert isinstance(state["text"], str)
    first = state.parsed("text")
    assert isinstance(first, Person) and first == Person.model_validate_json(state["text"])
    assert isinstance(state["obj"], Person) and state.parsed("obj") is state["obj"]


def test_ipv4_regex(model):
    @sgl.function
    def regex_gen(s):
        s += "Q: What is the IP address of the Google DNS servers?\n"
        s += "A: " + sgl.gen("answer", temperature=0, regex=IPV4, max_tokens=16)

    state = regex_gen.run(backend=model)
    assert re.fullmatch(IPV4, state["answer"]), state["answer"]


def test_parallel_decoding_with_fork(model):
    @sgl.function
    def parallel(s, topic):
        s += "Give two short tips for " + topic + ".\n"
        forks = s.fork(2)
        for i in range(2):
            forks[i] += f"Tip {i + 1}:"
            forks[i] += sgl.gen("tip", max_tokens=6, stop="\n")
        forks.join()
        s += "Tips: " + " / ".join(forks[i]["tip"] for i in range(2))

    state = parallel.run(topic="writing", backend=model, temperature=0)
    assert isinstance(state["tip"], list) and len(state["tip"]) == 2
    assert all(isinstance(t, str) and "\n" not in t for t in state["tip"])
    assert state.text().endswith(" / ".join(state["tip"]))


def test_streaming(model):
    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=12))

    state = qa.run(question="Say hello.", backend=model, stream=True, temperature=0)
    chunks = list(state.text_iter())
    assert "".join(chunks) == state.text()
    assert len(chunks) >= 3  # prompt parts and then the answer token by token
    state = qa.run(question="Say hello.", backend=model, stream=True, temperature=0)
    assert "".join(state.text_iter("answer")) == state["answer"]


def test_run_batch(model):
    @sgl.function
    def capital(s, country):
        s += "Q: What is the capital of France?\nA: Paris\n"
        s += (
            "Q: What is the capital of "
            + country
            + "?\nA:"
            + sgl.gen("answer", stop="\n", max_tokens=6)
        )

    countries = ["Japan", "Spain", "Egypt"]
    states = capital.run_batch(
        [{"country": c} for c in countries], backend=model, temperature=0, num_threads=3
    )
    assert [st.error() for st in states] == [None, None, None]
    for state, country in zip(states, countries, strict=True):
        assert f"capital of {country}?" in state.text() and "\n" not in state["answer"]


def test_characters_example(model, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "characters_example", REPO / "examples" / "characters.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "characters.jsonl"
    assert example.main(["--n", "2", "--out", str(out)], backend=model) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and records[0]["seed"] != records[1]["seed"]
    for record in records:
        jsonschema.validate(record["character"], example.CHARACTER_SCHEMA)


def test_cli_run_with_the_local_model(tmp_path, model_package):
    program = tmp_path / "prog.py"
    program.write_text(
        "import sgl\n\n@sgl.function\ndef count(s, start):\n"
        "    s += 'Count: ' + str(start) + ', ' + sgl.gen_int('next', max_tokens=3)\n"
    )
    batch = tmp_path / "args.jsonl"
    batch.write_text('{"start": 1}\n{"start": 7}\n')
    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sgl.cli",
            "run",
            str(program),
            "--batch",
            str(batch),
            "--out",
            str(out),
            "--temperature",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["args"]["start"] for r in records] == [1, 7]
    assert all(isinstance(r["variables"]["next"], int) and r["error"] is None for r in records)
