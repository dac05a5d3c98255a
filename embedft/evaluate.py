"""Score a model on the STS tasks: ``python -m embedft.evaluate model=smollm2 [ckpt=PATH]``.

What is scored (loaded by ``embedft.model.load``, the one loader):

* ``model=NAME``: the base model ``conf/model/NAME.yaml`` (no LoRA);
* ``ckpt=PATH``: the fine-tuned model a training run saved, or an export of it (its own model
  config + adapters; ``model=`` is then ignored);
* ``st_model=DIR_OR_HUB_ID``: any sentence-transformers model, a local directory or a hub id,
  encoded with its own ``encode`` (L2-normalised, ``eval.batch_size`` texts a batch).

``model.trust_remote_code=true`` on the command line lets a checkpoint's or an ST model's code
run (a file can never switch that on). ``eval.tasks=[STSBenchmark,SICK-R]`` picks tasks,
``eval.source=hub`` reads MTEB's datasets from the hub instead of the offline copies under
``paths.data_dir``. ``eval.backend=mteb`` scores with the mteb package's tasks and evaluator
instead of embedft's (``embedft.eval.mteb_backend``; the two agree); it needs
``pip install 'embedft[mteb]'`` and says so before anything loads.

Prints a Markdown table (Spearman x 100 per task and the average) and writes, into the Hydra run
directory, ``results.md``, ``results.json`` (kind "evaluate"; the format run.py writes) and
MTEB's result files under ``mteb/results/<model>/<revision>/`` (``embedft.eval.mteb_results``:
one ``<Task>.json`` each plus ``model_meta.json``, fractions as MTEB writes them), which
``mteb.ResultCache(cache_path="<run dir>/mteb")`` loads.
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
from embedft.eval.mteb_results import (
    describe_embedder,
    describe_sentence_transformer,
    results_folder,
    write_mteb_results,
)
from embedft.eval.sts import load_tasks, pair_metrics, spearman_table
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
    """Compose -> load the model -> score -> write results; returns the results record."""
    from embedft.model.load import (
        load_embedder,
        load_sentence_transformer,
        resolve_device,
        saved_model_name,
    )

    out = Path(dcfg.paths.output_dir)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    named = dcfg.get("st_model") or dcfg.model.get("name")
    results = Results("evaluate", str(named), overrides=overrides)
    results.checkpoint = dcfg.get("ckpt")
    results.start_attempt()
    results.write(out)
    try:
        cfg: EvaluateConfig = to_object(dcfg, EvaluateConfig)
        check_trust_remote_code(cfg.model, overrides)
        if cfg.eval.backend == "mteb":
            from embedft.eval.mteb_backend import require_mteb

            require_mteb()
        results.config = OmegaConf.to_container(dcfg, resolve=True)
        device = resolve_device(cfg.device)
        # Data first: a missing file fails in a second, not after loading a large model.
        pairs = load_tasks(cfg.eval.tasks, cfg.paths.data_dir, cfg.eval.split, cfg.eval.source)
        started = time.perf_counter()
        trust = cfg.model.trust_remote_code
        if cfg.st_model:
            model = load_sentence_transformer(cfg.st_model, device, trust_remote_code=trust)
            described = describe_sentence_transformer(model, cfg.st_model)
            results.model = described.name
        else:
            model = load_embedder(cfg.ckpt or cfg.model, device, trust_remote_code=trust)
            if cfg.ckpt:
                results.model = saved_model_name(cfg.ckpt) or cfg.model.name
            described = describe_embedder(model, results.model, cfg.ckpt)
        loaded = time.perf_counter()
        if cfg.eval.backend == "mteb":
            from embedft.eval.mteb_backend import evaluate_with_mteb

            batch = cfg.eval.batch_size
            metrics = evaluate_with_mteb(model, pairs, described, out, batch, show_progress=True)
            folder = results_folder(out, described)
        else:
            metrics = pair_metrics(model, pairs, cfg.eval.batch_size, show_progress=True)
            folder = write_mteb_results(out, described, metrics, cfg.eval.split)
        results.sts = spearman_table(metrics)
        results.mteb_results = str(folder)
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
    kind = " (fine-tuned)" if cfg.ckpt else "" if cfg.st_model else " (base)"
    table = markdown_table(results.sts, results.model + kind)
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"\nresults: {out / 'results.json'}\nMTEB-format results: {folder}")
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
