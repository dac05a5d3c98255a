"""One training job on N nodes x G GPUs under SLURM, and the checks that its layout adds up.

``python -m embedft.run -m hydra/launcher=slurm_multinode trainer.num_nodes=2 trainer.devices=4``
submits one SLURM job (a sweep of one job: submitit submits through Hydra's multirun) of 2 nodes
with 4 tasks and 4 GPUs on each. srun starts the 8 processes; each runs the job, Lightning's
``SLURMEnvironment`` (``embedft.resume.cluster_plugins``) reads its rank from SLURM's variables,
and DDP trains one model whose loss gathers the candidates of all 8 ranks
(``loss.gather_across_ranks``). Only rank 0 writes ``results.json`` and ``config.yaml``
(``embedft.run``); Lightning writes checkpoints and logs from rank 0.

Lightning needs ``trainer.num_nodes`` to be the job's node count and ``trainer.devices`` its
tasks per node, one process per device, but finds out only when fit starts, after the model has
loaded, on the cluster. ``check_layout`` says so before:

- the launcher of conf/hydra/launcher/slurm*.yaml (``hydra_plugins/embedft_slurm``: Hydra takes
  launchers from that package only) checks every job of a sweep against its ``hydra.launcher``
  settings before it submits any (``check_launcher_job``);
- ``check_slurm_job`` checks a running job's trainer against SLURM's own variables before
  anything loads (this also covers ``hydra/launcher=submitit_slurm`` and plain sbatch + srun).
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig

from embedft.compose import to_object
from embedft.config import ConfigError, TrainerConfig

# The names the errors give the three numbers, for a launcher config and for a running job.
LAUNCHER_KEYS = {
    "nodes": "hydra.launcher.nodes",
    "tasks": "hydra.launcher.tasks_per_node",
    "gpus": "hydra.launcher.gpus_per_node",
}
JOB_KEYS = {
    "nodes": "SLURM_NNODES (sbatch --nodes, hydra.launcher.nodes)",
    "tasks": "SLURM_NTASKS_PER_NODE (--ntasks-per-node, hydra.launcher.tasks_per_node)",
}
_SPAWNING = ("spawn", "fork", "notebook")  # strategies that start their own processes


def device_count(devices: Any) -> int | None:
    """Devices per node as a number (``2``, ``[0, 1]``, ``"2"``); None for ``auto`` or ``-1``."""
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return devices if isinstance(devices, int) and devices > 0 else None


def check_layout(
    trainer: TrainerConfig,
    nodes: int | None,
    tasks_per_node: int | None,
    gpus_per_node: int | None = None,
    keys: dict[str, str] = LAUNCHER_KEYS,
) -> None:
    """Refuse a trainer that does not fit the job SLURM runs it in (None: not known, not checked).

    ``gpus_per_node`` 0 means no GPU requested: fine for a CPU job, an error for
    ``trainer.accelerator=gpu``.
    """
    if nodes is not None and trainer.num_nodes != nodes:
        raise ConfigError(
            f"trainer.num_nodes={trainer.num_nodes} but {keys['nodes']}={nodes}: one job on N "
            f"nodes needs both set to N (e.g. hydra.launcher.nodes=2 trainer.num_nodes=2)"
        )
    devices = device_count(trainer.devices)
    if tasks_per_node is None:
        return
    if devices is None:
        raise ConfigError(
            f"trainer.devices={trainer.devices!r}: under SLURM it must be the number of devices "
            f"per node, which is {keys['tasks']}={tasks_per_node} (one process per device)"
        )
    if devices != tasks_per_node:
        raise ConfigError(
            f"trainer.devices={devices} but {keys['tasks']}={tasks_per_node}: SLURM starts one "
            f"process per device, so both must be G (e.g. hydra.launcher.tasks_per_node=4 "
            f"trainer.devices=4)"
        )
    wants_gpu = trainer.accelerator in ("gpu", "cuda") or bool(gpus_per_node)
    if gpus_per_node is not None and trainer.accelerator != "cpu" and wants_gpu:
        if gpus_per_node != devices:
            raise ConfigError(
                f"{keys['gpus']}={gpus_per_node} but trainer.devices={devices}: each node's "
                f"processes use one GPU each, so request trainer.devices GPUs per node"
            )
    if nodes is not None and nodes * devices > 1 and any(s in trainer.strategy for s in _SPAWNING):
        raise ConfigError(
            f"trainer.strategy={trainer.strategy} starts its own processes, but SLURM already "
            f"starts one per device: use trainer.strategy=ddp"
        )


def check_slurm_job(trainer: TrainerConfig) -> None:
    """Inside a SLURM job step (srun): ``check_layout`` against SLURM's node and task counts."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():  # not under srun (or an interactive "bash" allocation)
        return
    nodes, tasks = os.environ.get("SLURM_NNODES"), os.environ.get("SLURM_NTASKS_PER_NODE")
    check_layout(
        trainer,
        int(nodes) if nodes and nodes.isdigit() else None,
        int(tasks) if tasks and tasks.isdigit() else None,
        keys=JOB_KEYS,
    )


def check_launcher_job(trainer: DictConfig, params: dict[str, Any], overrides: list[str]) -> None:
    """Before submitting: the ``trainer`` of one job of the sweep against the launcher's ``params``.

    Called by the launcher of conf/hydra/launcher/slurm*.yaml
    (``hydra_plugins/embedft_slurm/launcher.py``) for every job, before any is submitted.
    """
    where = f" (job: {' '.join(overrides)})" if overrides else ""
    try:
        check_layout(
            to_object(trainer),
            params.get("nodes", 1),
            params.get("tasks_per_node", 1),
            params.get("gpus_per_node") or 0,
        )
    except ConfigError as err:
        raise ConfigError(f"{err}{where}; nothing was submitted") from None
