"""Turn a backbone's last hidden states into one vector per text.

``pool_last_token`` reads the hidden state at the last attended position of each row, found from
the attention mask, so left- and right-padded batches give the same embedding. Because embedft
appends EOS to every text (see ``embedft.model.tokenize``), that position holds the EOS token,
which is the paper's embedding. ``pool_mean`` averages the attended positions (encoders such as
all-MiniLM-L6-v2).
"""

from __future__ import annotations

import torch

POOLING_MODES = ("last", "mean")


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last position whose mask is 1, for each row.

    Works for left and right padding alike: the index is the largest attended position.
    """
    seq_len = attention_mask.shape[1]
    positions = torch.arange(seq_len, device=attention_mask.device)  # (T,)
    last = (attention_mask.long() * positions).argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)


def pool_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over attended positions, summed in float32 (bf16 backbones)."""
    mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
    return (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, H)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "last":
        return pool_last_token(hidden, attention_mask)
    if mode == "mean":
        return pool_mean(hidden, attention_mask)
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
