"""The Lightning Trainer of ``embedft.run``, built in one place from ``TrainerConfig``.

``build_trainer`` maps the typed trainer settings onto ``lightning.Trainer`` and adds the
callbacks a run always has: ``ResumeCheckpoint`` (``last.ckpt``: by steps, by minutes, on
preemption; exact resume) and, when STSB-dev validation is on (``eval.every_n_steps > 0``),
``StsDevCallback`` + a ``ModelCheckpoint`` keeping ``best.ckpt`` by that score. Lightning runs
``Checkpoint`` callbacks last and in list order, so ``best.ckpt`` of a step is written before
that step's ``last.ckpt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from embedft.config import ConfigError, RunConfig
from embedft.resume import ResumeCheckpoint, cluster_plugins


@dataclass
class RunCallbacks:
    """The callbacks ``embedft.run`` reads after fit (the dev curve, the best checkpoint)."""

    last: ResumeCheckpoint
    dev: Any = None  # StsDevCallback, when validation is on
    best: ModelCheckpoint | None = None

    def as_list(self) -> list[Any]:
        return [c for c in (self.dev, self.best) if c is not None] + [self.last]


def total_steps(cfg: RunConfig, batches_per_epoch: int | None) -> int:
    """Optimizer steps the run will take (the LR schedule's length)."""
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    if batches_per_epoch is None:
        raise ConfigError(
            "the data stream has no known length: set data.num_examples or trainer.max_steps"
        )
    return max(1, batches_per_epoch * cfg.trainer.max_epochs // cfg.trainer.accumulate_grad_batches)


def build_callbacks(cfg: RunConfig, ckpt_dir: Path, sts_dir: Path) -> RunCallbacks:
    from embedft.eval.callback import StsDevCallback

    t = cfg.trainer
    callbacks = RunCallbacks(
        ResumeCheckpoint(ckpt_dir, t.save_every_n_steps, t.save_every_n_minutes)
    )
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
        gradient_clip_val=None if cfg.embed.grad_cache_chunk_size else t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        logger=logger,
        callbacks=callbacks.as_list(),
        plugins=cluster_plugins(),
        default_root_dir=str(out),
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
