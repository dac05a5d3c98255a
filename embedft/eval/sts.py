"""Loading STS pairs and scoring them as MTEB does.

Which tasks exist, where their files are, how they are read and which hub dataset backs them is
the task table ``embedft.eval.tasks`` (the paper's 9: STS12-16, STS17 en-en, STSBenchmark,
BIOSSES, SICK-R); this module only follows its rows. Each task loads from

* a local data directory (``load_task``): the row's reader on the row's files under
  ``<data_dir>/sts`` (layouts of ``shared/data/sts``, see its README and
  ``embedft.eval.readers``), ``split="dev"`` for STSBenchmark's validation set;
* or the hub (``load_task_from_hub``): the row's MTEB dataset, at the revision MTEB pins.

``check_local_files`` (run by ``load_tasks``, and by ``embedft.run`` for everything a training
run will read, before any model loads) names every missing file at once and the ways out.

Score (``cosine_spearman``): Spearman x 100 between the gold scores and the cosine similarity of
the two embeddings, computed as MTEB's STS evaluator does (``1 - paired_cosine_distances``, then
``scipy.stats.spearmanr(gold, cosine)``). MTEB also rescales gold scores to [0, 1]; an affine
map leaves Pearson and Spearman unchanged, so that step is left out. ``sts_metrics`` is MTEB's
whole metric set (Pearson and Spearman of cosine, negative Manhattan and Euclidean distance, as
fractions) for its result files; ``evaluate_sts`` / ``score_pairs`` give embedft's table
(cosine Spearman x 100 and the average), encoding all the tasks' sentences in one deduplicated
pass (``embedft.eval.encoder``) with an embedft ``Embedder`` or a sentence-transformers model.

    >>> from embedft.eval.sts import evaluate_sts, load_task
    >>> len(load_task("STSBenchmark"))                                 # doctest: +SKIP
    1379
    >>> evaluate_sts(embedder, ["STSBenchmark", "SICK-R"])              # doctest: +SKIP
    {'STSBenchmark': 82.03, 'SICK-R': 77.58, 'average': 79.81}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import pearsonr, spearmanr

from embedft.eval.encoder import EmbedderLike, SentenceEncoder, encode_texts
from embedft.eval.readers import StsDataError as StsDataError  # raised by load_task; re-exported
from embedft.eval.tasks import HUB_SPLIT_NAMES, get_task

# MTEB's STS scores, in the order of its result files (mteb.abstasks.sts.STSMetrics + main_score)
STS_METRICS = (
    "pearson",
    "spearman",
    "cosine_pearson",
    "cosine_spearman",
    "manhattan_pearson",
    "manhattan_spearman",
    "euclidean_pearson",
    "euclidean_spearman",
    "main_score",
)
if TYPE_CHECKING:
    from embedft.config import EvalConfig


@dataclass(frozen=True)
class StsPairs:
    """The scored sentence pairs of one task split."""

    task: str
    split: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]

    def __post_init__(self) -> None:
        n = len(self.scores)
        if not len(self.sentences1) == len(self.sentences2) == n:
            raise ValueError(
                f"{self.task}/{self.split}: {len(self.sentences1)} sentences1, "
                f"{len(self.sentences2)} sentences2 and {n} scores; expected equal lengths"
            )

    def __len__(self) -> int:
        return len(self.scores)


def load_task(task: str, data_dir: str | Path | None = None, split: str = "test") -> StsPairs:
    """Load ``task`` from the local data directory (default: ``embedft.paths.data_dir()``)."""
    row = get_task(task, split)
    if data_dir is None:
        from embedft.paths import data_dir as default_data_dir

        data_dir = default_data_dir()
    s1, s2, scores = row.reader(*row.local_paths(Path(data_dir) / "sts", split))
    return StsPairs(task, split, s1, s2, scores)


def load_task_from_hub(task: str, split: str = "test") -> StsPairs:
    """Load ``task`` from its hub dataset (columns sentence1, sentence2, score)."""
    hub = get_task(task, split).hub
    from datasets import load_dataset

    ds = load_dataset(hub.path, hub.subset, split=HUB_SPLIT_NAMES[split], revision=hub.revision)
    return StsPairs(
        task,
        split,
        list(ds["sentence1"]),
        list(ds["sentence2"]),
        [float(s) for s in ds["score"]],
    )


def load_tasks(
    tasks: list[str], data_dir: str | Path | None = None, split: str = "test", source: str = "local"
) -> dict[str, StsPairs]:
    """Load several tasks from ``source`` ("local" or "hub"), checking every name first."""
    if source not in ("local", "hub"):
        raise ValueError(f"source must be 'local' or 'hub', got {source!r}")
    for task in tasks:
        get_task(task, split)
    if source == "hub":
        return {task: load_task_from_hub(task, split) for task in tasks}
    check_local_files([(task, split) for task in tasks], data_dir)
    return {task: load_task(task, data_dir, split) for task in tasks}


def check_local_files(
    wanted: list[tuple[str, str]], data_dir: str | Path | None = None, hint: str = ""
) -> None:
    """``StsDataError`` if files of the ``(task, split)`` pairs in ``wanted`` are missing.

    The message names, for each such task, its first missing file and how many more are missing.
    """
    from embedft.paths import data_dir as default_data_dir

    sts_dir = Path(data_dir if data_dir is not None else default_data_dir()) / "sts"
    missing = {
        (task, split): [
            p for p in get_task(task, split).local_paths(sts_dir, split) if not p.is_file()
        ]
        for task, split in wanted
    }
    missing = {key: paths for key, paths in missing.items() if paths}
    if not missing:
        return
    each = []
    for (task, split), paths in missing.items():
        more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
        name = task if split == "test" else f"{task} ({split})"
        each.append(f"{name}: {paths[0].relative_to(sts_dir)}{more}")
    raise StsDataError(
        f"STS data missing under {sts_dir}: {'; '.join(each)}. "
        f"The data directory is paths.data_dir, else $EMBEDFT_DATA_DIR, else "
        f"shared/data next to the checkout (layout: shared/data/README.md): point one of them "
        f"at the offline STS copies, or read MTEB's datasets from the hub with eval.source=hub"
        f"{hint}."
    )


def check_eval_data(eval_cfg: EvalConfig, data_dir: str | Path | None = None) -> None:
    """Before training: the local files of everything a run's ``eval`` config will read.

    The after-fit test table (``eval.tasks`` at ``eval.split``, if ``eval.after_fit``) and
    STSBenchmark dev (if ``eval.every_n_steps > 0``); nothing with ``eval.source=hub``.
    """
    if eval_cfg.source != "local":
        return
    wanted = [(task, eval_cfg.split) for task in eval_cfg.tasks] if eval_cfg.after_fit else []
    if eval_cfg.every_n_steps > 0:
        wanted.append(("STSBenchmark", "dev"))
    check_local_files(
        wanted, data_dir, hint=" (or leave them out: eval.after_fit=false, eval.every_n_steps=0)"
    )


def paired_cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - sklearn.metrics.pairwise.paired_cosine_distances(a, b)``, the way MTEB scores pairs.

    Mirrors sklearn's arithmetic (unit-normalise rows, then 1 - |a - b|^2 / 2) so that near-ties
    rank as they do in MTEB; an all-zero row stays zero, as in sklearn's ``normalize``.
    """
    a, b = _unit_rows(np.asarray(a)), _unit_rows(np.asarray(b))
    return 1.0 - 0.5 * ((a - b) ** 2).sum(axis=1)  # (N,)


def cosine_spearman(
    embeddings1: np.ndarray, embeddings2: np.ndarray, gold: list[float] | np.ndarray
) -> float:
    """Spearman x 100 between ``gold`` and the pairwise cosine similarity of the embeddings."""
    _check_lengths(embeddings1, embeddings2, gold)
    cosine = paired_cosine_similarity(embeddings1, embeddings2)
    return float(spearmanr(np.asarray(gold, dtype=np.float64), cosine).statistic) * 100.0


def sts_metrics(
    embeddings1: np.ndarray, embeddings2: np.ndarray, gold: list[float] | np.ndarray
) -> dict[str, float]:
    """MTEB's STS scores of one task, as fractions (0.8123, not 81.23), in MTEB's key order.

    ``pearson``/``spearman`` are of the model's own similarity in MTEB; embedft's is cosine, so
    they equal ``cosine_pearson``/``cosine_spearman``; ``main_score`` is ``cosine_spearman``.
    """
    _check_lengths(embeddings1, embeddings2, gold)
    a, b = np.asarray(embeddings1), np.asarray(embeddings2)
    gold = np.asarray(gold, dtype=np.float64)
    predictions = {
        "cosine": paired_cosine_similarity(a, b),  # (N,)
        "manhattan": -np.abs(a - b).sum(axis=1),  # (N,)
        "euclidean": -np.sqrt(((a - b) ** 2).sum(axis=1)),  # (N,)
    }
    scores: dict[str, float] = {}
    for name, predicted in predictions.items():
        scores[f"{name}_pearson"] = float(pearsonr(gold, predicted).statistic)
        scores[f"{name}_spearman"] = float(spearmanr(gold, predicted).statistic)
    scores["pearson"], scores["spearman"] = scores["cosine_pearson"], scores["cosine_spearman"]
    scores["main_score"] = scores["cosine_spearman"]
    return {metric: scores[metric] for metric in STS_METRICS}


def spearman_table(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """embedft's table from MTEB scores: cosine Spearman x 100 per task, plus ``"average"``."""
    table = {task: m["cosine_spearman"] * 100.0 for task, m in metrics.items()}
    table["average"] = sum(table.values()) / len(metrics)
    return table


def evaluate_sts(
    embedder: EmbedderLike | SentenceEncoder,
    tasks: list[str],
    data_dir: str | Path | None = None,
    batch_size: int = 64,
    split: str = "test",
    source: str = "local",
    show_progress: bool = True,
) -> dict[str, float]:
    """Spearman x 100 per task, plus their unweighted ``"average"``.

    All tasks' sentences are pooled and deduplicated, then encoded in a single pass.
    """
    if not tasks:
        raise ValueError("evaluate_sts needs at least one task, got an empty list")
    return score_pairs(
        embedder, load_tasks(tasks, data_dir, split, source), batch_size, show_progress
    )


def score_pairs(
    embedder: EmbedderLike | SentenceEncoder,
    pairs: dict[str, StsPairs],
    batch_size: int = 64,
    show_progress: bool = False,
) -> dict[str, float]:
    """Score already-loaded tasks (the training callback keeps STSB-dev in memory)."""
    return spearman_table(pair_metrics(embedder, pairs, batch_size, show_progress))


def pair_metrics(
    embedder: EmbedderLike | SentenceEncoder,
    pairs: dict[str, StsPairs],
    batch_size: int = 64,
    show_progress: bool = False,
) -> dict[str, dict[str, float]]:
    """``sts_metrics`` of each task, every task's sentences encoded in one pass."""
    texts = [s for p in pairs.values() for s in (*p.sentences1, *p.sentences2)]
    embeddings = encode_texts(embedder, texts, batch_size, show_progress, desc="STS").numpy()
    metrics: dict[str, dict[str, float]] = {}
    offset = 0
    for task, p in pairs.items():
        n = len(p)
        e1 = embeddings[offset : offset + n]  # (n, H)
        e2 = embeddings[offset + n : offset + 2 * n]  # (n, H)
        offset += 2 * n
        metrics[task] = sts_metrics(e1, e2, p.scores)
    return metrics


def _check_lengths(embeddings1: np.ndarray, embeddings2: np.ndarray, gold) -> None:
    if not len(embeddings1) == len(embeddings2) == len(gold):
        raise ValueError(
            f"{len(embeddings1)} embeddings1, {len(embeddings2)} embeddings2 and {len(gold)} "
            "gold scores; expected equal lengths"
        )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt((x * x).sum(axis=1, keepdims=True))  # (N, 1)
    norms[norms == 0.0] = 1.0
    return x / norms
