"""``python -m embedft.encode``: files and stdin in, embeddings out, equal to ``Embedder.encode``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from embedft.config import ModelConfig
from embedft.encode import main
from embedft.export import export_checkpoint
from embedft.model.embedder import build_embedder
from embedft.model.load import load_embedder_from_checkpoint
from embedft.paths import repo_root
from tests.conftest import run_cli
from tests.test_export import make_run

TEXTS = ["a man is playing guitar", "a dog", "", "a dog", "two people sitting on a bench"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def expected(ckpt):
    """What the checkpoint's embedder gives for TEXTS, in order, duplicates included."""
    return load_embedder_from_checkpoint(ckpt).encode(TEXTS).numpy()


@pytest.fixture
def txt_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


def test_txt_to_npy(ckpt, expected, txt_file, tmp_path):
    out = tmp_path / "emb.npy"
    assert run_cli(main, f"ckpt={ckpt}", f"input={txt_file}", f"output={out}", "batch_size=2") == 0
    got = np.load(out)
    # One row per line (the blank line too), float32, as Embedder.encode gives them
    assert got.shape == (5, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_jsonl_to_jsonl_keeps_records_and_reads_a_custom_field(ckpt, expected, tmp_path):
    source = tmp_path / "docs.jsonl"
    lines = [json.dumps({"id": i, "body": t}) for i, t in enumerate(TEXTS)]
    source.write_text("\n".join(lines) + "\n\n", encoding="utf-8")  # a trailing blank line
    out = tmp_path / "docs_emb.jsonl"
    assert run_cli(main, f"ckpt={ckpt}", f"input={source}", f"output={out}", "text_field=body") == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["body"]) for r in rows] == list(enumerate(TEXTS))
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected, atol=1e-6)


def test_stdin_to_stdout(ckpt, expected, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(TEXTS[:2]) + "\n"))
    assert run_cli(main, f"ckpt={ckpt}", "input=-", "output=-") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS[:2]
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), expected[:2], atol=1e-6)


def test_an_export_directory_encodes_like_its_checkpoint(ckpt, expected, txt_file, tmp_path):
    export = export_checkpoint(ckpt, tmp_path / "export")
    out = tmp_path / "emb.npy"
    assert run_cli(main, f"ckpt={export}", f"input={txt_file}", f"output={out}") == 0
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_base_model_by_name(txt_file, tmp_path):
    out = tmp_path / "emb.npy"
    assert run_cli(main, "model=tiny_llama", f"input={txt_file}", f"output={out}") == 0
    cfg = ModelConfig(name="tiny_llama", source="tiny", path="llama", max_length=32)
    base = build_embedder(cfg).encode(TEXTS).numpy()
    np.testing.assert_allclose(np.load(out), base, atol=1e-6)


def test_max_length_override_truncates(ckpt, tmp_path):
    source = tmp_path / "one.txt"
    source.write_text("a man is playing guitar\n")
    out = tmp_path / "emb.npy"
    assert run_cli(main, f"ckpt={ckpt}", f"input={source}", f"output={out}", "max_length=4") == 0
    # 3 bytes + EOS: the same as embedding the first three characters
    short = load_embedder_from_checkpoint(ckpt).encode(["a m"]).numpy()
    np.testing.assert_allclose(np.load(out), short, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["input=x.txt", "output=y.npy"], "give exactly one of ckpt=PATH or model=NAME"),
        (["model=tiny_llama", "ckpt=b", "input=x.txt", "output=y.npy"], "give exactly one of"),
        (["model=tiny_llama", "input=x.txt"], "missing required key(s): output=..."),
        (["model=tiny_llama", "input=x.txt", "output=y.csv"], "expected a file ending in"),
        (["model=tiny_llama", "input=missing.txt", "output=-"], "input=missing.txt: file not"),
        (["model=tiny_llama", "input=-", "output=-", "batch_size=0"], "batch_size must be >= 1"),
        (["model=tiny_llama", "input=-", "output=-", "input_format=csv"], "input_format must be"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message(args, message, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a text\n"))
    assert run_cli(main, *args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("embedft.encode: error: ") and message in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=nope", "input=-", "output=-"], "Could not find 'model/nope'"),
        (["model=tiny_llama", "colour=red"], "Could not override 'colour'"),
        (["model=tiny_llama", "batch_size=many"], "batch_size=many"),
    ],
)
def test_unknown_keys_and_values_are_refused_while_composing(args, message, capsys):
    # Given a key, value or model that the schema does not allow / Then Hydra refuses it by name
    assert run_cli(main, *args) == 1
    assert message in capsys.readouterr().err


def test_jsonl_without_the_text_field_names_the_line(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    assert run_cli(main, "model=tiny_llama", f"input={source}", "output=-") == 2
    assert f"{source} line 2: expected an object with a string 'text' field" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("emb.npy", None, "not UTF-8 text (byte 0x93 at offset 0, line 1)"),
        (
            "latin1.txt",
            "ok\ncaf\xe9\n".encode("latin-1"),
            "not UTF-8 text (byte 0xe9 at offset 6, line 2)",
        ),
        ("zeros.txt", b"ok\n\x00\x00\x00", "binary (NUL byte on line 2)"),
    ],
)
def test_binary_input_is_one_line_naming_the_file(name, content, problem, tmp_path, capsys):
    # Given an input that is not UTF-8 text (a saved numpy array, Latin-1 text, zero bytes)
    source = tmp_path / name
    if content is None:
        np.save(source, np.zeros((2, 3), dtype=np.float32))
    else:
        source.write_bytes(content)
    # When / Then exit 2 and one line: the file, where, and what an input must be
    assert run_cli(main, "model=tiny_llama", f"input={source}", f"output={tmp_path / 'e.npy'}") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"embedft.encode: error: input={source}: {problem}; expected UTF-8 text with one "
        "sentence per line"
    ]


@pytest.mark.slow  # a fresh interpreter imports torch + transformers: ~10 s on 2 cores
def test_module_entry_point_keeps_stdout_for_data(ckpt, expected):
    # Given texts on stdin; When the CLI runs as a process writing JSON lines to stdout
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, "-m", "embedft.encode", f"ckpt={ckpt}", "input=-", "output=-"],
        input="a dog\n", capture_output=True, text=True, cwd=repo_root(), env=env, timeout=120,
    )  # fmt: skip
    # Then stdout holds only the embeddings and the progress bar went to stderr
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["text"] == "a dog"
    torch.testing.assert_close(torch.tensor(row["embedding"]), torch.from_numpy(expected[1]))
    assert "encoding" in result.stderr
