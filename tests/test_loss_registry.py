"""Choosing the loss by name (embedft/losses/__init__.py): config, registry, build, model card."""

import doctest
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from embedft.config import ConfigError, RunConfig, to_object
from embedft.losses import (
    LOSSES,
    Loss,
    build_loss,
    loss_card,
    loss_class,
    loss_names,
    register_loss,
)
from embedft.losses.infonce import InfoNCELoss
from embedft.paths import conf_dir, repo_root

PACKAGE_LOSSES = ["infonce", "symmetric_infonce"]


def _cfg(*overrides) -> RunConfig:
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose(config_name="run", overrides=list(overrides), return_hydra_config=False)
    dcfg.paths.output_dir = "/tmp/unused"  # ${hydra:...} needs a running app
    return to_object(dcfg, RunConfig)


def _triplets(n: int = 4):
    a, p, neg = torch.randn(3, n, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    return a.requires_grad_(), p.requires_grad_(), neg.requires_grad_()


@pytest.fixture
def registry_restored():
    before = dict(LOSSES)
    yield
    LOSSES.clear()
    LOSSES.update(before)


def test_each_loss_is_one_file_and_one_yaml_of_the_same_name():
    # Given the loss files of embedft/losses/ and the options of conf/loss/
    yamls = sorted(p.stem for p in Path(conf_dir(), "loss").glob("*.yaml"))
    # Then they name the same losses
    assert loss_names() == yamls == PACKAGE_LOSSES


@pytest.mark.parametrize("name", PACKAGE_LOSSES)
def test_every_loss_is_selected_by_its_group_option_and_keeps_the_contract(name):
    # Given loss=<name> on the command line; When the config is built and the loss made from it
    cfg = _cfg(f"loss={name}", "loss.mask_duplicate_positives=true")
    loss = build_loss(cfg.loss)
    # Then it is the class in embedft/losses/<name>.py, with the Loss call signature and a card
    assert cfg.loss.name == name and type(loss) is loss_class(name)
    assert type(loss).__module__ == f"embedft.losses.{name}"
    contract = list(inspect.signature(Loss.__call__).parameters)[1:]  # without self
    assert list(inspect.signature(loss.forward).parameters) == contract
    assert isinstance(loss.card, str) and loss.card
    a, p, n = _triplets()
    value = loss(a, p, n, positive_keys=torch.arange(4), negative_keys=torch.arange(4, 8))
    assert value.shape == () and value.requires_grad


@pytest.mark.parametrize("name", PACKAGE_LOSSES)
def test_the_docstring_example_runs(name):
    result = doctest.testmod(importlib.import_module(f"embedft.losses.{name}"))
    assert result.attempted > 0 and result.failed == 0


def test_default_is_the_papers_infonce_with_the_same_numbers():
    # Given the default config (no loss override)
    loss = build_loss(_cfg().loss)
    # Then it is InfoNCE Eq. 1 at tau 0.05 and computes exactly what InfoNCELoss computes
    assert isinstance(loss, InfoNCELoss)
    assert (loss.temperature, loss.hard_neg, loss.gather_across_ranks) == (0.05, True, True)
    assert not loss.mask_duplicate_positives
    a, p, n = _triplets(6)
    assert torch.equal(loss(a, p, n), InfoNCELoss(0.05, True)(a, p, n))


def test_settings_reach_the_selected_loss():
    cfg = _cfg("loss=symmetric_infonce", "loss.temperature=0.1", "loss.hard_neg=false")
    loss = build_loss(cfg.loss)
    assert (type(loss).__name__, loss.temperature, loss.hard_neg) == (
        "SymmetricInfoNCELoss",
        0.1,
        False,
    )


def test_unknown_name_is_a_config_error_listing_the_known_losses():
    with pytest.raises(ConfigError) as err:
        _cfg("loss.name=foo")
    assert str(err.value) == "loss.name must be one of ['infonce', 'symmetric_infonce'], got 'foo'"


def test_unknown_name_fails_the_run_before_the_model_loads(tmp_path):
    # Given the paper's default model, which cannot load offline; When the loss name is unknown
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled")
    result = subprocess.run(
        [sys.executable, "-m", "embedft.run", "loss.name=foo", "logger=none"]
        + [f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    # Then the run fails on the loss name, not on loading the model or the data
    assert result.returncode != 0
    assert "loss.name must be one of ['infonce', 'symmetric_infonce'], got 'foo'" in result.stderr


def test_a_loss_registered_in_a_test_file_is_selectable_by_name(registry_restored):
    # Given a loss defined here (it takes one of the loss.* keys, temperature)
    @register_loss("cosine_pull")
    class CosinePullLoss(nn.Module):
        """Mean of 1 - cos(anchor, positive) / temperature: pulls pairs together, no negatives."""

        def __init__(self, temperature: float = 1.0) -> None:
            super().__init__()
            self.temperature = temperature

        @property
        def card(self) -> str:
            return f"cosine pull, temperature={self.temperature}"

        def forward(self, anchor, positive, negative=None, positive_keys=None, negative_keys=None):
            return (1 - F.cosine_similarity(anchor, positive)).mean() / self.temperature

    # When it is chosen by name on the command line
    cfg = _cfg("loss.name=cosine_pull", "loss.temperature=0.5")
    loss = build_loss(cfg.loss)
    # Then it is built with the settings it takes, trains, and describes itself on the card
    assert isinstance(loss, CosinePullLoss) and loss.temperature == 0.5
    a = torch.randn(3, 8)
    assert loss(a, a * 2).item() == pytest.approx(0.0, abs=1e-6)
    assert "cosine_pull" in loss_names()
    assert loss_card({"name": "cosine_pull", "temperature": 0.5}) == "cosine pull, temperature=0.5"


def test_a_name_that_is_taken_cannot_be_registered_again(registry_restored):
    class Other(nn.Module):
        pass

    # A file's name belongs to that file, imported or not; a registered name to its class
    for taken in ("infonce", "symmetric_infonce"):
        with pytest.raises(ValueError, match=f"loss name '{taken}' is taken by embedft.losses"):
            register_loss(taken)(Other)

    class Another(nn.Module):
        pass

    register_loss("other")(Other)
    with pytest.raises(ValueError, match="loss name 'other' is taken by .*Other"):
        register_loss("other")(Another)


def test_model_card_line_describes_the_loss_that_trained_the_model():
    settings = {"temperature": 0.05, "hard_neg": True, "grad_cache_chunk_size": 0}
    # A run from before losses had names trained InfoNCE: its card line is unchanged
    assert loss_card(settings) == "InfoNCE, temperature=0.05, hard negatives=True"
    symmetric = loss_card(dict(settings, name="symmetric_infonce", hard_neg=False))
    assert symmetric == (
        "symmetric InfoNCE (anchor -> positive and positive -> anchor), "
        "temperature=0.05, hard negatives=False"
    )
    # A loss this installation does not know is still named, with its settings
    assert loss_card({"name": "elsewhere", "temperature": 0.1}) == "elsewhere, temperature=0.1"
