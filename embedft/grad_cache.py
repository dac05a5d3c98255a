"""Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): an exact InfoNCE gradient for a large batch in memory bounded by a sub-batch.

1. Embed every text in sub-batches with no autograd graph (and record each sub-batch's RNG state).
2. Compute the loss on those embeddings as leaves and backpropagate it to them only: the
   "gradient cache" d loss / d embedding, cheap because the graph is the loss alone.
3. Re-run each sub-batch with autograd, replaying its RNG state so LoRA dropout draws the same
   masks, and backpropagate ``sum(embedding * cached_grad)``: the chain rule, one sub-batch at a
   time, accumulating the exact full-batch gradient in the LoRA weights.

Peak activation memory is that of one sub-batch, whatever the batch size. Training sizes the
sub-batches by tokens (``embedft.model.packing.token_chunks``, ``embed.grad_cache_chunk_tokens``),
so the peak stays flat when the batch grows; a fixed number of rows per chunk also works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch


@contextmanager
def _replay_rng(state: tuple[torch.Tensor, list[torch.Tensor]]) -> Iterator[None]:
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.set_rng_state(state[0])
        if state[1]:
            torch.cuda.set_rng_state_all(state[1])
        yield


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return torch.get_rng_state(), cuda


def grad_cache_backward(
    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    chunk_rows: int | Sequence[int],
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> torch.Tensor:
    """Accumulate d loss_of(embed(all texts)) / d params into ``.grad``; return the loss.

    ``embed`` maps a chunk's padded (ids, mask) rows to embeddings (n, H): it owns the layout,
    trimming the padding the chunk does not need (``Embedder.embed`` packs or trims);
    ``loss_of`` maps all embeddings (N, H) to a scalar; ``backward`` runs a backward pass
    (Lightning's ``manual_backward`` in training). ``chunk_rows``: the rows of each chunk in
    order (summing to N), or one number of rows for every chunk.
    """
    if isinstance(chunk_rows, int):
        n = input_ids.shape[0]
        chunk_rows = [min(chunk_rows, n - start) for start in range(0, n, chunk_rows)]
    chunk_rows = list(chunk_rows)
    chunks = list(zip(input_ids.split(chunk_rows), attention_mask.split(chunk_rows), strict=True))
    states, reps = [], []
    with torch.no_grad():
        for ids, mask in chunks:
            states.append(_rng_state())
            reps.append(embed(ids, mask))
    cached = torch.cat(reps).detach().requires_grad_()  # (N, H)
    loss = loss_of(cached)
    loss.backward()
    grads = cached.grad.split(chunk_rows)  # (n, H) per chunk
    for (ids, mask), state, grad in zip(chunks, states, grads, strict=True):
        with _replay_rng(state):
            emb = embed(ids, mask)  # (n, H)
        backward((emb * grad).sum())
    return loss.detach()
