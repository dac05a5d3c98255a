"""Backbones, tokenisation, pooling and the Embedder.

Importing this package registers the native MiniCPM-1/2 classes (``model_type="minicpm"``) with
transformers' Auto classes, so ``AutoModel.from_pretrained`` on a MiniCPM-2B directory needs no
remote code.
"""

from embedft.model import minicpm  # noqa: F401  (imported for its Auto-class registration)
