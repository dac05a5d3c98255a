"""Launcher support: under hydra/launcher=gpus each job of a sweep holds its own GPU(s); a DDP
process started from outside knows whether it is rank 0 before Lightning starts."""

import fcntl
import os
import tempfile

import pytest

from embedft.launch import RANK_VARIABLES, is_rank_zero


@pytest.mark.parametrize(
    "env, rank_zero",
    [
        ({}, True),  # one process, no launcher
        ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, True),  # task 0 of a SLURM job (or array)
        ({"SLURM_PROCID": "3"}, False),  # srun's task 3 (node 1, local rank 1 of 2 x 2)
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),  # node 1's first rank, Lightning-launched
        ({"LOCAL_RANK": "1"}, False),  # Lightning's re-launch of strategy=ddp, rank 1
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "2"}, False),  # re-launched in an interactive job
        ({"RANK": "0", "GROUP_RANK": "0", "LOCAL_RANK": "0"}, True),  # torchrun's rank 0
    ],
)
def test_rank_zero_is_read_from_every_launchers_variables(env, rank_zero, monkeypatch):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_rank_zero() is rank_zero


def test_gpus_preset_jobs_each_hold_their_own_gpu(tmp_path, monkeypatch):
    """hydra/launcher=gpus: submitit shows every job GPUs 0..N-1; each job locks one of them."""
    import threading
    import time
    from types import SimpleNamespace

    from embedft import launch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the lock dir lives in /tmp
    monkeypatch.setattr(launch, "_HELD_GPU_LOCKS", [])
    cfg = SimpleNamespace(trainer=SimpleNamespace(accelerator="gpu", devices=1))
    # Given no submitit job: nothing is claimed
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    launch.claim_gpus(cfg)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"

    # Given a submitit local job while another job holds GPU 0
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    lock_dir = tmp_path / f"embedft-gpu-locks-{os.getuid()}"
    lock_dir.mkdir()
    other = open(lock_dir / "gpu0.lock", "w")
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # When it claims a GPU; Then it gets GPU 1, and only GPU 1 is visible to it
    launch.claim_gpus(cfg)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"

    # When a third job comes while both are taken; Then it waits until GPU 0 is let go
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    threading.Timer(0.5, other.close).start()
    started = time.monotonic()
    launch.claim_gpus(cfg, poll_s=0.05)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert time.monotonic() - started >= 0.45
    for handle in launch._HELD_GPU_LOCKS:
        handle.close()


def _multirun_yaml(tmp_path, overrides):
    """The multirun.yaml Hydra's sweeper saves: the composed config of the sweep's command line."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from embedft.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("run", overrides, return_hydra_config=True)
    OmegaConf.save(cfg, tmp_path / "multirun.yaml")
    return tmp_path / "multirun.yaml"


def test_swept_keys_are_those_the_sweep_gives_several_values(tmp_path):
    from omegaconf import OmegaConf

    from embedft.launch import swept_keys

    # Given the paper grid with lora.r pinned on the command line and a key set to one value
    grid = _multirun_yaml(tmp_path, ["experiment=paper_grid", "lora.r=8", "trainer.max_steps=2"])
    # Then the grid's other keys are swept, the pinned and single-valued ones not
    assert swept_keys(grid) == {"model", "loss.hard_neg"}
    # Given a command-line sweep, one of whose "sweeps" repeats a value (as Hydra saves it)
    line = ["loss.hard_neg=true,false", "seed=7,7", "optim.lr=range(1,3)", "data.batch_size=8"]
    saved = tmp_path / "cli.yaml"
    OmegaConf.save({"hydra": {"sweeper": {"params": None}, "overrides": {"task": line}}}, saved)
    assert swept_keys(saved) == {"loss.hard_neg", "optim.lr"}
    # And a sweep dir without the file (another sweeper) has no known swept keys
    assert swept_keys(tmp_path / "absent.yaml") == set()


def test_sweep_names_are_readable():
    from pathlib import Path

    from embedft.launch import sweep_name

    stamp = "2026-01-02_03-04-05_ab12cd34"
    assert sweep_name(Path(f"multirun/paper_grid/{stamp}"), "paper_grid") == f"paper_grid-{stamp}"
    assert sweep_name(Path(f"multirun/train/{stamp}"), None) == f"sweep-{stamp}"
    assert sweep_name(Path("multirun/offline_finetune"), "offline_finetune") == "offline_finetune"
    assert sweep_name(Path("/tmp/sweep-wb"), None) == "sweep-wb"
