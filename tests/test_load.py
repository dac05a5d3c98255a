"""``embedft.model.load``: one entry, ``load_embedder(source)``, for a base model config, a
training checkpoint and an export; exports embed as their checkpoint (tests/test_export.py) and
files never switch on remote code (tests/test_checkpoint.py)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from embedft.checkpoint import CheckpointError
from embedft.config import ModelConfig
from embedft.export import export_checkpoint
from embedft.model import load
from embedft.model.embedder import build_embedder
from embedft.model.load import (
    EXPORT_FORMAT,
    METADATA_FILE,
    load_embedder,
    load_embedder_from_checkpoint,
    load_sentence_transformer,
    read_metadata,
    resolve_device,
    saved_model_name,
)
from tests.test_export import make_run

PROBE = ["a man is playing guitar", "a dog", ""]
TINY = ModelConfig(name="tiny_llama", source="tiny", path="llama", max_length=32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def adapter_export(ckpt, tmp_path_factory):
    return export_checkpoint(ckpt, tmp_path_factory.mktemp("exports") / "adapter", merge=False)


def test_a_model_config_is_the_base_model_without_lora():
    embedder = load_embedder(TINY)
    assert not hasattr(embedder.backbone, "peft_config")
    torch.testing.assert_close(embedder.encode(PROBE), build_embedder(TINY).encode(PROBE))


def test_a_file_is_a_training_checkpoint_and_auto_is_a_device(ckpt, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    embedder = load_embedder(str(ckpt), "auto")
    assert embedder.device.type == "cpu" and hasattr(embedder.backbone, "peft_config")
    torch.testing.assert_close(
        embedder.encode(PROBE), load_embedder_from_checkpoint(ckpt).encode(PROBE)
    )


def test_a_directory_with_embedft_json_is_an_export(ckpt, adapter_export):
    # Given an adapter-only export; When it is loaded / Then it embeds as its checkpoint
    from_export = load_embedder(adapter_export).encode(PROBE)
    torch.testing.assert_close(
        from_export, load_embedder_from_checkpoint(ckpt).encode(PROBE), atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "absent", "not found"),
        (lambda d: d, "a directory without embedft.json"),
    ],
    ids=["missing", "not-an-export"],
)
def test_anything_else_is_one_line_naming_the_path_and_what_was_expected(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(CheckpointError) as caught:
        load_embedder(path)
    assert str(caught.value) == (
        f"ckpt={path}: {problem}; expected a .ckpt file written by python -m embedft.run or a "
        "directory written by python -m embedft.export"
    )


def test_saved_model_name_of_a_checkpoint_and_an_export(ckpt, adapter_export):
    assert saved_model_name(ckpt) == "tiny_llama"
    assert saved_model_name(adapter_export) == "tiny_llama"


def test_an_export_of_another_format_or_broken_metadata_is_refused(adapter_export, tmp_path):
    # Given copies of an export's embedft.json with a future format and with broken JSON
    meta = json.loads((adapter_export / METADATA_FILE).read_text())
    future, broken = tmp_path / "future", tmp_path / "broken"
    for d in (future, broken):
        d.mkdir()
    (future / METADATA_FILE).write_text(json.dumps({**meta, "format": EXPORT_FORMAT + 1}))
    (broken / METADATA_FILE).write_text('{"format": 1,')
    # When / Then each names the file and what is wrong
    with pytest.raises(ValueError, match=f"format {EXPORT_FORMAT + 1}, expected {EXPORT_FORMAT}"):
        read_metadata(future)
    with pytest.raises(ValueError, match="embedft.json: not valid JSON"):
        load_embedder(broken)


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (resolve_device("auto"), resolve_device("cpu"), resolve_device("cuda:1")) == (
        "cuda",
        "cpu",
        "cuda:1",
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


def test_an_export_loads_its_adapter_on_request(ckpt, tmp_path, monkeypatch):
    # Given a merged export; When asked for the adapter / Then base model + adapter/ is built
    merged = export_checkpoint(ckpt, tmp_path / "merged")
    built: list[str] = []
    real = load.build_embedder

    def recording(model_cfg, *args, **kwargs):
        built.append(model_cfg.source)
        return real(model_cfg, *args, **kwargs)

    monkeypatch.setattr(load, "build_embedder", recording)
    load_embedder(merged)
    load_embedder(merged, use_adapter=True)
    assert built == ["local", "tiny"]  # the merged dir, then the base model


def test_a_sentence_transformers_dir_given_as_ckpt_is_pointed_at_st_model(tmp_path):
    (tmp_path / "modules.json").write_text("[]")
    with pytest.raises(CheckpointError, match=f"score it with st_model={tmp_path}\\)$"):
        load_embedder(tmp_path)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("someone/no-such-model", "the hub is off \\(HF_HUB_OFFLINE=1\\) and it is not in the"),
        ("./models/absent", "no such directory \\(and not a hub id"),
        ("{file}", "a file; expected a model directory"),
    ],
    ids=["offline-hub-id", "missing-dir", "a-file"],
)
def test_a_sentence_transformers_model_that_cannot_load_is_one_line(
    tmp_path, monkeypatch, given, message
):
    # Given the hub off (as in every test) and a name that is not a loadable local model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"")
    given = given.format(file=a_file)
    # When loaded / Then the error names st_model= and why
    with pytest.raises(CheckpointError, match=f"^st_model={re.escape(given)}: .*{message}"):
        load_sentence_transformer(given)


def test_a_sentence_transformers_directory_loads_as_sentence_transformers_does(tmp_path):
    from sentence_transformers import SentenceTransformer

    # Given an ST directory (an export is one) / When loaded / Then it is that model, on the CPU
    directory = export_checkpoint(make_run(tmp_path / "run"), tmp_path / "export")
    model = load_sentence_transformer(str(directory), "cpu")
    assert isinstance(model, SentenceTransformer) and model.device.type == "cpu"
    assert model.max_seq_length == 32  # the export's, read from its own files
