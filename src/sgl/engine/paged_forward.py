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

from .kv_pool import KVPool
from .llama import LayerWeights, Llama, attention


@dataclass
class RowInput:
    """New tokens of one sequence: ``tokens`` at positions ``start ..``, KV in ``blocks``.

    ``logits_tail``: `forward_rows` also sets ``logits`` to the logits at the last
    ``logits_tail`` new tokens (``[logits_tail, vocab]``, float32): a prompt whose tokens
    are scored, or a pending token and the drafts after it (speculative decoding).
    """

    tokens: list[int]
    start: int
    blocks: list[int]
    logits_tail: int = 0
    logits: torch.Tensor | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


@dataclass
class _Plan:
    """Index tensors of one step, shared by every layer."""

    ids: torch.Tensor  # [N] the new tokens, flattened
    write: torch.Tensor  # [N] their pool slots
    ropes: list[torch.Tensor]  # per rotary table: [N, 1, head_dim/2] complex
    last: torch.Tensor  # [rows] index of each row's last new token in the flat batch
    decode_idx: torch.Tensor | None  # [D] flat index of the one-token rows
    decode_slots: torch.Tensor | slice | None  # [D, L] slots of their whole context (padded)
    # By layer kind (False: full attention, True: sliding window): [D, 1, 1, L] True = may attend
    decode_mask: dict[bool, torch.Tensor | None]
    # (flat start, T, slots, mask by layer kind; a None mask: plain causal)
    extends: list[tuple[int, int, torch.Tensor | slice, dict[bool, torch.Tensor | None]]]


def _contiguous(slots: torch.Tensor) -> torch.Tensor | slice:
    """A slice when the slots are consecutive: then attention reads the pool in place
    instead of gathering a copy (a lone sequence's blocks usually are consecutive)."""
    first, n = int(slots[0]), slots.shape[0]
    if int(slots[-1]) - first == n - 1 and bool((slots.diff() == 1).all()):
        return slice(first, first + n)
    return slots


def _extend_masks(row: RowInput, window: int | None, device: torch.device) -> dict[bool, torch.Tensor | None]:
    """Masks of a row of several new tokens after ``row.start`` cached ones."""
    key = torch.arange(row.end, device=device)
    query = torch.arange(row.start, row.end, device=device)
    causal = key[None, :] <= query[:, None]
    masks = {False: causal[None, None] if row.start else None}  # None: SDPA's own causal mask
    if window is not None:
        masks[True] = (causal & (key[None, :] > query[:, None] - window))[None, None] if row.end > window \
            else masks[False]
    return masks


def plan_step(model: Llama, pool: KVPool, rows: list[RowInput]) -> _Plan:
    """Flatten ``rows`` and precompute every index the layers need."""
    device = model.device
    window = model.config.sliding_window
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
            extends.append((offset, t, slots, _extend_masks(row, window, device)))
        offset += t
        last.append(offset - 1)
    positions = torch.cat(pos).to(device)
    plan = _Plan(
        ids=torch.tensor(ids, device=device), write=torch.cat(write).to(device),
        ropes=[f.unsqueeze(1) for f in model.rotary(positions, max(row.end for row in rows))],
        last=torch.tensor(last, device=device),
        decode_idx=None, decode_slots=None, decode_mask={False: None, True: None}, extends=extends,
    )
    if not decode_rows:
        return plan
    plan.decode_idx = torch.tensor([o for o, _ in decode_rows], device=device)
    if len(decode_rows) == 1:  # a lone decode row: no padding
        r = decode_rows[0][1]
        plan.decode_slots = _contiguous(pool.slots(r.blocks, 0, r.end).to(device))
        if not isinstance(plan.decode_slots, slice):
            plan.decode_slots = plan.decode_slots[None]
    else:
        width = max(r.end for _, r in decode_rows)
        slots = torch.zeros(len(decode_rows), width, dtype=torch.long)
        for i, (_, r) in enumerate(decode_rows):
            slots[i, : r.end] = pool.slots(r.blocks, 0, r.end)
        plan.decode_slots = slots.to(device)
    ends = torch.tensor([r.end for _, r in decode_rows], device=device)[:, None]
    key = torch.arange(max(r.end for _, r in decode_rows), device=device)[None, :]
    if len(decode_rows) > 1:
        plan.decode_mask[False] = (key < ends)[:, None, None, :]
    plan.decode_mask[True] = plan.decode_mask[False]
    if window is not None and int(ends.max()) > window:
        plan.decode_mask[True] = ((key < ends) & (key >= ends - window))[:, None, None, :]
    return plan


def forward_rows(model: Llama, pool: KVPool, rows: list[RowInput], n_layers: int | None = None) -> torch.Tensor:
    """Run every row's new tokens, write their KV into the pool, return float32 logits
    ``[len(rows), vocab]`` at each row's last new token (and every token's, in
    ``row.logits``, for rows with ``logits_tail``). ``n_layers``: only the first layers
    run (an early-exit drafter; its pool holds that many layers)."""
    c = model.config
    plan = plan_step(model, pool, rows)
    n = plan.ids.shape[0]
    nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    group = nh // nkv

    def attend(i: int, lw: LayerWeights, qk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k_pool, v_pool = pool.k[i], pool.v[i]  # [slots, nkv, hd]
        k_pool[plan.write] = qk[:, nh:]
        v_pool[plan.write] = v
        attn = torch.empty(n, nh, hd, device=qk.device, dtype=qk.dtype)
        if plan.decode_idx is not None:
            d = plan.decode_idx.shape[0]
            # The query heads of one KV group attend as a "sequence" of `group` rows.
            q = qk[plan.decode_idx, :nh].reshape(d, nkv, group, hd)
            keys = _rows(k_pool, plan.decode_slots).transpose(1, 2)  # [D, nkv, L, hd]
            values = _rows(v_pool, plan.decode_slots).transpose(1, 2)
            out = attention(q, keys, values, plan.decode_mask[lw.sliding], c)
            attn[plan.decode_idx] = out.reshape(d, nh, hd)
        for start, t, slots, masks in plan.extends:
            q = qk[start:start + t, :nh].transpose(0, 1)[None]  # [1, nh, T, hd]
            keys = k_pool[slots].transpose(0, 1)[None]  # [1, nkv, L, hd]
            values = v_pool[slots].transpose(0, 1)[None]
            mask = masks[lw.sliding]
            out = attention(q, keys, values, mask, c, is_causal=mask is None)
            attn[start:start + t] = out[0].transpose(0, 1)
        return attn

    h = model.embed_tokens(plan.ids)  # [N, hidden]
    for i in range(len(model.layers[:n_layers])):
        h = model.layer(i, h, plan.ropes, attend)
    end = 0
    for row in rows:
        end += len(row.tokens)
        if row.logits_tail:
            row.logits = model.logits(h[end - row.logits_tail:end])
    return model.logits(h[plan.last])


def _rows(layer_pool: torch.Tensor, slots: torch.Tensor | slice) -> torch.Tensor:
    """``[D, L, kv_heads, head_dim]`` keys or values at ``slots`` (a slice: one row, a view)."""
    return layer_pool[slots][None] if isinstance(slots, slice) else layer_pool[slots]
