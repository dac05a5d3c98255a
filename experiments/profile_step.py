"""Where a training step's time goes: torch.profiler over embedft's step, ops grouped by kind.

    python experiments/profile_step.py [--model smollm2] [--dtype bfloat16] [--batch-size 60]
                                       [--steps 3] [--variants before now]

Each variant runs in its own subprocess: the model (``build_embedder``, the paper's LoRA), a
batch of real NLI triplets (``data/nli_triplets.csv`` in file order, collated as training does),
one warm-up step, then ``--steps`` profiled steps of exactly what ``EmbeddingModule`` runs
(``embed_batch`` -> InfoNCE -> backward -> AdamW). Self CPU time of every op is summed into the
kinds below; collation is timed apart (it runs in the data loader, before the step).

* ``now``: embedft's defaults.
* ``before``: the step as it was before this profile was taken: SDPA under the block-diagonal
  mask over rows of 128 packed tokens, peft's ``nn.Dropout`` for LoRA, LoRA matmuls in fp32
  (experiments/bench_train.py's ablations ``block_mask_attention``, ``torch_dropout``,
  ``fp32_lora`` together).

Writes ``experiments/results/profile_step.{json,md}``; the Markdown table is generated from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_common  # experiments/bench_common.py: config, triplets, load
import bench_train  # experiments/bench_train.py: the ablation hooks

RESULTS = Path(__file__).resolve().parent / "results"
MARK = "PROFILE_RESULT "
# kind -> op names (self CPU time); anything else is "other"
KINDS: dict[str, tuple[str, ...]] = {
    "linear matmuls (mm/addmm)": ("aten::mm", "aten::addmm"),
    "attention kernels (bmm, sdpa, softmax)": (
        "aten::bmm",
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
        "aten::masked_fill_",
    ),
    "dropout masks (RNG)": ("aten::bernoulli_", "aten::random_", "aten::bitwise_and", "aten::ge"),
    "casts and copies": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
    "gathers and concatenation": (
        "aten::index",
        "aten::cat",
        "aten::index_put_",
        "aten::_index_put_impl_",
    ),
    "elementwise (norms, rotary, activations, residuals)": (
        "aten::mul",
        "aten::mul_",
        "aten::add",
        "aten::add_",
        "aten::sub",
        "aten::div",
        "aten::div_",
        "aten::pow",
        "aten::rsqrt",
        "aten::mean",
        "aten::neg",
        "aten::silu",
        "aten::silu_backward",
        "aten::gelu",
        "aten::gelu_backward",
        "aten::sum",
        "aten::fill_",
        "aten::zero_",
        "aten::where",
    ),
    "optimizer (AdamW)": (
        "aten::_foreach_",
        "aten::lerp_",
        "aten::addcmul_",
        "aten::addcdiv_",
        "aten::sqrt",
    ),
}
VARIANT_HOOKS = {"now": [], "before": ["block_mask", "torch_dropout", "fp32_lora"]}


def kind_of(op: str) -> str:
    for kind, names in KINDS.items():
        if any(op == n or (n.endswith("_") and op.startswith(n)) for n in names):
            return kind
    return "other"


def worker(args) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from embedft.data.datamodule import TripletCollator
    from embedft.losses.infonce import InfoNCELoss
    from embedft.model.embedder import build_embedder
    from embedft.module import EmbeddingModule

    overrides = ["embed.pack_len=128"] if args.variant == "before" else []
    cfg = bench_common.embedft_config(args, overrides)
    torch.manual_seed(cfg.seed)
    embedder = build_embedder(cfg.model, cfg.lora, embed_cfg=cfg.embed).train()
    for hook in VARIANT_HOOKS[args.variant]:
        bench_train.undo_speedup(embedder, hook)
    rows = bench_common.read_triplets(args.batch_size * (args.steps + 1))
    triplets = [
        {"anchor": r["sent0"], "positive": r["sent1"], "negative": r["hard_neg"]} for r in rows
    ]
    collate = TripletCollator(embedder.tokenizer, cfg.model.max_length, cfg.model.append_eos)
    started = time.perf_counter()
    batches = [
        collate(triplets[i : i + args.batch_size]) for i in range(0, len(triplets), args.batch_size)
    ]
    collate_s = (time.perf_counter() - started) / len(batches)
    module = EmbeddingModule(embedder, InfoNCELoss(), cfg.optim, 10)
    params = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

    def step(batch) -> None:
        loss = module.loss_from_embeddings(module.embed_batch(batch), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for batch in batches[1:]:
            step(batch)
        wall = (time.perf_counter() - started) / args.steps
    kinds: dict[str, float] = {}
    ops: dict[str, float] = {}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1e3 / args.steps
        if ms <= 0:
            continue
        ops[event.key] = ms
        kinds[kind_of(event.key)] = kinds.get(kind_of(event.key), 0.0) + ms
    result = {
        "variant": args.variant,
        "step_wall_s": round(wall, 3),
        "collate_s": round(collate_s, 4),
        "real_tokens_per_step": sum(int(b["attention_mask"].sum()) for b in batches[1:])
        // args.steps,
        "kinds_ms": {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_ops_ms": {k: round(v, 1) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:15]},
    }
    print(MARK + json.dumps(result), flush=True)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    runs = {r["variant"]: r for r in report["runs"]}
    kinds = list(dict.fromkeys(k for r in runs.values() for k in r["kinds_ms"]))
    lines = [
        "# Where a training step's time goes",
        "",
        f"Generated by `experiments/profile_step.py`: {s['model']}, {s['dtype']}, batch "
        f"{s['batch_size']} triplets, max length {s['max_length']}, mean of {s['steps']} "
        f"profiled steps after one warm-up, torch.profiler self CPU time per step (profiling adds "
        f"overhead: the wall times are the profiled ones). Load average before/after: "
        f"{report['loadavg_start']} / {report['loadavg_end']}.",
        "",
        "| kind | " + " | ".join(f"{v} ms" for v in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for kind in kinds:
        lines.append(
            f"| {kind} | "
            + " | ".join(str(r["kinds_ms"].get(kind, 0)) for r in runs.values())
            + " |"
        )
    lines.append(
        "| **step wall time** | "
        + " | ".join(f"**{1000 * r['step_wall_s']:.0f}**" for r in runs.values())
        + " |"
    )
    lines.append(
        "| collation (data loader, outside the step) | "
        + " | ".join(f"{1000 * r['collate_s']:.1f}" for r in runs.values())
        + " |"
    )
    lines += ["", "Variants: `now` = embedft's defaults; `before` = " + VARIANT_DOC, ""]
    for name, r in runs.items():
        top = ", ".join(f"{k} {v}" for k, v in list(r["top_ops_ms"].items())[:8])
        lines.append(f"- `{name}` top ops (ms/step): {top}")
    return "\n".join(lines) + "\n"


VARIANT_DOC = (
    "block-mask SDPA over rows of 128 tokens, peft's nn.Dropout, fp32 LoRA matmuls (the step "
    "before embedft/model/attention.py and embedft/model/lora.py)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=150)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--variants", nargs="+", default=["before", "now"], choices=list(VARIANT_HOOKS)
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "profile_step.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="now", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = "cpu"
    if args.worker:
        worker(args)
        return
    bench_common.ensure_triplets()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "worker", "variant")},
        "loadavg_start": bench_common.loadavg(),
        "runs": [],
    }
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--worker", f"--variant={variant}", f"--model={args.model}",
               f"--dtype={args.dtype}", f"--batch-size={args.batch_size}",
               f"--max-length={args.max_length}", f"--steps={args.steps}"]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        result = json.loads(next(ln for ln in out.splitlines() if ln.startswith(MARK))[len(MARK) :])
        report["runs"].append(result)
        print(json.dumps(result), flush=True)
    report["loadavg_end"] = bench_common.loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
