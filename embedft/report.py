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

"± std": for a column holding one run, the average over the tasks ± the standard deviation
across those tasks (how even the model is); when the same configuration ran several times
(overrides equal but for ``seed``, or the same job in several dirs) its runs share one column:
each task cell is the mean ± std across the runs, and the average row is the mean ± std across
runs of each run's task average. Standard deviations are sample ones (ddof=1).
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from embedft.cli import log_to_stderr, one_line_errors, tool_config
from embedft.config import ALL_STS_TASKS, ConfigError
from embedft.extras import require as require_extra
from embedft.paths import conf_dir
from embedft.tracking import name_from_overrides

# The paper's short row names.
TASK_LABELS = {"STSBenchmark": "STSB"}
NO_RESULTS = "no results.json"


@dataclass
class Job:
    """One job directory and what its results.json says (or that it has none)."""

    path: Path
    status: str
    kind: str = "train"
    model: str = "?"
    overrides: list[str] = field(default_factory=list)
    sts: dict[str, float] = field(default_factory=dict)
    stsb_dev: list[tuple[int, float]] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    error: str | None = None
    label: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Column:
    """One table column: the runs of one configuration."""

    label: str
    jobs: list[Job]

    @property
    def scored(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "completed" and _task_scores(j)]


def _natural_key(path: Path) -> list[Any]:
    """Sort ``2_x`` before ``10_x``: Hydra numbers sweep subdirs without padding."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _visible(path: Path, root: Path) -> bool:
    """Skip .hydra/, .submitit/, wandb/ and checkpoints: no job lives inside them."""
    parts = path.relative_to(root).parts
    return not any(p.startswith(".") or p in ("wandb", "checkpoints") for p in parts)


def find_job_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) holding a results.json or a .hydra/ dir."""
    found = {p.parent for p in root.rglob("results.json") if _visible(p.parent, root)}
    found |= {p.parent for p in root.rglob(".hydra") if p.is_dir() and _visible(p.parent, root)}
    return sorted(found, key=_natural_key)


def load_job(path: Path) -> Job:
    """Read ``path/results.json``; without one, the overrides Hydra saved in ``.hydra/``."""
    results = path / "results.json"
    if not results.is_file():
        saved = path / ".hydra" / "overrides.yaml"
        overrides = (yaml.safe_load(saved.read_text()) or []) if saved.is_file() else []
        return Job(path=path, status=NO_RESULTS, overrides=[str(o) for o in overrides])
    try:
        data = json.loads(results.read_text())
    except json.JSONDecodeError as err:
        return Job(path=path, status="unreadable", error=f"{results}: {err}")
    return Job(
        path=path,
        status=str(data.get("status", "unknown")),
        kind=str(data.get("kind", "train")),
        model=str(data.get("model", "?")),
        overrides=[str(o) for o in data.get("overrides") or []],
        sts={k: float(v) for k, v in (data.get("sts") or {}).items() if v is not None},
        stsb_dev=[(int(p["step"]), float(p["spearman"])) for p in data.get("stsb_dev") or []],
        train=data.get("train") or {},
        checkpoint=data.get("checkpoint"),
        error=data.get("error"),
        attempts=list(data.get("attempts") or []),
    )


def load_jobs(dirs: list[Path]) -> list[Job]:
    jobs, seen = [], set()
    for root in dirs:
        if not root.is_dir():
            raise FileNotFoundError(f"report: {root} is not a directory")
        for path in find_job_dirs(root):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                jobs.append(load_job(path))
    return jobs


def _key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def label_jobs(jobs: list[Job]) -> None:
    """Name each job by the overrides that differ between the training jobs (seed left out)."""
    train = [j for j in jobs if j.kind == "train"]
    values: dict[str, set[str]] = {}
    for job in train:
        for item in job.overrides:
            values.setdefault(_key(item), set()).add(item)
    varying = {
        k for k, v in values.items() if k != "seed" and (len(v) > 1 or _missing_somewhere(k, train))
    }
    for job in jobs:
        if job.kind == "evaluate":
            job.label = f"{job.model} ({'fine-tuned ckpt' if job.checkpoint else 'base'})"
            continue
        picked = [o for o in job.overrides if _key(o) in varying]
        name = name_from_overrides(picked) if picked else ""
        if name in ("", "default"):
            name = name_from_overrides([o for o in job.overrides if _key(o) != "seed"])
        job.label = job.model if name == "default" else name


def _missing_somewhere(key: str, jobs: list[Job]) -> bool:
    return any(all(_key(o) != key for o in j.overrides) for j in jobs)


def config_key(job: Job) -> tuple:
    """Jobs with equal keys are runs of one configuration: same overrides but for the seed."""
    if job.kind == "evaluate":
        return ("evaluate", job.model, job.checkpoint or "")
    return ("train", tuple(sorted(o for o in job.overrides if _key(o) != "seed")))


def group_columns(jobs: list[Job]) -> list[Column]:
    """One column per configuration, training first, then base-model evaluations."""
    columns: dict[tuple, Column] = {}
    for job in jobs:
        columns.setdefault(config_key(job), Column(job.label, [])).jobs.append(job)
    ordered = [columns[k] for k in sorted(columns, key=lambda k: k[0] == "evaluate")]  # stable
    taken = [c.label for c in ordered]
    for column in ordered:
        if taken.count(column.label) > 1:  # configs that differ only in unnamed keys (data.path)
            column.label += f" ({column.jobs[0].path.name})"
        for job in column.jobs:
            job.label = column.label
    return ordered


def _task_scores(job: Job) -> dict[str, float]:
    return {t: job.sts[t] for t in ALL_STS_TASKS if t in job.sts}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def column_stats(column: Column) -> dict[str, tuple[float, float | None]]:
    """Per task and "average": (mean, std) as defined in the module docstring."""
    runs = [_task_scores(j) for j in column.scored]
    if not runs:
        return {}
    stats = {}
    for task in ALL_STS_TASKS:
        values = [r[task] for r in runs if task in r]
        if values:
            stats[task] = _mean_std(values)
    if len(runs) == 1:
        stats["average"] = _mean_std(list(runs[0].values()))
    else:
        stats["average"] = _mean_std([statistics.fmean(r.values()) for r in runs])
    return stats


def _header(column: Column) -> str:
    n = len(column.scored)
    if n > 1:
        return f"{column.label} (n={n})"
    if n == 0:
        states = sorted({j.status for j in column.jobs})
        return f"{column.label} ({', '.join(states)})"
    return column.label


def markdown_table(columns: list[Column]) -> str:
    stats = [column_stats(c) for c in columns]
    lines = [
        "| Task | " + " | ".join(_header(c) for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for task in [*ALL_STS_TASKS, "average"]:
        cells = []
        best = max((round(s[task][0], 2) for s in stats if task in s), default=None)
        for s in stats:
            if task not in s:
                cells.append("–")
                continue
            mean, std = s[task]
            text = f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")
            tasks = sum(t in s for t in ALL_STS_TASKS)
            if task == "average" and tasks < len(ALL_STS_TASKS):  # not comparable to a full one
                text += f" ({tasks}/{len(ALL_STS_TASKS)} tasks)"
            is_best = round(mean, 2) == best and len(columns) > 1  # ties at 2 decimals: all bold
            cells.append(f"**{text}**" if is_best else text)
        name = "**Avg ± std**" if task == "average" else TASK_LABELS.get(task, task)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table_csv(columns: list[Column], path: Path) -> None:
    stats = [column_stats(c) for c in columns]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["task", *(c.label for c in columns)])
        for task in [*ALL_STS_TASKS, "average"]:
            out.writerow([task, *(_fmt(s[task][0]) if task in s else "" for s in stats)])
        out.writerow(["std", *(_fmt(s["average"][1]) if s else "" for s in stats)])
        out.writerow(["std_over", *_std_over(columns)])
        out.writerow(["n_runs", *(len(c.scored) for c in columns)])


def _std_over(columns: list[Column]) -> list[str]:
    return [("runs" if len(c.scored) > 1 else "tasks") if c.scored else "" for c in columns]


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def write_runs_csv(jobs: list[Job], root: Path, path: Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(
            [
                "dir",
                "label",
                "kind",
                "status",
                "model",
                "overrides",
                "global_step",
                "wall_time_s",
                "final_loss",
                *ALL_STS_TASKS,
                "average",
                "error",
            ]
        )
        for j in jobs:
            scores = _task_scores(j)
            avg = statistics.fmean(scores.values()) if scores else None
            out.writerow(
                [
                    _rel(j.path, root),
                    j.label,
                    j.kind,
                    j.status,
                    j.model,
                    " ".join(j.overrides),
                    j.train.get("global_step", ""),
                    j.train.get("wall_time_s", ""),
                    j.train.get("final_loss", ""),
                    *(_fmt(scores.get(t)) for t in ALL_STS_TASKS),
                    _fmt(avg),
                    j.error or "",
                ]
            )


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve())) or "."
    except ValueError:
        return str(path)


def status_line(job: Job, root: Path) -> str:
    where = f"`{_rel(job.path, root)}`"
    if job.status == "completed":
        bits = []
        if job.train:
            bits.append(f"{job.train.get('global_step')} steps")
            if job.train.get("final_loss") is not None:
                bits.append(f"final loss {job.train['final_loss']:.4f}")
            if job.train.get("wall_time_s") is not None:
                bits.append(f"{job.train['wall_time_s']:.0f} s")
            if job.train.get("resumed_from"):
                bits.append("resumed from a checkpoint")
        scores = _task_scores(job)
        bits.append(f"{len(scores)} STS tasks" if scores else "no STS scores (eval off)")
        history = attempt_history(job.attempts)
        if history:
            bits.append(history)
        return f"- completed: **{job.label}** {where}: " + ", ".join(bits)
    if job.status == NO_RESULTS:
        return (
            f"- **{NO_RESULTS}**: **{job.label or '?'}** {where}: not started yet, or it stopped "
            "before writing results.json (config error? killed?): see its log"
        )
    error = (job.error or "").strip().splitlines()
    reason = f": {error[0][:300]}" if error else ""
    history = attempt_history(job.attempts)
    return f"- **{job.status}**: **{job.label}** {where}{reason}" + (
        f" ({history})" if history else ""
    )


def attempt_history(attempts: list[dict[str, Any]]) -> str:
    """How a job got here when it took more than one go: ``runs: preempted -> completed; kept``.

    ``kept``: a sweep re-run found the job completed and kept its results instead of retraining.
    """
    if len(attempts) <= 1:
        return ""
    return "runs: " + " -> ".join(str(a.get("status", "?")) for a in attempts)


def plot_tasks(columns: list[Column], path: Path) -> bool:
    """Grouped bars: one group per task (and the average), one bar per column with scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(c, column_stats(c)) for c in columns if c.scored]
    if not shown:
        return False
    rows = [t for t in [*ALL_STS_TASKS, "average"] if any(t in s for _, s in shown)]
    n = len(shown)
    width = 0.8 / n
    # Width grows with the bars up to a page; many columns put the legend below, in rows.
    fig, ax = plt.subplots(figsize=(min(16.0, max(9.0, 0.9 + len(rows) * (0.35 + 0.16 * n))), 6))
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20")
    for i, (column, s) in enumerate(shown):
        xs = [r + (i - (n - 1) / 2) * width for r in range(len(rows))]
        means = [s[t][0] if t in s else 0.0 for t in rows]
        many = len(column.scored) > 1  # error bars: the spread across runs, not across tasks
        errs = [(s[t][1] or 0.0) if t in s and many else 0.0 for t in rows]
        ax.bar(
            xs,
            means,
            width,
            label=_header(column),
            color=colors(i % colors.N),
            yerr=errs if many else None,
            capsize=2 if many else 0,
        )
        if n <= 6:  # few bars: each value fits, written along its bar
            for x, m, e, t in zip(xs, means, errs, rows, strict=True):
                if t in s:  # written beyond the error bar, if any
                    tip = m + e if m >= 0 else m - e
                    ax.annotate(
                        f"{m:.1f}",
                        (x, tip),
                        ha="center",
                        va="bottom" if m >= 0 else "top",
                        rotation=90,
                        fontsize=7,
                        xytext=(0, 2 if m >= 0 else -2),
                        textcoords="offset points",
                    )
    ax.set_xticks(range(len(rows)))
    avg = "Avg" if len(rows) > len(ALL_STS_TASKS) else f"Avg of {len(rows) - 1}"
    ax.set_xticklabels([avg if t == "average" else TASK_LABELS.get(t, t) for t in rows])
    ax.axvline(len(rows) - 1.5, color="grey", lw=0.8, ls=":")  # the average stands apart
    ax.axhline(0, color="black", lw=0.6)
    ax.margins(y=0.12)  # room for the values written above the bars
    ax.set_ylabel("Spearman × 100 (test)")
    ax.set_title("STS per task")
    ax.grid(axis="y", alpha=0.3)
    if n <= 6:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.legend(fontsize=8, ncol=min(n, 4), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_dev_curves(jobs: list[Job], path: Path) -> bool:
    """STSB-dev Spearman against optimizer step, one line per job that recorded a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [j for j in jobs if j.stsb_dev]
    if not curves:
        return False
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    colors = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for i, job in enumerate(curves):
        steps, values = zip(*job.stsb_dev, strict=True)
        seed = next((o.partition("=")[2] for o in job.overrides if _key(o) == "seed"), None)
        label = job.label + (f" seed {seed}" if seed else "")
        # Markers and dashes differ too, so that curves lying on top of each other stay visible.
        ax.plot(
            steps,
            values,
            label=label,
            color=colors(i % colors.N),
            lw=1.5,
            marker="osD^vP*X"[i % 8],
            ms=5,
            ls=("-", "--", "-.", ":")[i % 4],
            alpha=0.85,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("STSB dev Spearman × 100")
    ax.set_title("STSB-dev during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


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
