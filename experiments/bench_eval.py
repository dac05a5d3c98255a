"""Throughput of embedft's STS encoder vs sentence-transformers' ``encode``, same model and texts.

    python experiments/bench_eval.py [--models smollm2 minilm] [--tasks <the 9 STS tasks>]
                                     [--pairs-per-task 200] [--batch-size 256] [--st-batch-size 64]
                                     [--dtype float32] [--repeats 3]

For each model both libraries embed the same list: what the STS evaluator encodes for the first
``--pairs-per-task`` pairs of each of ``--tasks`` (their sentence1s and sentence2s, duplicates
included, since deduplication is part of what embedft's evaluator does). sentence-transformers
also runs on the deduplicated list, which isolates batching from deduplication. The outputs of the
two are compared (cosine of every embedding pair, and each task's Spearman score on the sampled
pairs: they must agree to 1e-4); a model whose outputs disagree is flagged as not comparable.
embedft encodes as its evaluator does (``encode_texts``: deduplicated, longest first, packed
for decoders) with ``--batch-size`` texts a forward; sentence-transformers with
``--st-batch-size`` (its ``encode`` sorts by length too).

sentence-transformers computes what embedft computes:
* smollm2 (decoder): ``models.Transformer`` on the converted directory embedft loads, with a
  text-only modality config (sentence-transformers 6 otherwise renders text through the
  tokenizer's chat template), + ``Pooling("lasttoken")``; each text gets the EOS token string
  appended, which the tokenizer maps to the EOS id, as embedft's tokenize does.
* minilm (encoder): the packaged model as shipped (mean pooling + Normalize).

Sentences per second = texts in the list / wall time, the best of at least ``--repeats`` runs
(fast models repeat for ``--min-seconds``: on a shared machine only the minimum of many runs is
stable). The ratio is sentence-transformers' time / embedft's (>1: embedft is faster), from wall
time and from this process's CPU time. Figures go to ``experiments/results/bench_eval.json`` and
a Markdown table generated from it (``.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from embedft.config import ModelConfig, to_object
from embedft.eval.encoder import encode_texts
from embedft.eval.sts import cosine_spearman, load_tasks
from embedft.eval.tasks import STS_TASKS
from embedft.model.embedder import Embedder, build_embedder
from embedft.model.sources import resolve_model_dir
from embedft.paths import conf_dir, repo_root

RESULTS = repo_root() / "experiments" / "results"
MIN_COSINE = 0.999  # fp32 on both sides: anything lower means they compute different things
MAX_REPEATS = 20


def model_config(name: str) -> ModelConfig:
    path = conf_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
        raise FileNotFoundError(f"no model config {path}; known models: {known}")
    return to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))


def sentence_transformer_for(cfg: ModelConfig, embedder: Embedder, device: str) -> Any:
    """A SentenceTransformer computing the same embedding as ``embedder``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    model_dir = resolve_model_dir(cfg)
    if cfg.source == "package":  # a complete sentence-transformers model directory (minilm)
        model = SentenceTransformer(model_dir, device=device)
        model.max_seq_length = cfg.max_length
        return model
    transformer = modules.Transformer(
        model_dir,
        max_seq_length=cfg.max_length,
        # Text only: no "message" modality, so no chat template around the text.
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
        model_kwargs={"dtype": next(embedder.parameters()).dtype},
    )
    transformer.tokenizer.pad_token = embedder.tokenizer.pad_token
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling], device=device)


def st_texts(cfg: ModelConfig, embedder: Embedder, texts: list[str]) -> list[str]:
    if not cfg.append_eos:
        return texts
    return [t + embedder.tokenizer.eos_token for t in texts]


def task_scores(emb: torch.Tensor, pairs: dict[str, Any]) -> dict[str, float]:
    """Spearman x 100 of each task's sampled pairs, from embeddings of ``sample_texts``' list."""
    scores, start = {}, 0
    for task, p in pairs.items():
        n = len(p.sentences1)
        e = emb.float().numpy()
        scores[task] = cosine_spearman(e[start : start + n], e[start + n : start + 2 * n], p.scores)
        start += 2 * n
    return scores


def bench_model(
    name: str, texts: list[str], pairs: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    cfg = model_config(name)
    cfg.dtype = args.dtype
    embedder = build_embedder(cfg, None, device=args.device)
    st_model = sentence_transformer_for(cfg, embedder, args.device)
    st_all = st_texts(cfg, embedder, texts)
    st_unique = list(dict.fromkeys(st_all))

    def run_embedft(batch: list[str]) -> torch.Tensor:
        return encode_texts(embedder, batch, args.batch_size)

    def run_st(batch: list[str]) -> torch.Tensor:
        return st_model.encode(batch, batch_size=args.st_batch_size, convert_to_tensor=True).cpu()

    run_embedft(texts[:8])  # warm-up: first-call allocations and kernel selection
    run_st(st_all[:8])
    # Alternate the runs, so that load from other processes hits both alike. embedft encodes
    # each distinct text once, so its run on the full list is also its unique-only run.
    # CPU time (this process, all threads) is recorded beside wall time: on a shared machine
    # it is the steadier measure of the work done.
    wall: dict[str, list[float]] = {"st": [], "embedft": [], "st_unique": []}
    cpu: dict[str, list[float]] = {k: [] for k in wall}
    outputs: dict[str, torch.Tensor] = {}
    started, repeats = time.perf_counter(), 0
    # Fast models repeat until --min-seconds have passed, so that the minimum of many short runs
    # finds the quiet moments of a shared machine.
    while repeats < args.repeats or (
        time.perf_counter() - started < args.min_seconds and repeats < MAX_REPEATS
    ):
        repeats += 1
        for key, fn, batch in (
            ("st", run_st, st_all),
            ("embedft", run_embedft, texts),
            ("st_unique", run_st, st_unique),
        ):
            start, start_cpu = time.perf_counter(), time.process_time()
            outputs[key] = fn(batch)
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    cosine = torch.nn.functional.cosine_similarity(
        outputs["embedft"], outputs["st"].float(), dim=-1
    )  # (N,)
    ours_scores = task_scores(outputs["embedft"], pairs)
    st_scores = task_scores(outputs["st"], pairs)
    score_diff = max(abs(ours_scores[t] - st_scores[t]) for t in ours_scores)
    st_s, ours_s, st_u = (min(wall[k]) for k in ("st", "embedft", "st_unique"))
    st_c, ours_c, st_uc = (min(cpu[k]) for k in ("st", "embedft", "st_unique"))
    row: dict[str, Any] = {
        "model": name,
        "n_sentences": len(texts),
        "n_unique": len(st_unique),
        "repeats": repeats,
        "min_cosine": round(cosine.min().item(), 6),
        "mean_cosine": round(cosine.mean().item(), 6),
        "scores_embedft": {t: round(v, 6) for t, v in ours_scores.items()},
        "scores_st": {t: round(v, 6) for t, v in st_scores.items()},
        "max_score_diff": float(f"{score_diff:.3g}"),
        "scores_agree_1e-4": score_diff <= 1e-4,
        "st_sps": round(len(texts) / st_s, 1),
        "embedft_sps": round(len(texts) / ours_s, 1),
        "ratio_wall": round(st_s / ours_s, 3),
        "ratio_cpu": round(st_c / ours_c, 3),
        "unique_ratio_wall": round(st_u / ours_s, 3),
        "unique_ratio_cpu": round(st_uc / ours_c, 3),
        "wall_s": {k: [round(t, 3) for t in v] for k, v in wall.items()},
        "cpu_s": {k: [round(t, 3) for t in v] for k, v in cpu.items()},
    }
    if cosine.min().item() < MIN_COSINE and args.dtype == "float32":
        row["error"] = f"outputs disagree (min cosine {cosine.min().item():.4f})"
    return row


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# STS encoder throughput: embedft vs sentence-transformers",
        "",
        f"Generated by `experiments/bench_eval.py` on {env['device']} "
        f"({env['torch_threads']} torch threads, {env['cpu_count']} CPUs), torch {env['torch']}, "
        f"sentence-transformers {env['sentence_transformers']}, {report['dtype']}. The first "
        f"{report['pairs_per_task']} pairs of each of {', '.join(report['tasks'])}; batch size "
        f"{report['batch_size']} texts (embedft) / {report['st_batch_size']} "
        f"(sentence-transformers); best of >= {report['repeats']} runs each.",
        "",
        "| model | sentences (unique) | runs | min cos | max task score diff | ST sent/s "
        "| embedft sent/s | ratio (wall) | ratio (CPU time) | unique-only ratio (wall) | (CPU time) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["models"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['n_sentences']} | | | {r['error']} ||||||")
            continue
        lines.append(
            f"| {r['model']} | {r['n_sentences']} ({r['n_unique']}) | {r['repeats']} | "
            f"{r['min_cosine']:.5f} | {r['max_score_diff']:.2g} | "
            f"{r['st_sps']} | {r['embedft_sps']} | **{r['ratio_wall']:.2f}** | "
            f"{r['ratio_cpu']:.2f} | {r['unique_ratio_wall']:.2f} | {r['unique_ratio_cpu']:.2f} |"
        )
    lines += [
        "",
        "ratio = sentence-transformers time / embedft time (> 1: embedft is faster), best of the "
        "repeats. Unique-only: sentence-transformers on the deduplicated list (embedft always "
        "encodes each distinct text once). Load average at the start: "
        f"{env['load_average']}; with other processes on the CPUs, CPU time is the steadier "
        "figure.",
        "",
        f"For scale: the 9-task STS suite holds {report['suite']['sentences']} sentences, "
        f"{report['suite']['unique']} of them distinct, so deduplication alone makes embedft's "
        f"suite evaluation {report['suite']['sentences'] / report['suite']['unique']:.2f}x "
        "less work than encoding every sentence.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "minilm"])
    parser.add_argument("--tasks", nargs="+", default=list(STS_TASKS))
    parser.add_argument("--pairs-per-task", type=int, default=200, help="first N pairs of each")
    parser.add_argument("--batch-size", type=int, default=256, help="embedft: texts a forward")
    parser.add_argument("--st-batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3, help="at least this many timed runs")
    parser.add_argument("--min-seconds", type=float, default=90.0, help="keep repeating until")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_eval.json")
    args = parser.parse_args()

    n = args.pairs_per_task
    pairs = {
        t: dataclasses.replace(
            p, sentences1=p.sentences1[:n], sentences2=p.sentences2[:n], scores=p.scores[:n]
        )
        for t, p in load_tasks(args.tasks).items()
    }
    # per task: its sentence1s then its sentence2s, as the evaluator encodes them
    texts = [s for p in pairs.values() for s in (*p.sentences1, *p.sentences2)]
    import sentence_transformers

    report: dict[str, Any] = {
        "tasks": args.tasks,
        "pairs_per_task": args.pairs_per_task,
        "batch_size": args.batch_size,
        "st_batch_size": args.st_batch_size,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "environment": {
            "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
        },
        "models": [],
    }
    # The whole 9-task suite, for scale: how much encoding deduplication saves there.
    suite = load_tasks(list(STS_TASKS))
    suite_texts = [s for p in suite.values() for s in (*p.sentences1, *p.sentences2)]
    report["suite"] = {"sentences": len(suite_texts), "unique": len(set(suite_texts))}
    for name in args.models:
        row = bench_model(name, texts, pairs, args)
        report["models"].append(row)
        print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
