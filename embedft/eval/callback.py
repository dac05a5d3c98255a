"""STSBenchmark-dev Spearman during training, logged for checkpoint selection.

``StsDevCallback`` scores ``pl_module.embedder`` on STSB-dev (1,500 pairs) every ``every_n_steps``
optimizer steps and once more at the final step, logs it as ``val/stsb_spearman`` and keeps the
curve ``[(step, spearman), ...]`` in ``callback.curve`` (saved in checkpoints, for results.json).

Why a callback rather than ``validation_step``: the score is one correlation over the whole dev
set, not a mean of per-batch values, and the encoder's dedup/length sort needs all sentences at
once; a callback keeps it out of the LightningModule. Lightning allows ``pl_module.log`` in
``on_train_batch_end``, the value enters ``trainer.callback_metrics`` at once, and Lightning runs
``ModelCheckpoint`` callbacks after all others, so
``ModelCheckpoint(monitor="val/stsb_spearman", mode="max", every_n_train_steps=every_n_steps)``
sees the fresh value at the same step. Give it the same step interval: without
``every_n_train_steps`` it only checks at epoch end and so keeps the last model, not the best;
at other steps it would file the previous evaluation's score under a newer model.

Multi-GPU (DDP): every rank computes the score on the full dev set. The ranks hold identical
weights, so the values agree, every rank has the metric that ``ModelCheckpoint`` looks for, and
no collective call is needed; 1,500 pairs take seconds on a GPU. The embedder runs in eval mode
under ``torch.inference_mode`` and goes back to train mode afterwards (see ``encode_texts``).

    >>> cb = StsDevCallback(data_dir=None, every_n_steps=100, batch_size=64)   # doctest: +SKIP
    >>> trainer = L.Trainer(callbacks=[cb, ModelCheckpoint(monitor=cb.METRIC, mode="max",
    ...                                every_n_train_steps=100)])               # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L

from embedft.eval.sts import StsPairs, load_tasks, score_pairs
from embedft.module import NonFiniteError

log = logging.getLogger(__name__)


class StsDevCallback(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end), log STSB-dev Spearman x 100."""

    METRIC = "val/stsb_spearman"

    def __init__(
        self,
        data_dir: str | Path | None = None,
        every_n_steps: int = 100,
        batch_size: int = 64,
        source: str = "local",
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.data_dir = data_dir
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.source = source
        self.curve: list[tuple[int, float]] = []
        self._dev: dict[str, StsPairs] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Load at setup so that a missing file fails before the first training step.
        if stage == "fit" and self._dev is None:
            self._dev = load_tasks(["STSBenchmark"], self.data_dir, "dev", self.source)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        # With gradient accumulation this hook runs several times per optimizer step.
        if step == 0 or (self.curve and self.curve[-1][0] == step):
            return
        if step % self.every_n_steps == 0 or _is_final_step(trainer):
            spearman = self.evaluate(trainer, pl_module)
            pl_module.log(self.METRIC, spearman, on_step=True, on_epoch=False, prog_bar=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Training stopped before the step it was configured to end at (early stopping, a time
        # limit): still record the final model. Lightning forbids logging here, so the value only
        # reaches the curve.
        step = trainer.global_step
        if step > 0 and not (self.curve and self.curve[-1][0] == step):
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """Score ``pl_module.embedder`` on STSB-dev, append ``(step, spearman)`` to the curve."""
        if self._dev is None:
            self._dev = load_tasks(["STSBenchmark"], self.data_dir, "dev", self.source)
        scores = score_pairs(pl_module.embedder, self._dev, self.batch_size, show_progress=False)
        spearman = scores["STSBenchmark"]
        if not math.isfinite(spearman):  # before ModelCheckpoint could file it as the best
            raise NonFiniteError(
                f"STSB-dev Spearman is {spearman} at step {trainer.global_step}: the embeddings "
                "are not finite (learning rate too high?); no checkpoint is written from them"
            )
        self.curve.append((trainer.global_step, spearman))
        log.info("step %d: STSB-dev Spearman %.2f", trainer.global_step, spearman)
        return spearman

    def state_dict(self) -> dict[str, Any]:
        return {"curve": [list(point) for point in self.curve]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = [(int(step), float(value)) for step, value in state_dict["curve"]]


def _is_final_step(trainer: L.Trainer) -> bool:
    """True at the optimizer step where fit will stop (max_steps, or the last epoch's last batch)."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        if trainer.global_step >= trainer.max_steps:
            return True
    max_epochs = trainer.max_epochs
    last_epoch = (
        max_epochs is not None and max_epochs >= 1 and trainer.current_epoch >= max_epochs - 1
    )
    return bool(trainer.is_last_batch and last_epoch)
