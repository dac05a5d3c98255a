"""The report's text: the STS table (markdown and csv), one csv row per job, job status lines.

``markdown_table`` is the table of ``report.md`` in the paper's layout (rows: the 9 tasks, then
"Avg ± std"; one column per configuration, base models last; the best of a row in bold);
``write_table_csv`` writes the same numbers to ``report.csv``, ``write_runs_csv`` one row per job
to ``runs.csv``; ``status_line`` says what became of a job (completed, failed, preempted, no
results yet) and how many attempts it took.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

from embedft.config import ALL_STS_TASKS
from embedft.report_jobs import (
    NO_RESULTS,
    TASK_LABELS,
    Column,
    Job,
    column_header,
    column_stats,
    task_scores,
)


def markdown_table(columns: list[Column]) -> str:
    stats = [column_stats(c) for c in columns]
    lines = [
        "| Task | " + " | ".join(column_header(c) for c in columns) + " |",
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
            scores = task_scores(j)
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
        scores = task_scores(job)
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
