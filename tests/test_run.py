"""End to end: ``python -m embedft.run`` on a tiny model, checkpoints, resume, fail-fast errors."""

import csv
import json
import math
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from embedft.config import to_object
from embedft.data import datamodule
from embedft.data.datamodule import TripletCollator, TripletDataModule, check_data
from embedft.losses.infonce import InfoNCELoss
from embedft.model.embedder import build_embedder
from embedft.model.load import load_embedder_from_checkpoint
from embedft.module import EmbeddingModule
from embedft.paths import conf_dir, repo_root
from embedft.run import train

TRIPLETS = [
    ("a man is playing guitar", "a man plays music", "nobody is playing"),
    ("a dog is running in the park", "a dog is outside", "a cat is sleeping inside"),
    ("two people sitting on a bench", "people are sitting", "nobody is there"),
    ("a woman reads a book", "a woman is reading", "a woman is sleeping"),
    ("a red car drives fast", "a car is on the road", "a car is parked"),
    ("a child is eating food", "a child eats", "a child is running"),
] * 2
PROBE = ["a man is playing guitar", "a cat is sleeping", "two people"]


@pytest.fixture
def triplet_file(tmp_path):
    path = tmp_path / "triplets.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sent0", "sent1", "hard_neg"])
        w.writerows(TRIPLETS)
    return path


def _run(*overrides, timeout=240):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    return subprocess.run(
        [sys.executable, "-m", "embedft.run", *overrides],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _common(triplet_file, out):
    return [
        "model=tiny_llama",
        "data=local",
        f"data.path={triplet_file}",
        "data.batch_size=4",
        "trainer.accelerator=cpu",
        "trainer.save_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "eval.every_n_steps=0",
        "eval.after_fit=false",
        "optim.warmup_steps=1",
        f"hydra.run.dir={out}",
    ]


def test_run_trains_checkpoints_and_resumes(triplet_file, tmp_path):
    # Given a tiny model and six triplets; When two steps run
    out = tmp_path / "run"
    first = _run(*_common(triplet_file, out), "trainer.max_steps=2", "trainer.max_epochs=3")
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # Then the run completed with a finite loss and wrote its config
    assert results["status"] == "completed"
    assert results["train"]["global_step"] == 2
    assert math.isfinite(results["train"]["final_loss"])
    assert (out / "config.yaml").is_file()
    # And its checkpoint holds only the adapters, the optimizer state and the config
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["embedft_config"]["model"]["name"] == "tiny_llama"

    # When the run resumes from it with a larger budget; Then the step count continues
    resumed = _run(
        *_common(triplet_file, tmp_path / "resumed"),
        "trainer.max_steps=4",
        "trainer.max_epochs=3",  # 3 batches an epoch: steps 3-4 cross into the second epoch
        f"resume={out / 'checkpoints' / 'last.ckpt'}",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert again["train"]["global_step"] == 4


def test_checkpoint_reloads_to_the_same_embeddings(triplet_file, tmp_path):
    # Given a tiny model trained in-process for three steps at a high learning rate
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose(
            "run", [*_common(triplet_file, tmp_path)[:4], "optim.lr=1e-2", "optim.warmup_steps=0"]
        )
    dcfg.paths.output_dir = str(tmp_path)
    cfg = to_object(dcfg)
    embedder = build_embedder(cfg.model, cfg.lora)
    before = embedder.encode(PROBE)
    data = TripletDataModule(cfg.data, embedder.tokenizer, 32, True)
    data.num_examples = check_data(cfg.data).rows_used
    module = EmbeddingModule(
        embedder, InfoNCELoss(), cfg.optim, 3, config=OmegaConf.to_container(dcfg, resolve=True)
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, callbacks=[ckpt], enable_progress_bar=False
    )
    trainer.fit(module, datamodule=data)
    after = embedder.encode(PROBE)
    # When the checkpoint is loaded into a fresh model
    reloaded = load_embedder_from_checkpoint(tmp_path / "ckpt" / "last.ckpt").encode(PROBE)
    # Then it embeds exactly as the trained model does, and not as the base model did
    torch.testing.assert_close(reloaded, after, atol=1e-6, rtol=1e-5)
    assert (after - before).abs().max() > 1e-3


def test_bad_config_value_fails_fast_with_a_clear_message(triplet_file, tmp_path):
    result = _run(*_common(triplet_file, tmp_path / "bad"), "loss.temperature=-1")
    assert result.returncode != 0
    assert "loss.temperature must be > 0, got -1" in result.stderr


def test_a_moved_key_fails_saying_where_it_went(tmp_path):
    # Given the old spelling of a setting that moved to the embed group
    result = _run("trainer.pack_len=64", f"hydra.run.dir={tmp_path / 'moved'}")
    # Then the run stops at once with the new key, not Hydra's "not in struct" + "use +key"
    assert result.returncode != 0
    assert "trainer.pack_len moved to embed.pack_len: use embed.pack_len=64" in result.stderr
    assert not (tmp_path / "moved").exists()


def test_missing_data_file_fails_before_the_model_loads(tmp_path):
    missing = tmp_path / "absent.csv"
    result = _run(*_common(missing, tmp_path / "nodata"), "trainer.max_steps=1")
    assert result.returncode != 0
    assert f"triplet file {missing} does not exist" in result.stderr
    status = json.loads((tmp_path / "nodata" / "results.json").read_text())
    assert status["status"] == "failed" and "does not exist" in status["error"]


def test_run_hands_the_prompt_and_eq2_to_the_collator(triplet_file, tmp_path, monkeypatch):
    # Given a run with a prompt and without hard negatives (Eq. 2), its collator recorded
    seen = []

    class Recording(TripletCollator):
        def __call__(self, rows):
            batch = super().__call__(rows)
            seen.append((self.prompt, len(rows), batch["input_ids"].shape[0]))
            return batch

    monkeypatch.setattr(datamodule, "TripletCollator", Recording)
    overrides = [*_common(triplet_file, tmp_path)[:-1], "trainer.max_steps=1"]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose("run", [*overrides, "loss.hard_neg=false", 'model.prompt="{s} is: "'])
    dcfg.paths.output_dir = str(tmp_path / "run")
    # When it trains a step
    results = train(dcfg)
    # Then the collator applied the prompt and tokenised anchors and positives only
    assert results.status == "completed"
    assert seen and set(seen) == {("{s} is: ", 4, 8)}
