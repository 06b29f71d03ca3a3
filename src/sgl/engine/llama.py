"""A Llama-family decoder in plain torch, with its own KV cache.

Covers Llama 1-3, Mistral (full attention), Qwen2 (q/k/v bias) and SmolLM:
RMSNorm, rotary embeddings (``rope_theta``, linear and llama3 scaling), grouped-query
attention, SwiGLU MLP, tied or separate output embeddings.

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

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .architectures import check_architecture


@dataclass
class LlamaConfig:
    """The architecture hyper-parameters (a subset of Hugging Face's ``config.json``)."""

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

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> LlamaConfig:
        """Read a Hugging Face ``config.json`` dictionary.

        Raises ValueError for an architecture the engine does not implement
        (`sgl.engine.architectures`) or a config feature it would not reproduce exactly.
        """
        model_type = check_architecture(d)
        window = d.get("sliding_window")
        if model_type == "qwen2" and not d.get("use_sliding_window", False):
            window = None
        if window is not None and window < d.get("max_position_embeddings", 2048):
            raise ValueError(
                f"{model_type}: sliding-window attention (sliding_window={window}) is not supported yet")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported activation {d.get('hidden_act')!r} (expected silu)")
        heads = d["num_attention_heads"]
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        # transformers >= 5 writes rotary settings as one "rope_parameters" dictionary.
        rope = dict(d.get("rope_parameters") or {})
        theta = d.get("rope_theta", rope.pop("rope_theta", 10000.0))
        scaling = d.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            model_type=model_type,
        )


# ----------------------------------------------------------------------- KV cache


@dataclass
class KVCache:
    """Keys and values of a batch of sequences, preallocated.

    ``k`` and ``v`` have shape ``[layers, batch, kv_heads, capacity, head_dim]``; the
    first ``length`` positions are filled. Rows of a batch share ``length``: prompts of
    different lengths are left-padded and ``pad[b]`` tells how many leading positions
    of row ``b`` are padding (masked out of attention).

    A cache is owned by one sequence (or one padded batch). ``truncate(n)`` rolls back
    (speculative decoding, grammar backtracking); ``fork()`` copies the filled prefix
    (``s.fork()`` in programs); ``copy_prefix_from(other, n)`` takes another cache's
    first ``n`` positions, which is how a prefix cache hands over shared KV.
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0
    pad: torch.Tensor | None = None  # int64 [batch], None = no padding
    _mask_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def allocate(
        cls, config: LlamaConfig, capacity: int, batch: int = 1,
        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        """An empty cache for ``batch`` sequences of up to ``capacity`` tokens."""
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, capacity, config.head_dim)
        return cls(k=torch.empty(shape, device=device, dtype=dtype), v=torch.empty(shape, device=device, dtype=dtype))

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

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

    def truncate(self, n: int) -> None:
        """Forget every position from ``n`` on (the data stays, it is overwritten later)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self.length = n

    def fork(self, extra_capacity: int = 0) -> KVCache:
        """An independent copy of the filled prefix, with room for ``extra_capacity`` more."""
        out = KVCache.allocate_like(self, self.length + max(extra_capacity, 1))
        out.copy_prefix_from(self, self.length)
        out.pad = None if self.pad is None else self.pad.clone()
        return out

    @classmethod
    def allocate_like(cls, other: KVCache, capacity: int) -> KVCache:
        shape = (*other.k.shape[:3], capacity, other.k.shape[4])
        return cls(k=other.k.new_empty(shape), v=other.v.new_empty(shape))

    def copy_prefix_from(self, other: KVCache, n: int) -> None:
        """Make this cache hold ``other``'s first ``n`` positions (same batch size)."""
        self.ensure_capacity(n)
        self.k[:, :, :, :n] = other.k[:, :, :, :n]
        self.v[:, :, :, :n] = other.v[:, :, :, :n]
        self.length = n


# ------------------------------------------------------------------------ weights


@dataclass
class LayerWeights:
    norm_attn: torch.Tensor
    # Matrices are [in, out] float tensors (x @ w), or packed int4 (engine/int4.py).
    qkv: Any  # [hidden, (heads + 2 kv_heads) * head_dim]
    qkv_bias: torch.Tensor | None
    o: Any  # [heads * head_dim, hidden]
    norm_mlp: torch.Tensor
    gate_up: Any  # [hidden, 2 * intermediate]
    down: Any  # [intermediate, hidden]


def interleave_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from "rotate_half" halves to interleaved pairs.

    Row ``i`` of the first half and row ``i`` of the second half become rows ``2i`` and
    ``2i+1`` (what llama.cpp's converter does); works for weights and biases.
    """
    shape = w.shape
    return w.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def rope_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """Rotary inverse frequencies (float64), with linear or llama3 scaling applied."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in ("default", None):
        return inv
    if kind == "linear":
        return inv / scaling["factor"]
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
    raise ValueError(f"rope scaling {kind!r} is not supported (default, linear, llama3)")


class Llama:
    """The model: weights plus a forward pass that reads and extends a `KVCache`."""

    def __init__(self, config: LlamaConfig, state: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.weights = "float"  # "int4" once engine/int4.py packs the layer matrices
        c = config

        used: set[str] = set()

        def get(name: str) -> torch.Tensor:
            used.add(name)
            return state[name].to(device=self.device, dtype=dtype)

        def fused(names: list[str], heads: list[int | None]) -> torch.Tensor:
            used.update(names)
            return _fused_transposed([state[n] for n in names], heads, self.device, dtype)

        self.embed = get("model.embed_tokens.weight")  # [vocab, hidden]
        # Matrices are stored transposed ([in, out]): on CPU, x @ w streams w row by
        # row, which is markedly faster for one token than F.linear's [out, in] access.
        self.lm_head_t = fused(["lm_head.weight" if "lm_head.weight" in state else "model.embed_tokens.weight"], [None])
        self.norm = get("model.norm.weight")
        self.layers: list[LayerWeights] = []
        nh, nkv = c.num_attention_heads, c.num_key_value_heads
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            attn = [p + f"self_attn.{x}_proj." for x in "qkv"]
            bias = None
            if attn[0] + "bias" in state:
                bias = fused([a + "bias" for a in attn], [nh, nkv, None])[0]
            self.layers.append(LayerWeights(
                norm_attn=get(p + "input_layernorm.weight"),
                qkv=fused([a + "weight" for a in attn], [nh, nkv, None]),
                qkv_bias=bias,
                o=fused([p + "self_attn.o_proj.weight"], [None]),
                norm_mlp=get(p + "post_attention_layernorm.weight"),
                gate_up=fused([p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], [None, None]),
                down=fused([p + "mlp.down_proj.weight"], [None]),
            ))
        _check_all_used(state, used | {"lm_head.weight"})
        self._inv_freq = rope_inv_freq(c)
        self._rope = torch.empty(0, c.head_dim // 2, dtype=torch.complex64, device=self.device)
        self._extend_rope(min(c.max_position_embeddings, 4096))

    # -- loading

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

    def _extend_rope(self, n: int) -> None:
        """Make the rotary table cover positions ``0..n-1`` (cos + i sin, complex64)."""
        if n <= self._rope.shape[0]:
            return
        n = max(n, 2 * self._rope.shape[0])
        angles = torch.outer(torch.arange(n, dtype=torch.float64), self._inv_freq)
        self._rope = torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(self.device)

    # -- forward

    def new_cache(self, capacity: int, batch: int = 1, n_layers: int | None = None) -> KVCache:
        """An empty `KVCache` for this model (for its first ``n_layers`` layers only, if given)."""
        config = self.config
        if n_layers is not None:
            config = dataclasses.replace(config, num_hidden_layers=n_layers)
        return KVCache.allocate(config, capacity, batch=batch, device=self.device, dtype=self.dtype)

    def forward(self, input_ids: torch.Tensor, cache: KVCache, all_logits: bool = False,
                n_layers: int | None = None) -> torch.Tensor:
        """Run ``input_ids`` ([batch, T]) after the cache's content and append their KV.

        Returns float32 logits ``[batch, T, vocab]`` if ``all_logits`` else ``[batch, vocab]``
        for the last position only (the output projection is the costliest matmul).
        ``n_layers``: run only the first layers, then the final norm and output
        projection (an early-exit draft model; its cache needs only that many layers).
        """
        c = self.config
        bsz, t = input_ids.shape
        start = cache.length
        end = start + t
        cache.ensure_capacity(end)
        self._extend_rope(end)
        if cache.pad is None:
            rope = self._rope[start:end].view(1, t, 1, -1)
        else:
            pos = (torch.arange(start, end, device=self.device)[None, :] - cache.pad[:, None]).clamp_(min=0)
            rope = self._rope[pos].unsqueeze(2)
        mask = self._attention_mask(cache, start, t)

        h = F.embedding(input_ids, self.embed)
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        group = nh // nkv
        eps = c.rms_norm_eps
        for i, lw in enumerate(self.layers[:n_layers]):
            x = F.rms_norm(h, (c.hidden_size,), lw.norm_attn, eps)
            qkv = matmul(x, lw.qkv)
            if lw.qkv_bias is not None:
                qkv += lw.qkv_bias
            qkv = qkv.view(bsz, t, nh + 2 * nkv, hd)
            qk = _rotate(qkv[:, :, : nh + nkv], rope)  # [b, t, nh + nkv, hd]
            k_cache, v_cache = cache.k[i], cache.v[i]  # [b, nkv, cap, hd]
            k_cache[:, :, start:end] = qk[:, :, nh:].transpose(1, 2)
            v_cache[:, :, start:end] = qkv[:, :, nh + nkv :].transpose(1, 2)
            keys, values = k_cache[:, :, :end], v_cache[:, :, :end]
            if t == 1:
                # Decode: the query heads of one KV group attend as a "sequence" of
                # `group` rows, so no K/V repetition is needed.
                q = qk[:, 0, :nh].reshape(bsz, nkv, group, hd)
                attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            else:
                q = qk[:, :, :nh].transpose(1, 2)
                attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
                attn = attn.transpose(1, 2)
            h = h + matmul(attn.reshape(bsz, t, nh * hd), lw.o)
            x = F.rms_norm(h, (c.hidden_size,), lw.norm_mlp, eps)
            gate, up = matmul(x, lw.gate_up).chunk(2, dim=-1)
            h = h + matmul(F.silu(gate) * up, lw.down)
        cache.length = end
        if not all_logits:
            h = h[:, -1]
        h = F.rms_norm(h, (c.hidden_size,), self.norm, eps)
        return (h @ self.lm_head_t).float()

    def _attention_mask(self, cache: KVCache, start: int, t: int) -> torch.Tensor | None:
        """Boolean mask (True = may attend), or None when every cached key is visible."""
        end = start + t
        if t == 1 and cache.pad is None:
            return None
        key = torch.arange(end, device=self.device)
        query = torch.arange(start, end, device=self.device)
        mask = key[None, :] <= query[:, None]  # [t, end] causal, offset by the cache
        if cache.pad is None:
            return mask
        valid = key[None, :] >= cache.pad[:, None]  # [b, end]: real tokens, not padding
        # A padding query sees itself, so no row of the softmax is all -inf (NaN).
        mask = mask[None] & (valid[:, None, :] | (key[None, None, :] == query[None, :, None]))
        return mask.unsqueeze(1)  # [b, 1, t, end]


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
                      dtype: torch.dtype) -> torch.Tensor:
    """``cat(parts).t()`` as one contiguous ``[in, sum(out)]`` tensor, in one copy per part.

    Parts with a head count get their rows interleaved for rotary (`interleave_rotary`).
    1-D parts (biases) come back as ``[1, sum(out)]``.
    """
    parts = [p if p.dim() == 2 else p[:, None] for p in parts]
    out = torch.empty(parts[0].shape[1], sum(p.shape[0] for p in parts), device=device, dtype=dtype)
    col = 0
    for p, n_heads in zip(parts, heads, strict=True):
        rows = p.shape[0]
        dst = out[:, col : col + rows]
        if n_heads is None:
            dst.copy_(p.t())
        else:  # dst[:, h, j, r] = p[h, r, j, :]: pairs (first half, second half) side by side
            half = rows // n_heads // 2
            dst.view(-1, n_heads, half, 2).copy_(p.view(n_heads, 2, half, -1).permute(3, 0, 2, 1))
        col += rows
    return out


def matmul(x: torch.Tensor, w: Any) -> torch.Tensor:
    """``x @ w`` for a float matrix, or a packed one (`sgl.engine.int4.Int4Weight`)."""
    return x @ w if isinstance(w, torch.Tensor) else w.matmul(x)


def _rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on interleaved pairs: one complex multiplication."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rope).flatten(-2).to(x.dtype)
