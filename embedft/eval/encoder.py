"""Fast evaluation-time encoding of many texts.

``encode_texts`` embeds a list of texts through the ``Embedder`` interface
(``embedder.tokenize(texts)`` -> ``input_ids``/``attention_mask``; ``embedder.embed(input_ids,
attention_mask)`` -> (B, H) unit vectors, the path training uses too). It is faster than a plain
batched loop because

* each distinct text is encoded once (STS tasks repeat sentences, within and across tasks);
* texts are tokenised in one call and batched longest first, so every batch is nearly free of
  padding (``embed`` cuts a batch's columns to the tokens it attends);
* it runs under ``torch.inference_mode`` with the module in eval mode (restored afterwards).

* each batch goes through ``embed`` with the embedder's own layout, as in training: a decoder's
  texts packed end to end with no padding and attention text by text
  (``embedft.model.packing``, ``embedft.model.attention``); other backbones one padded forward cut
  to the batch's longest text. Packed and padded embeddings agree to float rounding
  (tests/test_packing.py), so scores do not depend on the layout.

A model that is not an embedft ``Embedder`` (a sentence-transformers model, loaded by
``embedft.model.load.load_sentence_transformer``) is encoded with its own ``encode`` (its
tokenizer, pooling and prompts, as MTEB would run it), L2-normalised, ``batch_size`` texts a
batch, each distinct text once.

Embeddings come back in the input order, float32 on the CPU. Results equal per-text encoding as
long as the model is padding-invariant (masked attention + mask-aware pooling and positions, as
``embedft.model.embedder.Embedder`` is).

    >>> emb = encode_texts(embedder, ["a cat", "a dog", "a cat"], batch_size=64)  # doctest: +SKIP
    >>> emb.shape                                                    # doctest: +SKIP
    torch.Size([3, 576])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch
from tqdm.auto import tqdm


class EmbedderLike(Protocol):
    """The part of ``embedft.model.embedder.Embedder`` the evaluator uses."""

    training: bool

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]: ...

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        pack_len: int | None = None,
        sub_batch_rows: int | None = None,
    ) -> torch.Tensor: ...

    def train(self, mode: bool = True) -> EmbedderLike: ...

    @property
    def device(self) -> torch.device: ...


class SentenceEncoder(Protocol):
    """The part of ``sentence_transformers.SentenceTransformer`` the evaluator uses."""

    def encode(
        self,
        inputs: list[str],
        *,
        batch_size: int,
        show_progress_bar: bool,
        convert_to_tensor: bool,
        normalize_embeddings: bool,
    ) -> torch.Tensor: ...


def encode_texts(
    embedder: EmbedderLike | SentenceEncoder,
    texts: list[str],
    batch_size: int = 64,
    show_progress: bool = False,
    desc: str = "encoding",
) -> torch.Tensor:
    """Embed ``texts`` -> (len(texts), H) float32 CPU tensor, in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not texts:
        raise ValueError("encode_texts needs at least one text, got an empty list")
    unique = list(dict.fromkeys(texts))  # first-seen order, each text once
    if hasattr(embedder, "embed"):
        out = _encode_unique(embedder, unique, batch_size, show_progress, desc)
    else:  # a sentence-transformers model: its own encode
        out = embedder.encode(
            unique,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_tensor=True,
            normalize_embeddings=True,
        )
        out = out.float().cpu()  # (U, H)
    index = {text: i for i, text in enumerate(unique)}
    return out[torch.tensor([index[t] for t in texts])]  # (N, H)


def _encode_unique(
    embedder: EmbedderLike, unique: list[str], batch_size: int, show_progress: bool, desc: str
) -> torch.Tensor:
    """(U, H) embeddings of distinct texts, batched longest first through ``embedder.embed``."""
    tokens = embedder.tokenize(unique)
    input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]  # (U, T)
    lengths = attention_mask.sum(dim=1)  # (U,)
    # Longest first: a batch that runs out of memory does so at once, and similar lengths share
    # a batch. The stable sort keeps ties in first-seen order, so results are deterministic.
    order = torch.argsort(-lengths, stable=True)  # (U,)

    out: torch.Tensor | None = None
    device = embedder.device
    with _eval_mode(embedder), torch.inference_mode():
        for start in tqdm(
            range(0, len(unique), batch_size),
            desc=desc,
            unit="batch",
            disable=not show_progress,
        ):
            rows = order[start : start + batch_size]  # (b,)
            ids, mask = input_ids[rows].to(device), attention_mask[rows].to(device)  # (b, T)
            emb = embedder.embed(ids, mask, sub_batch_rows=0).float().cpu()  # (b, H)
            if out is None:
                out = torch.empty(len(unique), emb.shape[1], dtype=torch.float32)
            out[rows] = emb
    assert out is not None
    return out


@contextlib.contextmanager
def _eval_mode(module: EmbedderLike) -> Iterator[None]:
    was_training = module.training
    module.train(False)
    try:
        yield
    finally:
        module.train(was_training)
