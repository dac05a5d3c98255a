"""Third-party notices an embedft user can do nothing about, hidden where embedft meets them.

``third_party_notices_hidden()`` wraps the calls that trigger them (LoRA wrapping, building and
fitting the Trainer). Each notice is matched by its own text, so every other warning still shows:

- peft 0.21.2 (the newest release) reads transformers 5's deprecated ``is_gradient_checkpointing``:
  a FutureWarning each time a model gets or loads LoRA adapters;
- Lightning 2.6 builds torch 2.13's deprecated ``LeafSpec`` in its data loaders: a FutureWarning
  at fit;
- Lightning 2.6 logs an advertisement for its ``litlogger`` package whenever a Trainer is built
  without a LitLogger.

wandb's "The anonymous setting has no effect" is avoided at its cause (``embedft.tracking``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (category, regex matched at the start of the message)
HIDDEN_WARNINGS = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)
# (logger, start of the message)
HIDDEN_LOG_RECORDS = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
)


class _DropHidden(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(
            record.name == name and message.startswith(start) for name, start in HIDDEN_LOG_RECORDS
        )


@contextmanager
def third_party_notices_hidden() -> Iterator[None]:
    """Within the block, the notices listed above are not shown; everything else is."""
    drop = _DropHidden()
    loggers = [logging.getLogger(name) for name in {name for name, _ in HIDDEN_LOG_RECORDS}]
    with warnings.catch_warnings():
        for category, message in HIDDEN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger in loggers:
            logger.addFilter(drop)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(drop)
