"""Tokenise texts for embedding, appending the EOS id embedft relies on.

Tokenizers disagree on whether they add EOS (SmolLM2 adds none; ``add_eos_token`` can be silently
ignored in transformers 5), so embedft appends it itself: each text is tokenised without special
tokens beyond the tokenizer's own BOS handling, truncated to ``max_length - 1`` and then given the
EOS id, so EOS survives truncation. Padding is done here too (dynamic, to the longest row).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase


def tokenize_with_eos(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    append_eos: bool = True,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Return ``input_ids`` and ``attention_mask`` (B, T) with EOS as the last attended token.

    With ``append_eos=False`` (encoders such as BERT) the tokenizer's own special tokens are kept
    and the text is truncated to ``max_length``.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if append_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token to append")
        # add_special_tokens=True keeps a BOS where the model expects one (Gemma); an EOS the
        # tokenizer may add itself is stripped so that exactly one EOS ends every row.
        encoded = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        eos = tokenizer.eos_token_id
        rows = []
        for ids in encoded:
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            rows.append(ids[: max_length - 1] + [eos])
    else:
        rows = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)[
            "input_ids"
        ]
    return pad_rows(rows, tokenizer.pad_token_id, padding_side)


def pad_rows(
    rows: list[list[int]], pad_id: int | None, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad token-id lists into ``input_ids``/``attention_mask`` tensors."""
    if pad_id is None:
        raise ValueError("tokenizer has no pad token; embedft sets one when it loads a model")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        n = len(ids)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[i, cols] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, cols] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
