"""STS evaluation: the paper's 9 tasks (``sts``), fast deduplicated encoding (``encoder``) and the
STSB-dev validation callback used during training (``callback``). CLI: ``embedft.evaluate``."""
