"""The facts an export's model card states about its origin, and its hub front matter.

- ``base_model_id``: the hub id of the base model: ``model.path`` for ``source=hub``, else the
  model yaml's ``hub_id`` (SmolLM2's GGUF package -> ``HuggingFaceTB/SmolLM2-135M-Instruct``);
  None for a local or tiny model without one.
- ``base_licence``: the base model's hub licence. A licence recorded for another model is not
  passed on: ``model.source=hub model.path=x`` on top of the default MiniCPM yaml keeps
  ``license: other`` (MiniCPM's) and ``hub_id: openbmb/...``, so a licence whose ``hub_id`` is not
  the exported base model is dropped, with a warning saying how to name the right one.
- ``training_datasets``: the hub ids of the training data (none for a local file).
- ``front_matter``: the YAML block (``huggingface_hub.ModelCardData``): base model, datasets,
  language, licence, library, pipeline tag, tags and a ``model-index`` with the run's STS scores
  in MTEB's shape (task ``STS``, dataset ``mteb/<task>-sts`` at MTEB's revision,
  ``cos_sim_spearman`` x 100), only for the tasks the run scored.
- ``framework_versions`` (recorded in ``embedft.json`` at export time) and ``CITATIONS``.

Used by ``embedft.card`` (the README) and ``embedft.export`` (``embedft.json``, the adapter).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import re
from pathlib import Path
from typing import Any, NamedTuple

from huggingface_hub import EvalResult, ModelCardData

from embedft.eval.tasks import HUB_SPLIT_NAMES, STS_TASKS

log = logging.getLogger(__name__)

# Licences written as free text by checkpoints from before model.license was a hub id.
_LEGACY_LICENSES = {
    "apache-2.0": ("apache-2.0", None),
    "mit": ("mit", None),
    "gemma terms of use": ("gemma", None),
    "minicpm model license": ("other", "minicpm-model-license"),
    "none (random weights)": None,
}
_HUB_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # the shape of the hub's licence ids

# Label on the card -> distribution name; "Python" is the interpreter's own version.
FRAMEWORKS = {
    "embedft": "embedft",
    "PyTorch": "torch",
    "Transformers": "transformers",
    "PEFT": "peft",
    "Sentence Transformers": "sentence-transformers",
    "Lightning": "lightning",
}

CITATIONS = {
    "embedft's method: contrastive fine-tuning of small language models": """\
@article{ukarapol2024improving,
  title={Improving Text Embeddings for Smaller Language Models Using Contrastive Fine-tuning},
  author={Ukarapol, Trapoom and Lee, Zhicheng and Xin, Amy},
  journal={arXiv preprint arXiv:2408.00690},
  year={2024}
}""",
    "SimCSE: the NLI triplets and supervised contrastive learning": """\
@inproceedings{gao2021simcse,
  title={{SimCSE}: Simple Contrastive Learning of Sentence Embeddings},
  author={Gao, Tianyu and Yao, Xingcheng and Chen, Danqi},
  booktitle={Proceedings of the 2021 Conference on Empirical Methods in Natural Language Processing},
  pages={6894--6910},
  year={2021},
  publisher={Association for Computational Linguistics},
  doi={10.18653/v1/2021.emnlp-main.552}
}""",
}


class Licence(NamedTuple):
    """A hub licence: ``id`` (apache-2.0, gemma, other, ...), ``name`` for ``other``."""

    id: str
    name: str | None = None


def base_model_id(model: dict[str, Any]) -> str | None:
    """The hub id of the base model of ``model`` (a saved ``ModelConfig`` as a dict), or None."""
    if model.get("source") == "hub":
        return model["path"]
    return model.get("hub_id") or None


def base_licence(model: dict[str, Any], override: str | None = None) -> Licence | None:
    """The base model's hub licence, or None when unknown (see the module docstring).

    ``override`` (the export's ``license=``) wins over what the run recorded.
    """
    if override:
        return Licence(override)
    recorded = (model.get("license") or "").strip()
    if not recorded:
        return None
    hub_id, base = model.get("hub_id"), base_model_id(model)
    if hub_id and hub_id != base:
        log.warning(
            "model.license=%r was recorded for model.hub_id=%r, not for the exported base model "
            "%r: the card names no licence (pass license=<hub licence id> to name it, or train "
            "with model.hub_id=%s model.license=<id>)",
            recorded,
            hub_id,
            base,
            base,
        )
        return None
    if recorded.lower() in _LEGACY_LICENSES:
        legacy = _LEGACY_LICENSES[recorded.lower()]
        return Licence(*legacy) if legacy else None
    if _HUB_ID.match(recorded):
        return Licence(recorded, model.get("license_name"))
    return Licence("other", _slug(recorded))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def training_datasets(data: dict[str, Any]) -> list[str]:
    """Hub ids of the training data: ``data.path`` of a hub source; a local file has none."""
    return [data["path"]] if data.get("source") == "hub" and data.get("path") else []


def framework_versions() -> dict[str, str]:
    """The versions installed now (an export records them in ``embedft.json``)."""
    versions = {"Python": platform.python_version()}
    for label, dist in FRAMEWORKS.items():
        try:
            versions[label] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def sts_results(sts: dict[str, float]) -> dict[str, float]:
    """The scores of the STS tasks in embedft's task table (no ``average``), in table order."""
    return {task: sts[task] for task in STS_TASKS if task in sts}


def model_index(sts: dict[str, float], split: str = "test") -> list[EvalResult]:
    """One MTEB-style result per scored task: Spearman x 100 of cosine similarity."""
    results = []
    for task, score in sts_results(sts).items():
        hub = STS_TASKS[task].hub
        results.append(
            EvalResult(
                task_type="STS",
                dataset_type=hub.path,
                dataset_name=f"MTEB {task}" + (f" ({hub.subset})" if hub.subset else ""),
                dataset_config=hub.subset or "default",
                dataset_split=HUB_SPLIT_NAMES[split],
                dataset_revision=hub.revision,
                metric_type="cos_sim_spearman",
                metric_value=round(float(score), 4),
            )
        )
    return results


def front_matter(
    meta: dict[str, Any],
    config: dict[str, Any],
    results: dict[str, Any] | None,
    *,
    repo_id: str,
    loss_name: str,
    licence: Licence | None,
) -> str:
    """The card's YAML metadata (without the ``---`` lines)."""
    data, eval_cfg = config.get("data") or {}, config.get("eval") or {}
    index = model_index((results or {}).get("sts") or {}, eval_cfg.get("split", "test"))
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "embedft"]
    tags += ["lora", "peft", f"loss:{loss_name}"]
    card = ModelCardData(
        base_model=meta.get("base_model"),
        datasets=training_datasets(data) or None,
        language=[data.get("language") or "en"],
        license=licence.id if licence else None,
        license_name=licence.name if licence else None,
        library_name="sentence-transformers" if meta["merged"] else "peft",
        pipeline_tag="sentence-similarity",
        tags=tags,
        metrics=["cos_sim_spearman"] if index else None,
        model_name=Path(repo_id).name,
        eval_results=index or None,
    )
    return card.to_yaml()
