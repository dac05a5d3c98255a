"""embedft.grad_cache: chunk by chunk, the loss and LoRA gradients of the full batch at once."""

import pytest
import torch

from embedft.grad_cache import grad_cache_backward
from embedft.losses.infonce import InfoNCELoss
from tests.conftest import assert_same_grads, make_embedder, triplet_batch

ANCHORS = ["a man is playing guitar", "a dog is running in the park", "two people sitting"]
POSITIVES = ["a man plays music", "a dog is outside", "people sitting on a bench"]
NEGATIVES = ["nobody is playing", "a cat is sleeping inside", "nobody is there"]


def _batch(embedder):
    return triplet_batch(embedder, ANCHORS, POSITIVES, NEGATIVES)


def _loss_of(loss_fn, n, hard_neg):
    def loss_of(emb):
        return loss_fn(emb[:n], emb[n : 2 * n], emb[2 * n :] if hard_neg else None)

    return loss_of


@pytest.mark.parametrize("chunk", [1, 2, 4, 9])
@pytest.mark.parametrize("hard_neg", [True, False])
def test_grad_cache_equals_full_batch_backward(chunk, hard_neg):
    # Given the same embedder twice (no dropout) and one batch of triplets
    plain = make_embedder(seed=3).train()
    cached = make_embedder(seed=3).train()
    batch = _batch(plain)
    loss_of = _loss_of(InfoNCELoss(temperature=0.05, hard_neg=hard_neg), 3, hard_neg)
    # When one backpropagates one padded forward of the full batch and the other caches
    # gradients chunk by chunk, each chunk embedded as training does (packed)
    plain_loss = loss_of(plain(batch["input_ids"], batch["attention_mask"]))
    plain_loss.backward()
    cached_loss = grad_cache_backward(
        cached.embed, batch["input_ids"], batch["attention_mask"], loss_of, chunk
    )
    # Then loss and every LoRA gradient agree (fp32)
    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert_same_grads(plain, cached)


@pytest.mark.parametrize("pack_len", [0, 16])
def test_grad_cache_replays_dropout_masks(pack_len):
    # Given LoRA dropout, the recomputed chunks must draw the masks of the cached pass:
    # compare with a plain backward over the same chunks from the same RNG state
    plain = make_embedder(seed=3, dropout=0.3).train()
    cached = make_embedder(seed=3, dropout=0.3).train()
    plain.pack_len = cached.pack_len = pack_len  # packed chunks, or chunks cut to their longest
    batch = _batch(plain)
    loss_of = _loss_of(InfoNCELoss(), 3, True)
    torch.manual_seed(1)
    chunks = [
        plain.embed(batch["input_ids"][i : i + 2], batch["attention_mask"][i : i + 2])
        for i in range(0, 9, 2)
    ]
    plain_loss = loss_of(torch.cat(chunks))
    plain_loss.backward()
    torch.manual_seed(1)
    cached_loss = grad_cache_backward(
        cached.embed, batch["input_ids"], batch["attention_mask"], loss_of, 2
    )
    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert_same_grads(plain, cached)
