"""The embedding model: backbone (+ LoRA) + pooling + L2 normalisation.

``build_embedder`` loads a transformers ``AutoModel`` (the base model: no LM head, so no
vocabulary logits and no per-layer hidden states are ever computed) with SDPA attention, wraps it
in peft LoRA adapters when asked, and freezes everything else. ``Embedder.forward`` maps token ids
to unit-length embeddings; ``Embedder.tokenize`` appends EOS the way the paper embeds text (and
wraps it in ``model.prompt``, if set).
``Embedder.forward_packed`` embeds texts packed end to end without padding (training's default).
``load_embedder_from_checkpoint`` rebuilds one from a training checkpoint (config + LoRA weights),
read as plain data; ``saved_model_config`` never lets a file switch on ``trust_remote_code``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from transformers import AutoModel, PreTrainedTokenizerBase

from embedft.checkpoint import CheckpointError, load_checkpoint
from embedft.config import LoraConfig, ModelConfig, to_object
from embedft.model.pooling import pool
from embedft.model.tokenize import tokenize_with_eos

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Model types whose transformers forward keeps packed texts apart: given no attention mask and
# positions that restart at 0 for every text, it masks attention per text (block-diagonal causal).
# tests/test_bench_smoke.py checks packed == padded embeddings for each of these families.
PACKABLE_MODEL_TYPES = ("llama", "gemma", "gemma3_text", "phi", "minicpm")


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto`` is bf16 on a GPU (the paper's setting) and fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return _DTYPES[name]


class Embedder(nn.Module):
    """Texts -> L2-normalised sentence embeddings (B, H), float32."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        pooling: str = "last",
        append_eos: bool = True,
        max_length: int = 150,
        prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.append_eos = append_eos
        self.max_length = max_length
        self.prompt = prompt  # model.prompt template, applied by tokenize

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def tokenize(self, texts: list[str], padding_side: str = "right") -> dict[str, torch.Tensor]:
        return tokenize_with_eos(
            self.tokenizer, list(texts), self.max_length, self.append_eos, padding_side, self.prompt
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Positions count attended tokens only, so a left-padded row sees the same positions as
        # its right-padded twin (decoders otherwise number pad tokens too).
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        )
        hidden = out.last_hidden_state  # (B, T, H)
        return F.normalize(pool(hidden, attention_mask, self.pooling).float(), dim=-1)

    @property
    def supports_packing(self) -> bool:
        """Last-token pooling on a backbone that masks packed texts apart (see forward_packed)."""
        model_type = getattr(self.backbone.config, "model_type", None)
        return self.pooling == "last" and model_type in PACKABLE_MODEL_TYPES

    def forward_packed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, last_token: torch.Tensor
    ) -> torch.Tensor:
        """Embeddings (N, H) of N texts packed end to end in rows, with no padding.

        ``position_ids`` (R, W) restart at 0 at every text: with no attention mask, transformers
        then lets each token attend to earlier tokens of its own text only. ``last_token`` (2, N)
        holds the row and column of each text's last token (its EOS). See
        ``embedft.module.pack_texts``.
        """
        out = self.backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=None)
        hidden = out.last_hidden_state  # (R, W, H)
        return F.normalize(hidden[last_token[0], last_token[1]].float(), dim=-1)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Embed ``texts`` in batches, in order (see ``embedft.eval.encoder`` for the fast path)."""
        was_training = self.training
        self.eval()
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start : start + batch_size])
            chunks.append(self(**{k: v.to(self.device) for k, v in batch.items()}).cpu())
        self.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0)


def _lora_targets(model_cfg: ModelConfig, lora_cfg: LoraConfig) -> list[str]:
    return list(lora_cfg.target_modules or model_cfg.lora_target_modules)


def apply_lora(backbone: nn.Module, model_cfg: ModelConfig, lora_cfg: LoraConfig) -> nn.Module:
    """Wrap ``backbone`` in peft LoRA adapters; only adapter weights stay trainable."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = _lora_targets(model_cfg, lora_cfg)
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
    return get_peft_model(backbone, peft_cfg)


def build_embedder(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
) -> Embedder:
    """Load the backbone and tokenizer named by ``model_cfg`` and add LoRA if enabled.

    ``dtype`` overrides ``model_cfg.dtype`` (a DDP job builds on the CPU in the dtype its GPU
    will use). LoRA weights stay float32 whatever the base dtype (peft's adapter autocast).
    """
    from embedft.model.sources import load_tokenizer, resolve_model_dir

    model_dir = resolve_model_dir(model_cfg)
    tokenizer = load_tokenizer(model_cfg)
    dtype = dtype or resolve_dtype(model_cfg.dtype, device)
    backbone = AutoModel.from_pretrained(
        model_dir,
        dtype=dtype,
        attn_implementation=model_cfg.attn_implementation,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    backbone.config.use_cache = False
    for p in backbone.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        # Non-reentrant checkpointing lets gradients reach LoRA weights inside checkpointed
        # blocks even though the (frozen) inputs do not require grad.
        backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    if lora_cfg is not None and lora_cfg.enabled:
        backbone = apply_lora(backbone, model_cfg, lora_cfg)
    embedder = Embedder(
        backbone,
        tokenizer,
        pooling=model_cfg.pooling,
        append_eos=model_cfg.append_eos,
        max_length=model_cfg.max_length,
        prompt=model_cfg.prompt,
    )
    return embedder.to(device)


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (the LoRA adapters): what a checkpoint needs to hold."""
    return {n: p.detach().cpu() for n, p in module.named_parameters() if p.requires_grad}


def saved_model_config(saved: Any, where: str, *, trust_remote_code: bool = False) -> ModelConfig:
    """The ModelConfig stored in a file (a checkpoint's or an export's), validated.

    The file's own ``trust_remote_code`` is ignored: a file that travelled between people never
    decides that code runs. ``trust_remote_code`` is the caller's (its command line) instead.
    """
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where}: no model config stored (got {type(saved).__name__})")
    if saved.get("trust_remote_code") and not trust_remote_code:
        log.warning(
            "%s: its saved config sets model.trust_remote_code=true; ignored (pass "
            "trust_remote_code=true yourself to let model %r run its own code)",
            where,
            saved.get("name"),
        )
    saved = {**saved, "trust_remote_code": trust_remote_code}
    try:
        return to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), saved))
    except Exception as err:  # unknown keys, wrong types, failed checks: the file is at fault
        raise CheckpointError(f"{where}: the stored model config is invalid ({err})") from err


def load_embedder_from_checkpoint(
    ckpt_path: str | Path,
    device: str | torch.device = "cpu",
    model_override: ModelConfig | None = None,
    *,
    trust_remote_code: bool = False,
) -> Embedder:
    """Rebuild the embedder a training run saved: its resolved config + LoRA weights.

    The checkpoint is read by ``embedft.checkpoint.load_checkpoint`` (plain data only). Its model
    config never switches on ``trust_remote_code``; only the caller's argument does.
    ``model_override`` replaces the stored model config as it is.
    """
    path = Path(ckpt_path)
    ckpt = load_checkpoint(path)
    cfg = ckpt["embedft_config"]
    model_cfg = model_override or saved_model_config(
        cfg.get("model"), f"ckpt={path}", trust_remote_code=trust_remote_code
    )
    try:
        lora_cfg = to_object(OmegaConf.merge(OmegaConf.structured(LoraConfig), cfg["lora"]))
    except Exception as err:
        raise CheckpointError(f"ckpt={path}: the stored LoRA config is invalid ({err})") from err
    embedder = build_embedder(model_cfg, lora_cfg, device=device)
    prefix = "embedder."
    weights = {
        k[len(prefix) :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)
    }
    result = embedder.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path}: weights not in the model: {result.unexpected_keys[:5]}")
    trainable = {n for n, p in embedder.named_parameters() if p.requires_grad}
    absent = trainable - set(weights)
    if absent:
        raise ValueError(f"{path}: adapter weights missing from checkpoint: {sorted(absent)[:5]}")
    return embedder
