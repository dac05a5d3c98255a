"""The report's plots: STS scores per task (``sts_tasks.png``) and STSB-dev curves (``stsb_dev.png``).

Both draw from the jobs and columns of ``embedft.report_jobs`` with matplotlib (Agg: no display
needed) and return False, writing nothing, when there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path

from embedft.config import ALL_STS_TASKS
from embedft.report_jobs import TASK_LABELS, Column, Job, column_header, column_stats, override_key


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
            label=column_header(column),
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
        seed = next((o.partition("=")[2] for o in job.overrides if override_key(o) == "seed"), None)
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
