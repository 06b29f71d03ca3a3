"""Fixtures of the SGLang-compatibility tests: the real packaged model, and a scripted
backend for behaviour a 135M model cannot be relied on to show."""

from __future__ import annotations

import functools

import pytest
from scripted import ScriptedBackend


@pytest.fixture(scope="session")
def model(local_model):
    """One SmolLM2-135M-Instruct LocalModel for every test that only reads from it."""
    return local_model


@pytest.fixture
def scripted():
    """The scripted backend's constructor; streams in chunks of 3 that readers see apart."""
    return functools.partial(ScriptedBackend, chunk=3, delay=0.01)
