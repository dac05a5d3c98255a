"""Training throughput and peak memory: embedft vs sentence-transformers, plus embedft ablations.

    python experiments/bench_train.py [--batch-size 60] [--max-length 150] [--steps 6]
                                      [--warmup 1] [--rounds 3] [--dtypes float32 bfloat16]
                                      [--ablations all|none|NAME ...] [--ablation-dtype bfloat16]
                                      [--ablation-rounds 1]

Both frameworks train smollm2 (the safetensors directory embedft converts from the GGUF) with the
paper's LoRA (r=8, alpha=32, dropout 0.1, gaussian init, q_proj/v_proj) on the same triplets
(``data/nli_triplets.csv`` in file order, no shuffling; built with ``python -m embedft.prepare_nli``
if missing), the same batch size, max length and number of optimizer steps, in each of
``--dtypes`` (both sides in the same dtype: bf16 weights and bf16 autocast, LoRA weights fp32):

* embedft: the real training path: ``EmbeddingModule`` in a Lightning ``Trainer`` fed by
  ``TripletDataModule`` (config composed from ``conf/`` with Hydra overrides), logger and
  checkpointing off, no evaluation. Its step packs the texts without padding (``Embedder.embed``
  with the ``embed`` config group's defaults).
* sentence-transformers: ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss``
  (scale 20 = 1/tau, cosine, anchor -> positives + negatives: the paper's Eq. 1), a text-only
  ``Transformer`` module (no chat template) + ``Pooling("lasttoken")``, every text given the EOS
  token string (the tokenizer maps it to the EOS id, as embedft appends it), a sequential batch
  sampler, AdamW, no gradient clipping. LoRA goes through ``add_adapter`` when that works; with
  peft < 0.22 transformers refuses it, and the same LoRA is applied with ``peft.get_peft_model`` on
  ``model[0].auto_model`` instead (the result says which).

Every run is its own subprocess, so its peak RSS (``ru_maxrss`` from ``os.wait4``) belongs to one
framework; embedft and sentence-transformers alternate (embedft, ST, embedft, ST) so that load
from other processes hits both alike. Throughput counts the steps after ``--warmup``: triplets/s
and real (non-padding) tokens/s, from the end of the last warm-up step to the end of the last
step (data loading and collation included). A watchdog kills a run whose RSS passes ``--rss-cap-gb``.

Against the machine: the same run measures the matmul peak of each dtype (``torch.mm`` of
2048 x 2048 matrices, best of several, before and after the runs; ``experiments/flops.py``) and
counts each step's model FLOPs from its texts' lengths (``flops.step_flops``; the method is
written into the results). Achieved FLOP/s = counted FLOPs / timed seconds, shown as % of that
dtype's peak (targets: bf16 >= 60%, fp32 >= 80%).

Ablations (embedft only, in ``--ablation-dtype``, one switch each against the default): see
``ABLATIONS``. Each ablation run follows a default run of its own, ``--ablation-rounds`` such
pairs per ablation, and its speed is the median of its ratios to those paired runs: the load on
a shared machine drifts by +-10% over minutes, more than most ablations change. Figures go to
``experiments/results/bench_train.json`` and a Markdown summary generated from it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import flops  # experiments/flops.py
from bench_common import (
    MARK,
    RESULTS,
    default_rss_cap_gb,
    embedft_config,
    ensure_triplets,
    environment,
    finish,
    loadavg,
    read_triplets,
    spawn,
)
from bench_st import worker_st
from bench_train_report import markdown, summarize

DTYPES = ("float32", "bfloat16")

# name -> (what it switches, Hydra overrides, worker hook); hooks are implemented in the worker.
ABLATIONS: dict[str, tuple[str, list[str], str | None]] = {
    "block_mask_attention": (
        "SDPA under the block-diagonal mask over rows of 128 packed tokens (the attention before "
        "embedft/model/attention.py)",
        ["embed.pack_len=128"],
        "block_mask",
    ),
    "torch_dropout": ("peft's nn.Dropout for LoRA (bernoulli_ masks)", [], "torch_dropout"),
    "fp32_lora": (
        "LoRA matmuls in fp32 with peft's input cast (no bf16 adapter compute)",
        [],
        "fp32_lora",
    ),
    "sub_batches": (
        "no packing: length-sorted sub-batches of 64 rows, each padded to its own longest",
        ["embed.pack_len=0"],
        None,
    ),
    "one_forward": (
        "no packing: one forward of all 3B texts padded to the longest",
        ["embed.pack_len=0", "embed.sub_batch_rows=0"],
        None,
    ),
    "three_forwards": ("three forwards, each column padded to its own longest", [], "columns"),
    "lm_head": ("AutoModelForCausalLM, last of all hidden states (LM head runs)", [], "lm_head"),
    "length_grouping": (
        "length-grouped batches, data.length_grouping = the number of steps: the same triplets "
        "as the other runs, regrouped by length",
        [],
        "length_grouping",
    ),
    "eager": (
        "eager attention (block mask, rows of 128) instead of SDPA",
        ["model.attn_implementation=eager", "embed.pack_len=128"],
        None,
    ),
    "compile": (
        "torch.compile of every decoder layer's norms and MLP, dynamic shapes "
        "(trainer.compile); one more warm-up step for compiling",
        ["trainer.compile=true"],
        None,
    ),
}


def _padded(mask, rows: int | None) -> int:
    """Tokens a forward over ``mask`` runs: one pad width (rows None) or sorted sub-batches."""
    if rows is None or rows <= 0:
        return int(mask.numel())
    lengths = mask.sum(dim=1).sort(descending=True).values
    return int(sum(int(c[0]) * len(c) for c in lengths.split(rows)))


class CausalLMBackbone:
    """The authors' way: run the LM head and keep every layer's hidden states, read the last."""

    @staticmethod
    def build(model_dir: str, cfg, lora_cfg):
        import torch
        from torch import nn
        from transformers import AutoModelForCausalLM

        from embedft.model.attention import VARLEN
        from embedft.model.lora import apply_lora

        class Wrapper(nn.Module):
            def __init__(self, lm: nn.Module) -> None:
                super().__init__()
                self.lm = lm
                self.config = lm.config  # model_type: packs like the base model

            def forward(self, input_ids, attention_mask, position_ids, use_cache=None, **kwargs):
                out = self.lm(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=use_cache,
                    output_hidden_states=True,
                    **kwargs,  # the packed layout of text-by-text attention
                )
                out.last_hidden_state = out.hidden_states[-1]
                return out

        dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
        lm = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=cfg.attn_implementation
        )
        lm.config.use_cache = False
        if cfg.attn_implementation == "sdpa":  # as build_embedder sets it for the base model
            lm.set_attn_implementation(VARLEN)
        for p in lm.parameters():
            p.requires_grad_(False)
        return Wrapper(apply_lora(lm, cfg, lora_cfg))


def worker_embedft(args) -> None:
    import lightning as L
    import torch

    from embedft.data.datamodule import TripletDataModule, check_data
    from embedft.losses.infonce import InfoNCELoss
    from embedft.model.embedder import build_embedder, compile_layers
    from embedft.model.sources import resolve_model_dir
    from embedft.module import EmbeddingModule

    hook = ABLATIONS[args.variant][2] if args.variant in ABLATIONS else None
    overrides = (ABLATIONS[args.variant][1] if args.variant in ABLATIONS else []) + args.override
    if hook == "length_grouping":
        overrides.append(f"data.length_grouping={args.steps}")
    cfg = embedft_config(args, overrides)
    started_load = time.perf_counter()
    L.seed_everything(cfg.seed)
    embedder = build_embedder(
        cfg.model,
        cfg.lora,
        embed_cfg=cfg.embed,
        gradient_checkpointing=cfg.trainer.gradient_checkpointing,
    )
    if hook == "lm_head":
        embedder.backbone = CausalLMBackbone.build(
            resolve_model_dir(cfg.model), cfg.model, cfg.lora
        )
    undo_speedup(embedder, hook)
    datamodule = TripletDataModule(
        cfg.data, embedder.tokenizer, cfg.model.max_length, cfg.model.append_eos, cfg.seed
    )
    datamodule.num_examples = check_data(cfg.data).rows_used
    loss_fn = InfoNCELoss(cfg.loss.temperature, cfg.loss.hard_neg)
    module_cls = module_class(hook, EmbeddingModule)
    module = module_cls(
        embedder,
        loss_fn,
        cfg.optim,
        args.steps,
        grad_cache_chunk_tokens=cfg.embed.grad_cache_chunk_tokens,
    )
    loss_at_init = (
        None if args.no_init_check else embedft_loss_at_init(module, args.batch_size, cfg.model)
    )
    if cfg.trainer.compile:
        compile_layers(module.embedder.backbone)
    targets = list(cfg.lora.target_modules or cfg.model.lora_target_modules)
    hf_config = embedder.backbone.config

    def count_flops(batch) -> float:
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        return flops.step_flops(hf_config, lengths, cfg.lora.r, targets)

    timer = StepTimer.make(lambda batch: executed_tokens(module, hook, batch), count_flops)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=args.precision or ("32-true" if args.device == "cpu" else "bf16-mixed"),
        max_steps=args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    load_s = time.perf_counter() - started_load
    trainer.fit(module, datamodule=datamodule)
    result = {
        "framework": "embedft",
        "dtype": args.dtype,
        "variant": args.variant,
        "overrides": overrides,
        "packed": embedder.pack_len > 0 and embedder.supports_packing,
        "sub_batch_rows": embedder.sub_batch_rows,
        "load_s": round(load_s, 1),
        "loss_at_init": loss_at_init,
        "loss_first": timer.losses[0] if timer.losses else None,
        "loss_last": timer.losses[-1] if timer.losses else None,
        "tokens_per_step": timer.tokens,
        "padded_per_step": timer.padded,
        "flops_per_step": timer.flops,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": args.loadavg_start,
    }
    finish(result, timer.ends, timer.started, args)


def undo_speedup(embedder, hook: str | None) -> None:
    """The ablations that switch one of embedft's speed-ups back off (see ``ABLATIONS``)."""
    import contextlib

    from torch import nn

    import embedft.model.embedder as embedder_module
    from embedft.model.lora import LoraDropout

    if hook == "block_mask":
        embedder.backbone.get_base_model().set_attn_implementation("sdpa")
    elif hook == "torch_dropout":
        for module in embedder.modules():
            for name, child in list(module.named_children()):
                if isinstance(child, LoraDropout):
                    setattr(module, name, nn.Dropout(child.p))
    elif hook == "fp32_lora":
        embedder_module.lora_compute = lambda backbone: contextlib.nullcontext()


def embedft_loss_at_init(module, batch_size: int, model_cfg) -> float:
    """Loss of the first batch before training, dropout off: must equal sentence-transformers'."""
    import torch

    from embedft.data.datamodule import TripletCollator

    rows = read_triplets(batch_size)
    triplets = [
        {"anchor": r["sent0"], "positive": r["sent1"], "negative": r["hard_neg"]} for r in rows
    ]
    collate = TripletCollator(module.embedder.tokenizer, model_cfg.max_length, model_cfg.append_eos)
    batch = collate(triplets)
    module.eval()
    with torch.no_grad():
        loss = module.loss_from_embeddings(module.embed_batch(batch), batch)
    module.train()
    return round(float(loss), 5)


def worker_idle(args) -> None:
    """The memory floor: libraries imported and the LoRA model built, no training step."""
    import lightning  # noqa: F401  (imported by a training run too)

    from embedft.model.embedder import build_embedder

    cfg = embedft_config(args, args.override)
    build_embedder(cfg.model, cfg.lora)
    with open("/proc/self/status") as f:
        hwm = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    result = {"framework": "idle", "variant": "model loaded", "vmhwm_mb": round(hwm / 1024, 1)}
    print(MARK + json.dumps(result), flush=True)


def executed_tokens(module, hook: str | None, batch: dict[str, Any]) -> int:
    """Tokens the step's forwards run, padding included (mirrors ``Embedder.embed``)."""
    from embedft.model.packing import pack_texts, token_chunks

    ids, mask = batch["input_ids"], batch["attention_mask"]
    embedder = module.embedder
    packs = embedder.pack_len > 0 and embedder.supports_packing
    if module.grad_cache_chunk_tokens:  # length-sorted chunks, each packed or padded (one pass)
        lengths = mask.sum(dim=1)
        order = lengths.argsort(descending=True, stable=True)
        chunks = order.split(token_chunks(lengths[order], module.grad_cache_chunk_tokens))
        if not packs:
            return sum(int(mask[rows].sum(dim=0).gt(0).sum()) * len(rows) for rows in chunks)
        return sum(
            int(pack_texts(ids[rows], mask[rows], embedder.pack_len)[0].numel()) for rows in chunks
        )
    if hook == "columns":
        return sum(_padded(m, None) for m in _trimmed_columns(mask, batch["num_triplets"]))
    if packs:
        return int(pack_texts(ids, mask, embedder.pack_len)[0].numel())
    return _padded(mask, embedder.sub_batch_rows)


class StepTimer:
    @staticmethod
    def make(count_executed, count_flops):
        import lightning as L

        class Timer(L.Callback):
            def __init__(self) -> None:
                self.started, self.ends, self.losses = 0.0, [], []
                self.tokens, self.padded, self.flops = [], [], []

            def on_train_start(self, trainer, module) -> None:
                self.started = time.perf_counter()

            def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
                self.tokens.append(int(batch["attention_mask"].sum()))
                self.padded.append(count_executed(batch))
                self.flops.append(count_flops(batch))

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
                self.ends.append(time.perf_counter())
                loss = trainer.callback_metrics.get("train/loss")
                self.losses.append(None if loss is None else round(float(loss), 4))

        return Timer()


def _trimmed_columns(mask, n: int):
    """The anchor, positive and negative masks, each cut to its own longest row."""
    cols = [mask[i * n : (i + 1) * n] for i in range(mask.shape[0] // n)]
    return [m[:, : int(m.sum(dim=1).max())] for m in cols]


def module_class(hook: str | None, base):
    """EmbeddingModule, or a subclass embedding the batch the way an ablation asks."""
    import torch

    class Columns(base):
        """Three forwards: anchors, positives, negatives, each padded to its own longest."""

        def embed_batch(self, batch: dict[str, Any]) -> torch.Tensor:
            n = batch["num_triplets"]
            ids, mask = batch["input_ids"], batch["attention_mask"]
            parts = []
            for i in range(ids.shape[0] // n):
                m = mask[i * n : (i + 1) * n]
                width = int(m.sum(dim=1).max())
                parts.append(self.embedder(ids[i * n : (i + 1) * n, :width], m[:, :width]))
            return torch.cat(parts)

    return Columns if hook == "columns" else base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a conf/model name")
    parser.add_argument("--batch-size", type=int, default=60, help="triplets per step (paper: 60)")
    parser.add_argument("--max-length", type=int, default=150, help="tokens (paper: 150)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the timing")
    parser.add_argument("--rounds", type=int, default=3, help="embedft/ST alternations (0: none)")
    parser.add_argument(
        "--ablation-rounds", type=int, default=1, help="(default, ablation) pairs per ablation"
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=DTYPES)
    parser.add_argument("--ablations", nargs="*", default=["all"], help="all, none or names")
    parser.add_argument("--ablation-dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--rss-cap-gb", type=float, default=None, help="kill a run above this")
    parser.add_argument("--timeout-s", type=float, default=3600, help="per run")
    parser.add_argument("--compile-timeout-s", type=float, default=1200)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_train.json")
    # worker-only arguments
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--framework", default="embedft", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--override", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--precision", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--no-init-check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--loadavg-start", type=float, nargs="*", default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        args.loadavg_start = loadavg()
        workers = {"st": worker_st, "embedft": worker_embedft, "idle": worker_idle}
        workers[args.framework](args)
        return
    run_benchmark(args)


def common_worker_args(args) -> list[str]:
    return [
        f"--model={args.model}",
        f"--batch-size={args.batch_size}",
        f"--max-length={args.max_length}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--device={args.device}",
    ]


def measure_peaks(dtypes: list[str], device: str) -> dict[str, float]:
    """The matmul peak FLOP/s of each dtype, measured in this process (``flops.matmul_peak``)."""
    import torch

    names = dict.fromkeys(dtypes)
    return {d: flops.matmul_peak(getattr(torch, d), device=device) for d in names}


def run_benchmark(args) -> None:
    ensure_triplets()
    names = (
        list(ABLATIONS) if args.ablations == ["all"] else [a for a in args.ablations if a != "none"]
    )
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise SystemExit(f"--ablations: unknown {unknown}; known: {list(ABLATIONS)}")
    cap = args.rss_cap_gb or default_rss_cap_gb()
    env = {**environment(args.device), "loadavg_start": loadavg(), "rss_cap_gb": cap}
    common = common_worker_args(args)
    runs: list[dict[str, Any]] = []

    def run(extra: list[str], timeout_s: float | None = None) -> None:
        result = spawn(common + extra, cap, timeout_s or args.timeout_s)
        runs.append(result)
        keep = (
            "dtype",
            "framework",
            "variant",
            "flops_per_s",
            "triplets_per_s",
            "tokens_per_s",
            "padding_factor",
            "peak_rss_mb",
            "step_s",
            "loadavg_end",
            "error",
        )
        print(json.dumps({k: result[k] for k in keep if k in result}), flush=True)

    print(f"load average {loadavg()}; RSS cap {cap} GB", flush=True)
    peaks = measure_peaks(args.dtypes + [args.ablation_dtype], args.device)
    for dtype in args.dtypes:
        for _ in range(args.rounds):
            run([f"--dtype={dtype}", "--framework=embedft", "--variant=default"])
            run([f"--dtype={dtype}", "--framework=st"])
    # Each ablation run right after a default run of its own (its pair; module docstring).
    for _ in range(args.ablation_rounds if names else 0):
        for name in names:
            run([f"--dtype={args.ablation_dtype}", "--framework=embedft", "--variant=default"])
            pair = len(runs) - 1
            # torch.compile may take long on CPU: a run past its budget is reported, not waited for
            extra, budget = [], None
            if name == "compile":  # steps 1-2 compile, then recompile for dynamic shapes
                extra = [f"--steps={args.steps + 1}", f"--warmup={args.warmup + 1}"]
                budget = min(args.timeout_s, args.compile_timeout_s)
            run(
                [f"--dtype={args.ablation_dtype}", "--framework=embedft", f"--variant={name}",
                 *extra],
                budget,
            )  # fmt: skip
            runs[-1]["paired_default"] = pair
    after = measure_peaks(list(peaks), args.device)
    peaks = {d: max(peaks[d], after[d]) for d in peaks}  # the better of before and after
    env["loadavg_end"] = loadavg()
    report = {
        "settings": {
            "model": args.model,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "ablation_rounds": args.ablation_rounds,
            "dtypes": args.dtypes,
            "ablations": names,
            "ablation_dtype": args.ablation_dtype,
        },
        "environment": env,
        "peaks": peaks,
        "peak_method": "torch.mm of 2048x2048 matrices, best of 5 rounds, before and after the runs",
        "flop_method": flops.METHOD,
        "runs": runs,
        "summary": summarize(runs, peaks),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, {k: v[0] for k, v in ABLATIONS.items()})
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
