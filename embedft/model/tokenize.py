"""Tokenise texts for embedding, appending the EOS id embedft relies on.

Tokenizers disagree on whether they add EOS (SmolLM2 adds none; ``add_eos_token`` can be silently
ignored in transformers 5), so embedft appends it itself: each text is tokenised without special
tokens beyond the tokenizer's own BOS handling, truncated to ``max_length - 1`` and then given the
EOS id, so EOS survives truncation. Padding is done here too (dynamic, to the longest row).

A prompt template (``model.prompt``, e.g. ``"{s} is: "``, paper Table 5) wraps every text the
same way in training, evaluation, export and encode, since all of them tokenise here:

    row = tokens(prefix + text)[: max_length - len(tail)] + tail,  tail = tokens(suffix) + [EOS]

The prefix is tokenised together with the text (as sentence-transformers does with its prompts);
the suffix on its own, so that it and EOS survive truncation and are the same ids for every text.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from embedft.config import split_prompt


def prompt_tail(
    tokenizer: PreTrainedTokenizerBase, prompt: str | None, max_length: int
) -> list[int]:
    """The ids ending every row: the prompt's text after ``{s}``, then EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token to append")
    _, suffix = split_prompt(prompt)
    tail = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    tail = [*tail, tokenizer.eos_token_id]
    if len(tail) >= max_length:
        raise ValueError(
            f"model.prompt {prompt!r}: its text after {{s}} and EOS take {len(tail)} tokens, which "
            f"leaves no room for the text in model.max_length={max_length}"
        )
    return tail


def tokenize_with_eos(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int,
    append_eos: bool = True,
    padding_side: str = "right",
    prompt: str | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``input_ids`` and ``attention_mask`` (B, T) with EOS as the last attended token.

    ``prompt``: a ``model.prompt`` template (see the module docstring); None: the texts as they
    are. With ``append_eos=False`` (encoders such as BERT) the tokenizer's own special tokens are
    kept and the (prefixed) text is truncated to ``max_length``; a prompt suffix needs EOS.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    prefix, suffix = split_prompt(prompt)
    if suffix and not append_eos:
        raise ValueError(f"model.prompt {prompt!r} has text after {{s}}: it needs append_eos")
    texts = [prefix + text for text in texts] if prefix else texts
    if append_eos:
        tail = prompt_tail(tokenizer, prompt, max_length)
        # add_special_tokens=True keeps a BOS where the model expects one (Gemma). A tail the
        # tokenizer adds itself (an embedft export's) or its own EOS is stripped, so that
        # exactly one tail ends every row.
        encoded = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        eos = tokenizer.eos_token_id
        rows = []
        for ids in encoded:
            if ids[-len(tail) :] == tail:
                ids = ids[: -len(tail)]
            elif ids and ids[-1] == eos:
                ids = ids[:-1]
            rows.append(ids[: max_length - len(tail)] + tail)
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
