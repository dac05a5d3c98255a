"""W&B tracking: run names from overrides, offline without credentials, and what a sweep logs.

The end-to-end test runs a 2-job multirun with ``logger=wandb`` and ``WANDB_MODE=offline`` and
reads the offline runs back from their ``run-<id>.wandb`` files. wandb 0.31 writes no
files/config.yaml or wandb-summary.json offline (those come at sync time), and its Python
package no longer ships a reader for the file, so ``read_wandb_records`` parses the documented
LevelDB-log framing (7-byte ":W&B" header, 32 KiB blocks, records of crc32/length/type + data)
into wandb's own protobuf ``Record`` messages.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedft import tracking
from embedft.config import LoggerConfig
from embedft.launch import JobContext
from embedft.paths import repo_root
from embedft.tracking import name_from_overrides, sweep_tags, wandb_mode, wandb_server_reachable

_BLOCK = 32768
_FULL, _LAST = 1, 4


def read_wandb_records(path: Path):
    """Yield the protobuf records of an offline W&B run file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += _BLOCK - pos % _BLOCK
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):  # FIRST/MIDDLE pieces wait for the rest
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def summarise(path: Path) -> dict:
    """The parts of one offline run the tests look at."""
    out: dict = {"history": [], "summary": {}, "config": {}, "exit_code": None}
    out.update(metrics={}, artifacts=[])
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(name=run.display_name, group=run.run_group, project=run.project)
            out.update(tags=list(run.tags), job_type=run.job_type)
        elif kind == "metric":  # define_metric: {name or glob: (step metric, summaries)}
            metric, summary = record.metric, record.metric.summary
            kept = [f.name for f in summary.DESCRIPTOR.fields if getattr(summary, f.name)]
            out["metrics"][metric.name or metric.glob_name] = (metric.step_metric, kept)
        elif kind == "artifact":
            artifact = record.artifact
            files = [entry.path for entry in artifact.manifest.contents]
            out["artifacts"].append(
                {"type": artifact.type, "aliases": sorted(artifact.aliases), "files": files}
            )
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def test_run_name_comes_from_the_overrides_that_say_what_is_trained():
    # Given a job's overrides, some of which only say where it runs
    overrides = [
        "model=gemma",
        "loss.hard_neg=true",
        "lora.r=8",
        "data.path=/x/t.csv",
        "logger=wandb",
    ]
    # Then the name keeps model, hard negatives and rank, in the paper's wording
    assert name_from_overrides(overrides) == "gemma-hardneg-r8"
    assert name_from_overrides(["loss.hard_neg=false", "model=phi2"]) == "phi2-nohardneg"


def test_tags_are_the_swept_overrides_as_the_name_writes_them():
    # Given a sweep job's overrides of the swept keys, one of which names no part of a run name
    swept = ["model=gemma", "lora.r=16", "optim.lr=5e-4", "data.path=/data/a.csv"]
    # Then each is one tag, as the run name writes it, or key=value
    assert sweep_tags(swept) == ["gemma", "r16", "lr5e-4", "data.path=/data/a.csv"]
    assert sweep_tags(["loss.hard_neg=true", "loss.hard_neg=false"]) == ["hardneg", "nohardneg"]


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No WANDB_MODE, no API key, no proxy and a home without a netrc."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))


def test_the_logger_does_not_pass_wandb_the_deprecated_anonymous_setting(tmp_path):
    # Given a W&B logger as embedft builds it (Lightning 2.6 adds anonymous=None, which wandb
    # 0.31 warns about on every run); Then wandb.init gets no `anonymous` key
    logger = tracking.build_logger(
        LoggerConfig(kind="wandb", mode="disabled"), tmp_path, JobContext()
    )
    assert "anonymous" not in logger._wandb_init
    assert logger._wandb_init["id"] and logger._wandb_init["project"] == "embedft"


def test_without_credentials_wandb_runs_offline(no_credentials, monkeypatch):
    # Given a W&B server that would answer (no real network in tests)
    monkeypatch.setattr(tracking, "wandb_server_reachable", lambda url: True)
    # Then "auto" means offline without credentials (no prompt, no network), online with them
    assert wandb_mode(LoggerConfig()) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(LoggerConfig()) == "online"
    assert wandb_mode(LoggerConfig(mode="disabled")) == "disabled"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_with_credentials_but_no_server_wandb_falls_back_to_offline_at_once(
    no_credentials, monkeypatch, caplog
):
    # Given an API key and a W&B server address where nothing listens
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    # When the mode is chosen
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        mode = wandb_mode(LoggerConfig())
    # Then it is offline within seconds, and a warning says why and how to upload later
    assert mode == "offline" and time.monotonic() - started < 5
    assert f"W&B server {url} is unreachable: logging offline" in caplog.text
    assert "wandb sync" in caplog.text
    # And an explicit online mode falls back too; offline and disabled never probe
    assert wandb_mode(LoggerConfig(mode="online")) == "offline"
    monkeypatch.setattr(tracking, "wandb_server_reachable", lambda url: pytest.fail("probed"))
    assert wandb_mode(LoggerConfig(mode="disabled")) == "disabled"


def test_a_listening_server_is_reachable_and_a_closed_port_is_not(no_credentials):
    # Given a local server socket (the probe only opens a TCP connection)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # Then it is reachable, over http or https URLs with the port
        assert wandb_server_reachable(f"http://127.0.0.1:{port}")
        assert wandb_server_reachable(f"https://localhost:{port}/")
    assert not wandb_server_reachable(f"http://127.0.0.1:{_closed_port()}")
    assert not wandb_server_reachable("not a url")


def test_reader_follows_records_across_32k_blocks(tmp_path, monkeypatch):
    # Given an offline run of 1500 steps (a file of ~0.5 MB: records span block boundaries)
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="reader", config={"a": 1})
    for i in range(1500):
        run.log({"x": i, "pad": "y" * (i % 50)})
    run.finish()
    # finish() can return before wandb's service process has written the file's last block
    # (its size is final, its tail still zeros: ~1 run in 3 read 1459 of 1500 steps); shutting
    # the service down waits for the write.
    wandb.teardown()
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    # When it is read back; Then every step is there, in order, with its value
    history = summarise(path)["history"]
    assert path.stat().st_size > 4 * _BLOCK
    assert [h["x"] for h in history] == list(range(1500))


@pytest.mark.slow  # two training jobs with STS evaluation in a subprocess: ~40-90 s
def test_a_sweep_logs_config_curves_and_table_then_finishes_each_run(tmp_path, shared_data):
    # Given a 2-job sweep (hard negatives on/off) logging to W&B offline, with STSB-dev every
    # step and one small test task after fit (the one test that lets W&B write its files)
    data = tmp_path / "triplets.csv"
    data.write_text(
        "sent0,sent1,hard_neg\n"
        + "a man plays guitar,a man makes music,nobody plays\n" * 4
        + "a dog runs outside,a dog is in the park,a cat sleeps inside\n" * 4
    )
    sweep = tmp_path / "sweep-wb"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        env[var] = str(tmp_path / "wandb-home")
    result = subprocess.run(
        [
            sys.executable, "-m", "embedft.run", "-m",
            "model=tiny_llama", "loss.hard_neg=true,false", "lora.r=4",
            "data=local", f"data.path={data}", "data.batch_size=4",
            "trainer.accelerator=cpu", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "optim.warmup_steps=1",
            "logger=wandb", "logger.project=embedft-test",
            "eval.every_n_steps=1", "eval.tasks=[BIOSSES]",
            f"paths.data_dir={shared_data}",
            f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}",
        ],
        cwd=repo_root(), env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    # When the two offline runs are read back
    runs, files = {}, {}
    for job in ("0", "1"):
        found = list((sweep / job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(found) == 1, f"job {job}: {found}"
        files[job], runs[job] = found[0], summarise(found[0])

    # Then each run is named by its overrides (those that say where it runs left out), tagged
    # by the swept key only, grouped by the sweep's name, a training job in the configured project
    rest = "datalocal-batch_size4-max_steps2-warmup_steps1"
    assert runs["0"]["name"] == f"tiny_llama-hardneg-r4-{rest}"
    assert runs["1"]["name"] == f"tiny_llama-nohardneg-r4-{rest}"
    assert (runs["0"]["tags"], runs["1"]["tags"]) == (["hardneg"], ["nohardneg"])
    assert {r["group"] for r in runs.values()} == {"sweep-wb"}
    assert {r["job_type"] for r in runs.values()} == {"train"}
    assert {r["project"] for r in runs.values()} == {"embedft-test"}
    for job, hard_neg in (("0", True), ("1", False)):
        run = runs[job]
        # And it holds the resolved config of its own job
        assert run["config"]["loss"]["hard_neg"] is hard_neg
        assert run["config"]["model"]["name"] == "tiny_llama"
        # And the train loss and learning rate of both steps, and the STSB-dev curve
        losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
        rates = [h["train/lr"] for h in run["history"] if "train/lr" in h]
        dev = [h["val/stsb_spearman"] for h in run["history"] if "val/stsb_spearman" in h]
        assert len(losses) == 2 and all(x > 0 for x in losses)
        assert rates and rates[0] > 0
        assert len(dev) == 2 and all(-100 <= x <= 100 for x in dev)
        # And every metric is plotted against the optimizer step, STSB-dev summarised by its max
        assert run["metrics"]["*"] == ("trainer/global_step", [])
        assert run["metrics"]["val/stsb_spearman"] == ("trainer/global_step", ["max"])
        assert run["summary"]["val/stsb_spearman"] == {"max": pytest.approx(max(dev))}
        # And each step's throughput, memory, gradient norm and similarity gap
        steps = [h for h in run["history"] if "train/loss" in h]
        for key in ("perf/triplets_per_s", "perf/tokens_per_s", "perf/peak_mem_gib"):
            assert all(h[key] > 0 for h in steps), key
        assert all(h["train/grad_norm"] > 0 for h in steps)
        gaps = [(h["train/cos_gap"], h["train/cos_pos"] - h["train/cos_neg"]) for h in steps]
        assert all(gap == pytest.approx(diff, abs=1e-5) for gap, diff in gaps)
        # And the best adapters as a model artifact
        model = [a for a in run["artifacts"] if a["type"] == "model"]
        assert model == [{"type": "model", "aliases": ["best", "latest"], "files": ["best.ckpt"]}]
        # And the final STS table, also as summary values equal to results.json's
        results = json.loads((sweep / job / "results.json").read_text())
        table_path = next(
            h["sts/test_table/path"] for h in run["history"] if "sts/test_table/path" in h
        )
        table = json.loads((files[job].parent / "files" / table_path).read_text())
        assert table["columns"] == ["task", "spearman"]
        assert table["data"] == [[k, pytest.approx(v)] for k, v in results["sts"].items()]
        assert run["summary"]["sts/BIOSSES"] == pytest.approx(results["sts"]["BIOSSES"])
        # And wandb.finish() closed it (an exit record) before the next job started its own
        assert run["exit_code"] == 0
    # And each job ended by printing its table, checkpoint and export command
    assert result.stdout.count("run completed: ") == 2
    assert result.stdout.count(f"python -m embedft.export ckpt={sweep}/") == 2
