"""StepMetrics: similarities, throughput and the gradient norm before clipping, per step."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from embedft.config import OptimConfig
from embedft.losses.infonce import InfoNCELoss
from embedft.module import EmbeddingModule
from embedft.step_metrics import StepMetrics, similarity_sums
from tests.conftest import lora_grads, make_embedder, triplet_batch
from tests.test_module import LONG_AND_SHORT, _CapturingOptimizer


def test_similarities_use_hard_negatives_when_there_are_some_else_in_batch_ones():
    # Given two anchors, their positives at 60 and 0 degrees, hard negatives at 90 degrees
    anchor = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positive = torch.tensor([[0.5, 0.866025], [0.0, 1.0]])
    negative = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    # When the sums are taken with and without the hard negatives
    sums, pairs, neg_pairs = similarity_sums((anchor, positive, negative))
    # Then cos(a, p) = 0.5 + 1, cos(a, n) = 0 + 0, over 2 pairs each
    torch.testing.assert_close(sums, torch.tensor([1.5, 0.0]))
    assert (pairs, neg_pairs) == (2, 2)
    # And in-batch: anchor 0 vs positive 1 (cos 0), anchor 1 vs positive 0 (cos 0.866)
    sums, pairs, neg_pairs = similarity_sums((anchor, positive))
    torch.testing.assert_close(sums, torch.tensor([1.5, 0.866025]))
    assert (pairs, neg_pairs) == (2, 2)


class _Triplets(torch.utils.data.IterableDataset):
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        yield from self.batches


def _batches(embedder):
    texts = [t for group in LONG_AND_SHORT for t in group]
    batches = []
    for i in range(4):  # four batches of 2 triplets, of different lengths
        a, p, n = texts[i % 3 : i % 3 + 2], texts[3 + i % 3 : 5 + i % 3], texts[6:8]
        batches.append(triplet_batch(embedder, a, p, n))
    return batches


def test_fit_logs_throughput_grad_norm_and_similarity_every_step(tmp_path):
    # Given a tiny embedder trained 4 steps with clipping at 1e-3, logging every 2 steps
    embedder = make_embedder(seed=3)
    module = EmbeddingModule(embedder, InfoNCELoss(), OptimConfig(lr=1e-3), 4)
    batches = _batches(embedder)
    unclipped = []

    class _Before(L.Callback):  # runs before Lightning clips
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            unclipped.append(torch.cat([g.flatten() for g in lora_grads(pl_module).values()]))

    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        gradient_clip_val=1e-3,
        log_every_n_steps=2,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[_Before(), StepMetrics()],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    # When it fits
    trainer.fit(module, torch.utils.data.DataLoader(_Triplets(batches), batch_size=None))
    rows = [r for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r["train/loss"]]
    # Then steps 2 and 4 have a row, with the mean gradient norm of their two steps before
    # clipping, not the clipped one
    assert [int(r["step"]) for r in rows] == [1, 3]
    norms = [g.norm().item() for g in unclipped]
    for row, window in zip(rows, (norms[0:2], norms[2:4]), strict=True):
        assert float(row["train/grad_norm"]) == pytest.approx(sum(window) / 2, rel=1e-5)
        assert float(row["train/grad_norm"]) > 1e-2
    # And tokens per triplet is that of the window's batches (the same seconds divide both)
    for row, window in zip(rows, (batches[0:2], batches[2:4]), strict=True):
        tokens = sum(int(b["attention_mask"].sum()) for b in window)
        ratio = float(row["perf/tokens_per_s"]) / float(row["perf/triplets_per_s"])
        assert ratio == pytest.approx(tokens / 4, rel=1e-5)
        assert float(row["perf/peak_mem_gib"]) > 0
    # And the similarity gap is cos_pos - cos_neg, each within [-1, 1]
    for row in rows:
        pos, neg, gap = (float(row[f"train/cos_{k}"]) for k in ("pos", "neg", "gap"))
        assert -1 <= neg <= 1 and -1 <= pos <= 1 and gap == pytest.approx(pos - neg, abs=1e-6)


def test_grad_cache_records_the_norm_before_its_own_clipping():
    # Given a gradient-caching module that clips at 1e-3, and the same embedder without caching
    plain, cached = make_embedder(seed=5).train(), make_embedder(seed=5).train()
    module = EmbeddingModule(cached, InfoNCELoss(), OptimConfig(), 10, grad_cache_chunk_tokens=12)
    params = [p for p in cached.parameters() if p.requires_grad]
    opt = _CapturingOptimizer(params)
    strategy = SimpleNamespace(backward=lambda loss, *_: loss.backward())
    module._trainer = SimpleNamespace(world_size=1, gradient_clip_val=1e-3, strategy=strategy)
    module.optimizers = lambda: opt
    module.lr_schedulers = lambda: SimpleNamespace(step=lambda: None)
    module.clip_gradients = lambda o, gradient_clip_val: torch.nn.utils.clip_grad_norm_(
        params, gradient_clip_val
    )
    batch = triplet_batch(cached, *LONG_AND_SHORT)
    # When it steps, and the plain embedder backpropagates the whole batch
    module._grad_cache_step(batch)
    InfoNCELoss()(*plain(batch["input_ids"], batch["attention_mask"]).split(3)).backward()
    # Then the recorded norm is the full batch's, and the optimizer got the clipped gradients
    full = torch.cat([g.flatten() for g in lora_grads(plain).values()]).norm()
    torch.testing.assert_close(module.last_grad_norm, full, rtol=1e-4, atol=1e-6)
    assert torch.cat([g.flatten() for g in opt.grads]).norm() == pytest.approx(1e-3, rel=1e-3)
    # And the similarities see the batch's anchors, positives and negatives
    assert [e.shape[0] for e in module.last_embeddings] == [3, 3, 3]
