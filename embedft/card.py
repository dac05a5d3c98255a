"""The model card (README.md) of an export: ``model_card(meta, config, results)``.

Hugging Face hub front matter (library, pipeline tag, base model, licence id), what the model is
and how it embeds, usage with sentence-transformers and ``python -m embedft.encode``, the training
configuration as a table, and the run's STS results when its ``results.json`` is there. The card is
built from saved files only (the export's ``embedft.json``, the checkpoint's config, the run's
``results.json``), never typed by hand. Written by ``embedft.export``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import yaml

from embedft.model.load import ADAPTER_DIR

# Free-text licences of conf/model/*.yaml -> Hugging Face hub licence ids.
_HUB_LICENSES = {"apache-2.0": "apache-2.0", "mit": "mit", "gemma terms of use": "gemma"}


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
) -> str:
    """README.md of an export: hub front matter, usage, the training configuration, STS results.

    ``meta`` is the export's ``embedft.json``, ``config`` the training run's resolved config,
    ``results`` its ``results.json`` (None: no results section); ``loss`` names the training
    loss (None: the loss named by ``config["loss"]``, with its settings).
    """
    model = meta["model"]
    loss = loss or describe_loss(config.get("loss") or {})
    front: dict[str, Any] = {
        "library_name": "sentence-transformers" if meta["merged"] else "peft",
        "pipeline_tag": "sentence-similarity",
        "tags": [
            "sentence-transformers",
            "sentence-similarity",
            "feature-extraction",
            "embedft",
            "lora",
        ],
    }
    if model["source"] == "hub":
        front["base_model"] = model["path"]
    licence = (model.get("license") or "").strip()
    if licence:
        front["license"] = _HUB_LICENSES.get(licence.lower(), "other")
        if front["license"] == "other":
            front["license_name"] = licence
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    lines += [
        f"# {model['name']} sentence embeddings (embedft)",
        "",
        f"`{model['path']}` ({model['source']}) fine-tuned into a sentence-embedding model with "
        f"LoRA and {loss.name} by embedft. Embeddings are the "
        + (
            "hidden state of an appended EOS token"
            if meta["pooling"] == "last"
            else "mean of the token states"
        )
        + f", L2-normalised; texts are cut to {meta['max_length']} tokens.",
        "",
        "## Usage",
        "",
    ]
    if meta["merged"]:
        lines += [
            "```python",
            "from sentence_transformers import SentenceTransformer",
            'model = SentenceTransformer("path/to/this/dir")',
            'embeddings = model.encode(["A man is playing a guitar.", "Someone plays music."])',
            "```",
            "",
        ]
    lines += [
        "```bash",
        "python -m embedft.encode ckpt=path/to/this/dir input=texts.txt output=emb.npy",
        "```",
        "",
        f"`{ADAPTER_DIR}/` holds the LoRA adapter alone (peft) for `AutoModel` of "
        f"`{meta['base_model']}`.",
        "",
        "## Training",
        "",
        "| Setting | Value |",
        "|---|---|",
    ]
    for key, value in _training_rows(config, meta, loss):
        lines.append(f"| {key} | {value} |")
    sts = (results or {}).get("sts") or {}
    if sts:
        lines += [
            "",
            "## STS results (Spearman x 100, test splits)",
            "",
            "| Task | Score |",
            "|---|---:|",
        ]
        for task, score in sts.items():
            name = "**Average**" if task == "average" else task
            lines.append(f"| {name} | {score:.2f} |")
    return "\n".join(lines) + "\n"


def _training_rows(
    config: dict[str, Any], meta: dict[str, Any], loss: LossDescription
) -> list[tuple[str, Any]]:
    model, lora = meta["model"], config.get("lora") or {}
    data, optim = config.get("data") or {}, config.get("optim") or {}
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
        ("data", f"{data.get('name')} (`{data.get('path')}`), batch size {data.get('batch_size')}"),
        (
            "optimiser",
            f"AdamW lr={optim.get('lr')}, weight decay={optim.get('weight_decay')}, "
            f"warmup={optim.get('warmup_steps')}, schedule={optim.get('scheduler')}",
        ),
        ("prompt", f"`{model['prompt']}`" if model.get("prompt") else None),
        ("steps", meta.get("global_step")),
        ("seed", config.get("seed")),
    ]
    return [(k, v) for k, v in rows if v is not None]
