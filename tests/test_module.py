"""Training step: gradients reach only LoRA, the gradient-cached step is exact, the LR schedule."""

from types import SimpleNamespace

import pytest
import torch

from embedft.config import OptimConfig
from embedft.losses.infonce import InfoNCELoss
from embedft.model.embedder import Embedder
from embedft.model.packing import token_chunks
from embedft.module import EmbeddingModule, warmup_cosine
from tests.conftest import lora_grads, make_embedder, triplet_batch

ANCHORS = ["a man is playing guitar", "a dog is running in the park", "two people sitting"]
POSITIVES = ["a man plays music", "a dog is outside", "people sitting on a bench"]
NEGATIVES = ["nobody is playing", "a cat is sleeping inside", "nobody is there"]
# anchors, positives, negatives of very different lengths: sorted chunks then differ in width
LONG_AND_SHORT = (
    ["a man is playing guitar in the park", "a dog", "two people sitting on a red bench"],
    ["a man plays music", "a dog is outside", "people"],
    ["nobody", "a cat is sleeping inside the car", "nobody is there"],
)


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


class _CapturingOptimizer:
    """Stands in for AdamW: records the gradients the step would apply."""

    def __init__(self, params):
        self.params, self.param_groups, self.grads = list(params), [{"lr": 1.0}], None

    def step(self):
        self.grads = [p.grad.clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def test_grad_cache_step_with_sorted_chunks_equals_full_batch():
    # Given a module doing gradient caching in chunks of at most 12 tokens (rows sorted by
    # length first: the longest texts get chunks of their own)
    plain, cached = make_embedder(seed=5).train(), make_embedder(seed=5).train()
    module = EmbeddingModule(cached, InfoNCELoss(), OptimConfig(), 10, grad_cache_chunk_tokens=12)
    opt = _CapturingOptimizer(p for p in cached.parameters() if p.requires_grad)
    strategy = SimpleNamespace(backward=lambda loss, *_: loss.backward())
    module._trainer = SimpleNamespace(world_size=1, gradient_clip_val=None, strategy=strategy)
    module.optimizers = lambda: opt
    module.lr_schedulers = lambda: SimpleNamespace(step=lambda: None)
    batch = triplet_batch(cached, LONG_AND_SHORT[0], LONG_AND_SHORT[1], LONG_AND_SHORT[2])
    # When it runs one step, and the plain embedder backpropagates the whole batch at once
    chunk_rows = []
    cached.embed = lambda ids, mask: (
        chunk_rows.append(len(ids)) or Embedder.embed(cached, ids, mask)
    )
    loss = module._grad_cache_step(batch)
    plain_loss = InfoNCELoss()(*plain(batch["input_ids"], batch["attention_mask"]).split(3))
    plain_loss.backward()
    # Then loss and the gradients handed to the optimizer are the full-batch ones
    assert loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    names = [n for n, p in cached.named_parameters() if p.requires_grad]
    expected = dict(lora_grads(plain))
    assert len(names) == len(opt.grads) == len(expected)
    for name, grad in zip(names, opt.grads, strict=True):
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4)
    # And it ran in several chunks, each cached once and replayed once
    lengths = sorted(batch["attention_mask"].sum(dim=1).tolist(), reverse=True)
    assert chunk_rows[: len(chunk_rows) // 2] == token_chunks(torch.tensor(lengths), 12)
    assert len(chunk_rows) > 2
