"""InfoNCE over NLI triplets, the contrastive objective of arXiv 2408.00690.

For a batch of N triplets (anchor h_i, positive h_i+, hard negative h_i-), cosine similarity s and
temperature tau, the loss of row i is

with ``hard_neg=True`` (paper Eq. 1, the default)::

    L_i = -log( exp(s(h_i, h_i+)/tau) / sum_j [ exp(s(h_i, h_j+)/tau) + exp(s(h_i, h_j-)/tau) ] )

with ``hard_neg=False`` (paper Eq. 2)::

    L_i = -log( exp(s(h_i, h_i+)/tau) / sum_j exp(s(h_i, h_j+)/tau) )

and the loss is the mean over rows. The direction is anchor -> candidates only. Every other row's
positive (and negative) is an in-batch negative, so larger batches give a harder task.

With several processes (DDP), positives and negatives from every rank are gathered *with
gradients* so that the denominator runs over the global batch, and the label of local row i is
offset by the number of rows on lower ranks. Rows may differ in count between ranks. Without an
initialised process group the loss runs as one process.

``mask_duplicate_positives=True`` removes false negatives: a candidate whose text equals the row's
own positive (a repeated entailment, common in NLI data) is left out of that row's denominator.

Example::

    >>> import torch
    >>> from embedft.loss import InfoNCELoss
    >>> loss_fn = InfoNCELoss(temperature=0.05, hard_neg=True)
    >>> a, p, n = torch.randn(3, 4, 8).unbind(0)
    >>> loss = loss_fn(a, p, n)  # scalar tensor

Reference: Ukarapol et al., "Improving Text Embeddings for Smaller Language Models Using
Contrastive Fine-tuning", 2024; Gao et al., "SimCSE", 2021 (the same loss with hard negatives).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (registers torch.distributed.nn.functional)
import torch.nn.functional as F
from torch import nn


def info_nce_from_scores(
    scores: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of cosine ``scores`` (B, C) / temperature against the ``labels`` column."""
    return F.cross_entropy(scores / temperature, labels)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` (B_local, ...) from all ranks, keeping gradients to the local part.

    Returns the global tensor and the row offset of this rank. Ranks may hold different B_local:
    rows are padded to the largest for the collective and the padding is cut away after it.
    """
    rank, world = _world()
    if world == 1:
        return x, 0
    local = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(sizes, local)
    counts = [int(s.item()) for s in sizes]
    largest = max(counts)
    if x.shape[0] < largest:
        pad = x.new_zeros((largest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    if x.is_floating_point():
        parts = torch.distributed.nn.functional.all_gather(x)
    else:  # text keys carry no gradient
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
    gathered = torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])
    return gathered, sum(counts[:rank])


class InfoNCELoss(nn.Module):
    """InfoNCE with in-batch negatives and optional hard negatives (paper Eq. 1 / Eq. 2).

    Args:
        temperature: divides the cosine similarities (tau); 0.05 in the paper.
        hard_neg: include every row's hard negative in each denominator (Eq. 1); False is Eq. 2.
        gather_across_ranks: under DDP, use all ranks' candidates (the global batch).
        mask_duplicate_positives: drop candidates whose text equals the row's positive.

    Inputs to ``forward``: ``anchor``, ``positive`` and optional ``negative`` embeddings (B, H);
    ``positive_keys``/``negative_keys`` (B,) int64 text identities, needed only for masking.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        hard_neg: bool = True,
        gather_across_ranks: bool = True,
        mask_duplicate_positives: bool = False,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.hard_neg = hard_neg
        self.gather_across_ranks = gather_across_ranks
        self.mask_duplicate_positives = mask_duplicate_positives

    def forward(
        self,
        anchor: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor | None = None,
        positive_keys: torch.Tensor | None = None,
        negative_keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.hard_neg and negative is None:
            raise ValueError("hard_neg=True needs negative embeddings (the data has no negatives)")
        anchor = F.normalize(anchor.float(), dim=-1)
        candidates = [F.normalize(positive.float(), dim=-1)]
        keys = [positive_keys] if positive_keys is not None else []
        if self.hard_neg:
            candidates.append(F.normalize(negative.float(), dim=-1))
            if negative_keys is not None:
                keys.append(negative_keys)

        gather = gather_with_grad if self.gather_across_ranks else (lambda t: (t, 0))
        gathered = [gather(c) for c in candidates]
        offset = gathered[0][1]
        cand = torch.cat([g for g, _ in gathered])  # (C, H), C = B_global or 2 * B_global
        scores = anchor @ cand.T  # (B_local, C)
        labels = torch.arange(anchor.shape[0], device=anchor.device) + offset  # (B_local,)

        if self.mask_duplicate_positives:
            if positive_keys is None or (self.hard_neg and negative_keys is None):
                raise ValueError("mask_duplicate_positives needs positive_keys/negative_keys")
            all_keys = torch.cat([gather(k.unsqueeze(-1))[0].squeeze(-1) for k in keys])  # (C,)
            same_text = positive_keys.unsqueeze(1) == all_keys.unsqueeze(0)  # (B_local, C)
            same_text[torch.arange(anchor.shape[0]), labels] = False
            scores = scores.masked_fill(same_text, float("-inf"))

        return info_nce_from_scores(scores, labels, self.temperature)
