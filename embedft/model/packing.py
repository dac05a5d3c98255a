"""How a padded batch of token ids is laid out for the backbone: packing, sub-batches, trimming.

The collator stacks a batch's texts into one padded tensor. NLI texts differ a lot in length, so
that tensor is mostly padding (SmolLM2, batch 60: ~3.5 tokens per real one), and compute and
activation memory follow the padded size. Two layouts avoid most of it:

* ``pack_texts``: the texts end to end in rows of ``pack_len`` tokens with no padding at all,
  positions restarting at 0 for every text. Only for backbones whose transformers forward then
  keeps texts apart (``can_pack``); last-token pooling reads each text's EOS, mean pooling
  averages each text's own tokens (``packed_mean``).
* ``embed_in_sub_batches``: length-sorted sub-batches of ``max_rows`` rows, each cut to its own
  longest row (``trim_padding``): the fallback (SmolLM2, batch 60: ~1.9 padded tokens per real one).

``embedft.model.embedder.Embedder.embed`` chooses between them with the settings of the ``embed``
config group (``conf/embed/default.yaml``); the training step, the gradient-cache chunks and the
STS encoder all go through it. experiments/bench_train.py measures the layouts;
tests/test_packing.py checks that each gives the embeddings and gradients of one padded forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Model types whose transformers forward keeps packed texts apart: given position ids that restart
# at 0 for every text, no attention mask and no KV cache, it masks attention per text
# (block-diagonal causal, sliding windows included). ``Embedder.forward_packed`` passes
# ``use_cache=False`` itself, whatever the backbone's config says: with a cache transformers skips
# that detection and attention leaks across texts. tests/test_packing.py checks every family.
PACKABLE_MODEL_TYPES = ("llama", "gemma", "gemma3_text", "phi", "minicpm")


def can_pack(model_type: str | None, pooling: str) -> bool:
    """Whether texts of this backbone may be packed: a family above, last or mean pooling."""
    return pooling in ("last", "mean") and model_type in PACKABLE_MODEL_TYPES


def packed_mean(
    hidden: torch.Tensor, position_ids: torch.Tensor, last_token: torch.Tensor
) -> torch.Tensor:
    """Mean (N, H) in float32 of each packed text's hidden states, as ``pool_mean`` of its row.

    ``hidden`` (R, W, H) and ``position_ids`` (R, W) as ``pack_texts`` laid them out; a text ends
    at ``last_token`` (2, N) and, its positions counting from 0, starts ``position + 1`` tokens
    earlier. Sums by ``index_add`` over the texts' own tokens only: the unused row tails and the
    other texts of a row never enter a mean.
    """
    rows, ends = last_token
    lengths = position_ids[rows, ends] + 1  # (N,)
    text = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
    within = (
        torch.arange(int(lengths.sum()), device=hidden.device) - (lengths.cumsum(0) - lengths)[text]
    )
    columns = ends[text] - (lengths[text] - 1) + within  # (T,) every token of every text
    tokens = hidden[rows[text], columns].float()  # (T, H)
    sums = tokens.new_zeros((len(lengths), hidden.shape[-1])).index_add_(0, text, tokens)
    return sums / lengths[:, None].to(sums.dtype)


def trim_padding(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the columns no row attends to (right or left padding alike)."""
    attended = attention_mask.any(dim=0).nonzero().flatten()  # (t,)
    cols = slice(int(attended[0]), int(attended[-1]) + 1)
    return input_ids[:, cols], attention_mask[:, cols]


def pack_texts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pack_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack the attended tokens of every row end to end into rows of at most ``pack_len`` tokens.

    First-fit decreasing; a text longer than ``pack_len`` gets a row of its own. Works for right
    and left padding. Returns the packed ids (R, W), position ids restarting at 0 for every text
    (0 on the unused tail: single-token pseudo-texts nobody reads) and the (row, column) of every
    text's last token (2, N), as ``Embedder.forward_packed`` takes them. The tail holds id 0:
    any id does, nothing attends to it.
    """
    lengths = attention_mask.sum(dim=1)  # (N,)
    sizes = lengths.tolist()
    cap = max(pack_len, max(sizes))
    room: list[int] = []  # free tokens per packed row
    row_of, offset_of = [0] * len(sizes), [0] * len(sizes)
    for k in sorted(range(len(sizes)), key=lambda k: -sizes[k]):
        row = next((r for r, free in enumerate(room) if free >= sizes[k]), len(room))
        if row == len(room):
            room.append(cap)
        row_of[k], offset_of[k] = row, cap - room[row]
        room[row] -= sizes[k]
    device = input_ids.device
    rows, offsets = torch.tensor(row_of, device=device), torch.tensor(offset_of, device=device)
    first = attention_mask.long().argmax(dim=1)  # (N,) first attended column (left padding)
    starts = torch.cumsum(lengths, 0) - lengths
    text = torch.repeat_interleave(torch.arange(len(sizes), device=device), lengths)  # (T,)
    within = torch.arange(int(lengths.sum()), device=device) - starts[text]  # (T,)
    width = cap - min(room)
    packed = input_ids.new_zeros((len(room), width))
    positions = torch.zeros_like(packed)
    packed[rows[text], offsets[text] + within] = input_ids[text, first[text] + within]
    positions[rows[text], offsets[text] + within] = within
    return packed, positions, torch.stack([rows, offsets + lengths - 1])


def token_chunks(lengths: torch.Tensor, max_tokens: int) -> list[int]:
    """Rows per chunk for gradient caching: consecutive rows holding at most ``max_tokens``.

    ``lengths`` (N,) are the rows' attended tokens in the order they will be chunked (training
    sorts them longest first). A row longer than the budget makes a chunk of its own. Sizing chunks
    in tokens, not rows, keeps each chunk's activations, and so the step's peak memory, the same
    whatever the batch size and however long its first (longest) texts are.
    """
    sizes, used = [], max_tokens + 1  # no open chunk yet
    for length in lengths.tolist():
        if used + length > max_tokens:
            sizes.append(0)
            used = 0
        sizes[-1] += 1
        used += length
    return sizes


def embed_in_sub_batches(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_rows: int,
) -> torch.Tensor:
    """``forward`` over length-sorted sub-batches of at most ``max_rows`` rows, each trimmed.

    ``forward`` maps padded (ids, mask) to embeddings (n, H); rows come back in the input order.
    ``max_rows <= 0``: one forward over all rows, trimmed to the longest.
    """
    if max_rows <= 0 or input_ids.shape[0] <= max_rows:
        return forward(*trim_padding(input_ids, attention_mask))
    order = attention_mask.sum(dim=1).argsort(descending=True, stable=True)  # (N,)
    parts = [forward(*trim_padding(input_ids[i], attention_mask[i])) for i in order.split(max_rows)]
    return torch.cat(parts)[order.argsort()]  # (N, H) back in the input order
