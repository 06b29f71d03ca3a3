"""SGL's constraint engine inside vLLM (V1 engine).

Two ways in:

* **A custom logits processor** (vLLM >= 0.10.2, no patching): start vLLM with
  ``logits_processors=["sgl.integrations.vllm:SGLLogitsProcessor"]`` (offline ``LLM``)
  or ``vllm serve ... --logits-processors sgl.integrations.vllm:SGLLogitsProcessor``;
  a request opts in with ``SamplingParams(extra_args={"sgl_json_schema": schema})``
  (REST: ``"vllm_xargs": {"sgl_json_schema": "<schema as JSON text>"}``). Keys:
  ``sgl_json_schema`` (dict or JSON text), ``sgl_regex``, ``sgl_grammar`` (Lark, or GBNF
  when it has ``::=`` rules), ``sgl_choices`` (list or JSON text of one). vLLM does not
  run custom logits processors under speculative decoding.
* **A structured-output backend**: `SGLBackend` / `SGLGrammar` implement vLLM's
  ``StructuredOutputBackend`` / ``StructuredOutputGrammar`` (compile_grammar,
  allocate_token_bitmask; accept_tokens, validate_tokens, rollback, fill_bitmask,
  is_terminated, reset, find_jump_string), speculative tokens included. vLLM picks its
  backend from a fixed list of names, so `install` patches its ``StructuredOutputManager``
  to build an `SGLBackend` instead; it must run in the engine-core process (a vLLM
  ``vllm.general_plugins`` entry point, or ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).

vLLM is imported only by `install` and, when it is installed, for the base classes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgl.constrain import (
    ConstraintError,
    Matcher,
    Vocabulary,
    apply_bitmask,
    fill_next_token_bitmasks,
)
from sgl.integrations._common import EndTracking, compile_constraint
from sgl.types import guess_grammar_syntax

log = logging.getLogger(__name__)

try:  # subclass vLLM's interfaces when vLLM is there; the methods are the same without it
    from vllm.v1.sample.logits_processor import LogitsProcessor as _VllmLogitsProcessor
    from vllm.v1.structured_output.backend_types import (
        StructuredOutputBackend as _VllmBackend,
    )
    from vllm.v1.structured_output.backend_types import (
        StructuredOutputGrammar as _VllmGrammar,
    )
except ImportError:  # vLLM is not installed (or too old for V1)
    _VllmBackend = _VllmGrammar = _VllmLogitsProcessor = object  # type: ignore[assignment,misc]


# --------------------------------------------------------------------------- backend
class SGLGrammar(EndTracking, _VllmGrammar):  # type: ignore[misc,valid-type]
    """One request's constraint state, driven by vLLM's scheduler (see `EndTracking`)."""

    @property
    def num_processed_tokens(self) -> int:
        """Tokens accepted (and not rolled back)."""
        return len(self._ended) - 1

    def accept_tokens(self, request_id: str, tokens: Sequence[int]) -> bool:
        """Advance over ``tokens``; False at the first refused one (earlier ones stay).

        Tokens after the end (EOS accepted) are ignored, as vLLM expects.
        """
        for t in tokens:
            if self.is_terminated():
                return True
            if not self._take(int(t)):
                log.error("sgl: request %s: token %s refused by its constraint", request_id, t)
                return False
        return True

    def validate_tokens(self, tokens: Sequence[int]) -> list[int]:
        """The longest prefix of ``tokens`` the constraint accepts (state unchanged)."""
        if self.is_terminated():
            return []
        probe = self.matcher.copy()
        accepted: list[int] = []
        for t in tokens:
            if not probe.advance(int(t)):
                break
            accepted.append(int(t))
            if int(t) in self._eos:
                break
        return accepted

    def fill_bitmask(self, bitmask: Any, idx: int) -> None:
        """Write the allowed tokens into row ``idx`` of ``bitmask`` (int32 words)."""
        self.matcher.fill_bitmask(bitmask, idx)

    def reset(self) -> None:
        self.matcher.reset()
        self._ended = [False]

    # the text the constraint forces next (jump-forward), or None; older vLLM versions' name too
    find_jump_string = jump_forward_string = EndTracking.forced_text


def _setting(config: Any, *path: str, default: Any = None) -> Any:
    for name in path:
        config = getattr(config, name, None)
        if config is None:
            return default
    return config


def load_tokenizer(vllm_config: Any) -> Any:
    """The model's tokenizer: its ``tokenizer.json`` when local, else transformers'."""
    name = _setting(vllm_config, "model_config", "tokenizer") or _setting(vllm_config, "model_config", "model")
    if name is None:
        raise ValueError("vllm_config.model_config names no tokenizer")
    if (Path(name) / "tokenizer.json").is_file():
        return str(name)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        name, revision=_setting(vllm_config, "model_config", "tokenizer_revision"),
        trust_remote_code=bool(_setting(vllm_config, "model_config", "trust_remote_code", default=False)))


class SGLBackend(_VllmBackend):  # type: ignore[misc,valid-type]
    """vLLM's engine-level structured-output backend, over `sgl.constrain`.

    ``tokenizer``: the model's tokenizer (transformers, or a ``tokenizer.json`` path);
    ``vocab_size``: the model's logit count (may exceed the tokenizer's size).
    """

    def __init__(self, vllm_config: Any, tokenizer: Any, vocab_size: int) -> None:
        self.vllm_config, self.tokenizer, self.vocab_size = vllm_config, tokenizer, int(vocab_size)
        self.vocab = Vocabulary.from_tokenizer(tokenizer, self.vocab_size)
        self._vocabs: dict[frozenset[int], Vocabulary] = {}
        compact = _setting(vllm_config, "structured_outputs_config", "disable_any_whitespace", default=False)
        self.json_options = {"whitespace": "compact"} if compact else {}

    def _vocab_for(self, stop_token_ids: Any) -> Vocabulary:
        if not stop_token_ids:
            return self.vocab
        key = frozenset(int(t) for t in stop_token_ids)
        if key not in self._vocabs:
            self._vocabs[key] = Vocabulary.from_tokenizer(self.tokenizer, self.vocab_size,
                                                          eos_token_ids=sorted(key))
        return self._vocabs[key]

    def compile_grammar(self, request_type: Any, grammar_spec: str,
                        stop_token_ids: Any = None) -> SGLGrammar:
        """Compile one request's constraint; ``request_type`` is a ``StructuredOutputOptions``.

        Raises `ConstraintError` (a ``ValueError``) for a spec that does not compile
        and for structural tags, which SGL does not support.
        """
        kind = getattr(request_type, "name", str(request_type)).upper()
        name = {"JSON": "json_schema", "JSON_OBJECT": "json_schema", "REGEX": "regex", "GRAMMAR": "grammar",
                "CHOICE": "choices"}.get(kind)
        if name is None:
            raise ConstraintError(f"the SGL backend does not support {kind} requests")
        args = _args(name, {"type": "object"} if kind == "JSON_OBJECT" else grammar_spec)
        return SGLGrammar(compile_constraint(self._vocab_for(stop_token_ids), json_options=self.json_options, **args))

    def allocate_token_bitmask(self, max_num_seqs: int) -> Any:
        """A CPU int32 tensor ``(max_num_seqs, ceil(vocab_size / 32))``, all allowed."""
        import torch

        return torch.full((max_num_seqs, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)

    def destroy(self) -> None:
        self._vocabs.clear()


def _args(name: str, spec: Any, grammar_syntax: str | None = None) -> dict[str, Any]:
    """The `compile_constraint` arguments of ``spec`` given as its keyword ``name``: a
    grammar's syntax guessed (Lark, or GBNF with ``::=`` rules) unless said, choices
    read from JSON text."""
    if name == "grammar":
        return {"grammar": spec, "grammar_syntax": grammar_syntax or guess_grammar_syntax(spec)}
    return {name: _choices(spec) if name == "choices" else spec}


def _choices(spec: Any) -> list[str]:
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"choices must be a JSON list of strings: {e.msg}") from e
    if not isinstance(spec, list) or not all(isinstance(c, str) for c in spec):
        raise ConstraintError("choices must be a list of strings")
    return spec


def install() -> None:
    """Make vLLM's structured outputs use `SGLBackend` in this process.

    Wraps ``StructuredOutputManager.grammar_init`` so the manager's backend is an
    `SGLBackend` before vLLM would pick its own. Requests still pass vLLM's front-end
    validation of the backend they name. Call it where the engine core runs (a
    ``vllm.general_plugins`` entry point, or in-process with
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
    """
    from vllm.v1.structured_output import StructuredOutputManager

    original = StructuredOutputManager.grammar_init
    if getattr(original, "_sgl", False):
        return

    def grammar_init(self: Any, request: Any) -> None:
        if self.backend is None and getattr(request, "structured_output_request", None) is not None:
            vocab_size = self.vllm_config.model_config.get_vocab_size()
            self.backend = SGLBackend(self.vllm_config, tokenizer=self.tokenizer, vocab_size=vocab_size)
        original(self, request)

    grammar_init._sgl = True  # type: ignore[attr-defined]
    StructuredOutputManager.grammar_init = grammar_init


# --------------------------------------------------------------------------- logits processor
EXTRA_ARG_KEYS = ("sgl_json_schema", "sgl_regex", "sgl_grammar", "sgl_choices")


def constraint_args(extra_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `compile_constraint` arguments a request's ``extra_args`` ask for, or None."""
    if not extra_args:
        return None
    given = {k: extra_args[k] for k in EXTRA_ARG_KEYS if extra_args.get(k) is not None}
    if not given:
        return None
    if len(given) > 1:
        raise ConstraintError(f"give one of {', '.join(EXTRA_ARG_KEYS)}, not {', '.join(given)}")
    key, value = next(iter(given.items()))
    return _args(key.removeprefix("sgl_"), value, extra_args.get("sgl_grammar_syntax"))


@dataclass
class _Row:
    """One constrained request in vLLM's persistent batch."""

    matcher: Matcher
    output: list[int]  # vLLM's live list of the request's generated tokens
    seen: int = 0
    done: bool = False


class SGLLogitsProcessor(_VllmLogitsProcessor):  # type: ignore[misc,valid-type]
    """A vLLM V1 custom logits processor applying SGL constraints per request.

    Requests without ``sgl_*`` extra args are left alone. Each step, a constrained row's
    matcher takes the tokens generated since the last step, then its logits are masked;
    once EOS is accepted the row is left alone.
    """

    def __init__(self, vllm_config: Any, device: Any = None, is_pin_memory: bool = False) -> None:
        vocab_size = _setting(vllm_config, "model_config", "get_vocab_size")
        n_vocab = vocab_size() if callable(vocab_size) else None
        self.vocab = Vocabulary.from_tokenizer(load_tokenizer(vllm_config), n_vocab)
        self.rows: dict[int, _Row] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject a request whose ``sgl_*`` constraint does not compile (``ValueError``)."""
        args = constraint_args(getattr(sampling_params, "extra_args", None))
        if args is not None:
            compile_constraint(None, **args)  # text only: no vocabulary

    def is_argmax_invariant(self) -> bool:
        return False  # masking changes the greedy choice

    def update_state(self, batch_update: Any) -> None:
        """Follow vLLM's persistent batch: removed, then added, then moved requests."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            args = constraint_args(getattr(params, "extra_args", None))
            if args is None:
                self.rows.pop(index, None)
            else:
                compiled = compile_constraint(self.vocab, **args)
                self.rows[index] = _Row(Matcher(compiled), output)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if getattr(direction, "name", direction) == "SWAP" and row_b is not None:
                self.rows[a] = row_b

    def apply(self, logits: Any) -> Any:
        """Mask each constrained row of ``logits`` (batch, vocab) in place; returns it."""
        if not self.rows:
            return logits
        matchers: list[Matcher | None] = [None] * logits.shape[0]
        for index, row in self.rows.items():
            self._catch_up(index, row)
            if not row.done and index < len(matchers):
                matchers[index] = row.matcher
        if any(m is not None for m in matchers):
            from sgl.constrain import allocate_bitmask

            bitmask = allocate_bitmask(logits.shape[0], logits.shape[-1])
            fill_next_token_bitmasks(matchers, bitmask)
            apply_bitmask(logits, bitmask)
        return logits

    def _catch_up(self, index: int, row: _Row) -> None:
        eos = row.matcher.vocab.eos_token_ids
        while not row.done and row.seen < len(row.output):
            t = int(row.output[row.seen])
            row.seen += 1
            if not row.matcher.advance(t):
                # never raise inside the engine step: stop constraining this one request
                log.warning("sgl: batch row %d took token %d outside its constraint; "
                            "no longer constrained", index, t)
                row.done = True
            elif t in eos:
                row.done = True
