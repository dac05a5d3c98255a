"""embedft: contrastive LoRA fine-tuning of small language models into sentence-embedding models.

Entry points are modules run with ``python -m``: ``embedft.run`` (train), ``embedft.evaluate``
(9 STS tasks), ``embedft.prepare_nli`` (NLI -> triplets), ``embedft.report`` (sweep tables),
``embedft.export``, ``embedft.encode`` and ``embedft.model.sources`` (build the offline models).

Importing the package registers the native MiniCPM-1/2 classes (``model_type="minicpm"``) with
transformers' Auto classes, so that after ``import embedft`` a MiniCPM checkpoint or an embedft
export of one loads anywhere (``AutoModel``, ``SentenceTransformer(dir)``) without remote code.
"""

from embedft.model import minicpm as _minicpm  # noqa: F401  (Auto-class registration)

__version__ = "0.1.0"
