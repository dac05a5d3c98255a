"""MiniCPM-1/2 (e.g. openbmb/MiniCPM-2B) natively on transformers' Llama implementation.

transformers 5 ships no MiniCPM-1/2 class (only MiniCPM3), and the hub repos' remote code targets
transformers 4. MiniCPM-2B is the Llama architecture plus three scalings (MiniCPM paper,
arXiv 2404.06395, "muP"):

    h_0     = embed_tokens(input_ids) * scale_emb
    h       = h + scale_depth / sqrt(num_hidden_layers) * attn(input_layernorm(h))
    h       = h + scale_depth / sqrt(num_hidden_layers) * mlp(post_attention_layernorm(h))
    logits  = lm_head(norm(h) / (hidden_size / dim_model_base))     # causal-LM head only

Weight names are Llama's (`model.layers.N.self_attn.q_proj`, `model.embed_tokens`, `lm_head`),
so a MiniCPM-2B checkpoint loads unchanged. Importing this module registers `model_type="minicpm"`
with AutoConfig / AutoModel / AutoModelForCausalLM; because the registered classes are local,
AutoConfig picks them even when a config.json carries an `auto_map` to remote code, without
`trust_remote_code` (see transformers' `explicit_local_code` in AutoConfig.from_pretrained).

    >>> import embedft  # registers minicpm
    >>> from transformers import AutoModel
    >>> backbone = AutoModel.from_pretrained("openbmb/MiniCPM-2B-dpo-bf16")  # -> MiniCPMModel
"""

# No `from __future__ import annotations`: transformers reads the `config: MiniCPMConfig`
# class annotation at runtime to set config_class.
import math

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)


class MiniCPMConfig(LlamaConfig):
    """LlamaConfig plus MiniCPM's scalings; defaults are those of the hub's configuration_minicpm.

    scale_emb: factor on the input embeddings (MiniCPM-2B: 12).
    scale_depth: residual branches are multiplied by scale_depth / sqrt(num_hidden_layers)
        (MiniCPM-2B: 1.4).
    dim_model_base: the LM head sees hidden / (hidden_size / dim_model_base) (MiniCPM-2B: 256);
        irrelevant for embeddings, kept so that the causal-LM logits are faithful.
    tie_word_embeddings: True, as in OpenBMB's configuration_minicpm (Llama's default is False):
        the hub checkpoints store no ``lm_head.weight``, so an untied head would be random.
    """

    model_type = "minicpm"

    scale_emb: float = 1.0
    scale_depth: float = 1.0
    dim_model_base: int = 1
    tie_word_embeddings: bool = True


class MiniCPMScaledEmbedding(nn.Embedding):
    """nn.Embedding whose output is multiplied by scale_emb (weight name stays `embed_tokens`)."""

    def __init__(
        self, num_embeddings: int, embedding_dim: int, padding_idx: int | None, scale_emb: float
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        # A plain float, not a buffer: nothing to initialise or save, works on the meta device.
        self.scale_emb = float(scale_emb)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.scale_emb


class MiniCPMDecoderLayer(LlamaDecoderLayer):
    """LlamaDecoderLayer with both residual branches scaled by scale_depth / sqrt(num_layers)."""

    def __init__(self, config: MiniCPMConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.residual_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        attn_out, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + attn_out * self.residual_scale
        mlp_out = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + mlp_out * self.residual_scale


class MiniCPMModel(LlamaModel):
    """LlamaModel with MiniCPM's embedding and residual scalings; forward is Llama's."""

    config: MiniCPMConfig
    _no_split_modules = ["MiniCPMDecoderLayer"]

    def __init__(self, config: MiniCPMConfig) -> None:
        # LlamaModel.__init__ would build (and initialise) Llama layers only to have them replaced,
        # so its body is repeated here with the MiniCPM modules; attribute names stay Llama's.
        LlamaPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = MiniCPMScaledEmbedding(
            config.vocab_size, config.hidden_size, self.padding_idx, config.scale_emb
        )
        self.layers = nn.ModuleList(
            [MiniCPMDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class MiniCPMLMHead(nn.Linear):
    """Bias-free LM head that divides its input by hidden_size / dim_model_base (MiniCPM's muP)."""

    def __init__(self, config: MiniCPMConfig) -> None:
        super().__init__(config.hidden_size, config.vocab_size, bias=False)
        self.width_ratio = config.hidden_size / config.dim_model_base

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states / self.width_ratio)


class MiniCPMForCausalLM(LlamaForCausalLM):
    """MiniCPMModel + (tied) LM head; the checkpoint layout of the hub's MiniCPM-2B repos."""

    config: MiniCPMConfig
    _no_split_modules = ["MiniCPMDecoderLayer"]

    def __init__(self, config: MiniCPMConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.model = MiniCPMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = MiniCPMLMHead(config)
        self.post_init()


AutoConfig.register("minicpm", MiniCPMConfig, exist_ok=True)
AutoModel.register(MiniCPMConfig, MiniCPMModel, exist_ok=True)
AutoModelForCausalLM.register(MiniCPMConfig, MiniCPMForCausalLM, exist_ok=True)
