"""``embedft.export``: the adapter and merged exports embed exactly as the checkpoint does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import embedft.hub as hub
from embedft.config import ModelConfig, to_object
from embedft.eval.sts import StsPairs, cosine_spearman, score_pairs
from embedft.export import export_checkpoint, main, portable_model_config
from embedft.hub import HubError
from embedft.losses.infonce import InfoNCELoss
from embedft.model.embedder import build_embedder
from embedft.model.load import load_embedder, load_embedder_from_checkpoint, load_exported_embedder
from embedft.model.sources import cache_root
from embedft.module import EmbeddingModule
from embedft.paths import conf_dir
from tests.conftest import run_cli
from tests.test_hub import RecordingApi

# Byte-level tiny tokenizer: one token per byte, so the last text (> 32 bytes) is truncated.
TEXTS = [
    "a man is playing guitar",
    "a dog",
    "",
    "two people sitting on a bench in the park",
    "café ☕ naïve",
    "a very long sentence that runs on and on well past the thirty-two token limit",
]
STS_SET = StsPairs(
    task="tiny",
    split="test",
    sentences1=["a man plays", "a dog runs", "a cat sleeps", "two people", "red car", "a book"],
    sentences2=["a man sings", "a dog sleeps", "the cat naps", "nobody", "blue car", "a book"],
    scores=[3.0, 1.5, 4.5, 0.5, 2.0, 5.0],
)
EOS = 2  # <eos> of the tiny byte-level tokenizer


def make_run(
    run_dir: Path,
    results: dict | None = None,
    global_step: int = 3,
    model: str = "tiny_llama",
    overrides: tuple[str, ...] = (),
) -> Path:
    """A tiny run dir with ``checkpoints/last.ckpt`` (non-zero LoRA) and ``results.json``.

    The checkpoint content comes from ``EmbeddingModule.on_save_checkpoint``, the code a training
    run saves with. ``overrides``: more Hydra overrides of the run config.
    """
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose("run", [f"model={model}", "data=local", "logger=csv", *overrides])
    dcfg.paths.output_dir = str(run_dir)
    cfg = to_object(dcfg)
    torch.manual_seed(0)
    embedder = build_embedder(cfg.model, cfg.lora)
    with torch.no_grad():  # LoRA B starts at zero (a no-op adapter): give it weight
        for name, p in embedder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    module = EmbeddingModule(
        embedder, InfoNCELoss(), cfg.optim, 1, config=OmegaConf.to_container(dcfg, resolve=True)
    )
    ckpt: dict = {"global_step": global_step}
    module.on_save_checkpoint(ckpt)
    path = run_dir / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))
    return path


@pytest.fixture(scope="module")
def run_ckpt(tmp_path_factory):
    results = {"status": "completed", "sts": {"STS12": 61.234, "SICK-R": 70.0, "average": 65.617}}
    return make_run(tmp_path_factory.mktemp("run"), results)


@pytest.fixture(scope="module")
def reference(run_ckpt):
    """Embeddings of TEXTS by the checkpoint's own embedder (the ground truth)."""
    return load_embedder_from_checkpoint(run_ckpt).encode(TEXTS)


@pytest.fixture(scope="module")
def merged_export(run_ckpt, tmp_path_factory):
    return export_checkpoint(run_ckpt, tmp_path_factory.mktemp("exports") / "merged")


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def test_checkpoint_adapter_is_not_a_no_op(run_ckpt, reference):
    base = build_embedder(
        ModelConfig(name="tiny_llama", source="tiny", path="llama", max_length=32)
    )
    assert (base.encode(TEXTS) - reference).abs().max() > 1e-2


def test_merged_export_layout(merged_export):
    names = {p.relative_to(merged_export).as_posix() for p in merged_export.rglob("*")}
    expected = {
        "README.md", "embedft.json", "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors", "config.json", "model.safetensors", "tokenizer.json",
        "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
        "1_Pooling/config.json", "2_Normalize/config.json",
    }  # fmt: skip
    assert expected <= names
    pooling = json.loads((merged_export / "1_Pooling" / "config.json").read_text())
    assert pooling == {
        "embedding_dimension": 64,
        "pooling_mode": "lasttoken",
        "include_prompt": True,
    }
    meta = json.loads((merged_export / "embedft.json").read_text())
    assert (meta["pooling"], meta["append_eos"], meta["max_length"]) == ("last", True, 32)
    assert meta["merged"] and meta["dtype"] == "float32" and meta["global_step"] == 3
    # Shareable: readable by all, no trace of how this machine loaded the tokenizer
    assert (merged_export / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert "local_files_only" not in json.loads(
        (merged_export / "tokenizer_config.json").read_text()
    )


def test_sentence_transformers_tokenizes_and_embeds_like_embedft(
    merged_export, run_ckpt, reference
):
    from sentence_transformers import SentenceTransformer

    # Given an export whose tokenizer has a chat template, as instruct models' tokenizers do
    (merged_export / "chat_template.jinja").write_text(
        "{% for m in messages %}<bos>{{ m['content'] }}{% endfor %}"
    )
    try:
        # When sentence-transformers loads it
        st = SentenceTransformer(str(merged_export), device="cpu")
        features = st.preprocess(TEXTS)
        embeddings = st.encode(TEXTS, convert_to_tensor=True, batch_size=4)
    finally:
        (merged_export / "chat_template.jinja").unlink()
    # Then it sees embedft's token ids (raw text, EOS appended, EOS kept after truncation)
    ours = load_embedder_from_checkpoint(run_ckpt).tokenize(TEXTS)
    assert st.max_seq_length == 32
    torch.testing.assert_close(features["input_ids"], ours["input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(features["attention_mask"], ours["attention_mask"], rtol=0, atol=0)
    assert features["input_ids"][-1].tolist()[-1] == EOS and len(features["input_ids"][-1]) == 32
    # And its embeddings are the checkpoint's
    assert _cosines(embeddings.cpu(), reference).min() >= 0.9999


def test_embedft_loads_the_merged_export_with_exactly_one_eos(merged_export, reference):
    embedder = load_embedder(merged_export)
    tokens = embedder.tokenize(["a dog", ""])
    # "a dog" is 5 bytes + EOS; "" is EOS alone: the tokenizer's own EOS is not doubled.
    # Byte ids are 4 specials + rank in the sorted byte-level alphabet: a=68 d=71 g=74 o=82 and
    # the space (shown as "Ġ", U+0120) 224.
    assert tokens["input_ids"].tolist() == [[68, 224, 71, 82, 74, EOS], [EOS, 0, 0, 0, 0, 0]]
    torch.testing.assert_close(embedder.encode(TEXTS), reference, atol=1e-5, rtol=1e-4)


def test_adapter_only_export_loads_on_the_base_model(run_ckpt, reference, tmp_path):
    # Given an export without merging
    out = export_checkpoint(run_ckpt, tmp_path / "adapter_only", merge=False)
    # Then it holds the peft adapter and the EOS-appending tokenizer, and no model; the adapter
    # names the base model by its name (a tiny model has no hub id), not by this machine's dir
    assert not (out / "config.json").exists() and not (out / "modules.json").exists()
    assert (out / "adapter" / "tokenizer.json").is_file()
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "tiny_llama"
    assert sorted(adapter_cfg["target_modules"]) == ["q_proj", "v_proj"]
    # And base model + adapter (PeftModel.from_pretrained) embed as the checkpoint does
    torch.testing.assert_close(load_embedder(out).encode(TEXTS), reference, atol=1e-6, rtol=1e-5)


def test_adapter_of_a_merged_export_matches_its_merged_model(merged_export, reference):
    unmerged = load_exported_embedder(merged_export, use_adapter=True).encode(TEXTS)
    torch.testing.assert_close(unmerged, reference, atol=1e-6, rtol=1e-5)


def test_export_scores_the_same_sts_numbers(merged_export, run_ckpt):
    from sentence_transformers import SentenceTransformer

    pairs = {"tiny": STS_SET}
    from_ckpt = score_pairs(load_embedder_from_checkpoint(run_ckpt), pairs)
    from_export = score_pairs(load_embedder(merged_export), pairs)
    st = SentenceTransformer(str(merged_export), device="cpu")
    e1, e2 = (st.encode(s, convert_to_numpy=True) for s in (STS_SET.sentences1, STS_SET.sentences2))
    from_st = cosine_spearman(e1, e2, STS_SET.scores)
    assert from_export["tiny"] == pytest.approx(from_ckpt["tiny"], abs=1e-4)
    assert from_st == pytest.approx(from_ckpt["tiny"], abs=1e-4)


def test_refuses_a_non_empty_destination_and_writes_nothing(run_ckpt, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        export_checkpoint(run_ckpt, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    # When told to overwrite, the old content is replaced
    export_checkpoint(run_ckpt, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "modules.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_refuses_to_overwrite_the_directory_holding_the_checkpoint(run_ckpt):
    with pytest.raises(ValueError, match="contains the checkpoint"):
        export_checkpoint(run_ckpt, run_ckpt.parent.parent, overwrite=True)


def test_a_failed_export_leaves_no_partial_directory(run_ckpt, tmp_path, monkeypatch):
    import embedft.export as export_module

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "model_card", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_checkpoint(run_ckpt, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_the_export_carries_a_model_card_with_the_runs_results(merged_export):
    card = (merged_export / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "sentence-transformers"
    assert "base_model" not in front  # a tiny local model has no hub id
    assert "| STS12 | 61.23 |" in card and "| **Average** | **65.62** |" in card
    assert [r["dataset"]["type"] for r in front["model-index"][0]["results"]] == [
        "mteb/sts12-sts",
        "mteb/sickr-sts",
    ]
    assert 'SentenceTransformer("merged")' in card  # no push_to_hub: the directory's name
    assert "r=8, alpha=32, dropout=0.1, init=gaussian, targets=['q_proj', 'v_proj']" in card
    assert "| steps | 3 |" in card


def test_cli_exports_and_rejects_bad_arguments(run_ckpt, tmp_path, capsys):
    assert run_cli(main, f"ckpt={run_ckpt}", f"out={tmp_path / 'cli'}", "merge=false") == 0
    assert (tmp_path / "cli" / "adapter" / "adapter_config.json").is_file()
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    assert run_cli(main, f"ckpt={run_ckpt}", f"out={tmp_path / 'x'}", "dtype=int8") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "embedft.export: error: dtype must be one of ['auto', 'float32', 'bfloat16', "
        "'float16'], got 'int8'"
    ]
    assert run_cli(main, f"ckpt={run_ckpt}") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "embedft.export: error: missing required key(s): out=..."
    ]
    # A value of the wrong type is refused by Hydra while composing, naming key and value
    assert run_cli(main, f"ckpt={run_ckpt}", "out=x", "merge=maybe") == 1
    err = capsys.readouterr().err
    assert "merge=maybe" in err and "is not a valid bool" in err
    assert not (tmp_path / "x").exists()


def test_export_dtype_bfloat16_halves_the_weights(run_ckpt, tmp_path):
    out = export_checkpoint(run_ckpt, tmp_path / "bf16", dtype="bfloat16")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    assert json.loads((out / "embedft.json").read_text())["dtype"] == "bfloat16"
    emb = load_embedder(out).encode(TEXTS[:2])
    assert np.isfinite(emb.numpy()).all()


def _local_paths(tmp_root: Path) -> list[str]:
    """Every path of this machine an exported file could leak."""
    return [
        str(tmp_root),
        str(tmp_root.resolve()),
        str(cache_root()),
        str(cache_root().resolve()),
        os.path.expanduser("~"),
        "/root",
        str(Path.cwd()),
    ]


@pytest.mark.parametrize("merge", [True, False])
def test_no_exported_file_names_a_local_path(run_ckpt, tmp_path, merge):
    # Given an export of a checkpoint under a temporary directory, with a base model cached here
    out = export_checkpoint(run_ckpt, tmp_path / "shareable", merge=merge)
    # When every file is searched, byte by byte, for this machine's paths
    leaks = {
        (path.relative_to(out).as_posix(), needle)
        for path in out.rglob("*")
        if path.is_file()
        for needle in _local_paths(run_ckpt.parents[2]) + [str(tmp_path)]
        if needle.encode() in path.read_bytes()
    }
    # Then none is found
    assert leaks == set()
    meta = json.loads((out / "embedft.json").read_text())
    assert meta["checkpoint"] == "last.ckpt" and meta["base_model"] is None


def test_a_local_model_directory_is_recorded_by_its_name(run_ckpt, tmp_path):
    model_dir = tmp_path / "models" / "my-llama"
    model = ModelConfig(
        name="mine", source="local", path=str(model_dir), tokenizer_path=str(tmp_path)
    )
    portable = portable_model_config(model)
    assert (portable["path"], portable["tokenizer_path"]) == ("my-llama", tmp_path.name)


@pytest.fixture
def recorded_hub(monkeypatch):
    """The hub reachable with a token; HfApi replaced by tests/test_hub.py's recorder."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "get_token", lambda: "hf_test_token")
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    RecordingApi.calls, RecordingApi.fail_with = [], None
    return RecordingApi


def test_push_to_hub_uploads_the_export_with_a_card_naming_the_repo(
    run_ckpt, tmp_path, recorded_hub
):
    # When an export is pushed
    out = export_checkpoint(run_ckpt, tmp_path / "pushed", push_to_hub="me/tiny-embed")
    # Then the repo is created and the export folder uploaded, every file of it
    (_, created), (_, uploaded) = recorded_hub.calls
    assert created["repo_id"] == uploaded["repo_id"] == "me/tiny-embed"
    assert Path(uploaded["folder_path"]) == out
    assert uploaded["files"] == sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
    )
    assert {"README.md", "model.safetensors", "adapter/README.md"} <= set(uploaded["files"])
    # And the cards' usage code loads the repo
    assert 'SentenceTransformer("me/tiny-embed")' in (out / "README.md").read_text()
    assert "# LoRA adapter of `me/tiny-embed`" in (out / "adapter" / "README.md").read_text()


def test_a_failed_push_keeps_the_local_export(run_ckpt, tmp_path, recorded_hub):
    recorded_hub.fail_with = ConnectionError("Failed to resolve 'huggingface.co'")
    with pytest.raises(HubError, match="the local export .* is kept"):
        export_checkpoint(run_ckpt, tmp_path / "kept", push_to_hub="me/tiny-embed")
    assert (tmp_path / "kept" / "model.safetensors").is_file()
    assert load_embedder(tmp_path / "kept").encode(TEXTS[:1]).shape == (1, 64)


def test_cli_push_to_hub_offline_is_one_line_and_writes_nothing(run_ckpt, tmp_path, capsys):
    # Given the tests' HF_HUB_OFFLINE=1
    out = tmp_path / "never"
    assert run_cli(main, f"ckpt={run_ckpt}", f"out={out}", "push_to_hub=me/tiny-embed") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "embedft.export: error: push_to_hub=me/tiny-embed: the hub is in offline mode "
        "(HF_HUB_OFFLINE=1); unset it to push, or leave push_to_hub out to export locally only"
    ]
    assert not out.exists()
    # And a malformed repo id is refused as a config error
    assert run_cli(main, f"ckpt={run_ckpt}", f"out={out}", "push_to_hub=no-owner") == 2
    assert "push_to_hub='no-owner' must be <user or org>/<name>" in capsys.readouterr().err
