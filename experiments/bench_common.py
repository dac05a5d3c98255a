"""What the benchmark scripts share: the triplets, the composed config, one run per subprocess.

``bench_train.py``, ``bench_memory.py`` and ``profile_step.py`` read the same triplets
(``data/nli_triplets.csv`` in file order), compose embedft's config the same way, and run each
measured training run in a subprocess of its own (``spawn``: its peak RSS from ``os.wait4``, a
watchdog on RSS and time). A worker prints one line, ``MARK`` + JSON, that the parent reads
(``finish``: throughput over the steps after the warm-up).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"
TRIPLETS = REPO / "data" / "nli_triplets.csv"
BENCH_TRAIN = REPO / "experiments" / "bench_train.py"  # the script whose workers spawn starts
MARK = "BENCH_RESULT "  # prefix of the one JSON line a worker prints on stdout


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def ensure_triplets() -> None:
    """Build data/nli_triplets.csv from the offline NLI data when it is missing."""
    if not TRIPLETS.is_file():
        print(f"{TRIPLETS} missing: building it with python -m embedft.prepare_nli", flush=True)
        subprocess.run([sys.executable, "-m", "embedft.prepare_nli"], cwd=REPO, check=True)


def read_triplets(n: int) -> list[dict[str, str]]:
    with open(TRIPLETS, newline="") as f:
        rows = [r for _, r in zip(range(n), csv.DictReader(f), strict=False)]
    if len(rows) < n:
        raise ValueError(f"{TRIPLETS} holds {len(rows)} triplets; the run needs {n}")
    return rows


def spawn(worker_args: list[str], rss_cap_gb: float, timeout_s: float) -> dict[str, Any]:
    """Run a bench_train.py worker; return its JSON result plus its own peak RSS.

    The watchdog polls the child's RSS and kills it past ``rss_cap_gb`` (the machine is shared:
    an unbounded run could push other people's processes out of memory).
    """
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-worker-", suffix=".log", delete=False)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = [sys.executable, str(BENCH_TRAIN), "--worker", *worker_args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    state = {"killed": None, "sampled_peak_kb": 0}
    reaped = threading.Event()

    def watch() -> None:
        # Reads /proc only: proc.poll() could reap the child before os.wait4 gets its rusage.
        started = time.monotonic()
        while not reaped.wait(0.2):
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    rss_kb = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
            except (OSError, StopIteration):  # exited (a zombie has no VmRSS line)
                return
            state["sampled_peak_kb"] = max(state["sampled_peak_kb"], rss_kb)
            if rss_kb > rss_cap_gb * 1024**2:
                state["killed"] = f"RSS {rss_kb / 1024**2:.1f} GB passed the cap {rss_cap_gb} GB"
            elif time.monotonic() - started > timeout_s:
                state["killed"] = f"ran longer than {timeout_s:.0f} s"
            if state["killed"]:
                os.kill(proc.pid, signal.SIGKILL)  # not proc.kill(): it may reap the child too
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
    proc.returncode = os.waitstatus_to_exitcode(status)
    reaped.set()
    watcher.join()
    result: dict[str, Any] = {"argv": worker_args}
    lines = [ln for ln in out.splitlines() if ln.startswith(MARK)]
    if lines:
        result.update(json.loads(lines[-1][len(MARK) :]))
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux reports kB
    if state["killed"] or proc.returncode != 0 or not lines:
        log.seek(0)
        tail = log.read()[-2000:]
        result["error"] = state["killed"] or f"exit code {proc.returncode}: {tail}"
        result["peak_rss_mb_at_least"] = round(state["sampled_peak_kb"] / 1024, 1)
    os.unlink(log.name)
    return result


def default_rss_cap_gb() -> float:
    """Leave 2 GB of what the machine has available now to everyone else."""
    with open("/proc/meminfo") as f:
        avail_kb = next(int(x.split()[1]) for x in f if x.startswith("MemAvailable:"))
    return round(max(1.0, avail_kb / 1024**2 - 2.0), 1)


def finish(result: dict[str, Any], step_ends: list[float], started: float, args) -> None:
    """Throughput over the steps after the warm-up; print the JSON line the parent reads."""
    w = min(args.warmup, len(step_ends) - 1)
    t0 = step_ends[w - 1] if w > 0 else started
    timed = step_ends[-1] - t0
    steps = len(step_ends) - w
    step_times = [b - a for a, b in zip([started, *step_ends[:-1]], step_ends, strict=True)]
    tokens = sum(result.pop("tokens_per_step")[w:])
    padded = sum(result.pop("padded_per_step")[w:])
    counted = sum(result.pop("flops_per_step")[w:])
    with open("/proc/self/status") as f:
        hwm = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    result.update(
        steps=len(step_ends),
        timed_steps=steps,
        step_s=[round(t, 3) for t in step_times],
        timed_s=round(timed, 3),
        triplets_per_s=round(steps * args.batch_size / timed, 3),
        tokens_per_s=round(tokens / timed, 1),
        real_tokens=tokens,
        padded_tokens=padded,
        padding_factor=round(padded / tokens, 3),
        flops_per_s=float(f"{counted / timed:.4g}"),
        vmhwm_mb=round(hwm / 1024, 1),
        loadavg_end=loadavg(),
        cpu_s=round(time.process_time(), 1),
    )
    print(MARK + json.dumps(result), flush=True)


def embedft_config(args, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from embedft.config import to_object

    base = [
        f"model={args.model}",
        "data=local",
        f"data.path={TRIPLETS}",
        "data.shuffle_buffer=0",  # file order: the same batches sentence-transformers sees
        "data.num_workers=0",
        f"data.batch_size={args.batch_size}",
        f"model.max_length={args.max_length}",
        f"model.dtype={args.dtype}",
        "trainer=cpu" if args.device == "cpu" else "trainer=default",
        f"trainer.max_steps={args.steps}",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "eval.every_n_steps=0",
        "eval.after_fit=false",
        f"paths.output_dir={tempfile.mkdtemp(prefix='bench-')}",
    ]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return to_object(compose("run", overrides=base + overrides))


def environment(device: str) -> dict[str, Any]:
    import lightning
    import sentence_transformers
    import torch

    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
    }
