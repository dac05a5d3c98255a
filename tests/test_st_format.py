"""``embedft.st_format``: the tokenizer and pipeline files that make sentence-transformers embed
an export as embedft does (end to end with SentenceTransformer: tests/test_export.py)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from embedft.config import ModelConfig
from embedft.model.embedder import build_embedder
from embedft.model.sources import load_tokenizer
from embedft.model.tokenize import tokenize_with_eos
from embedft.st_format import (
    check_saved_tokenizer,
    save_tokenizer,
    tokenizer_appending_eos,
    write_sentence_transformers_config,
)
from tests.conftest import make_tokenizer

EOS = 2  # <eos> of the tiny byte-level tokenizer and of conftest's word-level one


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_eos_post_processor_matches_tokenize_with_eos(arch, tmp_path):
    # Given the tiny byte-level tokenizer (gemma's also prepends <bos>)
    cfg = ModelConfig(name=f"tiny_{arch}", source="tiny", path=arch, max_length=8)
    tokenizer = load_tokenizer(cfg)
    # When it is saved with the EOS post-processor and reloaded
    tokenizer_appending_eos(tokenizer).save_pretrained(tmp_path)
    embedder = build_embedder(cfg)
    check_saved_tokenizer(tmp_path, embedder)  # raises on any difference
    ids = AutoTokenizer.from_pretrained(tmp_path)(["abcdefghijk"], truncation=True, max_length=8)
    # Then a long text keeps EOS after truncation: (bos +) 7 or 6 bytes + eos
    expected = tokenize_with_eos(tokenizer, ["abcdefghijk"], 8)["input_ids"].tolist()
    assert ids["input_ids"] == expected and expected[0][-1] == EOS and len(expected[0]) == 8


def test_eos_post_processor_on_a_wordlevel_tokenizer_and_no_double_eos():
    once = tokenizer_appending_eos(make_tokenizer())
    assert once("a man")["input_ids"] == [3, 4, 2]
    assert tokenizer_appending_eos(once) is once  # already appends EOS: left as it is


def test_save_tokenizer_drops_how_this_machine_loaded_it(tmp_path):
    # Given an embedder whose tokenizer was loaded with local_files_only (a cached model)
    embedder = build_embedder(ModelConfig(name="t", source="tiny", path="llama", max_length=8))
    embedder.tokenizer.init_kwargs["local_files_only"] = True
    # When it is saved for an export
    save_tokenizer(embedder, tmp_path)
    # Then the saved config does not carry the flag, and the tokenizer appends EOS on reload
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "local_files_only" not in saved and "is_local" not in saved
    assert AutoTokenizer.from_pretrained(tmp_path)("ab")["input_ids"][-1] == EOS


def test_a_tokenizer_that_tokenizes_differently_is_refused(tmp_path):
    # Given a saved tokenizer without the EOS post-processor, for an embedder that appends EOS
    embedder = build_embedder(ModelConfig(name="t", source="tiny", path="llama", max_length=8))
    embedder.tokenizer.save_pretrained(tmp_path)
    # When / Then the check names the directory and the difference
    with pytest.raises(RuntimeError, match="the export would embed differently"):
        check_saved_tokenizer(tmp_path, embedder)


@pytest.mark.parametrize(("pooling", "mode"), [("last", "lasttoken"), ("mean", "mean")])
def test_pipeline_files_name_the_pooling_and_plain_text(pooling, mode, tmp_path):
    write_sentence_transformers_config(tmp_path, 64, pooling, 150)
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    pooling_cfg = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert (pooling_cfg["embedding_dimension"], pooling_cfg["pooling_mode"]) == (64, mode)
    bert = json.loads((tmp_path / "sentence_bert_config.json").read_text())
    assert bert["max_seq_length"] == 150 and list(bert["modality_config"]) == ["text"]
