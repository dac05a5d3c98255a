"""Symmetric InfoNCE: InfoNCE in both directions (``loss=symmetric_infonce``).

In plain words: as InfoNCE, each anchor must pick out its own positive among every positive of
the batch (and, with ``hard_neg=True``, every hard negative); in addition each positive must pick
out its own anchor among every anchor of the batch. The loss is the mean of the two directions.
Scoring both directions, as CLIP does for image -> text and text -> image, trains the embedding
to be good for retrieval either way round.

For a batch of N triplets (anchor h_i, positive h_i+, hard negative h_i-), cosine similarity s and
temperature tau::

    L_i  = (L_i^fwd + L_i^bwd) / 2
    L_i^fwd = InfoNCE of row i (embedft.losses.infonce: Eq. 1 with hard_neg=True, Eq. 2 without)
    L_i^bwd = -log( exp(s(h_i+, h_i)/tau) / sum_j exp(s(h_i+, h_j)/tau) )

and the loss is the mean over rows. The backward direction has no hard negatives: anchors only,
as in sentence-transformers' ``MultipleNegativesSymmetricRankingLoss``.

Under DDP anchors, positives and negatives of every rank are gathered with gradients, so both
denominators run over the global batch (``gather_across_ranks``). ``mask_duplicate_positives``
leaves out, in both directions, what is only a false negative: a positive with the text of row
i's positive (forward), and an anchor whose positive has that text (backward).

Args: ``temperature``, ``hard_neg``, ``gather_across_ranks``, ``mask_duplicate_positives``, as
``InfoNCELoss``. Inputs: the ``Loss`` call of ``embedft.losses`` (``anchor``, ``positive``,
``negative`` (B, H), text keys (B,) for masking). ``symmetric_info_nce`` is the pure function of
the whole batch's embeddings.

Example::

    >>> import torch
    >>> from embedft.losses.symmetric_infonce import SymmetricInfoNCELoss
    >>> loss_fn = SymmetricInfoNCELoss(temperature=0.05, hard_neg=True)
    >>> a, p, n = torch.randn(3, 4, 8).unbind(0)
    >>> loss = loss_fn(a, p, n)  # scalar tensor

Reference: Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision" (CLIP), 2021, the symmetric cross-entropy; Li et al., "Towards General Text
Embeddings with Multi-stage Contrastive Learning" (GTE), 2023, which also scores positive ->
anchor for text embeddings (in one shared denominator rather than two averaged terms).
"""

from __future__ import annotations

import torch
from torch import nn

from embedft.losses import register_loss
from embedft.losses.infonce import gather_with_grad, info_nce, local_only, same_text_as_positive


def symmetric_info_nce(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    *,
    temperature: float = 0.05,
    rows: slice | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of InfoNCE anchor -> [positive; negative] and positive -> anchor over ``rows``.

    ``anchor``, ``positive``, ``negative`` (N, H): the whole batch (every rank's rows under DDP;
    ``negative`` None for Eq. 2). ``rows``: the rows this process averages over (default all).
    ``exclude`` (len(rows), C): as ``info_nce``'s for the forward direction; its first N columns
    (the positives) also leave out the matching anchors of the backward direction.
    """
    rows = rows if rows is not None else slice(0, anchor.shape[0])
    offset = rows.start or 0
    n = anchor.shape[0]
    forward = info_nce(
        anchor[rows], positive, negative, temperature=temperature, offset=offset, exclude=exclude
    )
    backward = info_nce(
        positive[rows],
        anchor,
        temperature=temperature,
        offset=offset,
        exclude=None if exclude is None else exclude[:, :n],  # (len(rows), N)
    )
    return (forward + backward) / 2


@register_loss("symmetric_infonce")
class SymmetricInfoNCELoss(nn.Module):
    """InfoNCE anchor -> positive (with optional hard negatives) and positive -> anchor, averaged.

    Args:
        temperature: divides the cosine similarities (tau), in both directions.
        hard_neg: hard negatives in the anchor -> candidates denominators (Eq. 1); False is Eq. 2.
        gather_across_ranks: under DDP, use all ranks' anchors, positives and negatives.
        mask_duplicate_positives: drop false negatives that share the row's positive text.
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
        return (
            "symmetric InfoNCE (anchor -> positive and positive -> anchor), "
            f"temperature={self.temperature}, hard negatives={self.hard_neg}"
        )

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
        all_anchor, offset = gather(anchor.float())  # (N, H), N = B_global
        all_positive = gather(positive.float())[0]  # (N, H)
        all_negative = gather(negative.float())[0] if self.hard_neg else None  # (N, H)
        exclude = None
        if self.mask_duplicate_positives:
            keys = [positive_keys, negative_keys] if self.hard_neg else [positive_keys]
            all_keys = torch.cat([gather(k.unsqueeze(-1))[0].squeeze(-1) for k in keys])  # (C,)
            exclude = same_text_as_positive(positive_keys, all_keys, offset)  # (B, C)
        return symmetric_info_nce(
            all_anchor,
            all_positive,
            all_negative,
            temperature=self.temperature,
            rows=slice(offset, offset + anchor.shape[0]),
            exclude=exclude,
        )
