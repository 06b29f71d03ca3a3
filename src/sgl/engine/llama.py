"""A decoder-only transformer in plain torch, with its own KV cache.

Covers the architectures in `sgl.engine.architectures` (docs/models.md): Llama 1-3 and
SmolLM, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text), Phi-3, OLMo 2. The base is Llama's:
RMSNorm, rotary embeddings (``rope_theta``, linear and llama3 scaling), grouped-query
attention, SwiGLU MLP, tied or separate output embeddings; `LlamaConfig` switches on
what the others add (q/k norms, sandwich or post norms, soft caps, sliding windows,
GELU, partial rotary, ...).

The forward pass is a plain function over tensors (no ``nn.Module`` call overhead):
a decode step at batch 1 is memory bound on a CPU, so each layer does few, large
operations: one fused q/k/v matmul, one fused gate/up matmul, rotary as one complex
multiply, the new keys/values written in place into a preallocated cache.

Rotary layout: checkpoints store q/k rows in Hugging Face's "rotate_half" order. At
load time we permute them to interleaved pairs (GGUF's order), so that rotating is a
single complex multiplication; attention scores are unchanged because q and k get the
same permutation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .architectures import check_architecture


@dataclass
class LlamaConfig:
    """The architecture hyper-parameters (a subset of Hugging Face's ``config.json``).

    The defaults describe Llama; the other fields switch on what the other supported
    architectures (`sgl.engine.architectures`) add to it.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    model_type: str = "llama"
    hidden_act: str = "silu"  # the MLP gate: "silu", "gelu_tanh" or "gelu"
    # Where the RMSNorms sit: "pre" (Llama: before attention and MLP), "sandwich"
    # (Gemma 2/3: also after each, before the residual add), "post" (OLMo 2: only after).
    norm_layout: str = "pre"
    norm_weight_offset: float = 0.0  # Gemma stores RMSNorm weights as w and scales by 1 + w
    embed_scale: float | None = None  # Gemma: embeddings times sqrt(hidden_size)
    qk_norm: str | None = None  # RMSNorm of q and k: "head" (Qwen3, Gemma 3) or "proj" (OLMo 2)
    attn_scale: float | None = None  # None: head_dim ** -0.5
    attn_softcap: float | None = None  # Gemma 2: scores = cap * tanh(scores / cap)
    final_softcap: float | None = None  # Gemma 2: the same on the output logits
    sliding_window: int | None = None  # a query sees this many keys (itself included) ...
    sliding_layers: tuple[bool, ...] = ()  # ... in the layers marked True
    rope_local_theta: float | None = None  # Gemma 3: rotary base of the sliding layers
    partial_rotary_factor: float = 1.0  # Phi-3 family: rotate only this part of each head

    @property
    def rotary_dim(self) -> int:
        """How many leading dimensions of each head are rotated."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` attends over a sliding window."""
        return self.sliding_window is not None and bool(self.sliding_layers) and self.sliding_layers[layer]

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> LlamaConfig:
        """Read a Hugging Face ``config.json`` dictionary.

        Raises ValueError for an architecture the engine does not implement
        (`sgl.engine.architectures`) or a config feature it would not reproduce exactly.
        """
        model_type = check_architecture(d)
        gemma = model_type in ("gemma2", "gemma3_text")
        heads = d["num_attention_heads"]
        layers = d["num_hidden_layers"]
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        theta, scaling, local_theta, partial = _rope_settings(d, model_type)
        window, sliding = _sliding_settings(d, model_type, layers)
        kw: dict[str, Any] = {}
        if gemma:
            if d.get("use_bidirectional_attention"):
                raise ValueError(f"{model_type}: use_bidirectional_attention is not supported")
            softcap = d.get("attn_logit_softcapping", 50.0 if model_type == "gemma2" else None)
            if model_type == "gemma3_text" and softcap is not None:
                # transformers' Gemma 3 ignores this setting; applying it or not would both be a guess
                raise ValueError("gemma3_text: attn_logit_softcapping is not supported")
            kw = dict(norm_layout="sandwich", norm_weight_offset=1.0, embed_scale=d["hidden_size"] ** 0.5,
                      attn_scale=d.get("query_pre_attn_scalar", 256) ** -0.5, attn_softcap=softcap,
                      final_softcap=d.get("final_logit_softcapping", 30.0 if model_type == "gemma2" else None),
                      qk_norm="head" if model_type == "gemma3_text" else None)
        elif model_type == "qwen3":
            kw = dict(qk_norm="head")
        elif model_type == "olmo2":
            kw = dict(norm_layout="post", qk_norm="proj")
        act = d.get("hidden_activation", "gelu_pytorch_tanh") if gemma else d.get("hidden_act", "silu")
        if act not in _ACTIVATIONS:
            raise ValueError(f"{model_type}: activation {act!r} is not supported (supported: {', '.join(_ACTIVATIONS)})")
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6 if gemma else 1e-5),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=(scaling or {}).get("original_max_position_embeddings")
            if _rope_kind(scaling) == "longrope" else d.get("max_position_embeddings", 2048),
            tie_word_embeddings=d.get("tie_word_embeddings", gemma),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            model_type=model_type,
            hidden_act=_ACTIVATIONS[act],
            sliding_window=window,
            sliding_layers=sliding,
            rope_local_theta=local_theta,
            partial_rotary_factor=partial,
            **kw,
        )


# config.json activation name -> ours (transformers' ACT2FN: "gelu" is the exact erf form)
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
_ROPE_TYPES = ("default", "linear", "llama3")


def _rope_kind(params: dict[str, Any] | None) -> str:
    params = params or {}
    return params.get("rope_type", params.get("type")) or "default"


def _rope_settings(d: dict[str, Any], model_type: str) -> tuple[float, dict | None, float | None, float]:
    """(theta, scaling, local theta, partial rotary factor) from either config layout:
    transformers >= 5 writes one ``rope_parameters`` dictionary (per layer type for
    Gemma 3), older files ``rope_theta`` + ``rope_scaling``."""
    params = dict(d.get("rope_parameters") or {})
    local_theta = None
    if model_type == "gemma3_text":
        if "full_attention" in params or "sliding_attention" in params:
            local = dict(params.get("sliding_attention") or {})
            params = dict(params.get("full_attention") or {})
        else:
            local = {"rope_theta": d.get("rope_local_base_freq", 10000.0)}
            params = dict(d.get("rope_scaling") or {}) | {"rope_theta": d.get("rope_theta", 1_000_000.0)}
        if _rope_kind(local) != "default":
            raise ValueError(f"gemma3_text: rope scaling {_rope_kind(local)!r} on sliding layers is not supported")
        local_theta = float(local.get("rope_theta", 10000.0))
    theta = float(d.get("rope_theta", params.pop("rope_theta", 10000.0)))
    partial = float(params.pop("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)))
    scaling = d.get("rope_scaling") if model_type != "gemma3_text" else None
    scaling = scaling or (params if _rope_kind(params) != "default" else None)
    if model_type == "phi3" and _rope_kind(scaling) in ("longrope", "su", "yarn"):  # transformers' Phi-3 names
        scaling = _phi3_longrope(d, scaling)
    elif _rope_kind(scaling) not in _ROPE_TYPES:
        raise ValueError(f"{model_type}: rope scaling {_rope_kind(scaling)!r} is not supported "
                         f"(supported: {', '.join(_ROPE_TYPES)}; longrope for phi3)")
    if partial != 1.0 and model_type != "phi3":
        raise ValueError(f"{model_type}: partial_rotary_factor={partial} is not supported (only for phi3)")
    return theta, scaling, local_theta, partial


def _phi3_longrope(d: dict[str, Any], scaling: dict[str, Any]) -> dict[str, Any]:
    """Phi-3's "longrope" rotary, in its short regime only.

    transformers switches the whole sequence to ``long_factor`` once it grows past
    ``original_max_position_embeddings`` (and drops the KV cache to recompute it);
    a KV cache cannot follow that, so the context is capped there (see ``from_hf``)
    and ``short_factor`` with its attention factor is always exact.
    """
    original = scaling.get("original_max_position_embeddings") or d.get("original_max_position_embeddings")
    if not original or "short_factor" not in scaling:
        raise ValueError("phi3: longrope without short_factor and original_max_position_embeddings "
                         "is not supported")
    factor = scaling.get("factor") or d.get("max_position_embeddings", 2048) / original
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {"rope_type": "longrope", "short_factor": list(scaling["short_factor"]),
            "original_max_position_embeddings": int(original), "attention_factor": float(attention)}


def _sliding_settings(d: dict[str, Any], model_type: str, layers: int) -> tuple[int | None, tuple[bool, ...]]:
    """The sliding window and which layers use it, by each architecture's rules in transformers."""
    window = d.get("sliding_window")
    if model_type in ("llama", "olmo2"):
        return None, ()  # these architectures have no sliding-window attention
    if model_type in ("mistral", "phi3"):  # one window for every layer, when set
        window = d.get("sliding_window", 4096 if model_type == "mistral" else None)
        return window, (True,) * layers if window is not None else ()
    if model_type in ("qwen2", "qwen3"):
        window = window if d.get("use_sliding_window", False) else None
        default = [i >= d.get("max_window_layers", 28) for i in range(layers)]
    elif model_type == "gemma2":
        window = d.get("sliding_window", 4096)
        default = [(i + 1) % 2 == 1 for i in range(layers)]
    else:  # gemma3_text: every sliding_window_pattern-th layer is global
        window = d.get("sliding_window", 4096)
        pattern = d.get("sliding_window_pattern", d.get("_sliding_window_pattern", 6))
        default = [(i + 1) % pattern != 0 for i in range(layers)]
    types = d.get("layer_types")
    if types is None:
        sliding = tuple(default)
    else:
        unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
        if unknown or len(types) != layers:
            raise ValueError(f"{model_type}: layer_types {unknown or types} are not supported "
                             "(full_attention, sliding_attention, one per layer)")
        sliding = tuple(t == "sliding_attention" for t in types)
    if window is None or not any(sliding):
        return None, ()
    return window, sliding


# ----------------------------------------------------------------------- KV cache


@dataclass
class KVCache:
    """Keys and values of one sequence, preallocated, contiguous (the engine's batch uses
    the paged `KVPool`; this cache serves reference forward passes).

    ``k`` and ``v`` have shape ``[layers, 1, kv_heads, capacity, head_dim]``; the first
    ``length`` positions are filled.
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @classmethod
    def allocate(cls, config: LlamaConfig, capacity: int, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> KVCache:
        """An empty cache for up to ``capacity`` tokens."""
        shape = (config.num_hidden_layers, 1, config.num_key_value_heads, capacity, config.head_dim)
        return cls(k=torch.empty(shape, device=device, dtype=dtype), v=torch.empty(shape, device=device, dtype=dtype))

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def ensure_capacity(self, n: int) -> None:
        """Grow (by doubling, copying the filled part) to hold at least ``n`` positions."""
        if n <= self.capacity:
            return
        new_cap = max(n, 2 * self.capacity)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_empty((*old.shape[:3], new_cap, old.shape[4]))
            new[:, :, :, : self.length] = old[:, :, :, : self.length]
            setattr(self, name, new)


# ------------------------------------------------------------------------ weights


@dataclass
class LayerWeights:
    norm_attn: torch.Tensor | None  # RMSNorm before attention (None: OLMo 2)
    # Matrices are [in, out] float tensors (x @ w), or packed int4 (engine/int4.py).
    qkv: Any  # [hidden, (heads + 2 kv_heads) * head_dim]
    qkv_bias: torch.Tensor | None
    o: Any  # [heads * head_dim, hidden]
    norm_mlp: torch.Tensor | None  # RMSNorm before the MLP (None: OLMo 2)
    gate_up: Any  # [hidden, 2 * intermediate]
    down: Any  # [intermediate, hidden]
    o_bias: torch.Tensor | None = None
    qk_norm: torch.Tensor | None = None  # per-head q/k RMSNorm weights, [heads + kv_heads, head_dim]
    q_norm: torch.Tensor | None = None  # RMSNorm over the whole q projection (OLMo 2)
    k_norm: torch.Tensor | None = None  # ... and the whole k projection
    norm_attn_out: torch.Tensor | None = None  # RMSNorm of the attention output (Gemma 2/3, OLMo 2)
    norm_mlp_out: torch.Tensor | None = None  # RMSNorm of the MLP output (Gemma 2/3, OLMo 2)
    sliding: bool = False  # attends over the config's sliding window only
    rope: int = 0  # which rotary table (Gemma 3's sliding layers have their own)


def interleave_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from "rotate_half" halves to interleaved pairs.

    Row ``i`` of the first half and row ``i`` of the second half become rows ``2i`` and
    ``2i+1`` (what llama.cpp's converter does); works for weights and biases.
    """
    shape = w.shape
    return w.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def rotary_rows(n_heads: int, head_dim: int, rotary_dim: int) -> torch.Tensor:
    """Row order that makes `interleave_rotary`'s pairs out of each head's first
    ``rotary_dim`` rows and leaves the rest (not rotated) in place: ``w[rotary_rows(...)]``."""
    half = rotary_dim // 2
    within = torch.arange(head_dim)
    within[:rotary_dim] = torch.stack([torch.arange(half), torch.arange(half) + half], 1).flatten()
    return (torch.arange(n_heads)[:, None] * head_dim + within).flatten()


def rope_inv_freq(config: LlamaConfig, local: bool = False) -> torch.Tensor:
    """Rotary inverse frequencies (float64), with linear or llama3 scaling applied.

    ``local``: those of the sliding layers when they have their own base (Gemma 3).
    """
    dim = config.rotary_dim
    theta = config.rope_local_theta if local else config.rope_theta
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = {} if local else config.rope_scaling or {}
    kind = _rope_kind(scaling)
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / scaling["factor"]
    if kind == "longrope":  # short regime only: the context is capped at its end
        short = torch.tensor(scaling["short_factor"], dtype=torch.float64)
        return 1.0 / (short * theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_ctx = scaling.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / inv
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        # Long wavelengths are slowed down by `factor`, short ones kept, the band between blended.
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv / factor + smooth * inv
        out = torch.where(wavelen > low_wavelen, inv / factor, inv)
        mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        return torch.where(mid, blended, out)
    raise ValueError(f"rope scaling {kind!r} is not supported ({', '.join(_ROPE_TYPES)})")


class Llama:
    """The model: weights plus a forward pass that reads and extends a `KVCache`.

    One decoder layer implementation (`layer`) serves every supported architecture and
    both forward passes: `forward` over a contiguous `KVCache` and
    `sgl.engine.paged_forward.forward_rows` over the paged pool; they differ only in the
    attention callback that stores the new keys/values and attends.
    """

    def __init__(self, config: LlamaConfig, state: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.weights = "float"  # "int4" once engine/int4.py packs the layer matrices
        c = config
        self._used: set[str] = set()
        self._state = state
        self.embed = self._get("model.embed_tokens.weight")  # [vocab, hidden]
        # Matrices are stored transposed ([in, out]): on CPU, x @ w streams w row by
        # row, which is markedly faster for one token than F.linear's [out, in] access.
        tied = c.tie_word_embeddings or "lm_head.weight" not in state
        self._used.add("lm_head.weight")  # a tied checkpoint may still carry a copy
        self.lm_head_t = self._fused([state["model.embed_tokens.weight" if tied else "lm_head.weight"]], [None])
        self.norm = self._norm_weight("model.norm.weight")
        self.layers = [self._load_layer(i) for i in range(c.num_hidden_layers)]
        _check_all_used(state, self._used)
        del self._state, self._used
        inv = [rope_inv_freq(c)] + ([rope_inv_freq(c, local=True)] if c.rope_local_theta is not None else [])
        self._inv_freqs = inv
        self._ropes = [torch.empty(0, c.head_dim // 2, dtype=torch.complex64, device=self.device) for _ in inv]
        self._extend_rope(min(c.max_position_embeddings, 4096))

    # -- loading

    def _take(self, name: str) -> torch.Tensor:
        self._used.add(name)
        return self._state[name]

    def _get(self, name: str) -> torch.Tensor:
        return self._take(name).to(device=self.device, dtype=self.dtype)

    def _norm_weight(self, name: str, rows: torch.Tensor | None = None) -> torch.Tensor:
        """An RMSNorm weight as used. Gemma's ``1 + w`` is added once here and kept in
        float32: transformers normalizes and scales in float32 and rounds once after."""
        offset = self.config.norm_weight_offset
        w = self._take(name).float() + offset
        return (w if rows is None else w[rows]).to(device=self.device, dtype=torch.float32 if offset else self.dtype)

    def _fused(self, parts: list[torch.Tensor], heads: list[int | None]) -> torch.Tensor:
        return _fused_transposed(parts, heads, self.device, self.dtype, self.config.rotary_dim)

    def _load_layer(self, i: int) -> LayerWeights:
        c = self.config
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        p = f"model.layers.{i}."
        a = p + "self_attn."
        state = self._state
        if a + "qkv_proj.weight" in state:  # Phi-3: q, k, v in one matrix
            qkv = list(self._take(a + "qkv_proj.weight").split([nh * hd, nkv * hd, nkv * hd]))
        else:
            qkv = [self._take(a + f"{x}_proj.weight") for x in "qkv"]
        bias = None
        if a + "q_proj.bias" in state:
            bias = self._fused([self._take(a + f"{x}_proj.bias") for x in "qkv"], [nh, nkv, None])[0]
        if p + "mlp.gate_up_proj.weight" in state:  # Phi-3: gate and up in one matrix
            gate_up = list(self._take(p + "mlp.gate_up_proj.weight").chunk(2, dim=0))
        else:
            gate_up = [self._take(p + "mlp.gate_proj.weight"), self._take(p + "mlp.up_proj.weight")]
        norms = {
            "pre": ("input_layernorm", "post_attention_layernorm", None, None),
            "sandwich": ("input_layernorm", "pre_feedforward_layernorm",
                         "post_attention_layernorm", "post_feedforward_layernorm"),
            "post": (None, None, "post_attention_layernorm", "post_feedforward_layernorm"),
        }[c.norm_layout]
        attn_in, mlp_in, attn_out, mlp_out = (None if n is None else self._norm_weight(p + n + ".weight")
                                              for n in norms)
        lw = LayerWeights(
            norm_attn=attn_in,
            qkv=self._fused(qkv, [nh, nkv, None]),
            qkv_bias=bias,
            o=self._fused([self._take(a + "o_proj.weight")], [None]),
            norm_mlp=mlp_in,
            gate_up=self._fused(gate_up, [None, None]),
            down=self._fused([self._take(p + "mlp.down_proj.weight")], [None]),
            o_bias=self._get(a + "o_proj.bias") if a + "o_proj.bias" in state else None,
            norm_attn_out=attn_out,
            norm_mlp_out=mlp_out,
            sliding=c.is_sliding(i),
            rope=1 if c.rope_local_theta is not None and c.sliding_layers and c.sliding_layers[i] else 0,
        )
        rot = c.rotary_dim
        if c.qk_norm == "head":  # one weight per head size, the same for every head
            q = self._norm_weight(a + "q_norm.weight", rotary_rows(1, hd, rot))
            k = self._norm_weight(a + "k_norm.weight", rotary_rows(1, hd, rot))
            lw.qk_norm = torch.cat([q.expand(nh, hd), k.expand(nkv, hd)])
        elif c.qk_norm == "proj":
            lw.q_norm = self._norm_weight(a + "q_norm.weight", rotary_rows(nh, hd, rot))
            lw.k_norm = self._norm_weight(a + "k_norm.weight", rotary_rows(nkv, hd, rot))
        return lw

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> Llama:
        """Load ``config.json`` and every ``*.safetensors`` file of a checkpoint folder."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = LlamaConfig.from_hf(json.loads((folder / "config.json").read_text()))
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {folder}")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return cls(config, state, device=device, dtype=dtype)

    # -- rotary

    def rotary(self, positions: torch.Tensor | slice, end: int) -> list[torch.Tensor]:
        """Rotary factors at ``positions`` (all below ``end``), one ``[N, head_dim/2]``
        complex tensor per rotary table: what `layer` takes as ``ropes`` (reshaped to
        broadcast), for the contiguous and the paged attention paths alike."""
        self._extend_rope(end)
        return [r[positions] for r in self._ropes]

    def _extend_rope(self, n: int) -> None:
        """Make the rotary tables cover positions ``0..n-1`` (cos + i sin, complex64).

        Dimensions past ``rotary_dim`` get a factor of 1: they are not rotated.
        """
        if n <= self._ropes[0].shape[0]:
            return
        if _rope_kind(self.config.rope_scaling) == "longrope" and n > self.config.max_position_embeddings:
            raise ValueError(f"longrope: {n} positions are past the exact range of "
                             f"{self.config.max_position_embeddings} (original_max_position_embeddings)")
        n = max(n, 2 * self._ropes[0].shape[0])
        half = self.config.head_dim // 2
        for j, inv in enumerate(self._inv_freqs):
            angles = torch.outer(torch.arange(n, dtype=torch.float64), inv)
            table = torch.ones(n, half, dtype=torch.complex128)
            # longrope scales cos and sin (so each rotated q and k) by its attention factor
            scale = (self.config.rope_scaling or {}).get("attention_factor", 1.0) if j == 0 else 1.0
            table[:, : inv.shape[0]] = torch.polar(torch.full_like(angles, scale), angles)
            self._ropes[j] = table.to(torch.complex64).to(self.device)

    # -- forward

    def new_cache(self, capacity: int) -> KVCache:
        """An empty `KVCache` for this model."""
        return KVCache.allocate(self.config, capacity, device=self.device, dtype=self.dtype)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """The input embeddings of token ids (Gemma's scaled by sqrt(hidden_size))."""
        h = F.embedding(ids, self.embed)
        if self.config.embed_scale is not None:
            h = h * torch.tensor(self.config.embed_scale, dtype=h.dtype, device=h.device)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 logits of final hidden states: last norm, output projection, soft cap."""
        c = self.config
        out = (_rms_norm(h, self.norm, c.rms_norm_eps) @ self.lm_head_t).float()
        if c.final_softcap is not None:
            out = torch.tanh(out / c.final_softcap) * c.final_softcap
        return out

    def layer(self, i: int, h: torch.Tensor, ropes: list[torch.Tensor], attend: AttendFn) -> torch.Tensor:
        """Decoder layer ``i`` on hidden states ``h`` ([..., hidden], any leading shape).

        ``ropes[j]``: rotary factors of the new tokens for table ``j``, broadcastable to
        ``[..., heads, head_dim/2]``. ``attend(i, lw, qk, v)`` gets the rotated queries and
        keys ``[..., heads + kv_heads, head_dim]`` and the values, stores the new keys and
        values wherever the caller keeps them, and returns ``[..., heads, head_dim]``.
        """
        c = self.config
        lw = self.layers[i]
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        eps = c.rms_norm_eps
        lead = h.shape[:-1]
        x = h if lw.norm_attn is None else _rms_norm(h, lw.norm_attn, eps)
        qkv = matmul(x, lw.qkv)
        if lw.qkv_bias is not None:
            qkv += lw.qkv_bias
        if lw.q_norm is not None:  # OLMo 2: over the whole q and k projections
            q = _rms_norm(qkv[..., : nh * hd], lw.q_norm, eps)
            k = _rms_norm(qkv[..., nh * hd : (nh + nkv) * hd], lw.k_norm, eps)
            qk = torch.cat([q, k], dim=-1).view(*lead, nh + nkv, hd)
        qkv = qkv.view(*lead, nh + 2 * nkv, hd)
        if lw.q_norm is None:
            qk = qkv[..., : nh + nkv, :]
            if lw.qk_norm is not None:  # Qwen3, Gemma 3: each head on its own
                qk = (F.rms_norm(qk.to(lw.qk_norm.dtype), (hd,), None, eps) * lw.qk_norm).to(qkv.dtype)
        qk = _rotate(qk, ropes[lw.rope])
        out = matmul(attend(i, lw, qk, qkv[..., nh + nkv :, :]).reshape(*lead, nh * hd), lw.o)
        if lw.o_bias is not None:
            out += lw.o_bias
        if lw.norm_attn_out is not None:
            out = _rms_norm(out, lw.norm_attn_out, eps)
        h = h + out
        x = h if lw.norm_mlp is None else _rms_norm(h, lw.norm_mlp, eps)
        gate, up = matmul(x, lw.gate_up).chunk(2, dim=-1)
        out = matmul(_activate(c.hidden_act, gate) * up, lw.down)
        if lw.norm_mlp_out is not None:
            out = _rms_norm(out, lw.norm_mlp_out, eps)
        return h + out

    def forward(self, input_ids: torch.Tensor, cache: KVCache, all_logits: bool = False) -> torch.Tensor:
        """Run ``input_ids`` ([batch, T]) after the cache's content and append their KV.

        Returns float32 logits ``[batch, T, vocab]`` if ``all_logits`` else ``[batch, vocab]``
        for the last position only (the output projection is the costliest matmul).
        """
        c = self.config
        bsz, t = input_ids.shape
        start = cache.length
        end = start + t
        cache.ensure_capacity(end)
        ropes = [r.view(1, t, 1, -1) for r in self.rotary(slice(start, end), end)]
        masks = {False: self._attention_mask(start, t)}
        if c.sliding_window is not None:
            masks[True] = self._attention_mask(start, t, c.sliding_window)
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        group = nh // nkv

        def attend(i: int, lw: LayerWeights, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k_cache, v_cache = cache.k[i], cache.v[i]  # [b, nkv, cap, hd]
            k_cache[:, :, start:end] = qk[:, :, nh:].transpose(1, 2)
            v_cache[:, :, start:end] = v.transpose(1, 2)
            keys, values = k_cache[:, :, :end], v_cache[:, :, :end]
            mask = masks[lw.sliding]
            if t == 1:
                # Decode: the query heads of one KV group attend as a "sequence" of
                # `group` rows, so no K/V repetition is needed.
                q = qk[:, 0, :nh].reshape(bsz, nkv, group, hd)
                return attention(q, keys, values, mask, c).reshape(bsz, 1, nh, hd)
            return attention(qk[:, :, :nh].transpose(1, 2), keys, values, mask, c).transpose(1, 2)

        h = self.embed_tokens(input_ids)
        for i in range(len(self.layers)):
            h = self.layer(i, h, ropes, attend)
        cache.length = end
        if not all_logits:
            h = h[:, -1]
        return self.logits(h)

    def _attention_mask(self, start: int, t: int, window: int | None = None) -> torch.Tensor | None:
        """Boolean mask (True = may attend), or None when every cached key is visible.

        ``window``: a query sees only the last ``window`` positions, itself included.
        """
        end = start + t
        if t == 1 and (window is None or end <= window):
            return None
        key = torch.arange(end, device=self.device)
        query = torch.arange(start, end, device=self.device)
        mask = key[None, :] <= query[:, None]  # [t, end] causal, offset by the cache
        if window is not None:
            mask &= key[None, :] > query[:, None] - window
        return mask


AttendFn = Callable[[int, LayerWeights, torch.Tensor, torch.Tensor], torch.Tensor]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, config: LlamaConfig,
              is_causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention with the model's scale and soft cap.

    ``q`` [..., heads, T, hd]; ``k``, ``v`` [..., kv_heads, L, hd] (grouped heads are
    repeated); ``mask`` boolean, broadcastable to [..., T, L], True = may attend;
    ``is_causal`` (no mask): causal with T == L.
    """
    gqa = q.shape[-3] != k.shape[-3]
    cap = config.attn_softcap
    if cap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                              scale=config.attn_scale, enable_gqa=gqa)
    # Soft-capping the scores (Gemma 2) is not something SDPA does: the plain way.
    if gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scale = config.attn_scale if config.attn_scale is not None else q.shape[-1] ** -0.5
    scores = torch.tanh((q @ k.transpose(-1, -2)) * scale / cap) * cap
    if is_causal:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension; with a float32 weight on lower-precision
    activations (Gemma), computed in float32 and rounded once."""
    if w.dtype == x.dtype:
        return F.rms_norm(x, (w.shape[-1],), w, eps)
    return F.rms_norm(x.float(), (w.shape[-1],), w, eps).to(x.dtype)


def _activate(kind: str, x: torch.Tensor) -> torch.Tensor:
    if kind == "silu":
        return F.silu(x)
    return F.gelu(x, approximate="tanh" if kind == "gelu_tanh" else "none")


def _check_all_used(state: dict[str, torch.Tensor], used: set[str]) -> None:
    """Refuse a checkpoint with tensors the forward pass would not read (a bias, a norm):
    dropping them silently would give wrong logits."""
    unused = sorted(k for k in state if k not in used and not k.endswith("rotary_emb.inv_freq"))
    if unused:
        more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
        raise ValueError(
            f"the checkpoint has tensors the local engine does not use ({', '.join(unused[:3])}{more}): "
            "this architecture or configuration is not supported exactly")


def _fused_transposed(parts: list[torch.Tensor], heads: list[int | None], device: torch.device,
                      dtype: torch.dtype, rotary_dim: int | None = None) -> torch.Tensor:
    """``cat(parts).t()`` as one contiguous ``[in, sum(out)]`` tensor.

    Parts with a head count get each head's first ``rotary_dim`` rows (all, if None)
    interleaved for rotary (`rotary_rows`). 1-D parts (biases) come back as ``[1, sum(out)]``.
    """
    parts = [p if p.dim() == 2 else p[:, None] for p in parts]
    out = torch.empty(parts[0].shape[1], sum(p.shape[0] for p in parts), device=device, dtype=dtype)
    col = 0
    for p, n_heads in zip(parts, heads, strict=True):
        rows = p.shape[0]
        if n_heads is not None:
            head_dim = rows // n_heads
            p = p[rotary_rows(n_heads, head_dim, rotary_dim or head_dim)]
        out[:, col : col + rows].copy_(p.t())
        col += rows
    return out


def matmul(x: torch.Tensor, w: Any) -> torch.Tensor:
    """``x @ w`` for a float matrix, or a packed one (`sgl.engine.int4.Int4Weight`)."""
    return x @ w if isinstance(w, torch.Tensor) else w.matmul(x)


def _rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved pairs: one complex multiplication."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rope).flatten(-2).to(x.dtype)
