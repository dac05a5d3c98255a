"""StsDevCallback: STSB-dev every N optimizer steps, feeding ModelCheckpoint's best.ckpt."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from embedft.eval.callback import StsDevCallback
from embedft.eval.sts import evaluate_sts
from tests.test_encoder import SENTENCES, FakeEmbedder, write_suite

# --- StsDevCallback ---------------------------------------------------------------------------


class _TinyModule(L.LightningModule):
    """Pulls each pair's embeddings apart so that the dev score moves between evaluations."""

    def __init__(self) -> None:
        super().__init__()
        self.embedder = FakeEmbedder(seed=1)
        self.train_modes: list[bool] = []

    def training_step(self, batch, batch_idx):
        self.train_modes.append(self.embedder.training)
        left, right = SENTENCES[batch_idx % 4], SENTENCES[4 + batch_idx % 4]
        e = self.embedder(**self.embedder.tokenize([left, right]))
        return (e[0] * e[1]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _fit(tmp_path: Path, max_steps: int, every: int, accumulate: int = 1):
    write_suite(tmp_path / "data")
    callback = StsDevCallback(tmp_path / "data", every_n_steps=every, batch_size=4)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor=StsDevCallback.METRIC,
        mode="max",
        every_n_train_steps=every,
        save_top_k=1,
    )
    module = _TinyModule()
    trainer = L.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint, callback],
        default_root_dir=tmp_path,
    )
    loader = torch.utils.data.DataLoader(torch.zeros(100, 1), batch_size=1)
    trainer.fit(module, loader)
    return trainer, module, callback, checkpoint


def test_callback_logs_every_n_steps_and_at_the_end_and_feeds_model_checkpoint(tmp_path):
    # Given 5 optimizer steps with STSB-dev every 2 steps
    trainer, module, callback, checkpoint = _fit(tmp_path, max_steps=5, every=2)
    # Then it was scored at steps 2, 4 and at the final step 5
    assert [step for step, _ in callback.curve] == [2, 4, 5]
    # and the value at each step is the STSB-dev score of the model at that time
    assert trainer.callback_metrics[StsDevCallback.METRIC].item() == pytest.approx(
        callback.curve[-1][1], abs=1e-4
    )
    final = evaluate_sts(module.embedder, ["STSBenchmark"], tmp_path / "data", split="dev")
    assert callback.curve[-1][1] == pytest.approx(final["STSBenchmark"], abs=1e-6)
    # and ModelCheckpoint (every 2 steps) kept the best of the values it saw, at steps 2 and 4
    assert checkpoint.best_model_score.item() == pytest.approx(
        max(v for s, v in callback.curve if s % 2 == 0), abs=1e-4
    )
    # and training steps always ran in train mode
    assert all(module.train_modes)


class _ScriptedDevCallback(StsDevCallback):
    """Returns fixed scores instead of encoding, to script a curve that peaks mid-training."""

    def __init__(self, scores: list[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self._scores = iter(scores)

    def evaluate(self, trainer, pl_module) -> float:
        value = next(self._scores)
        self.curve.append((trainer.global_step, value))
        return value


def test_model_checkpoint_with_same_interval_keeps_the_best_step_not_the_last(tmp_path):
    # Given dev scores 50, 90, 70 at steps 2, 4, 6 and 60 at the final step 7
    write_suite(tmp_path / "data")
    callback = _ScriptedDevCallback(
        [50.0, 90.0, 70.0, 60.0], data_dir=tmp_path / "data", every_n_steps=2
    )
    best = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        filename="best",
        monitor=StsDevCallback.METRIC,
        mode="max",
        save_top_k=1,
        every_n_train_steps=2,
    )
    trainer = L.Trainer(
        max_steps=7,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[callback, best],
    )
    # When trained
    trainer.fit(_TinyModule(), torch.utils.data.DataLoader(torch.zeros(100, 1), batch_size=1))
    # Then the kept checkpoint is step 4's, scored 90
    assert callback.curve == [(2, 50.0), (4, 90.0), (6, 70.0), (7, 60.0)]
    assert best.best_model_score.item() == 90.0
    assert torch.load(best.best_model_path, weights_only=True)["global_step"] == 4


def test_callback_scores_each_optimizer_step_once_with_gradient_accumulation(tmp_path):
    # Given 4 optimizer steps of 2 micro-batches each, scored every 2 steps
    _, _, callback, _ = _fit(tmp_path, max_steps=4, every=2, accumulate=2)
    # Then steps 2 and 4 are scored exactly once each
    assert [step for step, _ in callback.curve] == [2, 4]


def test_callback_curve_round_trips_through_state_dict():
    callback = StsDevCallback(every_n_steps=10)
    callback.curve = [(10, 71.5), (20, 80.25)]
    restored = StsDevCallback(every_n_steps=10)
    restored.load_state_dict(callback.state_dict())
    assert restored.curve == [(10, 71.5), (20, 80.25)]


def test_callback_rejects_nonpositive_interval():
    with pytest.raises(ValueError, match="every_n_steps must be >= 1, got 0"):
        StsDevCallback(every_n_steps=0)
