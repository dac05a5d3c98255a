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

import flops  # experiments/flops.py

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"
TRIPLETS = REPO / "data" / "nli_triplets.csv"
MARK = "BENCH_RESULT "  # prefix of the one JSON line a worker prints on stdout
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


# ---------------------------------------------------------------- parent: one run per subprocess


def spawn(worker_args: list[str], rss_cap_gb: float, timeout_s: float) -> dict[str, Any]:
    """Run this script as a worker; return its JSON result plus its own peak RSS.

    The watchdog polls the child's RSS and kills it past ``rss_cap_gb`` (the machine is shared:
    an unbounded run could push other people's processes out of memory).
    """
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-worker-", suffix=".log", delete=False)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *worker_args]
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


# ---------------------------------------------------------------- workers


def _finish(result: dict[str, Any], step_ends: list[float], started: float, args) -> None:
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


def _padded(mask, rows: int | None) -> int:
    """Tokens a forward over ``mask`` runs: one pad width (rows None) or sorted sub-batches."""
    if rows is None or rows <= 0:
        return int(mask.numel())
    lengths = mask.sum(dim=1).sort(descending=True).values
    return int(sum(int(c[0]) * len(c) for c in lengths.split(rows)))


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
    _finish(result, timer.ends, timer.started, args)


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


def worker_st(args) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer import losses, modules
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    from embedft.model.sources import resolve_model_dir

    cfg = embedft_config(args, args.override)  # the same model/LoRA/optimizer settings
    started_load = time.perf_counter()
    torch.manual_seed(cfg.seed)
    transformer = modules.Transformer(
        resolve_model_dir(cfg.model),
        max_seq_length=cfg.model.max_length,
        # Text only: without a "message" modality ST does not wrap text in the chat template.
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
        model_kwargs={
            "dtype": torch.bfloat16 if args.dtype == "bfloat16" else torch.float32,
            "attn_implementation": cfg.model.attn_implementation,
        },
    )
    tok = transformer.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    pooling = modules.Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    model = SentenceTransformer(modules=[transformer, pooling], device=args.device)
    peft_cfg = PeftLoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules or cfg.model.lora_target_modules),
        init_lora_weights=cfg.lora.init,
        bias="none",
    )
    try:
        model.add_adapter(peft_cfg)
        lora_path = "SentenceTransformer.add_adapter"
    except (ImportError, ValueError) as err:
        model[0].model = get_peft_model(model[0].auto_model, peft_cfg)
        lora_path = f"peft.get_peft_model on model[0].auto_model (add_adapter refused: {err})"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    rows = read_triplets(args.steps * args.batch_size)
    eos = tok.eos_token
    columns = {
        "anchor": [r["sent0"] + eos for r in rows],
        "positive": [r["sent1"] + eos for r in rows],
        "negative": [r["hard_neg"] + eos for r in rows],
    }
    # A text cut at max_length loses its EOS here (embedft keeps it): count them; the
    # comparison is exact only when none is.
    tokens, padded, counted, at_limit = [], [], [], 0
    targets = list(cfg.lora.target_modules or cfg.model.lora_target_modules)
    for s in range(0, len(rows), args.batch_size):
        masks = [
            model.preprocess(c[s : s + args.batch_size])["attention_mask"] for c in columns.values()
        ]
        tokens.append(int(sum(m.sum() for m in masks)))
        lengths = torch.cat([m.sum(dim=1) for m in masks]).tolist()
        counted.append(
            flops.step_flops(transformer.auto_model.config, lengths, cfg.lora.r, targets)
        )
        at_limit += sum(int((m.sum(dim=1) >= args.max_length).sum()) for m in masks)
        # ST embeds the anchors alone and the positives + negatives in one merged forward.
        widths = [masks[0].shape[1], max(m.shape[1] for m in masks[1:])]
        padded.append(masks[0].shape[0] * widths[0] + 2 * masks[1].shape[0] * widths[1])

    # The first batch's loss before training, dropout off: the check that both compute Eq. 1 on
    # the same embeddings (LoRA B starts at zero, so both are the base model here).
    loss = losses.MultipleNegativesRankingLoss(model, scale=1.0 / cfg.loss.temperature)
    model.eval()
    with torch.no_grad():
        first = [
            model.encode(c[: args.batch_size], batch_size=args.batch_size, convert_to_tensor=True)
            for c in columns.values()
        ]
        loss_at_init = round(float(loss.compute_loss_from_embeddings(first, None)), 5)
    model.train()

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.started, self.ends = 0.0, []

        def on_train_begin(self, *a, **k) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k) -> None:
            self.ends.append(time.perf_counter())

    timer = Timer()
    out_dir = tempfile.mkdtemp(prefix="bench-st-")
    training_args = SentenceTransformerTrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=cfg.optim.warmup_steps,
        lr_scheduler_type="cosine",
        optim="adamw_torch",
        max_grad_norm=0.0,  # embedft clips nothing by default either
        seed=cfg.seed,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_drop_last=True,
        dataloader_num_workers=0,
        use_cpu=args.device == "cpu",
        bf16=args.dtype == "bfloat16",  # bf16 autocast, as embedft's bf16 step
        batch_sampler=lambda dataset, batch_size, drop_last, **_: DefaultBatchSampler(
            SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last
        ),
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_dict(columns),
        loss=loss,
        callbacks=[timer],
    )
    load_s = time.perf_counter() - started_load
    trainer.train()
    result = {
        "framework": "st",
        "dtype": args.dtype,
        "variant": "MNRL",
        "lora": lora_path,
        "trainable_params": trainable,
        "load_s": round(load_s, 1),
        "loss_at_init": loss_at_init,
        "texts_at_max_length": at_limit,
        "tokens_per_step": tokens,
        "padded_per_step": padded,
        "flops_per_step": counted,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": args.loadavg_start,
    }
    _finish(result, timer.ends, timer.started, args)


# ---------------------------------------------------------------- report


TARGET_OF_PEAK = {"bfloat16": 0.60, "float32": 0.80}  # the targets on this CPU
TARGET_VS_ST = {"bfloat16": 2.0, "float32": 1.3}  # triplets/s over sentence-transformers'


def summarize(runs: list[dict[str, Any]], peaks: dict[str, float]) -> dict[str, Any]:
    """Per dtype: median throughput and max peak RSS per run kind, % of the matmul peak, ratios."""
    import statistics

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            groups.setdefault(f"{r['dtype']}:{r['framework']}:{r['variant']}", []).append(r)
    table = {}
    for key, rs in groups.items():
        dtype = key.split(":")[0]
        achieved = statistics.median(r["flops_per_s"] for r in rs)
        table[key] = {
            "runs": len(rs),
            "triplets_per_s": round(statistics.median(r["triplets_per_s"] for r in rs), 3),
            "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in rs), 1),
            "padding_factor": rs[0]["padding_factor"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "gflops_per_s": round(achieved / 1e9, 1),
            "of_peak": round(achieved / peaks[dtype], 3) if dtype in peaks else None,
        }
    for key, rs in groups.items():  # an ablation: the median of its ratios to its paired runs
        pairs = [
            r["triplets_per_s"] / runs[r["paired_default"]]["triplets_per_s"]
            for r in rs
            if "paired_default" in r and "error" not in runs[r["paired_default"]]
        ]
        if pairs:
            table[key]["paired_ratios"] = [round(x, 3) for x in pairs]
            table[key]["speed_vs_embedft_default"] = round(statistics.median(pairs), 3)
    by_dtype = {}
    for dtype in sorted({k.split(":")[0] for k in table}):
        ours, st = table.get(f"{dtype}:embedft:default"), table.get(f"{dtype}:st:MNRL")
        for key, row in table.items():
            if ours and key.startswith(f"{dtype}:") and "paired_ratios" not in row:
                row["speed_vs_embedft_default"] = round(
                    row["triplets_per_s"] / ours["triplets_per_s"], 3
                )
        entry: dict[str, Any] = {"peak_gflops": round(peaks.get(dtype, 0) / 1e9, 1)}
        if ours:
            entry["embedft_of_peak"] = ours["of_peak"]
            entry["target_of_peak"] = TARGET_OF_PEAK.get(dtype)
            entry["target_of_peak_met"] = (ours["of_peak"] or 0) >= TARGET_OF_PEAK.get(dtype, 1)
        if ours and st:
            first = {
                fw: groups[f"{dtype}:{fw}"][0]["loss_at_init"]
                for fw in ("embedft:default", "st:MNRL")
            }
            entry.update(
                triplets_per_s=round(ours["triplets_per_s"] / st["triplets_per_s"], 3),
                tokens_per_s=round(ours["tokens_per_s"] / st["tokens_per_s"], 3),
                peak_rss=round(ours["peak_rss_mb"] / st["peak_rss_mb"], 3),
                target_speed=TARGET_VS_ST.get(dtype),
                target_speed_met=ours["triplets_per_s"]
                >= TARGET_VS_ST.get(dtype, 1) * st["triplets_per_s"],
                target_rss_met=ours["peak_rss_mb"] <= st["peak_rss_mb"],
                # Same objective on the same embeddings: the first batch's loss before training.
                loss_at_init={"embedft": first["embedft:default"], "st": first["st:MNRL"]},
                texts_at_max_length=groups[f"{dtype}:st:MNRL"][0]["texts_at_max_length"],
            )
        by_dtype[dtype] = entry
    return {"table": table, "by_dtype": by_dtype}


def markdown(report: dict[str, Any]) -> str:
    s, env, summ = report["settings"], report["environment"], report["summary"]
    lines = [
        "# Training throughput: embedft vs sentence-transformers, and against the machine",
        "",
        f"Generated by `experiments/bench_train.py` on {env['device']} ({env['cpu_count']} CPUs, "
        f"{env['torch_threads']} torch threads), torch {env['torch']}, sentence-transformers "
        f"{env['sentence_transformers']}, lightning {env['lightning']}. Model {s['model']}, batch "
        f"{s['batch_size']} triplets, max length {s['max_length']}, {s['steps']} optimizer steps "
        f"({s['warmup']} warm-up not timed), {s['rounds']} alternating round(s) per dtype, "
        f"{s.get('ablation_rounds', 1)} (default, ablation) pair(s) per ablation. Load "
        f"average before/after: {env['loadavg_start']} / {env['loadavg_end']}.",
        "",
        f"Matmul peak ({report['peak_method']}): "
        + ", ".join(f"{d} {v / 1e9:.0f} GFLOP/s" for d, v in report["peaks"].items())
        + ". FLOPs counted: "
        + report["flop_method"]
        + ".",
        "",
        "| dtype:run | triplets/s | real tokens/s | padded/real tokens | GFLOP/s | % of peak "
        "| peak RSS MB | vs embedft default |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, row in summ["table"].items():
        of_peak = f"{100 * row['of_peak']:.1f}" if row["of_peak"] is not None else ""
        lines.append(
            f"| {key} | {row['triplets_per_s']} | {row['tokens_per_s']} | {row['padding_factor']} "
            f"| {row['gflops_per_s']} | {of_peak} | {row['peak_rss_mb']} "
            f"| {row.get('speed_vs_embedft_default', '')} |"
        )
    lines.append("")
    for dtype, r in summ["by_dtype"].items():
        if "embedft_of_peak" in r:
            met = "met" if r["target_of_peak_met"] else "NOT met"
            lines.append(
                f"- {dtype}: embedft at **{100 * (r['embedft_of_peak'] or 0):.1f}%** of the "
                f"{r['peak_gflops']} GFLOP/s matmul peak (target >= "
                f"{100 * r['target_of_peak']:.0f}%: {met})."
            )
        if "triplets_per_s" in r:
            lines.append(
                f"- {dtype}: embedft / sentence-transformers **{r['triplets_per_s']}x** "
                f"triplets/s (target >= {r['target_speed']}: "
                f"{'met' if r['target_speed_met'] else 'NOT met'}), peak RSS **{r['peak_rss']}x** "
                f"(target <= 1: {'met' if r['target_rss_met'] else 'NOT met'}); first-batch loss "
                f"before training {r['loss_at_init']['embedft']} vs "
                f"{r['loss_at_init']['st']}; texts cut at max length on the "
                f"sentence-transformers side (EOS lost): {r['texts_at_max_length']}."
            )
    st_runs = [x for x in report["runs"] if x.get("framework") == "st"]
    if st_runs:
        lines += ["", f"sentence-transformers LoRA: {st_runs[0].get('lora')}."]
    failed = [x for x in report["runs"] if "error" in x]
    for x in failed:
        lines.append(f"- failed: `{' '.join(x['argv'])}`: {x['error'][:300]}")
    lines += [
        "",
        f"Ablations ({s['ablation_dtype']}, one switch each against embedft's default; "
        "`vs embedft default` of an ablation is the median of its paired ratios: its triplets/s "
        "over those of the default run just before it):",
        "",
    ]
    table = summ["table"]
    for k, v in ABLATIONS.items():
        if k in s["ablations"]:
            pairs = table.get(f"{s['ablation_dtype']}:embedft:{k}", {}).get("paired_ratios")
            lines.append(f"- `{k}`: {v[0]}" + (f" (paired ratios {pairs})" if pairs else ""))
    return "\n".join(lines) + "\n"


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


def default_rss_cap_gb() -> float:
    """Leave 2 GB of what the machine has available now to everyone else."""
    with open("/proc/meminfo") as f:
        avail_kb = next(int(x.split()[1]) for x in f if x.startswith("MemAvailable:"))
    return round(max(1.0, avail_kb / 1024**2 - 2.0), 1)


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
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
