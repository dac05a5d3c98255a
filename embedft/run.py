"""Train a sentence-embedding model: ``python -m embedft.run [model=gemma] [loss.hard_neg=false]``.

Compose and validate the config, check the data, build embedder + datamodule + trainer, fit,
evaluate the 9 STS tasks with the best adapters, and write ``config.yaml``, ``results.json``,
``checkpoints/`` (adapters only) into the run's Hydra output directory. Sweeps: add ``-m``.

A run owns its directory (``embedft.resume.claim_output_dir``): a directory holding another
run is refused unless ``resume=auto``; a sweep job re-run keeps a completed job's results and
resumes the others from ``last.ckpt``. ``results.json`` always ends ``completed``, ``failed``
(with the error, also for config errors and NaN losses) or ``preempted`` (exit code 143, after
a checkpoint); resuming is exact (see ``embedft/resume.py``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from embedft.checkpoint import load_checkpoint
from embedft.config import ConfigError, RunConfig, to_object
from embedft.data.datamodule import TripletDataModule, check_data
from embedft.loss import InfoNCELoss
from embedft.model.embedder import build_embedder, resolve_dtype
from embedft.module import EmbeddingModule
from embedft.paths import data_dir
from embedft.resume import (
    EXIT_PREEMPTED,
    Preempted,
    ResumeCheckpoint,
    claim_output_dir,
    cluster_plugins,
    continue_csv_log,
    preemption_raises,
    read_results,
)
from embedft.tracking import build_logger, finish, log_sts_table, wandb_run_id, write_json

log = logging.getLogger("embedft.run")


def check_run_config(cfg: RunConfig, overrides: list[str] | None = None) -> None:
    """Checks that involve more than one group (single values are checked by the schemas)."""
    if not cfg.loss.hard_neg and cfg.data.batch_size * _world_size(cfg) < 2:
        raise ConfigError(
            "data.batch_size=1 with loss.hard_neg=false leaves InfoNCE no negative: the loss is "
            "0 whatever the model does; use data.batch_size >= 2 or loss.hard_neg=true"
        )
    if cfg.model.trust_remote_code and not any(
        o.lstrip("+").startswith("model.trust_remote_code=") for o in overrides or []
    ):
        raise ConfigError(
            "model.trust_remote_code=true runs Python code from the model's files: it is only "
            "accepted on the command line (model.trust_remote_code=true), never from a file"
        )
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
    out = Path(dcfg.paths.output_dir)
    overrides, group = _job_context()
    multirun = group is not None
    # Claim the directory before writing anything: a run never writes into another one's.
    claim_output_dir(out, resume=dcfg.get("resume"), multirun=multirun)
    prior = read_results(out)
    if prior is not None and prior.get("status") == "completed":
        log.info("%s already completed: keeping its results (delete the dir to run it again)", out)
        prior.setdefault("attempts", []).append({"started": _now(), "status": "kept"})
        write_json(out / "results.json", prior)
        return prior
    hand_over = None  # after a signal during fit: the scheduler's requeue, once results are safe
    results: dict[str, Any] = {
        "kind": "train",
        "status": "running",
        "model": str(dcfg.model.get("name", "?")),
        "overrides": overrides,
        "config": None,
        "sts": {},
        "stsb_dev": [],
        "train": {},
        "data": None,
        "checkpoint": None,
        "error": None,
        "attempts": (prior or {}).get("attempts", []) + [{"started": _now(), "status": "running"}],
    }
    write_json(out / "results.json", results)
    try:
        with preemption_raises():  # a signal outside fit: results say preempted, not running
            cfg: RunConfig = to_object(dcfg, RunConfig)
            check_run_config(cfg, overrides)
            results["config"] = OmegaConf.to_container(dcfg, resolve=True)
            (out / "config.yaml").write_text(OmegaConf.to_yaml(results["config"]))
            claim_gpus(cfg)
            hand_over = _fit_and_evaluate(cfg, dcfg, out, overrides, group, results)
        results["status"] = results["status"] if results["status"] == "preempted" else "completed"
    except Preempted as err:
        results["status"], results["error"] = "preempted", str(err)
    except BaseException as err:
        results["status"] = "failed"
        results["error"] = f"{type(err).__name__}: {err}"
        log.error("run failed: %s", results["error"])  # into the job's run.log, too
        raise
    finally:
        results["attempts"][-1].update(status=results["status"], ended=_now())
        write_json(out / "results.json", results)
        # Also after a failure: the next job of a multirun must not log into this W&B run.
        finish(exit_code=0 if results["status"] == "completed" else 1)
    if results["status"] == "preempted":
        log.warning("%s; resume with resume=auto hydra.run.dir=%s", results["error"], out)
        if hand_over is not None:
            hand_over()
        raise SystemExit(EXIT_PREEMPTED)
    return results


def _fit_and_evaluate(cfg, dcfg, out, overrides, group, results) -> Any:
    from embedft.eval.callback import StsDevCallback
    from embedft.eval.sts import evaluate_sts

    L.seed_everything(cfg.seed, workers=True)
    sts_dir = Path(cfg.paths.data_dir) if cfg.paths.data_dir else data_dir()
    data_report = check_data(cfg.data)  # fail on missing/bad data before any model loads
    results["data"] = asdict(data_report)
    ckpt_dir = out / "checkpoints"
    resume, resume_state = _resume_path(cfg, ckpt_dir, multirun=group is not None)
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
        cfg.data,
        embedder.tokenizer,
        cfg.model.max_length,
        cfg.model.append_eos,
        cfg.seed,
        prompt=cfg.model.prompt,
        with_negatives=cfg.loss.hard_neg,  # Eq. 2 never looks at them: not even tokenised
    )
    datamodule.num_examples = data_report.rows_used
    world = _world_size(cfg)
    steps = total_steps(cfg, datamodule.batches_per_epoch(world))
    loss_fn = InfoNCELoss(
        cfg.loss.temperature,
        cfg.loss.hard_neg,
        cfg.loss.gather_across_ranks,
        cfg.loss.mask_duplicate_positives,
    )
    logger = build_logger(cfg.logger, out, overrides, group, run_id=resume_state.get("wandb_id"))
    if resume is not None:
        continue_csv_log(logger, resume_state["global_step"], resume_state.get("log_row"))
    module = EmbeddingModule(
        embedder,
        loss_fn,
        cfg.optim,
        steps,
        config=results["config"],
        grad_cache_chunk_size=cfg.loss.grad_cache_chunk_size,
        pack_len=cfg.trainer.pack_len,
        run_state={"wandb_id": wandb_run_id(logger)},
    )
    if cfg.trainer.compile:
        module.embedder.backbone = torch.compile(module.embedder.backbone)

    last = ResumeCheckpoint(
        ckpt_dir, cfg.trainer.save_every_n_steps, cfg.trainer.save_every_n_minutes
    )
    callbacks: list[Any] = []
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
    callbacks.append(last)  # after best.ckpt: Lightning keeps the order of Checkpoint callbacks
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
        plugins=cluster_plugins(),
        default_root_dir=str(out),
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    if logger:
        logger.log_hyperparams(results["config"])
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    except SIGTERMException:  # Lightning's own exit after SIGTERM: a SystemExit with code 0
        if last.preempted_by is None:
            raise Preempted("preempted by SIGTERM before a checkpoint could be written") from None
    last_path = last.path
    results["train"] = {
        "global_step": _global_step(trainer, last_path),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "final_loss": last.losses[-1] if last.losses else None,
        "losses": [round(x, 6) for x in last.losses],
        "total_steps_planned": steps,
        "resumed_from": resume,
    }
    best_path = best.best_model_path if best is not None else ""
    results["checkpoint"] = best_path or (str(last_path) if last_path.exists() else None)
    if dev_cb is not None:
        results["stsb_dev"] = [{"step": s, "spearman": v} for s, v in dev_cb.curve]
    if last.preempted_by is not None:
        results["status"] = "preempted"
        results["error"] = (
            f"preempted by {last.preempted_by} at step {results['train']['global_step']}; "
            f"checkpoint {last_path}"
        )
        return last.hand_over
    write_json(out / "results.json", results)

    if cfg.eval.after_fit and trainer.is_global_zero:
        if best_path:  # score the adapters STSB-dev picked, not the last step's
            best_ckpt = load_checkpoint(best_path, key="best")
            module.load_state_dict(best_ckpt["state_dict"], strict=False)
        results["sts"] = evaluate_sts(
            module.embedder,
            cfg.eval.tasks,
            sts_dir,
            batch_size=cfg.eval.batch_size,
            split=cfg.eval.split,
            source=cfg.eval.source,
        )
        log_sts_table(logger, results["sts"])
    return None


def _world_size(cfg: RunConfig) -> int:
    devices = cfg.trainer.devices
    n = devices if isinstance(devices, int) else (len(devices) if isinstance(devices, list) else 1)
    return max(1, n) * cfg.trainer.num_nodes


def _resume_path(
    cfg: RunConfig, ckpt_dir: Path, multirun: bool = False
) -> tuple[str | None, dict[str, Any]]:
    """The checkpoint to resume from (validated, before any model loads) and its run state."""
    # A sweep job that finds a last.ckpt in its own output dir was requeued (preempted or timed
    # out on SLURM: submitit resubmits the same job) or its sweep is being rerun: continue it.
    path: Path | None = None
    if cfg.resume == "auto" or (cfg.resume is None and multirun):
        last = ckpt_dir / ResumeCheckpoint.FILENAME
        path = last if last.exists() else None
    elif cfg.resume is not None:
        path = Path(cfg.resume)
    if path is None:
        return None, {}
    ckpt = load_checkpoint(path, key="resume")
    saved_model = ckpt["embedft_config"].get("model", {}).get("name")
    if saved_model != cfg.model.name:
        raise ConfigError(
            f"resume: {path} was trained with model={saved_model}, this run has "
            f"model={cfg.model.name}"
        )
    log.info("resuming from %s (step %s)", path, ckpt.get("global_step"))
    state = dict(ckpt.get("embedft_run") or {})
    state["global_step"] = int(ckpt.get("global_step", 0))
    state["log_row"] = ckpt.get("embedft_log_row")
    return str(path), state


def _global_step(trainer: L.Trainer, last_path: Path) -> int:
    # Under ddp_spawn the steps run in child processes: this process's trainer counted none.
    if trainer.global_step == 0 and last_path.exists():
        return int(load_checkpoint(last_path, key="checkpoint")["global_step"])
    return trainer.global_step


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@hydra.main(version_base="1.3", config_path="../conf", config_name="run")
def main(dcfg: DictConfig) -> float | None:
    results = train(dcfg)
    return results["sts"].get("average")


if __name__ == "__main__":
    main()
