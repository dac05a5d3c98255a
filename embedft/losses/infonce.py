"""InfoNCE over NLI triplets, the contrastive objective of arXiv 2408.00690 (``loss=infonce``).

In plain words: each anchor must pick out its own positive among every positive of the batch
(the other rows' positives are in-batch negatives) and, with ``hard_neg=True``, every row's hard
negative too. Scores are cosine similarities divided by a temperature; the loss is the
cross-entropy of that choice, averaged over rows. Larger batches give a harder task.

For a batch of N triplets (anchor h_i, positive h_i+, hard negative h_i-), cosine similarity s and
temperature tau, the loss of row i is

with ``hard_neg=True`` (paper Eq. 1, the default)::

    L_i = -log( exp(s(h_i, h_i+)/tau) / sum_j [ exp(s(h_i, h_j+)/tau) + exp(s(h_i, h_j-)/tau) ] )

with ``hard_neg=False`` (paper Eq. 2)::

    L_i = -log( exp(s(h_i, h_i+)/tau) / sum_j exp(s(h_i, h_j+)/tau) )

and the loss is the mean over rows. The direction is anchor -> candidates only
(``symmetric_infonce`` adds positive -> anchor).

With several processes (DDP), positives and negatives from every rank are gathered *with
gradients* so that the denominator runs over the global batch, and the label of local row i is
offset by the number of rows on lower ranks. Rows may differ in count between ranks. Without an
initialised process group the loss runs as one process.

``mask_duplicate_positives=True`` removes false negatives: a candidate whose text equals the row's
own positive (a repeated entailment, common in NLI data) is left out of that row's denominator.

Inputs: the ``Loss`` call of ``embedft.losses``: ``anchor``, ``positive`` (B, H) and ``negative``
(B, H) or None, any scale (they are L2-normalised here); ``positive_keys``/``negative_keys`` (B,)
int64 text identities, needed only for masking. ``info_nce`` is the same loss as a pure function
of embeddings (no ranks, no keys), for hand-made tensors.

Example::

    >>> import torch
    >>> from embedft.losses.infonce import InfoNCELoss
    >>> loss_fn = InfoNCELoss(temperature=0.05, hard_neg=True)
    >>> a, p, n = torch.randn(3, 4, 8).unbind(0)
    >>> loss = loss_fn(a, p, n)  # scalar tensor
    >>> loss_fn.card
    'InfoNCE, temperature=0.05, hard negatives=True'

Reference: Ukarapol et al., "Improving Text Embeddings for Smaller Language Models Using
Contrastive Fine-tuning", 2024; Gao et al., "SimCSE", 2021 (the same loss with hard negatives).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (registers torch.distributed.nn.functional)
import torch.nn.functional as F
from torch import nn

from embedft.losses import register_loss


def info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    *,
    temperature: float = 0.05,
    offset: int = 0,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean InfoNCE of the ``anchor`` rows against the candidates ``[positive; negative]``.

    ``anchor`` (B, H); ``positive`` (P, H) holds row i's positive at ``offset + i`` (P = B and
    offset 0 in one process; all ranks' rows and this rank's first row under DDP); ``negative``
    (P, H) or None (Eq. 2). ``exclude`` (B, C) True leaves that candidate out of the row's
    denominator. Embeddings need not be normalised.
    """
    candidates = positive if negative is None else torch.cat([positive, negative])  # (C, H)
    anchor = F.normalize(anchor.float(), dim=-1)  # (B, H)
    candidates = F.normalize(candidates.float(), dim=-1)
    scores = anchor @ candidates.T  # (B, C)
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    labels = torch.arange(anchor.shape[0], device=anchor.device) + offset  # (B,)
    return F.cross_entropy(scores / temperature, labels)


def same_text_as_positive(
    positive_keys: torch.Tensor, candidate_keys: torch.Tensor, offset: int = 0
) -> torch.Tensor:
    """(B, C) True where candidate j's text equals row i's positive, except row i's own positive.

    ``positive_keys`` (B,) are this rank's rows, ``candidate_keys`` (C,) the candidates' keys in
    ``info_nce``'s order; row i's own positive is candidate ``offset + i``.
    """
    same = positive_keys.unsqueeze(1) == candidate_keys.unsqueeze(0)  # (B, C)
    rows = torch.arange(positive_keys.shape[0], device=same.device)
    same[rows, rows + offset] = False
    return same


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


def local_only(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``gather_with_grad``'s result when every rank keeps its own rows: ``x`` and offset 0."""
    return x, 0


@register_loss("infonce")
class InfoNCELoss(nn.Module):
    """InfoNCE with in-batch negatives and optional hard negatives (paper Eq. 1 / Eq. 2).

    Args:
        temperature: divides the cosine similarities (tau); 0.05 in the paper.
        hard_neg: include every row's hard negative in each denominator (Eq. 1); False is Eq. 2.
        gather_across_ranks: under DDP, use all ranks' candidates (the global batch).
        mask_duplicate_positives: drop candidates whose text equals the row's positive.

    Inputs to ``forward``: the ``Loss`` call (see the module docstring).
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

    @property
    def card(self) -> str:
        return f"InfoNCE, temperature={self.temperature}, hard negatives={self.hard_neg}"

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
        if self.mask_duplicate_positives and (
            positive_keys is None or (self.hard_neg and negative_keys is None)
        ):
            raise ValueError("mask_duplicate_positives needs positive_keys/negative_keys")
        gather = gather_with_grad if self.gather_across_ranks else local_only
        # float before gathering: the gradients cross ranks in float32 too
        all_positive, offset = gather(positive.float())  # (P, H), P = B_global
        all_negative = gather(negative.float())[0] if self.hard_neg else None  # (P, H)
        exclude = None
        if self.mask_duplicate_positives:
            keys = [positive_keys, negative_keys] if self.hard_neg else [positive_keys]
            all_keys = torch.cat([gather(k.unsqueeze(-1))[0].squeeze(-1) for k in keys])  # (C,)
            exclude = same_text_as_positive(positive_keys, all_keys, offset)  # (B, C)
        return info_nce(
            anchor,
            all_positive,
            all_negative,
            temperature=self.temperature,
            offset=offset,
            exclude=exclude,
        )
