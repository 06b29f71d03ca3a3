"""Decode speed of one stream: SGL's local engine vs transformers ``generate()``.

Both run the default model (SmolLM2-135M-Instruct, converted once to safetensors)
from the same folder, greedy, the same chat prompt, a fixed number of new tokens
(EOS suppressed on both sides with min_tokens / min_new_tokens), in the same process,
alternating runs so that both see the same machine load. Tokens/s counts the whole
request (prefill included); the median of ``--repeats`` runs is reported.

    python bench/tokens_per_second.py                   # float32, 128 tokens, 3 repeats
    python bench/tokens_per_second.py --dtype bfloat16 --no-transformers
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file or checkpoint folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--weights", default="auto", choices=["auto", "float"],
                    help="SGL's layer weights: auto = int4 packed from the Q4_1 GGUF (default), float = float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    ap.add_argument("--no-transformers", action="store_true", help="measure SGL only")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sgl.backends.base import GenerateRequest
    from sgl.backends.local import LocalModel
    from sgl.types import SamplingParams

    t0 = time.perf_counter()
    sgl_model = LocalModel(args.model, device=args.device, dtype=dtype, weights=args.weights)
    sgl_load = time.perf_counter() - t0
    user = sgl_model.role_text("user", PROMPT)
    prompt = user[0] + PROMPT + user[1] + sgl_model.role_text("assistant", "")[0]
    prompt_ids = sgl_model.encode(prompt)
    params = SamplingParams(max_tokens=args.tokens, min_tokens=args.tokens, temperature=0.0)

    def run_sgl() -> tuple[float, list[int]]:
        start = time.perf_counter()
        result = sgl_model.generate(GenerateRequest(prompt, params))
        return time.perf_counter() - start, result.token_ids

    hf, hf_load = None, None
    if not args.no_transformers:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError:
            print("transformers is not installed: measuring SGL only (pip install transformers)", file=sys.stderr)
        else:
            t0 = time.perf_counter()
            hf = AutoModelForCausalLM.from_pretrained(sgl_model.path, dtype=dtype).to(args.device).eval()
            hf_load = time.perf_counter() - t0

    def run_hf() -> tuple[float, list[int]]:
        ids = torch.tensor([prompt_ids], device=args.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,
                              min_new_tokens=args.tokens, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start, out[0, len(prompt_ids):].tolist()

    run_sgl()  # warm-up (first-call allocations, kernel selection), not timed
    if hf is not None:
        run_hf()
    sgl_times, hf_times, same = [], [], True
    for _ in range(args.repeats):
        dt, sgl_tokens = run_sgl()
        sgl_times.append(dt)
        if hf is not None:
            dt, hf_tokens = run_hf()
            hf_times.append(dt)
            same = same and hf_tokens == sgl_tokens
    sgl_tps = args.tokens / statistics.median(sgl_times)
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}", file=sys.stderr)
    print("| model | device | dtype | prompt tok | new tok | SGL tok/s | transformers tok/s | speed-up "
          "| SGL load s | transformers load s | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    name = os.path.basename(str(sgl_model.source))
    if hf is None:
        print(f"| {name} | {args.device} | {args.dtype}, {sgl_model.model.weights} layers | {len(prompt_ids)} | {args.tokens} | {sgl_tps:.1f} "
              f"| - | - | {sgl_load:.2f} | - | - |")
        return 0
    hf_tps = args.tokens / statistics.median(hf_times)
    print(f"| {name} | {args.device} | {args.dtype}, {sgl_model.model.weights} layers | {len(prompt_ids)} | {args.tokens} | {sgl_tps:.1f} "
          f"| {hf_tps:.1f} | {sgl_tps / hf_tps:.2f}x | {sgl_load:.2f} | {hf_load:.2f} | {'yes' if same else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
