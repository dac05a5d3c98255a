"""2 gloo processes == 1 process: runs experiments/ddp_equivalence.py and checks its JSON report;
and a real `strategy=ddp` run, whose re-launched rank trains in rank 0's directory.

The script (not pytest re-running itself, not Lightning's DDP inside pytest) spawns two CPU
processes that gather InfoNCE candidates across ranks and average LoRA gradients as DDP does;
see its docstring for what is compared with what, and the tolerance.
"""

import json
import os
import subprocess
import sys

import pytest

from embedft.paths import repo_root

pytestmark = pytest.mark.slow  # three processes importing torch + transformers: ~20-70 s


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "ddp.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    result = subprocess.run(
        [sys.executable, "experiments/ddp_equivalence.py", "--json", str(out)],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.is_file(), result.stderr[-3000:]
    return result.returncode, json.loads(out.read_text())


def test_the_script_passes_and_says_so(report):
    returncode, data = report
    assert returncode == 0 and data["passed"], json.dumps(data, indent=1)


@pytest.mark.parametrize(
    "case",
    [
        "equal_3_3",
        "unequal_3_2",
        "equal_3_3_no_hard_neg",
        "grad_cache_equal_3_3",
        "grad_cache_unequal_3_2",
        "symmetric_unequal_3_2",
    ],
)
def test_two_ranks_match_one_process(report, case):
    # Given two ranks that gather candidates; Then loss and LoRA gradients equal one process's
    c = report[1]["cases"][case]
    assert c["loss_abs_diff"] <= 1e-5
    assert c["grad_max_abs_diff"] <= 1e-5
    assert c["grad_max_abs"] > 1e-3  # gradients that are not all ~0, so the match means something


def test_equal_halves_are_the_plain_full_batch(report):
    # With 3 + 3 rows the mean of the two rank means is the mean over all 6 rows
    c = report[1]["cases"]["equal_3_3"]
    assert c["plain_full_batch_loss_abs_diff"] <= 1e-5
    assert c["plain_full_batch_grad_max_abs_diff"] <= 1e-5


def test_unequal_halves_are_not_the_plain_mean(report):
    # With 3 + 2 rows DDP weighs each rank's mean equally, not each row: a different objective
    c = report[1]["cases"]["unequal_3_2"]
    assert c["plain_full_batch_loss_abs_diff"] > 1e-3


def test_without_gathering_the_gradients_differ(report):
    # The control: local negatives only is a different loss, and the comparison sees it
    c = report[1]["cases"]["control_no_gather_3_3"]
    assert c["grad_max_abs_diff"] > 1e-3 and c["passed"]


@pytest.mark.slow
def test_strategy_ddp_reruns_train_in_rank_0s_directory_and_rank_0_alone_writes(tmp_path):
    # Given `python -m embedft.run trainer.strategy=ddp trainer.devices=2` on CPU: Lightning
    # re-runs the command line for rank 1 (LOCAL_RANK=1), into rank 0's run directory
    data = tmp_path / "triplets.csv"
    rows = [f"a sentence {i},text {i},other {i}" for i in range(16)]
    data.write_text("\n".join(["sent0,sent1,hard_neg", *rows]) + "\n")
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    done = subprocess.run(
        [
            sys.executable, "-m", "embedft.run", "model=tiny_llama", "data=local",
            f"data.path={data}", "data.batch_size=2", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=2", "logger=csv",
            "trainer.enable_progress_bar=false", "eval.every_n_steps=0", "eval.after_fit=false",
            f"hydra.run.dir={out}",
        ],
        cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    # Then rank 1 trained beside rank 0 instead of refusing the directory as "in use", and the
    # one results.json says completed after 2 steps
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert (results["status"], results["train"]["global_step"]) == ("completed", 2)
    assert (out / "train_ddp_process_1.log").is_file()  # Lightning's re-launched rank ran
