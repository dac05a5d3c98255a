"""embedft.trainer: the LR schedule's length follows whichever of max_steps / max_epochs ends first."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from embedft.config import ConfigError, TrainerConfig
from embedft.trainer import total_steps


def cfg(**trainer) -> SimpleNamespace:
    return SimpleNamespace(trainer=TrainerConfig(**trainer))


def test_max_steps_when_the_epochs_last_longer() -> None:
    # 2 epochs of 139 batches = 278 steps > 180: the run stops at max_steps
    assert total_steps(cfg(max_steps=180, max_epochs=2), batches_per_epoch=139) == 180


def test_epoch_limit_first_plans_the_schedule_for_it(caplog) -> None:
    # 8,903 triplets / 64 = 139 batches: one epoch ends before 180 steps; Lightning stops there
    with caplog.at_level(logging.WARNING, logger="embedft.trainer"):
        assert total_steps(cfg(max_steps=180, max_epochs=1), batches_per_epoch=139) == 139
    assert "trainer.max_epochs=1" in caplog.text and "trainer.max_steps=180" in caplog.text


def test_epochs_with_accumulation() -> None:
    steps = total_steps(cfg(max_steps=-1, max_epochs=3, accumulate_grad_batches=2), 10)
    assert steps == 15


def test_unknown_length_keeps_max_steps_or_refuses() -> None:
    assert total_steps(cfg(max_steps=50, max_epochs=1), batches_per_epoch=None) == 50
    with pytest.raises(ConfigError, match="data.num_examples or trainer.max_steps"):
        total_steps(cfg(max_steps=-1, max_epochs=1), batches_per_epoch=None)
