"""Launcher support: under hydra/launcher=gpus each job of a sweep holds its own GPU(s)."""

import fcntl
import os
import tempfile


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
