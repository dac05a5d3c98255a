"""Train a sentence-embedding model: ``python -m embedft.run [model=gemma] [loss.hard_neg=false]``.

Compose and validate the config, check the data, build embedder + datamodule + trainer, fit,
evaluate the 9 STS tasks with the best adapters, and write ``config.yaml``, ``results.json``,
``checkpoints/`` (adapters only) into the run's Hydra output directory. Sweeps: add ``-m``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from embedft.config import ConfigError, RunConfig, to_object
from embedft.data.datamodule import TripletDataModule, check_data
from embedft.loss import InfoNCELoss
from embedft.model.embedder import build_embedder, resolve_dtype
from embedft.module import EmbeddingModule
from embedft.paths import data_dir
from embedft.tracking import build_logger, finish, log_sts_table, write_json

log = logging.getLogger("embedft.run")


def check_run_config(cfg: RunConfig) -> None:
    """Checks that involve more than one group (single values are checked by the schemas)."""
    if cfg.loss.hard_neg and not cfg.data.negative_column:
        raise ConfigError(
            "loss.hard_neg=true needs hard negatives but data.negative_column is null; "
            "set loss.hard_neg=false or name the negative column"
        )
    if cfg.loss.grad_cache_chunk_size and cfg.trainer.accumulate_grad_batches > 1:
        raise ConfigError(
            "loss.grad_cache_chunk_size and trainer.accumulate_grad_batches > 1 do not combine: "
            "gradient caching already trains the whole batch at once"
        )


def on_gpu(cfg: RunConfig) -> bool:
    return cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def total_steps(cfg: RunConfig, batches_per_epoch: int | None) -> int:
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    if batches_per_epoch is None:
        raise ConfigError(
            "the data stream has no known length: set data.num_examples or trainer.max_steps"
        )
    return max(1, batches_per_epoch * cfg.trainer.max_epochs // cfg.trainer.accumulate_grad_batches)


def _job_context() -> tuple[list[str], str | None]:
    """This job's overrides and, in a multirun, the sweep name (the W&B group)."""
    if not HydraConfig.initialized():
        return [], None
    hc = HydraConfig.get()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return list(hc.overrides.task), group


_HELD_GPU_LOCKS: list[Any] = []  # open lock files: the claim lasts until this process exits


def claim_gpus(cfg: RunConfig, poll_s: float = 5.0) -> None:
    """Under ``hydra/launcher=gpus`` hold ``trainer.devices`` of the visible GPUs for this job.

    submitit's local executor starts every job of a sweep at once and gives each the same
    ``CUDA_VISIBLE_DEVICES`` (all GPUs). Each job takes an exclusive file lock per GPU it uses
    and waits while none is free, so the GPUs run one job each; the OS drops the locks when the
    job's process ends, crashed or not. Must run before anything initialises CUDA.
    """
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    want = cfg.trainer.devices
    if (
        os.environ.get("SUBMITIT_EXECUTOR") != "local"
        or cfg.trainer.accelerator == "cpu"
        or not isinstance(want, int)
        or not 0 < want < len(visible)
    ):
        return
    lock_dir = Path(tempfile.gettempdir()) / f"embedft-gpu-locks-{os.getuid()}"
    lock_dir.mkdir(exist_ok=True)
    while True:
        held = []
        for dev in visible:
            handle = open(lock_dir / f"gpu{dev.strip()}.lock", "w")  # stays open: holds the lock
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((dev.strip(), handle))
            if len(held) == want:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(d for d, _ in held)
                _HELD_GPU_LOCKS.extend(h for _, h in held)
                log.info("claimed GPU(s) %s of %s", os.environ["CUDA_VISIBLE_DEVICES"], visible)
                return
        for _, handle in held:  # not enough free: let go, so that two jobs cannot deadlock
            handle.close()
        time.sleep(poll_s)


def train(dcfg: DictConfig) -> dict[str, Any]:
    cfg: RunConfig = to_object(dcfg)
    check_run_config(cfg)
    claim_gpus(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    overrides, group = _job_context()
    resolved = OmegaConf.to_container(dcfg, resolve=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    results: dict[str, Any] = {
        "kind": "train",
        "status": "running",
        "model": cfg.model.name,
        "overrides": overrides,
        "config": resolved,
        "sts": {},
        "stsb_dev": [],
        "train": {},
        "checkpoint": None,
        "error": None,
    }
    write_json(out / "results.json", results)
    try:
        _fit_and_evaluate(cfg, dcfg, out, overrides, group, results)
        results["status"] = "completed"
    except BaseException as err:
        results["status"] = "failed"
        results["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        write_json(out / "results.json", results)
        # Also after a failure: the next job of a multirun must not log into this W&B run.
        finish(exit_code=0 if results["status"] == "completed" else 1)
    return results


def _fit_and_evaluate(cfg, dcfg, out, overrides, group, results) -> None:
    from embedft.eval.callback import StsDevCallback
    from embedft.eval.sts import evaluate_sts

    L.seed_everything(cfg.seed, workers=True)
    sts_dir = Path(cfg.paths.data_dir) if cfg.paths.data_dir else data_dir()
    num_examples = check_data(cfg.data)  # fail on missing data before any model loads
    gpu = on_gpu(cfg)
    device = "cuda" if gpu else "cpu"
    embedder = build_embedder(
        cfg.model,
        cfg.lora,
        device="cpu",  # Lightning moves it to each rank's device
        dtype=resolve_dtype(cfg.model.dtype, device),
        gradient_checkpointing=cfg.trainer.gradient_checkpointing,
    )
    datamodule = TripletDataModule(
        cfg.data, embedder.tokenizer, cfg.model.max_length, cfg.model.append_eos, cfg.seed
    )
    datamodule.num_examples = num_examples
    world = _world_size(cfg)
    steps = total_steps(cfg, datamodule.batches_per_epoch(world))
    loss_fn = InfoNCELoss(
        cfg.loss.temperature,
        cfg.loss.hard_neg,
        cfg.loss.gather_across_ranks,
        cfg.loss.mask_duplicate_positives,
    )
    module = EmbeddingModule(
        embedder,
        loss_fn,
        cfg.optim,
        steps,
        config=OmegaConf.to_container(dcfg, resolve=True),
        grad_cache_chunk_size=cfg.loss.grad_cache_chunk_size,
        pack_len=cfg.trainer.pack_len,
    )
    if cfg.trainer.compile:
        module.embedder.backbone = torch.compile(module.embedder.backbone)

    ckpt_dir = out / "checkpoints"
    callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step{step}",
            auto_insert_metric_name=False,
            save_last=True,
            every_n_train_steps=cfg.trainer.save_every_n_steps,
            save_top_k=0,
        )
    ]
    dev_cb, best = None, None
    if cfg.eval.every_n_steps > 0:
        dev_cb = StsDevCallback(
            sts_dir, cfg.eval.every_n_steps, cfg.eval.batch_size, source=cfg.eval.source
        )
        best = ModelCheckpoint(  # same interval as the dev score, else it sees a stale value
            dirpath=ckpt_dir,
            filename="best",
            monitor="val/stsb_spearman",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            every_n_train_steps=cfg.eval.every_n_steps,
        )
        callbacks += [dev_cb, best]
    logger = build_logger(cfg.logger, out, overrides, group)
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = "bf16-mixed" if gpu else "32-true"
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        precision=precision,
        max_epochs=cfg.trainer.max_epochs,
        max_steps=cfg.trainer.max_steps,
        accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=None if cfg.loss.grad_cache_chunk_size else cfg.trainer.gradient_clip_val,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        deterministic=cfg.trainer.deterministic,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(out),
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    if logger:
        logger.log_hyperparams(results["config"])
    resume = _resume_path(cfg, ckpt_dir, multirun=group is not None)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    last_path = ckpt_dir / "last.ckpt"
    results["train"] = {
        "global_step": _global_step(trainer, last_path),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "final_loss": _float(trainer.callback_metrics.get("train/loss")),
        "total_steps_planned": steps,
        "resumed_from": resume,
    }
    best_path = best.best_model_path if best is not None else ""
    results["checkpoint"] = best_path or (str(last_path) if last_path.exists() else None)
    if dev_cb is not None:
        results["stsb_dev"] = [{"step": s, "spearman": v} for s, v in dev_cb.curve]
    write_json(out / "results.json", results)

    if cfg.eval.after_fit and trainer.is_global_zero:
        if best_path:  # score the adapters STSB-dev picked, not the last step's
            best = torch.load(best_path, map_location="cpu", weights_only=False)
            module.load_state_dict(best["state_dict"], strict=False)
        results["sts"] = evaluate_sts(
            module.embedder,
            cfg.eval.tasks,
            sts_dir,
            batch_size=cfg.eval.batch_size,
            split=cfg.eval.split,
            source=cfg.eval.source,
        )
        log_sts_table(logger, results["sts"])


def _world_size(cfg: RunConfig) -> int:
    devices = cfg.trainer.devices
    n = devices if isinstance(devices, int) else (len(devices) if isinstance(devices, list) else 1)
    return max(1, n) * cfg.trainer.num_nodes


def _resume_path(cfg: RunConfig, ckpt_dir: Path, multirun: bool = False) -> str | None:
    # A sweep job that finds a last.ckpt in its own output dir was requeued (preempted or timed
    # out on SLURM: submitit resubmits the same job) or its sweep is being rerun: continue it.
    if cfg.resume == "auto" or (cfg.resume is None and multirun):
        last = ckpt_dir / "last.ckpt"
        if last.exists():
            log.info("resuming from %s", last)
        return str(last) if last.exists() else None
    if cfg.resume is None:
        return None
    if not Path(cfg.resume).is_file():
        raise ConfigError(f"resume: checkpoint {cfg.resume} does not exist")
    return cfg.resume


def _global_step(trainer: L.Trainer, last_path: Path) -> int:
    # Under ddp_spawn the steps run in child processes: this process's trainer counted none.
    if trainer.global_step == 0 and last_path.exists():
        return int(torch.load(last_path, map_location="cpu", weights_only=False)["global_step"])
    return trainer.global_step


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


@hydra.main(version_base="1.3", config_path="../conf", config_name="run")
def main(dcfg: DictConfig) -> float | None:
    results = train(dcfg)
    return results["sts"].get("average")


if __name__ == "__main__":
    main()
