"""What sentence-transformers reads from an export, so that it embeds exactly as embedft does.

- ``save_tokenizer``: the tokenizer, saved with a post-processor that appends EOS after its own
  special tokens (HF fast tokenizers count post-processor tokens when they truncate, so EOS
  survives truncation, as in ``embedft.model.tokenize``); reloaded and checked against
  ``Embedder.tokenize`` before the export is accepted. A ``model.prompt``'s text after ``{s}``
  goes into that post-processor just before EOS, where embedft puts it.
- ``write_sentence_transformers_config``: the pipeline files (Transformer -> Pooling ->
  Normalize, as sentence-transformers 6.2 writes them); ``sentence_bert_config.json`` pins the
  plain-text modality, so an instruct model's chat template is never wrapped around the text.

Used by ``embedft.export``; ``SentenceTransformer(DIR)`` is the reader.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from embedft.config import split_prompt
from embedft.model.embedder import Embedder
from embedft.model.tokenize import prompt_tail

# The sentence-transformers release whose on-disk format the files below mirror.
ST_FORMAT_VERSION = "6.2.0"


def save_tokenizer(embedder: Embedder, directory: Path) -> None:
    """Save ``embedder``'s tokenizer (appending EOS if the embedder does) and check it."""
    tokenizer = embedder.tokenizer
    if embedder.append_eos:
        tokenizer = tokenizer_appending_eos(tokenizer, embedder.prompt, embedder.max_length)
    tokenizer.save_pretrained(str(directory))
    _drop_load_flags(directory / "tokenizer_config.json")
    check_saved_tokenizer(directory, embedder)


def _drop_load_flags(path: Path) -> None:
    """Remove how *this* machine loaded the tokenizer (``local_files_only``: true for a cached
    GGUF conversion) from its saved config: it would follow the export to the hub."""
    config = json.loads(path.read_text())
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2) + "\n")


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

    ``model.prompt``: sentence-transformers' prompts can only be prefixes, so the template's
    text before ``{s}`` is the ``text`` prompt (also ``query`` and ``document``) and the default
    one; its text after ``{s}`` is in the tokenizer, before EOS (``tokenizer_appending_eos``).
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
