"""embedft: contrastive LoRA fine-tuning of small language models into sentence-embedding models.

Entry points are modules run with ``python -m``: ``embedft.run`` (train), ``embedft.evaluate``
(9 STS tasks), ``embedft.prepare_nli`` (NLI -> triplets), ``embedft.report`` (sweep tables),
``embedft.export`` and ``embedft.encode``.
"""

__version__ = "0.1.0"
