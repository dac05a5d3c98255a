"""The Lightning Trainer of ``embedft.run``, built in one place from ``TrainerConfig``.

``build_trainer`` maps the typed trainer settings onto ``lightning.Trainer`` and adds the
callbacks a run always has: ``ResumeCheckpoint`` (``last.ckpt``: by steps, by minutes, on
preemption; exact resume), ``StepMetrics`` (throughput, gradient norm, memory, similarities)
and, when STSB-dev validation is on (``eval.every_n_steps > 0``), ``StsDevCallback`` + a
``ModelCheckpoint`` keeping ``best.ckpt`` by that score. Lightning runs ``Checkpoint`` callbacks
last and in list order, so ``best.ckpt`` of a step is written before that step's ``last.ckpt``.

The triplet stream has no length, so Lightning's progress bar would show ``4/--`` and no ETA;
``planned_progress_bar`` gives it the run's planned batches. ``log_every_n_steps`` is capped at
the planned steps, so a short run still writes its metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

from embedft.checkpoint import load_checkpoint
from embedft.config import ConfigError, RunConfig
from embedft.quiet import third_party_notices_hidden
from embedft.results import Results
from embedft.resume import Preempted, ResumeCheckpoint, cluster_plugins
from embedft.step_metrics import StepMetrics

log = logging.getLogger(__name__)


@dataclass
class RunCallbacks:
    """The run's callbacks; ``embedft.run`` reads the dev curve and best checkpoint after fit."""

    last: ResumeCheckpoint
    planned_steps: int
    dev: Any = None  # StsDevCallback, when validation is on
    best: ModelCheckpoint | None = None
    bar: Any = None  # the progress bar, unless trainer.enable_progress_bar=false
    metrics: StepMetrics = field(default_factory=StepMetrics)

    def as_list(self) -> list[Any]:
        extra = [c for c in (self.bar, self.dev, self.best) if c is not None]
        return [self.metrics, *extra, self.last]

    def fit(
        self, trainer: L.Trainer, module: Any, datamodule: Any, resume_from: str | None
    ) -> None:
        """``trainer.fit`` from ``resume_from``, checkpoints read as plain data only."""
        try:
            with third_party_notices_hidden():
                trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        except SIGTERMException:  # Lightning's own exit after SIGTERM: a SystemExit, code 0
            if self.last.preempted_by is None:
                raise Preempted("preempted by SIGTERM before a checkpoint was written") from None

    def record(self, results: Results, trainer: L.Trainer, started: float) -> None:
        """What fit did, into ``results``: steps, per-step losses, dev curve, best checkpoint."""
        last = self.last
        step = trainer.global_step or _saved_step(last.path)  # ddp_spawn: steps ran in children
        results.train = {
            "global_step": step,
            "wall_time_s": round(time.perf_counter() - started, 2),
            "final_loss": last.losses[-1] if last.losses else None,
            "losses": [round(x, 6) for x in last.losses],
            "total_steps_planned": self.planned_steps,
            "resumed_from": (results.train or {}).get("resumed_from"),
        }
        best = self.best.best_model_path if self.best is not None else ""
        results.checkpoint = best or (str(last.path) if last.path.exists() else None)
        if self.dev is not None:
            results.stsb_dev = [{"step": s, "spearman": v} for s, v in self.dev.curve]
        if last.preempted_by is not None:
            results.error = (
                f"preempted by {last.preempted_by} at step {step}; checkpoint {last.path}"
            )

    def load_best(self, module: L.LightningModule) -> None:
        """Put STSB-dev's best adapters into ``module`` (no-op without validation)."""
        if self.best is not None and self.best.best_model_path:
            best = load_checkpoint(self.best.best_model_path, key="best")
            module.load_state_dict(best["state_dict"], strict=False)


def _saved_step(last_path: Path) -> int:
    if not last_path.exists():
        return 0
    return int(load_checkpoint(last_path, key="checkpoint")["global_step"])


def total_steps(cfg: RunConfig, batches_per_epoch: int | None) -> int:
    """Optimizer steps the run will take (the LR schedule's length).

    Lightning stops at whichever of ``trainer.max_steps`` and ``trainer.max_epochs`` comes first,
    so with a known epoch length the schedule is planned for the earlier one: a cosine planned for
    max_steps but cut by the epoch limit would never decay.
    """
    t = cfg.trainer
    by_epochs = (
        None
        if batches_per_epoch is None
        else max(1, batches_per_epoch * t.max_epochs // t.accumulate_grad_batches)
    )
    if t.max_steps > 0:
        if by_epochs is not None and by_epochs < t.max_steps:
            log.warning(
                "trainer.max_epochs=%d ends the run after %d optimizer steps, before "
                "trainer.max_steps=%d: the LR schedule is planned for %d steps (raise "
                "trainer.max_epochs to train %d)", t.max_epochs, by_epochs, t.max_steps,
                by_epochs, t.max_steps,
            )  # fmt: skip
            return by_epochs
        return t.max_steps
    if by_epochs is None:
        raise ConfigError(
            "the data stream has no known length: set data.num_examples or trainer.max_steps"
        )
    return by_epochs


def build_callbacks(
    cfg: RunConfig, ckpt_dir: Path, sts_dir: Path, steps: int, batches_per_epoch: int | None
) -> RunCallbacks:
    """The run's callbacks; ``steps`` planned optimizer steps, ``batches_per_epoch`` if known."""
    from embedft.eval.callback import StsDevCallback

    t = cfg.trainer
    callbacks = RunCallbacks(
        ResumeCheckpoint(ckpt_dir, t.save_every_n_steps, t.save_every_n_minutes), steps
    )
    if t.enable_progress_bar:
        callbacks.bar = planned_progress_bar(steps, batches_per_epoch)
    if cfg.eval.every_n_steps > 0:
        callbacks.dev = StsDevCallback(
            sts_dir, cfg.eval.every_n_steps, cfg.eval.batch_size, source=cfg.eval.source
        )
        callbacks.best = ModelCheckpoint(  # same interval as the dev score, else a stale value
            dirpath=ckpt_dir,
            filename="best",
            monitor=StsDevCallback.METRIC,
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            every_n_train_steps=cfg.eval.every_n_steps,
        )
    return callbacks


def build_trainer(
    cfg: RunConfig, out: Path, logger: Any, callbacks: RunCallbacks, gpu: bool
) -> L.Trainer:
    t = cfg.trainer
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if gpu else "32-true")
    with third_party_notices_hidden():  # Lightning's litlogger advertisement
        return L.Trainer(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=precision,
            max_epochs=t.max_epochs,
            max_steps=t.max_steps,
            accumulate_grad_batches=t.accumulate_grad_batches,
            # Gradient caching steps the optimizer itself and clips there (EmbeddingModule).
            gradient_clip_val=None if cfg.embed.grad_cache_chunk_tokens else t.gradient_clip_val,
            log_every_n_steps=min(t.log_every_n_steps, callbacks.planned_steps),
            deterministic=t.deterministic,
            enable_progress_bar=t.enable_progress_bar,
            logger=logger,
            callbacks=callbacks.as_list(),
            plugins=cluster_plugins(),
            default_root_dir=str(out),
            num_sanity_val_steps=0,
            limit_val_batches=0,
        )


class _PlannedTotal:
    """A progress bar whose epoch total is the run's planned batches of that epoch.

    Exact without gradient accumulation; with it, the last epoch may end a few batches off.
    With no known epoch length (a hub stream) the run is taken to end in its first epoch.
    """

    def __init__(self, planned_steps: int, batches_per_epoch: int | None) -> None:
        super().__init__()
        self.planned_steps, self.batches_per_epoch = planned_steps, batches_per_epoch

    @property
    def total_train_batches(self) -> int:
        trainer, per_epoch = self.trainer, self.batches_per_epoch
        planned = self.planned_steps * trainer.accumulate_grad_batches
        if per_epoch is None:
            return planned
        return max(0, min(per_epoch, planned - trainer.current_epoch * per_epoch))


class PlannedTqdmBar(_PlannedTotal, TQDMProgressBar):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # A resume in mid-epoch skips on_train_epoch_start, where the total is otherwise set.
        self.train_progress_bar.total = self.total_train_batches


class PlannedRichBar(_PlannedTotal, RichProgressBar):
    pass  # rich asks total_train_batches at epoch start and on a mid-epoch resume's first batch


def planned_progress_bar(planned_steps: int, batches_per_epoch: int | None) -> Any:
    """Lightning's default bar (rich when installed, else tqdm) with the planned total."""
    bar = PlannedRichBar if _RICH_AVAILABLE else PlannedTqdmBar
    return bar(planned_steps, batches_per_epoch)
