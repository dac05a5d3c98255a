"""Train a sentence-embedding model: ``python -m embedft.run [model=gemma] [loss.hard_neg=false]``.

Compose and validate the config, check the data (triplets, STS files), build embedder +
datamodule + trainer, fit, evaluate the 9 STS tasks with the best adapters, write ``config.yaml``,
``results.json``, ``checkpoints/`` (adapters only) into the run's Hydra output directory, and log
what happened and what to run next (``embedft.run_summary``). Sweeps: add ``-m``.
A run owns its directory (``embedft.resume``): another run's is refused unless ``resume=auto``;
``results.json`` ends ``completed``, ``failed`` or ``preempted`` (exit 143, after a checkpoint).
Under DDP started from outside (srun, Lightning's re-launch) only rank 0
(``launch.is_rank_zero``) claims the directory and writes ``results.json`` and ``config.yaml``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from embedft import resume
from embedft.config import RunConfig, check_run_config, moved_key_error, to_object, world_size
from embedft.data.datamodule import TripletDataModule, check_data
from embedft.extras import launcher_error
from embedft.launch import JobContext, claim_gpus, is_rank_zero, job_context, on_gpu
from embedft.losses import build_loss
from embedft.model.embedder import build_embedder, compile_layers, resolve_dtype
from embedft.module import EmbeddingModule
from embedft.paths import conf_dir, data_dir
from embedft.results import Results
from embedft.run_summary import log_run_summary
from embedft.slurm import check_slurm_job
from embedft.tracking import build_logger, finish, log_outcome, wandb_run_id
from embedft.trainer import build_callbacks, build_trainer, total_steps


def train(dcfg: DictConfig) -> Results:
    out, job = Path(dcfg.paths.output_dir), job_context()
    if is_rank_zero():  # claim the directory before writing; other ranks train in rank 0's
        resume.claim_output_dir(out, resume=dcfg.get("resume"), multirun=job.multirun)
    prior = resume.read_results(out)
    results = Results.from_dict(prior) if prior else Results("train", str(dcfg.model.get("name")))
    if results.status == "completed":
        return results.keep(out)
    results.overrides, results.status, results.error = job.overrides, "running", None
    hand_over = None
    results.start_attempt()
    results.write(out)
    try:
        with resume.preemption_raises():  # a signal outside fit: "preempted", not "running"
            cfg: RunConfig = to_object(dcfg, RunConfig)
            check_run_config(cfg, job.overrides)
            check_slurm_job(cfg.trainer)
            results.config = OmegaConf.to_container(dcfg, resolve=True)
            results.write_config(out)
            claim_gpus(cfg)
            hand_over = fit_and_evaluate(cfg, out, job, results)
        results.end("preempted" if hand_over else "completed", results.error)
    except resume.Preempted as err:
        results.end("preempted", str(err))
    except BaseException as err:
        results.end("failed", f"{type(err).__name__}: {err}")
        raise
    finally:
        results.write(out)
        # Also after a failure: the next job of a multirun must not log into this W&B run.
        finish(exit_code=0 if results.status == "completed" else 1)
        log_run_summary(results, out)  # into the job's run.log, too
    if results.status == "preempted":
        if hand_over is not None:
            hand_over()  # the scheduler's requeue, now that checkpoint and results are safe
        raise SystemExit(resume.EXIT_PREEMPTED)
    return results


def fit_and_evaluate(cfg: RunConfig, out: Path, job: JobContext, results: Results) -> Any:
    """Fit, then score the best adapters; returns the requeue hand-over if preempted."""
    from embedft.eval.sts import check_eval_data, evaluate_sts

    L.seed_everything(cfg.seed, workers=True)
    sts_dir = Path(cfg.paths.data_dir) if cfg.paths.data_dir else data_dir()
    report = check_data(cfg.data)  # fail on missing/bad data before any model loads
    check_eval_data(cfg.eval, sts_dir)
    results.data = asdict(report)
    resume_from, state = resume.find_resume(cfg, out / "checkpoints", multirun=job.multirun)
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
    batches = datamodule.batches_per_epoch(world_size(cfg.trainer))
    steps = total_steps(cfg, batches)
    logger = build_logger(cfg.logger, out, job, run_id=state.get("wandb_id"))
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
        compile_layers(module.embedder.backbone)
    callbacks = build_callbacks(cfg, out / "checkpoints", sts_dir, steps, batches)
    trainer = build_trainer(cfg, out, logger, callbacks, gpu)
    if logger:
        logger.log_hyperparams(results.config)
    results.train, started = {"resumed_from": resume_from}, time.perf_counter()
    callbacks.fit(trainer, module, datamodule, resume_from)
    callbacks.record(results, trainer, started)
    if callbacks.last.preempted_by is not None:
        return callbacks.last.hand_over
    results.write(out)
    if cfg.eval.after_fit and trainer.is_global_zero:
        callbacks.load_best(module)  # STSB-dev's pick
        ev = cfg.eval
        results.sts = evaluate_sts(
            module.embedder, ev.tasks, sts_dir, ev.batch_size, split=ev.split, source=ev.source
        )
    log_outcome(logger, results.checkpoint, results.sts)
    return None


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="run")
def main(dcfg: DictConfig) -> float | None:
    return train(dcfg).sts.get("average")


def cli() -> None:
    """``python -m embedft.run`` / ``embedft-run``, after the command-line checks Hydra lacks."""
    if problem := moved_key_error(sys.argv[1:]) or launcher_error(sys.argv[1:]):
        sys.exit(problem)
    main()


if __name__ == "__main__":
    cli()
