"""hydra-submitit-launcher's SLURM launcher that checks every job before it submits any.

The ``_target_`` of conf/hydra/launcher/slurm.yaml and slurm_multinode.yaml. Each job's config is
composed as the job will see it (its sweep overrides included) and its ``trainer`` checked
against this launcher's ``nodes``, ``tasks_per_node`` and ``gpus_per_node``
(``embedft.slurm.check_launcher_job``): a mismatch is one error on the submitting machine, not
a job that fails on the cluster after its model has loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class CheckedSlurmLauncher(SlurmLauncher):
    """``submitit_slurm``, with ``embedft.slurm.check_launcher_job`` run on every job first."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        # Imported here: Hydra imports every plugin module when any Hydra app starts.
        from embedft.slurm import check_launcher_job

        assert self.hydra_context is not None and self.config is not None
        for overrides in job_overrides:
            job = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            check_launcher_job(job.trainer, self.params, list(overrides))
        return super().launch(job_overrides, initial_job_idx)
