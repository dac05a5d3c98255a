"""TripletDataModule: column mapping, disjoint shards per rank, collation, bad files."""

import csv
import json

import pytest
import torch

from embedft.config import DataConfig, OptimConfig
from embedft.data.datamodule import (
    DataError,
    TripletCollator,
    TripletDataModule,
    TripletStream,
    check_data,
)
from embedft.losses.infonce import InfoNCELoss
from embedft.module import EmbeddingModule
from tests.conftest import assert_same_grads, make_embedder


def _write_csv(path, rows, header=("sent0", "sent1", "hard_neg")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


ROWS = [(f"anchor {i}", f"positive {i}", f"negative {i}") for i in range(10)]


def _cfg(path, **kw):
    base = dict(name="t", source="local", path=str(path), batch_size=3, shuffle_buffer=0)
    base.update(kw)
    return DataConfig(**base)


def test_sentence_transformers_columns_are_mapped(tmp_path):
    # Given a jsonl in sentence-transformers' anchor/positive/negative layout
    path = tmp_path / "t.jsonl"
    path.write_text(
        "\n".join(json.dumps({"anchor": a, "positive": p, "negative": n}) for a, p, n in ROWS)
    )
    cfg = _cfg(path, anchor_column="anchor", positive_column="positive", negative_column="negative")
    # When streamed; Then rows come out under embedft's keys, in batches of 3 (last one short)
    batches = list(TripletStream(cfg, seed=0))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert batches[0][0] == {
        "anchor": "anchor 0",
        "positive": "positive 0",
        "negative": "negative 0",
    }


def test_ranks_read_disjoint_shards_that_cover_the_data(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ROWS)
    cfg = _cfg(path, batch_size=2, shuffle_buffer=4)
    seen = []
    for rank in range(2):
        rows = [r["anchor"] for b in TripletStream(cfg, seed=1, rank=rank, world_size=2) for r in b]
        seen.append(set(rows))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {r[0] for r in ROWS}


def test_every_rank_runs_the_same_number_of_batches(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ROWS[:9])  # 9 rows, 2 ranks: shards of 5 and 4
    cfg = _cfg(path, batch_size=2)
    counts = [
        len(list(TripletStream(cfg, seed=0, rank=r, world_size=2, max_batches=9 // (2 * 2))))
        for r in range(2)
    ]
    assert counts == [2, 2]


def test_shuffle_is_seeded_and_changes_each_epoch(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ROWS)
    cfg = _cfg(path, batch_size=10, shuffle_buffer=10)
    a = TripletStream(cfg, seed=5)
    first, second = [[r["anchor"] for b in a for r in b] for _ in range(2)]  # two epochs
    again = [r["anchor"] for b in TripletStream(cfg, seed=5) for r in b]
    assert first == again
    assert sorted(first) == sorted(second) and first != second


def test_length_grouping_keeps_every_row(tmp_path):
    rows = [("x " * i, "p", "n") for i in range(1, 13)]
    path = _write_csv(tmp_path / "t.csv", rows)
    batches = list(TripletStream(_cfg(path, batch_size=3, length_grouping=2), seed=0))
    lengths = [[len(r["anchor"]) for r in b] for b in batches]
    assert sorted(x for b in lengths for x in b) == sorted(len(r[0]) for r in rows)
    assert all(max(b) - min(b) <= 6 for b in lengths)  # neighbours in length share a batch


def test_collator_stacks_anchor_positive_negative(tokenizer):
    rows = [
        {"anchor": "a man", "positive": "a dog is running", "negative": "nobody"},
        {"anchor": "two people", "positive": "people", "negative": "a cat is sleeping"},
    ]
    batch = TripletCollator(tokenizer, max_length=8)(rows)
    assert batch["num_triplets"] == 2
    assert batch["input_ids"].shape[0] == 6
    assert batch["attention_mask"].sum(1).tolist() == [3, 3, 5, 2, 2, 5]  # words + EOS
    assert batch["positive_keys"].shape == (2,) and batch["negative_keys"].shape == (2,)


def test_missing_file_fails_with_its_path(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv does not exist.*make data"):
        check_data(_cfg(tmp_path / "nope.csv"))


def test_missing_columns_are_named(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ROWS, header=("premise", "hypothesis", "other"))
    with pytest.raises(DataError, match=r"columns \['sent0', 'sent1', 'hard_neg'\] not found"):
        check_data(_cfg(path))


def test_check_data_counts_a_local_file(tmp_path):
    assert check_data(_cfg(_write_csv(tmp_path / "t.csv", ROWS))).rows_used == 10


def test_null_empty_and_non_text_cells_are_dropped_and_counted(tmp_path):
    # Given a jsonl with a null, a blank and a list cell among 20 rows
    rows = [{"sent0": f"a {i}", "sent1": f"p {i}", "hard_neg": f"n {i}"} for i in range(20)]
    rows[3]["sent1"], rows[7]["hard_neg"], rows[9]["sent0"] = None, "  ", ["d"]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = _cfg(path, max_bad_fraction=0.2)
    # When checked and streamed
    report = check_data(cfg)
    streamed = [r for b in TripletStream(cfg, seed=0) for r in b]
    # Then the three rows are counted per column and reason, and never become texts
    assert report.dropped == {"sent1:null": 1, "hard_neg:empty": 1, "sent0:not_text": 1}
    assert (report.rows_read, report.rows_used) == (20, 17) and len(streamed) == 17
    assert report.examples[0] == "line 4, column 'sent1': null"
    assert not any(t in ("None", "['d']") or not t.strip() for r in streamed for t in r.values())


def test_too_many_bad_rows_name_the_file_line_and_column(tmp_path):
    path = _write_csv(tmp_path / "t.csv", [("a", "", "n"), *ROWS])  # csv: empty cell -> null
    with pytest.raises(DataError) as err:
        check_data(_cfg(path))  # 1 of 11 rows > 1%
    assert str(path) in str(err.value) and "line 2, column 'sent1': null" in str(err.value)


def test_an_empty_file_names_itself(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv cannot be read: the file is empty"):
        check_data(_cfg(path))


def test_collator_leaves_negatives_out_when_the_loss_ignores_them(tokenizer):
    # Given two triplets and a collator for a loss without hard negatives (paper Eq. 2)
    rows = [
        {"anchor": "a man", "positive": "a dog is running", "negative": "nobody"},
        {"anchor": "two people", "positive": "people", "negative": "a cat is sleeping"},
    ]
    # When it collates them
    batch = TripletCollator(tokenizer, max_length=8, with_negatives=False)(rows)
    # Then the batch holds 2B texts, anchors then positives, and no negative keys
    assert batch["num_triplets"] == 2
    assert batch["input_ids"].shape[0] == 4
    assert batch["attention_mask"].sum(1).tolist() == [3, 3, 5, 2]
    assert "negative_keys" not in batch and batch["positive_keys"].shape == (2,)


def test_datamodule_batches_hold_2b_texts_without_negatives(tmp_path, tokenizer):
    # Given a triplet file and a datamodule told that the loss uses no negatives
    cfg = _cfg(_write_csv(tmp_path / "t.csv", ROWS))
    with_neg = TripletDataModule(cfg, tokenizer, 8, True)
    without = TripletDataModule(cfg, tokenizer, 8, True, with_negatives=False)
    for dm in (with_neg, without):
        dm.setup()
    # When each yields its first batch of 3 triplets
    full = next(iter(with_neg.train_dataloader()))
    short = next(iter(without.train_dataloader()))
    # Then the second holds the same anchors and positives and nothing else
    assert (full["input_ids"].shape[0], short["input_ids"].shape[0]) == (9, 6)
    width = short["input_ids"].shape[1]
    assert torch.equal(short["input_ids"], full["input_ids"][:6, :width])


@pytest.mark.parametrize("pack_len", [128, 0])
@pytest.mark.parametrize("mask_duplicates", [False, True])
def test_eq2_without_negatives_gives_the_loss_and_gradients_of_embedding_them(
    pack_len, mask_duplicates
):
    # Given the same embedder twice (no dropout) and triplets, one positive repeated
    rows = [
        {"anchor": "a man is playing guitar", "positive": "a man plays", "negative": "nobody"},
        {"anchor": "a dog is running", "positive": "a dog is outside", "negative": "a cat"},
        {"anchor": "two people sitting", "positive": "a man plays", "negative": "nobody is there"},
    ]
    grads, losses = [], []
    for with_negatives in (True, False):
        embedder = make_embedder(seed=5)
        embedder.pack_len = pack_len  # packed rows, or padded sub-batches
        loss_fn = InfoNCELoss(hard_neg=False, mask_duplicate_positives=mask_duplicates)
        module = EmbeddingModule(embedder, loss_fn, OptimConfig(), 1)
        collate = TripletCollator(embedder.tokenizer, 16, with_negatives=with_negatives)
        # When the old path (negatives embedded, then ignored) and the new one run a step
        batch = collate(rows)
        loss = module.loss_from_embeddings(module.embed_batch(batch), batch)
        loss.backward()
        losses.append(loss.item())
        grads.append(embedder)
    # Then loss and every LoRA gradient agree (packing the texts in another order changes fp32
    # rounding: 1e-5, as the other packed = padded checks)
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert_same_grads(*grads)
