"""Where embedft finds its repository, the offline data directory and its model cache."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout that holds the ``embedft`` package (and ``conf/``)."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The offline STS/NLI data: ``$EMBEDFT_DATA_DIR``, else ``<repo>/../shared/data``."""
    env = os.environ.get("EMBEDFT_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (repo_root().parent / "shared" / "data").resolve()


def conf_dir() -> Path:
    """Hydra's config directory (``<repo>/conf``)."""
    return repo_root() / "conf"
