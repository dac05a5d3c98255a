"""Runs that survive a kill: ``last.ckpt``, preemption signals and exact resume.

``ResumeCheckpoint`` owns ``checkpoints/last.ckpt``. It writes it (atomically, through
Lightning) every ``trainer.save_every_n_steps`` optimizer steps, every
``trainer.save_every_n_minutes`` of wall time, at the end of fit, and at once when the process
gets SIGTERM or SIGUSR1 (what SLURM and most schedulers send before they kill a job). After a
signal it stops training at the end of the step in progress, so ``embedft.run`` can mark the run
``preempted`` and exit non-zero; a previous handler of the signal (submitit's requeue handler
under ``hydra/launcher=slurm``) is called after the checkpoint is safe.

What makes resume *exact* (same LoRA weights and per-step losses as an uninterrupted run):

- the checkpoint holds the RNG states (torch, CUDA, numpy, python; LoRA dropout draws from
  torch's), put back just before the first step after a resume, when nothing else can draw
  from them any more;
- the data stream's position (``TripletDataModule.state_dict``: epoch and batches consumed),
  so the resumed stream skips what was trained on instead of starting the epoch again;
- Lightning's own state (optimizer, LR schedule, step and epoch counters, callbacks) and the
  per-step losses (``losses``) kept here for ``results.json``.

The checkpoint is written after every other callback's work at that step (Lightning runs
``Checkpoint`` subclasses last), so an STSB-dev evaluation and ``best.ckpt`` at a step always
precede the ``last.ckpt`` of that step: a kill during evaluation resumes from the step before.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from embedft.checkpoint import load_checkpoint
from embedft.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_PREEMPTED = 143  # 128 + SIGTERM: what schedulers read as "terminated", never success
_HELD_DIR_LOCKS: list[Any] = []  # open lock files: a directory stays claimed until exit
_FIRST_HANDLERS: dict[int, Any] = {}  # the handlers before embedft installed any (submitit's)


class Preempted(RuntimeError):
    """A preemption signal arrived outside training (loading, final evaluation)."""


class OutputDirError(RuntimeError):
    """The run directory belongs to another run or is in use; the message says what to do."""


def claim_output_dir(out: Path, resume: str | None, multirun: bool) -> None:
    """Make ``out`` this process's, or refuse before anything is written into it.

    Held by an exclusive lock for the process's life (released by the OS even on ``kill -9``),
    so two processes never run in one directory. A directory that already holds a run is
    refused unless this is a resume (``resume=...``) or a sweep job re-run, whose behaviour
    ``embedft.run`` defines: completed jobs are kept, the others resume from ``last.ckpt``.
    """
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / ".embedft.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputDirError(
            f"{out} is in use by another embedft process; give this run its own directory "
            f"(hydra.run.dir=...)"
        ) from None
    _HELD_DIR_LOCKS.append(handle)
    prior = read_results(out)
    if prior is not None and resume is None and not multirun:
        raise OutputDirError(
            f"{out} already holds a run (status {prior.get('status')}); continue it with "
            f"resume=auto, or choose another hydra.run.dir"
        )


def read_results(out: Path) -> dict[str, Any] | None:
    path = out / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise OutputDirError(f"{path} is unreadable ({err}); move it away to reuse {out}") from None


def _step_of(row: dict[str, Any]) -> float:
    try:
        return int(row.get("step") or "")
    except ValueError:  # a line cut short by the kill
        return float("inf")


def _raise_preempted(signum: int, frame: Any) -> None:
    raise Preempted(f"preempted by {signal.Signals(signum).name} outside training")


@contextlib.contextmanager
def preemption_raises() -> Iterator[None]:
    """While loading or evaluating, a preemption signal raises ``Preempted`` (results say so)."""
    if not _in_main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in PREEMPT_SIGNALS}
    for sig, handler in before.items():
        _FIRST_HANDLERS.setdefault(sig, handler)
        signal.signal(sig, _raise_preempted)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's own requeue-on-SIGUSR1 is off: ``ResumeCheckpoint`` owns it."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def continue_csv_log(logger: Any, resume_step: int, log_row: dict[str, Any] | None) -> None:
    """Keep a resumed run's earlier CSV rows (Lightning's CSVLogger deletes them otherwise).

    Rows logged after the checkpoint by the run that was killed are dropped: the resumed run
    logs those steps again, from the same state. ``log_row`` (saved in the checkpoint) is the
    checkpointed step's own row, written back if the kill came before Lightning flushed it.
    """
    from lightning.pytorch.loggers import CSVLogger

    if not isinstance(logger, CSVLogger):
        return
    path = Path(logger.log_dir) / "metrics.csv"
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if _step_of(r) < resume_step]
    rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in rows]
    if log_row and not any(int(r["step"]) == log_row["step"] for r in rows):
        rows.append(dict(log_row))
    writer = logger.experiment  # creating it deletes the old file
    writer.metrics = rows
    writer.save()


def preempt_signals() -> tuple[int, ...]:
    """SIGTERM and SIGUSR1; under submitit on SLURM also SIGUSR2, its time-limit warning."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return (*PREEMPT_SIGNALS, signal.SIGUSR2)
    return PREEMPT_SIGNALS


def capture_rng() -> dict[str, Any]:
    """Every RNG state training draws from, as plain data (loads with ``weights_only=True``)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` by step, by wall time, at the end and on a preemption signal."""

    FILENAME = "last.ckpt"

    def __init__(
        self,
        dirpath: str | Path,
        every_n_steps: int = 500,
        every_n_minutes: float = 0.0,
        signals: tuple[int, ...] | None = None,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_minutes * 60
        self.signals = preempt_signals() if signals is None else signals
        self.preempted_by: str | None = None  # the signal's name once one arrived
        self.losses: list[float] = []  # train loss of every optimizer step, in order
        # The logger row of the step being checkpointed: Lightning writes it after this
        # callback, so a kill right after the save would lose it (continue_csv_log restores it).
        self.log_row: dict[str, Any] = {}
        self._signal_seen: int | None = None
        self._previous: dict[int, Any] = {}
        self._handlers_before: dict[int, Any] = {}  # kept after teardown for hand_over
        self._last_save = time.monotonic()
        self._saved_step = -1
        self._rng_to_restore: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / self.FILENAME

    # -- signals -------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not _in_main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._handlers_before, self._previous = self._previous, {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only note it: the step in progress finishes, then on_train_batch_end saves and stops.
        self._signal_seen = signum

    # -- saving --------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        step = trainer.global_step
        if loss is not None and step > len(self.losses):  # once per optimizer step
            self.losses.append(float(loss))
            self.log_row = {"epoch": trainer.current_epoch, "step": step - 1}
            self.log_row.update(
                {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
            )
        signalled = self._stop_requested(trainer)
        due_steps = step > 0 and step % self.every_n_steps == 0
        # Each rank's clock says "due" at a slightly different step: all save when one does,
        # or the others would go on training while it waits in the checkpoint's collectives.
        due_time = self.every_n_seconds > 0 and _on_any_rank(
            trainer, time.monotonic() - self._last_save >= self.every_n_seconds
        )
        if signalled or due_steps or due_time:
            self.save(trainer)
        if signalled:
            self.preempted_by = signal.Signals(self._signal_seen or signal.SIGTERM).name
            log.warning(
                "%s received: saved %s at step %d and stopping", self.preempted_by, self.path, step
            )
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step > 0:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        # Rank 0's view of the file for every rank: on another node a shared file system may
        # not show it yet, and one rank saving alone would wait for the others forever.
        saved = self._saved_step == trainer.global_step and trainer.strategy.broadcast(
            self.path.exists()
        )
        if saved:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # full state, for resume
        self._saved_step = trainer.global_step
        self._last_save = time.monotonic()

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        # Every rank must stop at the same step: one rank's signal stops them all.
        return _on_any_rank(trainer, self._signal_seen is not None)

    def hand_over(self) -> None:
        """Once checkpoint and results are safe: let the scheduler's own handler requeue the job.

        Under submitit that is its handler of the signal (it resubmits the job and exits); in a
        plain SLURM batch job, SIGUSR1 requeues it with ``scontrol requeue``.
        """
        signum = self._signal_seen
        if signum is None:
            return
        previous = self._handlers_before.get(signum)
        if previous is _raise_preempted:
            previous = _FIRST_HANDLERS.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, None)
        elif signum == signal.SIGUSR1 and _plain_slurm_job():
            job = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = (
                f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
            )
            log.warning("requeueing SLURM job %s", job)
            subprocess.run(["scontrol", "requeue", job], check=False)

    # -- exact resume --------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng"] = capture_rng()
        checkpoint["embedft_log_row"] = dict(self.log_row)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:
            restore_rng(self._rng_to_restore)
            self._rng_to_restore = None

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = [float(x) for x in state_dict.get("losses", [])]
        self._saved_step = -1


def _on_any_rank(trainer: L.Trainer, decision: bool) -> bool:
    """``decision`` on every rank when it holds on any: ranks that save or stop do it together."""
    return bool(trainer.strategy.reduce_boolean_decision(decision, all=False))


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _plain_slurm_job() -> bool:
    """A SLURM batch job not managed by submitit (which requeues through its own handler)."""
    return "SLURM_JOB_ID" in os.environ and "SUBMITIT_FOLDER" not in os.environ


def find_resume(
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
