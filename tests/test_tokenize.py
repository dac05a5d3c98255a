"""tokenize_with_eos: EOS appended after truncation, on either padding side."""

import torch

from embedft.model.tokenize import tokenize_with_eos

TEXTS = ["a man is playing guitar", "dog", "two people sitting on a bench in the park"]


def test_eos_is_last_attended_token_left_and_right(tokenizer):
    for side in ("left", "right"):
        batch = tokenize_with_eos(tokenizer, TEXTS, max_length=6, padding_side=side)
        last = (batch["attention_mask"] * torch.arange(batch["input_ids"].shape[1])).argmax(1)
        assert batch["input_ids"][torch.arange(len(TEXTS)), last].tolist() == [2, 2, 2]
        # truncation keeps max_length - 1 text tokens, then EOS
        assert batch["attention_mask"].sum(1).tolist() == [6, 2, 6]
