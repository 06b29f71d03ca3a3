"""SGLang's lifecycle objects, ``sgl.Runtime`` and ``sgl.Engine``, over a `LocalModel`.

SGLang's ``Runtime`` launches an HTTP server process and talks to it through
``runtime.endpoint``; here the model runs in this process, and ``endpoint`` is the
`LocalModel` itself. SGLang's server arguments map onto the local engine where it has
an equivalent; the ones that only tune a GPU server are accepted and have no effect
(listed in `IGNORED_SERVER_ARGS`); anything else is a TypeError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from sgl.backends.base import GenerateRequest
from sgl.backends.factory import torch_dtype
from sgl.backends.local import LocalModel
from sgl.types import ConstraintSpec, SamplingParams

# SGLang ServerArgs name -> LocalModel argument
SERVER_ARG_MAP = {
    "model_path": "path",
    "context_length": "max_context",
    "max_running_requests": "max_batch",
    "device": "device",
}
# GPU-server tuning with no local equivalent: accepted, without effect.
IGNORED_SERVER_ARGS = frozenset({
    "log_level", "log_level_http", "log_requests", "host", "port", "trust_remote_code",
    "mem_fraction_static", "random_seed", "disable_cuda_graph", "cuda_graph_max_bs",
    "attention_backend", "sampling_backend", "grammar_backend", "chunked_prefill_size",
    "enable_torch_compile", "tokenizer_mode", "revision", "served_model_name", "chat_template",
    "skip_server_warmup", "watchdog_timeout", "download_dir", "base_gpu_id", "kv_cache_dtype",
    "launch_timeout",
})
# What LocalModel itself takes, passed through unchanged.
LOCAL_MODEL_ARGS = frozenset({
    "path", "device", "dtype", "max_context", "max_batch", "kv_budget_mb", "prefix_cache",
    "jump_forward", "lazy_masks", "token_healing", "engine", "speculative", "speculative_k", "weights",
})


def local_model_kwargs(server_args: dict[str, Any]) -> dict[str, Any]:
    """LocalModel arguments from SGLang server arguments (and LocalModel's own)."""
    out: dict[str, Any] = {}
    unknown = []
    for key, value in server_args.items():
        if key in SERVER_ARG_MAP:
            out[SERVER_ARG_MAP[key]] = value
        elif key in LOCAL_MODEL_ARGS:
            out[key] = value
        elif key == "disable_radix_cache":
            out["prefix_cache"] = not value
        elif key in ("tp_size", "dp_size", "pp_size"):
            if int(value) != 1:
                raise ValueError(f"{key}={value}: the local engine runs on one device")
        elif key == "tokenizer_path":
            if value is not None and value != server_args.get("model_path"):
                raise ValueError("tokenizer_path must be the model's own folder (it holds tokenizer.json)")
        elif key not in IGNORED_SERVER_ARGS:
            unknown.append(key)
    if unknown:
        raise TypeError(f"unsupported Runtime/Engine argument(s): {', '.join(sorted(unknown))}")
    if isinstance(out.get("dtype"), str):
        out["dtype"] = torch_dtype(out["dtype"])
    return out


class Runtime:
    """A local model with SGLang's ``Runtime`` interface.

    ``sgl.set_default_backend(runtime)`` (or ``backend=runtime``) runs programs on
    ``runtime.endpoint``; ``runtime.shutdown()`` stops its engine thread.
    """

    def __init__(self, model_path: str | None = None, **kwargs: Any) -> None:
        self.endpoint = LocalModel(**local_model_kwargs({"model_path": model_path, **kwargs}))
        self.model_path = model_path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.endpoint!r})"

    def shutdown(self) -> None:
        """Stop the engine (requests still running end with an error)."""
        self.endpoint.shutdown()

    def cache_prefix(self, prefix: str) -> None:
        """Prefill ``prefix`` into the prefix cache."""
        self.endpoint.cache_prefix(prefix)

    def flush_cache(self, empty_cache: bool = True) -> bool:
        """Drop cached prefixes that no running request uses."""
        return self.endpoint.flush_cache(empty_cache)

    def get_server_info(self) -> dict[str, Any]:
        return self.endpoint.get_server_info()

    def get_tokenizer(self) -> Any:
        """The model's tokenizer as a transformers ``PreTrainedTokenizerFast``."""
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_object=self.endpoint.tokenizer)

    @property
    def token_usage(self) -> Any:
        return self.endpoint.token_usage

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


class Engine(Runtime):
    """SGLang's offline ``Engine``: ``generate(prompt, sampling_params)`` returns
    ``{"text": ..., "meta_info": {...}}`` (a list of them for a list of prompts)."""

    def generate(
        self,
        prompt: str | Sequence[str] | None = None,
        sampling_params: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        input_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        return_text_in_logprobs: bool = False,
        stream: bool = False,
    ) -> Any:
        """Generate for one prompt or a batch (they share the engine's batch)."""
        if input_ids is not None:
            if prompt is not None:
                raise ValueError("give prompt or input_ids, not both")
            single = bool(input_ids) and isinstance(input_ids[0], int)
            prompt = self.endpoint.decode_prompt(input_ids) if single else [
                self.endpoint.decode_prompt(ids) for ids in input_ids]
        if prompt is None:
            raise ValueError("generate needs a prompt")
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        params = sampling_params if isinstance(sampling_params, list | tuple) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} sampling_params for {len(prompts)} prompts")
        logprobs = dict(return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                        top_logprobs_num=top_logprobs_num or 0, return_text_in_logprobs=return_text_in_logprobs)
        counts = [_samples_per_prompt(sp) for sp in params]
        # n samples of a prompt are n requests in the same batch (as SGLang: outputs flat,
        # each prompt's n in a row); they share the prompt's prefix in the cache
        requests = [engine_request(p, {k: v for k, v in (sp or {}).items() if k != "n"},
                                   top_logprobs_num=logprobs["top_logprobs_num"], logprobs=return_logprob,
                                   logprob_start_len=logprob_start_len if return_logprob else None)
                    for p, sp, n in zip(prompts, params, counts, strict=True) for _ in range(n)]
        if stream:
            if len(requests) != 1:
                raise ValueError("stream=True takes one prompt and n=1")
            return self._stream(requests[0])
        results = self.endpoint.generate_batch(requests)
        outs = [self.endpoint.sglang_output(r, req, **logprobs) for r, req in zip(results, requests, strict=True)]
        return outs[0] if single and len(outs) == 1 else outs

    def _stream(self, request: GenerateRequest) -> Iterator[dict[str, Any]]:
        text = ""
        for delta in self.endpoint.generate_stream(request):
            text += delta
            yield {"text": text, "meta_info": {}}


SAMPLING_KEYS = {
    "max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens", "stop": "stop",
    "stop_token_ids": "stop_token_ids", "temperature": "temperature", "top_p": "top_p",
    "top_k": "top_k", "min_p": "min_p", "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty", "ignore_eos": "ignore_eos", "seed": "seed",
    "sampling_seed": "seed", "repetition_penalty": "repetition_penalty", "stop_regex": "stop_regex",
}
CONSTRAINT_KEYS = {"regex": "regex", "json_schema": "json_schema", "ebnf": "grammar"}
NEUTRAL_SAMPLING_KEYS = {"skip_special_tokens": True, "spaces_between_special_tokens": True,
                         "no_stop_trim": False}


def _samples_per_prompt(sampling_params: dict[str, Any] | None) -> int:
    """SGLang's ``n``: how many samples of one prompt (a positive integer)."""
    n = (sampling_params or {}).get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"sampling_params n must be a positive integer, got {n!r}")
    return n


def engine_request(prompt: str, sampling_params: dict[str, Any] | None, *, logprobs: bool = False,
                   top_logprobs_num: int = 0, logprob_start_len: int | None = None) -> GenerateRequest:
    """A GenerateRequest from SGLang's ``sampling_params`` dict."""
    params = SamplingParams(logprobs=logprobs, top_logprobs=top_logprobs_num, logprob_start_len=logprob_start_len)
    constraint = ConstraintSpec()
    for key, value in (sampling_params or {}).items():
        if value is None:
            continue
        if key in SAMPLING_KEYS:
            if key == "stop":
                value = (value,) if isinstance(value, str) else tuple(value)
            elif key in ("stop_token_ids", "stop_regex") and not isinstance(value, str):
                value = tuple(value)
            elif key == "top_k":
                value = max(0, int(value))  # SGLang spells "off" as -1
            setattr(params, SAMPLING_KEYS[key], value)
        elif key in CONSTRAINT_KEYS:
            setattr(constraint, CONSTRAINT_KEYS[key], value)
            if key == "ebnf":
                constraint.grammar_syntax = "ebnf"
        elif key in NEUTRAL_SAMPLING_KEYS:
            if value != NEUTRAL_SAMPLING_KEYS[key]:
                raise ValueError(f"sampling_params {key}={value!r} is not supported")
        else:
            raise ValueError(f"unknown sampling_params key {key!r}")
    params = dataclasses.replace(params)  # validate the values set above (ranges, finiteness)
    return GenerateRequest(prompt, params, None if constraint.is_empty() else constraint)
