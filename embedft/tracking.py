"""Experiment tracking: the Lightning logger for a run, what W&B shows of it, and results.json.

W&B runs online when credentials exist (``WANDB_API_KEY`` or a netrc entry) and offline otherwise,
so a run never prompts or waits on the network; ``wandb sync`` uploads offline runs later.
What a W&B run carries (``build_logger``, ``log_outcome``):

- name: from the job's overrides (``model=gemma loss.hard_neg=true lora.r=8`` -> ``gemma-hardneg-r8``);
- group: ``logger.group``, else the sweep's name in a multirun (``paper_grid-<time>``), else the
  experiment's name; ``job_type`` "train";
- tags: ``logger.tags`` plus, in a multirun, the keys the sweep varies, as the name writes them
  (``hardneg``, ``r8``): not every override;
- every metric plotted against the optimizer step (``trainer/global_step``), and STSB-dev's summary
  its maximum, not its last value;
- at the end: the adapter checkpoint as a ``model`` artifact and the STS table as a ``wandb.Table``.
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedft.config import LoggerConfig

if TYPE_CHECKING:
    from embedft.launch import JobContext  # imports torch: not for every reader of results.json

STEP_METRIC = "trainer/global_step"  # Lightning's WandbLogger logs the optimizer step as this

# Overrides that say where or how a job runs, not what it trains: left out of run names.
_NOT_IN_NAME = (
    "paths.",
    "logger",
    "hydra.",
    "debug",
    "resume",
    "eval.",
    "data.path",
    "data.num_workers",
    "trainer.devices",
    "trainer.accelerator",
    "trainer.strategy",
    "trainer.num_nodes",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.save_every_n_steps",
)


def name_part(override: str) -> str | None:
    """How a run name writes ``key=value``; None for an override that says where or how it runs."""
    key, _, value = override.lstrip("+~").partition("=")
    if not value or key.startswith(_NOT_IN_NAME):
        return None
    if key == "model" or key == "experiment":
        return value
    if key == "loss.hard_neg":
        return "hardneg" if value.lower() == "true" else "nohardneg"
    if key == "lora.r":
        return f"r{value}"
    return f"{key.rsplit('.', 1)[-1]}{value}"


def name_from_overrides(overrides: list[str]) -> str:
    """A short, readable run name from ``key=value`` overrides (the model first)."""
    models = [name_part(o) for o in overrides if o.lstrip("+~").startswith("model=")]
    rest = [name_part(o) for o in overrides if not o.lstrip("+~").startswith("model=")]
    return "-".join(p for p in [*models, *rest] if p) or "default"


def sweep_tags(swept: list[str]) -> list[str]:
    """One W&B tag per swept override: as the run name writes it, else ``key=value`` (<= 64)."""
    return [(name_part(o) or o.lstrip("+~"))[:64] for o in swept]


def wandb_mode(cfg: LoggerConfig) -> str:
    """W&B's mode: ``logger.mode``, else ``$WANDB_MODE``, else online with credentials.

    Online only when the W&B server (``$WANDB_BASE_URL``, default https://api.wandb.ai) accepts a
    connection within a few seconds: otherwise offline, with a warning. wandb itself would retry
    for about two minutes and then fail the run.
    """
    mode = _configured_wandb_mode(cfg)
    if mode == "online":
        url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
        if not wandb_server_reachable(url):
            import logging

            logging.getLogger(__name__).warning(
                "W&B server %s is unreachable: logging offline instead (upload later with "
                "`wandb sync` on the run's wandb/ directory)",
                url,
            )
            return "offline"
    return mode


def _configured_wandb_mode(cfg: LoggerConfig) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def wandb_server_reachable(url: str, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host (or its HTTP(S) proxy) opens within ``timeout_s``.

    The connect runs in a thread so that a hanging DNS lookup cannot stretch the wait either.
    """
    import socket
    import threading
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)
    if not host:
        return False
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 80
    connected: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                connected.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(connected)


def build_logger(
    cfg: LoggerConfig, output_dir: Path, job: JobContext, run_id: str | None = None
) -> Any:
    """The Lightning logger for this run, or False for ``logger=none``.

    ``run_id``: the W&B run a resumed run continues (stored in its checkpoints).
    """
    if cfg.kind == "none":
        return False
    if cfg.kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        # Rows reach the file every step: a killed run keeps what it logged.
        return CSVLogger(
            save_dir=str(output_dir), name="csv", version="", flush_logs_every_n_steps=1
        )
    from lightning.pytorch.loggers import WandbLogger

    from embedft.eval.callback import StsDevCallback

    mode = wandb_mode(cfg)
    logger = WandbLogger(
        id=run_id or new_run_id(),
        resume="allow",
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group or job.sweep or job.experiment,
        job_type="train",
        name=cfg.name or name_from_overrides(job.overrides),
        tags=list(dict.fromkeys([*cfg.tags, *sweep_tags(job.swept)])),
        save_dir=str(output_dir),
        offline=mode == "offline",
        mode=mode,
    )
    # Lightning 2.6 always hands wandb.init anonymous=None, which wandb 0.31 warns about on every
    # run ("The anonymous setting has no effect"): leave the key out.
    logger._wandb_init.pop("anonymous", None)
    # Lightning's logger already plots "*" against STEP_METRIC; naming a metric here replaces
    # what the glob gave it, so the step metric is repeated. On ranks other than 0 a no-op.
    logger.experiment.define_metric(StsDevCallback.METRIC, step_metric=STEP_METRIC, summary="max")
    return logger


def new_run_id() -> str:
    """A W&B-style run id (8 lowercase letters and digits), chosen before the run starts."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def wandb_run_id(logger: Any) -> str | None:
    """The W&B run id of ``logger`` (kept in checkpoints so a resumed run continues it)."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        return logger.version
    return None


def log_outcome(logger: Any, checkpoint: str | None, scores: dict[str, float]) -> None:
    """At the end of a run: the adapters as a W&B ``model`` artifact, the STS table and scores.

    ``checkpoint`` is ``best.ckpt`` (STSB-dev's pick) or ``last.ckpt``: LoRA weights, optimizer
    state and config, megabytes even for a 2B model.
    """
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    if not isinstance(logger, WandbLogger) or rank_zero_only.rank != 0:
        return
    import wandb

    run = logger.experiment
    if checkpoint and Path(checkpoint).is_file():
        artifact = wandb.Artifact(f"adapters-{run.id}", type="model", metadata=dict(scores))
        artifact.add_file(checkpoint, name=Path(checkpoint).name)
        run.log_artifact(artifact, aliases=[Path(checkpoint).stem])  # "best" or "last"
    if scores:
        rows = [[task, score] for task, score in scores.items()]
        logger.log_table(key="sts/test_table", columns=["task", "spearman"], data=rows)
        for task, score in scores.items():
            run.summary[f"sts/{task}"] = score


def finish(exit_code: int = 0) -> None:
    """Close the active W&B run, if any, so the next job of a multirun starts its own.

    A non-zero ``exit_code`` marks the W&B run as failed.
    """
    wandb = sys.modules.get("wandb")  # not imported: no run was ever started
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically: a crash leaves the previous file, never half of a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
