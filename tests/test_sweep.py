"""Sweeps: the experiment grids in conf/experiment, launcher presets, and a real multirun + report.

The end-to-end test runs ``python -m embedft.run -m`` with Hydra's basic launcher over 4 jobs
of which 2 fail (a missing data file, listed first): Hydra 1.3.8's basic launcher runs every job
even after one raised (``run_job`` records the exception) and only then exits non-zero, so the
later jobs' results survive; the report then shows both outcomes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from embedft.paths import conf_dir, repo_root
from embedft.report import build_report


def expand(params: dict[str, str]) -> list[list[str]]:
    """The job override lists Hydra's basic sweeper makes of ``hydra.sweeper.params``."""
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def compose_with_hydra(config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config, overrides, return_hydra_config=True)


def test_paper_grid_is_the_12_job_sweep_of_the_issue():
    # Given experiment=paper_grid; When its sweep is expanded
    jobs = expand(dict(compose_with_hydra("run", ["experiment=paper_grid"]).hydra.sweeper.params))
    # Then it is the 3 x 2 x 2 grid, the same as the command-line sweep
    assert len(jobs) == 12
    command_line = expand(
        {"model": "minicpm,gemma,phi2", "loss.hard_neg": "true,false", "lora.r": "8,16"}
    )
    assert sorted(map(sorted, jobs)) == sorted(map(sorted, command_line))
    assert ["model=phi2", "loss.hard_neg=False", "lora.r=16"] in jobs


@pytest.mark.parametrize(
    "name, jobs",
    [("paper_table2", 3), ("paper_table5", 2), ("paper_table6", 2), ("paper_lr", 3)],
)
def test_paper_experiments_sweep_what_the_paper_varied(name, jobs):
    cfg = compose_with_hydra("run", [f"experiment={name}"])
    assert len(expand(dict(cfg.hydra.sweeper.params))) == jobs
    assert cfg.task_name == name  # each experiment gets its own multirun/<name>/ folder


def test_base_model_experiment_is_for_evaluate():
    cfg = compose_with_hydra("evaluate", ["+experiment=paper_table3_base"])
    assert expand(dict(cfg.hydra.sweeper.params)) == [
        ["model=minicpm"], ["model=gemma"], ["model=phi2"]
    ]  # fmt: skip


def test_launcher_presets_build_on_the_submitit_plugin(monkeypatch):
    from hydra_plugins.embedft_slurm.launcher import CheckedSlurmLauncher

    # Given the two presets; Then they are hydra-submitit-launcher's, configured
    monkeypatch.setenv("EMBEDFT_NUM_GPUS", "4")
    gpus = compose_with_hydra("run", ["hydra/launcher=gpus"]).hydra.launcher
    assert gpus._target_.endswith("submitit_launcher.LocalLauncher")
    assert gpus.gpus_per_node == 4 and gpus.tasks_per_node == 1
    slurm = compose_with_hydra(
        "run", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]
    ).hydra.launcher
    # submitit's SLURM launcher, which first checks each job's layout (embedft/slurm.py)
    assert slurm._target_ == "hydra_plugins.embedft_slurm.launcher.CheckedSlurmLauncher"
    # (by name: Hydra's plugin scan re-executes the plugin modules, so class objects differ)
    bases = [f"{c.__module__}.{c.__name__}" for c in CheckedSlurmLauncher.__mro__]
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in bases
    assert (slurm.partition, slurm.gpus_per_node, slurm.tasks_per_node) == ("gpu", 1, 1)
    assert slurm.max_num_timeout > 0  # a job that hits the time limit is requeued


@pytest.mark.slow  # 4 jobs in one subprocess, two of them training + STS: ~30-60 s
def test_a_sweep_with_a_failing_job_keeps_the_others_and_reports_them(tmp_path, shared_data):
    # Given triplets, a missing file, and a 2 x 2 sweep whose first two jobs cannot find data
    data = tmp_path / "triplets.csv"
    data.write_text(
        "sent0,sent1,hard_neg\n"
        + "a man plays guitar,a man makes music,nobody plays\n" * 4
        + "a dog runs outside,a dog is in the park,a cat sleeps inside\n" * 4
    )
    missing = tmp_path / "absent.csv"
    sweep = tmp_path / "sweep"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    result = subprocess.run(
        [
            sys.executable, "-m", "embedft.run", "-m",
            "model=tiny_llama", f"data.path={missing},{data}", "loss.hard_neg=true,false",
            "data=local", "data.batch_size=4", "trainer.accelerator=cpu",
            "trainer.max_steps=2", "trainer.enable_progress_bar=false", "logger=none",
            "eval.every_n_steps=1", "eval.tasks=[BIOSSES]", f"paths.data_dir={shared_data}",
            f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}",
        ],
        cwd=repo_root(), env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    # Then the sweep as a whole fails, after running every job
    assert result.returncode != 0
    status = {j: json.loads((sweep / j / "results.json").read_text()) for j in "0123"}
    assert [status[j]["status"] for j in "0123"] == ["failed", "failed", "completed", "completed"]
    assert "does not exist" in status["0"]["error"]
    assert all(len(status[j]["stsb_dev"]) == 2 and "BIOSSES" in status[j]["sts"] for j in "23")

    # When the report is built from the sweep dir
    report = build_report([sweep], sweep).read_text()
    # Then the completed jobs have columns with scores and the failed ones are listed as failed
    line = next(x for x in report.splitlines() if x.startswith("| BIOSSES |"))
    cells = [c.strip().strip("*") for c in line.strip("|").split("|")][1:]
    assert cells[:2] == ["–", "–"]  # the two failed configurations
    expected = [f"{status[j]['sts']['BIOSSES']:.2f}" for j in "23"]
    assert cells[2:] == expected
    assert report.count("- **failed**:") == 2 and report.count("- completed:") == 2
    assert (sweep / "sts_tasks.png").is_file() and (sweep / "stsb_dev.png").is_file()
