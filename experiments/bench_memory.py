"""Peak memory of one training step: gradient caching across batch sizes, gradient checkpointing.

    python experiments/bench_memory.py [--batches 64 256 512] [--chunk 1024] [--max-length 64]
                                       [--checkpointing-batch 64]

Every figure is one optimizer step of embedft's real training path (``EmbeddingModule`` in a
Lightning ``Trainer``, smollm2, ``--dtype`` (fp32 by default) on CPU, the paper's LoRA, triplets from
``data/nli_triplets.csv``) in a fresh subprocess, whose peak RSS (``ru_maxrss`` of that child) is
the figure. A run with no training (model loaded, nothing else) gives the floor; "activations" is
peak minus floor.

* Gradient caching (``embed.grad_cache_chunk_tokens``): each batch size with and without it.
  Without it the activations of the whole batch are alive at once; with it, those of one chunk of
  at most ``--chunk`` tokens. A second chunk size at the middle batch shows that the chunk, not
  the batch, sets the peak; the summary gives the peak at the largest batch over the peak at the
  smallest, same chunk (target: <= 1.15).
* Gradient checkpointing (``trainer.gradient_checkpointing``): on/off at one batch size.

The machine is shared: a run is killed past ``--rss-cap-gb`` (default: available memory - 2 GB),
and a run whose activations, extrapolated linearly in real tokens from the previous batch size,
would pass the cap is skipped; both are reported. Figures go to
``experiments/results/bench_memory.json`` and a Markdown table generated from it (``.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench_common import (
    RESULTS,
    default_rss_cap_gb,
    ensure_triplets,
    environment,
    loadavg,
    spawn,
)


def run_step(args, batch: int, extra: list[str], cap: float) -> dict[str, Any]:
    worker = [
        f"--model={args.model}",
        f"--batch-size={batch}",
        f"--dtype={args.dtype}",
        f"--max-length={args.max_length}",
        "--steps=1",
        "--warmup=0",
        "--device=cpu",
        "--no-init-check",
        *extra,
    ]
    result = spawn(worker, cap, args.timeout_s)
    row = {
        "batch": batch,
        "peak_rss_mb": result["peak_rss_mb"],
        "step_s": result.get("timed_s"),
        "real_tokens": result.get("real_tokens"),
        "padded_tokens": result.get("padded_tokens"),
        "loadavg_end": result.get("loadavg_end"),
    }
    if "error" in result:
        row["error"] = result["error"][:500]
        row["peak_rss_mb_at_least"] = result.get("peak_rss_mb_at_least")
    print(json.dumps({"extra": extra, **row}), flush=True)
    return row


def predicted_mb(floor: float, previous: dict[str, Any] | None, tokens: int) -> float | None:
    """Peak RSS extrapolated linearly in real tokens from a smaller run (None: nothing to go on)."""
    if not previous or "error" in previous or not previous.get("real_tokens"):
        return None
    return floor + (previous["peak_rss_mb"] - floor) * tokens / previous["real_tokens"]


def real_tokens(args, batch: int) -> int:
    """Real (non-padding) tokens of the first ``batch`` triplets, as the training step sees them."""
    from bench_common import embedft_config, read_triplets

    from embedft.data.datamodule import TripletCollator
    from embedft.model.sources import load_tokenizer

    cfg = embedft_config(args, [])
    rows = read_triplets(batch)
    triplets = [
        {"anchor": r["sent0"], "positive": r["sent1"], "negative": r["hard_neg"]} for r in rows
    ]
    collate = TripletCollator(load_tokenizer(cfg.model), args.max_length, cfg.model.append_eos)
    return int(collate(triplets)["attention_mask"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--chunk", type=int, default=1024, help="grad cache chunk (tokens)")
    parser.add_argument("--second-chunk", type=int, default=256, help="at the middle batch")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--checkpointing-batch", type=int, default=64)
    parser.add_argument("--rss-cap-gb", type=float, default=None)
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_memory.json")
    args = parser.parse_args()
    args.device, args.steps, args.batch_size = "cpu", 1, args.batches[0]  # for embedft_config

    ensure_triplets()
    cap = args.rss_cap_gb or default_rss_cap_gb()
    env = {**environment("cpu"), "loadavg_start": loadavg(), "rss_cap_gb": cap}
    print(f"load average {loadavg()}; RSS cap {cap} GB", flush=True)
    floor = run_step(args, args.batches[0], ["--framework=idle"], cap)
    rows: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    for batch in args.batches:
        tokens = real_tokens(args, batch)
        guess = predicted_mb(floor["peak_rss_mb"], previous, tokens)
        if guess is not None and guess > cap * 1024:
            row = {
                "batch": batch,
                "real_tokens": tokens,
                "skipped": (
                    f"predicted peak {guess / 1024:.1f} GB (linear in tokens from batch "
                    f"{previous['batch']}) > cap {cap} GB"
                ),
            }
            print(json.dumps(row), flush=True)
        elif previous is not None and "error" in previous:
            row = {"batch": batch, "real_tokens": tokens, "skipped": "a smaller batch failed"}
        else:
            row = run_step(args, batch, [], cap)
            previous = row
        rows.append({"grad_cache": 0, "checkpointing": False, **row})
        cached = run_step(
            args, batch, [f"--override=embed.grad_cache_chunk_tokens={args.chunk}"], cap
        )
        rows.append({"grad_cache": args.chunk, "checkpointing": False, **cached})
    middle = args.batches[len(args.batches) // 2]
    if args.second_chunk:
        extra = [f"--override=embed.grad_cache_chunk_tokens={args.second_chunk}"]
        rows.append(
            {
                "grad_cache": args.second_chunk,
                "checkpointing": False,
                **run_step(args, middle, extra, cap),
            }
        )
    ckpt = run_step(
        args, args.checkpointing_batch, ["--override=trainer.gradient_checkpointing=true"], cap
    )
    rows.append({"grad_cache": 0, "checkpointing": True, **ckpt})
    if args.checkpointing_batch not in args.batches:
        rows.append(
            {
                "grad_cache": 0,
                "checkpointing": False,
                **run_step(args, args.checkpointing_batch, [], cap),
            }
        )
    env["loadavg_end"] = loadavg()
    report = {
        "settings": {
            "model": args.model,
            "max_length": args.max_length,
            "chunk": args.chunk,
            "dtype": args.dtype,
        },
        "environment": env,
        "floor": floor,
        "runs": rows,
        "grad_cache_peak_ratio": peak_ratio(rows, args.chunk, args.batches),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


def peak_ratio(rows: list[dict[str, Any]], chunk: int, batches: list[int]) -> dict[str, Any]:
    """Peak RSS at the largest batch over the smallest, both with gradient caching of ``chunk``."""
    peaks = {
        r["batch"]: r["peak_rss_mb"]
        for r in rows
        if r["grad_cache"] == chunk
        and not r["checkpointing"]
        and "peak_rss_mb" in r
        and "error" not in r
        and "skipped" not in r
    }
    small, large = min(batches), max(batches)
    if small not in peaks or large not in peaks:
        return {"small": small, "large": large, "ratio": None, "note": "a run is missing"}
    ratio = round(peaks[large] / peaks[small], 3)
    return {"small": small, "large": large, "ratio": ratio, "target": 1.15, "met": ratio <= 1.15}


def markdown(report: dict[str, Any]) -> str:
    env, s, floor = report["environment"], report["settings"], report["floor"]["peak_rss_mb"]
    lines = [
        "# Peak memory of one training step: gradient caching and checkpointing",
        "",
        f"Generated by `experiments/bench_memory.py`: {s['model']}, {s.get('dtype', 'float32')} on CPU, max length "
        f"{s['max_length']}, one optimizer step per fresh subprocess; peak RSS of that process. "
        f"Floor (model loaded, no step): {floor} MB. RSS cap {env['rss_cap_gb']} GB. "
        f"Load average before/after: {env['loadavg_start']} / {env['loadavg_end']}.",
        "",
        "| triplets | real tokens | grad cache chunk (tokens) | checkpointing | peak RSS MB "
        "| activations MB | step s |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in report["runs"]:
        if "skipped" in r or "error" in r:
            note = r.get("skipped") or f"killed/failed: {r['error'][:120]}"
            lines.append(
                f"| {r['batch']} | {r.get('real_tokens', '')} | {r['grad_cache'] or 'off'} "
                f"| {'on' if r['checkpointing'] else 'off'} | {note} | | |"
            )
            continue
        lines.append(
            f"| {r['batch']} | {r['real_tokens']} | {r['grad_cache'] or 'off'} | "
            f"{'on' if r['checkpointing'] else 'off'} | {r['peak_rss_mb']} | "
            f"{round(r['peak_rss_mb'] - floor, 1)} | {r['step_s']} |"
        )
    ratio = report.get("grad_cache_peak_ratio") or {}
    if ratio.get("ratio") is not None:
        lines += [
            "",
            f"Gradient caching ({s['chunk']} tokens a chunk): peak RSS at {ratio['large']} "
            f"triplets / at {ratio['small']}: **{ratio['ratio']}x** (target <= 1.15: "
            f"{'met' if ratio['met'] else 'NOT met'}).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
