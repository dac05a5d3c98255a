"""Quickstart: fine-tune SmolLM2-135M offline and show STSBenchmark before and after.

    make quickstart            # = python experiments/quickstart.py

Builds the offline NLI triplets if they are missing (``embedft.prepare_nli``), scores the base
model on STSBenchmark test, trains LoRA adapters with the paper's loss for a short budget through
the normal ``embedft.run`` path (so the run directory holds the usual config.yaml, results.json
and adapter checkpoint), and prints both scores. Extra arguments are Hydra overrides of the run,
e.g. ``python experiments/quickstart.py trainer.max_steps=100``.

Both scores, the wall time, the machine (and its load average: a shared machine's wall time is
noisy) and the git commit (and whether tracked files differed from it) go to ``experiments/results/quickstart.json`` (written atomically), which the README's
quickstart figure is read from.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from embedft.config import moved_key_error, to_object
from embedft.eval.sts import evaluate_sts
from embedft.model.embedder import build_embedder, resolve_dtype
from embedft.paths import conf_dir, repo_root
from embedft.run import train
from embedft.tracking import write_json

RESULT_FILE = repo_root() / "experiments" / "results" / "quickstart.json"

# A budget that fits in a few minutes on 2 CPU cores; bf16 as in the paper (CPUs with
# AVX512-BF16 run it about twice as fast as fp32). The paper saw most of its gain in ~200 steps.
QUICK = [
    "model=smollm2",
    "model.dtype=bfloat16",
    "model.max_length=64",
    "data=local",
    "data.batch_size=32",
    "trainer.max_steps=60",
    "optim.warmup_steps=10",
    "optim.lr=5e-4",
    "logger=csv",
    "eval.tasks=[STSBenchmark]",
    "eval.every_n_steps=0",
]


def git_state() -> dict[str, Any]:
    """The commit the code ran at and whether tracked files differed from it ("unknown": no git)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo_root(), capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def main(argv: list[str]) -> None:
    if moved := moved_key_error(argv):
        sys.exit(moved)
    started = time.perf_counter()
    code = git_state()  # before the run: the code that is measured
    load_start = os.getloadavg()  # a shared machine makes the wall time noisy
    triplets = repo_root() / "data" / "nli_triplets.csv"
    if not triplets.exists():
        subprocess.run([sys.executable, "-m", "embedft.prepare_nli"], cwd=repo_root(), check=True)
    out = repo_root() / "outputs" / "quickstart" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose("run", [*QUICK, *argv])
    dcfg.paths.output_dir = str(out)
    cfg = to_object(dcfg)

    base = build_embedder(cfg.model, None, dtype=resolve_dtype(cfg.model.dtype, "cpu"))
    before = evaluate_sts(base, ["STSBenchmark"], cfg.paths.data_dir, cfg.eval.batch_size)
    del base
    print(f"\nSTSBenchmark test, base {cfg.model.name}: {before['STSBenchmark']:.2f}", flush=True)

    results = train(dcfg)
    after = results.sts["STSBenchmark"]
    wall = time.perf_counter() - started
    minutes = wall / 60
    write_json(
        RESULT_FILE,
        {
            "model": cfg.model.name,
            "task": "STSBenchmark",
            "split": "test",
            "metric": "Spearman x100 of cosine similarity",
            "before": round(before["STSBenchmark"], 4),
            "after": round(after, 4),
            "steps": results.train["global_step"],
            "overrides": [*QUICK, *argv],
            "wall_time_s": round(wall, 1),
            "train_wall_time_s": results.train["wall_time_s"],
            "run_dir": str(out.relative_to(repo_root())),
            "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            **code,
            "machine": machine(),
        },
    )
    print(
        f"\nSTSBenchmark test (Spearman x100), {cfg.model.name}:\n"
        f"  before fine-tuning: {before['STSBenchmark']:6.2f}\n"
        f"  after {results.train['global_step']} steps:    {after:6.2f}\n"
        f"run directory: {out}   wall time: {minutes:.1f} min\n"
        f"written to {RESULT_FILE.relative_to(repo_root())}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
