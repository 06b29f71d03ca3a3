"""4-bit weights straight from a GGUF file: the layer matrices stay packed in memory.

A decode step on a CPU is bound by how many weight bytes it reads. The default model
ships as a Q4_1 GGUF (each block of 32 weights: ``w = d * q + m``, q in 0..15), so
instead of dequantizing to float32 (8 times the bytes) the layer matrices are
re-packed for torch's int4 matmul kernel, whose dequantization ``(q - 8) * scale +
zero`` gives exactly the same values with ``scale = d`` and ``zero = m + 8 d``. The
kernel takes bfloat16 activations and scales, so this changes the numbers slightly
(bfloat16 rounding), not the weights; ``LocalModel(weights="float32")`` keeps the
exact float32 path.

The embedding / output matrix (Q8_0 in that file) and the norms stay float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

GROUP = 32  # GGUF's Q4_0 / Q4_1 block size, in weights
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20}  # fp16 scale (+ fp16 min), then 16 bytes of nibbles
_LAYER_MATRICES = {  # Llama's fused matrix -> the GGUF tensors it is made of, in order
    "qkv": ("attn_q", "attn_k", "attn_v"),
    "o": ("attn_output",),
    "gate_up": ("ffn_gate", "ffn_up"),
    "down": ("ffn_down",),
}


@dataclass
class Int4Weight:
    """A ``[in, out]`` matrix packed for ``torch.ops.aten._weight_int4pack_mm_for_cpu``."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor  # bfloat16 [in / GROUP, out, 2]
    n_in: int
    n_out: int

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W`` for ``x`` of shape ``[..., in]``, in ``x``'s dtype."""
        flat = x.reshape(-1, self.n_in).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_zeros)
        return y.to(x.dtype).view(*x.shape[:-1], self.n_out)


def int4_available() -> bool:
    """Does this torch build have the CPU int4 kernels?"""
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


def q4_blocks(tensor: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q [rows, cols] uint8, scale [rows, cols/32], zero [rows, cols/32]) of a Q4_0 / Q4_1 tensor,
    in the kernel's ``(q - 8) * scale + zero`` form (float32)."""
    kind = tensor.tensor_type.name
    raw = np.asarray(tensor.data, dtype=np.uint8)
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, _BLOCK_BYTES[kind])
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if kind == "Q4_1":
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = blocks[..., 4:]
        zero = m + 8.0 * d  # d*q + m == d*(q-8) + (m + 8d)
    else:
        qs = blocks[..., 2:]
        zero = np.zeros_like(d)  # d*(q-8)
    # ggml packs element j in the low nibble of byte j and element j+16 in its high nibble
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, -1)
    return q, d, zero


def _pack(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Int4Weight:
    q, scale, zero = (np.concatenate(column) for column in zip(*parts, strict=True))
    n_out, n_in = q.shape
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(q.astype(np.int32)), 1)
    sz = torch.from_numpy(np.stack([scale.T, zero.T], axis=-1)).to(torch.bfloat16).contiguous()
    return Int4Weight(packed=packed, scales_zeros=sz, n_in=n_in, n_out=n_out)


def gguf_int4_layers(gguf_path: str | Path, n_layers: int) -> list[dict[str, Int4Weight]] | None:
    """Packed int4 layer matrices of a Llama-architecture Q4_0/Q4_1 GGUF file, or None
    when the file is anything else (another architecture or quantization)."""
    from gguf import GGUFReader

    if not int4_available():
        return None
    reader = GGUFReader(str(gguf_path))
    arch = reader.fields.get("general.architecture")
    arch_name = bytes(arch.parts[arch.data[0]]).decode() if arch is not None else ""
    if arch_name != "llama":  # other architectures store q/k rows in another order
        return None
    tensors = {t.name: t for t in reader.tensors}
    layers = []
    for i in range(n_layers):
        layer = {}
        for fused, names in _LAYER_MATRICES.items():
            parts = [tensors.get(f"blk.{i}.{n}.weight") for n in names]
            if any(t is None or t.tensor_type.name not in _BLOCK_BYTES for t in parts):
                return None
            layer[fused] = _pack([q4_blocks(t) for t in parts])
        layers.append(layer)
    return layers


def use_int4_weights(model: Any, gguf_path: str | Path, cache: str | Path | None = None) -> bool:
    """Swap ``model``'s layer matrices for packed int4 ones read from ``gguf_path``.

    Returns False (and changes nothing) when the file does not allow it. Only for the
    CPU, where torch has these kernels; the Llama q/k rows of a GGUF file are already in
    the interleaved order the model uses. ``cache``: a file to keep the packed matrices
    in (packing takes seconds; loading them back, a fraction of one).
    """
    if model.device.type != "cpu" or not int4_available():
        return False
    layers = _load_cache(cache)
    if layers is None:
        layers = gguf_int4_layers(gguf_path, model.config.num_hidden_layers)
        if layers is None:
            return False
        _save_cache(cache, layers)
    for lw, packed in zip(model.layers, layers, strict=True):
        lw.qkv, lw.o, lw.gate_up, lw.down = packed["qkv"], packed["o"], packed["gate_up"], packed["down"]
    model.weights = "int4"
    return True


def _load_cache(path: str | Path | None) -> list[dict[str, Int4Weight]] | None:
    if path is None or not Path(path).exists():
        return None
    try:
        data = torch.load(path, weights_only=True)
        return [{k: Int4Weight(*v[:2], int(v[2]), int(v[3])) for k, v in layer.items()} for layer in data]
    except Exception:  # noqa: BLE001 - a stale or broken cache is rebuilt
        return None


def _save_cache(path: str | Path | None, layers: list[dict[str, Int4Weight]]) -> None:
    if path is None:
        return
    data = [{k: (w.packed, w.scales_zeros, w.n_in, w.n_out) for k, w in layer.items()} for layer in layers]
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    try:
        torch.save(data, tmp)
        tmp.replace(path)  # atomic: a reader never sees half a file
    except OSError:
        tmp.unlink(missing_ok=True)
