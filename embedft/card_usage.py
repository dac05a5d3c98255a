"""The usage sections of an export's cards: code that embeds exactly as embedft does.

- ``sentence_transformers_snippet``: ``SentenceTransformer(repo).encode`` (the export's
  pipeline files and tokenizer do the rest: ``embedft.st_format``).
- ``transformers_snippet``: plain ``AutoModel``: the export's tokenizer appends EOS (and a
  prompt's text after ``{s}``), the prompt's text before ``{s}`` is put in front of each text,
  the embedding is the hidden state of each row's last real token (the EOS) or the mean of the
  token states, L2-normalised.
- ``adapter_readme``: ``adapter/README.md`` (in place of peft's empty template): the LoRA adapter
  applied with peft to the base model, then the same pooling.

tests/test_card_usage.py runs the snippets' text against tiny exports and checks their vectors
against embedft's.
"""

from __future__ import annotations

from typing import Any

import yaml

from embedft.config import split_prompt
from embedft.model.load import ADAPTER_DIR

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is making music.",
    "A cat sleeps on the sofa.",
]


def needs_embedft_import(meta: dict[str, Any]) -> bool:
    """MiniCPM-1/2 loads only after ``import embedft`` registers it (its hub code is for v4)."""
    return meta.get("model_type") == "minicpm"


def _imports(meta: dict[str, Any]) -> list[str]:
    if not needs_embedft_import(meta):
        return []
    return ["import embedft  # registers MiniCPM (model_type minicpm) with transformers"]


def sentence_transformers_snippet(repo_id: str, meta: dict[str, Any]) -> str:
    dim = meta.get("embedding_dimension")
    return "\n".join(
        [
            *_imports(meta),
            "from sentence_transformers import SentenceTransformer",
            "",
            f'model = SentenceTransformer("{repo_id}")',
            f"sentences = {SENTENCES!r}",
            "embeddings = model.encode(sentences)",
            f"print(embeddings.shape)  # (3, {dim})",
            "similarities = model.similarity(embeddings, embeddings)  # cosine, (3, 3)",
        ]
    )


def _pooling_lines(meta: dict[str, Any]) -> list[str]:
    if meta["pooling"] == "last":
        return [
            "# The embedding: the hidden state of each row's last real token, the EOS",
            "positions = torch.arange(hidden.shape[1])",
            'last = (batch["attention_mask"] * positions).argmax(dim=1)',
            "pooled = hidden[torch.arange(hidden.shape[0]), last]",
        ]
    return [
        "# The embedding: the mean of the token states",
        'mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)',
        "pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)",
    ]


def _encode_lines(meta: dict[str, Any], prompt: str | None) -> list[str]:
    prefix, _ = split_prompt(prompt)
    texts = f"[{prefix!r} + s for s in sentences]" if prefix else "sentences"
    lines = [f"sentences = {SENTENCES!r}"]
    if prefix:
        lines.append("# The prompt's text before {s}; the tokenizer adds what follows it")
    lines += [
        "batch = tokenizer(",
        f"    {texts},",
        f'    padding=True, truncation=True, max_length={meta["max_length"]}, return_tensors="pt"',
        ")",
        "with torch.no_grad():",
        "    hidden = model(",
        '        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]',
        "    ).last_hidden_state.float()  # (3, tokens, hidden size)",
        *_pooling_lines(meta),
        "embeddings = F.normalize(pooled, dim=-1)",
        "similarities = embeddings @ embeddings.T  # cosine, (3, 3)",
    ]
    return lines


def transformers_snippet(repo_id: str, meta: dict[str, Any]) -> str:
    """Plain transformers on a merged export (its tokenizer appends EOS itself)."""
    appends = (
        ["# The tokenizer appends EOS to every text"] if meta.get("tokenizer_appends_eos") else []
    )
    return "\n".join(
        [
            "import torch",
            "import torch.nn.functional as F",
            "from transformers import AutoModel, AutoTokenizer",
            *_imports(meta),
            "",
            *appends,
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            f'model = AutoModel.from_pretrained("{repo_id}").eval()',
            "",
            *_encode_lines(meta, meta["model"].get("prompt")),
        ]
    )


def peft_snippet(repo_id: str, meta: dict[str, Any]) -> str:
    """The base model + ``adapter/`` with peft, merged, then the same encoding."""
    base = meta.get("base_model") or meta["model"]["name"]
    # A merged export keeps its EOS-appending tokenizer at the top; an adapter-only one in adapter/.
    subfolder = "" if meta["merged"] else f', subfolder="{ADAPTER_DIR}"'
    return "\n".join(
        [
            "import torch",
            "import torch.nn.functional as F",
            "from peft import PeftModel",
            "from transformers import AutoModel, AutoTokenizer",
            *_imports(meta),
            "",
            f'base = AutoModel.from_pretrained("{base}")',
            f'model = PeftModel.from_pretrained(base, "{repo_id}", subfolder="{ADAPTER_DIR}")',
            "model = model.merge_and_unload().eval()",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{subfolder})',
            "",
            *_encode_lines(meta, meta["model"].get("prompt")),
        ]
    )


def weights_note(meta: dict[str, Any]) -> str | None:
    """Where the trained base weights came from, when they are not the hub original's."""
    model = meta["model"]
    if model["source"] != "gguf_package" or not meta.get("base_model"):
        return None
    return (
        f"The base weights embedft trained on were de-quantised from the GGUF file "
        f"`{model['gguf_file']}` of the Python package `{model['path']}`, not "
        f"`{meta['base_model']}`'s own: on the hub original the adapter gives slightly "
        "different embeddings than the merged model."
    )


def adapter_readme(repo_id: str, meta: dict[str, Any], lora: dict[str, Any]) -> str:
    """``adapter/README.md``: what the adapter is and how to use it with peft."""
    base = meta.get("base_model")
    front = {"library_name": "peft", "tags": ["embedft", "lora", "sentence-similarity"]}
    if base:
        front["base_model"] = base
    targets = lora.get("target_modules") or meta["model"].get("lora_target_modules")
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# LoRA adapter of `{repo_id}`",
        "",
        f"The LoRA weights (peft) that embedft trained on `{base or meta['model']['name']}` to "
        "make it a sentence-embedding model; the model card of the whole export, with its "
        "training settings and scores, is the README one folder up.",
        f"LoRA r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
        f"targets {targets}.",
        "",
    ]
    note = weights_note(meta)
    if note:
        lines += [note, ""]
    lines += [
        "## Usage (peft + transformers)",
        "",
        "```python",
        peft_snippet(repo_id, meta),
        "```",
    ]
    return "\n".join(lines) + "\n"
