"""Typed configuration for every embedft entry point.

Each Hydra group under ``conf/`` (model, lora, loss, embed, data, trainer, logger, paths, eval) is
backed by a dataclass here and registered in Hydra's ConfigStore, so OmegaConf rejects unknown keys and
wrongly typed values while composing. Value checks live in ``__post_init__`` and run when
``to_object`` turns the composed DictConfig into objects, before any model or data loads;
``check_run_config`` holds the rules across groups. Errors name the key, the value and what is
allowed: ``loss.temperature must be > 0, got -1``. Turning a composed config into these objects
(unknown and moved keys, ``to_object``, the ``${uid:}`` and ``${embedft_help:}`` resolvers) is
``embedft.compose``'s job; importing this module registers all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# Composition helpers live in embedft.compose; callers keep importing them from here.
from embedft.compose import MOVED_KEYS, moved_key_error, to_object, unknown_keys  # noqa: F401
from embedft.eval.tasks import STS_TASKS
from embedft.losses import DEFAULT_LOSS, loss_names  # names only: imports no loss, nor torch


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what is allowed."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _finite(key: str, value: float) -> None:
    _check(math.isfinite(value), f"{key} must be a finite number, got {value}")


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    _check(value in allowed, f"{key} must be one of {list(allowed)}, got {value!r}")


MODEL_SOURCES = ("hub", "local", "gguf_package", "package", "tiny")
PROMPT_SLOT = "{s}"  # where the text goes in model.prompt
DTYPES = ("auto", "float32", "bfloat16", "float16")
# sdpa: SDPA, and text-by-text attention over packed rows (embedft/model/attention.py); eager:
# transformers' matmul attention; flash_attention_2: flash-attn's kernels (varlen when packed).
ATTENTION = ("sdpa", "eager", "flash_attention_2")


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


ALL_STS_TASKS = tuple(STS_TASKS)  # every row of the task table, in its (report) order
EVAL_BACKENDS = ("embedft", "mteb")  # eval.backend: who encodes-and-scores (embedft.evaluate)


def split_prompt(prompt: str | None) -> tuple[str, str]:
    """The text before and after ``{s}`` in a ``model.prompt`` template (``("", "")`` for null)."""
    if prompt is None:
        return "", ""
    _check(
        prompt.count(PROMPT_SLOT) == 1,
        f"model.prompt must contain {PROMPT_SLOT} exactly once (where the text goes, e.g. "
        f"'{PROMPT_SLOT} is: ' or 'query: {PROMPT_SLOT}'; null for no prompt), got {prompt!r}",
    )
    prefix, suffix = prompt.split(PROMPT_SLOT)
    return prefix, suffix


@dataclass
class ModelConfig:
    """Which backbone to load and how to turn its hidden states into an embedding."""

    name: str = MISSING
    source: str = "hub"  # hub | local | gguf_package | package | tiny
    path: str = MISSING  # hub id, directory, python package name, or tiny architecture
    gguf_file: str | None = None
    tokenizer_path: str | None = None
    pooling: str = "last"
    append_eos: bool = True
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    max_length: int = 150
    # The base model's Hugging Face hub id, for an export's card and adapter (base_model):
    # null: model.path when source=hub, none otherwise (local and tiny models). It also names the
    # model that license describes: an export drops a license recorded for another model.
    hub_id: str | None = None
    license: str = (
        ""  # the base model's hub licence id (apache-2.0, mit, gemma, other); "": unknown
    )
    license_name: str | None = (
        None  # license=other: the licence's own id, e.g. minicpm-model-license
    )
    # null: texts as they are. Else a template with {s} where the text goes, e.g. "{s} is: "
    # (paper Table 5) or "query: {s}"; see embedft/model/tokenize.py.
    prompt: str | None = None

    def __post_init__(self) -> None:
        _one_of("model.source", self.source, MODEL_SOURCES)
        _, suffix = split_prompt(self.prompt)
        _check(
            self.append_eos or not suffix,
            f"model.prompt {self.prompt!r} has text after {PROMPT_SLOT}, which embedft places "
            "before the appended EOS: it needs model.append_eos=true (else use a prefix only)",
        )
        _one_of("model.pooling", self.pooling, ("last", "mean"))
        _one_of("model.dtype", self.dtype, DTYPES)
        _one_of("model.attn_implementation", self.attn_implementation, ATTENTION)
        _check(
            self.attn_implementation != "flash_attention_2" or _has_flash_attn(),
            "model.attn_implementation=flash_attention_2 needs the flash-attn package and a CUDA "
            "GPU (pip install flash-attn); sdpa packs text by text without it",
        )
        _check(self.max_length >= 2, f"model.max_length must be >= 2, got {self.max_length}")
        _check(
            self.source != "gguf_package" or bool(self.gguf_file),
            f"model.gguf_file is required when model.source=gguf_package (model {self.name!r})",
        )


@dataclass
class LoraConfig:
    """LoRA adapters (peft). Paper defaults: r=8, alpha=32, dropout=0.1, gaussian init."""

    enabled: bool = True
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    init: str = "gaussian"
    target_modules: list[str] | None = None  # None: the model file's lora_target_modules

    def __post_init__(self) -> None:
        _check(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        _check(self.alpha > 0, f"lora.alpha must be > 0, got {self.alpha}")
        _check(0 <= self.dropout < 1, f"lora.dropout must be in [0, 1), got {self.dropout}")
        _one_of("lora.init", self.init, ("gaussian", "default", "pissa", "olora"))


@dataclass
class LossConfig:
    """The training loss: ``name`` picks ``embedft/losses/<name>.py``; the rest are its settings.

    The default, InfoNCE, is paper Eq. 1 with hard_neg=true and Eq. 2 with hard_neg=false.
    """

    name: str = DEFAULT_LOSS  # a file of embedft/losses/, or a loss given to register_loss
    temperature: float = 0.05
    hard_neg: bool = True
    gather_across_ranks: bool = True
    mask_duplicate_positives: bool = False

    def __post_init__(self) -> None:
        _one_of("loss.name", self.name, tuple(loss_names()))
        _finite("loss.temperature", self.temperature)
        _check(self.temperature > 0, f"loss.temperature must be > 0, got {self.temperature}")


@dataclass
class EmbedConfig:
    """How a batch of padded ids becomes embeddings in training (``Embedder.embed``).

    Speed and memory only: every setting gives the same embeddings and gradients up to float
    rounding (tests/test_packing.py, tests/test_grad_cache.py).
    """

    pack_len: int = 4096  # >0: texts packed end to end in rows of up to this many tokens; 0: off
    sub_batch_rows: int = 64  # no packing: sorted sub-batches of this many rows; 0: one forward
    grad_cache_chunk_tokens: int = 0  # >0: gradient caching, chunks of at most this many tokens
    # (0: off). Peak memory follows the chunk, not the batch: NLI texts average ~14 tokens.

    def __post_init__(self) -> None:
        for key in ("pack_len", "sub_batch_rows", "grad_cache_chunk_tokens"):
            value = getattr(self, key)
            _check(value >= 0, f"embed.{key} must be >= 0 (0 = off), got {value}")


@dataclass
class DataConfig:
    """Where the NLI triplets come from and how they are batched."""

    name: str = MISSING
    source: str = "hub"  # hub | local
    path: str = MISSING  # hub dataset id, or a file (relative paths: under paths.data_dir)
    data_files: str | None = None  # hub: file inside the dataset repo
    subset: str | None = None
    split: str = "train"
    anchor_column: str = "sent0"
    positive_column: str = "sent1"
    negative_column: str | None = "hard_neg"
    num_examples: int | None = None  # length of one epoch (streams have none); counted if local
    batch_size: int = 60
    shuffle_buffer: int = 10_000
    num_workers: int = 0
    length_grouping: int = 0  # >0: sort each window of this many batches by length
    max_bad_fraction: float = 0.01  # rows with a null/empty/non-text cell are dropped; above: error
    language: str = "en"  # ISO 639-1 code of the texts (an export's model card says it)

    def __post_init__(self) -> None:
        _one_of("data.source", self.source, ("hub", "local"))
        _check(
            0 <= self.max_bad_fraction < 1,
            f"data.max_bad_fraction must be in [0, 1), got {self.max_bad_fraction}",
        )
        _check(self.batch_size >= 1, f"data.batch_size must be >= 1, got {self.batch_size}")
        _check(
            self.shuffle_buffer >= 0, f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}"
        )
        _check(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        _check(
            self.num_examples is None or self.num_examples > 0,
            f"data.num_examples must be > 0 or null, got {self.num_examples}",
        )


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay (paper: lr 5e-5, 100 warmup steps, wd 1e-4)."""

    lr: float = 5e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "cosine"

    def __post_init__(self) -> None:
        _finite("optim.lr", self.lr)
        _finite("optim.weight_decay", self.weight_decay)
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _one_of("optim.scheduler", self.scheduler, ("cosine", "linear", "constant"))


@dataclass
class TrainerConfig:
    """Lightning Trainer settings embedft exposes."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    max_epochs: int = 1
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_checkpointing: bool = False
    log_every_n_steps: int = 10
    compile: bool = False
    deterministic: bool = False
    enable_progress_bar: bool = True
    save_every_n_steps: int = 500  # last.ckpt for resume/preemption
    save_every_n_minutes: float = 30.0  # also by wall time (0: off); SIGTERM/SIGUSR1 save at once

    def __post_init__(self) -> None:
        _one_of("trainer.accelerator", self.accelerator, ("auto", "cpu", "gpu", "cuda", "mps"))
        _one_of(
            "trainer.precision",
            self.precision,
            ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed"),
        )
        _check(
            self.max_steps == -1 or self.max_steps > 0,
            f"trainer.max_steps must be > 0 or -1 (use epochs), got {self.max_steps}",
        )
        _check(self.max_epochs >= 1, f"trainer.max_epochs must be >= 1, got {self.max_epochs}")
        _check(
            self.accumulate_grad_batches >= 1,
            f"trainer.accumulate_grad_batches must be >= 1, got {self.accumulate_grad_batches}",
        )
        _check(
            self.save_every_n_steps >= 1,
            f"trainer.save_every_n_steps must be >= 1, got {self.save_every_n_steps}",
        )
        _finite("trainer.save_every_n_minutes", self.save_every_n_minutes)
        _check(
            self.save_every_n_minutes >= 0,
            f"trainer.save_every_n_minutes must be >= 0 (0 = off), got {self.save_every_n_minutes}",
        )
        if self.gradient_clip_val is not None:
            _finite("trainer.gradient_clip_val", self.gradient_clip_val)


@dataclass
class LoggerConfig:
    """Experiment logging: W&B (default), CSV, or none."""

    kind: str = "wandb"  # wandb | csv | none
    project: str = "embedft"
    entity: str | None = None
    group: str | None = None  # default: the sweep's name in a multirun, else the experiment's
    name: str | None = None  # default: built from the job's overrides
    tags: list[str] = field(default_factory=list)  # plus a multirun job's swept values
    mode: str = "auto"  # auto: online with credentials, offline without

    def __post_init__(self) -> None:
        _one_of("logger.kind", self.kind, ("wandb", "csv", "none"))
        _one_of("logger.mode", self.mode, ("auto", "online", "offline", "disabled"))


@dataclass
class PathsConfig:
    """Where data is read from and results are written to."""

    data_dir: str | None = None  # null: $EMBEDFT_DATA_DIR, else <repo>/../shared/data
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class EvalConfig:
    """STS evaluation: the test table after fit and STSB-dev during training."""

    tasks: list[str] = field(default_factory=lambda: list(ALL_STS_TASKS))
    source: str = "local"  # local | hub (MTEB datasets)
    batch_size: int = 256
    every_n_steps: int = 100  # STSB-dev validation frequency in optimizer steps; 0: off
    split: str = "test"  # a split every task in eval.tasks has (embedft/eval/tasks.py)
    after_fit: bool = True
    backend: str = "embedft"  # embedft | mteb: the mteb package's tasks and evaluator (evaluate)

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in STS_TASKS]
        _check(not unknown, f"eval.tasks has unknown {unknown}; known: {list(STS_TASKS)}")
        lacking = [t for t in self.tasks if self.split not in STS_TASKS[t].splits]
        _check(
            not lacking,
            f"eval.split={self.split!r} is not a split of {lacking}; "
            f"only {[t for t in STS_TASKS if self.split in STS_TASKS[t].splits]} have it",
        )
        _one_of("eval.source", self.source, ("local", "hub"))
        _one_of("eval.backend", self.backend, EVAL_BACKENDS)
        _check(
            self.backend != "mteb" or self.split == "test",
            f"eval.backend=mteb scores MTEB's evaluation split, test; got eval.split={self.split!r}",
        )
        _check(self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size}")
        _check(
            self.every_n_steps >= 0, f"eval.every_n_steps must be >= 0, got {self.every_n_steps}"
        )


@dataclass
class RunConfig:
    """Root of ``python -m embedft.run``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 7
    resume: str | None = None  # a checkpoint path, or "auto": <output_dir>/checkpoints/last.ckpt
    task_name: str = "train"


@dataclass
class EvaluateConfig:
    """python -m embedft.evaluate model=NAME [ckpt=PATH | st_model=DIR_OR_HUB_ID] [eval.backend=mteb]

    The 9 STS tasks (Spearman x 100) of a base model, a training checkpoint, an export or any
    sentence-transformers model; results.json plus MTEB-format result files.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    ckpt: str | None = None  # a training checkpoint or an export dir; null: model= as it is
    st_model: str | None = None  # instead: a sentence-transformers model dir or hub id
    device: str = "auto"  # auto: cuda if available, else cpu

    def __post_init__(self) -> None:
        _check(
            not (self.ckpt and self.st_model),
            f"give ckpt= or st_model=, not both (ckpt={self.ckpt}, st_model={self.st_model})",
        )


def world_size(trainer: TrainerConfig) -> int:
    """Processes taking part in one optimizer step: devices per node x nodes."""
    devices = trainer.devices
    n = devices if isinstance(devices, int) else (len(devices) if isinstance(devices, list) else 1)
    return max(1, n) * trainer.num_nodes


def check_trust_remote_code(model: ModelConfig, overrides: list[str] | None) -> None:
    """``trust_remote_code`` runs the model repo's Python: only a command-line override sets it."""
    if model.trust_remote_code and not any(
        o.lstrip("+").startswith("model.trust_remote_code=") for o in overrides or []
    ):
        raise ConfigError(
            "model.trust_remote_code=true runs Python code from the model's files: it is only "
            "accepted on the command line (model.trust_remote_code=true), never from a file"
        )


def check_run_config(cfg: RunConfig, overrides: list[str] | None = None) -> None:
    """Checks that involve more than one group (single values are checked by the schemas)."""
    if not cfg.loss.hard_neg and cfg.data.batch_size * world_size(cfg.trainer) < 2:
        raise ConfigError(
            "data.batch_size=1 with loss.hard_neg=false leaves InfoNCE no negative: the loss is "
            "0 whatever the model does; use data.batch_size >= 2 or loss.hard_neg=true"
        )
    check_trust_remote_code(cfg.model, overrides)
    if cfg.eval.backend != "embedft":
        raise ConfigError(
            f"eval.backend={cfg.eval.backend} is for python -m embedft.evaluate; training scores "
            "with embedft's evaluator (the two agree: tests/test_mteb_backend.py)"
        )
    if cfg.loss.hard_neg and not cfg.data.negative_column:
        raise ConfigError(
            "loss.hard_neg=true needs hard negatives but data.negative_column is null; "
            "set loss.hard_neg=false or name the negative column"
        )
    if cfg.embed.grad_cache_chunk_tokens and cfg.trainer.accumulate_grad_batches > 1:
        raise ConfigError(
            "embed.grad_cache_chunk_tokens and trainer.accumulate_grad_batches > 1 do not combine: "
            "gradient caching already trains the whole batch at once"
        )
    if cfg.logger.kind == "wandb":
        from embedft.extras import require  # imports this module

        require("wandb", "logger=wandb", instead="logger=csv")


def register_configs() -> None:
    """Register the schemas so that YAML files are merged onto typed nodes."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)


register_configs()
