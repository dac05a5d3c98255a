"""FLOPs of embedft's training step, and the machine's matmul peak to hold them against.

``step_flops`` counts the model FLOPs of one LoRA training step of a decoder on texts of given
lengths, for what actually runs:

* linear layers (every projection of every layer, no LM head: embedft loads the base model):
  forward 2 * N_linear per token; backward only the activation gradients, 2 * N_linear per
  token (the frozen base weights get no weight gradients);
* attention, text by text (embedft's packed path keeps texts apart; a causal text of n tokens
  scores n(n+1)/2 query-key pairs per head): forward 2 * 2 * n(n+1)/2 * heads * head_dim per layer
  (QK^T and PV), backward twice that;
* LoRA: forward 2 * r * (d_in + d_out) per token and adapted projection, backward twice that
  (input and weight gradients).

Norms, activations, rotary embeddings, softmax, dropout and the loss are not counted (each is
linear in tokens x hidden, well under 1% of the above). ``matmul_peak`` is the best FLOP/s of
square ``torch.mm`` products in a dtype with the threads torch uses: what "% of peak" divides by.
experiments/bench_train.py and gpu_mfu.py use both.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch

METHOD = (
    "model FLOPs on real tokens: linear layers 2*N_linear fwd + 2*N_linear bwd (activation "
    "gradients only: the base is frozen), causal attention per text 2*2*n(n+1)/2*heads*head_dim "
    "fwd and twice that bwd, LoRA 2*r*(d_in+d_out) fwd and twice that bwd; no LM head; norms, "
    "activations, rotary, softmax and loss not counted"
)


def _dims(config: Any) -> dict[str, int]:
    """Hidden, query/kv widths, MLP width and depth of a transformers decoder config."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return {
        "hidden": hidden,
        "q": heads * head_dim,
        "kv": kv_heads * head_dim,
        "mlp": config.intermediate_size,
        "layers": config.num_hidden_layers,
        "gated": int(getattr(config, "model_type", "") != "phi"),  # phi: fc1/fc2, no gate
    }


def linear_params(config: Any) -> int:
    """Weights of all projections of all layers (no embeddings, no LM head)."""
    d = _dims(config)
    attention = d["hidden"] * d["q"] + 2 * d["hidden"] * d["kv"] + d["q"] * d["hidden"]
    mlp = (2 + d["gated"]) * d["hidden"] * d["mlp"]
    return d["layers"] * (attention + mlp)


def _projection_shape(config: Any, name: str) -> tuple[int, int]:
    d = _dims(config)
    shapes = {
        "q_proj": (d["hidden"], d["q"]),
        "k_proj": (d["hidden"], d["kv"]),
        "v_proj": (d["hidden"], d["kv"]),
        "o_proj": (d["q"], d["hidden"]),
        "dense": (d["q"], d["hidden"]),
        "gate_proj": (d["hidden"], d["mlp"]),
        "up_proj": (d["hidden"], d["mlp"]),
        "fc1": (d["hidden"], d["mlp"]),
        "down_proj": (d["mlp"], d["hidden"]),
        "fc2": (d["mlp"], d["hidden"]),
    }
    if name not in shapes:
        raise ValueError(f"no FLOP count for LoRA target {name!r}; known: {sorted(shapes)}")
    return shapes[name]


def step_flops(config: Any, lengths: Iterable[int], lora_r: int, targets: Iterable[str]) -> float:
    """FLOPs of one training step over texts of ``lengths`` tokens (see the module docstring)."""
    lengths = list(lengths)
    d = _dims(config)
    tokens = sum(lengths)
    linear = 2 * linear_params(config) * tokens
    attention = d["layers"] * sum(2 * 2 * n * (n + 1) / 2 * d["q"] for n in lengths)
    lora = (
        d["layers"] * tokens * sum(2 * lora_r * sum(_projection_shape(config, t)) for t in targets)
    )
    forward = linear + attention + lora
    backward = linear + 2 * attention + 2 * lora
    return float(forward + backward)


def matmul_peak(
    dtype: torch.dtype, size: int = 2048, repeats: int = 5, device: str = "cpu"
) -> float:
    """Best FLOP/s of ``size`` x ``size`` matrix products in ``dtype`` (a few warm-up runs first)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        a @ b
    best, per_round = 0.0, max(1, int(2e11 // (2 * size**3)))  # ~0.2 TFLOP a round
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(per_round):
            a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 * per_round / (time.perf_counter() - started))
    return best
