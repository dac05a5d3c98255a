"""Third-party notices are hidden where embedft triggers them, and nothing else is."""

from __future__ import annotations

import logging
import warnings

import lightning as L

from embedft.config import LoraConfig, ModelConfig
from embedft.model.embedder import apply_lora
from embedft.quiet import third_party_notices_hidden
from tests.conftest import make_tiny_llama

TIP = "💡 Tip: For seamless cloud logging"


def future_warnings(call) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]


def test_only_the_listed_warnings_are_hidden():
    def both():
        with third_party_notices_hidden():
            warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)

    assert future_warnings(both) == ["something else is deprecated"]


def test_lora_wrapping_hides_peft_s_deprecated_property_read():
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    # Given peft itself warns when it wraps a transformers 5 model (the notice is real here)
    plain = PeftLoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    raw = future_warnings(lambda: get_peft_model(make_tiny_llama(), plain))
    assert any("is_gradient_checkpointing" in m for m in raw)
    # When embedft wraps one; Then that warning is not shown
    model_cfg = ModelConfig(name="tiny", source="tiny", path="llama")
    wrapped = future_warnings(lambda: apply_lora(make_tiny_llama(), model_cfg, LoraConfig(r=4)))
    assert not any("is_gradient_checkpointing" in m for m in wrapped)


def test_lightning_s_leafspec_warning_is_hidden():
    from lightning.pytorch.utilities._pytree import _tree_flatten

    # Given Lightning's data-loader flattening warns under torch 2.13 (the notice is real here)
    assert any("LeafSpec" in m for m in future_warnings(lambda: _tree_flatten(1)))

    def hidden():
        with third_party_notices_hidden():
            _tree_flatten(1)

    assert future_warnings(hidden) == []


def test_the_litlogger_tip_is_dropped_and_other_trainer_info_kept():
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    log.addHandler(handler)
    try:

        def trainer():
            return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)

        # Given Lightning advertises litlogger when a Trainer is built (the notice is real here)
        trainer()
        assert any(m.startswith(TIP) for m in records)
        records.clear()
        # When built inside the block; Then the tip is gone, "GPU available" still logged
        with third_party_notices_hidden():
            trainer()
        assert not any(m.startswith(TIP) for m in records)
        assert any(m.startswith("GPU available") for m in records)
    finally:
        log.removeHandler(handler)
    assert not log.filters  # the block removed its filter
