"""``embedft.card_usage``: the usage code in an export's cards, run as written (the repo id
replaced by the export's directory), gives embedft's own vectors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from embedft.card_usage import SENTENCES
from embedft.config import ModelConfig
from embedft.export import export_checkpoint
from embedft.model.load import load_embedder_from_checkpoint
from embedft.model.sources import resolve_model_dir
from tests.test_export import make_run


def code_after(card: str, heading: str) -> str:
    """The first python block after ``heading`` in ``card``."""
    section = card.split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def run_snippet(code: str) -> dict:
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<model card>", "exec"), namespace)
    return namespace


RUNS = {
    "eos": ("tiny_llama", ()),
    "bos+prompt": ("tiny_gemma", ('model.prompt="q: {s} means"',)),
    "mean": ("tiny_llama", ("model.pooling=mean", "model.append_eos=false")),
    "minicpm": ("tiny_minicpm", ()),  # loads in transformers after the card's `import embedft`
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def merged(request, tmp_path_factory):
    """(checkpoint, merged export) of a tiny run; the export dir is named like a repo."""
    model, overrides = RUNS[request.param]
    root = tmp_path_factory.mktemp("usage")
    ckpt = make_run(root / "run", model=model, overrides=overrides)
    return ckpt, export_checkpoint(ckpt, root / "my-embedder")


def test_the_cards_transformers_code_gives_embedfts_vectors(merged):
    # Given the card of a merged export, whose code loads "my-embedder"
    ckpt, out = merged
    code = code_after((out / "README.md").read_text(), "### Direct Usage (Transformers)")
    assert 'AutoModel.from_pretrained("my-embedder")' in code
    meta = json.loads((out / "embedft.json").read_text())
    assert ("import embedft  # registers MiniCPM" in code) == (meta["model_type"] == "minicpm")
    # When that code runs on the export's directory
    found = run_snippet(code.replace('"my-embedder"', f'"{out}"'))
    # Then its embeddings are embedft's, for the card's own sentences
    expected = load_embedder_from_checkpoint(ckpt).encode(found["sentences"])
    assert found["sentences"] == SENTENCES
    torch.testing.assert_close(found["embeddings"], expected, atol=1e-5, rtol=1e-4)


def test_the_cards_sentence_transformers_code_gives_embedfts_vectors(merged):
    ckpt, out = merged
    code = code_after((out / "README.md").read_text(), "### Direct Usage (Sentence Transformers)")
    found = run_snippet(code.replace('"my-embedder"', f'"{out}"'))
    expected = load_embedder_from_checkpoint(ckpt).encode(SENTENCES)
    torch.testing.assert_close(torch.as_tensor(found["embeddings"]), expected, atol=1e-5, rtol=1e-4)


def test_the_adapter_readmes_peft_code_gives_embedfts_vectors(tmp_path):
    # Given an adapter-only export of a run with a prompt (its suffix is the tokenizer's job)
    ckpt = make_run(tmp_path / "run", overrides=('model.prompt="{s} is: "',))
    out = export_checkpoint(ckpt, tmp_path / "my-adapter", merge=False)
    readme = (out / "adapter" / "README.md").read_text()
    assert "More Information Needed" not in readme  # not peft's empty template
    code = code_after(readme, "## Usage (peft + transformers)")
    # When its code runs with the tiny base model's directory for the base model's name (a
    # tiny model has no hub id) and the export's directory for the repo
    base = str(Path(resolve_model_dir(ModelConfig(name="t", source="tiny", path="llama"))))
    assert 'AutoModel.from_pretrained("tiny_llama")' in code
    code = code.replace('"tiny_llama"', f'"{base}"').replace('"my-adapter"', f'"{out}"')
    found = run_snippet(code)
    # Then the base model + adapter embed as the checkpoint does
    expected = load_embedder_from_checkpoint(ckpt).encode(SENTENCES)
    torch.testing.assert_close(found["embeddings"], expected, atol=1e-5, rtol=1e-4)
