"""``embedft.card_meta``: base model, licence, datasets and model-index of an export's card."""

from __future__ import annotations

import logging
from dataclasses import asdict

import pytest
from hydra import compose, initialize_config_dir

from embedft.card_meta import (
    FRAMEWORKS,
    Licence,
    base_licence,
    base_model_id,
    framework_versions,
    model_index,
    training_datasets,
)
from embedft.config import to_object
from embedft.model.sources import model_config_by_name
from embedft.paths import conf_dir

# What each shipped model yaml must say: (base model on the hub, its hub licence)
SHIPPED = {
    "minicpm": ("openbmb/MiniCPM-2B-dpo-bf16", Licence("other", "minicpm-model-license")),
    "gemma": ("google/gemma-2b-it", Licence("gemma")),
    "phi2": ("microsoft/phi-2", Licence("mit")),
    "smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", Licence("apache-2.0")),
    "gemma3_270m": ("google/gemma-3-270m", Licence("gemma")),
    "minilm": ("sentence-transformers/all-MiniLM-L6-v2", Licence("apache-2.0")),
}


def _run_config(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose("run", list(overrides))
    dcfg.paths.output_dir = "unused"  # a Hydra run's directory: none here
    return to_object(dcfg)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_model_names_its_hub_original_and_licence(name):
    model = asdict(model_config_by_name(name))
    assert (base_model_id(model), base_licence(model)) == SHIPPED[name]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma", "tiny_minicpm"])
def test_tiny_test_models_have_no_hub_id_nor_licence(name):
    model = asdict(model_config_by_name(name))
    assert base_model_id(model) is None and base_licence(model) is None


def test_another_hub_model_does_not_inherit_minicpms_licence(caplog):
    # Given the default model yaml (MiniCPM) with only source and path overridden
    cfg = _run_config("model.source=hub", "model.path=someone/other-model")
    model = asdict(cfg.model)
    # When the card's base model and licence are worked out
    with caplog.at_level(logging.WARNING, logger="embedft.card_meta"):
        licence = base_licence(model)
    # Then the base model is the given path and MiniCPM's licence is not passed on, saying so
    assert base_model_id(model) == "someone/other-model"
    assert licence is None
    assert "not for the exported base model 'someone/other-model'" in caplog.text
    # And naming the model it belongs to keeps a licence given with it
    named = {**model, "hub_id": "someone/other-model", "license": "mit", "license_name": None}
    assert base_licence(named) == Licence("mit")
    # And the export's license= override always wins
    assert base_licence(model, override="apache-2.0") == Licence("apache-2.0")


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        ("Gemma Terms of Use", Licence("gemma")),
        ("MiniCPM Model License", Licence("other", "minicpm-model-license")),
        ("Apache-2.0", Licence("apache-2.0")),
        ("none (random weights)", None),
        ("My Own Terms 2.0", Licence("other", "my-own-terms-2.0")),
    ],
)
def test_free_text_licences_of_older_checkpoints_map_to_hub_ids(recorded, expected):
    model = {"source": "gguf_package", "path": "pkg", "license": recorded}  # no hub_id: old
    assert base_licence(model) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("simcse_nli", ["princeton-nlp/datasets-for-simcse"]),
        ("allnli", ["sentence-transformers/all-nli"]),
        ("local", []),
    ],
)
def test_training_datasets_are_hub_ids_of_hub_data(data, expected):
    assert training_datasets(asdict(_run_config(f"data={data}").data)) == expected


def test_model_index_has_one_mteb_entry_per_scored_task():
    # Given a run's scores for two of the nine tasks, an unknown task and the average
    sts = {"SICK-R": 70.123456, "STS17": 80.5, "MyTask": 1.0, "average": 75.3}
    # When they become model-index entries
    results = model_index(sts)
    # Then there is one per known task, in the task table's order, in MTEB's shape
    assert [(r.dataset_type, r.dataset_config, r.metric_value) for r in results] == [
        ("mteb/sts17-crosslingual-sts", "en-en", 80.5),
        ("mteb/sickr-sts", "default", 70.1235),
    ]
    first = results[0]
    assert (first.task_type, first.metric_type, first.dataset_split) == (
        "STS",
        "cos_sim_spearman",
        "test",
    )
    assert first.dataset_name == "MTEB STS17 (en-en)"
    assert first.dataset_revision == "faeb762787bd10488a50c8b5be4a3b82e411949c"
    # And scores of the dev split are named by the hub's split name
    assert model_index({"STSBenchmark": 80.0}, "dev")[0].dataset_split == "validation"


def test_framework_versions_name_python_and_every_framework():
    versions = framework_versions()
    assert set(versions) == {"Python", *FRAMEWORKS}
    import torch

    assert versions["PyTorch"] == torch.__version__
