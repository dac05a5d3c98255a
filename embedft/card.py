"""The model card (README.md) of an export: ``model_card(meta, config, results, repo_id=...)``.

Laid out as sentence-transformers 6.2 writes its own cards: hub front matter
(``embedft.card_meta``: base model, datasets, language, licence, library, pipeline tag, tags and
a ``model-index`` of the run's STS scores), what the model is, usage with sentence-transformers,
plain transformers, embedft and the LoRA adapter (``embedft.card_usage``), the STS results, the
training data, loss and settings, the STSB-dev curve, the framework versions and the citations.

The card is built from saved files only (the export's ``embedft.json``, the checkpoint's config,
the run's ``results.json``), never typed by hand, and names no local path: a local data file
by its name only. Written by ``embedft.export``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from embedft.card_meta import CITATIONS, Licence, base_licence, front_matter, sts_results
from embedft.card_usage import (
    needs_embedft_import,
    sentence_transformers_snippet,
    transformers_snippet,
    weights_note,
)
from embedft.model.load import ADAPTER_DIR

_DEV_CURVE_SHOWN = 10  # more STSB-dev points than this go in a collapsed <details> block


class LossDescription(NamedTuple):
    """The training loss as the card shows it: ``name`` in the first paragraph, ``name,
    settings`` in the Training table."""

    name: str
    settings: str


def describe_loss(loss_cfg: dict[str, Any]) -> LossDescription:
    """Whichever loss trained the model, as its class describes itself (``embedft.losses``).

    A run's ``loss`` config without ``name`` (checkpoints from before pluggable losses) is
    InfoNCE with its settings.
    """
    from embedft.losses import loss_card

    name, _, settings = loss_card(loss_cfg).partition(", ")
    return LossDescription(name, settings)


def model_card(
    meta: dict[str, Any],
    config: dict[str, Any],
    results: dict[str, Any] | None,
    loss: LossDescription | None = None,
    *,
    repo_id: str | None = None,
) -> str:
    """README.md of an export (layout: module docstring).

    ``meta`` is the export's ``embedft.json``, ``config`` the training run's resolved config,
    ``results`` its ``results.json`` (None: no results section); ``loss`` names the training
    loss (None: the loss named by ``config["loss"]``, with its settings); ``repo_id`` is what
    the usage code loads (None: the model's name).
    """
    repo_id = repo_id or meta["model"]["name"]
    loss = loss or describe_loss(config.get("loss") or {})
    licence = _licence(meta)
    front = front_matter(
        meta, config, results, repo_id=repo_id, loss_name=loss.name, licence=licence
    )
    lines = ["---", front.strip(), "---", ""]
    lines += _intro(meta, config, loss, repo_id)
    lines += _details(meta, config, licence)
    lines += _usage(meta, repo_id)
    lines += _evaluation(config, results)
    lines += _training(meta, config, results, loss)
    lines += ["", "## Citation", "", "### BibTeX"]
    for title, bibtex in CITATIONS.items():
        lines += ["", f"#### {title}", "", "```bibtex", bibtex, "```"]
    return "\n".join(lines) + "\n"


def _licence(meta: dict[str, Any]) -> Licence | None:
    """The licence ``embedft.export`` resolved (``embedft.json``), else the run's, checked."""
    if "license" in meta:
        return Licence(meta["license"], meta.get("license_name")) if meta["license"] else None
    return base_licence(meta["model"])


def _base_link(meta: dict[str, Any]) -> str:
    base = meta.get("base_model")
    return f"[{base}](https://huggingface.co/{base})" if base else f"`{meta['model']['name']}`"


def _data_name(data: dict[str, Any]) -> str:
    """The training data as the card names it: a hub link, or a local file's name only."""
    path = data.get("path") or "?"
    if data.get("source") == "hub":
        return f"[{path}](https://huggingface.co/datasets/{path})"
    return f"the local file `{Path(path).name}`"


def _intro(
    meta: dict[str, Any], config: dict[str, Any], loss: LossDescription, repo_id: str
) -> list[str]:
    data = config.get("data") or {}
    kind = "a LoRA adapter (peft)"
    if meta["merged"]:
        kind = "a [sentence-transformers](https://www.SBERT.net) model"
    dim = meta.get("embedding_dimension")
    size = f"a {dim}-dimensional" if dim else "a"
    return [
        f"# {Path(repo_id).name}",
        "",
        f"This is {kind} fine-tuned from {_base_link(meta)} on {_data_name(data)} by embedft: "
        f"LoRA and {loss.name} on NLI triplets, the method of [Improving Text Embeddings for "
        "Smaller Language Models Using Contrastive Fine-tuning](https://arxiv.org/abs/2408.00690) "
        f"(Ukarapol et al., 2024). It maps sentences to {size} dense vector space for semantic "
        "textual similarity, semantic search, clustering and the like.",
        "",
    ]


def _details(meta: dict[str, Any], config: dict[str, Any], licence: Licence | None) -> list[str]:
    model, data = meta["model"], config.get("data") or {}
    pooling = (
        "the hidden state of an EOS token appended to every text (last token)"
        if meta["pooling"] == "last"
        else "the mean of the token states"
    )
    if licence:
        shown = f"{licence.id} ({licence.name})" if licence.name else licence.id
        licence_line = f"{shown}, the base model's: its terms apply"
    else:
        licence_line = "not recorded: see the base model's card"
    lines = [
        "## Model Details",
        "",
        "### Model Description",
        "",
        "- **Model Type:** "
        + ("Sentence Transformer" if meta["merged"] else "LoRA adapter for a sentence embedder"),
        f"- **Base model:** {_base_link(meta)}",
        f"- **Maximum Sequence Length:** {meta['max_length']} tokens",
        f"- **Output Dimensionality:** {meta.get('embedding_dimension')} dimensions",
        "- **Similarity Function:** Cosine Similarity",
        f"- **Pooling:** {pooling}, L2-normalised",
    ]
    if model.get("prompt"):
        lines.append(f"- **Prompt:** `{model['prompt']}` (`{{s}}` is the text)")
    lines += [
        f"- **Training Dataset:** {_data_name(data)}",
        f"- **Language:** {data.get('language') or 'en'}",
        f"- **License:** {licence_line}",
    ]
    note = weights_note(meta)
    if note:
        lines += ["", note]
    return lines + [""]


def _usage(meta: dict[str, Any], repo_id: str) -> list[str]:
    lines = ["## Usage", ""]
    if needs_embedft_import(meta):
        lines += [
            "MiniCPM-1/2 is not native in transformers (its hub code is for transformers 4): "
            "`import embedft` (installed from its source, `pip install -e .`) registers it, "
            "without remote code, before the model loads.",
            "",
        ]
    if meta["merged"]:
        lines += [
            "### Direct Usage (Sentence Transformers)",
            "",
            "```bash",
            "pip install -U sentence-transformers",
            "```",
            "",
            "```python",
            sentence_transformers_snippet(repo_id, meta),
            "```",
            "",
            "### Direct Usage (Transformers)",
            "",
            "```python",
            transformers_snippet(repo_id, meta),
            "```",
            "",
        ]
    local = Path(repo_id).name
    download = [f"hf download {repo_id} --local-dir {local}"] if "/" in repo_id else []
    lines += [
        "### embedft",
        "",
        "```bash",
        *download,
        f"python -m embedft.encode ckpt={local} input=texts.txt output=emb.npy",
        "```",
        "",
        f"### LoRA adapter: `{ADAPTER_DIR}/`",
        "",
        f"`{ADAPTER_DIR}/` holds the LoRA adapter alone (peft) for `AutoModel` of "
        f"`{meta.get('base_model') or meta['model']['name']}`; its README shows how to use it.",
        "",
    ]
    return lines


def _evaluation(config: dict[str, Any], results: dict[str, Any] | None) -> list[str]:
    sts = (results or {}).get("sts") or {}
    if not sts:
        return []
    eval_cfg = config.get("eval") or {}
    split = eval_cfg.get("split", "test")
    source = (
        "MTEB's hub datasets"
        if eval_cfg.get("source") == "hub"
        else "embedft's offline copies, whose text matches MTEB's"
    )
    lines = [
        "## Evaluation",
        "",
        "### Metrics",
        "",
        f"#### Semantic Similarity ({split} splits)",
        "",
        "Spearman correlation x 100 between the cosine similarity of the two embeddings and the "
        f"gold score, as MTEB computes it (`python -m embedft.evaluate`), on {source}.",
        "",
        "| Task | Spearman (cosine) x 100 |",
        "|:---|---:|",
    ]
    scored = {**sts_results(sts), **{k: v for k, v in sts.items() if k != "average"}}
    for task, score in scored.items():
        lines.append(f"| {task} | {score:.2f} |")
    if "average" in sts:
        lines.append(f"| **Average** | **{sts['average']:.2f}** |")
    return lines + [""]


def _training(
    meta: dict[str, Any],
    config: dict[str, Any],
    results: dict[str, Any] | None,
    loss: LossDescription,
) -> list[str]:
    data = config.get("data") or {}
    columns = [data.get(k) for k in ("anchor_column", "positive_column", "negative_column")]
    columns = [c for c in columns if c]
    rows_used = ((results or {}).get("data") or {}).get("rows_used") or data.get("num_examples")
    lines = [
        "## Training Details",
        "",
        "### Training Dataset",
        "",
        f"- Dataset: {_data_name(data)}"
        + (f", file `{data['data_files']}`" if data.get("data_files") else ""),
    ]
    if rows_used:
        lines.append(f"- Size: {rows_used:,} training triplets")
    lines += [
        f"- Columns: {', '.join(f'`{c}`' for c in columns)} (anchor, positive, hard negative)",
        f"- Loss: {loss.name}" + (f" ({loss.settings})" if loss.settings else ""),
        "",
        "### Training Hyperparameters",
        "",
        "| Setting | Value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in _training_rows(config, meta, loss, results)]
    lines += _dev_curve((results or {}).get("stsb_dev") or [])
    versions = meta.get("versions") or {}
    if versions:
        lines += ["", "### Framework Versions", ""]
        lines += [f"- {label}: {version}" for label, version in versions.items()]
    return lines


def _dev_curve(curve: list[dict[str, float]]) -> list[str]:
    if not curve:
        return []
    table = ["| Step | STSBenchmark dev Spearman x 100 |", "|---:|---:|"]
    table += [f"| {int(p['step'])} | {p['spearman']:.2f} |" for p in curve]
    lines = ["", "### Training Logs", ""]
    if len(curve) > _DEV_CURVE_SHOWN:
        summary = "<details><summary>STSBenchmark dev during training</summary>"
        return [*lines, summary, "", *table, "", "</details>"]
    return lines + table


def _training_rows(
    config: dict[str, Any],
    meta: dict[str, Any],
    loss: LossDescription,
    results: dict[str, Any] | None,
) -> list[tuple[str, Any]]:
    model, lora = meta["model"], config.get("lora") or {}
    data, optim = config.get("data") or {}, config.get("optim") or {}
    trainer, train = config.get("trainer") or {}, (results or {}).get("train") or {}
    targets = lora.get("target_modules") or model.get("lora_target_modules")
    rows = [
        ("model", f"{model['name']} ({model['source']}: `{model['path']}`)"),
        (
            "pooling / append EOS / max length",
            f"{meta['pooling']} / {meta['append_eos']} / {meta['max_length']}",
        ),
        (
            "LoRA",
            f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
            f"init={lora.get('init')}, targets={targets}",
        ),
        ("loss", f"{loss.name}, {loss.settings}"),
        ("data", f"{data.get('name')}, batch size {data.get('batch_size')}"),
        (
            "optimiser",
            f"AdamW lr={optim.get('lr')}, weight decay={optim.get('weight_decay')}, "
            f"warmup={optim.get('warmup_steps')}, schedule={optim.get('scheduler')}",
        ),
        ("prompt", f"`{model['prompt']}`" if model.get("prompt") else None),
        (
            "epochs / max steps",
            f"{trainer['max_epochs']} / {trainer['max_steps']}" if trainer else None,
        ),
        ("precision", trainer.get("precision")),
        ("steps", meta.get("global_step")),
        ("wall time (s)", train.get("wall_time_s")),
        ("seed", config.get("seed")),
    ]
    return [(k, v) for k, v in rows if v is not None]
