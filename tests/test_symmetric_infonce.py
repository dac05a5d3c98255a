"""Symmetric InfoNCE (embedft/losses/symmetric_infonce.py): hand-computed values, both directions."""

import math

import pytest
import torch

from embedft.losses.infonce import InfoNCELoss
from embedft.losses.symmetric_infonce import SymmetricInfoNCELoss, symmetric_info_nce


def _unit(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=-1, keepdim=True)


# Two triplets in 2-D with easy cosines: anchors on the axes.
ANCHOR = _unit([1.0, 0.0], [0.0, 1.0])
POSITIVE = _unit([1.0, 0.0], [1.0, 1.0])  # cos(a0,p0)=1, cos(a0,p1)=R, cos(a1,p0)=0, cos(a1,p1)=R
NEGATIVE = _unit([0.0, 1.0], [-1.0, 0.0])  # cos(a0,n0)=0, cos(a0,n1)=-1, cos(a1,n0)=1, cos(a1,n1)=0
R = 1 / math.sqrt(2)


def _expected(tau, hard_neg):
    def e(cosine):
        return math.exp(cosine / tau)

    # anchor -> candidates: row 0 picks p0 among p0, p1 (+ n0, n1); row 1 picks p1
    den0 = e(1) + e(R) + ((e(0) + e(-1)) if hard_neg else 0)
    den1 = e(0) + e(R) + ((e(1) + e(0)) if hard_neg else 0)
    forward = -(math.log(e(1) / den0) + math.log(e(R) / den1)) / 2
    # positive -> anchors: p0 picks a0 among a0 (cos 1), a1 (cos 0); p1 has cos R to both
    backward = -(math.log(e(1) / (e(1) + e(0))) + math.log(e(R) / (e(R) + e(R)))) / 2
    return (forward + backward) / 2


@pytest.mark.parametrize("hard_neg", [True, False])
@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_loss_equals_hand_computation(hard_neg, tau):
    # Given two triplets with known cosines; When the loss is computed; Then both directions count
    loss = SymmetricInfoNCELoss(temperature=tau, hard_neg=hard_neg)(ANCHOR, POSITIVE, NEGATIVE)
    assert loss.item() == pytest.approx(_expected(tau, hard_neg), rel=1e-5)
    pure = symmetric_info_nce(ANCHOR, POSITIVE, NEGATIVE if hard_neg else None, temperature=tau)
    assert torch.equal(pure, loss)


def test_it_is_the_mean_of_infonce_both_ways():
    # Given random triplets; Then the loss is InfoNCE(a -> p, n) and InfoNCE(p -> a), averaged
    a, p, n = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(0)).unbind(0)
    both = SymmetricInfoNCELoss(temperature=0.1)(a, p, n)
    one_way = InfoNCELoss(temperature=0.1)(a, p, n)
    other_way = InfoNCELoss(temperature=0.1, hard_neg=False)(p, a)
    assert both.item() == pytest.approx((one_way + other_way).item() / 2, rel=1e-6)


def test_swapping_anchors_and_positives_changes_nothing_without_hard_negatives():
    # Given random pairs; When anchors and positives trade places
    a, p = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1)).unbind(0)
    symmetric = SymmetricInfoNCELoss(temperature=0.1, hard_neg=False)
    one_way = InfoNCELoss(temperature=0.1, hard_neg=False)
    # Then the symmetric loss is the same, while one-way InfoNCE is not (the check can fail)
    assert symmetric(a, p).item() == pytest.approx(symmetric(p, a).item(), rel=1e-6)
    assert abs(one_way(a, p).item() - one_way(p, a).item()) > 1e-3


def test_rows_score_a_share_of_the_batch_against_all_of_it():
    # Given 6 triplets split 3 + 3 (two ranks' shares of one global batch)
    a, p, n = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(2)).unbind(0)
    halves = [symmetric_info_nce(a, p, n, temperature=0.1, rows=slice(i, i + 3)) for i in (0, 3)]
    # Then the mean over the shares is the loss of the whole batch
    full = symmetric_info_nce(a, p, n, temperature=0.1)
    assert torch.stack(halves).mean().item() == pytest.approx(full.item(), rel=1e-6)


def test_duplicate_positives_are_masked_in_both_directions():
    # Given two rows whose positives are the same text (key 7)
    a = _unit([1.0, 0.0], [0.0, 1.0])
    p = _unit([1.0, 0.2], [0.3, 1.0])
    keys = torch.tensor([7, 7])
    masked = SymmetricInfoNCELoss(temperature=0.5, hard_neg=False, mask_duplicate_positives=True)
    # Then neither the other positive (forward) nor the other anchor (backward) is a negative
    assert masked(a, p, positive_keys=keys).item() == pytest.approx(0.0, abs=1e-6)
    assert SymmetricInfoNCELoss(temperature=0.5, hard_neg=False)(a, p).item() > 0.01


def test_gradients_reach_anchors_and_positives_from_both_directions():
    a, p, n = (t.requires_grad_() for t in torch.randn(3, 4, 8).unbind(0))
    SymmetricInfoNCELoss()(a, p, n).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (a, p, n))


def test_input_checks_and_card():
    with pytest.raises(ValueError, match="needs negative"):
        SymmetricInfoNCELoss(hard_neg=True)(ANCHOR, POSITIVE)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SymmetricInfoNCELoss(temperature=0)
    assert SymmetricInfoNCELoss(0.05).card.startswith("symmetric InfoNCE")
    assert "temperature=0.05, hard negatives=True" in SymmetricInfoNCELoss(0.05).card
