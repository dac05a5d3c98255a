"""``model.prompt``: one template, applied alike in training, evaluation, export and encode.

The paper's Table 5 wraps every text in a template (``"{s} is: "``: 84.32 vs 83.84 without).
embedft tokenises ``prefix + text``, cuts it so that the suffix and EOS always fit, then appends
the suffix's ids and EOS (``embedft.model.tokenize``). These tests check the ids by hand on the
tiny byte-level tokenizer and that one text gets the same vector through the training collator,
``Embedder.encode``, the STS encoder, a sentence-transformers load of the export and
``python -m embedft.encode``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from embedft.config import ModelConfig, OptimConfig
from embedft.data.datamodule import TripletCollator
from embedft.encode import main as encode_main
from embedft.eval.encoder import encode_texts
from embedft.export import export_checkpoint
from embedft.losses.infonce import InfoNCELoss
from embedft.model.load import load_embedder, load_embedder_from_checkpoint
from embedft.model.sources import load_tokenizer
from embedft.model.tokenize import tokenize_with_eos
from embedft.module import EmbeddingModule
from tests.conftest import run_cli
from tests.test_export import make_run

# Tiny byte-level tokenizer: <pad>=0 <bos>=1 <eos>=2; a byte's id is 4 + its rank in the sorted
# byte-level alphabet: printable ASCII c -> ord(c) - 29 (a=68 b=69 i=76 q=84 s=86 :=29), and the
# space (shown as "Ġ", U+0120) 224. tiny_gemma prepends <bos>; tiny_llama adds nothing.
BOS, EOS, SPACE = 1, 2, 224
TEXTS = [
    "a man is playing guitar",
    "a dog",
    "a very long sentence that runs on and on well past the thirty-two token limit",
]


@pytest.fixture(scope="module")
def gemma_tokenizer():
    return load_tokenizer(ModelConfig(name="tiny_gemma", source="tiny", path="gemma"))


def test_prompt_wraps_the_text_after_bos_and_before_eos(gemma_tokenizer):
    # Given the template "q {s} is" (prefix "q ", suffix " is") and the text "ab"
    # When it is tokenised with room to spare, and with max_length 7
    full = tokenize_with_eos(gemma_tokenizer, ["ab"], 16, prompt="q {s} is")
    cut = tokenize_with_eos(gemma_tokenizer, ["ab"], 7, prompt="q {s} is")
    plain = tokenize_with_eos(gemma_tokenizer, ["ab"], 16)
    # Then BOS comes first, then "q ab is", then EOS
    q, a, b, i, s = 84, 68, 69, 76, 86
    assert full["input_ids"].tolist() == [[BOS, q, SPACE, a, b, SPACE, i, s, EOS]]
    # And truncation cuts the text, never the suffix or EOS
    assert cut["input_ids"].tolist() == [[BOS, q, SPACE, SPACE, i, s, EOS]]
    # And without a prompt nothing changes
    assert plain["input_ids"].tolist() == [[BOS, a, b, EOS]]


def test_a_suffix_that_leaves_no_room_for_the_text_is_refused(gemma_tokenizer):
    # " is: " is 4 bytes: with EOS that fills max_length 5, the text would get nothing
    with pytest.raises(ValueError, match=r"model.prompt '\{s\} is: '.*model.max_length=5"):
        tokenize_with_eos(gemma_tokenizer, ["ab"], 5, prompt="{s} is: ")


PROMPTS = ["{s} is: ", "q: {s} means"]  # the paper's (suffix only); prefix and suffix


@pytest.fixture(scope="module", params=PROMPTS)
def prompted_run(request, tmp_path_factory):
    """(prompt, checkpoint, merged export) of a tiny_llama run trained with ``prompt``."""
    prompt = request.param
    run_dir = tmp_path_factory.mktemp("run")
    ckpt = make_run(run_dir, overrides=(f'model.prompt="{prompt}"',))
    return prompt, ckpt, export_checkpoint(ckpt, run_dir / "export")


def test_the_prompt_is_saved_and_changes_the_embeddings(prompted_run):
    # Given a checkpoint trained with a prompt
    prompt, ckpt, _ = prompted_run
    embedder = load_embedder_from_checkpoint(ckpt)
    # Then its embedder applies that prompt, and embeds otherwise than without it
    assert embedder.prompt == prompt
    bare = ModelConfig(name="tiny_llama", source="tiny", path="llama", max_length=32)
    without = load_embedder_from_checkpoint(ckpt, model_override=replace(bare, prompt=None))
    assert (embedder.encode(TEXTS) - without.encode(TEXTS)).abs().max() > 1e-2


def test_training_evaluation_export_and_encode_embed_alike(prompted_run, tmp_path):
    from sentence_transformers import SentenceTransformer

    # Given a checkpoint trained with a prompt and its merged export
    prompt, ckpt, export = prompted_run
    embedder = load_embedder_from_checkpoint(ckpt).eval()
    reference = embedder.encode(TEXTS)  # Embedder.encode
    ours = embedder.tokenize(TEXTS)

    # When the training collator tokenises the texts as anchors and the step embeds them
    rows = [{"anchor": t, "positive": t, "negative": t} for t in TEXTS]
    batch = TripletCollator(embedder.tokenizer, 32, prompt=prompt)(rows)
    module = EmbeddingModule(embedder, InfoNCELoss(), OptimConfig(), 1)
    with torch.no_grad():
        trained = module.embed_batch(batch)[: len(TEXTS)]  # packed, as training runs
    # Then the collator's anchor ids are embedft's, and so are the embeddings
    assert batch["input_ids"][: len(TEXTS)].tolist() == ours["input_ids"].tolist()
    assert ours["input_ids"][2].tolist()[-1] == EOS  # truncated: EOS kept
    torch.testing.assert_close(trained, reference, atol=1e-5, rtol=1e-4)

    # When the STS encoder embeds them
    torch.testing.assert_close(encode_texts(embedder, TEXTS), reference, atol=1e-6, rtol=1e-5)

    # When sentence-transformers loads the export and encodes the plain texts
    st = SentenceTransformer(str(export), device="cpu")
    prefix = prompt.split("{s}")[0]
    assert st.default_prompt_name == ("text" if prefix else None)
    assert st.prompts.get(st.default_prompt_name or "query") == prefix
    features = st.preprocess(TEXTS, prompt=prefix or None)
    st_vectors = st.encode(TEXTS, convert_to_tensor=True)
    # Then it sees embedft's ids and gives the checkpoint's vectors
    assert features["input_ids"].tolist() == ours["input_ids"].tolist()
    torch.testing.assert_close(st_vectors.cpu(), reference, atol=1e-5, rtol=1e-4)

    # When embedft loads the export, and python -m embedft.encode embeds from it
    from_export = load_embedder(export)
    assert from_export.tokenize(TEXTS)["input_ids"].tolist() == ours["input_ids"].tolist()
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "emb.npy"
    code = run_cli(
        encode_main, f"ckpt={export}", f"input={tmp_path / 'texts.txt'}", f"output={out}"
    )
    # Then both give the checkpoint's vectors
    assert code == 0
    torch.testing.assert_close(torch.from_numpy(np.load(out)), reference, atol=1e-5, rtol=1e-4)
    meta = json.loads((export / "embedft.json").read_text())
    assert meta["model"]["prompt"] == prompt
    assert f"| prompt | `{prompt}` |" in (export / "README.md").read_text()
