"""The jobs of a sweep, read from their ``results.json``, and the columns of its report.

``load_jobs`` finds every job directory under the report's ``dirs`` (one holding a
``results.json``, or a ``.hydra/`` dir from a job that has not written one yet) and reads it
into a ``Job``; ``label_jobs`` names each job by the overrides that differ between the training
jobs; ``group_columns`` puts the runs of one configuration (the same overrides but for ``seed``,
or the same job in several dirs) into one ``Column``, base-model evaluations last.

``column_stats`` is what a column's cells hold. For a column holding one run: each task's score,
and for "average" the mean over the tasks ± the standard deviation across those tasks (how even
the model is). For several runs of one configuration: each task cell is the mean ± std across
the runs, and "average" the mean ± std across runs of each run's task average. Standard
deviations are sample ones (ddof=1).
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embedft.config import ALL_STS_TASKS
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
        return [j for j in self.jobs if j.status == "completed" and task_scores(j)]


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


def override_key(override: str) -> str:
    """The key an override sets: ``+lora.r=16`` -> ``lora.r``."""
    return override.lstrip("+~").partition("=")[0]


def label_jobs(jobs: list[Job]) -> None:
    """Name each job by the overrides that differ between the training jobs (seed left out)."""
    train = [j for j in jobs if j.kind == "train"]
    values: dict[str, set[str]] = {}
    for job in train:
        for item in job.overrides:
            values.setdefault(override_key(item), set()).add(item)
    varying = {
        k for k, v in values.items() if k != "seed" and (len(v) > 1 or _missing_somewhere(k, train))
    }
    for job in jobs:
        if job.kind == "evaluate":
            job.label = f"{job.model} ({'fine-tuned ckpt' if job.checkpoint else 'base'})"
            continue
        picked = [o for o in job.overrides if override_key(o) in varying]
        name = name_from_overrides(picked) if picked else ""
        if name in ("", "default"):
            name = name_from_overrides([o for o in job.overrides if override_key(o) != "seed"])
        job.label = job.model if name == "default" else name


def _missing_somewhere(key: str, jobs: list[Job]) -> bool:
    return any(all(override_key(o) != key for o in j.overrides) for j in jobs)


def config_key(job: Job) -> tuple:
    """Jobs with equal keys are runs of one configuration: same overrides but for the seed."""
    if job.kind == "evaluate":
        return ("evaluate", job.model, job.checkpoint or "")
    return ("train", tuple(sorted(o for o in job.overrides if override_key(o) != "seed")))


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


def task_scores(job: Job) -> dict[str, float]:
    return {t: job.sts[t] for t in ALL_STS_TASKS if t in job.sts}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def column_stats(column: Column) -> dict[str, tuple[float, float | None]]:
    """Per task and "average": (mean, std), as the module docstring defines them."""
    runs = [task_scores(j) for j in column.scored]
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


def column_header(column: Column) -> str:
    """The column's name in the table and the plots' legend, with its run count or job states."""
    n = len(column.scored)
    if n > 1:
        return f"{column.label} (n={n})"
    if n == 0:
        states = sorted({j.status for j in column.jobs})
        return f"{column.label} ({', '.join(states)})"
    return column.label
