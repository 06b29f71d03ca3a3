"""One forward pass over a continuous batch whose KV lives in a `KVPool`.

Rows of a step differ: most decode one token, some prefill a prompt chunk or feed a
jump-forward run of forced tokens, each after a different number of cached tokens.
The matmuls run once over all new tokens of all rows, flattened (that is where the
time goes on a CPU, and batching them is the point of continuous batching). Only
attention is per group: every one-token row together in one padded call, each longer
row on its own (padding one long prefill to the width of the rest would waste more
than the extra call costs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kv_pool import KVPool
from .llama import Llama, _rotate, matmul


@dataclass
class RowInput:
    """New tokens of one sequence: ``tokens`` at positions ``start ..``, KV in ``blocks``."""

    tokens: list[int]
    start: int
    blocks: list[int]

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


@dataclass
class _Plan:
    """Index tensors of one step, shared by every layer."""

    ids: torch.Tensor  # [N] the new tokens, flattened
    write: torch.Tensor  # [N] their pool slots
    rope: torch.Tensor  # [N, 1, head_dim/2] complex
    last: torch.Tensor  # [rows] index of each row's last new token in the flat batch
    decode_idx: torch.Tensor | None  # [D] flat index of the one-token rows
    decode_slots: torch.Tensor | slice | None  # [D, L] slots of their whole context (padded)
    decode_mask: torch.Tensor | None  # [D, 1, 1, L] True = a real key
    extends: list[tuple[int, int, torch.Tensor | slice, torch.Tensor | None]]  # (flat start, T, slots, mask)


def _contiguous(slots: torch.Tensor) -> torch.Tensor | slice:
    """A slice when the slots are consecutive: then attention reads the pool in place
    instead of gathering a copy (a lone sequence's blocks usually are consecutive)."""
    first, n = int(slots[0]), slots.shape[0]
    if int(slots[-1]) - first == n - 1 and bool((slots.diff() == 1).all()):
        return slice(first, first + n)
    return slots


def plan_step(model: Llama, pool: KVPool, rows: list[RowInput]) -> _Plan:
    """Flatten ``rows`` and precompute every index the layers need."""
    device = model.device
    ids, write, pos, last = [], [], [], []
    decode_rows, extends = [], []
    offset = 0
    for row in rows:
        t = len(row.tokens)
        ids.extend(row.tokens)
        write.append(pool.slots(row.blocks, row.start, row.end))
        pos.append(torch.arange(row.start, row.end))
        if t == 1:
            decode_rows.append((offset, row))
        else:
            slots = _contiguous(pool.slots(row.blocks, 0, row.end).to(device))
            mask = None
            if row.start:  # causal, offset by the cached prefix
                key = torch.arange(row.end, device=device)
                query = torch.arange(row.start, row.end, device=device)
                mask = (key[None, :] <= query[:, None])[None, None]
            extends.append((offset, t, slots, mask))
        offset += t
        last.append(offset - 1)
    model._extend_rope(max(r.end for r in rows))
    positions = torch.cat(pos).to(device)
    plan = _Plan(
        ids=torch.tensor(ids, device=device), write=torch.cat(write).to(device),
        rope=model._rope[positions].unsqueeze(1), last=torch.tensor(last, device=device),
        decode_idx=None, decode_slots=None, decode_mask=None, extends=extends,
    )
    if len(decode_rows) == 1:  # a lone decode row: no padding, no mask
        offset, r = decode_rows[0]
        plan.decode_idx = torch.tensor([offset], device=device)
        plan.decode_slots = _contiguous(pool.slots(r.blocks, 0, r.end).to(device))
        if not isinstance(plan.decode_slots, slice):
            plan.decode_slots = plan.decode_slots[None]
    elif decode_rows:
        width = max(r.end for _, r in decode_rows)
        slots = torch.zeros(len(decode_rows), width, dtype=torch.long)
        mask = torch.zeros(len(decode_rows), width, dtype=torch.bool)
        for i, (_, r) in enumerate(decode_rows):
            slots[i, : r.end] = pool.slots(r.blocks, 0, r.end)
            mask[i, : r.end] = True
        plan.decode_idx = torch.tensor([o for o, _ in decode_rows], device=device)
        plan.decode_slots = slots.to(device)
        plan.decode_mask = mask.to(device)[:, None, None, :]
    return plan


def forward_rows(model: Llama, pool: KVPool, rows: list[RowInput]) -> torch.Tensor:
    """Run every row's new tokens, write their KV into the pool, return float32 logits
    ``[len(rows), vocab]`` at each row's last new token."""
    c = model.config
    plan = plan_step(model, pool, rows)
    n = plan.ids.shape[0]
    nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    group = nh // nkv
    eps = c.rms_norm_eps
    h = F.embedding(plan.ids, model.embed)  # [N, hidden]
    for i, lw in enumerate(model.layers):
        x = F.rms_norm(h, (c.hidden_size,), lw.norm_attn, eps)
        qkv = matmul(x, lw.qkv)
        if lw.qkv_bias is not None:
            qkv += lw.qkv_bias
        qkv = qkv.view(n, nh + 2 * nkv, hd)
        qk = _rotate(qkv[:, : nh + nkv], plan.rope)  # [N, nh + nkv, hd]
        k_pool, v_pool = pool.k[i], pool.v[i]  # [slots, nkv, hd]
        k_pool[plan.write] = qk[:, nh:]
        v_pool[plan.write] = qkv[:, nh + nkv:]
        attn = torch.empty(n, nh, hd, device=h.device, dtype=h.dtype)
        if plan.decode_idx is not None:
            d = plan.decode_idx.shape[0]
            # The query heads of one KV group attend as a "sequence" of `group` rows.
            q = qk[plan.decode_idx, :nh].reshape(d, nkv, group, hd)
            keys = _rows(k_pool, plan.decode_slots).transpose(1, 2)  # [D, nkv, L, hd]
            values = _rows(v_pool, plan.decode_slots).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=plan.decode_mask)
            attn[plan.decode_idx] = out.reshape(d, nh, hd)
        for start, t, slots, mask in plan.extends:
            q = qk[start:start + t, :nh].transpose(0, 1)[None]  # [1, nh, T, hd]
            keys = k_pool[slots].transpose(0, 1)[None]  # [1, nkv, L, hd]
            values = v_pool[slots].transpose(0, 1)[None]
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                 is_causal=mask is None, enable_gqa=True)
            attn[start:start + t] = out[0].transpose(0, 1)
        h = h + matmul(attn.reshape(n, nh * hd), lw.o)
        x = F.rms_norm(h, (c.hidden_size,), lw.norm_mlp, eps)
        gate, up = matmul(x, lw.gate_up).chunk(2, dim=-1)
        h = h + matmul(F.silu(gate) * up, lw.down)
    h = F.rms_norm(h[plan.last], (c.hidden_size,), model.norm, eps)
    return (h @ model.lm_head_t).float()


def _rows(layer_pool: torch.Tensor, slots: torch.Tensor | slice) -> torch.Tensor:
    """``[D, L, kv_heads, head_dim]`` keys or values at ``slots`` (a slice: one row, a view)."""
    return layer_pool[slots][None] if isinstance(slots, slice) else layer_pool[slots]
