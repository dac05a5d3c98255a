"""LoRA adapters (embedft/model/lora.py): the CPU dropout mask and bf16 adapter compute."""

from __future__ import annotations

import pytest
import torch

from embedft.config import LoraConfig, ModelConfig
from embedft.model.lora import LoraDropout, apply_lora, lora_compute
from tests.conftest import make_tiny_llama


def test_lora_dropout_drops_a_fraction_p_and_rescales_the_rest():
    # Given a million ones and LoRA dropout p=0.1 in training mode
    dropout = LoraDropout(0.1).train()
    x = torch.ones(1000, 1000)
    torch.manual_seed(0)
    # When it is applied
    y = dropout(x)
    # Then about 10% are zero (binomial sd 3e-4: 5 sd allowed) and the rest are 1 / 0.9
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.1) < 5 * (0.1 * 0.9 / x.numel()) ** 0.5
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    # And the mask comes from torch's generator: the same seed draws the same mask
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)
    assert not torch.equal(dropout(x), y)  # the next draw is another mask


def test_lora_dropout_is_the_identity_in_eval_mode_and_at_p_0():
    x = torch.randn(4, 5)
    assert LoraDropout(0.1).eval()(x) is x
    assert LoraDropout(0.0).train()(x) is x


def _lora_llama(dtype: torch.dtype, dropout: float = 0.1):
    backbone = make_tiny_llama(seed=0).to(dtype)
    for p in backbone.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    cfg = ModelConfig(name="tiny", source="tiny", path="llama")
    return apply_lora(backbone, cfg, LoraConfig(r=4, alpha=8, dropout=dropout))


def test_apply_lora_uses_lora_dropout():
    model = _lora_llama(torch.float32)
    dropouts = [m for m in model.modules() if isinstance(m, LoraDropout)]
    assert len(dropouts) == 2 * 2 and {d.p for d in dropouts} == {0.1}  # q, v in 2 layers
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_compute_runs_adapters_in_the_backbone_dtype(dtype):
    # Given a LoRA backbone in float32 or bfloat16 (the adapters' weights are float32)
    model = _lora_llama(dtype, dropout=0.0)
    lora_layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert {m.lora_A["default"].weight.dtype for m in lora_layers} == {torch.float32}
    seen = []
    hook = (
        lora_layers[0]
        .lora_A["default"]
        .register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    )
    ids = torch.randint(0, 64, (2, 7))
    # When it runs inside lora_compute and the loss is backpropagated
    with lora_compute(model):
        out = model(input_ids=ids).last_hidden_state
    out.float().square().mean().backward()
    hook.remove()
    # Then the adapters computed in the backbone's dtype, their float32 weights got float32
    # gradients, and peft's own input casting is back on afterwards
    assert seen == [dtype] and out.dtype == dtype
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)
    assert all(m.cast_input_dtype_enabled for m in lora_layers)


def test_lora_dropout_is_no_graph_break_under_torch_compile():
    # Given LoRA dropout in training mode (its CPU mask uses random_, which dynamo cannot trace)
    dropout = LoraDropout(0.1).train()
    # When dynamo traces it, as trainer.compile does inside every decoder layer
    explanation = torch._dynamo.explain(dropout)(torch.ones(8, 16))
    # Then it is one graph (F.dropout), not a break per adapter
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
