"""The 9 STS tasks of the paper: loaders and MTEB-faithful scoring.

Tasks: STS12-16, STS17 (en-en), STSBenchmark (test; ``split="dev"`` for validation), BIOSSES and
SICK-R. Each loads from

* a local data directory (``load_task``), in the layouts of ``shared/data/sts`` (see its README),
  using the copy whose text matches MTEB exactly:

  ==============  ==========================================================================
  STS12-16        ``STS1x/SentEval/STS1x-en-test/STS.{input,gs}.<subset>.txt`` (SentEval)
  STS17           ``STS17/STS2017.eval.v1.1/STS.input.track5.en-en.txt`` + ``STS17/STS2017.gs/``
  STSBenchmark    ``STSBenchmark/stsbenchmark/sts-{test,dev}.csv`` (not the SentEval copy)
  BIOSSES         ``BIOSSES/blagec/`` -- no copy matches MTEB exactly; this one is closest (it
                  equals the official data except pair 7 scores 1.4, as MTEB's mean 2.196 does)
  SICK-R          ``SICK-R/praguna_sick_dataset/SICK.txt`` (all 9,927 pairs, as MTEB)
  ==============  ==========================================================================

* or the hub's MTEB datasets (``load_task_from_hub``), at the revisions MTEB pins.

Blank gold lines (unscored distractors in STS15/16) are skipped, as SentEval and MTEB do. A gold
file whose line count disagrees with its input file is an error, never a silent truncation.

Score (``cosine_spearman``): Spearman x 100 between the gold scores and the cosine similarity of
the two embeddings, computed as MTEB's STS evaluator does (``1 - paired_cosine_distances``, then
``scipy.stats.spearmanr(gold, cosine)``). MTEB also rescales gold scores to [0, 1]; a monotone
map leaves Spearman unchanged, so that step is left out. ``evaluate_sts`` runs a list of tasks,
encoding all their sentences in one deduplicated pass (``embedft.eval.encoder``).

    >>> from embedft.eval.sts import evaluate_sts, load_task
    >>> len(load_task("STSBenchmark"))                                 # doctest: +SKIP
    1379
    >>> evaluate_sts(embedder, ["STSBenchmark", "SICK-R"])              # doctest: +SKIP
    {'STSBenchmark': 82.03, 'SICK-R': 77.58, 'average': 79.81}
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from embedft.config import ALL_STS_TASKS
from embedft.eval.encoder import EmbedderLike, encode_texts

TASKS: tuple[str, ...] = ALL_STS_TASKS

# Test-pair counts of MTEB (mteb/descriptive_stats/STS/<task>.json); the local copies equal them.
MTEB_PAIR_COUNTS: dict[str, int] = {
    "STS12": 3108,
    "STS13": 1500,
    "STS14": 3750,
    "STS15": 3000,
    "STS16": 1186,
    "STS17": 250,
    "STSBenchmark": 1379,
    "BIOSSES": 100,
    "SICK-R": 9927,
}

# SentEval's subset lists. STS13's SMT input is LDC-licensed and absent everywhere (MTEB too).
_SENTEVAL_SUBSETS: dict[str, tuple[str, ...]] = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}

# (dataset, subset, revision) as pinned in MTEB's task metadata.
HUB_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "STS12": ("mteb/sts12-sts", None, "a0d554a64d88156834ff5ae9920b964011b16384"),
    "STS13": ("mteb/sts13-sts", None, "7e90230a92c190f1bf69ae9002b8cea547a64cca"),
    "STS14": ("mteb/sts14-sts", None, "6031580fec1f6af667f0bd2da0a551cf4f0b2375"),
    "STS15": ("mteb/sts15-sts", None, "ae752c7c21bf194d8b67fd573edf7ae58183cbe3"),
    "STS16": ("mteb/sts16-sts", None, "4d8694f8f0e0100860b497b999b3dbed754a0513"),
    "STS17": ("mteb/sts17-crosslingual-sts", "en-en", "faeb762787bd10488a50c8b5be4a3b82e411949c"),
    "STSBenchmark": ("mteb/stsbenchmark-sts", None, "b0fddb56ed78048fa8b90373c8a3cfc37b684831"),
    "BIOSSES": ("mteb/biosses-sts", None, "d3fb88f8f02e40887cd149695127462bbcf29b4a"),
    "SICK-R": ("mteb/sickr-sts", None, "20a6d6f312dd54037fe07a32d58e5e168867909d"),
}

# Only STSBenchmark has a dev split; "dev" is the hub's "validation".
_SPLITS: dict[str, tuple[str, ...]] = {t: ("test",) for t in TASKS} | {
    "STSBenchmark": ("test", "dev", "train")
}
_HUB_SPLIT_NAMES = {"test": "test", "dev": "validation", "train": "train"}


class StsDataError(ValueError):
    """An STS file is missing or malformed; the message names the path and the expected layout."""


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


def check_task(task: str, split: str = "test") -> None:
    """Raise ``ValueError`` for an unknown task name or a split the task does not have."""
    if task not in TASKS:
        raise ValueError(f"unknown STS task {task!r}; known tasks: {list(TASKS)}")
    if split not in _SPLITS[task]:
        raise ValueError(f"{task} has no split {split!r}; available: {list(_SPLITS[task])}")


def load_task(task: str, data_dir: str | Path | None = None, split: str = "test") -> StsPairs:
    """Load ``task`` from the local data directory (default: ``embedft.paths.data_dir()``)."""
    check_task(task, split)
    if data_dir is None:
        from embedft.paths import data_dir as default_data_dir

        data_dir = default_data_dir()
    sts = Path(data_dir) / "sts"
    if task in _SENTEVAL_SUBSETS:
        folder = sts / task / "SentEval" / f"{task}-en-test"
        s1, s2, scores = [], [], []
        for subset in _SENTEVAL_SUBSETS[task]:
            a, b, gold = _read_input_gold(folder, subset)
            s1.extend(a)
            s2.extend(b)
            scores.extend(gold)
    elif task == "STS17":
        s1, s2, scores = _read_input_gold_files(
            sts / "STS17" / "STS2017.eval.v1.1" / "STS.input.track5.en-en.txt",
            sts / "STS17" / "STS2017.gs" / "STS.gs.track5.en-en.txt",
        )
    elif task == "STSBenchmark":
        s1, s2, scores = _read_stsb(sts / "STSBenchmark" / "stsbenchmark" / f"sts-{split}.csv")
    elif task == "BIOSSES":
        s1, s2, scores = _read_biosses(sts / "BIOSSES" / "blagec")
    else:
        s1, s2, scores = _read_sick(sts / "SICK-R" / "praguna_sick_dataset" / "SICK.txt")
    return StsPairs(task, split, s1, s2, scores)


def load_task_from_hub(task: str, split: str = "test") -> StsPairs:
    """Load ``task`` from the hub's MTEB dataset (columns sentence1, sentence2, score)."""
    check_task(task, split)
    from datasets import load_dataset

    path, subset, revision = HUB_DATASETS[task]
    ds = load_dataset(path, subset, split=_HUB_SPLIT_NAMES[split], revision=revision)
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
        check_task(task, split)
    if source == "hub":
        return {task: load_task_from_hub(task, split) for task in tasks}
    return {task: load_task(task, data_dir, split) for task in tasks}


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
    if not len(embeddings1) == len(embeddings2) == len(gold):
        raise ValueError(
            f"{len(embeddings1)} embeddings1, {len(embeddings2)} embeddings2 and {len(gold)} "
            "gold scores; expected equal lengths"
        )
    cosine = paired_cosine_similarity(embeddings1, embeddings2)
    return float(spearmanr(np.asarray(gold, dtype=np.float64), cosine).statistic) * 100.0


def evaluate_sts(
    embedder: EmbedderLike,
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
    embedder: EmbedderLike,
    pairs: dict[str, StsPairs],
    batch_size: int = 64,
    show_progress: bool = False,
) -> dict[str, float]:
    """Score already-loaded tasks (the training callback keeps STSB-dev in memory)."""
    texts = [s for p in pairs.values() for s in (*p.sentences1, *p.sentences2)]
    embeddings = encode_texts(embedder, texts, batch_size, show_progress, desc="STS").numpy()
    scores: dict[str, float] = {}
    offset = 0
    for task, p in pairs.items():
        n = len(p)
        e1 = embeddings[offset : offset + n]  # (n, H)
        e2 = embeddings[offset + n : offset + 2 * n]  # (n, H)
        offset += 2 * n
        scores[task] = cosine_spearman(e1, e2, p.scores)
    scores["average"] = sum(scores.values()) / len(pairs)
    return scores


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt((x * x).sum(axis=1, keepdims=True))  # (N, 1)
    norms[norms == 0.0] = 1.0
    return x / norms


def _require(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise StsDataError(f"STS file not found: {path} (expected {layout})")
    return path


def _lines(path: Path, layout: str) -> list[str]:
    return _require(path, layout).read_text(encoding="utf-8").splitlines()


def _read_input_gold(folder: Path, subset: str) -> tuple[list[str], list[str], list[float]]:
    return _read_input_gold_files(
        folder / f"STS.input.{subset}.txt", folder / f"STS.gs.{subset}.txt"
    )


def _read_input_gold_files(
    input_path: Path, gold_path: Path
) -> tuple[list[str], list[str], list[float]]:
    """SemEval STS format: ``s1<TAB>s2[<TAB>...]`` lines, and one gold score (or blank) a line."""
    inputs = _lines(input_path, "one 'sentence1<TAB>sentence2' pair per line")
    golds = _lines(gold_path, f"one gold score per line, aligned with {input_path.name}")
    if len(inputs) != len(golds):
        raise StsDataError(
            f"{gold_path} has {len(golds)} lines but {input_path} has {len(inputs)}; "
            "expected one gold line (score or blank) per input pair"
        )
    s1, s2, scores = [], [], []
    for lineno, (pair, gold) in enumerate(zip(inputs, golds, strict=True), start=1):
        if not gold.strip():
            continue  # unscored distractor pair
        cols = pair.split("\t")
        if len(cols) < 2:
            raise StsDataError(
                f"{input_path}:{lineno}: expected 'sentence1<TAB>sentence2', got {pair[:80]!r}"
            )
        s1.append(cols[0])
        s2.append(cols[1])
        scores.append(_score(gold, gold_path, lineno))
    return s1, s2, scores


def _read_stsb(path: Path) -> tuple[list[str], list[str], list[float]]:
    """STS Benchmark csv: TAB-separated, no header: genre, file, year, id, score, s1, s2[, ...]."""
    layout = "TAB-separated, no header: genre file year id score sentence1 sentence2 [extra]"
    s1, s2, scores = [], [], []
    with _require(path, layout).open(encoding="utf-8", newline="") as f:
        # QUOTE_NONE: sentences contain '"'; some rows carry 2 extra licence/source columns.
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) < 7:
                raise StsDataError(f"{path}:{lineno}: {len(row)} columns, expected >= 7 ({layout})")
            scores.append(_score(row[4], path, lineno))
            s1.append(row[5])
            s2.append(row[6])
    return s1, s2, scores


def _read_biosses(folder: Path) -> tuple[list[str], list[str], list[float]]:
    """blagec copy: sentence pairs on consecutive lines (2 per pair), one score per line."""
    sent_path = folder / "biosses_sentence_pairs_test_derived_from_github.txt"
    gold_path = folder / "annotation_scores_from_github.txt"
    sentences = _lines(sent_path, "one sentence per line, pair i on lines 2i+1 and 2i+2")
    golds = _lines(
        gold_path, f"one score per line, pair i on line i+1 (sentences: {sent_path.name})"
    )
    if len(sentences) != 2 * len(golds):
        raise StsDataError(
            f"{sent_path} has {len(sentences)} lines but {gold_path} has {len(golds)} scores; "
            "expected 2 sentence lines per score"
        )
    scores = [_score(g, gold_path, i) for i, g in enumerate(golds, start=1)]
    return sentences[0::2], sentences[1::2], scores


def _read_sick(path: Path) -> tuple[list[str], list[str], list[float]]:
    """SICK.txt: TAB-separated with a header naming sentence_A, sentence_B, relatedness_score."""
    layout = "TAB-separated with header pair_ID sentence_A sentence_B relatedness_score ..."
    header, *rows = _lines(path, layout)
    names = header.split("\t")
    wanted = ("sentence_A", "sentence_B", "relatedness_score")
    missing = [n for n in wanted if n not in names]
    if missing:
        raise StsDataError(f"{path}: header lacks columns {missing}; expected {layout}")
    ia, ib, ir = (names.index(n) for n in wanted)
    s1, s2, scores = [], [], []
    for lineno, line in enumerate(rows, start=2):
        cols = line.split("\t")
        if len(cols) != len(names):
            raise StsDataError(f"{path}:{lineno}: {len(cols)} columns, header has {len(names)}")
        s1.append(cols[ia])
        s2.append(cols[ib])
        scores.append(_score(cols[ir], path, lineno))
    return s1, s2, scores


def _score(text: str, path: Path, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise StsDataError(f"{path}:{lineno}: score {text!r} is not a number") from None
