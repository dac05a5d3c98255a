"""Text-by-text attention over packed rows (embedft/model/attention.py).

The layout is checked by hand; ``varlen_attention`` against SDPA under the block-diagonal causal
mask it replaces (values and gradients, grouped heads, sliding window); the model-level check in
every family is tests/test_packing.py (build_embedder sets this attention for SDPA backbones).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embedft.model.attention import VARLEN, PackedLayout, varlen_attention
from embedft.model.packing import pack_texts


def _packed(lengths: list[int], pack_len: int):
    """Texts of these lengths (right-padded rows), packed: positions and last tokens."""
    width = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    ids = torch.arange(1, 1 + mask.numel()).view(mask.shape) * mask
    _, positions, last = pack_texts(ids, mask, pack_len)
    return positions, last


def test_layout_by_hand():
    # Given texts of 3, 8, 2 and 4 tokens packed into rows of 10 (first fit, longest first):
    # row 0 = [8-token text | 2-token text], row 1 = [4 | 3 | 3 unused tail tokens]
    positions, last = _packed([3, 8, 2, 4], pack_len=10)
    assert positions.tolist() == [[*range(8), 0, 1], [0, 1, 2, 3, 0, 1, 2, 0, 0, 0]]
    # When the layout groups them in buckets of lengths rounding up to the same multiple of 4
    layout = PackedLayout.from_packing(positions, last, multiple=4)
    # Then lengths 2, 3, 4 share one bucket padded to 4 and the 8-token text has its own
    assert layout.spans == ((3, 4), (1, 8))
    zero = 20  # the index of the zero row (R * W)
    assert layout.to_buckets.tolist() == [
        8, 9, zero, zero,  # the 2-token text (row 0, columns 8-9), padded
        14, 15, 16, zero,  # the 3-token text (row 1, columns 4-6)
        10, 11, 12, 13,  # the 4-token text (row 1, columns 0-3)
        *range(8),  # the 8-token text (row 0)
    ]  # fmt: skip
    # And the inverse maps every packed token to its slot, the unused tail to the zero slot
    slots = len(layout.to_buckets)  # 20
    assert layout.from_buckets.tolist() == [
        *range(12, 20), 0, 1, 8, 9, 10, 11, 4, 5, 6, slots, slots, slots
    ]  # fmt: skip
    # And gather/scatter round-trip the packed tokens (zeros on the tail)
    x = torch.randn(positions.numel(), 3)
    back = layout.scatter(layout.gather(x))
    used = layout.from_buckets < slots
    torch.testing.assert_close(back[used], x[used], rtol=0, atol=0)
    assert not back[~used].any()


def _block_mask(positions: torch.Tensor, last: torch.Tensor, window: int | None) -> torch.Tensor:
    """(R, 1, W, W) True where a query may attend: same text, not later, within the window."""
    rows, width = positions.shape
    text = torch.full((rows, width), -1)
    for k, (r, c) in enumerate(last.T.tolist()):
        text[r, c - int(positions[r, c]) : c + 1] = k
    q, kv = torch.arange(width)[:, None], torch.arange(width)[None]
    allowed = (text[:, :, None] == text[:, None, :]) & (text[:, :, None] >= 0) & (kv <= q)
    if window:
        allowed &= (q - kv) < window
    return allowed[:, None]


class _Module(torch.nn.Module):
    is_causal = True
    training = False


@pytest.mark.parametrize("window", [None, 3])
def test_varlen_attention_equals_sdpa_under_the_block_mask(window):
    # Given texts of very different lengths packed 16 tokens a row, 6 query heads sharing 2
    # key/value heads (grouped-query attention), and random q, k, v
    torch.manual_seed(0)
    positions, last = _packed([5, 1, 12, 3, 7, 2, 9], pack_len=16)
    rows, width = positions.shape
    q = torch.randn(rows, 6, width, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(rows, 2, width, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(rows, 2, width, 8, dtype=torch.float64, requires_grad=True)
    allowed = _block_mask(positions, last, window)
    real = allowed.any(dim=-1).squeeze(1)  # (R, W) tokens of a text (not the tail)
    # When one runs varlen_attention with the layout and the other SDPA with the block mask
    layout = PackedLayout.from_packing(positions, last)
    got, _ = varlen_attention(
        _Module(), q, k, v, None, scaling=0.3, sliding_window=window, packed_layout=layout
    )
    expected = F.scaled_dot_product_attention(
        q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=allowed, scale=0.3
    ).transpose(1, 2)  # (R, W, H, D)
    # Then every token of a text gets the same output (the tail gets zeros) ...
    torch.testing.assert_close(got[real], expected[real])
    assert not got[~real].any()
    # ... and the same gradients reach q, k and v
    weight = torch.randn_like(expected) * real[:, :, None, None]
    grads = torch.autograd.grad((got * weight).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * weight).sum(), (q, k, v))
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)


def test_without_a_layout_it_is_sdpa():
    # Given padded rows with their 4D mask, as a padded forward calls attention
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 5, 4).unbind(0)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    # When varlen_attention gets no packed_layout; Then it returns what SDPA returns
    got, _ = varlen_attention(_Module(), q, k, v, mask, scaling=0.5)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5).transpose(1, 2)
    torch.testing.assert_close(got, expected)


def test_build_embedder_gives_sdpa_backbones_the_varlen_attention():
    from embedft.config import ModelConfig
    from embedft.model.embedder import build_embedder

    # Given a packable SDPA backbone; When it is built; Then its attention is text by text
    embedder = build_embedder(ModelConfig(name="tiny_llama", source="tiny", path="llama"))
    assert embedder.backbone.config._attn_implementation == VARLEN
    # And a saved config does not carry it (an export loads anywhere with plain SDPA)
    assert "_attn_implementation" not in embedder.backbone.config.to_json_string()
