"""One job on N nodes x G GPUs (``hydra/launcher=slurm_multinode``): its layout checks, the
sbatch request its preset composes, and (slow) a simulated 2-node x 2-task SLURM job on gloo.

No SLURM here: the preset is checked up to the sbatch script submitit would submit (its
submission is intercepted), and the slow tests give 4 local processes the variables srun sets.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys

import cloudpickle
import pytest
import submitit

from embedft.config import ConfigError, TrainerConfig
from embedft.paths import repo_root
from embedft.slurm import JOB_KEYS, check_layout, check_slurm_job, device_count
from tests.conftest import run_cli

GPU_DDP = dict(accelerator="gpu", strategy="ddp")


def test_device_count_reads_numbers_lists_and_digit_strings():
    assert [device_count(d) for d in (4, [0, 1], "2", "auto", -1)] == [4, 2, 2, None, None]


def test_a_trainer_that_fits_the_job_passes():
    # Given 2 nodes x 4 tasks x 4 GPUs and trainer.num_nodes=2 trainer.devices=4 / Then no error
    check_layout(TrainerConfig(devices=4, num_nodes=2, **GPU_DDP), 2, 4, 4)
    # And a CPU job on 1 node with no GPU requested
    check_layout(TrainerConfig(accelerator="cpu", devices=1), 1, 1, 0)


@pytest.mark.parametrize(
    "trainer, layout, message",
    [
        (
            dict(devices=4, num_nodes=1),
            (2, 4, 4),
            "trainer.num_nodes=1 but hydra.launcher.nodes=2: one job on N nodes needs both",
        ),
        (
            dict(devices=2, num_nodes=2),
            (2, 4, 4),
            "trainer.devices=2 but hydra.launcher.tasks_per_node=4: SLURM starts one process",
        ),
        (
            dict(devices="auto", num_nodes=2),
            (2, 4, 4),
            "trainer.devices='auto': under SLURM it must be the number of devices per node, "
            "which is hydra.launcher.tasks_per_node=4",
        ),
        (
            dict(devices=4, num_nodes=2),
            (2, 4, 2),
            "hydra.launcher.gpus_per_node=2 but trainer.devices=4",
        ),
        (
            dict(devices=4, num_nodes=2),
            (2, 4, 0),
            "hydra.launcher.gpus_per_node=0 but trainer.devices=4",
        ),
        (
            dict(devices=2, num_nodes=2, accelerator="gpu", strategy="ddp_spawn"),
            (2, 2, 2),
            "trainer.strategy=ddp_spawn starts its own processes, but SLURM already starts one",
        ),
    ],
    ids=["nodes", "tasks", "devices_auto", "gpus", "no_gpus", "spawn"],
)
def test_a_mismatch_names_both_keys(trainer, layout, message):
    # Given a trainer that does not fit the launcher's layout / Then the error names both keys
    with pytest.raises(ConfigError) as err:
        check_layout(TrainerConfig(**{**GPU_DDP, **trainer}), *layout)
    assert str(err.value).startswith(message)


def _srun_task(monkeypatch, job_name="train", nodes="2", tasks_per_node="4"):
    """The variables srun sets for a task of a 2-node x 4-task job."""
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_NAME", job_name)
    monkeypatch.setenv("SLURM_NNODES", nodes)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", tasks_per_node)


def test_a_running_job_is_checked_against_slurms_own_counts(monkeypatch):
    # Given a task of a 2-node x 4-task SLURM job
    _srun_task(monkeypatch)
    # Then a trainer for 1 node is refused before anything loads, naming SLURM's variable
    with pytest.raises(ConfigError, match=r"trainer.num_nodes=1 but SLURM_NNODES \(sbatch --nodes"):
        check_slurm_job(TrainerConfig(devices=4, num_nodes=1, **GPU_DDP))
    with pytest.raises(ConfigError, match=r"but SLURM_NTASKS_PER_NODE \(--ntasks-per-node"):
        check_slurm_job(TrainerConfig(devices=2, num_nodes=2, **GPU_DDP))
    # And the trainer that fits passes
    check_slurm_job(TrainerConfig(devices=4, num_nodes=2, **GPU_DDP))
    assert "SLURM_NNODES" in JOB_KEYS["nodes"]


def test_outside_srun_nothing_is_checked(monkeypatch):
    # Given an interactive allocation (job name "bash": Lightning does not use SLURM there)
    _srun_task(monkeypatch, job_name="bash")
    # Then a trainer that would not fit a SLURM job step is left alone, as Lightning leaves it
    check_slurm_job(TrainerConfig(devices=1, num_nodes=1))
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_NNODES", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name)
    check_slurm_job(TrainerConfig(devices=1, num_nodes=1))


class _Submitted(Exception):
    """Raised instead of calling sbatch."""


@pytest.fixture
def sbatch(monkeypatch):
    """Intercept submitit's submission: record the sbatch script of the job array, submit nothing."""
    scripts: list[str] = []

    def map_array(self, fn, *iterables):
        scripts.append(self._executor._make_submission_file_text("<command>", "0"))
        # What submitit sends each node: the launcher itself, pickled, must load back there
        assert type(cloudpickle.loads(cloudpickle.dumps(fn))).__name__ == "CheckedSlurmLauncher"
        raise _Submitted(f"{len(list(zip(*iterables, strict=True)))} job(s)")

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun"
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)
    return scripts


def _sbatch_flags(script: str) -> set[str]:
    return {line.removeprefix("#SBATCH ") for line in script.splitlines() if "#SBATCH" in line}


def test_the_preset_requests_n_nodes_with_g_tasks_and_gpus_each(sbatch, tmp_path, capsys):
    from embedft.run import main

    # When one job on 2 nodes x 4 GPUs is launched with the preset (the trainer says how many)
    args = ["-m", "hydra/launcher=slurm_multinode", "trainer=ddp", "trainer.num_nodes=2"]
    args += ["trainer.devices=4", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"]
    assert run_cli(main, *args) == 1  # the intercepted submission
    # Then submitit would submit one sbatch job of 2 nodes, 4 tasks and 4 GPUs per node
    assert "_Submitted: 1 job(s)" in capsys.readouterr().err
    (script,) = sbatch
    flags = _sbatch_flags(script)
    assert {"--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu"} <= flags
    assert "--signal=USR2@120" in flags  # the preemption warning embedft.run saves on


def test_the_launcher_refuses_a_mismatch_before_submitting_any_job(sbatch, tmp_path, capsys):
    from embedft.run import main

    # When a sweep's second job wants 2 GPUs per node on a launcher that gives each node 4
    args = ["-m", "hydra/launcher=slurm_multinode", "trainer=ddp", "trainer.num_nodes=2"]
    args += ["hydra.launcher.tasks_per_node=4", "hydra.launcher.gpus_per_node=4"]
    args += ["trainer.devices=4,2", f"hydra.sweep.dir={tmp_path}"]
    assert run_cli(main, *args) == 1
    # Then nothing was submitted, and the error names both keys and the job
    assert sbatch == []
    err = capsys.readouterr().err
    assert (
        "ConfigError: trainer.devices=2 but hydra.launcher.tasks_per_node=4: SLURM starts one "
        "process per device" in err
    )
    assert "(job: trainer=ddp trainer.num_nodes=2 trainer.devices=2); nothing was submitted" in err


def test_the_single_job_slurm_preset_is_checked_too(sbatch, tmp_path, capsys):
    from embedft.run import main

    # When trainer=ddp (2 GPUs) is sent to the one-GPU-per-job sweep preset
    args = ["-m", "hydra/launcher=slurm", "trainer=ddp", f"hydra.sweep.dir={tmp_path}"]
    assert run_cli(main, *args) == 1
    # Then it is refused before submission, pointing at the launcher's tasks_per_node
    assert sbatch == []
    assert "trainer.devices=2 but hydra.launcher.tasks_per_node=1" in capsys.readouterr().err


# --- a simulated 2-node x 2-task SLURM job (slow: 4 processes importing torch + Lightning) ----

ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")


@pytest.mark.slow
def test_two_nodes_of_two_ranks_match_one_process(tmp_path):
    # Given experiments/multinode_equivalence.py: 4 SLURM tasks (2 nodes x 2) on gloo, each
    # running embedft's Trainer, datamodule, module and gathering InfoNCE for one step
    out = tmp_path / "multinode.json"
    done = subprocess.run(
        [sys.executable, "experiments/multinode_equivalence.py", "--json", str(out)],
        cwd=repo_root(), env=ENV, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    # Then every check holds: Lightning's ranks are SLURM's, the batches cover the 8 triplets,
    # loss and LoRA gradients on every rank are the full batch's (fp32, 1e-5), and gathering
    # within a node only, or within a rank only, would have given another loss
    assert done.returncode == 0 and report["passed"], json.dumps(report["checks"], indent=1)
    assert report["loss_abs_diff"] <= 1e-5 and max(report["grad_max_abs_diff_per_rank"]) <= 1e-5
    assert [e["node_rank"] for e in report["layout"]] == [0, 0, 1, 1]
    assert abs(report["loss_node_local_gather"] - report["loss_reference"]) > 1e-3


@pytest.mark.slow
def test_embedft_run_as_a_two_node_job_writes_one_result_from_rank_0(tmp_path):
    sys.path.insert(0, str(repo_root() / "experiments"))
    simulation = importlib.import_module("multinode_equivalence")  # srun's variables per task

    # Given 16 triplets and 4 processes of `python -m embedft.run` with the variables srun
    # gives the tasks of a 2-node x 2-task job, all in one run directory
    data = tmp_path / "triplets.csv"
    with open(data, "w", newline="") as f:
        rows = [(f"a sentence {i}", f"text {i}", f"other {i}") for i in range(16)]
        csv.writer(f).writerows([("sent0", "sent1", "hard_neg"), *rows])
    out = tmp_path / "run"
    args = [
        "model=tiny_llama", "data=local", f"data.path={data}", "data.batch_size=2",
        "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.num_nodes=2",
        "trainer.devices=2", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        "trainer.save_every_n_steps=1", "trainer.save_every_n_minutes=0.0001", "logger=csv",
        "eval.every_n_steps=0", "eval.after_fit=false", f"hydra.run.dir={out}",
    ]  # fmt: skip
    port = simulation.free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "embedft.run", *args],
            cwd=repo_root(),
            env=simulation.slurm_task_env(task, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for task in range(4)
    ]
    try:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    # Then every rank finished, and rank 0 alone wrote one completed results.json and
    # config.yaml: 16 triplets / (2 per rank x 4 ranks) = 2 steps, checkpointed at each
    # (by step and by a wall-time interval shorter than a step: every rank saved together)
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(log[-2000:] for log in logs)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["error"] is None
    assert results["train"]["global_step"] == 2 and len(results["train"]["losses"]) == 2
    assert [a["status"] for a in results["attempts"]] == ["completed"]
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    with open(out / "csv" / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")] == [0, 1]
