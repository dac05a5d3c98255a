"""InfoNCE (embedft/losses/infonce.py): hand-computed Eq. 1 / Eq. 2, masking, input checks."""

import math

import pytest
import torch

from embedft.losses.infonce import InfoNCELoss, info_nce, same_text_as_positive


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


@pytest.mark.parametrize("hard_neg", [True, False])
def test_pure_function_is_the_hand_computation_and_the_module(hard_neg):
    # Given the same triplets; When the pure function on embeddings is called directly
    negative = NEGATIVE if hard_neg else None
    pure = info_nce(ANCHOR, POSITIVE, negative, temperature=0.5)
    # Then it is Eq. 1 / Eq. 2, and exactly what the module's forward computes
    assert pure.item() == pytest.approx(_expected(0.5, hard_neg), rel=1e-5)
    assert torch.equal(
        pure, InfoNCELoss(temperature=0.5, hard_neg=hard_neg)(ANCHOR, POSITIVE, NEGATIVE)
    )


def test_offset_scores_a_slice_of_rows_against_the_whole_batch():
    # Given 6 triplets split into rows 0-2 and 3-5 (two ranks' shares of one global batch)
    a, p, n = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    # When each half is scored against all candidates, labels offset by its first row
    halves = [info_nce(a[i : i + 3], p, n, temperature=0.1, offset=i) for i in (0, 3)]
    # Then the mean of the two halves is the full-batch loss; without the offset it is not
    full = info_nce(a, p, n, temperature=0.1)
    assert torch.stack(halves).mean().item() == pytest.approx(full.item(), rel=1e-6)
    wrong = info_nce(a[3:], p, n, temperature=0.1)
    assert abs((halves[0] + wrong).item() / 2 - full.item()) > 1e-3


def test_same_text_mask_spares_the_rows_own_positive():
    # Given rows 1 and 2 of a batch (offset 1) and candidates keyed [5, 7, 7, 9]
    mask = same_text_as_positive(torch.tensor([7, 7]), torch.tensor([5, 7, 7, 9]), offset=1)
    # Then row 1 masks candidate 2 (same text) but not 1 (its own); row 2 the reverse
    assert mask.tolist() == [[False, False, True, False], [False, True, False, False]]


def test_card_names_the_loss_and_its_settings():
    assert (
        InfoNCELoss(0.05, hard_neg=False).card == "InfoNCE, temperature=0.05, hard negatives=False"
    )
