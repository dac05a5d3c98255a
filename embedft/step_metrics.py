"""Per-step training metrics for the dashboards: throughput, gradient norm, memory, similarities.

``StepMetrics`` logs, once per optimizer step (the logger keeps every ``log_every_n_steps``-th):

=========================  ======================================================================
``perf/triplets_per_s``    triplets trained per second, all ranks (rank 0's count x world size:
                           every rank runs the same batches)
``perf/tokens_per_s``      real tokens (``attention_mask`` sum: no padding) per second, rank 0's
                           count x world size
``perf/peak_mem_gib``      peak memory so far: CUDA ``max_memory_allocated`` on a GPU, the
                           process's peak resident set (``ru_maxrss``) on a CPU
``train/grad_norm``        L2 norm of all LoRA gradients before clipping
``train/cos_pos``          mean cosine(anchor, its positive)
``train/cos_neg``          mean cosine(anchor, a negative): its hard negative when the batch has
                           them (``loss.hard_neg=true``), else the other anchors' positives
``train/cos_gap``          ``cos_pos - cos_neg``: how far apart training pushes the two
=========================  ======================================================================

Rates and similarities are means over the steps since the last logged one, so they cover every
step, not a sample. A rate's clock starts at the first batch after a logged step: the STSB-dev
evaluation and the checkpoints, which run at logged steps, are not counted as training time. They come from what the step already computed (the loss's embeddings, the
gradients: ``EmbeddingModule.last_embeddings``/``last_grad_norm``) and stay tensors on the
device; Lightning reads them only when it writes a log row, so this adds no sync per step.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F


def similarity_sums(embeddings: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, int, int]:
    """``([sum cos(a, p), sum cos(a, negative)], pairs, negative pairs)`` of one batch.

    ``embeddings``: anchor, positive[, hard negative], (B, H) each; negatives as in the module doc.
    """
    anchor, positive = (F.normalize(e.float(), dim=-1) for e in embeddings[:2])  # (B, H) each
    b = anchor.shape[0]
    pos = (anchor * positive).sum(-1)  # (B,)
    if len(embeddings) > 2:
        neg = (anchor * F.normalize(embeddings[2].float(), dim=-1)).sum(-1)  # (B,)
    else:  # in-batch: every other anchor's positive
        neg = (anchor @ positive.T)[~torch.eye(b, dtype=torch.bool, device=anchor.device)]
    return torch.stack([pos.sum(), neg.sum()]), b, neg.numel()


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class StepMetrics(L.Callback):
    """Logs the metrics of the module docstring every optimizer step."""

    def __init__(self) -> None:
        self._step_seen = -1
        self._reset_window()

    def _reset_window(self) -> None:
        self._triplets, self._tokens, self._steps = 0, 0, 0
        self._cos_sums: torch.Tensor | float = 0.0  # [positive, negative], summed over batches
        self._pairs, self._neg_pairs = 0, 0
        self._grad_norm: torch.Tensor | float = 0.0
        self._window_start: float | None = None  # set by the window's first batch

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._step_seen = trainer.global_step
        self._reset_window()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._triplets += batch["num_triplets"]
        self._tokens = self._tokens + batch["attention_mask"].sum()
        if pl_module.last_embeddings:
            sums, pairs, neg_pairs = similarity_sums(pl_module.last_embeddings)
            self._cos_sums = self._cos_sums + sums
            self._pairs, self._neg_pairs = self._pairs + pairs, self._neg_pairs + neg_pairs
        if trainer.global_step == self._step_seen:  # accumulating: the step is not done yet
            return
        self._step_seen, self._steps = trainer.global_step, self._steps + 1
        if pl_module.last_grad_norm is not None:
            self._grad_norm = self._grad_norm + pl_module.last_grad_norm
        self._log(trainer, pl_module)
        if trainer.global_step % trainer.log_every_n_steps == 0:  # that row is written now
            self._reset_window()

    def _log(self, trainer: L.Trainer, pl_module: Any) -> None:
        seconds = max(time.perf_counter() - self._window_start, 1e-9)  # set at batch start
        world = trainer.world_size
        values: dict[str, Any] = {
            "perf/triplets_per_s": self._triplets * world / seconds,
            "perf/tokens_per_s": self._tokens * world / seconds,
            "perf/peak_mem_gib": peak_memory_gib(pl_module.device),
        }
        if isinstance(self._grad_norm, torch.Tensor):
            values["train/grad_norm"] = self._grad_norm / self._steps
        if self._pairs:
            values["train/cos_pos"] = self._cos_sums[0] / self._pairs
        if self._neg_pairs:  # none for a single triplet without a hard negative
            values["train/cos_neg"] = self._cos_sums[1] / self._neg_pairs
            values["train/cos_gap"] = values["train/cos_pos"] - values["train/cos_neg"]
        for key, value in values.items():
            pl_module.log(key, value, on_step=True, on_epoch=False)
