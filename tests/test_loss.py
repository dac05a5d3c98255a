"""InfoNCE: hand-computed values for paper Eq. 1 and Eq. 2, masking, and input checks."""

import math

import pytest
import torch

from embedft.loss import InfoNCELoss


def _unit(*rows):
    t = torch.tensor(rows, dtype=torch.float32)
    return t / t.norm(dim=-1, keepdim=True)


# Two triplets in 2-D, chosen so cosines are easy: anchors on the axes.
ANCHOR = _unit([1.0, 0.0], [0.0, 1.0])
POSITIVE = _unit(
    [1.0, 0.0], [1.0, 1.0]
)  # cos(a0,p0)=1, cos(a0,p1)=.7071, cos(a1,p0)=0, cos(a1,p1)=.7071
NEGATIVE = _unit([0.0, 1.0], [-1.0, 0.0])  # cos(a0,n0)=0, cos(a0,n1)=-1, cos(a1,n0)=1, cos(a1,n1)=0
R = 1 / math.sqrt(2)


def _expected(tau, hard_neg):
    # row 0: positive p0; candidates p0, p1 (+ n0, n1)
    num0 = math.exp(1 / tau)
    den0 = math.exp(1 / tau) + math.exp(R / tau)
    num1 = math.exp(R / tau)
    den1 = math.exp(0 / tau) + math.exp(R / tau)
    if hard_neg:
        den0 += math.exp(0 / tau) + math.exp(-1 / tau)
        den1 += math.exp(1 / tau) + math.exp(0 / tau)
    return -(math.log(num0 / den0) + math.log(num1 / den1)) / 2


@pytest.mark.parametrize("hard_neg", [True, False])
@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_loss_equals_hand_computation(hard_neg, tau):
    # Given two triplets with known cosines; When the loss is computed; Then it matches Eq. 1/2
    loss = InfoNCELoss(temperature=tau, hard_neg=hard_neg)(ANCHOR, POSITIVE, NEGATIVE)
    assert loss.item() == pytest.approx(_expected(tau, hard_neg), rel=1e-5)


def test_inputs_need_not_be_normalised():
    # Cosine similarity: scaling an embedding changes nothing
    fn = InfoNCELoss(temperature=0.1)
    a = fn(ANCHOR, POSITIVE, NEGATIVE)
    b = fn(ANCHOR * 3, POSITIVE * 0.5, NEGATIVE * 7)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_hard_negative_term_raises_the_loss():
    a, p, n = torch.randn(3, 8, 16).unbind(0)
    assert InfoNCELoss(hard_neg=True)(a, p, n) > InfoNCELoss(hard_neg=False)(a, p, n)


def test_duplicate_positive_is_masked_out_of_the_denominator():
    # Given rows whose positives are the same text (key 7): each other's positive is no negative
    a = _unit([1.0, 0.0], [0.0, 1.0])
    p = _unit([1.0, 0.2], [0.3, 1.0])
    keys = torch.tensor([7, 7])
    masked = InfoNCELoss(temperature=0.5, hard_neg=False, mask_duplicate_positives=True)
    loss = masked(a, p, positive_keys=keys)
    # Then each row's denominator holds its own positive only: loss 0
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    plain = InfoNCELoss(temperature=0.5, hard_neg=False)(a, p)
    assert plain.item() > 0.01


def test_hard_neg_without_negatives_is_an_error():
    with pytest.raises(ValueError, match="needs negative"):
        InfoNCELoss(hard_neg=True)(ANCHOR, POSITIVE)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        InfoNCELoss(temperature=0)
