"""The STS task table: one row per task, read by config and loaders; a new task is one row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedft.config import ALL_STS_TASKS, ConfigError, EvalConfig
from embedft.eval.readers import read_input_gold, read_sick
from embedft.eval.sts import load_task, load_task_from_hub, load_tasks
from embedft.eval.tasks import STS_TASKS, HubDataset, StsTask, by_name, get_task, senteval


def _row(name: str = "MyTask", **changes) -> StsTask:
    fields = {
        "name": name,
        "reader": read_sick,
        "local": (f"{name}/pairs.txt",),
        "hub": HubDataset("someone/my-task", None, "0" * 40),
        "test_pairs": 2,
    }
    return StsTask(**(fields | changes))


PAPERS_TASKS = [
    "STS12",
    "STS13",
    "STS14",
    "STS15",
    "STS16",
    "STS17",
    "STSBenchmark",
    "BIOSSES",
    "SICK-R",
]


def test_the_papers_nine_tasks_hold_24200_mteb_test_pairs():
    # Given the table / Then it holds the paper's 9 tasks in this (report) order, with MTEB's total
    # (a pin written by hand: an accidental edit of a row's count or a dropped row fails here)
    assert [task for task in STS_TASKS if task in PAPERS_TASKS] == PAPERS_TASKS
    assert sum(STS_TASKS[task].test_pairs for task in PAPERS_TASKS) == 24200
    # and config's task names are the table's
    assert ALL_STS_TASKS == tuple(STS_TASKS)


def test_config_reads_the_table_without_scoring_data_or_training_modules():
    # Given a fresh interpreter / When embedft.config (and so the table) is imported
    # (``import embedft`` itself loads torch + transformers: it registers the native MiniCPM)
    code = (
        "import sys, embedft.config, embedft.eval.tasks; "
        "print([m for m in ('datasets', 'lightning', 'embedft.eval.sts') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    # Then neither the STS loading/scoring module nor the data or training libraries loaded
    assert out.strip() == "[]"


def test_a_new_task_is_one_row(tmp_path, monkeypatch):
    # Given one new row reusing the SICK reader, and its file
    monkeypatch.setitem(STS_TASKS, "MyTask", _row())
    path = tmp_path / "sts/MyTask/pairs.txt"
    path.parent.mkdir(parents=True)
    path.write_text("sentence_A\tsentence_B\trelatedness_score\nA.\tB.\t1\nC.\tD.\t4.5\n")
    # When config validates eval.tasks and the loader reads it
    assert EvalConfig(tasks=["STSBenchmark", "MyTask"]).tasks == ["STSBenchmark", "MyTask"]
    pairs = load_tasks(["MyTask"], tmp_path)["MyTask"]
    # Then the row is all it took
    assert (pairs.sentences1, pairs.sentences2, pairs.scores) == (
        ["A.", "C."],
        ["B.", "D."],
        [1, 4.5],
    )


def test_the_hub_loader_follows_the_row(monkeypatch):
    # Given a new row on the hub and a stand-in for datasets.load_dataset
    import datasets

    hub = HubDataset("someone/my-task", "en", "1" * 40)
    monkeypatch.setitem(
        STS_TASKS, "MyTask", _row(hub=hub, splits=("test", "dev"), local=("{split}",))
    )
    calls = []

    def fake_load_dataset(path, name=None, *, split, revision):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "score": [3]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    # When its dev split is loaded / Then the row's dataset, subset and revision are asked for
    assert load_task_from_hub("MyTask", "dev").scores == [3.0]
    assert calls == [("someone/my-task", "en", "validation", "1" * 40)]


def test_local_paths_fill_in_the_split():
    row = STS_TASKS["STSBenchmark"]
    assert row.local_paths(Path("/d/sts"), "dev") == (
        Path("/d/sts/STSBenchmark/stsbenchmark/sts-dev.csv"),
    )


def test_senteval_lists_input_then_gold_per_subset_in_order(tmp_path):
    # Given SentEval's layout for two subsets
    files = senteval("STS13", "FNWN", "OnWN")
    assert files == (
        "STS13/SentEval/STS13-en-test/STS.input.FNWN.txt",
        "STS13/SentEval/STS13-en-test/STS.gs.FNWN.txt",
        "STS13/SentEval/STS13-en-test/STS.input.OnWN.txt",
        "STS13/SentEval/STS13-en-test/STS.gs.OnWN.txt",
    )
    # When those files exist and read_input_gold reads them / Then the subsets are concatenated
    for rel, text in zip(files, ["a\tb\n", "1\n", "c\td\ne\tf\n", "2\n\n"], strict=True):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    s1, _, scores = read_input_gold(*(tmp_path / rel for rel in files))
    assert (s1, scores) == (["a", "c"], [1.0, 2.0])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"splits": ("test", "dev")}, "has splits ['test', 'dev'] but no local path contains"),
        ({"splits": ("dev",)}, "splits must include 'test'"),
        ({"splits": ("test", "val")}, "be among ['test', 'dev', 'train'], got ['test', 'val']"),
        ({"local": ()}, "local must name at least one file"),
        ({"test_pairs": 0}, "test_pairs must be >= 1, got 0"),
    ],
)
def test_a_bad_row_is_refused_naming_the_row(changes, message):
    with pytest.raises(ValueError, match="STS task row 'MyTask'") as err:
        _row(**changes)
    assert message in str(err.value)


def test_two_rows_with_one_name_are_refused():
    with pytest.raises(ValueError, match="'MyTask' has two rows"):
        by_name(_row(), _row())


def test_unknown_name_and_missing_split_are_errors():
    with pytest.raises(ValueError, match="unknown STS task 'STS99'; known tasks: \\['STS12'"):
        get_task("STS99")
    with pytest.raises(ValueError, match="BIOSSES has no split 'dev'"):
        load_task("BIOSSES", "/nonexistent", split="dev")


def test_eval_split_must_be_a_split_of_every_task():
    # Given eval.split=dev, which of these three tasks only STSBenchmark has
    tasks = ["STS12", "STSBenchmark", "SICK-R"]
    # When validated / Then the error names the key and the tasks lacking the split
    with pytest.raises(ConfigError) as err:
        EvalConfig(tasks=tasks, split="dev")
    assert "eval.split='dev' is not a split of ['STS12', 'SICK-R']; only [" in str(err.value)
    assert "'STSBenchmark'" in str(err.value).split("only")[1]
    # and with STSBenchmark alone it is accepted
    assert EvalConfig(tasks=["STSBenchmark"], split="dev").split == "dev"
