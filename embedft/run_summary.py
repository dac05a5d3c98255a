"""What a training run says when it ends: what happened, where its files are, what to run next.

``log_run_summary`` logs one message (rank 0 only, once ``results.json`` is written) through
the ``embedft.run`` logger, which Hydra sends to the console and to ``<run dir>/run.log``:

- completed: the STS test table (Spearman x 100 per task, then the average), the run
  directory, the checkpoint the scores belong to (``best.ckpt``, STSB-dev's pick, else
  ``last.ckpt``) and the ``embedft.export`` command for it;
- failed or preempted: the error, and the command that resumes the run from its ``last.ckpt``
  (or that there is none to resume from).

Both also say where the metrics went (``csv/metrics.csv``, a W&B run directory). Commands are
quoted for the shell and Hydra's grammar (``embedft.cli.override``): sweep directories hold
``=`` and ``,``.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from embedft.cli import override
from embedft.results import FILENAME, Results

log = logging.getLogger("embedft.run")

LEVELS = {"completed": logging.INFO, "preempted": logging.WARNING}  # else (failed) ERROR


def run_summary(results: Results, out: Path) -> str:
    """The end-of-run message for ``results`` of the run in ``out`` (see the module docstring)."""
    lines = [f"run {results.status}: {out}"]
    if results.status != "completed":
        lines.append(f"  error:      {results.error}")
    if results.sts:
        from embedft.evaluate import markdown_table

        lines += ["", markdown_table(results.sts, results.model), ""]
    elif results.status == "completed":
        lines.append("  STS table:  not computed (eval.after_fit=false)")
    if results.stsb_dev:
        best = max(results.stsb_dev, key=lambda point: point["spearman"])
        lines.append(f"  STSB-dev:   best {best['spearman']:.2f} at step {best['step']}")
    lines.append(f"  results:    {out / FILENAME}")
    lines += [f"  metrics:    {where}" for where in _metrics(out)]
    if results.status == "completed" and results.checkpoint:
        lines.append(f"  checkpoint: {results.checkpoint}")
        export = ["python -m embedft.export", override("ckpt", results.checkpoint)]
        lines.append("  export:     " + " ".join([*export, override("out", out / "export")]))
    elif results.status != "completed":
        lines.append(f"  resume:     {_resume(results, out)}")
    return "\n".join(lines)


def log_run_summary(results: Results, out: Path) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        log.log(LEVELS.get(results.status, logging.ERROR), "%s", run_summary(results, out))


def _resume(results: Results, out: Path) -> str:
    if not (out / "checkpoints" / "last.ckpt").is_file():
        return "nothing to resume from (no checkpoint was written): fix the cause, run again"
    kept = [shlex.quote(o) for o in results.overrides if not o.lstrip("+~").startswith("resume=")]
    resume = [override("resume", "auto"), override("hydra.run.dir", out)]
    return " ".join(["python -m embedft.run", *kept, *resume])


def _metrics(out: Path) -> list[str]:
    found = []
    if (out / "csv" / "metrics.csv").is_file():
        found.append(str(out / "csv" / "metrics.csv"))
    for run in sorted((out / "wandb").glob("offline-run-*")):
        found.append(f"W&B offline run {run} (upload: wandb sync {shlex.quote(str(run))})")
    for run in sorted((out / "wandb").glob("run-*")):
        found.append(f"W&B run {run}")
    return found
