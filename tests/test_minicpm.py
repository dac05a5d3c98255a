"""Tests for embedft.model.minicpm: native MiniCPM-1/2 on transformers' Llama implementation.

The MiniCPM forward is checked three ways on tiny random models: against LlamaModel when both
scalings are neutral, against a manual forward written here (embeddings x scale_emb, residual
branches x scale_depth / sqrt(L), LM head input / (hidden_size / dim_model_base)), and after a
round trip through a checkpoint in the hub's MiniCPM-2B format (config.json with an auto_map to
remote code that is not there, Llama weight names under a "model." prefix). A fresh interpreter
that imports only ``embedft`` finds the native classes (also through sentence-transformers).
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, LlamaConfig, LlamaModel

import embedft  # noqa: F401  (registers model_type "minicpm")
from embedft.config import ModelConfig
from embedft.export import export_checkpoint
from embedft.model.load import load_embedder_from_checkpoint
from embedft.model.minicpm import MiniCPMConfig, MiniCPMForCausalLM, MiniCPMModel
from embedft.model.sources import resolve_model_dir
from embedft.paths import repo_root
from tests.test_export import make_run

TINY = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    # A wide init so that the residual branches are not negligible next to the embeddings.
    initializer_range=0.2,
    attn_implementation="eager",
)
REAL_SCALES = dict(scale_emb=12.0, scale_depth=1.4, dim_model_base=16)


def _randomise_norms(model: torch.nn.Module) -> None:
    """RMSNorm weights start at 1; random ones make a mix-up of the norms visible."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[5, 17, 42, 99, 7, 250], [3, 8, 120, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return ids, mask


def test_neutral_scalings_equal_llama() -> None:
    # Given a MiniCPM model whose scalings are identities (scale_emb=1,
    # scale_depth=sqrt(L) so scale_depth/sqrt(L)=1) and a LlamaModel with the same weights
    torch.manual_seed(0)
    cfg = MiniCPMConfig(**TINY, scale_emb=1.0, scale_depth=math.sqrt(TINY["num_hidden_layers"]))
    minicpm = MiniCPMModel(cfg).eval()
    _randomise_norms(minicpm)
    llama = LlamaModel(LlamaConfig(**TINY)).eval()
    llama.load_state_dict(minicpm.state_dict())
    ids, mask = _batch()

    # When both encode a right-padded batch
    with torch.no_grad():
        got = minicpm(input_ids=ids, attention_mask=mask).last_hidden_state
        want = llama(input_ids=ids, attention_mask=mask).last_hidden_state

    # Then the hidden states agree at every attended position
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-6, rtol=0)


def _reference_forward(
    model: MiniCPMModel, ids: torch.Tensor, scale_emb: float, alpha: float
) -> torch.Tensor:
    """MiniCPM forward written out by hand; reuses only the Llama submodules' own forwards."""
    seq = ids.shape[1]
    h = F.embedding(ids, model.embed_tokens.weight) * scale_emb  # (B, T, H)
    positions = torch.arange(seq)[None]  # (1, T)
    cos_sin = model.rotary_emb(h, positions)
    causal = torch.full((seq, seq), float("-inf")).triu(1)[None, None]  # (1, 1, T, T) additive
    for layer in model.layers:
        attn, _ = layer.self_attn(
            hidden_states=layer.input_layernorm(h),
            attention_mask=causal,
            position_embeddings=cos_sin,
        )
        h = h + alpha * attn
        h = h + alpha * layer.mlp(layer.post_attention_layernorm(h))
    return model.norm(h)


def test_real_scalings_match_manual_forward() -> None:
    # Given a MiniCPM model with MiniCPM-2B-like scalings (scale_emb 12, scale_depth 1.4)
    torch.manual_seed(1)
    cfg = MiniCPMConfig(**TINY, **REAL_SCALES)
    model = MiniCPMModel(cfg).eval()
    _randomise_norms(model)
    ids = torch.tensor([[5, 17, 42, 99, 7, 250], [3, 8, 120, 2, 1, 9]])
    alpha = 1.4 / math.sqrt(2)  # scale_depth / sqrt(num_hidden_layers), 2 layers

    # When the model and the hand-written reference encode the same batch
    with torch.no_grad():
        got = model(input_ids=ids).last_hidden_state
        want = _reference_forward(model, ids, scale_emb=12.0, alpha=alpha)
        plain_llama = _reference_forward(model, ids, scale_emb=1.0, alpha=1.0)

    # Then they agree, and the scalings do change the output (the comparison is not vacuous)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain_llama).abs().max() > 1e-2


def test_causal_lm_head_divides_by_width_ratio() -> None:
    # Given a MiniCPM causal LM with tied embeddings, hidden 64 and dim_model_base 16 (ratio 4)
    torch.manual_seed(2)
    cfg = MiniCPMConfig(**TINY, **REAL_SCALES, tie_word_embeddings=True)
    lm = MiniCPMForCausalLM(cfg).eval()
    ids = torch.tensor([[5, 17, 42]])

    # When computing logits
    with torch.no_grad():
        hidden = lm.model(input_ids=ids).last_hidden_state
        logits = lm(input_ids=ids).logits

    # Then logits = (hidden / 4) @ E^T with E the (tied) input embedding matrix
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    torch.testing.assert_close(logits, (hidden / 4.0) @ lm.model.embed_tokens.weight.T)


def _save_hub_layout(directory, source: MiniCPMForCausalLM, **config_keys) -> None:
    """``source`` as the hub's MiniCPM-2B repos store it: config.json with model_type minicpm, an
    auto_map to remote code files that are not there, transformers-4 keys, ForCausalLM weight
    names ("model." prefix) and no ``lm_head.weight`` (the head is tied to the embeddings)."""
    weights = {k: v.contiguous() for k, v in source.state_dict().items() if k != "lm_head.weight"}
    assert all(k.startswith("model.") for k in weights)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {k: v for k, v in TINY.items() if k != "attn_implementation"}
    config.update(
        REAL_SCALES,
        architectures=["MiniCPMForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_minicpm.MiniCPMConfig",
            "AutoModel": "modeling_minicpm.MiniCPMModel",
            "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM",
        },
        model_type="minicpm",
        rope_theta=10000.0,
        rope_scaling=None,
        torch_dtype="float32",
        transformers_version="4.36.0",
        **config_keys,
    )
    (directory / "config.json").write_text(json.dumps(config))


def test_minicpm_checkpoint_loads_with_automodel_without_remote_code(tmp_path) -> None:
    # Given a tiny checkpoint in the hub's MiniCPM-2B layout (see _save_hub_layout)
    torch.manual_seed(3)
    source = MiniCPMForCausalLM(MiniCPMConfig(**TINY, **REAL_SCALES, tie_word_embeddings=True))
    _randomise_norms(source)
    source.eval()
    _save_hub_layout(tmp_path, source, tie_word_embeddings=True)

    # When AutoConfig / AutoModel load it with trust_remote_code left at its default
    loaded_cfg = AutoConfig.from_pretrained(tmp_path)
    model, info = AutoModel.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    model.eval()

    # Then the native classes are used, every weight is found, and outputs match the source
    assert type(loaded_cfg) is MiniCPMConfig
    assert (loaded_cfg.scale_emb, loaded_cfg.scale_depth, loaded_cfg.dim_model_base) == (
        12,
        1.4,
        16,
    )
    assert type(model) is MiniCPMModel
    assert not info["missing_keys"]
    ids, mask = _batch()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = source.model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_lm_head_is_tied_when_the_config_does_not_say(tmp_path) -> None:
    # Given a MiniCPM checkpoint without lm_head.weight whose config.json has no
    # tie_word_embeddings key (OpenBMB's configuration_minicpm defaults it to True)
    torch.manual_seed(4)
    source = MiniCPMForCausalLM(MiniCPMConfig(**TINY, **REAL_SCALES)).eval()
    _save_hub_layout(tmp_path, source)

    # When the causal LM is loaded from it
    lm, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    lm.eval()

    # Then the config ties the head by default, so the head is the input embedding, not random
    assert MiniCPMConfig().tie_word_embeddings is True
    assert lm.config.tie_word_embeddings is True
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    assert not info["missing_keys"]
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, source(input_ids=ids).logits)


@pytest.mark.parametrize("scale_depth, layers, expected", [(1.4, 40, 0.2213594362), (2.0, 4, 1.0)])
def test_residual_scale_value(scale_depth: float, layers: int, expected: float) -> None:
    # Given MiniCPM-2B's scale_depth 1.4 over 40 layers (1.4 / sqrt(40) = 0.22136) and 2 / sqrt(4)
    cfg = MiniCPMConfig(**{**TINY, "num_hidden_layers": layers}, scale_depth=scale_depth)
    # When a decoder layer is built / Then its residual scale is scale_depth / sqrt(L)
    layer = MiniCPMModel(cfg).layers[0]
    assert layer.residual_scale == pytest.approx(expected, rel=1e-9)


def _fresh_python(code: str, *args: str) -> str:
    """Run ``code`` in a new interpreter (nothing registered yet) and return its last line."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=repo_root(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_import_embedft_alone_registers_minicpm() -> None:
    # Given the tiny MiniCPM model directory (config.json says model_type "minicpm")
    model_dir = resolve_model_dir(ModelConfig(name="tiny_minicpm", source="tiny", path="minicpm"))
    # When a fresh process imports only `embedft` and then loads it with AutoModel
    code = (
        "import sys, embedft\n"
        "from transformers import AutoModel\n"
        "print(type(AutoModel.from_pretrained(sys.argv[1])).__name__)"
    )
    # Then transformers finds embedft's native class
    assert _fresh_python(code, model_dir) == "MiniCPMModel"


_LOAD_IN_SENTENCE_TRANSFORMERS = """
import json, sys
import numpy as np
import embedft
from sentence_transformers import SentenceTransformer
st = SentenceTransformer(sys.argv[1], device="cpu")
np.save(sys.argv[2], st.encode(json.loads(sys.argv[3])))
print(type(st[0].auto_model).__name__)
"""


@pytest.mark.slow  # a fresh interpreter importing sentence-transformers: ~15-45 s on 2 cores
def test_minicpm_export_loads_in_sentence_transformers_after_import_embedft(tmp_path) -> None:
    # Given a tiny MiniCPM checkpoint exported for sentence-transformers
    ckpt = make_run(tmp_path / "run", model="tiny_minicpm")
    export = export_checkpoint(ckpt, tmp_path / "export")
    texts = ["a man is playing guitar", "a dog", ""]
    # When a fresh process imports embedft, then loads the export with sentence-transformers
    out = tmp_path / "emb.npy"
    loaded = _fresh_python(_LOAD_IN_SENTENCE_TRANSFORMERS, str(export), str(out), json.dumps(texts))
    # Then the native MiniCPM class is used and the vectors are the checkpoint's
    assert loaded == "MiniCPMModel"
    reference = load_embedder_from_checkpoint(ckpt).encode(texts)
    torch.testing.assert_close(torch.from_numpy(np.load(out)), reference, atol=1e-5, rtol=1e-4)
