"""The LightningModule: embedder (backbone + LoRA + pooling) trained with InfoNCE.

The collator stacks a batch's anchors, positives and negatives into one padded tensor;
``Embedder.embed`` turns it into embeddings (packed without padding, or in trimmed sub-batches:
``embedft.model.packing``, config group ``embed``), and the loss sees them split back into three
(B, H) tensors. AdamW over the LoRA weights only, linear warmup then cosine decay, stepped every
optimizer step. Checkpoints hold the trainable (LoRA) weights, the optimizer state and the
resolved config: megabytes for a 2B model.
With ``embed.grad_cache_chunk_tokens > 0`` the step runs gradient caching (``embedft.grad_cache``)
under manual optimisation in chunks of at most that many tokens, each embedded by
``Embedder.embed`` too.

A non-finite loss, or LoRA weights that turn non-finite after an optimizer step, stop training
with ``NonFiniteError`` (the step and what went wrong) before anything is saved from that state.

For ``embedft.step_metrics`` the module keeps, outside the loss maths, the latest batch's
embeddings (detached) and each optimizer step's gradient norm before clipping.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from embedft.config import OptimConfig
from embedft.grad_cache import grad_cache_backward
from embedft.losses import Loss
from embedft.model.embedder import Embedder, trainable_state_dict
from embedft.model.packing import token_chunks


class NonFiniteError(FloatingPointError):
    """Training produced NaN/inf: the message names the step and the quantity."""


def warmup_cosine(warmup: int, total: int, kind: str = "cosine"):
    """LR multiplier: linear 0 -> 1 over ``warmup`` steps, then cosine (or linear) to 0."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if kind == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class EmbeddingModule(L.LightningModule):
    """Contrastive fine-tuning of an ``Embedder``; see the module docstring."""

    def __init__(
        self,
        embedder: Embedder,
        loss_fn: Loss,
        optim: OptimConfig,
        total_steps: int,
        config: dict[str, Any] | None = None,
        grad_cache_chunk_tokens: int = 0,
        run_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.embedder = embedder
        self.loss_fn = loss_fn
        self.optim_cfg = optim
        self.total_steps = total_steps
        self.config = config or {}
        self.run_state = run_state or {}  # plain data for checkpoints (the W&B run id)
        self.grad_cache_chunk_tokens = grad_cache_chunk_tokens
        self.automatic_optimization = grad_cache_chunk_tokens == 0
        self.strict_loading = False  # checkpoints hold the adapters, not the frozen base
        self.last_embeddings: tuple[torch.Tensor, ...] = ()  # anchor, positive[, negative]
        self.last_grad_norm: torch.Tensor | None = None  # L2 of the LoRA gradients, unclipped

    def on_fit_start(self) -> None:
        # transformers returns models in eval mode and Lightning keeps submodules' modes, so
        # without this LoRA dropout would silently stay off during training.
        self.embedder.train()

    def loss_from_embeddings(self, emb: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        n = batch["num_triplets"]
        anchor, positive = emb[:n], emb[n : 2 * n]  # (B, H) each
        negative = emb[2 * n : 3 * n] if emb.shape[0] >= 3 * n else None
        self.last_embeddings = tuple(
            e.detach() for e in (anchor, positive, negative) if e is not None
        )
        return self.loss_fn(
            anchor,
            positive,
            negative,
            positive_keys=batch.get("positive_keys"),
            negative_keys=batch.get("negative_keys"),
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if self.grad_cache_chunk_tokens:
            loss = self._grad_cache_step(batch)
        else:
            loss = self.loss_from_embeddings(self.embed_batch(batch), batch)
        if not torch.isfinite(loss.detach()):
            raise NonFiniteError(
                f"train/loss is {loss.item()} at step {self.global_step + 1}: stopping (check "
                f"optim.lr, loss.temperature and the data); no checkpoint is written from it"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["num_triplets"])
        self.log(
            "train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch["num_triplets"]
        )
        return loss if self.automatic_optimization else None

    def embed_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        """Embeddings (kB, H) of the batch's texts, in the collator's order."""
        return self.embedder.embed(batch["input_ids"], batch["attention_mask"])

    def _grad_cache_step(self, batch: dict[str, Any]) -> torch.Tensor:
        opt, sched = self.optimizers(), self.lr_schedulers()
        world = self.trainer.world_size if self._trainer is not None else 1
        ddp_model = self.trainer.strategy.model if world > 1 else None
        # Several backward passes per step: keep DDP from reducing after each one and average
        # the (small) LoRA gradients once at the end instead.
        no_sync = ddp_model.no_sync() if hasattr(ddp_model, "no_sync") else nullcontext()
        # Chunks of length-sorted rows pad little; the loss sees the rows back in batch order.
        lengths = batch["attention_mask"].sum(dim=1)  # (N,)
        order = lengths.argsort(descending=True, stable=True)  # (N,)
        inverse = order.argsort()
        with no_sync:
            loss = grad_cache_backward(
                self.embedder.embed,  # each chunk packed (or cut to its own longest row)
                batch["input_ids"][order],
                batch["attention_mask"][order],
                lambda emb: self.loss_from_embeddings(emb[inverse], batch),
                token_chunks(lengths[order], self.grad_cache_chunk_tokens),
                backward=self.manual_backward,
            )
        if world > 1:
            for p in self.embedder.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= world
        self.record_grad_norm()
        if self.trainer.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.trainer.gradient_clip_val)
        opt.step()
        self.check_weights_finite()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Lightning clips after this hook; gradient caching records before its own clipping.
        if self.automatic_optimization:
            self.record_grad_norm()

    def record_grad_norm(self) -> None:
        """``last_grad_norm``: total L2 norm of the LoRA gradients (a tensor: no device sync)."""
        grads = [p.grad for p in self.embedder.parameters() if p.grad is not None]
        self.last_grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.check_weights_finite()

    def check_weights_finite(self) -> None:
        """After an optimizer step: stop before a NaN/inf adapter is evaluated or saved."""
        named = [(n, p) for n, p in self.embedder.named_parameters() if p.requires_grad]
        finite = torch.stack([torch.isfinite(p).all() for _, p in named])  # one sync, not one each
        if not bool(finite.all()):
            bad = [n for (n, _), ok in zip(named, finite.tolist(), strict=True) if not ok]
            raise NonFiniteError(
                f"LoRA weights became non-finite at step {self.global_step + 1} ({bad[0]}, "
                f"{len(bad)} tensors): optim.lr={self.optim_cfg.lr} is likely too high"
            )

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.embedder.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: enable LoRA (lora.enabled=true)")
        cfg = self.optim_cfg
        optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas)
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(cfg.warmup_steps, self.total_steps, cfg.scheduler)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {
            f"embedder.{k}": v for k, v in trainable_state_dict(self.embedder).items()
        }
        checkpoint["embedft_config"] = self.config
        checkpoint["embedft_run"] = dict(self.run_state)
