"""embedft.report on hand-written results.json files: table values, seeds, statuses, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from embedft.config import ALL_STS_TASKS
from embedft.report import build_report, main
from tests.conftest import run_cli

TEN_TO_NINETY = {task: 10.0 * (i + 1) for i, task in enumerate(ALL_STS_TASKS)}  # 10..90


def write_job(path: Path, overrides: list[str], status: str = "completed", **fields) -> None:
    """A job dir as embedft.run leaves it: .hydra/overrides.yaml and results.json."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    results = {
        "kind": "train",
        "status": status,
        "model": "minicpm",
        "overrides": overrides,
        "sts": {},
        "stsb_dev": [],
        "train": {"global_step": 10, "wall_time_s": 5.0, "final_loss": 0.5},
        "checkpoint": None,
        "error": None,
        **fields,
    }
    (path / "results.json").write_text(json.dumps(results))


def table_row(report: str, name: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


@pytest.fixture
def sweep(tmp_path):
    """A 5-job sweep (completed, 2 seeds of one config, failed, running, not started) + a base."""
    root = tmp_path / "multirun"
    write_job(root / "0_a", ["model=minicpm", "loss.hard_neg=true"], sts=TEN_TO_NINETY,
              stsb_dev=[{"step": 5, "spearman": 70.0}, {"step": 10, "spearman": 75.0}])  # fmt: skip
    for i, (seed, score) in enumerate([(1, 80.0), (2, 82.0)]):
        write_job(root / f"{1 + i}_b", ["model=minicpm", "loss.hard_neg=false", f"seed={seed}"],
                  sts=dict.fromkeys(ALL_STS_TASKS, score))  # fmt: skip
    write_job(root / "3_c", ["model=gemma", "loss.hard_neg=true"], status="failed",
              error="OutOfMemoryError: CUDA out of memory\nmore lines")  # fmt: skip
    write_job(root / "4_d", ["model=gemma", "loss.hard_neg=false"], status="running", train={})
    (root / "5_e" / ".hydra").mkdir(parents=True)  # started by Hydra, no results.json yet
    (root / "5_e" / ".hydra" / "overrides.yaml").write_text("- model=phi2\n- loss.hard_neg=true\n")
    base = tmp_path / "evaluate" / "0_model=minicpm"
    write_job(base, ["model=minicpm"], kind="evaluate", sts=dict.fromkeys(ALL_STS_TASKS, 30.0))
    return root, tmp_path / "evaluate"


def test_table_has_paper_rows_and_one_column_per_configuration(sweep):
    root, base = sweep
    # When the sweep and the base evaluation are reported together
    report = build_report([root, base], root).read_text()
    header = table_row(report.replace("| Task |", "| Head |"), "Head")
    # Then columns are named by the overrides that vary, base models last
    assert header == [
        "minicpm-hardneg",
        "minicpm-nohardneg (n=2)",
        "gemma-hardneg (failed)",
        "gemma-nohardneg (running)",
        "phi2-hardneg (no results.json)",
        "minicpm (base)",
    ]
    # And a single run's average is over the 9 tasks ± their std (10..90: 50 ± sqrt(750))
    assert table_row(report, "**Avg ± std**")[0] == "50.00 ± 27.39"
    # And two seeds of one config give mean ± std across the runs, per task and on average
    assert table_row(report, "STS12")[1] == "**81.00 ± 1.41**"
    assert table_row(report, "**Avg ± std**")[1] == "**81.00 ± 1.41**"
    # And jobs without scores show dashes, STSBenchmark is the paper's "STSB"
    assert table_row(report, "STSB")[2:5] == ["–", "–", "–"]
    assert table_row(report, "STSB")[5] == "30.00"


def test_every_job_has_a_status_line(sweep):
    root, _ = sweep
    report = build_report([root], root).read_text()
    assert "6 jobs: 3 completed, 1 failed, 1 no results.json, 1 running." in report
    assert "- **failed**: **gemma-hardneg** `3_c`: OutOfMemoryError: CUDA out of memory" in report
    assert "more lines" not in report  # the first line of the error only
    assert "- **running**: **gemma-nohardneg** `4_d`" in report
    assert "- **no results.json**: **phi2-hardneg** `5_e`" in report
    assert "- completed: **minicpm-hardneg** `0_a`: 10 steps, final loss 0.5000" in report


def test_csv_files_hold_the_numbers(sweep):
    root, base = sweep
    build_report([root, base], root)
    with open(root / "report.csv") as f:
        rows = {r[0]: r[1:] for r in csv.reader(f)}
    assert rows["STS12"][0] == "10.0000" and rows["average"][0] == "50.0000"
    assert rows["std"][:2] == ["27.3861", "1.4142"]
    assert rows["std_over"][:2] == ["tasks", "runs"] and rows["n_runs"][:3] == ["1", "2", "0"]
    with open(root / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert [r["status"] for r in runs][:6] == [
        "completed", "completed", "completed", "failed", "running", "no results.json"
    ]  # fmt: skip
    assert (
        runs[0]["average"] == "50.0000"
        and runs[0]["overrides"] == "model=minicpm loss.hard_neg=true"
    )


def test_plots_are_written_and_embedded(sweep):
    root, _ = sweep
    report = build_report([root], root).read_text()
    for name in ("sts_tasks.png", "stsb_dev.png"):
        data = (root / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"]({name})" in report


def test_cli_names_the_directory_without_jobs(tmp_path, capsys):
    assert run_cli(main, f"dirs={tmp_path}") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"embedft.report: error: no job directory (results.json or .hydra/) under ['{tmp_path}']"
    ]


def test_cli_writes_the_report_of_several_dirs_into_out(sweep, tmp_path, capsys):
    # Given a sweep and its base evaluation; When reported with dirs=[A,B] and out=
    root, base = sweep
    assert run_cli(main, f"dirs=[{root},{base}]", f"out={tmp_path / 'page'}") == 0
    # Then one page covers both, in out
    assert "minicpm (base)" in (tmp_path / "page" / "report.md").read_text()
    assert (tmp_path / "page" / "runs.csv").is_file()
    assert f"written: {tmp_path / 'page' / 'report.md'}" in capsys.readouterr().out
