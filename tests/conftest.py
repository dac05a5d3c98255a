"""Shared fixtures: a tokenizer built in code, tiny random backbones, the offline data directory."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Built models (tiny test models, converted GGUF) are cached inside the checkout, not in $HOME.
os.environ.setdefault(
    "EMBEDFT_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "models")
)

WORDS = (
    "a man woman child dog cat is are playing sleeping running eating on in the park street "
    "food ball guitar music outside inside happy sad nobody there two people sitting bench "
    "red blue car drives road fast slowly reads book"
).split()


def make_tokenizer():
    """A WordLevel tokenizer over ``WORDS`` with <pad>=0, <unk>=1, <eos>=2 (no EOS of its own)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )


def make_tiny_llama(vocab_size: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    model = LlamaModel(cfg)
    model.config.use_cache = False
    return model


def make_embedder(lora: bool = True, seed: int = 0, dropout: float = 0.0):
    """A tiny Llama embedder (LoRA r=4 on q_proj/v_proj), everything but LoRA frozen."""
    from embedft.config import LoraConfig, ModelConfig
    from embedft.model.embedder import Embedder
    from embedft.model.lora import apply_lora

    backbone = make_tiny_llama(seed=seed)
    for p in backbone.parameters():
        p.requires_grad_(False)
    if lora:
        model_cfg = ModelConfig(name="tiny", source="tiny", path="llama")
        torch.manual_seed(seed + 1)
        backbone = apply_lora(backbone, model_cfg, LoraConfig(r=4, alpha=8, dropout=dropout))
        with torch.no_grad():  # B starts at zero: give it values so gradients reach A too
            for name, p in backbone.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    return Embedder(backbone, make_tokenizer(), pooling="last", append_eos=True, max_length=16)


def triplet_batch(embedder, anchors, positives, negatives) -> dict:
    """The collator's layout: anchors, positives, negatives stacked, tokenized, ``num_triplets``."""
    batch = embedder.tokenize(anchors + positives + negatives)
    batch["num_triplets"] = len(anchors)
    return batch


def lora_grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def assert_same_grads(a, b) -> None:
    """Both modules hold gradients for the same parameters, equal within fp32 noise.

    The absolute tolerance scales with the tensor's largest gradient (tiny random models reach
    ~40): summing in another order moves every element by ~1e-7 of that, small ones included.
    """
    g_a, g_b = lora_grads(a), lora_grads(b)
    assert g_a and g_a.keys() == g_b.keys()
    for name in g_a:
        scale = max(1.0, float(g_a[name].abs().max()))
        torch.testing.assert_close(g_b[name], g_a[name], atol=1e-5 * scale, rtol=1e-4)


def run_cli(main, *args: str) -> int:
    """Run the ``@hydra.main`` entry point ``main`` in this process as ``python -m <its module>
    args`` would, and return the exit code the process would have."""
    import sys

    from hydra.core.hydra_config import HydraConfig

    argv = sys.argv
    sys.argv = [main.__module__, *args]
    try:
        main()
    except SystemExit as exited:
        return 0 if exited.code is None else exited.code
    finally:
        sys.argv = argv
        HydraConfig.instance().cfg = None  # as a fresh process: no Hydra app running
    return 0


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def embedder():
    return make_embedder()


@pytest.fixture
def shared_data():
    """The offline STS/NLI data; skipped when absent, except in CI where it must be there."""
    from embedft.paths import data_dir

    path = data_dir()
    if not (path / "sts").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"offline data missing at {path} (set EMBEDFT_DATA_DIR)")
        pytest.skip(f"offline data not found at {path}; set EMBEDFT_DATA_DIR to run this test")
    return path
