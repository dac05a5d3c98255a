"""The end of a run: its STS table, files and next command; STS data checked before the model."""

from __future__ import annotations

import csv
import json
import logging
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from embedft import run
from embedft.eval.sts import StsDataError
from embedft.paths import conf_dir
from embedft.results import Results
from embedft.run_summary import run_summary
from tests.test_run import _common, triplet_file  # noqa: F401  (a fixture)


def _hydra_value(word: str):
    """What Hydra reads from one shell word ``key=value``."""
    return OverridesParser.create().parse_override(word).value()


def test_completed_run_names_its_table_checkpoint_and_an_export_command_that_parses(tmp_path):
    # Given a completed sweep job whose directory holds '=' and ',' (Hydra's override_dirname)
    out = tmp_path / "0_loss.hard_neg=true,model=gemma"
    ckpt = out / "checkpoints" / "best.ckpt"
    results = Results("train", "gemma", status="completed", checkpoint=str(ckpt))
    results.sts = {"STS12": 70.125, "SICK-R": 80.0, "average": 75.0625}
    results.stsb_dev = [{"step": 100, "spearman": 81.5}, {"step": 200, "spearman": 80.25}]
    # When its summary is written
    text = run_summary(results, out)
    # Then it has the table, the best dev score, the files and the export command
    assert text.splitlines()[0] == f"run completed: {out}"
    for row in ("| STS12 | 70.12 |", "| SICK-R | 80.00 |", "| **Average** | 75.06 |"):
        assert row in text
    assert "STSB-dev:   best 81.50 at step 100" in text
    assert f"results:    {out / 'results.json'}" in text
    assert f"checkpoint: {ckpt}" in text
    command = next(x for x in text.splitlines() if "export:" in x).split("export:", 1)[1]
    # And the command, read by a shell and then by Hydra, gives back the two paths
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "embedft.export"]
    assert [_hydra_value(w) for w in words[3:]] == [str(ckpt), str(out / "export")]


def test_failed_and_preempted_runs_say_how_to_resume(tmp_path):
    # Given a failed run with no checkpoint
    failed = Results("train", "gemma", status="failed", error="DataError: no rows")
    text = run_summary(failed, tmp_path)
    # Then it says what happened, and that there is nothing to resume
    assert text.splitlines()[:2] == [f"run failed: {tmp_path}", "  error:      DataError: no rows"]
    assert "nothing to resume from (no checkpoint was written)" in text
    # Given a preempted run in a directory with '=' and its last.ckpt
    out = tmp_path / "1_model=gemma"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"")
    overrides = ["model=gemma", "resume=auto", 'model.prompt="{s} is: "']
    preempted = Results("train", "gemma", status="preempted", overrides=overrides)
    preempted.error = "preempted by SIGTERM at step 40"
    line = next(x for x in run_summary(preempted, out).splitlines() if "resume:" in x)
    # Then the resume command repeats the job's overrides, resume=auto once, and its directory
    words = shlex.split(line.split("resume:", 1)[1])
    assert words[:3] == ["python", "-m", "embedft.run"]
    assert words[3:5] == ["model=gemma", 'model.prompt="{s} is: "']
    assert words[5] == "resume=auto" and _hydra_value(words[6]) == str(out)
    assert words[6].startswith("hydra.run.dir=")


def _compose(overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("run", overrides)


def test_a_short_run_ends_with_its_summary_and_metrics(triplet_file, tmp_path, shared_data, caplog):  # noqa: F811
    # Given 2 steps with the default log_every_n_steps=10, STSB-dev and one test task after fit
    base = [o for o in _common(triplet_file, tmp_path)[:-1] if not o.startswith("eval.")]
    dcfg = _compose(
        [*base, "trainer.max_steps=2", "eval.every_n_steps=1", "eval.tasks=[BIOSSES]"]
        + [f"paths.data_dir={shared_data}"]
    )
    dcfg.paths.output_dir = str(tmp_path / "run")
    # When it runs
    with caplog.at_level(logging.INFO, logger="embedft.run"):
        results = run.train(dcfg)
    # Then it logs one summary: the table of results.json, the checkpoint, the export command
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    (summary,) = [r for r in caplog.records if r.getMessage().startswith("run completed")]
    text = summary.getMessage()
    assert results.status == saved["status"] == "completed"
    assert f"| BIOSSES | {saved['sts']['BIOSSES']:.2f} |" in text
    assert f"checkpoint: {saved['checkpoint']}" in text
    assert "export:     python -m embedft.export ckpt=" in text
    # And metrics.csv has its rows although the run is shorter than log_every_n_steps
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "metrics.csv")))
    logged = [r for r in rows if r["train/loss"]]
    assert [int(r["step"]) for r in logged] == [1]
    assert float(logged[0]["perf/triplets_per_s"]) > 0 and float(logged[0]["train/grad_norm"]) > 0
    assert f"metrics:    {tmp_path / 'run' / 'csv' / 'metrics.csv'}" in text


def test_missing_sts_data_fails_before_the_model_loads(triplet_file, tmp_path, monkeypatch, caplog):  # noqa: F811
    # Given an empty data directory and STSB-dev validation on
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the STS data was checked")

    monkeypatch.setattr(run, "build_embedder", no_model)
    empty = tmp_path / "empty"
    base = [o for o in _common(triplet_file, tmp_path)[:-1] if not o.startswith("eval.")]
    dcfg = _compose([*base, "eval.every_n_steps=5", f"paths.data_dir={empty}"])
    dcfg.paths.output_dir = str(tmp_path / "run")
    # When it runs; Then it fails on the STS files, naming them, the data dir and eval.source=hub
    with caplog.at_level(logging.INFO, logger="embedft.run"), pytest.raises(StsDataError) as err:
        run.train(dcfg)
    message = str(err.value)
    assert f"STS data missing under {empty / 'sts'}: STS12: STS12/SentEval/" in message
    assert "; STSBenchmark (dev): STSBenchmark/stsbenchmark/sts-dev.csv." in message
    assert "; SICK-R: SICK-R/praguna_sick_dataset/SICK.txt;" in message
    assert "EMBEDFT_DATA_DIR" in message and "eval.source=hub" in message
    # And results.json and the summary say it failed, with nothing to resume
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"
    (summary,) = [r for r in caplog.records if r.getMessage().startswith("run failed")]
    assert summary.levelno == logging.ERROR and "nothing to resume" in summary.getMessage()
