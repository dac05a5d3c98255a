"""Stream NLI triplets into tokenised batches: the LightningDataModule of ``embedft.run``.

Rows come from ``datasets`` in streaming mode (a local csv/jsonl/parquet file, or a hub dataset),
are renamed to anchor/positive/negative by the configured column mapping, shuffled through a
buffer, sharded per rank (``split_dataset_by_node``) and batched. The collator tokenises the
3B texts of a batch in one call (EOS appended, ``model.prompt`` applied, dynamic padding) so the
model runs one forward for anchors, positives and negatives together. When the loss ignores hard
negatives (``loss.hard_neg=false``, paper Eq. 2) the collator leaves them out (``with_negatives``):
2B texts, a third less work. Rows are still read and checked with their negative, so the batches
hold the same triplets either way.

Under DDP every rank stops after the same number of batches (``num_examples`` //
(batch_size * world_size)), so no rank waits forever for a peer whose shard ran out.

The rows are read, mapped and checked by ``embedft.data.source`` (``check_data``: bad rows are
counted and dropped before training, too many of them stop it).

The stream is resumable: ``TripletDataModule.state_dict`` records the epoch and how many batches
of it were trained on, and after a resume the stream skips exactly those (same seed, same
shuffle), so a killed run continues where it was instead of starting its epoch again.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from embedft.config import DataConfig
from embedft.data.source import (
    DataError,
    DataReport,
    bad_cell,
    check_data,
    column_mapping,
    load_stream,
)
from embedft.model.tokenize import tokenize_with_eos


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
        self.skip_batches = 0  # batches of this epoch already trained on (set on resume)

    def _rows(self, worker: int, workers: int) -> Iterator[dict[str, str]]:
        from datasets.distributed import split_dataset_by_node

        stream = load_stream(self.cfg)
        if self.cfg.shuffle_buffer > 1:
            stream = stream.shuffle(seed=self.seed, buffer_size=self.cfg.shuffle_buffer)
        stream.set_epoch(self.epoch)
        if self.cfg.num_examples is not None:  # an epoch is at most this many rows
            stream = stream.take(self.cfg.num_examples)
        # Each (rank, dataloader worker) pair reads a disjoint share of the rows.
        shard, shards = self.rank * workers + worker, self.world_size * workers
        if shards > 1:
            stream = split_dataset_by_node(stream, rank=shard, world_size=shards)
        mapping = column_mapping(self.cfg)
        # ``iter`` rather than ``for row in stream``: inside a DataLoader worker, datasets'
        # __iter__ shards by file on its own and idles every worker past the file count (one
        # file, two workers: half of the rows were silently never read). The split above is
        # already per worker.
        for chunk in stream.iter(batch_size=256):
            for values in zip(*(chunk[col] for col in mapping.values()), strict=True):
                if all(bad_cell(v) is None for v in values):
                    yield dict(zip(mapping, values, strict=True))

    def _batches(self, worker: int = 0, workers: int = 1) -> Iterator[list[dict[str, str]]]:
        size, window = self.cfg.batch_size, self.cfg.length_grouping
        if window <= 0:
            batch: list[dict[str, str]] = []
            for row in self._rows(worker, workers):
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
        for row in self._rows(worker, workers):
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

    def __iter__(self) -> Iterator[list[dict[str, str]]]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        cap = None if self.max_batches is None else self.max_batches // workers
        # The loader takes batches from its workers in turn, starting at worker 0. After
        # ``skip`` batches the next one came from worker skip % workers, so for this epoch each
        # worker reads the shard of the worker ``skip`` places after it and skips that worker's
        # share of the batches already trained on: the batch order is the uninterrupted one.
        skip = self.skip_batches
        role = (worker + skip) % workers
        own_skip = max(0, math.ceil((skip - role) / workers))
        for i, batch in enumerate(self._batches(role, workers)):
            if cap is not None and i >= cap:
                break
            if i >= own_skip:
                yield batch
        self.skip_batches = 0
        self.epoch += 1


class TripletCollator:
    """Tokenise a batch of triplets into one padded tensor of anchors, positives, negatives.

    ``with_negatives=False``: anchors and positives only, for a loss without hard negatives.
    ``prompt``: the ``model.prompt`` template (``embedft.model.tokenize``).
    """

    def __init__(
        self,
        tokenizer,
        max_length: int,
        append_eos: bool = True,
        *,
        prompt: str | None = None,
        with_negatives: bool = True,
    ) -> None:
        self.tokenizer, self.max_length, self.append_eos = tokenizer, max_length, append_eos
        self.prompt, self.with_negatives = prompt, with_negatives

    def __call__(self, rows: list[dict[str, str]]) -> dict[str, Any]:
        has_neg = self.with_negatives and "negative" in rows[0]
        texts = [r["anchor"] for r in rows] + [r["positive"] for r in rows]
        if has_neg:
            texts += [r["negative"] for r in rows]
        batch: dict[str, Any] = tokenize_with_eos(
            self.tokenizer, texts, self.max_length, self.append_eos, prompt=self.prompt
        )
        batch["num_triplets"] = len(rows)
        batch["positive_keys"] = torch.tensor([text_key(r["positive"]) for r in rows])
        if has_neg:
            batch["negative_keys"] = torch.tensor([text_key(r["negative"]) for r in rows])
        return batch


class TripletDataModule(L.LightningDataModule):
    """Training triplets for ``EmbeddingModule``; see the module docstring.

    ``prompt`` and ``with_negatives`` go to ``TripletCollator``.
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer,
        max_length: int,
        append_eos: bool,
        seed: int = 7,
        *,
        prompt: str | None = None,
        with_negatives: bool = True,
    ) -> None:
        super().__init__()
        self.cfg, self.tokenizer, self.max_length = cfg, tokenizer, max_length
        self.append_eos, self.seed = append_eos, seed
        self.prompt, self.with_negatives = prompt, with_negatives
        self.num_examples: int | None = None
        self.dataset: TripletStream | None = None
        self.position = {"epoch": 0, "batches": 0}  # where the stream resumes

    @classmethod
    def for_run(cls, cfg: Any, tokenizer, report: DataReport) -> TripletDataModule:
        """The datamodule of an ``embedft.run`` config (``RunConfig``), its data already checked."""
        datamodule = cls(
            cfg.data,
            tokenizer,
            cfg.model.max_length,
            cfg.model.append_eos,
            cfg.seed,
            prompt=cfg.model.prompt,
            with_negatives=cfg.loss.hard_neg,  # Eq. 2 never looks at them: not even tokenised
        )
        datamodule.num_examples = report.rows_used
        return datamodule

    def prepare_data(self) -> None:
        if self.num_examples is None:
            self.num_examples = check_data(self.cfg).rows_used

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
        self._apply_position()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=None,  # TripletStream already yields batches
            collate_fn=TripletCollator(
                self.tokenizer,
                self.max_length,
                self.append_eos,
                prompt=self.prompt,
                with_negatives=self.with_negatives,
            ),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            # Its own generator: creating the loader's iterator must not draw from the global
            # RNG that LoRA dropout uses, or a resumed run would see other dropout masks.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def state_dict(self) -> dict[str, Any]:
        """The stream's position at a checkpoint: epoch and batches of it trained on."""
        if self.trainer is None:
            return dict(self.position)
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.position = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
        self._apply_position()

    def _apply_position(self) -> None:
        if self.dataset is not None:
            self.dataset.epoch = self.position["epoch"]
            self.dataset.skip_batches = self.position["batches"]
