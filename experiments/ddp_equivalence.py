"""Two processes give the loss and LoRA gradients of one: ``python experiments/ddp_equivalence.py``.

What DDP computes, checked against one process on the concatenated batch, on CPU (gloo), with
the tiny random Llama (``model=tiny_llama``) + LoRA r=4 (dropout 0, so every pass is
deterministic; LoRA B is made non-zero so that A gets gradients too).

Each of 2 ranks embeds its own rows (anchors, positives, negatives of its triplets) as training
does (``Embedder.embed``: packed; the reference runs one padded forward), computes
``InfoNCELoss(gather_across_ranks=True)`` (``embedft.losses.infonce``), whose candidates are
gathered from both ranks with gradients, runs backward, then averages the LoRA gradients over the
ranks with all_reduce (what DDP's reducer does). Rank r's local loss is the mean over its B_r
rows, so DDP optimises

    L_ddp = 1/W * sum_r 1/B_r * sum_{i in rank r} l_i

where l_i is row i's InfoNCE term with the *global* denominator. The single-process reference
computes exactly that on the concatenated batch. With equal local sizes it is the plain
full-batch mean (InfoNCELoss on all rows), which the reference then is; with unequal sizes
(3 and 2 rows) it is a weighted mean (rows of the smaller rank weigh more), not the plain one:
the script also prints how far the plain mean is, to show that this case tells them apart.

Cases: equal halves (3+3), unequal (3+2), Eq. 2 without hard negatives, gradient caching
(``embedft.grad_cache.grad_cache_backward``, sub-batches of 2 texts) with the gathering loss on
equal and unequal halves, ``loss=symmetric_infonce`` (which gathers the anchors too) on unequal
halves, and a control without gathering that must NOT match (a check that can fail).
Tolerance: |loss difference| and max |gradient difference| <= 1e-5 (float32; the largest
gradients are 2 to 5, the measured differences about 2e-6).

Prints one JSON object (also written to ``--json PATH``) and exits 0 when every case holds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# This checkout's embedft, not another editable install's (the script's own dir is on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from embedft.config import LoraConfig, ModelConfig
from embedft.grad_cache import grad_cache_backward
from embedft.losses import loss_class
from embedft.losses.infonce import info_nce
from embedft.losses.symmetric_infonce import symmetric_info_nce
from embedft.model.embedder import Embedder, build_embedder

WORLD = 2
TEMPERATURE = 0.05
TOLERANCE = 1e-5
TRIPLETS = [
    ("a man is playing guitar", "a man plays music", "nobody is playing"),
    ("a dog is running in the park", "a dog is outside", "a cat is sleeping inside"),
    ("two people sitting on a bench", "people are sitting", "nobody is there"),
    ("a woman reads a book", "a woman is reading", "a woman is sleeping"),
    ("a red car drives fast", "a car is on the road", "a car is parked"),
    ("a child is eating food", "a child eats", "a child is running"),
]
# name -> (rows of rank 0, rows of rank 1, hard_neg, gather, grad-cache chunk size or 0, loss)
CASES: dict[str, tuple[list[int], list[int], bool, bool, int, str]] = {
    "equal_3_3": ([0, 1, 2], [3, 4, 5], True, True, 0, "infonce"),
    "unequal_3_2": ([0, 1, 2], [3, 4], True, True, 0, "infonce"),
    "equal_3_3_no_hard_neg": ([0, 1, 2], [3, 4, 5], False, True, 0, "infonce"),
    "grad_cache_equal_3_3": ([0, 1, 2], [3, 4, 5], True, True, 2, "infonce"),
    "grad_cache_unequal_3_2": ([0, 1, 2], [3, 4], True, True, 2, "infonce"),
    "symmetric_unequal_3_2": ([0, 1, 2], [3, 4], True, True, 0, "symmetric_infonce"),
    "control_no_gather_3_3": ([0, 1, 2], [3, 4, 5], True, False, 0, "infonce"),  # must differ
}


def build() -> Embedder:
    """The same tiny LoRA embedder in every process (fixed seeds, no dropout)."""
    torch.manual_seed(0)
    embedder = build_embedder(
        ModelConfig(name="tiny_llama", source="tiny", path="llama", max_length=32),
        LoraConfig(r=4, alpha=8, dropout=0.0),
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sorted(embedder.named_parameters()):
            if "lora_" in name:  # B starts at 0 (no gradient for A): give both fixed values
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return embedder.train()


def tokenize(embedder: Embedder, rows: list[int]) -> dict[str, torch.Tensor]:
    """Anchors, then positives, then negatives of ``rows``: the collator's layout."""
    texts = [TRIPLETS[i][k] for k in range(3) for i in rows]
    return embedder.tokenize(texts)


def split(emb: torch.Tensor, n: int, hard_neg: bool):
    return emb[:n], emb[n : 2 * n], (emb[2 * n : 3 * n] if hard_neg else None)


def lora_grads(embedder: Embedder) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in embedder.named_parameters() if p.requires_grad}


def reference(embedder: Embedder, case: tuple) -> tuple[float, dict, float, dict]:
    """One process, all rows: the DDP objective L_ddp, and the plain full-batch mean."""
    rows0, rows1, hard_neg, _, _, loss_name = case
    rows = rows0 + rows1
    batch = tokenize(embedder, rows)
    out = []
    for objective in ("ddp", "plain"):
        embedder.zero_grad(set_to_none=True)
        anchor, positive, negative = split(embedder(**batch), len(rows), hard_neg)  # (N, H) each
        if objective == "plain":
            loss = loss_class(loss_name)(TEMPERATURE, hard_neg)(anchor, positive, negative)
        else:
            per_rank = []
            for start, local in ((0, rows0), (len(rows0), rows1)):
                own = slice(start, start + len(local))  # rank r's rows of the global batch
                if loss_name == "symmetric_infonce":
                    term = symmetric_info_nce(
                        anchor, positive, negative, temperature=TEMPERATURE, rows=own
                    )
                else:
                    term = info_nce(
                        anchor[own], positive, negative, temperature=TEMPERATURE, offset=start
                    )
                per_rank.append(term)
            loss = torch.stack(per_rank).mean()
        loss.backward()
        out += [loss.item(), lora_grads(embedder)]
    return out[0], out[1], out[2], out[3]


def worker(rank: int, store: str, result_path: str) -> None:
    torch.set_num_threads(1)  # two processes on a small machine
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    embedder = build()
    results = {}
    for name, (rows0, rows1, hard_neg, gather, chunk, loss_name) in CASES.items():
        local = rows0 if rank == 0 else rows1
        batch = tokenize(embedder, local)
        loss_fn = loss_class(loss_name)(TEMPERATURE, hard_neg, gather_across_ranks=gather)
        n = len(local)
        embedder.zero_grad(set_to_none=True)
        if chunk:
            loss = grad_cache_backward(
                embedder.embed,
                batch["input_ids"],
                batch["attention_mask"],
                lambda emb, n=n, fn=loss_fn, h=hard_neg: fn(*split(emb, n, h)),
                chunk,
            )
        else:
            loss = loss_fn(*split(embedder.embed(**batch), n, hard_neg))
            loss.backward()
        grads = lora_grads(embedder)
        for g in grads.values():  # DDP: average the gradients over the ranks
            dist.all_reduce(g)
            g /= WORLD
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[name] = {"loss": mean_loss.item() / WORLD, "grads": grads}
    if rank == 0:
        torch.save(results, result_path)
    dist.barrier()
    dist.destroy_process_group()


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    embedder = build()  # also builds the cached tiny model before the workers load it
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "ddp.pt")
        mp.spawn(worker, args=(os.path.join(tmp, "store"), result_path), nprocs=WORLD, join=True)
        ddp = torch.load(result_path)
    report: dict = {"world_size": WORLD, "tolerance": TOLERANCE, "cases": {}}
    for name, case in CASES.items():
        ref_loss, ref_grads, plain_loss, plain_grads = reference(embedder, case)
        loss_diff = abs(ddp[name]["loss"] - ref_loss)
        grad_diff = max_abs_diff(ddp[name]["grads"], ref_grads)
        scale = max(g.abs().max().item() for g in ref_grads.values())
        matches = loss_diff <= TOLERANCE and grad_diff <= TOLERANCE
        expect_match = case[3]  # the no-gather control must not match
        report["cases"][name] = {
            "rows_per_rank": [len(case[0]), len(case[1])],
            "hard_neg": case[2],
            "gather": case[3],
            "grad_cache_chunk": case[4],
            "loss": case[5],
            "loss_ddp": ddp[name]["loss"],
            "loss_reference": ref_loss,
            "loss_abs_diff": loss_diff,
            "grad_max_abs_diff": grad_diff,
            "grad_max_abs": scale,
            "plain_full_batch_loss_abs_diff": abs(ddp[name]["loss"] - plain_loss),
            "plain_full_batch_grad_max_abs_diff": max_abs_diff(ddp[name]["grads"], plain_grads),
            "expected_to_match": expect_match,
            "passed": matches == expect_match and scale > 1e-3,
        }
    report["passed"] = all(c["passed"] for c in report["cases"].values())
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
