"""LoRA adapters on a frozen backbone (peft), and the two things embedft changes about them.

``apply_lora`` wraps the backbone's target linear layers in peft LoRA adapters (the paper's r=8,
alpha=32, dropout 0.1, gaussian init on q_proj/v_proj by default) and leaves only the adapter
weights trainable (float32, whatever the base dtype: peft's adapter autocast).

* **LoRA dropout on CPU.** peft's ``nn.Dropout`` draws its mask with ``bernoulli_``, which on CPU
  runs at ~7 ns per element: for a bf16 smollm2 step that was 10% of the time, for two small
  matrices per layer. ``LoraDropout`` draws the same Bernoulli(1 - p) mask from 15 random bits per
  element, four elements per 64-bit word of torch's generator (~8x faster; p exact to 2^-15:
  0.1 becomes 0.100006), so seeding, the RNG replay of gradient caching and exact resume work as
  before. On other devices, and inside ``torch.compile`` (where ``random_`` is a graph break and
  inductor fuses its own mask into the next ops), it is ``F.dropout``.
* **bf16 compute.** peft casts a layer's input to the adapter's float32 before the LoRA matmuls: on
  a bf16 backbone that is two copies of every adapted activation plus float32 matmuls.
  ``lora_compute(backbone)`` is the context the embedder runs a bf16 backbone in: bf16 autocast
  (what Lightning's ``bf16-mixed`` does on a GPU) with peft's input cast switched off, so the
  adapters compute in bf16 and their float32 weights still get float32 gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embedft.config import LoraConfig, ModelConfig
from embedft.quiet import third_party_notices_hidden


class LoraDropout(nn.Module):
    """Inverted dropout with probability ``p``; on CPU a mask from 15-bit integers (see above)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * 2**15)  # drop where the 15 random bits are below it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            # compiled: inductor fuses the mask into the next ops (random_ is a graph break)
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each
        bits = words.view(torch.int16)[:n] & 0x7FFF  # (n,) four 15-bit draws per word
        keep = (bits >= self.threshold).view(x.shape)
        return x * keep * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def lora_targets(model_cfg: ModelConfig, lora_cfg: LoraConfig) -> list[str]:
    return list(lora_cfg.target_modules or model_cfg.lora_target_modules)


def apply_lora(backbone: nn.Module, model_cfg: ModelConfig, lora_cfg: LoraConfig) -> nn.Module:
    """Wrap ``backbone`` in peft LoRA adapters; only adapter weights stay trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    targets = lora_targets(model_cfg, lora_cfg)
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"lora.target_modules {missing} not found in model {model_cfg.name!r}; "
            f"its linear layers are {linear}"
        )
    init: Any = True if lora_cfg.init == "default" else lora_cfg.init
    peft_cfg = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,
        init_lora_weights=init,
        bias="none",
    )
    with third_party_notices_hidden():  # peft reads a deprecated transformers property
        model = get_peft_model(backbone, peft_cfg)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name, dropout in module.lora_dropout.items():
                if isinstance(dropout, nn.Dropout):
                    module.lora_dropout[name] = LoraDropout(dropout.p)
    return model


@contextlib.contextmanager
def lora_compute(backbone: nn.Module) -> Iterator[None]:
    """Run a bf16 backbone with its adapters computing in bf16 too (see the module docstring).

    A no-op for other dtypes: float32 backbones compute in float32 as they are.
    """
    dtype = next(backbone.parameters()).dtype
    if dtype != torch.bfloat16:
        yield
        return
    from peft.tuners.lora import LoraLayer

    layers = [m for m in backbone.modules() if isinstance(m, LoraLayer)]
    before = [m.cast_input_dtype_enabled for m in layers]
    device = next(backbone.parameters()).device.type
    try:
        for m in layers:
            m.cast_input_dtype_enabled = False
        with torch.autocast(device, dtype=torch.bfloat16):
            yield
    finally:
        for m, value in zip(layers, before, strict=True):
            m.cast_input_dtype_enabled = value
