"""MTEB's result files, written by embedft: ``<out>/mteb/results/<model>/<revision>/``.

MTEB (the ``mteb`` package, 2.x) saves one JSON per task, ``<TaskName>.json`` (``TaskResult``:
``dataset_revision``, ``task_name``, ``mteb_version``, ``scores: {split: [{<metrics>,
"main_score", "hf_subset", "languages"}]}``, ``evaluation_time``, ``kg_co2_emissions``, ``date``,
``evaluation_phases``), and a ``model_meta.json`` (``ModelMeta``) beside them, under
``results/<model name, "/" as "__">/<revision>/`` of a ``ResultCache``. embedft writes the same
files in the same layout under ``<out>/mteb``, so ``mteb.ResultCache(cache_path="<out>/mteb")``
loads them and they can be compared with, or submitted to, MTEB's results like any other.
``eval.backend=mteb`` has mteb write them itself (``embedft.eval.mteb_backend``), into the same
folder.

Scores are MTEB's: fractions (0.8123), rounded to 6 decimals as mteb rounds them; embedft's own
``results.json`` keeps Spearman x 100. What the task table knows (``embedft.eval.tasks``) fills
the rest: task name, dataset revision, ``hf_subset`` and languages. Written by embedft's backend,
``mteb_version`` is null (mteb did not compute them) and so is ``evaluation_time`` (every task
is encoded in one pass; ``results.json`` has the timing).

The folder names the model as MTEB's ``ModelMeta`` does, ``organisation/name``
(``describe_embedder``: ``embedft/<model name>``; ``describe_sentence_transformer``: its card's
name, else the hub id, else ``local/<directory name>``). Its revision is
``no_revision_available`` (mteb's word for it) for a base model, and for a checkpoint or an
export the sha256 of the fine-tuned weights, so that a base model and each fine-tuned version of
it land in different folders.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedft.eval.tasks import HUB_SPLIT_NAMES, StsTask, get_task
from embedft.tracking import write_json

MTEB_DIR = "mteb"  # under the run directory; a ResultCache's cache_path
NO_REVISION = "no_revision_available"  # mteb's revision of a model that names none
MODEL_META_FILE = "model_meta.json"
_ADAPTER_WEIGHTS = "adapter/adapter_model.safetensors"  # an export's fine-tuned weights


@dataclass(frozen=True)
class MtebModel:
    """The scored model as MTEB's ``ModelMeta`` describes it (what embedft knows of it)."""

    name: str
    revision: str = NO_REVISION
    embed_dim: int | None = None
    max_tokens: int | None = None
    n_parameters: int | None = None
    framework: tuple[str, ...] = ("PyTorch",)

    @property
    def folder(self) -> str:
        """``ModelMeta.model_name_as_path``: "/" as "__", spaces as "_"."""
        return self.name.replace("/", "__").replace(" ", "_")


def describe_embedder(embedder: Any, name: str, saved: str | Path | None = None) -> MtebModel:
    """An embedft ``Embedder`` named ``name``; ``saved``: the checkpoint or export it came from."""
    return MtebModel(
        name=_with_organisation(name, "embedft"),
        revision=weights_revision(saved) if saved else NO_REVISION,
        embed_dim=int(embedder.backbone.config.hidden_size),
        max_tokens=int(embedder.max_length),
        n_parameters=sum(p.numel() for p in embedder.parameters()),
    )


def describe_sentence_transformer(model: Any, name_or_dir: str) -> MtebModel:
    """A sentence-transformers model: named as mteb names it (its card's model name or base
    model), else by the hub id or the directory's name it was loaded from."""
    card = model.model_card_data
    path = Path(name_or_dir).expanduser()
    fallback = path.resolve().name if path.is_dir() else name_or_dir
    return MtebModel(
        name=_with_organisation(card.model_name or card.base_model or fallback, "local"),
        revision=card.base_model_revision or NO_REVISION,
        embed_dim=model.get_embedding_dimension(),
        max_tokens=model.max_seq_length,
        n_parameters=sum(p.numel() for p in model.parameters()),
        framework=("Sentence Transformers", "PyTorch"),
    )


def _with_organisation(name: str, organisation: str) -> str:
    """MTEB names models ``organisation/name`` (its ``ModelMeta`` refuses a name without "/")."""
    return name if "/" in name else f"{organisation}/{name}"


def weights_revision(saved: str | Path) -> str:
    """``sha256-<16 hex>`` of a checkpoint file, or of an export's adapter weights."""
    path = Path(saved)
    if path.is_dir():
        path = path / _ADAPTER_WEIGHTS
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256-{digest.hexdigest()[:16]}"


def results_folder(out_dir: str | Path, model: MtebModel) -> Path:
    """Where ``model``'s MTEB files go: ``<out>/mteb/results/<model>/<revision>``."""
    return Path(out_dir) / MTEB_DIR / "results" / model.folder / model.revision


def write_mteb_results(
    out_dir: str | Path, model: MtebModel, metrics: dict[str, dict[str, float]], split: str
) -> Path:
    """One ``<Task>.json`` per task of ``metrics`` (``embedft.eval.sts.sts_metrics`` of each)
    and ``model_meta.json``; returns their folder."""
    folder = results_folder(out_dir, model)
    for task, scores in metrics.items():
        write_json(folder / f"{task}.json", task_result(get_task(task, split), scores, split))
    write_json(folder / MODEL_META_FILE, model_meta(model))
    return folder


def task_result(row: StsTask, scores: dict[str, float], split: str) -> dict[str, Any]:
    """``TaskResult.to_disk``'s JSON for one task scored by embedft."""
    subset_scores = {
        **{metric: round(value, 6) for metric, value in scores.items()},
        "hf_subset": row.mteb_subset,
        "languages": list(row.languages),
    }
    return {
        "dataset_revision": row.hub.revision,
        "task_name": row.name,
        "mteb_version": None,  # not computed by mteb
        "scores": {HUB_SPLIT_NAMES[split]: [subset_scores]},
        "evaluation_time": None,  # one encoding pass for all tasks: see results.json's timing
        "kg_co2_emissions": None,
        "date": time.time(),
        "evaluation_phases": None,
    }


def model_meta(model: MtebModel) -> dict[str, Any]:
    """``ModelMeta.to_dict()`` of ``model``: every field, unknown ones null as mteb leaves them,
    less the deprecated ``is_cross_encoder`` (``model_type`` says it; mteb warns on reading it)."""
    return {
        "loader_kwargs": {},
        "name": model.name,
        "revision": model.revision,
        "release_date": None,
        "languages": None,
        "n_parameters": model.n_parameters,
        "n_active_parameters_override": None,
        "n_embedding_parameters": None,
        "memory_usage_mb": None,
        "max_tokens": model.max_tokens,
        "embed_dim": model.embed_dim,
        "license": None,
        "open_weights": None,
        "public_training_code": None,
        "public_training_data": None,
        "framework": list(model.framework),
        "reference": None,
        "similarity_fn_name": "cosine",  # embedft scores by cosine similarity
        "use_instructions": None,
        "training_datasets": None,
        "adapted_from": None,
        "superseded_by": None,
        "modalities": ["text"],
        "model_type": ["dense"],
        "citation": None,
        "contacts": None,
        "experiment_kwargs": None,
        "output_dtypes": None,
        "extra_requirements_groups": None,
        "loader": None,
    }
