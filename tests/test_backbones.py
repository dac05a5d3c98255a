"""Every backbone family trains with LoRA on its own module names; real SmolLM2 embeds sensibly."""

import pytest
import torch
from hydra import compose, initialize_config_dir

from embedft.config import LoraConfig, ModelConfig, to_object
from embedft.model.embedder import build_embedder
from embedft.paths import conf_dir

TEXTS = ["a man is playing a guitar", "a dog runs", "the cat sleeps on the red sofa"]


def _model_cfg(name: str) -> ModelConfig:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose("run", [f"model={name}"])
    return to_object(dcfg.model)


def _train_step(embedder):
    batch = embedder.tokenize(TEXTS)
    emb = embedder(batch["input_ids"], batch["attention_mask"])
    (emb[0] @ emb[1] - emb[0] @ emb[2]).backward()
    return {n: p.grad for n, p in embedder.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "name", ["tiny_llama", "tiny_gemma", "tiny_gemma3", "tiny_phi", "tiny_minicpm"]
)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_forward_backward_on_every_family(name, checkpointing):
    # Given a tiny random model of each family with the LoRA targets its model file names
    cfg = _model_cfg(name)
    embedder = build_embedder(cfg, LoraConfig(), gradient_checkpointing=checkpointing).train()
    params = [n for n, _ in embedder.named_parameters() if ".lora_A." in n]
    wrapped = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n in params}
    assert wrapped == set(cfg.lora_target_modules)
    # And its blocks checkpoint activations exactly when asked to
    assert any(getattr(m, "gradient_checkpointing", False) for m in embedder.modules()) == (
        checkpointing
    )
    # When one training step's backward runs
    grads = _train_step(embedder)
    # Then only LoRA weights train, and the B matrices (zero at init) receive gradient
    assert grads and all("lora_" in n for n in grads)
    assert all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_phi_output_projection_is_dense_not_o_proj():
    cfg = _model_cfg("tiny_phi")
    embedder = build_embedder(cfg, LoraConfig(target_modules=["q_proj", "dense"]))
    assert any(".dense.lora_A" in n for n, _ in embedder.named_parameters())
    with pytest.raises(ValueError, match=r"\['o_proj'\] not found in model 'tiny_phi'.*'dense'"):
        build_embedder(cfg, LoraConfig(target_modules=["q_proj", "o_proj"]))


@pytest.mark.slow
def test_smollm2_offline_puts_paraphrases_closer_than_unrelated_text():
    embedder = build_embedder(_model_cfg("smollm2"), None)
    a, b, c = embedder.encode(
        [
            "A man is playing a guitar on stage.",
            "On stage, a man plays the guitar.",
            "The stock market fell sharply on Tuesday.",
        ]
    )
    assert torch.dot(a, b) > torch.dot(a, c)
    assert torch.dot(a, b) > torch.dot(b, c)
