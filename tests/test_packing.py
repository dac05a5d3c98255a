"""embedft.model.packing and ``Embedder.embed``, the one path from padded ids to embeddings.

Every layout computes what one padded forward computes, embeddings and LoRA gradients alike:
texts packed without padding (``pack_texts`` + ``Embedder.forward_packed``, the default, in every
packable family, whatever the backbone's ``use_cache``), and length-sorted sub-batches each cut
to its longest row (``embed_in_sub_batches``, the fallback).
"""

import pytest
import torch

from embedft.config import LoraConfig, OptimConfig
from embedft.losses.infonce import InfoNCELoss
from embedft.model.embedder import Embedder, build_embedder, compile_layers
from embedft.model.packing import (
    can_pack,
    embed_in_sub_batches,
    pack_texts,
    packed_mean,
    token_chunks,
    trim_padding,
)
from embedft.module import EmbeddingModule
from tests.conftest import assert_same_grads, make_embedder, triplet_batch

# Lengths differ a lot on purpose: sub-batches then cut different amounts of padding.
ANCHORS = ["a man is playing guitar in the park", "a dog", "two people sitting on a red bench"]
POSITIVES = ["a man plays music", "a dog is outside", "people"]
NEGATIVES = ["nobody", "a cat is sleeping inside the car", "nobody is there"]
FAMILIES = ["tiny_llama", "tiny_gemma", "tiny_gemma3", "tiny_phi", "tiny_minicpm"]


def _batch(embedder):
    return triplet_batch(embedder, ANCHORS, POSITIVES, NEGATIVES)


def test_pack_texts_layout_by_hand():
    # Given texts of 3 and 2 tokens (right padded) and of 3 tokens (left padded); EOS id 2
    ids = torch.tensor([[11, 12, 2, 0], [21, 2, 0, 0], [0, 31, 32, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]])
    # When they are packed into rows of at most 6 tokens, longest first (ties in input order)
    packed, positions, last = pack_texts(ids, mask, pack_len=6)
    # Then texts 0 and 2 fill row 0, text 1 starts row 1; positions restart at every text
    assert packed.tolist() == [[11, 12, 2, 31, 32, 2], [21, 2, 0, 0, 0, 0]]
    assert positions.tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 0, 0, 0, 0]]
    # and each text's EOS is found at (row, column)
    assert last.tolist() == [[0, 1, 0], [2, 1, 5]]


def test_packed_mean_averages_each_texts_own_tokens_by_hand():
    # Given the packed layout above and hidden states equal to each token's id (H = 1)
    ids = torch.tensor([[11, 12, 2, 0], [21, 2, 0, 0], [0, 31, 32, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]])
    packed, positions, last = pack_texts(ids, mask, pack_len=6)
    hidden = packed.unsqueeze(-1).to(torch.bfloat16)  # (2, 6, 1)
    # When mean pooled; Then each text averages its own tokens only (not its row neighbour's,
    # not the tail), in float32, in the input order
    means = packed_mean(hidden, positions, last)
    assert means.dtype == torch.float32
    torch.testing.assert_close(means.flatten(), torch.tensor([25 / 3, 23 / 2, 65 / 3]))


def test_trim_padding_cuts_the_columns_no_row_attends():
    # Given rows padded on both sides beyond what any of them needs
    ids = torch.tensor([[0, 5, 6, 0, 0], [0, 0, 7, 8, 0]])
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 0]])
    # When trimmed; Then columns 1-3 remain, the ones some row attends
    cut_ids, cut_mask = trim_padding(ids, mask)
    assert cut_ids.tolist() == [[5, 6, 0], [0, 7, 8]]
    assert cut_mask.tolist() == [[1, 1, 0], [0, 1, 1]]


def test_token_chunks_by_hand():
    # Given rows of 9, 5, 4, 3, 3, 1 tokens (longest first, as gradient caching sorts them)
    lengths = torch.tensor([9, 5, 4, 3, 3, 1])
    # When they are cut into chunks of at most 8 tokens; Then consecutive rows fill each chunk
    # and the row longer than the budget gets one of its own
    assert token_chunks(lengths, 8) == [1, 1, 2, 2]  # 9 | 5 | 4+3 | 3+1
    assert token_chunks(lengths, 100) == [6]
    assert token_chunks(lengths, 1) == [1] * 6


def test_a_known_family_can_pack_with_last_or_mean_pooling():
    assert can_pack("llama", "last") and can_pack("gemma3_text", "last")
    assert can_pack("llama", "mean") and not can_pack("llama", "max")
    assert not can_pack("bert", "last") and not can_pack(None, "last")


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_sorted_sub_batches_equal_one_padded_forward(rows):
    # Given the same embedder twice (no dropout) and a batch of texts of very different lengths
    one, split = make_embedder(seed=3).train(), make_embedder(seed=3).train()
    batch = _batch(one)
    loss_fn = InfoNCELoss()
    # When one embeds in a single padded forward and the other in length-sorted sub-batches
    emb_one = one(batch["input_ids"], batch["attention_mask"])
    emb_split = embed_in_sub_batches(split, batch["input_ids"], batch["attention_mask"], rows)
    # Then the embeddings come back in the input order, equal, and so do the LoRA gradients
    torch.testing.assert_close(emb_split, emb_one, atol=1e-5, rtol=1e-4)
    loss_fn(*emb_one.split(3)).backward()
    loss_fn(*emb_split.split(3)).backward()
    assert_same_grads(one, split)


def _family_embedder(name: str, use_cache: bool) -> Embedder:
    """A LoRA embedder of a tiny family (no dropout, B non-zero) whose config says ``use_cache``."""
    from hydra import compose, initialize_config_dir

    from embedft.config import to_object
    from embedft.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        model_cfg = to_object(compose("run", [f"model={name}"]).model)
    torch.manual_seed(0)
    embedder = build_embedder(model_cfg, LoraConfig(dropout=0.0)).train()
    with torch.no_grad():
        for n, p in embedder.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    embedder.backbone.config.use_cache = use_cache
    assert embedder.backbone.get_base_model().config.use_cache is use_cache
    return embedder


@pytest.mark.parametrize(
    ("use_cache", "pooling"), [(False, "last"), (True, "last"), (False, "mean")]
)
@pytest.mark.parametrize("name", FAMILIES)
def test_packed_texts_embed_as_padded_ones_in_every_family(name, use_cache, pooling):
    # Given a LoRA embedder of each packable family, its config saying use_cache (with a KV
    # cache transformers would let packed texts attend to each other), and texts of very
    # different lengths; tiny_gemma3 has a sliding window of 8 tokens, shorter than some.
    # Mean pooling: each text's mean must hold its own tokens only, none of its row neighbours'
    padded_model = _family_embedder(name, use_cache)
    packed_model = _family_embedder(name, use_cache)
    padded_model.pooling = packed_model.pooling = pooling
    assert packed_model.supports_packing
    batch = padded_model.tokenize(ANCHORS + POSITIVES + NEGATIVES)
    # When one embeds the padded rows and the other the same texts packed 20 tokens a row
    padded = padded_model.embed(**batch, pack_len=0, sub_batch_rows=0)
    packed = packed_model.embed(**batch, pack_len=20)
    # Then every embedding and every LoRA gradient agree
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    InfoNCELoss()(*padded.split(3)).backward()
    InfoNCELoss()(*packed.split(3)).backward()
    assert_same_grads(padded_model, packed_model)


def test_embed_packs_when_the_backbone_can_and_sub_batches_otherwise():
    # Given a tiny Llama embedder (last-token pooling) with its default settings
    embedder = make_embedder()
    batch = _batch(embedder)
    expected = embedder(batch["input_ids"], batch["attention_mask"]).detach()
    calls = []
    embedder.forward_packed = lambda *a: (
        calls.append("packed") or Embedder.forward_packed(embedder, *a)
    )
    embedder.forward = lambda ids, mask: (
        calls.append(tuple(ids.shape)) or Embedder.forward(embedder, ids, mask)
    )
    # When the training step embeds the batch; Then it packed, through Embedder.embed
    module = EmbeddingModule(embedder, InfoNCELoss(), OptimConfig(), 10)
    torch.testing.assert_close(module.embed_batch(batch), expected, atol=1e-5, rtol=1e-4)
    assert calls == ["packed"]
    # When packing is off: length-sorted sub-batches of sub_batch_rows, each as wide as its longest
    calls.clear()
    embedder.pack_len, embedder.sub_batch_rows = 0, 4
    torch.testing.assert_close(module.embed_batch(batch), expected, atol=1e-5, rtol=1e-4)
    lengths = batch["attention_mask"].sum(dim=1).sort(descending=True).values.tolist()
    assert calls == [(4, lengths[0]), (4, lengths[4]), (1, lengths[8])]
    # When the backbone is no family that masks packed texts apart: sub-batches, whatever
    # pack_len says
    calls.clear()
    embedder.pack_len = 128
    embedder.backbone.config.model_type = "bert"
    assert not embedder.supports_packing
    torch.testing.assert_close(module.embed_batch(batch), expected, atol=1e-5, rtol=1e-4)
    assert "packed" not in calls


def test_a_call_may_override_the_embedders_layout():
    # Given an embedder that packs by default
    embedder = make_embedder()
    batch = _batch(embedder)
    padded_width = batch["input_ids"].shape[1]
    seen = []
    embedder.forward = lambda ids, mask: (
        seen.append(tuple(ids.shape)) or Embedder.forward(embedder, ids, mask)
    )
    # When one call asks for one padded forward (as the STS encoder does)
    embedder.embed(batch["input_ids"], batch["attention_mask"], pack_len=0, sub_batch_rows=0)
    # Then that call ran one forward over all rows; the embedder's own settings are unchanged
    assert seen == [(9, padded_width)]
    assert (embedder.pack_len, embedder.sub_batch_rows) == (4096, 64)


def test_compiled_norms_and_mlps_embed_as_eager_ones():
    # Given two equal embedders, one with trainer.compile's regions compiled (dynamo's eager
    # backend here: the same graph capture without the C++ build)
    eager, compiled = make_embedder(seed=5).train(), make_embedder(seed=5).train()
    compile_layers(compiled.backbone, backend="eager")
    layer = compiled.backbone.get_base_model().layers[0]
    regions = {n for n, m in layer.named_children() if m._compiled_call_impl is not None}
    assert regions == {"mlp", "input_layernorm", "post_attention_layernorm"}
    batch = _batch(eager)
    # When both embed the packed batch; Then embeddings and LoRA gradients agree
    emb_eager = eager.embed(batch["input_ids"], batch["attention_mask"])
    emb_compiled = compiled.embed(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(emb_compiled, emb_eager, atol=1e-5, rtol=1e-4)
    InfoNCELoss()(*emb_eager.split(3)).backward()
    InfoNCELoss()(*emb_compiled.split(3)).backward()
    assert_same_grads(eager, compiled)
