"""Config composition and validation: typed schemas, clear errors before anything loads."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from embedft.config import ConfigError, RunConfig, check_run_config, moved_key_error, to_object
from embedft.paths import conf_dir


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="run", overrides=list(overrides), return_hydra_config=False)


def _cfg(*overrides) -> RunConfig:
    dcfg = _compose(*overrides)
    dcfg.paths.output_dir = "/tmp/unused"  # ${hydra:...} needs a running app
    return to_object(dcfg, RunConfig)


def test_defaults_are_the_papers_recipe():
    cfg = _cfg()
    assert cfg.model.name == "minicpm"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.init) == (8, 32, 0.1, "gaussian")
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"]
    assert (cfg.loss.temperature, cfg.loss.hard_neg) == (0.05, True)
    assert (cfg.data.batch_size, cfg.model.max_length, cfg.trainer.max_epochs, cfg.seed) == (
        60,
        150,
        1,
        7,
    )
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (5e-5, 100, 1e-4)
    assert cfg.data.name == "simcse_nli"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.temperature=-1", "loss.temperature must be > 0, got -1"),
        ("lora.r=0", "lora.r must be >= 1, got 0"),
        ("lora.dropout=1.5", "lora.dropout must be in [0, 1), got 1.5"),
        ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
        ("optim.lr=0", "optim.lr must be > 0, got 0"),
        ("model.pooling=max", "model.pooling must be one of ['last', 'mean'], got 'max'"),
        ("eval.tasks=[STS99]", "eval.tasks has unknown ['STS99']"),
        ("trainer.max_steps=0", "trainer.max_steps must be > 0 or -1"),
        ("embed.pack_len=-1", "embed.pack_len must be >= 0 (0 = off), got -1"),
        ("embed.sub_batch_rows=-1", "embed.sub_batch_rows must be >= 0"),
        ("embed.grad_cache_chunk_tokens=-1", "embed.grad_cache_chunk_tokens must be >= 0"),
        ("+embed.grad_cache_chunk_size=64", "embed.grad_cache_chunk_size became embed.grad_cac"),
        ("+trainer.pack_len=64", "trainer.pack_len moved to embed.pack_len"),
        ("loss.temperature=inf", "loss.temperature must be a finite number, got inf"),
        ("optim.lr=inf", "optim.lr must be a finite number, got inf"),
        ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
        ("trainer.save_every_n_minutes=-1", "trainer.save_every_n_minutes must be >= 0"),
        ("data.max_bad_fraction=1", "data.max_bad_fraction must be in [0, 1)"),
        ("+unknown.key=1", "unknown config key(s) ['unknown']"),
        ("+trainer.max_step=5", "unknown config key(s) ['trainer.max_step']"),
        ('model.prompt="query: "', "model.prompt must contain {s} exactly once"),
        ('model.prompt="{s} and {s}"', "model.prompt must contain {s} exactly once"),
        ('model.prompt=""', "model.prompt must contain {s} exactly once"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        _cfg(override)
    assert message in str(err.value)


def test_wrong_type_is_rejected_while_composing():
    with pytest.raises((ValidationError, ConfigCompositionException)) as err:
        _compose("loss.hard_neg=maybe")
    assert "hard_neg" in str(err.value) or "hard_neg" in str(err.value.__cause__)


def test_unknown_key_is_rejected():
    with pytest.raises((ConfigKeyError, ConfigCompositionException)) as err:
        _compose("loss.temprature=0.1")
    assert "temprature" in str(err.value) or "temprature" in str(err.value.__cause__)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(MissingConfigException) as err:
        _compose("model=foo")
    text = str(err.value)
    assert "model/foo" in text and "gemma" in text and "smollm2" in text


def test_hard_neg_needs_a_negative_column():
    cfg = _cfg("data.negative_column=null")
    with pytest.raises(ConfigError, match="loss.hard_neg=true needs hard negatives"):
        check_run_config(cfg)
    check_run_config(_cfg("data.negative_column=null", "loss.hard_neg=false"))


def test_a_batch_of_one_without_hard_negatives_is_rejected():
    # Given InfoNCE without hard negatives, a batch of 1 has no negative: the loss is always 0
    with pytest.raises(ConfigError, match="data.batch_size=1 with loss.hard_neg=false"):
        check_run_config(_cfg("data.batch_size=1", "loss.hard_neg=false"))
    check_run_config(_cfg("data.batch_size=1"))  # the hard negative is a negative


def test_trust_remote_code_only_from_the_command_line():
    cfg = _cfg("model.trust_remote_code=true")
    with pytest.raises(ConfigError, match="only accepted on the command line"):
        check_run_config(cfg, overrides=[])  # e.g. set in a yaml file
    check_run_config(cfg, overrides=["model.trust_remote_code=true"])


def test_embedding_settings_are_one_group_with_the_defaults_training_used():
    cfg = _cfg()
    assert (cfg.embed.pack_len, cfg.embed.sub_batch_rows, cfg.embed.grad_cache_chunk_tokens) == (
        4096,
        64,
        0,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.pack_len=64", "trainer.pack_len moved to embed.pack_len: use embed.pack_len=64"),
        (
            "+loss.grad_cache_chunk_size=8,16",
            "loss.grad_cache_chunk_size became embed.grad_cache_chunk_tokens: chunks are sized "
            "in tokens now, not texts (NLI texts average ~14 tokens: 64 texts ~ "
            "embed.grad_cache_chunk_tokens=900)",
        ),
    ],
)
def test_a_moved_key_on_the_command_line_names_its_new_place(override, message):
    # Given an override of a key that moved; When checked before Hydra composes; Then
    assert moved_key_error(["model=tiny_llama", override]) == message
    assert moved_key_error(["embed.pack_len=64", "trainer.max_steps=3"]) is None


def test_grad_cache_and_gradient_accumulation_do_not_combine():
    cfg = _cfg("embed.grad_cache_chunk_tokens=8", "trainer.accumulate_grad_batches=2")
    with pytest.raises(ConfigError, match="embed.grad_cache_chunk_tokens and trainer.accumulate"):
        check_run_config(cfg)
    check_run_config(_cfg("embed.grad_cache_chunk_tokens=8"))


def test_prompt_is_off_by_default_and_a_quoted_template_composes():
    assert _cfg().model.prompt is None  # the paper's main results use no prompt
    # Hydra reads {...} as a dictionary: a template is given quoted, trailing space kept
    assert _cfg('model.prompt="{s} is: "').model.prompt == "{s} is: "
    assert _cfg('model.prompt="query: {s}"', "model=minilm").model.prompt == "query: {s}"


def test_a_prompt_suffix_needs_the_appended_eos():
    # Given MiniLM (append_eos=false), a template with text after {s} has nowhere to go
    with pytest.raises(ConfigError, match="model.prompt '{s} is: ' has text after"):
        _cfg("model=minilm", 'model.prompt="{s} is: "')


def test_eval_backend_is_embedft_or_mteb_and_mteb_scores_the_test_split():
    # Given / When / Then: an unknown backend, and mteb on a split MTEB does not evaluate
    with pytest.raises(ConfigError, match=r"eval.backend must be one of \['embedft', 'mteb'\]"):
        _cfg("eval.backend=sklearn")
    with pytest.raises(ConfigError, match="eval.backend=mteb scores MTEB's evaluation split"):
        _cfg("eval.backend=mteb", "eval.split=dev", "eval.tasks=[STSBenchmark]")


def test_training_scores_with_embedft_and_says_so_for_eval_backend_mteb():
    cfg = _cfg("eval.backend=mteb")
    with pytest.raises(ConfigError, match="eval.backend=mteb is for python -m embedft.evaluate"):
        check_run_config(cfg)


def test_evaluate_takes_ckpt_or_st_model_not_both():
    from embedft.config import EvaluateConfig

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        dcfg = compose("evaluate", ["ckpt=best.ckpt", "st_model=org/model"])
    dcfg.paths.output_dir = "/tmp/unused"
    with pytest.raises(ConfigError, match="give ckpt= or st_model=, not both"):
        to_object(dcfg, EvaluateConfig)
