"""``pytest -m "not model"`` leaves out every test that loads the packaged model (issue 10,
item 8): those that ask for it only through a fixture of their own (a server process
with the default model, a ``LocalModel`` built from the packaged folder, the README's
transformers snippet) are marked too, because those fixtures ask for ``model_package``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# test file -> tests in it that load the packaged model (all of them: "*")
LOADS_THE_MODEL = {
    "test_server_real.py": "*",
    "test_server_hardening.py": {"test_huge_number_bound_is_refused_at_the_budget_or_followed",
                                 "test_schema_with_1000_properties_is_fine"},
    "test_server.py": {"test_model_flags_reach_the_engine"},
    "test_readme_integrations.py": {"test_transformers_snippet_runs_and_prints_valid_json",
                                    "test_transformers_example_prints_valid_characters"},
}
MODEL_FREE = {"test_server_hardening.py": {"test_sampling_params_tiny_temperature_is_greedy"},
              "test_readme_integrations.py": {"test_vllm_and_sglang_snippets_name_real_entry_points"}}


def collected(marker: str) -> set[str]:
    """``file::test`` ids (parameters dropped) that ``-m marker`` selects in these files."""
    files = sorted(set(LOADS_THE_MODEL) | set(MODEL_FREE))
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-m", marker, *files], cwd=TESTS, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), timeout=300)
    return {line.split("[")[0].removeprefix("tests/") for line in out.stdout.splitlines() if "::" in line}


def test_model_loading_tests_are_left_out_of_not_model():
    free = collected("not model")
    for file, names in LOADS_THE_MODEL.items():
        wrong = {t for t in free if t.startswith(file + "::") and (names == "*" or t.split("::")[-1] in names)}
        assert not wrong, f"loads the model but is not marked 'model': {sorted(wrong)}"
    for file, names in MODEL_FREE.items():
        assert {f"{file}::{n}" for n in names} <= free  # the model-free tests stay in
