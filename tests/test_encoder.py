"""Evaluation encoder and STS suite runner, on a tiny fake embedder (the callback: test_callback.py).

The fake follows the Embedder interface (``tokenize(texts)`` -> input_ids/attention_mask,
``embed(input_ids, attention_mask)`` -> (B, H) unit vectors, trimming padding columns as
``Embedder.embed`` does) with a word-level tokenizer built here and a padding-invariant model
(masked self-attention + masked mean pooling), so that dedup, length sorting and padding trimming
must give the same embeddings as encoding one text at a time.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import PreTrainedTokenizerFast

from embedft.eval.encoder import encode_texts
from embedft.eval.sts import cosine_spearman, evaluate_sts, load_task
from embedft.model.packing import trim_padding
from tests.conftest import make_embedder

WORDS = "a an the cat dog man woman kid plays runs sleeps eats on in park house food ball".split()


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
    )


class FakeEmbedder(nn.Module):
    """Word embeddings -> one masked self-attention layer -> masked mean -> L2 normalise."""

    def __init__(self, padding_side: str = "right", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.tokenizer = _tokenizer()
        self.tokenizer.padding_side = padding_side
        self.emb = nn.Embedding(len(self.tokenizer), 16)
        self.attn = nn.MultiheadAttention(16, num_heads=2, batch_first=True)
        self.calls: list[dict] = []  # what forward saw, for the tests
        self.layouts: list[tuple] = []  # the (pack_len, sub_batch_rows) embed was asked for

    @property
    def device(self) -> torch.device:
        return self.emb.weight.device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        texts = [t + " [EOS]" for t in texts]
        return dict(self.tokenizer(texts, padding=True, return_tensors="pt"))

    def embed(self, input_ids, attention_mask, *, pack_len=None, sub_batch_rows=None):
        self.layouts.append((pack_len, sub_batch_rows))
        return self(*trim_padding(input_ids, attention_mask))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls.append(
            {
                "shape": tuple(input_ids.shape),
                "lengths": attention_mask.sum(1).tolist(),
                "training": self.training,
                "inference": torch.is_inference_mode_enabled(),
            }
        )
        x = self.emb(input_ids)  # (B, T, 16)
        x = x + self.attn(x, x, x, key_padding_mask=attention_mask == 0, need_weights=False)[0]
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (x * mask).sum(1) / mask.sum(1)  # (B, 16)
        return F.normalize(pooled, dim=-1)


SENTENCES = [
    "the cat sleeps",
    "a dog runs in the park",
    "the cat sleeps",  # duplicate
    "a man plays",
    "a woman eats food in the house",
    "a dog runs in the park",  # duplicate
    "the kid plays ball",
    "a cat",
]


def _naive(embedder: FakeEmbedder, texts: list[str]) -> torch.Tensor:
    embedder.eval()
    with torch.no_grad():
        return torch.cat([embedder(**embedder.tokenize([t])) for t in texts])


# --- encode_texts -----------------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_dedup_sorted_encoding_equals_one_at_a_time(padding_side):
    # Given a padding-invariant embedder and texts with duplicates and varied lengths
    embedder = FakeEmbedder(padding_side)
    # When encoded by the evaluator (batches of 3) and one text at a time
    fast = encode_texts(embedder, SENTENCES, batch_size=3)
    slow = _naive(embedder, SENTENCES)
    # Then the embeddings agree row by row, in the input order
    assert fast.shape == (8, 16) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_real_embedder_dedup_sorted_encoding_equals_one_at_a_time():
    # Given embedft's Embedder on a tiny random Llama (last-token pooling, EOS appended)
    embedder = make_embedder(lora=False)
    # When encoded by the evaluator and one text at a time
    fast = encode_texts(embedder, SENTENCES, batch_size=3)
    slow = torch.cat([embedder.encode([t]) for t in SENTENCES])
    # Then they agree
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_each_unique_text_encoded_once_longest_first_without_padding_columns():
    # Given 8 texts of which 6 are distinct, 4 7 4 8 5 3 tokens long (EOS included)
    embedder = FakeEmbedder()
    # When encoded in batches of 4
    encode_texts(embedder, SENTENCES, batch_size=4)
    # Then 6 rows were encoded in 2 batches: longest first, each as wide as its longest row
    lengths = [n for call in embedder.calls for n in call["lengths"]]
    assert lengths == [8, 7, 5, 4, 4, 3]
    assert [call["shape"] for call in embedder.calls] == [(4, 8), (2, 4)]
    # each through embed in the embedder's own layout (packed if it packs), never sub-batched
    assert embedder.layouts == [(None, 0), (None, 0)]


def test_encoding_runs_in_eval_and_inference_mode_and_restores_train_mode():
    # Given an embedder in training mode
    embedder = FakeEmbedder().train()
    # When encoded
    encode_texts(embedder, SENTENCES, batch_size=8)
    # Then forward ran in eval + inference mode, and training mode is back
    assert [(c["training"], c["inference"]) for c in embedder.calls] == [(False, True)]
    assert embedder.training


def test_bad_batch_size_and_empty_input_are_errors():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        encode_texts(FakeEmbedder(), SENTENCES, batch_size=0)
    with pytest.raises(ValueError, match="at least one text"):
        encode_texts(FakeEmbedder(), [])


# --- evaluate_sts -----------------------------------------------------------------------------


def _stsb_row(score: float, s1: str, s2: str) -> str:
    return f"main-captions\tMSRvid\t2012test\t0001\t{score}\t{s1}\t{s2}\n"


def write_suite(root: Path) -> None:
    """STSB test and dev (same 5 pairs) and STS17 (3 pairs, sharing sentences with STSB)."""
    pairs = [
        (5.0, "the cat sleeps", "a cat sleeps"),
        (0.5, "a dog runs in the park", "a woman eats food"),
        (3.0, "a man plays", "the kid plays ball"),
        (1.0, "the cat sleeps", "a man runs"),
        (4.0, "a kid plays ball", "the kid plays ball"),
    ]
    stsb = root / "sts/STSBenchmark/stsbenchmark"
    stsb.mkdir(parents=True)
    for split in ("test", "dev"):
        (stsb / f"sts-{split}.csv").write_text("".join(_stsb_row(*p) for p in pairs))
    sts17_in = root / "sts/STS17/STS2017.eval.v1.1/STS.input.track5.en-en.txt"
    sts17_gs = root / "sts/STS17/STS2017.gs/STS.gs.track5.en-en.txt"
    sts17_in.parent.mkdir(parents=True)
    sts17_gs.parent.mkdir(parents=True)
    sts17_in.write_text("the cat sleeps\ta dog\na man plays\ta man runs\nthe house\ta park\n")
    sts17_gs.write_text("1.0\n3.0\n0.0\n")


def test_evaluate_sts_matches_per_task_scoring_and_encodes_shared_sentences_once(tmp_path):
    # Given two tasks whose 16 sentences hold 11 distinct ones
    write_suite(tmp_path)
    embedder = FakeEmbedder()
    tasks = {t: load_task(t, tmp_path) for t in ("STSBenchmark", "STS17")}
    expected = {
        t: cosine_spearman(_naive(embedder, p.sentences1), _naive(embedder, p.sentences2), p.scores)
        for t, p in tasks.items()
    }
    embedder.calls.clear()
    # When the suite runs
    scores = evaluate_sts(embedder, ["STSBenchmark", "STS17"], tmp_path, batch_size=4)
    # Then each task scores as on its own, the average is their mean, and 11 rows were encoded
    assert scores["STSBenchmark"] == pytest.approx(expected["STSBenchmark"], abs=1e-6)
    assert scores["STS17"] == pytest.approx(expected["STS17"], abs=1e-6)
    assert scores["average"] == pytest.approx((expected["STSBenchmark"] + expected["STS17"]) / 2)
    assert sum(len(c["lengths"]) for c in embedder.calls) == 11


def test_evaluate_sts_rejects_unknown_task_before_encoding(tmp_path):
    embedder = FakeEmbedder()
    with pytest.raises(ValueError, match="unknown STS task 'STS2'; known tasks: \\['STS12'"):
        evaluate_sts(embedder, ["STS2"], tmp_path)
    assert embedder.calls == []


def test_packed_encoding_gives_the_padded_embeddings():
    from tests.conftest import make_embedder

    # Given a real tiny decoder embedder, which packs, and its twin with packing off
    packed, padded = make_embedder(seed=2), make_embedder(seed=2)
    padded.pack_len = 0
    assert packed.supports_packing and packed.pack_len > 0
    # When both encode the same sentences (duplicates, very different lengths)
    texts = SENTENCES + ["a", "a much longer sentence than any of the others in this list"]
    # Then the embeddings agree to float rounding
    torch.testing.assert_close(
        encode_texts(packed, texts, batch_size=3), encode_texts(padded, texts, batch_size=3),
        atol=1e-5, rtol=1e-4,
    )  # fmt: skip
