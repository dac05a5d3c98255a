"""The STS task table: every fact about an STS task, in one row.

Each ``StsTask`` row holds a task's name, the reader of its local files (``embedft.eval.readers``)
and their paths under ``<data_dir>/sts``, its splits, the hub dataset MTEB scores it on (id,
subset, revision) and MTEB's test-pair count. A row's name is MTEB's task name, its hub revision
MTEB's ``dataset_revision``, and ``mteb_subset`` / ``languages`` are the ``hf_subset`` and
``languages`` of its scores in MTEB's result files (``embedft.eval.mteb_results``). Everything
else reads this table: the task names
``eval.tasks`` accepts and their order in reports (``embedft.config.ALL_STS_TASKS``), local and
hub loading (``embedft.eval.sts``), and the tests' pair counts.

**Add a task**: one row in ``STS_TASKS`` below, plus a reader in ``embedft.eval.readers`` only
if its file format is new. No other file changes; ``eval.tasks=[...,NewTask]`` then works.

The rows are the paper's 9 tasks (STS12-16, STS17 en-en, STSBenchmark, BIOSSES, SICK-R), read
from the offline copies in ``shared/data/sts`` whose text matches MTEB exactly (see its README).
Standard library only, so ``embedft.config`` imports it without numpy, scipy or torch.

    >>> from embedft.eval.tasks import STS_TASKS, get_task
    >>> get_task("STSBenchmark", "dev").hub.path
    'mteb/stsbenchmark-sts'
    >>> sum(t.test_pairs for t in STS_TASKS.values())
    24200
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedft.eval.readers import Columns, read_biosses, read_input_gold, read_sick, read_stsb

# Our split names -> the hub's (MTEB's datasets call the dev split "validation").
HUB_SPLIT_NAMES: dict[str, str] = {"test": "test", "dev": "validation", "train": "train"}


@dataclass(frozen=True)
class HubDataset:
    """A hub dataset with columns sentence1, sentence2, score, at a pinned revision."""

    path: str
    subset: str | None
    revision: str  # as pinned in MTEB's task metadata


@dataclass(frozen=True)
class StsTask:
    """One STS task: where its pairs come from (locally and on the hub) and how many MTEB has."""

    name: str
    reader: Callable[..., Columns]  # reader(*local paths) -> (sentences1, sentences2, scores)
    local: tuple[str, ...]  # relative to <data_dir>/sts; "{split}" is replaced by the split
    hub: HubDataset
    test_pairs: int  # MTEB's (mteb/descriptive_stats/STS/<name>.json); local copies equal it
    splits: tuple[str, ...] = ("test",)
    languages: tuple[str, ...] = ("eng-Latn",)  # MTEB's for this subset: ISO 639-3 + script

    def __post_init__(self) -> None:
        where = f"STS task row {self.name!r} (embedft/eval/tasks.py)"
        if "test" not in self.splits or not set(self.splits) <= set(HUB_SPLIT_NAMES):
            raise ValueError(
                f"{where}: splits must include 'test' and be among {list(HUB_SPLIT_NAMES)}, "
                f"got {list(self.splits)}"
            )
        if not self.local:
            raise ValueError(f"{where}: local must name at least one file")
        if len(self.splits) > 1 and not any("{split}" in p for p in self.local):
            raise ValueError(
                f"{where}: has splits {list(self.splits)} but no local path contains '{{split}}', "
                "so every split would read the same files"
            )
        if self.test_pairs < 1:
            raise ValueError(f"{where}: test_pairs must be >= 1, got {self.test_pairs}")

    @property
    def mteb_subset(self) -> str:
        """MTEB's ``hf_subset`` of the scored data: the hub subset, or ``default`` without one."""
        return self.hub.subset or "default"

    def local_paths(self, sts_dir: Path, split: str = "test") -> tuple[Path, ...]:
        """The files of ``split`` under ``sts_dir`` (``<data_dir>/sts``), in the reader's order."""
        return tuple(sts_dir / p.replace("{split}", split) for p in self.local)


def senteval(task: str, *subsets: str) -> tuple[str, ...]:
    """SentEval's layout of ``task``: an (input, gold) file pair per subset, in the given order."""
    folder = f"{task}/SentEval/{task}-en-test"
    return tuple(f"{folder}/STS.{kind}.{s}.txt" for s in subsets for kind in ("input", "gs"))


def by_name(*rows: StsTask) -> dict[str, StsTask]:
    """The rows keyed by name, in the given order; ``ValueError`` for a name given twice."""
    table: dict[str, StsTask] = {}
    for row in rows:
        if row.name in table:
            raise ValueError(f"STS task {row.name!r} has two rows in embedft/eval/tasks.py")
        table[row.name] = row
    return table


# Table order is report order. Subsets in SentEval's order; STS13's SMT input is LDC-licensed and
# absent everywhere (MTEB too).
STS_TASKS: dict[str, StsTask] = by_name(
    StsTask(
        name="STS12",
        reader=read_input_gold,
        local=senteval(
            "STS12", "MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"
        ),
        hub=HubDataset("mteb/sts12-sts", None, "a0d554a64d88156834ff5ae9920b964011b16384"),
        test_pairs=3108,
    ),
    StsTask(
        name="STS13",
        reader=read_input_gold,
        local=senteval("STS13", "FNWN", "headlines", "OnWN"),
        hub=HubDataset("mteb/sts13-sts", None, "7e90230a92c190f1bf69ae9002b8cea547a64cca"),
        test_pairs=1500,
    ),
    StsTask(
        name="STS14",
        reader=read_input_gold,
        local=senteval(
            "STS14", "deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"
        ),
        hub=HubDataset("mteb/sts14-sts", None, "6031580fec1f6af667f0bd2da0a551cf4f0b2375"),
        test_pairs=3750,
    ),
    StsTask(
        name="STS15",
        reader=read_input_gold,
        local=senteval(
            "STS15", "answers-forums", "answers-students", "belief", "headlines", "images"
        ),
        hub=HubDataset("mteb/sts15-sts", None, "ae752c7c21bf194d8b67fd573edf7ae58183cbe3"),
        test_pairs=3000,
    ),
    StsTask(
        name="STS16",
        reader=read_input_gold,
        local=senteval(
            "STS16", "answer-answer", "headlines", "plagiarism", "postediting", "question-question"
        ),
        hub=HubDataset("mteb/sts16-sts", None, "4d8694f8f0e0100860b497b999b3dbed754a0513"),
        test_pairs=1186,
    ),
    StsTask(
        name="STS17",  # the en-en track only
        reader=read_input_gold,
        local=(
            "STS17/STS2017.eval.v1.1/STS.input.track5.en-en.txt",
            "STS17/STS2017.gs/STS.gs.track5.en-en.txt",
        ),
        hub=HubDataset(
            "mteb/sts17-crosslingual-sts", "en-en", "faeb762787bd10488a50c8b5be4a3b82e411949c"
        ),
        test_pairs=250,
    ),
    StsTask(
        name="STSBenchmark",  # not the SentEval copy; dev is the validation set during training
        reader=read_stsb,
        local=("STSBenchmark/stsbenchmark/sts-{split}.csv",),
        hub=HubDataset("mteb/stsbenchmark-sts", None, "b0fddb56ed78048fa8b90373c8a3cfc37b684831"),
        test_pairs=1379,
        splits=("test", "dev", "train"),
    ),
    StsTask(
        # No copy matches MTEB exactly; blagec's is closest: it equals the official data except
        # that pair 7 scores 1.4, as MTEB's mean 2.196 does.
        name="BIOSSES",
        reader=read_biosses,
        local=(
            "BIOSSES/blagec/biosses_sentence_pairs_test_derived_from_github.txt",
            "BIOSSES/blagec/annotation_scores_from_github.txt",
        ),
        hub=HubDataset("mteb/biosses-sts", None, "d3fb88f8f02e40887cd149695127462bbcf29b4a"),
        test_pairs=100,
    ),
    StsTask(
        name="SICK-R",  # all 9,927 pairs, as MTEB
        reader=read_sick,
        local=("SICK-R/praguna_sick_dataset/SICK.txt",),
        hub=HubDataset("mteb/sickr-sts", None, "20a6d6f312dd54037fe07a32d58e5e168867909d"),
        test_pairs=9927,
    ),
)


def get_task(name: str, split: str = "test") -> StsTask:
    """The row of ``name``; ``ValueError`` for an unknown name or a split the task does not have."""
    if name not in STS_TASKS:
        raise ValueError(f"unknown STS task {name!r}; known tasks: {list(STS_TASKS)}")
    task = STS_TASKS[name]
    if split not in task.splits:
        raise ValueError(f"{name} has no split {split!r}; available: {list(task.splits)}")
    return task
