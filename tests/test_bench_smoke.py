"""The benchmark scripts run (tiny models, no timing assertions) and what they measure is exact.

* The layouts the training step uses to avoid padding (found with experiments/bench_train.py)
  compute what one padded forward computes: texts packed without padding (``pack_texts`` +
  ``Embedder.forward_packed``, the default, for every packable family), length-sorted
  sub-batches (``embed_in_sub_batches``, the fallback), and the gradient-cached step with
  length-sorted chunks; embeddings and LoRA gradients alike.
* ``experiments/gpu_mfu.py``: the FLOP count on a hand-sized model; the script runs on CPU in its
  tiny mode.
* ``experiments/bench_train.py`` and ``bench_memory.py`` run end to end on tiny_llama (slow).
"""

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from embedft.config import OptimConfig
from embedft.losses.infonce import InfoNCELoss
from embedft.model.embedder import Embedder
from embedft.module import EmbeddingModule, embed_in_sub_batches, pack_texts
from embedft.paths import repo_root
from tests.conftest import assert_same_grads, lora_grads, make_embedder, triplet_batch

# Lengths differ a lot on purpose: sub-batches then cut different amounts of padding.
ANCHORS = ["a man is playing guitar in the park", "a dog", "two people sitting on a red bench"]
POSITIVES = ["a man plays music", "a dog is outside", "people"]
NEGATIVES = ["nobody", "a cat is sleeping inside the car", "nobody is there"]


def _batch(embedder):
    return triplet_batch(embedder, ANCHORS, POSITIVES, NEGATIVES)


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_sorted_sub_batches_equal_one_padded_forward(rows):
    # Given the same embedder twice (no dropout) and a batch of texts of very different lengths
    one, split = make_embedder(seed=3).train(), make_embedder(seed=3).train()
    batch = _batch(one)
    loss_fn = InfoNCELoss()
    # When one embeds in a single padded forward and the other in length-sorted sub-batches
    emb_one = embed_in_sub_batches(one, batch["input_ids"], batch["attention_mask"], 0)
    emb_split = embed_in_sub_batches(split, batch["input_ids"], batch["attention_mask"], rows)
    # Then the embeddings come back in the input order, equal, and so do the LoRA gradients
    torch.testing.assert_close(emb_split, emb_one, atol=1e-5, rtol=1e-4)
    loss_fn(*emb_one.split(3)).backward()
    loss_fn(*emb_split.split(3)).backward()
    assert_same_grads(one, split)


class _CapturingOptimizer:
    """Stands in for AdamW: records the gradients the step would apply."""

    def __init__(self, params):
        self.params, self.param_groups, self.grads = list(params), [{"lr": 1.0}], None

    def step(self):
        self.grads = [p.grad.clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def test_grad_cache_step_with_sorted_chunks_equals_full_batch():
    # Given a module doing gradient caching in chunks of 2 texts (rows sorted by length first)
    plain, cached = make_embedder(seed=5).train(), make_embedder(seed=5).train()
    module = EmbeddingModule(cached, InfoNCELoss(), OptimConfig(), 10, grad_cache_chunk_size=2)
    opt = _CapturingOptimizer(p for p in cached.parameters() if p.requires_grad)
    strategy = SimpleNamespace(backward=lambda loss, *_: loss.backward())
    module._trainer = SimpleNamespace(world_size=1, gradient_clip_val=None, strategy=strategy)
    module.optimizers = lambda: opt
    module.lr_schedulers = lambda: SimpleNamespace(step=lambda: None)
    batch = _batch(cached)
    # When it runs one step, and the plain embedder backpropagates the whole batch at once
    loss = module._grad_cache_step(batch)
    plain_loss = InfoNCELoss()(*plain(batch["input_ids"], batch["attention_mask"]).split(3))
    plain_loss.backward()
    # Then loss and the gradients handed to the optimizer are the full-batch ones
    assert loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    names = [n for n, p in cached.named_parameters() if p.requires_grad]
    expected = dict(lora_grads(plain))
    assert len(names) == len(opt.grads) == len(expected)
    for name, grad in zip(names, opt.grads, strict=True):
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4)


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


FAMILIES = ["tiny_llama", "tiny_gemma", "tiny_gemma3", "tiny_phi", "tiny_minicpm"]


def _model_cfg(name):
    from hydra import compose, initialize_config_dir

    from embedft.config import to_object
    from embedft.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return to_object(compose("run", [f"model={name}"]).model)


@pytest.mark.parametrize("name", FAMILIES)
def test_packed_texts_embed_as_padded_ones_in_every_family(name):
    # Given a LoRA embedder of each packable family (no dropout, B non-zero) and texts of
    # very different lengths; tiny_gemma3 has a sliding window of 8 tokens, shorter than some
    from embedft.config import LoraConfig
    from embedft.model.embedder import build_embedder

    def make():
        torch.manual_seed(0)
        embedder = build_embedder(_model_cfg(name), LoraConfig(dropout=0.0)).train()
        with torch.no_grad():
            for n, p in embedder.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        return embedder

    padded_model, packed_model = make(), make()
    assert packed_model.supports_packing
    batch = padded_model.tokenize(ANCHORS + POSITIVES + NEGATIVES)
    # When one embeds the padded rows and the other the same texts packed 20 tokens a row
    padded = padded_model(batch["input_ids"], batch["attention_mask"])
    packed = packed_model.forward_packed(*pack_texts(**batch, pack_len=20))
    # Then every embedding and every LoRA gradient agree
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    InfoNCELoss()(*padded.split(3)).backward()
    InfoNCELoss()(*packed.split(3)).backward()
    assert_same_grads(padded_model, packed_model)


def test_training_step_packs_when_the_backbone_can_and_sub_batches_otherwise():
    embedder = make_embedder()  # tiny Llama, last-token pooling
    module = EmbeddingModule(embedder, InfoNCELoss(), OptimConfig(), 10, sub_batch_rows=2)
    batch = _batch(embedder)
    expected = embedder(batch["input_ids"], batch["attention_mask"]).detach()
    calls = []
    embedder.forward_packed = lambda *a: (
        calls.append("packed") or Embedder.forward_packed(embedder, *a)
    )
    torch.testing.assert_close(module.embed_batch(batch), expected, atol=1e-5, rtol=1e-4)
    assert calls == ["packed"]
    embedder.pooling = "mean"  # mean pooling cannot read one token per text: sub-batches
    assert not embedder.supports_packing
    assert module.embed_batch(batch).shape == expected.shape and calls == ["packed"]


def _load(script: str):
    path = repo_root() / "experiments" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(script, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_mfu_flop_count_by_hand():
    # Given a decoder with hidden 4, 1 layer, 2 heads of 2, 1 KV head, MLP 8, LoRA r=1
    from transformers import GemmaConfig

    gpu_mfu = _load("gpu_mfu")
    cfg = GemmaConfig(
        hidden_size=4,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=2,
        vocab_size=10,
    )
    # linear weights: q 4x4 + k 4x2 + v 4x2 + o 4x4 + 3 MLP 4x8 = 16+8+8+16+96 = 144
    # one sequence of 3 tokens: matmuls fwd 2*144*3 = 864, bwd (input grads only) 864;
    # attention fwd 2*2*(3*4/2)*4 = 96, bwd 192; LoRA q (4+4) + v (4+2) = 14 per rank,
    # fwd 2*1*14*3 = 84, bwd 168
    assert gpu_mfu.step_flops(cfg, [3], r=1) == 864 * 2 + 96 * 3 + 84 * 3


def _script(args, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    result = subprocess.run(
        [sys.executable, *args],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_gpu_mfu_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_mfu.json"
    _script(
        ["experiments/gpu_mfu.py", "--tiny", "--device=cpu", "--batch=4", "--steps=1",
         "--warmup=1", "--configs", "sorted:sdpa", "pack:sdpa", f"--out={out}"]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["packing_max_abs_diff"] < 1e-5
    assert [r["config"] for r in report["results"]] == ["sorted:sdpa", "pack:sdpa"]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in report["results"])
    assert (tmp_path / "gpu_mfu.md").is_file()


def _needs_triplets():
    if not (repo_root() / "data" / "nli_triplets.csv").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail("data/nli_triplets.csv missing: run `make data`")
        pytest.skip("data/nli_triplets.csv missing: run `make data`")


@pytest.mark.slow
def test_bench_train_runs_tiny_and_both_frameworks_compute_the_same_loss(tmp_path):
    _needs_triplets()
    out = tmp_path / "bench_train.json"
    _script(
        ["experiments/bench_train.py", "--model=tiny_llama", "--batch-size=4", "--max-length=512",
         "--steps=2", "--warmup=1", "--rounds=1", "--ablations", "sub_batches", "lm_head",
         f"--out={out}"]
    )  # fmt: skip
    report = json.loads(out.read_text())
    runs = {f"{r['framework']}:{r['variant']}": r for r in report["runs"]}
    assert not [r for r in report["runs"] if "error" in r]
    ours, st = runs["embedft:default"], runs["sentence-transformers:MNRL"]
    # same texts, same tokens, same objective on the same (untrained) embeddings
    assert ours["real_tokens"] == st["real_tokens"] and st["texts_at_max_length"] == 0
    assert ours["loss_at_init"] == pytest.approx(st["loss_at_init"], abs=1e-4)
    for variant in ("lm_head", "sub_batches"):  # other layouts, the same embeddings
        assert runs[f"embedft:{variant}"]["loss_at_init"] == pytest.approx(
            ours["loss_at_init"], abs=1e-4
        )
    assert ours["packed"] and not runs["embedft:sub_batches"]["packed"]
    assert report["summary"]["embedft_vs_st"]["triplets_per_s"] > 0
    assert (tmp_path / "bench_train.md").is_file()


@pytest.mark.slow
def test_bench_memory_runs_tiny(tmp_path):
    _needs_triplets()
    out = tmp_path / "bench_memory.json"
    _script(
        ["experiments/bench_memory.py", "--model=tiny_llama", "--batches", "4", "8",
         "--chunk=4", "--second-chunk=2", "--max-length=32", "--checkpointing-batch=4",
         f"--out={out}"]
    )  # fmt: skip
    report = json.loads(out.read_text())
    kinds = {(r["batch"], r["grad_cache"], r["checkpointing"]) for r in report["runs"]}
    assert {(4, 0, False), (4, 4, False), (8, 0, False), (8, 4, False), (8, 2, False)} <= kinds
    assert (4, 0, True) in kinds
    assert all("error" not in r and r["peak_rss_mb"] > 0 for r in report["runs"])
