"""The benchmark scripts run (tiny models, no timing assertions) and what they count is exact.

* ``experiments/flops.py``: the FLOP count on a hand-sized model; ``experiments/gpu_mfu.py`` runs
  on CPU in its tiny mode (packed = padded embeddings there too).
* ``experiments/bench_train.py`` and ``bench_memory.py`` run end to end on tiny_llama (slow).

That the layouts they measure compute the same embeddings is tests/test_packing.py's job.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from embedft.paths import repo_root


def _load(script: str):
    if str(repo_root() / "experiments") not in sys.path:  # scripts import their siblings
        sys.path.insert(0, str(repo_root() / "experiments"))
    path = repo_root() / "experiments" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(script, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_flop_count_by_hand():
    # Given a decoder with hidden 4, 1 layer, 2 heads of 2, 1 KV head, MLP 8, LoRA r=1
    from transformers import GemmaConfig

    flops = _load("flops")
    cfg = GemmaConfig(
        hidden_size=4,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=2,
        vocab_size=10,
    )
    # linear weights: q 4x4 + k 4x2 + v 4x2 + o 4x4 + 3 MLP 4x8 = 16+8+8+16+96 = 144
    # one sequence of 3 tokens: matmuls fwd 2*144*3 = 864, bwd (input grads only) 864;
    # attention fwd 2*2*(3*4/2)*4 = 96, bwd 192; LoRA q (4+4) + v (4+2) = 14 per rank,
    # fwd 2*1*14*3 = 84, bwd 168
    assert flops.step_flops(cfg, [3], 1, ["q_proj", "v_proj"]) == 864 * 2 + 96 * 3 + 84 * 3
    # And two texts of 3 count twice one text of 3 (attention is per text, not per packed row)
    assert flops.step_flops(cfg, [3, 3], 1, ["q_proj", "v_proj"]) == 2 * (864 * 2 + 96 * 3 + 84 * 3)
    assert flops.linear_params(cfg) == 144


def test_matmul_peak_is_a_positive_rate():
    import torch

    assert _load("flops").matmul_peak(torch.float32, size=256, repeats=1) > 0


def test_bench_train_compares_each_ablation_with_the_default_run_next_to_it():
    # Given the load doubles between two (default, ablation) pairs: defaults 10 then 20
    bench = _load("bench_train")

    def run(variant, tps, pair=None):
        r = {
            "dtype": "bfloat16",
            "framework": "embedft",
            "variant": variant,
            "triplets_per_s": tps,
            "tokens_per_s": tps,
            "flops_per_s": tps,
            "padding_factor": 1.0,
            "peak_rss_mb": 1.0,
        }
        return r if pair is None else {**r, "paired_default": pair}

    runs = [
        run("default", 10.0),
        run("eager", 12.0, 0),
        run("default", 20.0),
        run("eager", 22.0, 2),
    ]
    # When summarised / Then each ablation run is divided by its own pair: 1.2 and 1.1, median 1.15
    # (the unpaired figure would be median 17 / median default 15 = 1.133)
    row = bench.summarize(runs, {"bfloat16": 100.0})["table"]["bfloat16:embedft:eager"]
    assert row["paired_ratios"] == [1.2, 1.1]
    assert row["speed_vs_embedft_default"] == 1.15


def _script(args, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    result = subprocess.run(
        [sys.executable, *args],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_gpu_mfu_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_mfu.json"
    _script(
        ["experiments/gpu_mfu.py", "--tiny", "--device=cpu", "--batches", "4", "--steps=1",
         "--warmup=1", "--configs", "sorted:sdpa", "pack@64:sdpa", "pack:varlen", f"--out={out}"]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["packing_max_abs_diff"] < 1e-5
    configs = [r["config"] for r in report["results"]]
    assert configs == ["sorted:sdpa", "pack@64:sdpa", "pack:varlen"]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in report["results"])
    assert (tmp_path / "gpu_mfu.md").is_file()


def _needs_triplets():
    if not (repo_root() / "data" / "nli_triplets.csv").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("data/nli_triplets.csv missing: run `make data`")
        pytest.skip("data/nli_triplets.csv missing: run `make data`")


@pytest.mark.slow
def test_bench_train_runs_tiny_and_both_frameworks_compute_the_same_loss(tmp_path):
    _needs_triplets()
    out = tmp_path / "bench_train.json"
    _script(
        ["experiments/bench_train.py", "--model=tiny_llama", "--batch-size=4", "--max-length=512",
         "--steps=2", "--warmup=1", "--rounds=1", "--dtypes", "float32", "--ablation-dtype",
         "float32", "--ablations", "sub_batches", "lm_head", "block_mask_attention",
         "torch_dropout", f"--out={out}"]
    )  # fmt: skip
    report = json.loads(out.read_text())
    runs = {f"{r['framework']}:{r['variant']}": r for r in report["runs"]}
    assert not [r for r in report["runs"] if "error" in r]
    ours, st = runs["embedft:default"], runs["st:MNRL"]
    # same texts, same tokens, same objective on the same (untrained) embeddings
    assert ours["real_tokens"] == st["real_tokens"] and st["texts_at_max_length"] == 0
    assert ours["loss_at_init"] == pytest.approx(st["loss_at_init"], abs=1e-4)
    for variant in ("lm_head", "sub_batches", "block_mask_attention", "torch_dropout"):
        assert runs[f"embedft:{variant}"]["loss_at_init"] == pytest.approx(
            ours["loss_at_init"], abs=1e-4
        )
    assert ours["packed"] and not runs["embedft:sub_batches"]["packed"]
    summary = report["summary"]["by_dtype"]["float32"]
    assert summary["triplets_per_s"] > 0 and 0 < summary["embedft_of_peak"]
    assert report["peaks"]["float32"] > 0 and ours["flops_per_s"] > 0
    assert (tmp_path / "bench_train.md").is_file()


@pytest.mark.slow
def test_bench_memory_runs_tiny(tmp_path):
    _needs_triplets()
    out = tmp_path / "bench_memory.json"
    _script(
        ["experiments/bench_memory.py", "--model=tiny_llama", "--batches", "4", "8",
         "--chunk=64", "--second-chunk=16", "--max-length=32", "--checkpointing-batch=4",
         f"--out={out}"]
    )  # fmt: skip
    report = json.loads(out.read_text())
    kinds = {(r["batch"], r["grad_cache"], r["checkpointing"]) for r in report["runs"]}
    assert {(4, 0, False), (4, 64, False), (8, 0, False), (8, 64, False), (8, 16, False)} <= kinds
    assert (4, 0, True) in kinds
    assert all("error" not in r and r["peak_rss_mb"] > 0 for r in report["runs"])
    ratio = report["grad_cache_peak_ratio"]
    assert (ratio["small"], ratio["large"]) == (4, 8) and ratio["ratio"] > 0
