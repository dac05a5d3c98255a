"""STS evaluation: the task table (``tasks``: one row per task, its files, hub dataset and pair
count), the file readers (``readers``), loading and MTEB-faithful scoring (``sts``), fast
deduplicated encoding (``encoder``), the STSB-dev validation callback used during training
(``callback``), MTEB's result files (``mteb_results``) and scoring through the mteb package
(``mteb_backend``, ``eval.backend=mteb``). CLI: ``embedft.evaluate``."""
