"""``embedft.cli``: every entry point takes ``key=value`` on a typed schema, ``--help`` lists
that command's keys only, the writing tools leave nothing but their output, errors are one line."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest

from embedft import encode, evaluate, export, prepare_nli, report
from embedft.cli import FOOTER, field_comments, one_line_errors, override
from embedft.model import sources
from embedft.paths import repo_root
from tests.conftest import run_cli


def _help(capsys, main, *args: str) -> str:
    """The --help text of ``main`` above the footer every command shares."""
    assert run_cli(main, *args, "--help") == 0
    text = capsys.readouterr().out
    assert FOOTER in text
    return text.split(FOOTER)[0]


def _run_help() -> str:
    """``python -m embedft.run --help`` (a process: run.py finds conf/ relative to its file)."""
    done = subprocess.run(
        [sys.executable, "-m", "embedft.run", "--help"],
        cwd=repo_root(), capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    return done.stdout.split(FOOTER)[0]


@pytest.mark.parametrize(
    ("main", "own", "foreign"),
    [
        (
            export.main,
            ["ckpt=???", "a .ckpt written by python -m embedft.run", "merge=true", "dtype=auto"],
            ["input=", "eval.", "Config groups", "model=", "model."],
        ),
        (
            encode.main,
            ["input=???", "output=???", "text_field=text", "model=null", "tiny_llama"],
            ["merge=", "out=", "eval.", "lora."],
        ),
        (
            evaluate.main,
            ["ckpt=null", "an export dir", "eval.tasks=", "model.name=smollm2", "paths=default"],
            ["lora.", "lora=", "loss.", "data=", "trainer.", "logger=", "input="],
        ),
        (
            "run",
            ["lora.r=8", "loss.temperature=0.05", "embed.pack_len=", "data=simcse_nli"],
            ["ckpt=", "input=", "device="],
        ),
        (report.main, ["dirs=???", "out=null", "the first of dirs"], ["model=", "ckpt=", "eval."]),
        (
            prepare_nli.main,
            ["inputs=[]", "columns=[premise, hypothesis, label]", "seed=7"],
            ["model=", "ckpt=", "eval.", "dirs="],
        ),
        (
            sources.main,
            ["models=???", "names of conf/model/*.yaml", "$EMBEDFT_CACHE_DIR"],
            ["model=", "model.name", "ckpt=", "eval.", "Config groups"],
        ),
    ],
    ids=["export", "encode", "evaluate", "run", "report", "prepare_nli", "model.sources"],
)
def test_help_lists_the_commands_own_keys_only(main, own, foreign, capsys):
    text = _run_help() if main == "run" else _help(capsys, main)
    module = "embedft.run" if main == "run" else main.__module__
    assert f"python -m {module}" in text.splitlines()[0]  # the schema's docstring
    for expected in own:
        assert expected in text
    for other in foreign:
        assert other not in text
    assert "powered by Hydra" not in text


def test_help_shows_the_values_the_command_line_sets(capsys):
    # Given overrides before --help / Then the listing shows them, with the chosen group's keys
    text = _help(capsys, encode.main, "model=tiny_llama", "batch_size=8")
    assert "batch_size=8" in text and "model.name=tiny_llama" in text
    assert "model.source=tiny" in text and "hub | local | gguf_package | package | tiny" in text
    assert "model=tiny_llama" in text


def test_writing_tools_leave_nothing_but_their_output(tmp_path, monkeypatch, capsys):
    # Given a directory to work in, with texts to embed
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts.txt").write_text("a man\na dog\n")
    # When encode writes its embeddings and report fails on a directory without jobs
    assert run_cli(encode.main, "model=tiny_llama", "input=texts.txt", "output=emb.npy") == 0
    assert run_cli(report.main, f"dirs={tmp_path}") == 2
    # Then no outputs/<time>/ run dir, no .hydra/ and no log file were made
    assert sorted(os.listdir(tmp_path)) == ["emb.npy", "texts.txt"]
    # And stdout stayed empty (output=- would write embeddings there)
    assert capsys.readouterr().out == ""


@dataclass
class _Example:
    """An example schema."""

    documented: int = 1  # what it is for
    plain: str = "#"
    listed: list[str] | None = None  # a list; null: none

    def method(self) -> None:  # not a field
        pass


def test_field_comments_are_the_trailing_comments_of_field_lines():
    assert field_comments(_Example) == {
        "documented": "what it is for",
        "listed": "a list; null: none",
    }


def test_an_expected_error_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exited, one_line_errors("embedft.x", ValueError):
        raise ValueError("bad value\n    full_key: a\n    object_type=X")
    assert exited.value.code == 2
    assert capsys.readouterr().err == "embedft.x: error: bad value full_key: a object_type=X\n"
    # An error the tool does not expect is not hidden
    with pytest.raises(KeyError), one_line_errors("embedft.x", ValueError):
        raise KeyError("bug")


@pytest.mark.parametrize(
    "value",
    [
        "/runs/a/checkpoints/best.ckpt",
        "multirun/x/0_loss.hard_neg=true,model=gemma/checkpoints/best.ckpt",
        'with space/it\'s/a "quote"/back\\slash\\',
        "123",
        "true",
        "données",
    ],
)
def test_override_reads_back_as_the_same_string_through_shell_and_hydra(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # Given a value written as one override word; When a shell and then Hydra read it
    (word,) = shlex.split(override("ckpt", value))
    parsed = OverridesParser.create().parse_override(word)
    # Then Hydra gets back the key and exactly that string
    assert (parsed.key_or_group, parsed.value()) == ("ckpt", value)


def test_override_leaves_plain_paths_unquoted():
    assert override("ckpt", "/runs/a/best.ckpt") == "ckpt=/runs/a/best.ckpt"
    assert override("ckpt", "x/0_model=gemma") == """'ckpt="x/0_model=gemma"'"""
