"""``embedft.card``: an export's README.md from its metadata, run config and results (the card of
a real export: tests/test_export.py)."""

from __future__ import annotations

import yaml

from embedft.card import LossDescription, model_card

META = {
    "merged": True, "pooling": "last", "append_eos": True, "max_length": 150,
    "base_model": "google/gemma-2b-it", "global_step": 10,
    "model": {"name": "gemma", "source": "hub", "path": "google/gemma-2b-it",
              "license": "Gemma Terms of Use", "lora_target_modules": ["q_proj"]},
}  # fmt: skip


def _front(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_model_card_for_a_hub_model_names_base_model_and_hub_licence():
    card = model_card(META, {"lora": {"r": 8}, "loss": {"temperature": 0.05}}, None)
    front = _front(card)
    assert (front["base_model"], front["license"]) == ("google/gemma-2b-it", "gemma")
    assert front["library_name"] == "sentence-transformers"
    assert "STS results" not in card and "temperature=0.05" in card
    assert "with LoRA and InfoNCE by embedft" in card


def test_an_unknown_licence_is_named_and_an_adapter_only_export_is_peft():
    meta = {**META, "merged": False, "model": {**META["model"], "license": "Custom Licence"}}
    card = model_card(meta, {}, None)
    front = _front(card)
    assert (front["license"], front["license_name"]) == ("other", "Custom Licence")
    assert front["library_name"] == "peft" and "SentenceTransformer(" not in card


def test_the_loss_description_is_what_the_card_says():
    # Given a run trained with another loss, described by its caller
    loss = LossDescription("MultipleNegativesRanking", "scale=20.0")
    # When the card is written
    card = model_card(META, {"loss": {"temperature": 0.05}}, None, loss=loss)
    # Then it names that loss in the text and the training table, and never InfoNCE
    assert "with LoRA and MultipleNegativesRanking by embedft" in card
    assert "| loss | MultipleNegativesRanking, scale=20.0 |" in card
    assert "InfoNCE" not in card and "temperature" not in card


def test_sts_results_are_a_table_with_the_average_in_bold():
    results = {"sts": {"STS12": 61.234, "SICK-R": 70.0, "average": 65.617}}
    card = model_card(META, {"seed": 7}, results)
    table = card.split("## STS results (Spearman x 100, test splits)")[1]
    assert "| STS12 | 61.23 |\n| SICK-R | 70.00 |\n| **Average** | 65.62 |" in table
    assert "| steps | 10 |" in card and "| seed | 7 |" in card
