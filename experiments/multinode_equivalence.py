"""2 nodes x 2 processes give the loss and gradients of one: ``python experiments/multinode_equivalence.py``.

A SLURM job of 2 nodes with 2 tasks each (``hydra/launcher=slurm_multinode trainer.num_nodes=2
trainer.devices=2``), simulated on one CPU machine: 4 processes of this script, each given the
variables srun gives a task (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURM_NTASKS=4,
SLURM_NTASKS_PER_NODE=2, SLURM_NNODES=2) and MASTER_ADDR=127.0.0.1; gloo. Each builds what
``embedft.run`` builds for such a job: ``check_slurm_job``, the Trainer of
``embedft.trainer.build_trainer`` (accelerator=cpu, strategy=ddp, its ``SLURMEnvironment`` from
``embedft.resume.cluster_plugins``, ``last.ckpt`` by ``ResumeCheckpoint``), the real
``TripletDataModule`` (the stream sharded by Lightning's global rank), ``EmbeddingModule`` and
``InfoNCELoss`` gathering candidates across ranks, on the tiny Llama + LoRA of
experiments/ddp_equivalence.py (fp32, dropout 0); one optimizer step of 2 triplets per rank.

One process then runs the same module on the 8 triplets the 4 ranks trained on together, and the
script checks (tolerance 1e-5):

- Lightning numbered the ranks as SLURM did (global, node, local rank), ``is_rank_zero`` agrees,
  and the 4 ranks' batches are disjoint and cover all 8 triplets;
- the mean of the ranks' losses (what DDP optimises; equal batch sizes) is the full-batch loss,
  and on every rank the LoRA gradients after DDP's all-reduce are the full-batch gradients;
- the comparison can fail: the losses with candidates gathered only within a node, or only on
  the rank, are computed too and differ from the full-batch loss by more than the tolerance;
- every process exited 0, and ``last.ckpt`` was written (from rank 0, after a barrier of all
  four: a rank missing from it would hang the job).

Prints one JSON object (also written to ``--json PATH``) and exits 0 when every check holds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# This checkout's embedft (not another install's), and ddp_equivalence beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddp_equivalence import TEMPERATURE, TOLERANCE, build, lora_grads, max_abs_diff

NODES, TASKS_PER_NODE = 2, 2
WORLD = NODES * TASKS_PER_NODE
BATCH = 2  # triplets per rank
TRIPLETS = [
    ("a man is playing guitar", "a man plays music", "nobody is playing"),
    ("a dog is running in the park", "a dog is outside", "a cat is sleeping inside"),
    ("two people sitting on a bench", "people are sitting", "nobody is there"),
    ("a woman reads a book", "a woman is reading", "a woman is sleeping"),
    ("a red car drives fast", "a car is on the road", "a car is parked"),
    ("a child is eating food", "a child eats", "a child is running"),
    ("a blue ball in the street", "a ball is outside", "the ball is inside"),
    ("two cats sleeping on a bench", "cats are sleeping", "cats are running"),
]


def run_config(data: Path):
    """The RunConfig of the simulated job (what embedft.run's builders take)."""
    from embedft.config import (
        DataConfig,
        EvalConfig,
        LoggerConfig,
        ModelConfig,
        OptimConfig,
        RunConfig,
        TrainerConfig,
    )

    return RunConfig(
        model=ModelConfig(name="tiny_llama", source="tiny", path="llama", max_length=32),
        data=DataConfig(name="sim", source="local", path=str(data), batch_size=BATCH),
        optim=OptimConfig(lr=1e-3, warmup_steps=0),
        trainer=TrainerConfig(
            accelerator="cpu",
            devices=TASKS_PER_NODE,
            num_nodes=NODES,
            strategy="ddp",
            precision="32-true",
            max_steps=1,
            enable_progress_bar=False,
        ),
        logger=LoggerConfig(kind="none"),
        eval=EvalConfig(every_n_steps=0, after_fit=False),
    )


def child(work: Path) -> None:
    """One SLURM task: the job's Trainer, datamodule and module; one step, recorded."""
    import lightning as L

    from embedft.data.datamodule import TripletDataModule, check_data
    from embedft.launch import is_rank_zero
    from embedft.losses import build_loss
    from embedft.module import EmbeddingModule
    from embedft.slurm import check_slurm_job
    from embedft.trainer import build_callbacks, build_trainer

    torch.set_num_threads(1)
    cfg = run_config(work / "triplets.csv")
    cfg.data.shuffle_buffer = 0  # rank r reads rows r, r+4: known, and checked below
    check_slurm_job(cfg.trainer)
    embedder = build()
    datamodule = TripletDataModule.for_run(cfg, embedder.tokenizer, check_data(cfg.data))
    module = EmbeddingModule(embedder, build_loss(cfg.loss), cfg.optim, total_steps=1)
    callbacks = build_callbacks(cfg, work / "checkpoints", work, cfg.trainer.max_steps, None)
    trainer = build_trainer(cfg, work, False, callbacks, gpu=False)
    record: dict = {"rank_zero_by_env": is_rank_zero()}

    class Recorder(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            record["positive_keys"] = batch["positive_keys"].tolist()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            record["grads"] = lora_grads(pl_module.embedder)  # after DDP's all-reduce

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            record["loss"] = float(outputs["loss"])

    trainer.callbacks.append(Recorder())
    trainer.fit(module, datamodule=datamodule)
    record.update(
        global_rank=trainer.global_rank,
        node_rank=trainer.node_rank,
        local_rank=trainer.local_rank,
        world_size=trainer.world_size,
        environment=type(trainer.strategy.cluster_environment).__name__,
    )
    torch.save(record, work / f"rank{trainer.global_rank}.pt")


def slurm_task_env(task: int, port: int) -> dict[str, str]:
    """The environment srun gives task ``task`` of a 2-node x 2-task job (plus gloo's address)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="embedft-multinode-sim",
        SLURM_NTASKS=str(WORLD),
        SLURM_NTASKS_PER_NODE=str(TASKS_PER_NODE),
        SLURM_NNODES=str(NODES),
        SLURM_NODELIST="127.0.0.1",
        SLURM_PROCID=str(task),
        SLURM_NODEID=str(task // TASKS_PER_NODE),
        SLURM_LOCALID=str(task % TASKS_PER_NODE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(work: Path, timeout: int) -> list[dict]:
    """Run the 4 tasks at once, as srun would; a hang is killed after ``timeout`` seconds."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", str(work)],
            env=slurm_task_env(task, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for task in range(WORLD)
    ]
    tasks = []
    for task, proc in enumerate(procs):
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            output, _ = proc.communicate()
        tasks.append({"task": task, "returncode": proc.returncode, "log_tail": output[-3000:]})
    return tasks


def reference(rows: list[int]) -> dict:
    """One process, the 8 triplets in rank order: full-batch loss and gradients, and controls."""
    from embedft.config import OptimConfig
    from embedft.data.datamodule import TripletCollator
    from embedft.losses.infonce import InfoNCELoss, info_nce
    from embedft.module import EmbeddingModule

    embedder = build()
    module = EmbeddingModule(embedder, InfoNCELoss(TEMPERATURE, hard_neg=True), OptimConfig(), 1)
    collate = TripletCollator(embedder.tokenizer, max_length=32, append_eos=True)
    triplets = [TRIPLETS[i] for i in rows]
    batch = collate([{"anchor": a, "positive": p, "negative": n} for a, p, n in triplets])
    emb = module.embed_batch(batch)  # (3N, H): anchors, positives, negatives
    loss = module.loss_from_embeddings(emb, batch)
    loss.backward()
    n = len(rows)
    anchor, positive, negative = emb[:n].detach(), emb[n : 2 * n].detach(), emb[2 * n :].detach()

    def local_mean(group: int) -> float:  # candidates gathered only within groups of rows
        terms = []
        for start in range(0, n, group):
            own = slice(start, start + group)
            terms.append(
                info_nce(anchor[own], positive[own], negative[own], temperature=TEMPERATURE)
            )
        return torch.stack(terms).mean().item()

    return {
        "loss": loss.item(),
        "grads": lora_grads(embedder),
        "node_local_loss": local_mean(BATCH * TASKS_PER_NODE),
        "rank_local_loss": local_mean(BATCH),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--timeout", type=int, default=600, help="seconds before a hang is killed")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    from embedft.data.datamodule import text_key

    torch.set_num_threads(1)
    build()  # builds the cached tiny model once, before four processes want it
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with open(work / "triplets.csv", "w", newline="") as f:
            csv.writer(f).writerows([("sent0", "sent1", "hard_neg"), *TRIPLETS])
        tasks = launch(work, args.timeout)
        ranks = [torch.load(p) for p in sorted(work.glob("rank*.pt"))]
        checkpoints = sorted(p.name for p in (work / "checkpoints").glob("*"))
    report: dict = {"nodes": NODES, "tasks_per_node": TASKS_PER_NODE, "tolerance": TOLERANCE}
    report["tasks"] = [{k: t[k] for k in ("task", "returncode")} for t in tasks]
    if len(ranks) != WORLD or any(t["returncode"] != 0 for t in tasks):
        report.update(passed=False, logs=[t["log_tail"] for t in tasks])
        print(json.dumps(report, indent=2))
        return 1
    index = {text_key(t[1]): i for i, t in enumerate(TRIPLETS)}
    rows = [
        [index[k] for k in r["positive_keys"]]
        for r in sorted(ranks, key=lambda r: r["global_rank"])
    ]
    ref = reference([i for rank_rows in rows for i in rank_rows])
    ddp_loss = sum(r["loss"] for r in ranks) / WORLD
    grad_diffs = [max_abs_diff(r["grads"], ref["grads"]) for r in ranks]
    layout = [
        {k: r[k] for k in ("global_rank", "node_rank", "local_rank", "world_size", "environment")}
        | {"rank_zero_by_env": r["rank_zero_by_env"], "rows": rows[r["global_rank"]]}
        for r in sorted(ranks, key=lambda r: r["global_rank"])
    ]
    checks = {
        "ranks_as_slurm_numbered_them": all(
            (e["node_rank"], e["local_rank"]) == divmod(e["global_rank"], TASKS_PER_NODE)
            and e["world_size"] == WORLD
            and e["environment"] == "SLURMEnvironment"
            and e["rank_zero_by_env"] == (e["global_rank"] == 0)
            for e in layout
        )
        and sorted(e["global_rank"] for e in layout) == list(range(WORLD)),
        "batches_disjoint_and_cover_all": sorted(i for r in rows for i in r)
        == list(range(len(TRIPLETS))),
        "loss_matches": abs(ddp_loss - ref["loss"]) <= TOLERANCE,
        "grads_match_on_every_rank": max(grad_diffs) <= TOLERANCE,
        "grads_not_trivial": max(g.abs().max().item() for g in ref["grads"].values()) > 1e-3,
        "node_local_gather_would_differ": abs(ref["node_local_loss"] - ref["loss"]) > TOLERANCE,
        "rank_local_gather_would_differ": abs(ref["rank_local_loss"] - ref["loss"]) > TOLERANCE,
        "last_ckpt_written": checkpoints == ["last.ckpt"],
    }
    report.update(
        layout=layout,
        loss_ddp_mean=ddp_loss,
        loss_reference=ref["loss"],
        loss_abs_diff=abs(ddp_loss - ref["loss"]),
        grad_max_abs_diff_per_rank=grad_diffs,
        loss_node_local_gather=ref["node_local_loss"],
        loss_rank_local_gather=ref["rank_local_loss"],
        checkpoints=checkpoints,
        checks=checks,
        passed=all(checks.values()),
    )
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
