"""Score a model on the STS tasks: ``python -m embedft.evaluate model=smollm2 [ckpt=PATH]``.

Without ``ckpt`` the base model named by ``model`` is scored (no LoRA); with ``ckpt`` the
fine-tuned model a training run saved, or an export of it (its own model config + adapters,
loaded by ``embedft.model.load``; ``model=`` is then ignored, except that
``model.trust_remote_code=true`` lets the checkpoint's model run its own code: the checkpoint
itself can never switch that on). ``eval.tasks=[STSBenchmark,SICK-R]``
picks tasks, ``eval.source=hub`` reads MTEB's datasets from the hub instead of the offline
copies under ``paths.data_dir``.

Prints a Markdown table (Spearman x 100 per task and the average) and writes ``results.md`` and
``results.json`` (kind "evaluate"; the format run.py writes) into the Hydra run directory.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from embedft.config import EvaluateConfig, check_trust_remote_code, to_object
from embedft.eval.sts import load_tasks, score_pairs
from embedft.extras import launcher_error
from embedft.paths import conf_dir
from embedft.results import Results

log = logging.getLogger("embedft.evaluate")


def markdown_table(scores: dict[str, float], label: str) -> str:
    """One row per task, then the average, Spearman x 100 to 2 decimals."""
    lines = [f"| Task | {label} |", "|---|---:|"]
    for task, value in scores.items():
        name = "**Average**" if task == "average" else task
        lines.append(f"| {name} | {value:.2f} |")
    return "\n".join(lines)


def evaluate(dcfg: DictConfig) -> Results:
    """Compose -> load the embedder -> score -> write results; returns the results record."""
    from embedft.model.load import load_embedder, resolve_device, saved_model_name

    out = Path(dcfg.paths.output_dir)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    results = Results("evaluate", str(dcfg.model.get("name")), overrides=overrides)
    results.checkpoint = dcfg.get("ckpt")
    results.start_attempt()
    results.write(out)
    try:
        cfg: EvaluateConfig = to_object(dcfg, EvaluateConfig)
        check_trust_remote_code(cfg.model, overrides)
        results.config = OmegaConf.to_container(dcfg, resolve=True)
        device = resolve_device(cfg.device)
        # Data first: a missing file fails in a second, not after loading a large model.
        pairs = load_tasks(cfg.eval.tasks, cfg.paths.data_dir, cfg.eval.split, cfg.eval.source)
        started = time.perf_counter()
        embedder = load_embedder(
            cfg.ckpt or cfg.model, device, trust_remote_code=cfg.model.trust_remote_code
        )
        if cfg.ckpt:
            results.model = saved_model_name(cfg.ckpt) or cfg.model.name
        loaded = time.perf_counter()
        results.sts = score_pairs(embedder, pairs, cfg.eval.batch_size, show_progress=True)
        results.timing = {
            "device": device,
            "load_s": round(loaded - started, 2),
            "eval_s": round(time.perf_counter() - loaded, 2),
        }
        results.end("completed")
    except BaseException as err:
        results.end("failed", f"{type(err).__name__}: {err}")
        raise
    finally:
        results.write(out)
    label = results.model + (" (fine-tuned)" if cfg.ckpt else " (base)")
    table = markdown_table(results.sts, label)
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"\nresults: {out / 'results.json'}")
    return results


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="evaluate")
def main(dcfg: DictConfig) -> float:
    return evaluate(dcfg).sts["average"]


def cli() -> None:
    """``python -m embedft.evaluate`` and ``embedft-evaluate``: Hydra's app, after refusing a
    ``hydra/launcher`` whose extra is missing (Hydra's error would not name it)."""
    if problem := launcher_error(sys.argv[1:]):
        sys.exit(problem)
    main()


if __name__ == "__main__":
    cli()
