"""``embedft.eval.mteb_results``: MTEB's result files (TaskResult / ModelMeta JSON) from embedft.

That mteb itself reads them back is ``tests/test_mteb_backend.py`` (needs mteb installed)."""

from __future__ import annotations

import hashlib
import json

import pytest

from embedft.eval.mteb_results import (
    NO_REVISION,
    MtebModel,
    describe_sentence_transformer,
    model_meta,
    results_folder,
    task_result,
    weights_revision,
    write_mteb_results,
)
from embedft.eval.sts import STS_METRICS
from embedft.eval.tasks import get_task

SCORES = {metric: 0.5 + i / 100 + 1e-9 for i, metric in enumerate(STS_METRICS)}


def test_a_task_file_holds_the_table_row_and_fractions_rounded_as_mteb_rounds():
    # Given STS17's row (MTEB subset en-en) and its scores
    row = get_task("STS17")
    # When its TaskResult JSON is made
    result = task_result(row, SCORES, "test")
    # Then it names the task and dataset revision as MTEB does, with the scores under "test"
    assert result["task_name"] == "STS17"
    assert result["dataset_revision"] == "faeb762787bd10488a50c8b5be4a3b82e411949c"
    (entry,) = result["scores"]["test"]
    assert entry == {
        **{metric: round(value, 6) for metric, value in SCORES.items()},
        "hf_subset": "en-en",
        "languages": ["eng-Latn"],
    }
    assert entry["main_score"] == 0.58  # the 9th metric: 0.5 + 8/100, rounded to 6 decimals
    # and says what embedft did not measure instead of inventing it
    assert result["mteb_version"] is None and result["evaluation_time"] is None
    assert result["kg_co2_emissions"] is None


def test_a_task_without_hub_subset_is_mteb_default_and_dev_is_validation():
    result = task_result(get_task("STSBenchmark", "dev"), SCORES, "dev")
    assert list(result["scores"]) == ["validation"]
    assert result["scores"]["validation"][0]["hf_subset"] == "default"


def test_files_go_where_a_result_cache_looks_and_model_meta_names_the_model(tmp_path):
    # Given a model without an organisation in its name, fine-tuned (a revision)
    model = MtebModel(name="my org/model", revision="sha256-0123", embed_dim=64, max_tokens=32)
    metrics = {"STSBenchmark": SCORES, "BIOSSES": SCORES}
    # When written
    folder = write_mteb_results(tmp_path, model, metrics, "test")
    # Then: <out>/mteb/results/<name, "/" as "__", " " as "_">/<revision>/<Task>.json
    assert folder == tmp_path / "mteb" / "results" / "my_org__model" / "sha256-0123"
    assert folder == results_folder(tmp_path, model)
    assert sorted(p.name for p in folder.iterdir()) == [
        "BIOSSES.json",
        "STSBenchmark.json",
        "model_meta.json",
    ]
    saved = json.loads((folder / "BIOSSES.json").read_text())
    assert saved["task_name"] == "BIOSSES" and saved["scores"]["test"][0]["hf_subset"] == "default"
    meta = json.loads((folder / "model_meta.json").read_text())
    assert meta == model_meta(model)
    assert (meta["name"], meta["revision"], meta["embed_dim"], meta["max_tokens"]) == (
        "my org/model",
        "sha256-0123",
        64,
        32,
    )
    assert meta["similarity_fn_name"] == "cosine" and meta["framework"] == ["PyTorch"]


def test_the_revision_is_the_sha256_of_the_fine_tuned_weights(tmp_path):
    # Given a checkpoint file and an export's adapter weights with known bytes
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    export = tmp_path / "export"
    (export / "adapter").mkdir(parents=True)
    (export / "adapter" / "adapter_model.safetensors").write_bytes(b"adapter")
    # When / Then each is named by its content
    assert weights_revision(ckpt) == "sha256-" + hashlib.sha256(b"weights").hexdigest()[:16]
    assert weights_revision(export) == "sha256-" + hashlib.sha256(b"adapter").hexdigest()[:16]


class _Card:
    def __init__(self, model_name=None, base_model=None, base_model_revision=None):
        self.model_name, self.base_model = model_name, base_model
        self.base_model_revision = base_model_revision


class _StModel:
    """What describe_sentence_transformer reads of a SentenceTransformer."""

    max_seq_length = 128

    def __init__(self, card: _Card) -> None:
        self.model_card_data = card

    def get_embedding_dimension(self) -> int:
        return 384

    def parameters(self):
        import torch

        return iter([torch.zeros(3, 4), torch.zeros(5)])


@pytest.mark.parametrize(
    ("card", "given", "name", "revision"),
    [
        (_Card("org/named", "org/base", "abc"), "org/x", "org/named", "abc"),
        (_Card(None, "org/base"), "org/x", "org/base", NO_REVISION),
        (_Card(), "org/hub-id", "org/hub-id", NO_REVISION),
        (_Card(), "legacy-id", "local/legacy-id", NO_REVISION),
    ],
)
def test_a_sentence_transformer_is_named_as_mteb_names_it(card, given, name, revision):
    described = describe_sentence_transformer(_StModel(card), given)
    assert (described.name, described.revision) == (name, revision)
    assert (described.embed_dim, described.max_tokens, described.n_parameters) == (384, 128, 17)
    assert described.framework == ("Sentence Transformers", "PyTorch")


def test_a_local_sentence_transformer_without_a_card_name_is_local_slash_its_directory(tmp_path):
    directory = tmp_path / "my-model"
    directory.mkdir()
    assert describe_sentence_transformer(_StModel(_Card()), str(directory)).name == "local/my-model"
