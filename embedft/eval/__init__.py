"""STS evaluation: the task table (``tasks``: one row per task, its files, hub dataset and pair
count), the file readers (``readers``), loading and MTEB-faithful scoring (``sts``), fast
deduplicated encoding (``encoder``) and the STSB-dev validation callback used during training
(``callback``). CLI: ``embedft.evaluate``."""
