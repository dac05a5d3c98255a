"""``embedft.evaluate``: a checkpoint, an export or any sentence-transformers model, scored into
results.json and MTEB-format files (``eval.backend=mteb`` against embedft's own:
``tests/test_mteb_backend.py``; the table and failure record: ``tests/test_sts.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from embedft.config import ConfigError
from embedft.eval.mteb_results import NO_REVISION, weights_revision
from embedft.evaluate import evaluate
from embedft.export import export_checkpoint
from embedft.paths import conf_dir
from tests.test_export import make_run

WORDS = "a man woman dog cat plays sleeps runs on the red blue car road book reads".split()


def _write_data(root: Path) -> Path:
    """16 STSBenchmark and 12 STS17 test pairs of words the tiny byte-level model reads."""
    stsb = root / "sts/STSBenchmark/stsbenchmark/sts-test.csv"
    stsb.parent.mkdir(parents=True)
    rows = [
        f"g\tf\t2012\t{i}\t{i % 6}\t{' '.join(WORDS[i % 5 : i % 5 + 3])}\t"
        f"{' '.join(WORDS[(i * 3) % 7 : (i * 3) % 7 + 2 + i % 3])}\n"
        for i in range(16)
    ]
    stsb.write_text("".join(rows))
    inputs = root / "sts/STS17/STS2017.eval.v1.1/STS.input.track5.en-en.txt"
    golds = root / "sts/STS17/STS2017.gs/STS.gs.track5.en-en.txt"
    inputs.parent.mkdir(parents=True)
    golds.parent.mkdir(parents=True)
    inputs.write_text(
        "".join(f"the {WORDS[i]} {WORDS[-i]}\t{WORDS[i]} {WORDS[i + 2]}\n" for i in range(1, 13))
    )
    golds.write_text("".join(f"{(i * 7) % 5 + 0.5}\n" for i in range(1, 13)))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def run_ckpt(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def export_dir(run_ckpt, tmp_path_factory):
    return export_checkpoint(run_ckpt, tmp_path_factory.mktemp("exports") / "merged")


def _evaluate(out: Path, data: Path, *overrides: str):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        dcfg = compose(
            "evaluate",
            [
                "eval.tasks=[STSBenchmark,STS17]",
                f"paths.data_dir={data}",
                f"paths.output_dir={out}",
                "device=cpu",
                *overrides,
            ],
        )
    return evaluate(dcfg)


def test_an_export_directory_is_scored_as_its_checkpoint(tmp_path, data_dir, run_ckpt, export_dir):
    # Given a training checkpoint and its merged export
    # When each is evaluated with ckpt= (export dirs used to fail here: "checkpoint not found")
    from_ckpt = _evaluate(tmp_path / "ckpt", data_dir, f"ckpt={run_ckpt}")
    from_export = _evaluate(tmp_path / "export", data_dir, f"ckpt={export_dir}")
    # Then both are the fine-tuned tiny_llama, with the same scores
    assert from_export.status == "completed" and from_export.model == "tiny_llama"
    assert from_export.checkpoint == str(export_dir)
    assert from_export.sts == pytest.approx(from_ckpt.sts, abs=1e-4)


def test_a_sentence_transformers_model_is_scored_with_its_own_encode(
    tmp_path, data_dir, export_dir, monkeypatch
):
    # Given the export, which is also a sentence-transformers model, and a spy on ST's encode
    from sentence_transformers import SentenceTransformer

    calls = []
    real_encode = SentenceTransformer.encode

    def spy(self, inputs, **kwargs):
        calls.append(kwargs)
        return real_encode(self, inputs, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", spy)
    # When it is evaluated as st_model= and as ckpt= (embedft's encoder)
    as_st = _evaluate(tmp_path / "st", data_dir, f"st_model={export_dir}", "eval.batch_size=5")
    assert len(calls) == 1  # every task's distinct sentences in one call ...
    assert calls[0]["batch_size"] == 5 and calls[0]["normalize_embeddings"] is True
    as_embedft = _evaluate(tmp_path / "ckpt", data_dir, f"ckpt={export_dir}")
    assert len(calls) == 1  # ... and embedft's own models never go through it
    # Then the scores agree, and the model is named by its directory (no name on its card)
    assert as_st.sts == pytest.approx(as_embedft.sts, abs=1e-4)
    assert as_st.model == "local/merged" and as_st.checkpoint is None
    meta = json.loads((Path(as_st.mteb_results) / "model_meta.json").read_text())
    assert meta["framework"] == ["Sentence Transformers", "PyTorch"] and meta["embed_dim"] == 64


def test_mteb_files_go_beside_results_json_as_fractions(tmp_path, data_dir, run_ckpt):
    # Given a checkpoint evaluated on two tasks
    results = _evaluate(tmp_path, data_dir, f"ckpt={run_ckpt}")
    # Then results.json points at <out>/mteb/results/embedft__tiny_llama/<weights' sha256>
    saved = json.loads((tmp_path / "results.json").read_text())
    folder = tmp_path / "mteb/results/embedft__tiny_llama" / weights_revision(run_ckpt)
    assert saved["mteb_results"] == str(folder) == results.mteb_results
    assert sorted(p.name for p in folder.iterdir()) == [
        "STS17.json",
        "STSBenchmark.json",
        "model_meta.json",
    ]
    # and each task file holds the same score as a fraction (results.json: x 100)
    for task, subset in (("STSBenchmark", "default"), ("STS17", "en-en")):
        (entry,) = json.loads((folder / f"{task}.json").read_text())["scores"]["test"]
        assert entry["hf_subset"] == subset
        assert entry["main_score"] == entry["cosine_spearman"]
        assert entry["main_score"] == pytest.approx(saved["sts"][task] / 100, abs=1e-6)
    meta = json.loads((folder / "model_meta.json").read_text())
    assert (meta["name"], meta["embed_dim"], meta["max_tokens"]) == ("embedft/tiny_llama", 64, 32)


def test_the_base_model_lands_in_its_own_folder(tmp_path, data_dir):
    results = _evaluate(tmp_path, data_dir, "model=tiny_llama")
    assert results.mteb_results == str(tmp_path / "mteb/results/embedft__tiny_llama" / NO_REVISION)


def test_backend_mteb_without_mteb_fails_first_naming_the_extra(tmp_path, monkeypatch):
    # Given no mteb package (whether or not this machine has one) and no data at all
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mteb" else real_find_spec(name, *a),
    )
    # When evaluated with eval.backend=mteb / Then it fails on the package, not on the data
    with pytest.raises(ConfigError, match=r"pip install 'embedft\[mteb\]'"):
        _evaluate(tmp_path / "out", tmp_path / "no-data", "eval.backend=mteb")
    saved = json.loads((tmp_path / "out/results.json").read_text())
    assert saved["status"] == "failed" and "embedft[mteb]" in saved["error"]
