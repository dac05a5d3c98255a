"""Training losses, one per file, selected by name: ``python -m embedft.run loss=symmetric_infonce``.

Every module in this package is a loss named after its file (``infonce.py`` is ``loss=infonce``)
that registers its class with ``@register_loss("<file name>")``; ``conf/loss/<name>.yaml`` holds
its settings and ``name: <name>``. Adding a loss is that one file plus that one yaml:

- The class is a ``torch.nn.Module`` with the call signature of ``Loss`` below and a ``card``
  property (one line for the model card: what the loss is and its settings).
- Its constructor takes, by keyword, the ``loss.*`` keys it uses (``temperature``, ``hard_neg``,
  ``gather_across_ranks``, ``mask_duplicate_positives``); ``build_loss`` passes exactly those.
  A loss that needs a setting no loss has yet adds it to ``LossConfig`` (embedft/config.py).
- Document it as sentence-transformers documents its losses: in plain words, the formula, the
  arguments, the expected inputs, a reference and a runnable example; keep the pure function on
  embeddings apart from ``forward`` so the maths can be checked on hand-made tensors.

This module imports no loss (nor torch) until one is built, so that validating ``loss.name``
(``LossConfig``) stays cheap; a loss registered from elsewhere (a test, a user script) with
``register_loss`` is selectable by ``loss.name`` too.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import torch

    from embedft.config import LossConfig

LOSSES: dict[str, type] = {}  # name -> loss class, filled by @register_loss when a loss is imported
DEFAULT_LOSS = "infonce"  # LossConfig's default; runs from before losses had names used it

_T = TypeVar("_T", bound=type)


class Loss(Protocol):
    """What the training step calls, whatever the loss.

    ``anchor``, ``positive`` and ``negative`` are this process's embeddings, (B, H) each, row i of
    each from triplet i; ``negative`` is None when the data has no hard negatives.
    ``positive_keys``/``negative_keys`` (B,) int64 identify the texts (equal key = equal text),
    for losses that leave duplicates out. Returns the scalar loss of this process's rows.
    """

    def __call__(
        self,
        anchor: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor | None = None,
        positive_keys: torch.Tensor | None = None,
        negative_keys: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    @property
    def card(self) -> str:
        """One line for the model card: the loss and its settings."""
        ...


def register_loss(name: str) -> Callable[[_T], _T]:
    """Class decorator: make the loss selectable as ``loss.name=<name>``."""

    def register(cls: _T) -> _T:
        owner = f"{__name__}.{name}" if name in _modules() else None  # the file of that name
        before = LOSSES.get(name, cls)
        reloaded = (before.__module__, before.__qualname__) == (cls.__module__, cls.__qualname__)
        if (owner and cls.__module__ != owner) or not reloaded:
            raise ValueError(f"loss name {name!r} is taken by {owner or before.__qualname__}")
        LOSSES[name] = cls
        return cls

    return register


def loss_names() -> list[str]:
    """Every selectable ``loss.name``: this package's modules and losses registered elsewhere."""
    return sorted(_modules() | set(LOSSES))


def loss_class(name: str) -> type:
    """The class registered as ``name``, importing ``embedft/losses/<name>.py`` if needed."""
    if name not in LOSSES and name in loss_names():
        importlib.import_module(f"{__name__}.{name}")
    if name not in LOSSES:
        raise KeyError(f"no loss named {name!r}; known: {loss_names()}")
    return LOSSES[name]


def build_loss(cfg: LossConfig) -> Loss:
    """The loss ``cfg.name`` selects, given the ``loss.*`` settings its constructor takes."""
    return _build(cfg.name, {f.name: getattr(cfg, f.name) for f in fields(cfg)})


def loss_card(settings: Mapping[str, Any]) -> str:
    """The model card's line for the loss of a run's resolved ``loss`` config group (a dict)."""
    name = settings.get("name") or DEFAULT_LOSS
    if name not in loss_names():  # registered by code this process has not imported
        shown = ", ".join(f"{k}={v}" for k, v in settings.items() if k != "name")
        return f"{name}, {shown}"
    return _build(name, settings).card


def _modules() -> set[str]:
    return {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def _build(name: str, settings: Mapping[str, Any]) -> Loss:
    cls = loss_class(name)
    takes = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in settings.items() if k in takes and k != "name"})
