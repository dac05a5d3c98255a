"""Sweep results -> one page a person reads: ``python -m embedft.report dirs=DIR [out=DIR]``.

Reads the ``results.json`` of every job under ``dirs`` (a Hydra multirun dir, a single run dir,
or a list of them, ``dirs=[A,B]``: e.g. a training sweep plus ``multirun/evaluate/...`` for the
base models), never W&B, and writes into ``out`` (default: the first of ``dirs``):

- ``report.md``: the STS table in the paper's layout (rows: the 9 tasks, then "Avg ± std";
  columns: one per configuration, named by the overrides that differ between the jobs, base
  models last as "<model> (base)"), a status line for every job, the plots embedded;
- ``report.csv``: the same table as numbers; ``runs.csv``: one row per job;
- ``sts_tasks.png``: per-task grouped bars; ``stsb_dev.png``: STSB-dev Spearman against step.

Jobs that failed, are still running, or have a job dir (``.hydra/``) but no ``results.json`` yet
get a status line and a column of dashes: nothing is silently left out.

"± std" is the spread across a run's tasks, or across the runs of a configuration that ran
several times (its seeds share one column): ``embedft/report_jobs.py`` defines both. The parts:
``report_jobs`` (reading, naming and grouping the jobs), ``report_tables`` (the table, the csv
files, the status lines), ``report_plots``; this module assembles the page and is the command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from embedft.cli import log_to_stderr, one_line_errors, tool_config
from embedft.config import ConfigError
from embedft.extras import require as require_extra
from embedft.paths import conf_dir
from embedft.report_jobs import group_columns, label_jobs, load_jobs
from embedft.report_plots import plot_dev_curves, plot_tasks
from embedft.report_tables import markdown_table, status_line, write_runs_csv, write_table_csv


def build_report(dirs: list[Path], out: Path, plots: bool = True) -> Path:
    """Write report.md, report.csv, runs.csv and (``plots``) the plots into ``out``; return
    report.md."""
    jobs = load_jobs(dirs)
    if not jobs:
        raise FileNotFoundError(
            f"no job directory (results.json or .hydra/) under {[str(d) for d in dirs]}"
        )
    label_jobs(jobs)
    columns = group_columns(jobs)
    out.mkdir(parents=True, exist_ok=True)
    write_table_csv(columns, out / "report.csv")
    write_runs_csv(jobs, dirs[0], out / "runs.csv")
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    lines = [
        f"# STS report: {', '.join(str(d) for d in dirs)}",
        "",
        f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
        "",
        "## STS test, Spearman × 100",
        "",
        markdown_table(columns),
        "",
        "Avg ± std: one run per column: average over its tasks ± std across those tasks; "
        "columns marked (n=k): mean ± std across the k runs of that configuration (seeds), "
        "per task and for the average. – : no score (see the status below). Bold: the best "
        "in the row. Numbers: report.csv (table), runs.csv (one row per job).",
        "",
    ]
    if plots and plot_tasks(columns, out / "sts_tasks.png"):
        lines += ["![STS per task](sts_tasks.png)", ""]
    lines += ["## STSB-dev during training", ""]
    if not plots:
        lines += ["Not plotted (plots=false); the curves are in each job's results.json.", ""]
    elif plot_dev_curves(jobs, out / "stsb_dev.png"):
        lines += ["![STSB-dev Spearman against step](stsb_dev.png)", ""]
    else:
        lines += ["No job recorded an STSB-dev curve (eval.every_n_steps=0).", ""]
    lines += ["## Jobs", "", *(status_line(j, dirs[0]) for j in jobs), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


@dataclass
class ReportConfig:
    """python -m embedft.report dirs=multirun/<sweep>/<time> [out=DIR]   (several: dirs=[A,B])

    One page per sweep from its jobs' results.json: report.md (the STS table, job statuses,
    plots), report.csv, runs.csv, sts_tasks.png, stsb_dev.png.
    """

    dirs: Any = MISSING  # a multirun or run dir, or a list [A,B] (a sweep + its base models)
    out: str | None = None  # where the report goes; null: the first of dirs
    plots: bool = True  # the two PNG plots (needs the plots extra: matplotlib)

    def __post_init__(self) -> None:
        dirs = [self.dirs] if isinstance(self.dirs, str) else self.dirs
        if not dirs or not all(isinstance(d, str) and d for d in dirs):
            raise ConfigError(f"dirs must be a directory or a list [A,B] of them, got {dirs!r}")
        self.dirs = list(dirs)


ConfigStore.instance().store(name="report_schema", node=ReportConfig)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="report")
def main(dcfg: DictConfig) -> None:
    log_to_stderr()
    with one_line_errors("embedft.report", FileNotFoundError, ConfigError):
        cfg: ReportConfig = tool_config(dcfg, ReportConfig)
        if cfg.plots:
            require_extra("plots", "plots=true", instead="plots=false")
        dirs = [Path(d) for d in cfg.dirs]
        report = build_report(dirs, Path(cfg.out) if cfg.out else dirs[0], cfg.plots)
    print(report.read_text())
    print(f"written: {report} (+ report.csv, runs.csv{', PNG plots' if cfg.plots else ''})")


if __name__ == "__main__":
    main()
