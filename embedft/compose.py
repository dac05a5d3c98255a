"""Hydra composition for the schemas of ``embedft.config``: from a composed config to objects.

- ``to_object`` resolves a composed ``DictConfig`` and instantiates its dataclasses, running
  every ``__post_init__`` check and raising ``ConfigError`` with the check's own message (OmegaConf
  would wrap it); with a ``schema`` it first refuses keys the schema lacks (``unknown_keys``:
  ``+typo.key=1`` passes Hydra's own check).
- ``MOVED_KEYS``: keys that moved to another group fail saying where they went, on the command
  line (``moved_key_error``, before Hydra composes) and in a config file (``to_object``).
- The resolvers every root config uses: ``${uid:}``, a per-process id in run directories
  (conf/run.yaml), and ``${embedft_help:}``, each command's ``--help`` (embedft.cli).

``embedft.config`` imports this module (and re-exports its names): importing either registers
the resolvers. This module imports ``embedft.config`` only inside ``to_object``, for
``ConfigError``, so that neither import waits on the other.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that moved to another group: the old spelling fails saying where the key went.
MOVED_KEYS = {
    "trainer.pack_len": "embed.pack_len",
    "loss.grad_cache_chunk_size": "embed.grad_cache_chunk_tokens",
    "embed.grad_cache_chunk_size": "embed.grad_cache_chunk_tokens",
}
# New keys whose unit differs from the old one's: the old value is no answer, this note is.
_NEW_UNIT = {
    "embed.grad_cache_chunk_tokens": "chunks are sized in tokens now, not texts (NLI texts "
    "average ~14 tokens: 64 texts ~ embed.grad_cache_chunk_tokens=900)",
}


def _moved(key: str, value: str | None = None) -> str:
    new = MOVED_KEYS[key]
    if new in _NEW_UNIT:
        return f"{key} became {new}: {_NEW_UNIT[new]}"
    return f"{key} moved to {new}" + (f": use {new}={value}" if value is not None else "")


def moved_key_error(overrides: list[str]) -> str | None:
    """The error for a command-line override of a moved key (naming its new place), or None.

    Checked before Hydra composes: Hydra would only say that the key is not in the schema.
    """
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in MOVED_KEYS:
            return _moved(key, value)
    return None


def unknown_keys(cfg: DictConfig, schema: type) -> list[str]:
    """Keys of ``cfg`` that ``schema`` does not define (``+typo.key=1`` passes Hydra's check)."""
    unknown: list[str] = []

    def walk(node: DictConfig, cls: type, prefix: str) -> None:
        known = {f.name: f for f in fields(cls)}
        for key in node.keys():
            if key == "hydra" and not prefix:
                continue
            if key not in known:
                unknown.append(f"{prefix}{key}")
                continue
            make = known[key].default_factory  # nested groups are dataclass default factories
            child = node._get_node(key)  # unresolved: interpolations may need Hydra
            if isinstance(child, DictConfig) and callable(make) and is_dataclass(make()):
                walk(child, type(make()), f"{prefix}{key}.")

    walk(cfg, schema, "")
    return unknown


def to_object(cfg: DictConfig, schema: type | None = None) -> Any:
    """Resolve and instantiate the dataclasses, running every ``__post_init__`` check.

    With ``schema``, keys it does not define are an error too (not silently ignored).
    """
    from embedft.config import ConfigError  # here, not at the top: embedft.config imports us

    if schema is not None:
        extra = unknown_keys(cfg, schema)
        moved = [_moved(k) for k in extra if k in MOVED_KEYS]
        if moved:
            raise ConfigError(f"unknown config key(s) {extra}: {'; '.join(moved)}")
        if extra:
            raise ConfigError(
                f"unknown config key(s) {extra}: not part of {schema.__name__}; "
                "check the spelling (python -m embedft.run --cfg job lists every key)"
            )
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as err:  # OmegaConf wraps errors raised inside __post_init__
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(str(err)) from err


def _process_uid() -> str:
    """``${uid:}``: this process's short random id, for run dirs (see conf/run.yaml)."""
    return _UID


def _help_text(*, _root_: DictConfig) -> str:
    """``${embedft_help:}``: every entry point's ``--help`` (conf/hydra/help/embedft.yaml)."""
    from embedft.cli import help_text  # embedft.cli builds on the schemas

    return help_text(_root_)


_UID = f"{os.getpid() % 0x10000:04x}{secrets.token_hex(2)}"
if not OmegaConf.has_resolver("uid"):
    OmegaConf.register_new_resolver("uid", _process_uid, use_cache=True)
if not OmegaConf.has_resolver("embedft_help"):
    OmegaConf.register_new_resolver("embedft_help", _help_text)
