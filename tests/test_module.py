"""Training step: gradients reach only LoRA, gradient caching is exact, the LR schedule."""

import pytest
import torch

from embedft.config import OptimConfig
from embedft.grad_cache import grad_cache_backward
from embedft.losses.infonce import InfoNCELoss
from embedft.module import EmbeddingModule, warmup_cosine
from tests.conftest import assert_same_grads, lora_grads, make_embedder, triplet_batch

ANCHORS = ["a man is playing guitar", "a dog is running in the park", "two people sitting"]
POSITIVES = ["a man plays music", "a dog is outside", "people sitting on a bench"]
NEGATIVES = ["nobody is playing", "a cat is sleeping inside", "nobody is there"]


def _batch(embedder):
    return triplet_batch(embedder, ANCHORS, POSITIVES, NEGATIVES)


def test_gradients_reach_only_lora_parameters():
    embedder = make_embedder()
    module = EmbeddingModule(embedder, InfoNCELoss(), OptimConfig(), total_steps=10)
    batch = _batch(embedder)
    emb = embedder(batch["input_ids"], batch["attention_mask"])
    module.loss_from_embeddings(emb, batch).backward()
    grads = lora_grads(embedder)
    assert grads, "no gradient at all"
    assert all("lora_" in name for name in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())
    frozen = [n for n, p in embedder.named_parameters() if not p.requires_grad]
    assert frozen and all("lora_" not in n for n in frozen)


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
    # When one backpropagates the full batch and the other caches gradients chunk by chunk
    plain_loss = loss_of(plain(batch["input_ids"], batch["attention_mask"]))
    plain_loss.backward()
    cached_loss = grad_cache_backward(
        cached, batch["input_ids"], batch["attention_mask"], loss_of, chunk
    )
    # Then loss and every LoRA gradient agree (fp32)
    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert_same_grads(plain, cached)


def test_grad_cache_replays_dropout_masks():
    # Given LoRA dropout, the recomputed chunks must draw the masks of the cached pass:
    # compare with a plain backward over the same (trimmed) chunks from the same RNG state
    from embedft.grad_cache import _trim

    plain = make_embedder(seed=3, dropout=0.3).train()
    cached = make_embedder(seed=3, dropout=0.3).train()
    batch = _batch(plain)
    loss_of = _loss_of(InfoNCELoss(), 3, True)
    torch.manual_seed(1)
    chunks = [
        plain(*_trim(batch["input_ids"][i : i + 2], batch["attention_mask"][i : i + 2]))
        for i in range(0, 9, 2)
    ]
    plain_loss = loss_of(torch.cat(chunks))
    plain_loss.backward()
    torch.manual_seed(1)
    cached_loss = grad_cache_backward(
        cached, batch["input_ids"], batch["attention_mask"], loss_of, 2
    )
    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert_same_grads(plain, cached)


def test_warmup_then_cosine_to_zero():
    f = warmup_cosine(warmup=4, total=12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(8) == pytest.approx(0.5)
    assert f(12) == pytest.approx(0.0)
    assert warmup_cosine(0, 10, "constant")(7) == 1.0


def test_fit_trains_with_dropout_active():
    # Given a model in eval mode, as transformers returns it from from_pretrained
    module = EmbeddingModule(make_embedder(dropout=0.1).eval(), InfoNCELoss(), OptimConfig(), 1)
    # When fit starts; Then every submodule, LoRA dropout included, is in training mode
    module.on_fit_start()
    assert all(m.training for m in module.embedder.modules())
