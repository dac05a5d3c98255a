"""The embedding model: backbone (+ LoRA) + pooling + L2 normalisation.

``build_embedder`` loads a transformers ``AutoModel`` (the base model: no LM head, so no
vocabulary logits and no per-layer hidden states are ever computed) with SDPA attention, wraps it
in peft LoRA adapters when asked, and freezes everything else. ``Embedder.forward`` maps token ids
to unit-length embeddings; ``Embedder.tokenize`` appends EOS the way the paper embeds text (and
wraps it in ``model.prompt``, if set).
``Embedder.embed`` is how every caller turns a padded batch into embeddings: packed end to end
without padding, or in trimmed sub-batches (``embedft.model.packing``), by the embedder's
``pack_len`` and ``sub_batch_rows`` (config group ``embed``).
Loading a saved one (checkpoint, export) is ``embedft.model.load``'s job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedTokenizerBase

from embedft.config import EmbedConfig, LoraConfig, ModelConfig
from embedft.model.attention import VARLEN, PackedLayout, packed_call
from embedft.model.lora import apply_lora, lora_compute
from embedft.model.packing import can_pack, embed_in_sub_batches, pack_texts, packed_mean
from embedft.model.pooling import pool
from embedft.model.tokenize import tokenize_with_eos

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``auto`` is bf16 on a GPU (the paper's setting) and fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return _DTYPES[name]


class Embedder(nn.Module):
    """Texts -> L2-normalised sentence embeddings (B, H), float32.

    ``pack_len`` and ``sub_batch_rows`` are how ``embed`` lays a batch out (config group
    ``embed``): they change speed and memory, not the embeddings.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        pooling: str = "last",
        append_eos: bool = True,
        max_length: int = 150,
        pack_len: int = EmbedConfig.pack_len,
        sub_batch_rows: int = EmbedConfig.sub_batch_rows,
        prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.append_eos = append_eos
        self.max_length = max_length
        self.pack_len = pack_len
        self.sub_batch_rows = sub_batch_rows
        self.prompt = prompt  # model.prompt template, applied by tokenize

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def tokenize(self, texts: list[str], padding_side: str = "right") -> dict[str, torch.Tensor]:
        return tokenize_with_eos(
            self.tokenizer, list(texts), self.max_length, self.append_eos, padding_side, self.prompt
        )

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        pack_len: int | None = None,
        sub_batch_rows: int | None = None,
    ) -> torch.Tensor:
        """Embeddings (N, H) of padded rows (N, T), in their order: the one way ids are embedded.

        Packed end to end into rows of ``pack_len`` tokens when ``pack_len > 0`` and the backbone
        can pack (``embedft.model.packing.can_pack``); else length-sorted sub-batches of
        ``sub_batch_rows`` rows, each cut to its own longest row (0: one forward). Both default to
        this embedder's settings; a caller may override them for one call.
        """
        pack_len = self.pack_len if pack_len is None else pack_len
        rows = self.sub_batch_rows if sub_batch_rows is None else sub_batch_rows
        if pack_len > 0 and self.supports_packing:
            return self.forward_packed(*pack_texts(input_ids, attention_mask, pack_len))
        return embed_in_sub_batches(self, input_ids, attention_mask, rows)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One padded forward (see ``embed``, which also packs and trims)."""
        # Positions count attended tokens only, so a left-padded row sees the same positions as
        # its right-padded twin (decoders otherwise number pad tokens too).
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        with lora_compute(self.backbone):
            out = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            )
        hidden = out.last_hidden_state  # (B, T, H)
        return F.normalize(pool(hidden, attention_mask, self.pooling).float(), dim=-1)

    @property
    def supports_packing(self) -> bool:
        """A backbone that masks packed texts apart (see forward_packed), last or mean pooling."""
        return can_pack(getattr(self.backbone.config, "model_type", None), self.pooling)

    def forward_packed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, last_token: torch.Tensor
    ) -> torch.Tensor:
        """Embeddings (N, H) of N texts packed end to end in rows, with no padding.

        ``position_ids`` (R, W) restart at 0 at every text: with no attention mask and no KV
        cache, transformers then lets each token attend to earlier tokens of its own text only.
        ``use_cache=False`` is passed here, not left to the backbone's config: with a cache it
        would attend across texts. ``last_token`` (2, N) holds the row and column of each text's
        last token (its EOS). See ``embedft.model.packing.pack_texts``. With the ``VARLEN``
        attention (the default for SDPA backbones, ``embedft.model.attention``) each text's
        attention runs at its own length instead of under a mask as wide as the row.
        """
        extra = {}
        if getattr(self.backbone.config, "_attn_implementation", None) == VARLEN:
            extra["packed_layout"] = PackedLayout.from_packing(position_ids, last_token)
        with lora_compute(self.backbone), packed_call():
            out = self.backbone(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=None,
                use_cache=False,
                **extra,
            )
        hidden = out.last_hidden_state  # (R, W, H)
        if self.pooling == "mean":
            return F.normalize(packed_mean(hidden, position_ids, last_token), dim=-1)
        return F.normalize(hidden[last_token[0], last_token[1]].float(), dim=-1)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Embed ``texts`` in batches, in order (see ``embedft.eval.encoder`` for the fast path)."""
        was_training = self.training
        self.eval()
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start : start + batch_size])
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            chunks.append(self.embed(ids, mask, pack_len=0, sub_batch_rows=0).cpu())
        self.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0)


def build_embedder(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig | None = None,
    *,
    embed_cfg: EmbedConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
) -> Embedder:
    """Load the backbone and tokenizer named by ``model_cfg`` and add LoRA if enabled.

    ``embed_cfg`` sets how ``Embedder.embed`` lays batches out (default: ``EmbedConfig()``).
    ``dtype`` overrides ``model_cfg.dtype`` (a DDP job builds on the CPU in the dtype its GPU
    will use). LoRA weights stay float32 whatever the base dtype (peft's adapter autocast).
    """
    from embedft.model.sources import load_tokenizer, resolve_model_dir

    embed_cfg = embed_cfg or EmbedConfig()
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
    if model_cfg.attn_implementation == "sdpa" and can_pack(
        backbone.config.model_type, model_cfg.pooling
    ):
        backbone.set_attn_implementation(VARLEN)  # packed texts attend text by text
    for p in backbone.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        # Non-reentrant checkpointing lets gradients reach LoRA weights inside checkpointed
        # blocks even though the (frozen) inputs do not require grad. Newer transformers call it
        # activation checkpointing, and its old name warns on every run.
        if hasattr(backbone, "activation_checkpointing_enable"):
            backbone.activation_checkpointing_enable({"use_reentrant": False})
        else:
            backbone.gradient_checkpointing_enable({"use_reentrant": False})
    if lora_cfg is not None and lora_cfg.enabled:
        backbone = apply_lora(backbone, model_cfg, lora_cfg)
    embedder = Embedder(
        backbone,
        tokenizer,
        pooling=model_cfg.pooling,
        append_eos=model_cfg.append_eos,
        max_length=model_cfg.max_length,
        pack_len=embed_cfg.pack_len,
        sub_batch_rows=embed_cfg.sub_batch_rows,
        prompt=model_cfg.prompt,
    )
    return embedder.to(device)


def compile_layers(backbone: nn.Module, backend: str = "inductor") -> None:
    """``torch.compile`` the norms and the MLP of every decoder layer (``trainer.compile``).

    Regional compilation with dynamic shapes: the layers share one compiled graph per module
    kind, so compiling costs seconds, and a batch of new lengths does not recompile. The fusions
    are where eager time goes between the big matmuls: RMSNorm's float32 round trip (~8 ops and
    their backward per norm) and the MLP's activation times up-projection. Attention and the
    q/k/v/o projections stay eager: text-by-text attention (``embedft.model.attention``) is a
    Python loop, and compiling whole layers around it measured slower on CPU than these regions
    (experiments/bench_train.py, ``compile`` ablation).
    """
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"trainer.compile: {type(base).__name__} has no .layers to compile")
    for layer in layers:
        for name, child in layer.named_children():
            if name == "mlp" or "norm" in name:
                child.compile(dynamic=True, backend=backend)


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (the LoRA adapters): what a checkpoint needs to hold."""
    return {n: p.detach().cpu() for n, p in module.named_parameters() if p.requires_grad}
