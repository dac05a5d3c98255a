"""Where embedft finds its configs, the project root and the offline data directory.

embedft runs either from a checkout (``pip install -e .``: ``<checkout>/conf`` lies beside the
package) or installed from its wheel, which carries the same files as ``embedft/conf``
(``setup.py`` copies the top-level ``conf/`` in when it builds: that stays the one source).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def installed() -> bool:
    """Whether embedft runs from a built wheel (its configs inside the package)."""
    return (_PACKAGE / "conf").is_dir()


def repo_root() -> Path:
    """The project root: the checkout that holds the package, or, for an installed wheel, the
    current directory. Relative data paths (``data.path``, ``make data``'s output) start here."""
    return Path.cwd() if installed() else _PACKAGE.parent


def data_dir() -> Path:
    """The offline STS/NLI data: ``$EMBEDFT_DATA_DIR``, else ``<project root>/../shared/data``."""
    env = os.environ.get("EMBEDFT_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (repo_root().parent / "shared" / "data").resolve()


def conf_dir() -> Path:
    """Hydra's config directory: ``embedft/conf`` in a wheel, ``<checkout>/conf`` otherwise."""
    return _PACKAGE / "conf" if installed() else _PACKAGE.parent / "conf"
