"""Runs that survive a kill: stream position, RNG state, run dirs, preemption, exact resume.

The cheap cases run here; ``make faults`` (experiments/fault_injection.py) runs every kill and
signal scenario, and the slow test at the end runs that suite.
"""

import fcntl
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from embedft.config import DataConfig
from embedft.data.datamodule import TripletDataModule, TripletStream
from embedft.paths import repo_root
from embedft.resume import (
    OutputDirError,
    capture_rng,
    claim_output_dir,
    restore_rng,
)
from tests.test_datamodule import _write_csv

ROWS = [(f"anchor {i}", f"positive {i}", f"negative {i}") for i in range(30)]
FAULTS = repo_root() / "experiments" / "fault_injection.py"


def _cfg(path, **kw):
    base = dict(name="t", source="local", path=str(path), batch_size=4, shuffle_buffer=8)
    base.update(kw)
    return DataConfig(**base)


def _anchors(batches):
    return [[r["anchor"] for r in b] for b in batches]


def test_resumed_stream_continues_where_it_stopped(tmp_path):
    # Given a shuffled stream over two epochs
    cfg = _cfg(_write_csv(tmp_path / "t.csv", ROWS))
    full = TripletStream(cfg, seed=3)
    epoch0, epoch1 = _anchors(full), _anchors(full)
    # When a fresh stream is told 5 batches of epoch 1 were trained on
    resumed = TripletStream(cfg, seed=3)
    resumed.epoch, resumed.skip_batches = 1, 5
    # Then it yields exactly the rest of epoch 1, then epoch 2 in full
    assert _anchors(resumed) == epoch1[5:]
    assert _anchors(resumed) == _anchors(full)
    assert epoch0 != epoch1


def test_resumed_stream_with_workers_skips_each_workers_share(tmp_path):
    cfg = _cfg(_write_csv(tmp_path / "t.csv", ROWS), num_workers=2)

    def loader(skip):
        stream = TripletStream(cfg, seed=1)
        stream.skip_batches = skip
        return _anchors(DataLoader(stream, batch_size=None, num_workers=2))

    everything = loader(0)
    assert sorted(a for b in everything for a in b) == sorted(r[0] for r in ROWS)  # all rows read
    for skip in (1, 2, 3):
        assert loader(skip) == everything[skip:]


def test_datamodule_position_round_trips(tmp_path, tokenizer):
    cfg = _cfg(_write_csv(tmp_path / "t.csv", ROWS))
    dm = TripletDataModule(cfg, tokenizer, 16, True)
    dm.setup("fit")
    dm.load_state_dict({"epoch": 2, "batches": 3})
    assert (dm.dataset.epoch, dm.dataset.skip_batches) == (2, 3)
    assert dm.state_dict() == {"epoch": 2, "batches": 3}


def test_rng_state_is_plain_data_and_replays_the_same_draws(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(2))
    torch.rand(5)  # move on
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))  # no pickled objects
    got = (torch.rand(3), np.random.rand(2))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_a_directory_with_a_run_is_refused_without_resume(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(OutputDirError, match="already holds a run .*resume=auto"):
        claim_output_dir(tmp_path, resume=None, multirun=False)
    claim_output_dir(tmp_path / "sweep_job", resume=None, multirun=True)  # fresh: fine


def test_a_directory_in_use_is_refused(tmp_path):
    with open(tmp_path / ".embedft.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process's claim
        with pytest.raises(OutputDirError, match="in use by another embedft process"):
            claim_output_dir(tmp_path, resume="auto", multirun=False)


# -- real runs (subprocesses, a tiny model) -------------------------------------------------


def _faults(*args, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    return subprocess.run(
        [sys.executable, str(FAULTS), *args],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_kill9_and_sigterm_resume_exactly_and_nan_fails_loudly(tmp_path):
    # Given real runs of a tiny model (8 steps, checkpoints every 3): one killed with SIGKILL at
    # step 5, one sent SIGTERM during step 4 (it must save, say "preempted" and exit 143), each
    # resumed with resume=auto; and one run whose learning rate makes the loss NaN.
    result = _faults("--only", "kill9_mid_run", "sigterm", "nan", "--out", str(tmp_path))
    # Then the resumed runs match an uninterrupted run (weights, per-step losses, CSV rows) and
    # the NaN run failed with the step and the reason, without a best.ckpt
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "3 of 3 scenarios held" in result.stdout


@pytest.mark.slow
def test_every_fault_injection_scenario_holds(tmp_path):
    result = _faults("--out", str(tmp_path), timeout=1800)
    assert result.returncode == 0, result.stdout
    summary = json.loads((tmp_path / "fault_injection.json").read_text())
    assert summary["held"] == summary["total"] >= 14


def test_signal_constants_are_what_schedulers_send():
    from embedft.resume import EXIT_PREEMPTED, PREEMPT_SIGNALS

    assert signal.SIGTERM in PREEMPT_SIGNALS and signal.SIGUSR1 in PREEMPT_SIGNALS
    assert EXIT_PREEMPTED == 128 + signal.SIGTERM
