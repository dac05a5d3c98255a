"""Loading checkpoints safely (``embedft.checkpoint``): no code runs, one clear line per bad file,
and a file never switches on ``trust_remote_code``."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from embedft import encode, export
from embedft.checkpoint import CheckpointError, load_checkpoint
from embedft.config import to_object
from embedft.losses.infonce import InfoNCELoss
from embedft.model import load as load_module
from embedft.model.embedder import build_embedder
from embedft.model.load import METADATA_FILE, load_embedder, load_embedder_from_checkpoint
from embedft.module import EmbeddingModule
from embedft.paths import conf_dir, repo_root
from tests.conftest import run_cli, triplet_batch
from tests.test_export import make_run

EXPECTED = "expected a .ckpt file written by python -m embedft.run"


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``: what an attacker would ship."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint shaped like embedft's whose unpickling would create ``marker``."""
    config = {"model": {"name": "tiny_llama", "source": "tiny", "path": "llama"}, "lora": {}}
    torch.save({"embedft_config": config, "state_dict": {}, "payload": RunsCode(marker)}, path)
    return path


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def run_ckpt(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


def test_a_crafted_pickle_does_not_run_and_says_why_in_one_line(tmp_path):
    # Given a checkpoint whose unpickling runs code (an unsafe load proves it does)
    probe = tmp_path / "probe"
    torch.load(hostile_checkpoint(tmp_path / "probe.ckpt", probe), weights_only=False)
    assert probe.exists()
    marker = tmp_path / "marker"
    path = hostile_checkpoint(tmp_path / "evil.ckpt", marker)
    # When embedft loads it, directly or to build an embedder
    for load in (load_checkpoint, load_embedder_from_checkpoint):
        with pytest.raises(CheckpointError) as caught:
            load(path)
        # Then nothing ran, and one line names the file and the call it refused
        assert not marker.exists()
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"ckpt={path}: refused: loading it would run code")
        assert "posix.system" in message and message.endswith(EXPECTED)


def _refusal(command: str, ckpt: Path) -> str:
    return (
        f"{command}: error: ckpt={ckpt}: refused: loading it would run code (it calls "
        "posix.system); an embedft checkpoint holds plain data only (tensors, numbers, "
        f"strings, lists, dicts); {EXPECTED}"
    )


def test_the_encode_and_export_commands_refuse_a_crafted_pickle(tmp_path, capsys):
    # Given a hostile checkpoint and a text file to embed
    marker = tmp_path / "marker"
    ckpt = hostile_checkpoint(tmp_path / "evil.ckpt", marker)
    texts = _write(tmp_path / "texts.txt", b"a text\n")
    # When encode and export are given it / Then exit 2, one line each, and nothing ran
    assert (
        run_cli(encode.main, f"ckpt={ckpt}", f"input={texts}", f"output={tmp_path / 'e.npy'}") == 2
    )
    assert run_cli(export.main, f"ckpt={ckpt}", f"out={tmp_path / 'exported'}") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        _refusal("embedft.encode", ckpt),
        _refusal("embedft.export", ckpt),
    ]
    assert not marker.exists() and not (tmp_path / "exported").exists()


@pytest.mark.slow  # two fresh interpreters import torch + transformers: ~20 s on 2 cores
def test_the_encode_and_export_processes_refuse_a_crafted_pickle(tmp_path):
    # Given a hostile checkpoint and a text file to embed
    marker = tmp_path / "marker"
    ckpt = hostile_checkpoint(tmp_path / "evil.ckpt", marker)
    texts = _write(tmp_path / "texts.txt", b"a text\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    commands = [
        ["embedft.encode", f"ckpt={ckpt}", f"input={texts}", f"output={tmp_path / 'e.npy'}"],
        ["embedft.export", f"ckpt={ckpt}", f"out={tmp_path / 'exported'}"],
    ]
    # When both commands run (at once: each process spends its time importing torch)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", *cmd], cwd=repo_root(), env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for cmd in commands
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=180) for proc in procs]
    # Then both fail with exit 2 and a single error line, and the payload never ran
    for (name, *_), proc, (_, stderr) in zip(commands, procs, outputs, strict=True):
        assert proc.returncode == 2, stderr[-2000:]
        errors = [line for line in stderr.splitlines() if "error" in line.lower()]
        assert errors == [_refusal(name, ckpt)], stderr[-2000:]
        assert "Traceback" not in stderr
    assert not marker.exists() and not (tmp_path / "exported").exists()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d, good: d / "absent.ckpt", "file not found"),
        (lambda d, good: d, "is a directory"),
        (lambda d, good: _write(d / "t.ckpt", b"step,loss\n1,0.5\n"), "a text file, not a"),
        (lambda d, good: _write(d / "e.ckpt", b""), "the file is empty"),
        (lambda d, good: _write(d / "h.ckpt", good[: len(good) // 2]), "truncated or corrupt"),
        (lambda d, good: _write(d / "s.ckpt", good[:200]), "truncated or corrupt"),
        (lambda d, good: _write(d / "b.ckpt", bytes(range(3, 256))), "not a PyTorch file"),
    ],
    ids=["missing", "directory", "text", "empty", "half", "head-only", "binary"],
)
def test_bad_checkpoint_files_give_one_line_naming_the_file(tmp_path, run_ckpt, make, problem):
    # Given a file that is not a whole checkpoint
    path = make(tmp_path, run_ckpt.read_bytes())
    # When / Then one line: the argument, the file, what is wrong and what was expected
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, key="resume")
    message = str(caught.value)
    assert message.startswith(f"resume={path}: {problem}") and message.endswith(EXPECTED)
    assert "\n" not in message


def test_a_torch_file_that_is_not_an_embedft_checkpoint_says_so(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="a PyTorch file but not an embedft checkpoint"):
        load_checkpoint(path)


def test_bad_ckpt_arguments_fail_the_commands_with_one_line(tmp_path, capsys):
    # Given a text file passed as a checkpoint, and a directory that is not an export
    text = _write(tmp_path / "notes.ckpt", b"not a checkpoint\n")
    texts = _write(tmp_path / "texts.txt", b"a text\n")
    # When encode and export are given them / Then exit 2, one line each, nothing written
    assert (
        run_cli(encode.main, f"ckpt={text}", f"input={texts}", f"output={tmp_path / 'e.npy'}") == 2
    )
    assert run_cli(export.main, f"ckpt={text}", f"out={tmp_path / 'out'}") == 2
    assert run_cli(encode.main, f"ckpt={tmp_path}", f"input={texts}", "output=-") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"embedft.encode: error: ckpt={text}: a text file, not a checkpoint; {EXPECTED}",
        f"embedft.export: error: ckpt={text}: a text file, not a checkpoint; {EXPECTED}",
        f"embedft.encode: error: ckpt={tmp_path}: a directory without embedft.json; expected "
        "a .ckpt file written by python -m embedft.run or a directory written by python -m "
        "embedft.export",
    ]
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "out").exists()


@pytest.fixture
def trust_seen(monkeypatch):
    """The ``trust_remote_code`` of every model config ``build_embedder`` is given."""
    seen: list[bool] = []

    def recording(model_cfg, *args, **kwargs):
        seen.append(model_cfg.trust_remote_code)
        return build_embedder(model_cfg, *args, **kwargs)

    monkeypatch.setattr(load_module, "build_embedder", recording)
    return seen


def test_a_checkpoint_cannot_switch_on_trust_remote_code(run_ckpt, tmp_path, trust_seen, caplog):
    # Given a checkpoint whose stored model config asks for trust_remote_code
    saved = torch.load(run_ckpt, weights_only=True)
    saved["embedft_config"]["model"]["trust_remote_code"] = True
    path = tmp_path / "trusting.ckpt"
    torch.save(saved, path)
    # When it is loaded without the caller asking / Then remote code stays off, with a warning
    with caplog.at_level(logging.WARNING):
        load_embedder_from_checkpoint(path)
    assert trust_seen == [False]
    assert "sets model.trust_remote_code=true; ignored" in caplog.text
    # When the caller itself passes trust_remote_code=True / Then that is what is used
    load_embedder_from_checkpoint(path, trust_remote_code=True)
    assert trust_seen == [False, True]


def test_an_export_cannot_switch_on_trust_remote_code(run_ckpt, tmp_path, trust_seen):
    # Given an adapter export whose embedft.json asks for trust_remote_code
    out = export.export_checkpoint(run_ckpt, tmp_path / "exported", merge=False)
    meta_path = out / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["model"]["trust_remote_code"] = True
    meta_path.write_text(json.dumps(meta))
    trust_seen.clear()
    # When it is loaded / Then remote code stays off
    load_embedder(out)
    assert trust_seen == [False]


def test_a_lightning_training_checkpoint_loads_as_plain_data(tmp_path):
    # Given two training steps written by Lightning with the callbacks a run uses
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose("run", ["model=tiny_llama", "data=local", "logger=csv"])
    dcfg.paths.output_dir = str(tmp_path)
    cfg = to_object(dcfg)
    embedder = build_embedder(cfg.model, cfg.lora)
    batch = triplet_batch(embedder, ["a man plays", "a dog"], ["music", "a pet"], ["no", "a cat"])
    module = EmbeddingModule(
        embedder, InfoNCELoss(), cfg.optim, 2, config=OmegaConf.to_container(dcfg, resolve=True)
    )
    best = ModelCheckpoint(
        dirpath=tmp_path, filename="best", monitor="train/loss", every_n_train_steps=1
    )
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1), best],
    )  # fmt: skip
    trainer.fit(module, DataLoader([batch, batch], batch_size=None))
    # When it is read with weights_only=True / Then it loads, callbacks' state included
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = load_checkpoint(tmp_path / name)
        assert ckpt["global_step"] == 2 and ckpt["callbacks"] and ckpt["optimizer_states"]
    # And the embedder it rebuilds embeds as the trained one does
    probe = ["a man plays music", "a cat"]
    torch.testing.assert_close(
        load_embedder_from_checkpoint(tmp_path / "last.ckpt").encode(probe),
        embedder.encode(probe),
        atol=1e-6,
        rtol=1e-5,
    )
