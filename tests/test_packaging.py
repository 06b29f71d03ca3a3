"""Packaging: the core install needs no torch, and a missing extra is named in the error."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# Run in a fresh interpreter where the optional packages cannot be imported, as after a
# plain `pip install sgl`: a meta-path finder refuses them.
BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
import importlib.util
_find = importlib.util.find_spec
def find_spec(name, package=None):
    if name.split(".")[0] in {blocked!r}:
        return None
    return _find(name, package)
importlib.util.find_spec = find_spec
"""


def run_without(blocked: set[str], code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCK.format(blocked=blocked) + code
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": ""}, timeout=120)


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_core_dependencies_have_no_torch_and_extras_exist():
    names = [d.split(">")[0].split("=")[0].split("<")[0].strip() for d in project()["dependencies"]]
    for heavy in ("torch", "fastapi", "uvicorn", "safetensors", "gguf", "transformers"):
        assert heavy not in names
    assert "jinja2" in names and "interegular" not in names
    extras = project()["optional-dependencies"]
    for extra in ("local", "server", "transformers", "all", "test"):
        assert extra in extras


def test_torch_is_a_range_that_includes_the_tested_version():
    packaging = pytest.importorskip("packaging.requirements")
    torch_req = next(r for r in project()["optional-dependencies"]["local"] if r.startswith("torch"))
    spec = packaging.Requirement(torch_req).specifier
    assert "==" not in str(spec), "torch must be a range so SGL fits a user's stack"
    assert spec.contains("2.13.0")


def test_py_typed_is_shipped():
    assert (SRC / "sgl" / "py.typed").is_file()


def test_public_names_have_types_for_type_checkers():
    """With py.typed a type checker reads the package's annotations: the names `sgl`
    imports lazily (`sgl.OpenAI`, `sgl.LocalModel`, ...) are imported under
    ``TYPE_CHECKING`` too, else they would be ``Any``; ``@sgl.function`` says it gives an
    `SglFunction`."""
    import ast
    import inspect

    import sgl

    tree = ast.parse((SRC / "sgl" / "__init__.py").read_text())
    typed = {alias.asname or alias.name for node in ast.walk(tree)
             if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
             for inner in node.body if isinstance(inner, ast.ImportFrom) for alias in inner.names}
    lazy = {name for name in sgl.__all__ if name not in vars(sgl)}
    assert lazy and lazy <= typed, lazy - typed
    assert "SglFunction" in str(inspect.signature(sgl.function).return_annotation)


def test_core_imports_without_torch_or_server_packages():
    r = run_without({"torch", "fastapi", "uvicorn", "safetensors", "gguf", "transformers"},
                    "import sgl, sgl.constrain, sgl.integrations, sys\n"
                    "import sgl.integrations.vllm, sgl.integrations.sglang\n"
                    "assert 'torch' not in sys.modules\nprint('ok')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.mark.parametrize(("code", "extra"), [
    ("import sgl; sgl.LocalModel", "sgl[local]"),
    ("import sgl.engine.llama", "sgl[local]"),
    ("import sgl.server.app", "sgl[server]"),
    ("import sgl.integrations.transformers", "sgl[transformers]"),
])
def test_missing_extra_names_the_pip_command(code, extra):
    r = run_without({"torch", "fastapi", "uvicorn", "safetensors", "gguf", "transformers"},
                    "from sgl import MissingExtraError\n"
                    f"try:\n    {code}\nexcept MissingExtraError as e:\n    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert f"pip install '{extra}'" in r.stdout


def test_sgl_serve_without_server_extra_is_a_clear_cli_error():
    r = run_without({"fastapi", "uvicorn"}, "import sys; from sgl.cli import main; sys.exit(main(['serve']))")
    assert r.returncode == 2
    assert "pip install 'sgl[server]'" in r.stderr
    assert "Traceback" not in r.stderr
