"""Export a training checkpoint as a standalone model: ``python -m embedft.export ckpt=PATH out=DIR``.

Arguments (key=value): ``ckpt`` (required), ``out`` (required), ``merge=true|false`` (default
true), ``overwrite=true|false`` (default false), ``dtype=auto|float32|bfloat16|float16`` (weights
of the merged model; auto: the dtype the base model is stored in), ``trust_remote_code=true|false``
(default false: let the base model run its own code; never read from the checkpoint). ``--help``
prints this text.

Layout of ``out`` (``DIR`` is what ``SentenceTransformer(DIR)`` loads)::

    DIR/README.md                   model card: hub front matter, training config, STS results
    DIR/embedft.json                embedft's metadata (model config, pooling, EOS, max_length)
    DIR/adapter/                    the LoRA adapter alone, peft format (adapter_config.json +
                                    adapter_model.safetensors), for ``AutoModel`` of
                                    ``base_model_name_or_path``
    DIR/config.json, model.safetensors, tokenizer*   merged model (LoRA folded into the weights)
    DIR/modules.json, sentence_bert_config.json,     sentence-transformers 6.x pipeline:
        config_sentence_transformers.json,           Transformer -> Pooling -> Normalize
        1_Pooling/config.json, 2_Normalize/config.json

``merge=false`` writes README.md, embedft.json and adapter/ only. How sentence-transformers gets
embedft's input: the saved tokenizer appends EOS itself (a post-processor after the original one;
truncation reserves its place, so EOS survives it, as in ``embedft.model.tokenize``), and
``sentence_bert_config.json`` pins the plain-text modality, so an instruct model's chat template
is not wrapped around the text. A ``model.prompt`` the model was trained with is applied by
``SentenceTransformer(DIR).encode(texts)`` too: sentence-transformers' prompts can only be
prefixes, so the template's text before ``{s}`` is the ``text`` prompt (also ``query`` and
``document``) and ``default_prompt_name`` in ``config_sentence_transformers.json``, and its text
after ``{s}`` goes into the tokenizer's post-processor just before EOS, where embedft puts it. An
export is written into a temporary sibling directory and renamed into place: an interrupted
export leaves no partial ``DIR``.

``load_embedder(path)`` loads an ``Embedder`` from a checkpoint file or an export directory; the
checkpoint is read as plain data (``embedft.checkpoint``) and neither it nor ``embedft.json`` can
switch on ``trust_remote_code``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from embedft.checkpoint import CheckpointError, load_checkpoint
from embedft.config import ModelConfig, split_prompt
from embedft.model.embedder import (
    Embedder,
    build_embedder,
    load_embedder_from_checkpoint,
    saved_model_config,
)
from embedft.model.tokenize import prompt_tail

log = logging.getLogger("embedft.export")

EXPORT_FORMAT = 1
METADATA_FILE = "embedft.json"
ADAPTER_DIR = "adapter"
# The sentence-transformers release whose on-disk format the metadata below mirrors.
ST_FORMAT_VERSION = "6.2.0"
EXPORT_DTYPES = ("auto", "float32", "bfloat16", "float16")
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Free-text licences of conf/model/*.yaml -> Hugging Face hub licence ids.
_HUB_LICENSES = {"apache-2.0": "apache-2.0", "mit": "mit", "gemma terms of use": "gemma"}


class UsageError(ValueError):
    """A command-line argument is missing, unknown or malformed."""


def parse_args(argv: list[str], defaults: dict[str, Any], usage: str) -> dict[str, Any]:
    """Parse Hydra-style ``key=value`` arguments onto ``defaults`` (None means required).

    Values are converted to the type of their default (bool: true/false, int); ``--help`` prints
    ``usage`` and exits.
    """
    if any(a in ("-h", "--help", "help") for a in argv):
        print(usage)
        raise SystemExit(0)
    values = dict(defaults)
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {arg!r} is not key=value")
        if key not in defaults:
            raise UsageError(f"unknown argument {key!r}; expected one of {sorted(defaults)}")
        values[key] = _convert(key, raw, defaults[key])
    return values


def _convert(key: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false"):
            raise UsageError(f"{key} must be true or false, got {raw!r}")
        return raw.lower() == "true"
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"{key} must be an integer, got {raw!r}") from None
    return raw


def require(args: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if args.get(k) in (None, "")]
    if missing:
        raise UsageError(f"missing required argument(s): {', '.join(f'{k}=...' for k in missing)}")


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


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    *,
    merge: bool = True,
    overwrite: bool = False,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> Path:
    """Write the export of ``ckpt`` into ``out`` (layout: module docstring); returns ``out``."""
    ckpt, out = Path(ckpt), Path(out)
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {list(EXPORT_DTYPES)}, got {dtype!r}")
    saved = load_checkpoint(ckpt)
    check_destination(out, overwrite, ckpt)
    config = saved["embedft_config"]
    model_cfg = saved_model_config(
        config.get("model"), f"ckpt={ckpt}", trust_remote_code=trust_remote_code
    )
    embedder = load_embedder_from_checkpoint(ckpt, model_override=model_cfg)
    if not hasattr(embedder.backbone, "peft_config"):
        raise ValueError(f"ckpt={ckpt}: the model has no LoRA adapter to export")
    base = _base_model_id(model_cfg)
    results = _run_results(ckpt)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        backbone = embedder.backbone
        backbone.peft_config["default"].base_model_name_or_path = base
        backbone.save_pretrained(str(tmp / ADAPTER_DIR))
        weights_dtype = None
        if merge:
            weights_dtype = _export_dtype(dtype, model_cfg)
            merged = backbone.merge_and_unload().to(weights_dtype)
            merged.save_pretrained(str(tmp))
            tokenizer = embedder.tokenizer
            if embedder.append_eos:
                tokenizer = tokenizer_appending_eos(tokenizer, embedder.prompt, embedder.max_length)
            tokenizer.save_pretrained(str(tmp))
            _drop_load_flags(tmp / "tokenizer_config.json")
            check_saved_tokenizer(tmp, embedder)
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
            "tokenizer_appends_eos": merge and embedder.append_eos,
            "base_model": base,
            "model": asdict(model_cfg),
            "lora": config.get("lora"),
            "checkpoint": str(ckpt.resolve()),
            "global_step": saved.get("global_step"),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(meta, config, results))
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s -> %s (merged=%s)", ckpt, out, merge)
    return out


def _drop_load_flags(path: Path) -> None:
    """Remove how *this* machine loaded the tokenizer (``local_files_only``: true for a cached
    GGUF conversion) from its saved config: it would follow the export to the hub."""
    config = json.loads(path.read_text())
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2) + "\n")


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


def _base_model_id(model_cfg: ModelConfig) -> str:
    """What peft's ``base_model_name_or_path`` names: the hub id, else the resolved local dir."""
    from embedft.model.sources import resolve_model_dir

    if model_cfg.source == "hub":
        return model_cfg.path
    return str(Path(resolve_model_dir(model_cfg)).resolve())


def _export_dtype(dtype: str, model_cfg: ModelConfig) -> torch.dtype:
    """``auto``: the dtype the base model's config.json declares (float32 when it names none)."""
    if dtype != "auto":
        return _TORCH_DTYPES[dtype]
    from embedft.model.sources import resolve_model_dir

    raw, _ = PretrainedConfig.get_config_dict(resolve_model_dir(model_cfg))
    declared = raw.get("dtype") or raw.get("torch_dtype")
    return _TORCH_DTYPES.get(str(declared), torch.float32)


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


def tokenizer_appending_eos(
    tokenizer: PreTrainedTokenizerBase, prompt: str | None = None, max_length: int = 512
) -> PreTrainedTokenizerBase:
    """A copy of ``tokenizer`` whose post-processor appends EOS after its own special tokens.

    With a ``prompt`` whose text goes on after ``{s}``, the ids of that text come just before
    the EOS (``embedft.model.tokenize.prompt_tail``). HF fast tokenizers count the tokens a
    post-processor adds when they truncate, so a text cut to ``max_length`` keeps its EOS (and
    prompt suffix), as ``embedft.model.tokenize.tokenize_with_eos`` does. A tokenizer that
    already ends its output with EOS is returned unchanged (refused with a prompt suffix).
    """
    from tokenizers import Tokenizer

    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos is None or eos_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token to append")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer")
    suffix_ids = prompt_tail(tokenizer, prompt, max_length)[:-1]
    if tokenizer("a")["input_ids"][-1] == eos_id:
        if suffix_ids:
            raise ValueError(
                f"model.prompt {prompt!r}: tokenizer {tokenizer.name_or_path!r} appends EOS "
                "itself; exporting a prompt with text after {s} for it is not supported"
            )
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    suffix = (suffix_ids, tokenizer.convert_ids_to_tokens(suffix_ids))
    spec["post_processor"] = _with_eos(spec["post_processor"], eos, eos_id, suffix)
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))
    return tokenizer


# The post-processor's name for the prompt suffix's ids (a group of ids, not a vocabulary entry).
PROMPT_SUFFIX = "<embedft-prompt-suffix>"


def _with_eos(
    post: dict[str, Any] | None,
    eos: str,
    eos_id: int,
    suffix: tuple[list[int], list[str]] = ([], []),
) -> dict[str, Any]:
    """The JSON of post-processor ``post`` extended to end every sequence with ``eos``.

    The EOS goes into the tokenizer's own template: a second template chained after one that
    adds tokens (Gemma's BOS) would misplace it. ``suffix`` (ids, tokens) goes just before it.
    """
    special = {"id": eos, "ids": [eos_id], "tokens": [eos]}
    if post is None or post["type"] == "ByteLevel":
        template = {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {},
        }
        extended = _with_eos(template, eos, eos_id, suffix)
        return extended if post is None else {"type": "Sequence", "processors": [post, extended]}
    if post["type"] == "TemplateProcessing":
        post = copy.deepcopy(post)
        ids, tokens = suffix
        ending = ([PROMPT_SUFFIX] if ids else []) + [eos]
        for key in ("single", "pair"):
            type_id = next(iter(post[key][-1].values()))["type_id"]
            post[key] += [{"SpecialToken": {"id": name, "type_id": type_id}} for name in ending]
        post["special_tokens"][eos] = special
        if ids:
            post["special_tokens"][PROMPT_SUFFIX] = {
                "id": PROMPT_SUFFIX,
                "ids": ids,
                "tokens": tokens,
            }
        return post
    if post["type"] == "Sequence":
        post = copy.deepcopy(post)
        inner = post["processors"]
        last = max(
            (i for i, p in enumerate(inner) if p["type"] == "TemplateProcessing"), default=None
        )
        if last is None:
            inner.append(_with_eos(None, eos, eos_id, suffix))
        else:
            inner[last] = _with_eos(inner[last], eos, eos_id, suffix)
        return post
    raise ValueError(
        f"cannot append EOS to a tokenizer whose post-processor is {post['type']}; "
        "expected none, TemplateProcessing, ByteLevel or a Sequence of them"
    )


def check_saved_tokenizer(directory: Path, embedder: Embedder) -> None:
    """Reload the saved tokenizer and check it tokenises exactly as embedft does.

    transformers rebuilds some tokenizers' post-processors from ``add_eos_token`` flags on load;
    this catches such a tokenizer before a silently different export is written.
    """
    reloaded = AutoTokenizer.from_pretrained(str(directory))
    probes = ["a short text", "x " * (4 * embedder.max_length)]
    ours = embedder.tokenize(probes)
    prefix, _ = split_prompt(embedder.prompt)  # what sentence-transformers' prompt prepends
    theirs = reloaded(
        [prefix + p for p in probes], truncation=True, max_length=embedder.max_length
    )["input_ids"]
    for i, ids in enumerate(theirs):
        expected = ours["input_ids"][i][ours["attention_mask"][i].bool()].tolist()
        if ids != expected:
            raise RuntimeError(
                f"the exported tokenizer in {directory} gives {ids} for probe {probes[i]!r}, "
                f"embedft gives {expected}; the export would embed differently"
            )


def write_sentence_transformers_config(
    directory: Path, hidden_size: int, pooling: str, max_length: int, prompt: str | None = None
) -> None:
    """The files ``SentenceTransformer(directory)`` reads (as sentence-transformers 6.2 writes).

    ``prompt``'s text before ``{s}`` becomes the default prompt (see the module docstring).
    """
    prefix, _ = split_prompt(prompt)
    prompts = {"query": prefix, "document": prefix, **({"text": prefix} if prefix else {})}
    modules = [
        ("", "sentence_transformers.base.modules.transformer.Transformer"),
        ("1_Pooling", "sentence_transformers.sentence_transformer.modules.pooling.Pooling"),
        ("2_Normalize", "sentence_transformers.base.modules.normalize.Normalize"),
    ]
    _write_json(
        directory / "modules.json",
        [{"idx": i, "name": str(i), "path": p, "type": t} for i, (p, t) in enumerate(modules)],
    )
    _write_json(
        directory / "sentence_bert_config.json",
        {
            "transformer_task": "feature-extraction",
            # Text only: with no "message" modality the chat template is never applied.
            "modality_config": {
                "text": {"method": "forward", "method_output_name": "last_hidden_state"}
            },
            "module_output_name": "token_embeddings",
            "max_seq_length": max_length,
        },
    )
    _write_json(
        directory / "config_sentence_transformers.json",
        {
            "__version__": {"sentence_transformers": ST_FORMAT_VERSION},
            "model_type": "SentenceTransformer",
            "prompts": prompts,
            "default_prompt_name": "text" if prefix else None,
            "similarity_fn_name": "cosine",
        },
    )
    _write_json(
        directory / "1_Pooling" / "config.json",
        {
            "embedding_dimension": hidden_size,
            "pooling_mode": "lasttoken" if pooling == "last" else "mean",
            "include_prompt": True,
        },
    )
    _write_json(
        directory / "2_Normalize" / "config.json",
        {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
    )


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def model_card(meta: dict[str, Any], config: dict[str, Any], results: dict[str, Any] | None) -> str:
    """README.md: hub front matter, usage, the training configuration and the STS results."""
    model = meta["model"]
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
        "LoRA and InfoNCE by embedft. Embeddings are the "
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
    for key, value in _training_rows(config, meta):
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


def _training_rows(config: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, Any]]:
    model, lora = meta["model"], config.get("lora") or {}
    loss, data, optim = (
        config.get("loss") or {},
        config.get("data") or {},
        config.get("optim") or {},
    )
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
        (
            "loss",
            f"InfoNCE, temperature={loss.get('temperature')}, "
            f"hard negatives={loss.get('hard_neg')}",
        ),
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


def read_metadata(directory: str | Path) -> dict[str, Any]:
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
            license=model_cfg.license,
        )
        return build_embedder(merged_cfg, None, device=device)
    from peft import PeftModel

    embedder = build_embedder(model_cfg, None)
    embedder.backbone = PeftModel.from_pretrained(embedder.backbone, str(directory / ADAPTER_DIR))
    return embedder.to(device)


def load_embedder(
    path: str | Path, device: str | torch.device = "cpu", *, trust_remote_code: bool = False
) -> Embedder:
    """An ``Embedder`` from a training checkpoint file or an export directory."""
    path = Path(path)
    if path.is_file():
        return load_embedder_from_checkpoint(path, device, trust_remote_code=trust_remote_code)
    if (path / METADATA_FILE).is_file():
        return load_exported_embedder(path, device, trust_remote_code=trust_remote_code)
    problem = f"a directory without {METADATA_FILE}" if path.is_dir() else "not found"
    raise CheckpointError(
        f"ckpt={path}: {problem}; expected a .ckpt file written by python -m embedft.run or a "
        "directory written by python -m embedft.export"
    )


USAGE = __doc__.split("\n\n``load_embedder")[0]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(
            sys.argv[1:] if argv is None else argv,
            {
                "ckpt": None,
                "out": None,
                "merge": True,
                "overwrite": False,
                "dtype": "auto",
                "trust_remote_code": False,
            },
            USAGE,
        )
        require(args, "ckpt", "out")
        out = export_checkpoint(
            args["ckpt"],
            args["out"],
            merge=args["merge"],
            overwrite=args["overwrite"],
            dtype=args["dtype"],
            trust_remote_code=args["trust_remote_code"],
        )
    except (UsageError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"embedft.export: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
