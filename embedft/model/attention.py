"""Attention over packed texts, text by text: each text attends to its own tokens only.

Packing (``embedft.model.packing``) puts a batch's texts end to end in rows with no padding, which
is what the linear layers want. Attention is the one place that must keep the texts apart, and the
stock way to do that, a block-diagonal mask over each packed row, costs every token a score against
the whole row: NLI texts average ~13 tokens, so rows of 128 compute ~10x more scores than needed,
and on CPU the masked SDPA kernel's backward is slow besides (smollm2, bf16, 60 triplets: ~1.7 s
of an 8 s step in attention alone).

``varlen_attention`` computes attention per text instead, as flash-attention's variable-length
kernels do on GPUs: the packed tokens are gathered into a few buckets of texts of similar length
(each bucket a padded (texts, length) block, padding < ``BUCKET_MULTIPLE`` tokens per text), every
bucket runs causal attention at its own length, and the outputs are gathered back into the packed
order. ``PackedLayout`` holds the two gather indices, computed once per forward and shared by all
layers. The gathers are exact permutations of the real tokens (padding slots read a zero row), so
their backward is a gather too, with no scatter-add.

It is registered with transformers' ``AttentionInterface`` as ``VARLEN`` and falls back to SDPA
when a call carries no layout (padded batches, generation), so a backbone set to it behaves like
SDPA everywhere else. ``Embedder.forward_packed`` passes the layout; tests/test_attention.py checks
it against the block-diagonal mask in every packable family, values and gradients.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

VARLEN = "embedft_varlen"  # the attn_implementation name of varlen_attention
BUCKET_MULTIPLE = 8  # a bucket holds texts whose lengths round up to the same multiple of this


class _Gather(torch.autograd.Function):
    """``x_ext[index]`` along dim 0, where ``x_ext`` is ``x`` plus one zero row at index len(x).

    ``inverse`` maps the output rows back (the zero row where nothing maps): both indices are
    permutations of the real rows, so the gradient is the same gather the other way round.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> Any:
        ctx.save_for_backward(inverse)
        return torch.cat([x, x.new_zeros(1, *x.shape[1:])])[index]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (inverse,) = ctx.saved_tensors
        return torch.cat([grad, grad.new_zeros(1, *grad.shape[1:])])[inverse], None, None


@dataclass(eq=False)
class PackedLayout:
    """Where each packed text lies, grouped into buckets of similar length.

    ``to_buckets`` (S,): for every bucket slot, the flat index (row * W + column) of its packed
    token, or R * W (a zero row) for padding; ``from_buckets`` (R * W,): the inverse, S for the
    unused tail of packed rows; ``spans``: (texts, length) of each bucket, in slot order.
    """

    to_buckets: torch.Tensor
    from_buckets: torch.Tensor
    spans: tuple[tuple[int, int], ...]
    shape: tuple[int, int]  # (R, W) of the packed rows
    _masks: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def from_packing(
        cls, position_ids: torch.Tensor, last_token: torch.Tensor, multiple: int = BUCKET_MULTIPLE
    ) -> PackedLayout:
        """The layout of ``embedft.model.packing.pack_texts``' output (positions, last tokens)."""
        rows, width = position_ids.shape
        lengths = position_ids[last_token[0], last_token[1]] + 1  # (N,)
        starts = last_token[0] * width + last_token[1] - lengths + 1  # (N,) flat first token
        order = lengths.argsort(stable=True)
        lengths, starts = lengths[order], starts[order]
        sizes = lengths.tolist()
        spans, index, i = [], [], 0
        while i < len(sizes):
            cap = -(-sizes[i] // multiple) * multiple
            j = i
            while j < len(sizes) and sizes[j] <= cap:
                j += 1
            length = sizes[j - 1]
            cols = torch.arange(length, device=position_ids.device)
            slots = starts[i:j, None] + cols  # (n, length)
            pad = cols >= lengths[i:j, None]
            index.append(slots.masked_fill(pad, rows * width).flatten())
            spans.append((j - i, length))
            i = j
        to_buckets = torch.cat(index)  # (S,)
        from_buckets = torch.full_like(position_ids.flatten(), len(to_buckets))  # (R * W,)
        real = to_buckets < rows * width
        from_buckets[to_buckets[real]] = real.nonzero().flatten()
        return cls(to_buckets, from_buckets, tuple(spans), (rows, width))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Packed (R * W, ...) -> bucket slots (S, ...)."""
        return _Gather.apply(x, self.to_buckets, self.from_buckets)

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """Bucket slots (S, ...) -> packed (R * W, ...), zeros on the unused tail."""
        return _Gather.apply(x, self.from_buckets, self.to_buckets)

    def masked_out(self, length: int, group: int, window: int | None, device: Any) -> torch.Tensor:
        """(group * length, length) True where a query may not look: the future, or beyond the
        sliding window. Rows are (position, head of the group), as ``_bucket_attention`` has them."""
        key = (length, group, window, device)
        if key not in self._masks:
            q = torch.arange(length, device=device)[:, None]
            k = torch.arange(length, device=device)[None]
            out = (k > q) | ((q - k) >= window if window else False)
            self._masks[key] = out.repeat_interleave(group, dim=0)
        return self._masks[key]


def _bucket_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    masked_out: torch.Tensor,
    scaling: float,
    dropout: float,
) -> torch.Tensor:
    """Causal attention of one bucket: q (n, L, KV, G, D), k and v (n, L, KV, D) -> (n, L, KV*G, D).

    The G query heads that share a key/value head are stacked along the query axis, so one batched
    matmul per bucket covers them all without repeating keys and values.
    """
    n, length, kv, group, dim = q.shape
    queries = q.permute(0, 2, 1, 3, 4).reshape(n, kv, length * group, dim)  # (n, KV, L*G, D)
    scores = queries @ k.transpose(1, 2).transpose(-1, -2)  # (n, KV, L*G, L)
    wide = torch.promote_types(scores.dtype, torch.float32)  # bf16 scores: softmax in fp32
    scores = scores.to(wide).mul_(scaling).masked_fill_(masked_out, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    if dropout:
        probs = F.dropout(probs, p=dropout, training=True)
    out = probs @ v.transpose(1, 2)  # (n, KV, L*G, D)
    return out.view(n, kv, length, group, dim).permute(0, 2, 1, 3, 4).reshape(n, length, -1, dim)


@torch.compiler.disable  # a Python loop over buckets: compiled layers call it as it is
def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    packed_layout: PackedLayout | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention call; text by text when given ``packed_layout``, else SDPA.

    query (R, H, W, D), key and value (R, KV, W, D) -> (R, W, H, D), as ``sdpa_attention_forward``.
    """
    if packed_layout is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            sliding_window=sliding_window, **kwargs,
        )  # fmt: skip
    rows, heads, width, dim = query.shape
    kv = key.shape[1]
    group = heads // kv
    scaling = dim**-0.5 if scaling is None else scaling
    q = packed_layout.gather(query.transpose(1, 2).reshape(rows * width, kv, group, dim))
    k = packed_layout.gather(key.transpose(1, 2).reshape(rows * width, kv, dim))
    v = packed_layout.gather(value.transpose(1, 2).reshape(rows * width, kv, dim))
    sizes = [n * length for n, length in packed_layout.spans]
    outs = []
    # split, not slices: its backward writes each bucket's gradient once into one tensor
    for (n, length), qb, kb, vb in zip(
        packed_layout.spans, q.split(sizes), k.split(sizes), v.split(sizes), strict=True
    ):
        mask = packed_layout.masked_out(length, group, sliding_window, query.device)
        out = _bucket_attention(
            qb.view(n, length, kv, group, dim),
            kb.view(n, length, kv, dim),
            vb.view(n, length, kv, dim),
            mask,
            scaling,
            dropout,
        )
        outs.append(out.reshape(n * length, heads, dim))
    return packed_layout.scatter(torch.cat(outs)).view(rows, width, heads, dim), None


_PACKED_CALL = contextvars.ContextVar("embedft_packed_call", default=False)


@contextlib.contextmanager
def packed_call() -> Iterator[None]:
    """The backbone call of packed rows: no attention mask is built (``varlen_mask``)."""
    token = _PACKED_CALL.set(True)
    try:
        yield
    finally:
        _PACKED_CALL.reset(token)


def varlen_mask(**kwargs: Any) -> torch.Tensor | None:
    """SDPA's mask for calls without a layout (padded batches); none inside ``packed_call``.

    transformers would otherwise build a block-diagonal mask as wide as the packed rows (R, 1,
    W, W) on every forward, which ``varlen_attention`` never reads. The mask is built once per
    forward, outside the layers, so gradient checkpointing's recompute does not call it again.
    """
    return None if _PACKED_CALL.get() else sdpa_mask(**kwargs)


AttentionInterface.register(VARLEN, varlen_attention)
AttentionMaskInterface.register(VARLEN, varlen_mask)
