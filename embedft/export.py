"""Export a training checkpoint as a standalone model: ``python -m embedft.export ckpt=PATH out=DIR``.

Keys (``--help`` lists them with their values): ``ckpt``, ``out`` (both required), ``merge``
(default true), ``overwrite`` (default false), ``dtype=auto|float32|bfloat16|float16`` (weights
of the merged model; auto: the dtype the base model is stored in), ``trust_remote_code`` (default
false: let the base model run its own code; never read from the checkpoint).

Layout of ``out`` (``DIR`` is what ``SentenceTransformer(DIR)`` and ``embedft.model.load`` load)::

    DIR/README.md                   model card (embedft.card): hub metadata, usage, STS results
    DIR/embedft.json                embedft's metadata (model config, pooling, EOS, max_length,
                                    base model, licence, framework versions)
    DIR/adapter/                    the LoRA adapter alone, peft format (adapter_config.json +
                                    adapter_model.safetensors + README.md), for ``AutoModel``
                                    of ``base_model_name_or_path``
    DIR/config.json, model.safetensors, tokenizer*   merged model (LoRA folded into the weights)
    DIR/modules.json, sentence_bert_config.json,     sentence-transformers 6.x pipeline:
        config_sentence_transformers.json,           Transformer -> Pooling -> Normalize
        1_Pooling/config.json, 2_Normalize/config.json

``merge=false`` writes README.md, embedft.json and adapter/ only (the tokenizer then goes into
adapter/). The saved tokenizer appends EOS itself and the pipeline files pin plain text
(``embedft.st_format``), so sentence-transformers embeds exactly as embedft does. No file names a
local path: the adapter's ``base_model_name_or_path`` and the card's ``base_model`` are the base
model's hub id (``embedft.card_meta.base_model_id``; the model's name when it has none), and a
local model or tokenizer directory is recorded by its name only.

``push_to_hub=<user>/<name>`` then uploads ``DIR`` to that hub repo in one commit
(``embedft.hub``; the token: ``$HF_TOKEN`` or ``hf auth login``). Offline (``HF_HUB_OFFLINE=1``),
with no token or a malformed repo id it fails before anything loads; a failed upload leaves the
local export in place and commits nothing. An export is written into a temporary sibling directory and
renamed into place: an interrupted export leaves no partial ``DIR``. Errors (a bad checkpoint, an
``out`` that would lose data) are one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig
from transformers import PretrainedConfig

from embedft.card import model_card
from embedft.card_meta import base_licence, base_model_id, framework_versions
from embedft.card_usage import adapter_readme
from embedft.checkpoint import load_checkpoint
from embedft.cli import log_to_stderr, one_line_errors, tool_config
from embedft.config import DTYPES, ConfigError, ModelConfig
from embedft.hub import HubError, check_can_push, check_repo_id, push_export
from embedft.model.embedder import resolve_dtype
from embedft.model.load import (
    ADAPTER_DIR,
    EXPORT_FORMAT,
    METADATA_FILE,
    load_embedder_from_checkpoint,
    saved_model_config,
)
from embedft.paths import conf_dir
from embedft.st_format import save_tokenizer, write_sentence_transformers_config

log = logging.getLogger("embedft.export")


@dataclass
class ExportConfig:
    """python -m embedft.export ckpt=PATH out=DIR [merge=false] [dtype=bfloat16]

    A training checkpoint -> a model directory that SentenceTransformer(DIR) and
    python -m embedft.encode ckpt=DIR load: merged model, adapter/, README.md model card and
    embedft.json (layout: embedft/export.py).
    """

    ckpt: str = MISSING  # a .ckpt written by python -m embedft.run (best.ckpt, last.ckpt)
    out: str = MISSING  # the directory to write (built beside it, then renamed into place)
    merge: bool = True  # false: README.md, embedft.json and adapter/ only, no merged model
    overwrite: bool = False  # true: replace a non-empty out
    dtype: str = "auto"  # merged weights: auto (the base model's) | float32 | bfloat16 | float16
    trust_remote_code: bool = False  # true: the base model may run its own code (never from ckpt)
    license: str | None = None  # base model's hub licence id for the card; null: the run's
    push_to_hub: str | None = None  # <user>/<name>: upload out there (token: $HF_TOKEN)
    private: bool = False  # push_to_hub: create the repo private (an existing one keeps its own)
    commit_message: str | None = None  # push_to_hub: null: "embedft export <out's name>"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.push_to_hub is not None:
            check_repo_id(self.push_to_hub)


ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    *,
    merge: bool = True,
    overwrite: bool = False,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    license: str | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> Path:
    """Write the export of ``ckpt`` into ``out`` (layout: module docstring); returns ``out``.

    ``license`` overrides the base model's licence on the card; ``push_to_hub`` (a repo id)
    uploads ``out`` afterwards (``embedft.hub.push_export``, with ``private``/``commit_message``).
    """
    ckpt, out = Path(ckpt), Path(out)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if push_to_hub is not None:
        check_can_push(push_to_hub)
    saved = load_checkpoint(ckpt)
    check_destination(out, overwrite, ckpt)
    config = saved["embedft_config"]
    model_cfg = saved_model_config(
        config.get("model"), f"ckpt={ckpt}", trust_remote_code=trust_remote_code
    )
    embedder = load_embedder_from_checkpoint(ckpt, model_override=model_cfg)
    if not hasattr(embedder.backbone, "peft_config"):
        raise ValueError(f"ckpt={ckpt}: the model has no LoRA adapter to export")
    model = portable_model_config(model_cfg)
    base = base_model_id(model)
    licence = base_licence(model, license)
    results = _run_results(ckpt)
    repo_id = push_to_hub or out.name  # what the card's usage code loads

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        backbone = embedder.backbone
        backbone.save_pretrained(str(tmp / ADAPTER_DIR))
        # peft records the directory the base model was loaded from (and reads its config.json
        # while saving): the file names the hub id instead
        _set_adapter_base(tmp / ADAPTER_DIR, base or model_cfg.name)
        weights_dtype = None
        model_type = backbone.get_base_model().config.model_type
        hidden_size = backbone.get_base_model().config.hidden_size
        if not merge:  # the adapter's users need the tokenizer that appends EOS too
            save_tokenizer(embedder, tmp / ADAPTER_DIR)
        else:
            weights_dtype = _export_dtype(dtype, model_cfg)
            merged = backbone.merge_and_unload().to(weights_dtype)
            merged.save_pretrained(str(tmp))
            save_tokenizer(embedder, tmp)
            write_sentence_transformers_config(
                tmp,
                merged.config.hidden_size,
                embedder.pooling,
                embedder.max_length,
                prompt=embedder.prompt,
            )
        meta = {
            "format": EXPORT_FORMAT,
            "merged": merge,
            "dtype": str(weights_dtype).removeprefix("torch.") if merge else None,
            "pooling": embedder.pooling,
            "append_eos": embedder.append_eos,
            "max_length": embedder.max_length,
            "tokenizer_appends_eos": embedder.append_eos,
            "base_model": base,
            "license": licence.id if licence else None,
            "license_name": licence.name if licence else None,
            "model_type": model_type,
            "embedding_dimension": hidden_size,
            "model": model,
            "lora": config.get("lora"),
            "checkpoint": ckpt.name,  # its name only: the run's directory is this machine's
            "global_step": saved.get("global_step"),
            "versions": framework_versions(),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(meta, config, results, repo_id=repo_id))
        # peft's save_pretrained writes an empty model-card template there
        (tmp / ADAPTER_DIR / "README.md").write_text(
            adapter_readme(repo_id, meta, config.get("lora") or {})
        )
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s -> %s (merged=%s)", ckpt, out, merge)
    if push_to_hub is not None:
        push_export(out, push_to_hub, private=private, commit_message=commit_message)
    return out


def _set_adapter_base(adapter_dir: Path, base: str) -> None:
    path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(path.read_text())
    adapter_config["base_model_name_or_path"] = base
    path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")


def portable_model_config(model_cfg: ModelConfig) -> dict[str, Any]:
    """``model_cfg`` as ``embedft.json`` records it: a local directory by its name only.

    Such a directory is this machine's; on another, loading the adapter needs the model there.
    """
    model = asdict(model_cfg)
    if model_cfg.source == "local":
        model["path"] = Path(model_cfg.path).name
    tokenizer = model_cfg.tokenizer_path
    if tokenizer and (Path(tokenizer).expanduser().is_absolute() or Path(tokenizer).exists()):
        model["tokenizer_path"] = Path(tokenizer).name
    return model


def check_destination(out: Path, overwrite: bool, ckpt: Path | None = None) -> None:
    """Refuse (before anything loads) an ``out`` that would lose data or cannot be written."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out={out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"out={out} exists and is not empty; pass overwrite=true to replace it"
        )
    if ckpt is not None and out.resolve() in ckpt.resolve().parents:
        raise ValueError(f"out={out} contains the checkpoint {ckpt}; choose another directory")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (checked earlier) is replaced."""
    # mkdtemp makes the directory 0700 and transformers writes model.safetensors 0600: an
    # export is for sharing, so everyone may read it.
    for path in [tmp, *tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)  # an empty ``out`` is replaced by the rename itself


def _export_dtype(dtype: str, model_cfg: ModelConfig) -> torch.dtype:
    """``auto``: the dtype the base model's config.json declares (float32 when it names none)."""
    if dtype != "auto":
        return resolve_dtype(dtype, "cpu")
    from embedft.model.sources import resolve_model_dir

    raw, _ = PretrainedConfig.get_config_dict(resolve_model_dir(model_cfg))
    declared = str(raw.get("dtype") or raw.get("torch_dtype"))
    return resolve_dtype(declared, "cpu") if declared in DTYPES[1:] else torch.float32


def _run_results(ckpt: Path) -> dict[str, Any] | None:
    """The run's results.json (``<run>/checkpoints/x.ckpt`` -> ``<run>/results.json``), if any."""
    path = ckpt.resolve().parent.parent / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("ignoring %s: not valid JSON", path)
        return None


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="export")
def main(dcfg: DictConfig) -> None:
    log_to_stderr()
    with one_line_errors(
        "embedft.export", FileExistsError, FileNotFoundError, ValueError, HubError
    ):
        cfg: ExportConfig = tool_config(dcfg, ExportConfig)
        out = export_checkpoint(
            cfg.ckpt,
            cfg.out,
            merge=cfg.merge,
            overwrite=cfg.overwrite,
            dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code,
            license=cfg.license,
            push_to_hub=cfg.push_to_hub,
            private=cfg.private,
            commit_message=cfg.commit_message,
        )
    print(out)


if __name__ == "__main__":
    main()
