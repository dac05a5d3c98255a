"""Stream NLI triplets into tokenised batches: the LightningDataModule of ``embedft.run``.

Rows come from ``datasets`` in streaming mode (a local csv/jsonl/parquet file, or a hub dataset),
are renamed to anchor/positive/negative by the configured column mapping, shuffled through a
buffer, sharded per rank (``split_dataset_by_node``) and batched. The collator tokenises the
3B texts of a batch in one call (EOS appended, dynamic padding) so the model runs one forward for
anchors, positives and negatives together.

Under DDP every rank stops after the same number of batches (``num_examples`` //
(batch_size * world_size)), so no rank waits forever for a peer whose shard ran out.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from embedft.config import DataConfig
from embedft.model.tokenize import tokenize_with_eos
from embedft.paths import repo_root

_LOCAL_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


class DataError(ValueError):
    """The training data cannot be read as configured; the message names file and columns."""


def resolve_local_path(cfg: DataConfig) -> Path:
    """A local triplet file: absolute, or relative to the repository root (``make data``)."""
    path = Path(cfg.path).expanduser()
    return path if path.is_absolute() else repo_root() / path


def load_stream(cfg: DataConfig):
    """The raw ``datasets.IterableDataset`` named by ``cfg`` (no shuffling or sharding yet)."""
    from datasets import load_dataset

    if cfg.source == "local":
        path = resolve_local_path(cfg)
        if not path.is_file():
            raise DataError(
                f"data.path: triplet file {path} does not exist; build it with `make data` "
                f"(python -m embedft.prepare_nli) or point data.path at a csv/jsonl/parquet file"
            )
        builder = _LOCAL_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"data.path: {path} must end in one of {sorted(_LOCAL_BUILDERS)}")
        kwargs: dict[str, Any] = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        return load_dataset(builder, data_files=str(path), split="train", streaming=True, **kwargs)
    return load_dataset(
        cfg.path, cfg.subset, data_files=cfg.data_files, split=cfg.split, streaming=True
    )


def _columns(cfg: DataConfig) -> dict[str, str]:
    mapping = {"anchor": cfg.anchor_column, "positive": cfg.positive_column}
    if cfg.negative_column:
        mapping["negative"] = cfg.negative_column
    return mapping


def check_data(cfg: DataConfig) -> int | None:
    """Fail fast on a missing file or columns; return the epoch length when it is knowable."""
    stream = load_stream(cfg)
    first = next(iter(stream), None)
    where = resolve_local_path(cfg) if cfg.source == "local" else cfg.path
    if first is None:
        raise DataError(f"data.path: {where} holds no rows")
    missing = [col for col in _columns(cfg).values() if col not in first]
    if missing:
        raise DataError(
            f"{where}: columns {missing} not found (have {sorted(first)}); set "
            f"data.anchor_column/positive_column/negative_column"
        )
    if cfg.num_examples is not None:
        return cfg.num_examples
    if cfg.source == "local":
        return sum(1 for _ in stream)
    return None


def text_key(text: str) -> int:
    """A stable 63-bit identity of a text (Python's hash differs between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


class TripletStream(IterableDataset):
    """Shuffled, sharded, batched triplets; each item is a list of ``batch_size`` dicts."""

    def __init__(
        self,
        cfg: DataConfig,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.seed, self.rank, self.world_size = cfg, seed, rank, world_size
        self.max_batches = max_batches
        self.epoch = 0

    def _rows(self) -> Iterator[dict[str, str]]:
        from datasets.distributed import split_dataset_by_node

        stream = load_stream(self.cfg)
        if self.cfg.shuffle_buffer > 1:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.cfg.shuffle_buffer)
        stream.set_epoch(self.epoch)
        if self.cfg.num_examples is not None:  # an epoch is at most this many rows
            stream = stream.take(self.cfg.num_examples)
        # Each (rank, dataloader worker) pair reads a disjoint share of the rows.
        shard, shards = self._shard()
        if shards > 1:
            stream = split_dataset_by_node(stream, rank=shard, world_size=shards)
        mapping = _columns(self.cfg)
        for row in stream:
            yield {key: str(row[col]) for key, col in mapping.items()}

    def _batches(self) -> Iterator[list[dict[str, str]]]:
        size, window = self.cfg.batch_size, self.cfg.length_grouping
        if window <= 0:
            batch: list[dict[str, str]] = []
            for row in self._rows():
                batch.append(row)
                if len(batch) == size:
                    yield batch
                    batch = []
            if batch:
                yield batch
            return
        # Length grouping: sort a window of rows by length so each batch pads little, then
        # shuffle the order of the batches so training does not see a length curriculum.
        rng = random.Random(self.seed + self.epoch)
        pool: list[dict[str, str]] = []
        for row in self._rows():
            pool.append(row)
            if len(pool) == size * window:
                yield from self._grouped(pool, size, rng)
                pool = []
        if pool:
            yield from self._grouped(pool, size, rng)

    @staticmethod
    def _grouped(pool, size, rng) -> Iterator[list[dict[str, str]]]:
        pool.sort(key=lambda r: sum(len(t) for t in r.values()))
        batches = [pool[i : i + size] for i in range(0, len(pool), size)]
        rng.shuffle(batches)
        yield from batches

    def _shard(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self) -> Iterator[list[dict[str, str]]]:
        info = torch.utils.data.get_worker_info()
        workers = info.num_workers if info is not None else 1
        cap = None if self.max_batches is None else self.max_batches // workers
        for i, batch in enumerate(self._batches()):
            if cap is not None and i >= cap:
                break
            yield batch
        self.epoch += 1


class TripletCollator:
    """Tokenise a batch of triplets into one padded tensor of anchors, positives, negatives."""

    def __init__(self, tokenizer, max_length: int, append_eos: bool = True) -> None:
        self.tokenizer, self.max_length, self.append_eos = tokenizer, max_length, append_eos

    def __call__(self, rows: list[dict[str, str]]) -> dict[str, Any]:
        has_neg = "negative" in rows[0]
        texts = [r["anchor"] for r in rows] + [r["positive"] for r in rows]
        if has_neg:
            texts += [r["negative"] for r in rows]
        batch: dict[str, Any] = tokenize_with_eos(
            self.tokenizer, texts, self.max_length, self.append_eos
        )
        batch["num_triplets"] = len(rows)
        batch["positive_keys"] = torch.tensor([text_key(r["positive"]) for r in rows])
        if has_neg:
            batch["negative_keys"] = torch.tensor([text_key(r["negative"]) for r in rows])
        return batch


class TripletDataModule(L.LightningDataModule):
    """Training triplets for ``EmbeddingModule``; see the module docstring."""

    def __init__(
        self, cfg: DataConfig, tokenizer, max_length: int, append_eos: bool, seed: int = 7
    ) -> None:
        super().__init__()
        self.cfg, self.tokenizer, self.max_length = cfg, tokenizer, max_length
        self.append_eos, self.seed = append_eos, seed
        self.num_examples: int | None = None
        self.dataset: TripletStream | None = None

    def prepare_data(self) -> None:
        self.num_examples = check_data(self.cfg)

    def batches_per_epoch(self, world_size: int = 1) -> int | None:
        if self.num_examples is None:
            return None
        if world_size > 1:
            return self.num_examples // (self.cfg.batch_size * world_size)
        return math.ceil(self.num_examples / self.cfg.batch_size)

    def setup(self, stage: str | None = None) -> None:
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        if self.num_examples is None and self.cfg.num_examples is not None:
            self.num_examples = self.cfg.num_examples
        cap = self.batches_per_epoch(world) if world > 1 else None
        if world > 1 and cap is None:
            raise DataError(
                "data.num_examples is needed with several devices so that every rank runs the "
                "same number of batches"
            )
        self.dataset = TripletStream(self.cfg, self.seed, rank, world, max_batches=cap)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=None,  # TripletStream already yields batches
            collate_fn=TripletCollator(self.tokenizer, self.max_length, self.append_eos),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )
