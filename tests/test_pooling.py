"""Pooling and EOS handling: last attended token, left == right padding, mean pooling."""

import torch

from embedft.model.pooling import pool_last_token, pool_mean

TEXTS = ["a man is playing guitar", "dog", "two people sitting on a bench in the park"]


def test_last_token_reads_last_attended_position():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_last_token(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert pool_last_token(hidden, left).flatten().tolist() == [3.0, 7.0]


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool_mean(hidden, mask).item() == 2.0


def test_left_and_right_padding_give_equal_embeddings(embedder):
    embedder.eval()
    with torch.no_grad():
        right = embedder(**embedder.tokenize(TEXTS, padding_side="right"))
        left = embedder(**embedder.tokenize(TEXTS, padding_side="left"))
        alone = torch.cat([embedder(**embedder.tokenize([t])) for t in TEXTS])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, right, atol=1e-5, rtol=1e-5)
    assert torch.allclose(right.norm(dim=-1), torch.ones(len(TEXTS)))
