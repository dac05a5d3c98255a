"""Optional features and the pip extra each needs (``pip install 'embedft[wandb]'``).

A plain ``pip install embedft`` holds what every run needs; W&B logging, GGUF models, report
plots, the submitit launchers and MTEB come with an extra declared in ``pyproject.toml``. A
feature whose extra is missing fails before anything expensive starts, naming the extra and,
where there is one, the setting that needs none:

    logger=wandb needs the wandb extra: pip install 'embedft[wandb]' (or logger=csv)

``EXTRAS`` is the one table of which importable modules each extra provides.
"""

from __future__ import annotations

import importlib.util
import sys

from embedft.config import ConfigError

# extra -> the modules it installs (each must import for the feature to work)
EXTRAS = {
    "wandb": ("wandb",),
    "gguf": ("gguf",),
    "plots": ("matplotlib",),
    "slurm": ("submitit", "hydra_plugins.hydra_submitit_launcher"),
    "mteb": ("mteb",),
}
# conf/hydra/launcher presets (and the plugin's own names) that build on hydra-submitit-launcher
SUBMITIT_LAUNCHERS = ("gpus", "slurm", "submitit_local", "submitit_slurm")


class MissingExtraError(ConfigError):
    """A setting needs an optional extra that is not installed; the message names it."""


def importable(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it (wandb takes seconds)."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: import blocked (tests do this)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module without a spec
        return False


def require(extra: str, feature: str, instead: str | None = None) -> None:
    """Raise ``MissingExtraError`` unless every module of ``extra`` is importable.

    ``feature`` is what the user asked for (``logger=wandb``); ``instead``, a setting that works
    without the extra (``logger=csv``).
    """
    if all(importable(module) for module in EXTRAS[extra]):
        return
    alternative = f" (or {instead})" if instead else ""
    raise MissingExtraError(
        f"{feature} needs the {extra} extra: pip install 'embedft[{extra}]'{alternative}"
    )


def launcher_error(overrides: list[str]) -> str | None:
    """The error for a ``hydra/launcher=`` override whose plugin is not installed, or None.

    Checked before Hydra composes: Hydra would only say that ``hydra/launcher/submitit_local``
    cannot be found.
    """
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "hydra/launcher" and value in SUBMITIT_LAUNCHERS:
            try:
                require(
                    "slurm",
                    f"hydra/launcher={value}",
                    instead="no hydra/launcher: the jobs run one after another",
                )
            except MissingExtraError as err:
                return str(err)
    return None
