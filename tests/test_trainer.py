"""The run's Trainer: progress bars with the planned total, resume in mid-epoch included."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from torch.utils.data import DataLoader, IterableDataset

from embedft.trainer import PlannedRichBar, PlannedTqdmBar


class _Stream(IterableDataset):
    """Five batches an epoch and no ``__len__``, as the triplet stream."""

    def __iter__(self):
        for _ in range(5):
            yield torch.ones(2)


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _bar_total(bar) -> float | None:
    if isinstance(bar, TQDMProgressBar):
        return bar.train_progress_bar.total
    return bar.progress.tasks[bar.train_progress_bar_id].total


class _Totals(L.Callback):
    """The bar's total at every batch, per epoch: {epoch: {total, ...}}."""

    def __init__(self, save_at_step: int | None = None, path=None) -> None:
        self.seen: dict[int, set] = {}
        self.save_at_step, self.path = save_at_step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        total = _bar_total(trainer.progress_bar_callback)
        self.seen.setdefault(trainer.current_epoch, set()).add(total)
        if trainer.global_step == self.save_at_step:
            trainer.save_checkpoint(self.path)


def _fit(bar, max_steps: int, tmp_path, ckpt_path=None, **totals):
    totals_cb = _Totals(**totals)
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar, totals_cb],
        default_root_dir=tmp_path,
    )
    trainer.fit(_Linear(), DataLoader(_Stream(), batch_size=None), ckpt_path=ckpt_path)
    return totals_cb.seen


@pytest.mark.parametrize("kind", ["tqdm", "rich"])
def test_progress_bar_shows_the_planned_batches_of_each_epoch(tmp_path, kind):
    # Given a stream without a length: Lightning's own bar has no total for it
    plain = _fit(TQDMProgressBar() if kind == "tqdm" else RichProgressBar(), 12, tmp_path)
    assert all(totals <= {None, float("inf")} for totals in plain.values())
    # When the run's bar knows its 12 planned steps and 5 batches an epoch
    bar = PlannedTqdmBar(12, 5) if kind == "tqdm" else PlannedRichBar(12, 5)
    # Then each epoch's total is what remains of the plan, at most an epoch: 5, 5, 2
    assert _fit(bar, 12, tmp_path) == {0: {5}, 1: {5}, 2: {2}}
    # And without a known epoch length, the planned steps
    assert _fit(bar.__class__(4, None), 4, tmp_path) == {0: {4}}


@pytest.mark.parametrize("kind", ["tqdm", "rich"])
def test_progress_bar_total_survives_a_resume_in_mid_epoch(tmp_path, kind):
    # Given a checkpoint at step 7 (epoch 1, 2 of its 5 batches done)
    bar = PlannedTqdmBar if kind == "tqdm" else PlannedRichBar
    ckpt = tmp_path / "mid.ckpt"
    _fit(bar(12, 5), 12, tmp_path, save_at_step=7, path=ckpt)
    # When a run resumes from it (Lightning calls no on_train_epoch_start for epoch 1 then)
    seen = _fit(bar(12, 5), 12, tmp_path, ckpt_path=ckpt)
    # Then the resumed epoch still has its total of 5 (this stream, unlike the triplet stream,
    # starts its epoch again, so the 5 remaining steps all fall into epoch 1)
    assert seen == {1: {5}}
