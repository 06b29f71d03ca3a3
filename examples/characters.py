"""Generate N random characters as JSON, constrained by a JSON Schema, in one batch.

    python examples/characters.py --n 100 --out characters.jsonl

Every character is generated under the schema below (so it parses and validates by
construction), then the JSONL file is read back and re-validated with ``jsonschema``.
Each run of the program gets its own seed, so the characters differ even though they
share one prompt.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import jsonschema

import sgl
import sgl.backends.base

HAIR_COLORS = ["black", "brown", "blonde", "red", "auburn", "gray", "white", "bald"]
EYE_COLORS = ["brown", "blue", "green", "hazel", "gray", "amber"]

CHARACTER_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 40},
        "description": {"type": "string", "minLength": 10, "maxLength": 160},
        "metadata": {
            "type": "object",
            "properties": {
                "age": {"type": "integer", "minimum": 1, "maximum": 120},
                "height_cm": {"type": "integer", "minimum": 50, "maximum": 250},
                "weight_kg": {"type": "integer", "minimum": 5, "maximum": 300},
                "hair_color": {"enum": HAIR_COLORS},
                "eye_color": {"enum": EYE_COLORS},
            },
            "required": ["age", "height_cm", "weight_kg", "hair_color", "eye_color"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "description", "metadata"],
    "additionalProperties": False,
    # json.dumps' separators, no newlines (llguidance's spelling): a small model sampling
    # at temperature 0.9 can otherwise wander into long whitespace runs, and the keys
    # become longer forced runs that the engine appends without sampling (jump-forward).
    "x-guidance": {"whitespace_flexible": False},
    # numbers in their shortest plain spelling: an age comes out as 25, not 25.0 or 2.5e1
    # (JSON Schema counts both as integers; a reader of the output would not).
    "x-sgl": {"numbers": "canonical"},
}

# A nudge per character; the seed does the rest.
ROLES = [
    "blacksmith",
    "sailor",
    "healer",
    "thief",
    "scholar",
    "farmer",
    "knight",
    "merchant",
    "bard",
    "hunter",
]
PLACES = [
    "a mountain village",
    "a port city",
    "the desert",
    "a northern forest",
    "the capital",
    "an island",
]


@sgl.function
def character(s, role, place, seed):
    s += sgl.system("You write short character sheets for a fantasy story, as JSON.")
    s += sgl.user(
        f"Invent a {role} from {place}: a name, a one-sentence description, and their age, height, weight, hair and eye colour."
    )
    s += sgl.assistant(
        sgl.gen("character", max_tokens=256, json_schema=CHARACTER_SCHEMA, seed=seed)
    )


def batch_arguments(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"role": rng.choice(ROLES), "place": rng.choice(PLACES), "seed": seed * 100_003 + i}
        for i in range(n)
    ]


def write_results(states: list, items: list[dict], out: Path) -> None:
    with out.open("w", encoding="utf-8") as f:
        for i, (state, item) in enumerate(zip(states, items, strict=True)):
            record = {"id": i, **item, "character": None, "raw": None, "error": None}
            error = state.error()
            raw = state.get_var("character") if "character" in state else None
            record["raw"] = raw
            if error is not None:
                record["error"] = f"{type(error).__name__}: {error}"
            else:
                try:
                    record["character"] = json.loads(raw)
                except (TypeError, json.JSONDecodeError) as e:
                    record["error"] = f"not JSON: {e}"
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def revalidate(path: Path) -> tuple[int, int, list[str]]:
    """(valid, total, problems) from the JSONL file, checked with jsonschema."""
    validator = jsonschema.Draft202012Validator(CHARACTER_SCHEMA)
    valid, total, problems = 0, 0, []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        total += 1
        if record["character"] is None:
            problems.append(f"#{record['id']}: {record['error']}")
            continue
        errors = sorted(validator.iter_errors(record["character"]), key=lambda e: list(e.path))
        if errors:
            problems.append(f"#{record['id']}: {errors[0].message}")
        else:
            valid += 1
    return valid, total, problems


def main(argv: list[str] | None = None, backend: sgl.backends.base.Backend | None = None) -> int:
    """Run the example; ``backend`` overrides ``--model`` (tests pass a loaded model)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="how many characters (default 100)")
    parser.add_argument("--out", type=Path, default=Path("characters.jsonl"))
    parser.add_argument(
        "--model", help="model path for sgl.LocalModel (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument(
        "--seed", type=int, default=0, help="base seed; character i uses its own seed from it"
    )
    parser.add_argument("--threads", default="auto", help="run_batch threads")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    backend = backend or sgl.LocalModel(args.model)
    load_s = time.perf_counter() - t0
    items = batch_arguments(args.n, args.seed)
    threads = args.threads if args.threads == "auto" else int(args.threads)

    t1 = time.perf_counter()
    states = character.run_batch(
        items, backend=backend, temperature=args.temperature, num_threads=threads, progress_bar=True
    )
    gen_s = time.perf_counter() - t1
    write_results(states, items, args.out)

    valid, total, problems = revalidate(args.out)
    names = {
        json.loads(line)["character"]["name"]
        for line in args.out.read_text().splitlines()
        if json.loads(line)["character"]
    }
    tokens = sum((st.get_meta_info("character") or {}).get("completion_tokens", 0) for st in states)
    print(f"{valid}/{total} characters valid against the schema ({len(names)} distinct names)")
    print(
        f"model load {load_s:.1f} s, generation {gen_s:.1f} s ({total / gen_s:.2f} characters/s, {tokens / gen_s:.1f} tokens/s)"
    )
    print(f"wrote {args.out}")
    for problem in problems[:10]:
        print("  invalid", problem, file=sys.stderr)
    return 0 if valid == total else 1


if __name__ == "__main__":
    sys.exit(main())
