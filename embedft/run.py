"""Train a sentence-embedding model: ``python -m embedft.run [model=gemma] [loss.hard_neg=false]``.

Compose and validate the config, check the data, build embedder + datamodule + trainer, fit,
evaluate the 9 STS tasks with the best adapters, and write ``config.yaml``, ``results.json``,
``checkpoints/`` (adapters only) into the run's Hydra output directory. Sweeps: add ``-m``.

A run owns its directory (``embedft.resume.claim_output_dir``): a directory holding another
run is refused unless ``resume=auto``; a sweep job re-run keeps a completed job's results and
resumes the others from ``last.ckpt``. ``results.json`` always ends ``completed``, ``failed``
(with the error, also for config errors and NaN losses) or ``preempted`` (exit code 143, after
a checkpoint); resuming is exact (``embedft/resume.py``).

Under DDP whose processes are started from outside (srun for ``hydra/launcher=slurm_multinode``,
Lightning's re-launch for ``strategy=ddp``) every rank runs ``train``; only rank 0
(``launch.is_rank_zero``) claims the directory and writes ``results.json`` and ``config.yaml``,
and Lightning writes checkpoints and logs from rank 0 (``embedft/slurm.py``).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from embedft import resume
from embedft.checkpoint import load_checkpoint
from embedft.config import RunConfig, check_run_config, moved_key_error, to_object, world_size
from embedft.data.datamodule import TripletDataModule, check_data
from embedft.extras import launcher_error
from embedft.launch import claim_gpus, is_rank_zero, job_context, on_gpu
from embedft.losses import build_loss
from embedft.model.embedder import build_embedder, resolve_dtype
from embedft.module import EmbeddingModule
from embedft.paths import conf_dir, data_dir
from embedft.results import Results
from embedft.slurm import check_slurm_job
from embedft.tracking import build_logger, finish, log_sts_table, wandb_run_id
from embedft.trainer import build_callbacks, build_trainer, total_steps

log = logging.getLogger("embedft.run")


def train(dcfg: DictConfig) -> Results:
    out = Path(dcfg.paths.output_dir)
    overrides, group = job_context()
    # Claim the directory before writing anything: a run never writes into another one's.
    if is_rank_zero():  # the other ranks of a DDP job train in rank 0's directory
        resume.claim_output_dir(out, resume=dcfg.get("resume"), multirun=group is not None)
    prior = resume.read_results(out)
    results = Results.from_dict(prior) if prior else Results("train", str(dcfg.model.get("name")))
    if results.status == "completed":
        log.info("%s already completed: keeping its results (delete it to run again)", out)
        results.attempts.append({"started": time.strftime("%FT%T%z"), "status": "kept"})
        _write(results, out)
        return results
    results.overrides, results.status, results.error, hand_over = overrides, "running", None, None
    results.start_attempt()
    _write(results, out)
    try:
        with resume.preemption_raises():  # a signal outside fit: "preempted", not "running"
            cfg: RunConfig = to_object(dcfg, RunConfig)
            check_run_config(cfg, overrides)
            check_slurm_job(cfg.trainer)
            results.config = OmegaConf.to_container(dcfg, resolve=True)
            if is_rank_zero():
                (out / "config.yaml").write_text(OmegaConf.to_yaml(results.config))
            claim_gpus(cfg)
            hand_over = fit_and_evaluate(cfg, out, group, results)
        results.end("preempted" if hand_over else "completed", results.error)
    except resume.Preempted as err:
        results.end("preempted", str(err))
    except BaseException as err:
        results.end("failed", f"{type(err).__name__}: {err}")
        log.error("run failed: %s", results.error)  # into the job's run.log, too
        raise
    finally:
        _write(results, out)
        # Also after a failure: the next job of a multirun must not log into this W&B run.
        finish(exit_code=0 if results.status == "completed" else 1)
    if results.status == "preempted":
        log.warning("%s; resume with resume=auto hydra.run.dir=%s", results.error, out)
        if hand_over is not None:
            hand_over()  # the scheduler's requeue, now that checkpoint and results are safe
        raise SystemExit(resume.EXIT_PREEMPTED)
    return results


def fit_and_evaluate(cfg: RunConfig, out: Path, group: str | None, results: Results) -> Any:
    """Fit, then score the best adapters; returns the requeue hand-over if preempted."""
    from embedft.eval.sts import evaluate_sts

    L.seed_everything(cfg.seed, workers=True)
    sts_dir = Path(cfg.paths.data_dir) if cfg.paths.data_dir else data_dir()
    report = check_data(cfg.data)  # fail on missing/bad data before any model loads
    results.data = asdict(report)
    resume_from, state = resume.find_resume(cfg, out / "checkpoints", multirun=group is not None)
    gpu = on_gpu(cfg)
    embedder = build_embedder(
        cfg.model,
        cfg.lora,
        embed_cfg=cfg.embed,
        device="cpu",  # Lightning moves it to each rank's device
        dtype=resolve_dtype(cfg.model.dtype, "cuda" if gpu else "cpu"),
        gradient_checkpointing=cfg.trainer.gradient_checkpointing,
    )
    datamodule = TripletDataModule.for_run(cfg, embedder.tokenizer, report)
    steps = total_steps(cfg, datamodule.batches_per_epoch(world_size(cfg.trainer)))
    logger = build_logger(cfg.logger, out, results.overrides, group, run_id=state.get("wandb_id"))
    if resume_from is not None:
        resume.continue_csv_log(logger, state["global_step"], state.get("log_row"))
    module = EmbeddingModule(
        embedder,
        build_loss(cfg.loss),
        cfg.optim,
        steps,
        config=results.config,
        grad_cache_chunk_tokens=cfg.embed.grad_cache_chunk_tokens,
        run_state={"wandb_id": wandb_run_id(logger)},
    )
    if cfg.trainer.compile:
        module.embedder.backbone = torch.compile(module.embedder.backbone)
    callbacks = build_callbacks(cfg, out / "checkpoints", sts_dir)
    trainer = build_trainer(cfg, out, logger, callbacks, gpu)
    if logger:
        logger.log_hyperparams(results.config)
    results.train, started = {"resumed_from": resume_from}, time.perf_counter()
    callbacks.fit(trainer, module, datamodule, resume_from)
    callbacks.record(results, trainer, steps, started)
    if callbacks.last.preempted_by is not None:
        return callbacks.last.hand_over
    _write(results, out)
    if cfg.eval.after_fit and trainer.is_global_zero:
        if callbacks.best is not None and callbacks.best.best_model_path:  # STSB-dev's pick
            best = load_checkpoint(callbacks.best.best_model_path, key="best")
            module.load_state_dict(best["state_dict"], strict=False)
        ev = cfg.eval
        results.sts = evaluate_sts(
            module.embedder, ev.tasks, sts_dir, ev.batch_size, split=ev.split, source=ev.source
        )
        log_sts_table(logger, results.sts)
    return None


def _write(results: Results, out: Path) -> None:
    """``results.json`` is rank 0's: the other ranks of a DDP job train and write nothing."""
    if is_rank_zero():
        results.write(out)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="run")
def main(dcfg: DictConfig) -> float | None:
    return train(dcfg).sts.get("average")


def cli() -> None:
    """``python -m embedft.run`` and ``embedft-run``: Hydra's app, after the checks of the command
    line whose Hydra error would not say what to do (a moved key, a launcher's missing extra)."""
    if problem := moved_key_error(sys.argv[1:]) or launcher_error(sys.argv[1:]):
        sys.exit(problem)
    main()


if __name__ == "__main__":
    cli()
