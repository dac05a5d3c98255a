"""Where a job runs: its Hydra job context, its rank and, under ``hydra/launcher=gpus``, its GPUs.

``job_context`` gives a job's overrides and, in a multirun, the sweep's name (the W&B group).
``is_rank_zero`` tells rank 0 of a DDP job whose processes were started from outside (srun on
SLURM, Lightning's re-launch for ``strategy=ddp``) from the others, before Lightning starts.
``claim_gpus`` makes the jobs of a one-machine sweep share the GPUs one job per GPU (see
conf/hydra/launcher/gpus.yaml).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from embedft.config import RunConfig

log = logging.getLogger(__name__)


def on_gpu(cfg: RunConfig) -> bool:
    return cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def job_context() -> tuple[list[str], str | None]:
    """This job's overrides and, in a multirun, the sweep name (the W&B group)."""
    if not HydraConfig.initialized():
        return [], None
    hc = HydraConfig.get()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return list(hc.overrides.task), group


# Where launchers put a process's rank before Lightning starts: srun (SLURM_PROCID), torchrun
# (RANK, GROUP_RANK), Lightning's own re-launched ranks of strategy=ddp (NODE_RANK, LOCAL_RANK).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "GROUP_RANK", "NODE_RANK", "LOCAL_RANK")


def is_rank_zero() -> bool:
    """True for rank 0 of this job, or its only process: the one that writes its results.

    A rank is 0 only if every variable that numbers it is 0 or unset: in an interactive SLURM
    allocation Lightning's re-launched ranks inherit SLURM_PROCID=0 but get LOCAL_RANK=1, 2, ...
    """
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


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
