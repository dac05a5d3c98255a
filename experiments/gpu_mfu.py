"""Tokens/s and model FLOPs utilisation (MFU) of embedft's training step on one GPU.

    python experiments/gpu_mfu.py                       # Gemma-2B-sized model, bf16, on CUDA
    python experiments/gpu_mfu.py --configs pack:varlen pack@128:sdpa --batches 60 512
    python experiments/gpu_mfu.py --tiny --device cpu   # a tiny model on CPU: the script runs

One prepared script for a lent GPU: the default set (two batch sizes, five configurations, 5
warm-up + 15 timed steps each) finishes in a few minutes on an H100/H200.

Model: a randomly initialised Gemma-2B-sized decoder (``GemmaConfig``: hidden 2048, 18 layers,
8 heads, 1 KV head, head_dim 256, MLP 16384, vocab 256000; config only, no weights), base model
without the LM head, the paper's LoRA (r=8, alpha=32, dropout 0.1, q_proj/v_proj) through
embedft's ``apply_lora``; bf16 weights with the LoRA weights in fp32 under bf16 autocast, as
``embedft.run`` trains on a GPU. Step: embed anchors, positives, negatives, InfoNCE (Eq. 1,
tau 0.05), backward, AdamW on the LoRA weights.

Batch: the paper's 60 triplets. Lengths are sampled like SNLI (premise ~ N(14, 6) tokens,
hypotheses ~ N(8, 3.5), clipped to >= 2) plus BOS and EOS, capped at 150; a fixed seed draws a
different batch for every step, the same batches for every configuration.

A configuration is ``layout[@pack_len]:attention[:compile]``:

* layout (each through ``Embedder.embed``, as the training step): ``pad``: one forward of the 3B
  texts padded to the longest (embedft before packing); ``sorted``: length-sorted sub-batches of
  ``--sub-batch-rows`` (``embed_in_sub_batches``, the fallback for backbones that cannot pack);
  ``pack``: embedft's default training path (``pack_texts`` + ``Embedder.forward_packed``,
  ``embedft.model.packing``): texts packed end to end without padding into rows of at most
  ``pack_len`` tokens (default ``--pack-len``), positions restarting per text and no attention
  mask, so transformers masks attention per text (block-diagonal causal; flash-attention-2 runs
  variable-length kernels), the EOS state of each text gathered.
* attention: ``varlen`` (embedft's default for SDPA backbones: text-by-text attention over the
  packed rows, ``embedft.model.attention``) | ``sdpa`` (SDPA under the block-diagonal mask) |
  ``eager`` | ``flash_attention_2`` (needs the flash-attn package; variable-length kernels) |
  ``flex_attention``.
* ``compile``: ``torch.compile`` of the backbone (warm-up steps absorb the compilation).

FLOPs counted: ``experiments/flops.py`` (model FLOPs on real tokens for what runs: no LM head, no
weight gradients of the frozen base, attention per text).
MFU = counted FLOPs / step time / the GPU's dense bf16 peak (H100 SXM and H200: 989 TFLOPS;
H100 PCIe 756, H100 NVL 835, A100 312; ``--peak-tflops`` for others). ``executed_mfu`` counts the
padded tokens that also run. Gradient checkpointing is off unless ``--gradient-checkpointing``
(its recomputed forward is then not counted).

Prints one JSON line per configuration (tokens/s, step time, MFU) and writes
``experiments/results/gpu_mfu.json`` and a Markdown table generated from it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import flops  # experiments/flops.py
import torch
from transformers import AutoModel, GemmaConfig

from embedft.config import LoraConfig, ModelConfig
from embedft.losses.infonce import InfoNCELoss
from embedft.model.attention import VARLEN
from embedft.model.embedder import Embedder
from embedft.model.lora import apply_lora
from embedft.model.packing import pack_texts

RESULTS = Path(__file__).resolve().parent / "results"
BOS, EOS, PAD = 2, 1, 0  # Gemma's ids
GEMMA_2B = dict(
    vocab_size=256000,
    hidden_size=2048,
    intermediate_size=16384,
    num_hidden_layers=18,
    num_attention_heads=8,
    num_key_value_heads=1,
    head_dim=256,
    max_position_embeddings=8192,
)
TINY = dict(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=512,
)
LORA_TARGETS = ["q_proj", "v_proj"]


def peak_bf16_flops(name: str) -> float | None:
    """Dense bf16 tensor-core peak of a GPU, from its name (None: unknown)."""
    if "H200" in name or "GH200" in name:
        return 989e12
    if "H100" in name:
        return 756e12 if "PCIe" in name else 835e12 if "NVL" in name else 989e12
    if "A100" in name:
        return 312e12
    return None


def step_flops(cfg: GemmaConfig, lengths: list[int], r: int) -> float:
    """FLOPs of one training step (``experiments/flops.py``, LoRA on ``LORA_TARGETS``)."""
    return flops.step_flops(cfg, lengths, r, LORA_TARGETS)


def sample_lengths(rng: torch.Generator, batch: int, max_length: int) -> list[int]:
    """3 * batch text lengths in tokens (anchors, positives, negatives), BOS and EOS included."""

    def draw(mean: float, sd: float) -> list[int]:
        x = torch.randn(batch, generator=rng) * sd + mean
        return [min(max_length, max(2, round(v)) + 2) for v in x.tolist()]

    return draw(14, 6) + draw(8, 3.5) + draw(8, 3.5)


def random_ids(rng: torch.Generator, n: int, vocab: int) -> list[int]:
    body = torch.randint(3, vocab, (max(0, n - 2),), generator=rng).tolist()
    return [BOS, *body, EOS]


def padded_batch(seqs: list[list[int]], device) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def build(args) -> tuple[Embedder, GemmaConfig]:
    device, dtype = torch.device(args.device), torch.bfloat16 if args.bf16 else torch.float32
    config = GemmaConfig(**(TINY if args.tiny else GEMMA_2B), attn_implementation="sdpa")
    torch.manual_seed(0)
    with device:  # initialise on the device: no 10 GB detour through host memory
        backbone = AutoModel.from_config(config, dtype=dtype)
    backbone.config.use_cache = False
    for p in backbone.parameters():
        p.requires_grad_(False)
    if args.gradient_checkpointing:
        backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    model_cfg = ModelConfig(name="gemma-2b-random", source="tiny", path="gemma")
    backbone = apply_lora(backbone, model_cfg, LoraConfig(target_modules=LORA_TARGETS))
    for p in backbone.parameters():  # trained adapters in fp32, as embedft.run keeps them
        if p.requires_grad:
            p.data = p.data.float()
    return Embedder(backbone.to(device), tokenizer=None, pooling="last"), config


def executed_tokens(layout: str, batch: dict[str, torch.Tensor], rows: int, pack_len: int) -> int:
    """Tokens the forward runs, padding included."""
    if layout == "pack":
        return int(pack_texts(batch["input_ids"], batch["attention_mask"], pack_len)[0].numel())
    if layout == "pad":
        return int(batch["input_ids"].numel())
    lengths = batch["attention_mask"].sum(dim=1).sort(descending=True).values
    return sum(int(chunk[0]) * len(chunk) for chunk in lengths.split(rows))


def run_config(embedder: Embedder, config, spec: str, batches, args) -> dict[str, Any]:
    """Time ``args.steps`` training steps (after ``args.warmup``) of one configuration."""
    layout, attn, *rest = spec.split(":")
    layout, _, pack_len = layout.partition("@")
    if layout not in ("pad", "sorted", "pack"):
        raise ValueError(f"--configs {spec!r}: layout must be pad, sorted or pack[@tokens]")
    args = argparse.Namespace(**{**vars(args), "pack_len": int(pack_len or args.pack_len)})
    base = embedder.backbone.get_base_model()
    base.set_attn_implementation(VARLEN if attn == "varlen" else attn)
    try:
        return _timed_steps(embedder, config, layout, "compile" in rest, batches, args) | {
            "config": spec
        }
    finally:
        base.set_attn_implementation("sdpa")


def _timed_steps(embedder, config, layout, use_compile, batches, args) -> dict[str, Any]:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if use_compile:
        torch._dynamo.reset()
    # dynamic: every step has other lengths; without it each new shape could recompile
    backbone = torch.compile(embedder.backbone, dynamic=True) if use_compile else embedder.backbone
    model = Embedder(backbone, tokenizer=None, pooling="last")
    loss_fn = InfoNCELoss(temperature=0.05, hard_neg=True)
    params = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-4)
    rows = 0 if layout == "pad" else args.sub_batch_rows
    pack_len = args.pack_len if layout == "pack" else 0
    prepared = [padded_batch(seqs, device) for seqs in batches]  # what the collator hands over

    def step(batch) -> None:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            emb = model.embed(ids, mask, pack_len=pack_len, sub_batch_rows=rows)  # (3B, H)
            n = args.batch
            loss = loss_fn(emb[:n], emb[n : 2 * n], emb[2 * n :])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timings = []
    for batch in prepared:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        step(batch)
        if cuda:
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    timed, seconds = slice(args.warmup, None), sum(timings[args.warmup :])
    real = sum(sum(len(s) for s in seqs) for seqs in batches[timed])
    executed = sum(executed_tokens(layout, b, rows, args.pack_len) for b in prepared[timed])
    flops = sum(step_flops(config, [len(s) for s in seqs], 8) for seqs in batches[timed])
    steps = len(timings) - args.warmup
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and cuda:
        peak = peak_bf16_flops(torch.cuda.get_device_name())
    achieved = flops / seconds
    return {
        "tokens_per_s": round(real / seconds, 1),
        "triplets_per_s": round(args.batch * steps / seconds, 2),
        "step_ms": round(seconds / steps * 1e3, 2),
        "first_step_s": round(timings[0], 2),
        "mfu": round(achieved / peak, 4) if peak else None,
        "executed_mfu": round(achieved * executed / real / peak, 4) if peak else None,
        "achieved_tflops": round(achieved / 1e12, 3),
        "real_tokens_per_step": round(real / steps, 1),
        "executed_tokens_per_step": round(executed / steps, 1),
        "flops_per_step": float(f"{flops / steps:.4g}"),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
    }


def check_packing(embedder: Embedder, batches, args) -> float:
    """Largest |difference| between packed and padded embeddings of the first batch."""
    seqs = batches[0]
    device = torch.device(args.device)
    embedder.eval()
    batch = padded_batch(seqs, device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        padded = embedder.embed(**batch, pack_len=0, sub_batch_rows=0)
        packed = embedder.embed(**batch, pack_len=args.pack_len)
    embedder.train()
    return float((padded - packed).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=None, help="layout:attention[:compile]")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[60, 512], help="triplets per step (paper: 60)"
    )
    parser.add_argument("--max-length", type=int, default=150)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pack-len", type=int, default=4096, help="tokens per packed row")
    parser.add_argument("--sub-batch-rows", type=int, default=64)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model (smoke test on CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_mfu.json")
    args = parser.parse_args()
    args.bf16 = args.device.startswith("cuda")
    if args.configs is None:
        args.configs = ["pack:varlen", "pack@128:sdpa", "sorted:sdpa", "pack:varlen:compile"]
        if args.bf16:
            args.configs += ["pack:flash_attention_2"]

    embedder, config = build(args)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "model": "tiny gemma" if args.tiny else "gemma-2b-sized (random init)",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "torch": torch.__version__,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "results": [],
    }
    for size in args.batches:
        args.batch = size
        rng = torch.Generator().manual_seed(7)
        batches = [
            [
                random_ids(rng, n, config.vocab_size)
                for n in sample_lengths(rng, size, args.max_length)
            ]
            for _ in range(args.warmup + args.steps)
        ]
        report.setdefault("packing_max_abs_diff", check_packing(embedder, batches, args))
        for spec in args.configs:
            try:
                result = run_config(embedder, config, spec, batches, args)
            except Exception as err:  # noqa: BLE001  one failing option must not hide the others
                result = {"config": spec, "error": f"{type(err).__name__}: {str(err)[:300]}"}
            result["batch"] = size
            report["results"].append(result)
            print(json.dumps(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# embedft training step on one GPU: tokens/s and MFU",
        "",
        f"Generated by `experiments/gpu_mfu.py` on {report['device']}: {report['model']}, "
        f"{'bf16' if s['bf16'] else 'fp32'}, batches of {s['batches']} triplets (SNLI-like lengths), "
        f"{s['steps']} timed steps after {s['warmup']} warm-up, torch {report['torch']}. "
        f"Packed vs padded embeddings max |diff|: {report['packing_max_abs_diff']:.2e}.",
        "",
        "| triplets | config | tokens/s | step ms | MFU | executed MFU | TFLOPS "
        "| real / executed tokens | peak GB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['config']} | failed: {r['error'][:150]} |||||||")
            continue
        lines.append(
            f"| {r['batch']} | {r['config']} | {r['tokens_per_s']} | {r['step_ms']} | {r['mfu']} | "
            f"{r['executed_mfu']} | {r['achieved_tflops']} | {r['real_tokens_per_step']} / "
            f"{r['executed_tokens_per_step']} | {r['peak_memory_gb']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
