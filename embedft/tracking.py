"""Experiment tracking: the Lightning logger for a run, its W&B name/group/tags, and results.json.

W&B runs online when credentials exist (``WANDB_API_KEY`` or a netrc entry) and offline otherwise,
so a run never prompts or waits on the network; ``wandb sync`` uploads offline runs later.
In a Hydra multirun the group is the sweep directory's name and the run name is built from the
job's overrides (``model=gemma loss.hard_neg=true lora.r=8`` -> ``gemma-hardneg-r8``).
"""

from __future__ import annotations

import json
import netrc
import os
import secrets
import string
import sys
from pathlib import Path
from typing import Any

from embedft.config import LoggerConfig

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


def name_from_overrides(overrides: list[str]) -> str:
    """A short, readable run name from ``key=value`` overrides."""
    parts = []
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if not value or key.startswith(_NOT_IN_NAME):
            continue
        if key == "model":
            parts.insert(0, value)
        elif key == "loss.hard_neg":
            parts.append("hardneg" if value.lower() == "true" else "nohardneg")
        elif key == "lora.r":
            parts.append(f"r{value}")
        elif key == "experiment":
            parts.append(value)
        else:
            parts.append(f"{key.rsplit('.', 1)[-1]}{value}")
    return "-".join(parts) or "default"


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
    cfg: LoggerConfig,
    output_dir: Path,
    overrides: list[str],
    group: str | None,
    run_id: str | None = None,
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

    mode = wandb_mode(cfg)
    name = cfg.name or name_from_overrides(overrides)
    logger = WandbLogger(
        id=run_id or new_run_id(),
        resume="allow",
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group or group,
        name=name,
        tags=list(cfg.tags) or [t for t in name.split("-") if t],
        save_dir=str(output_dir),
        offline=mode == "offline",
        mode=mode,
    )
    # Lightning 2.6 always hands wandb.init anonymous=None, which wandb 0.31 warns about on every
    # run ("The anonymous setting has no effect"): leave the key out.
    logger._wandb_init.pop("anonymous", None)
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


def log_sts_table(logger: Any, scores: dict[str, float]) -> None:
    """Put the final 9-task table into W&B (a table plus one summary value per task)."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return
    rows = [[task, score] for task, score in scores.items()]
    logger.log_table(key="sts/test_table", columns=["task", "spearman"], data=rows)
    for task, score in scores.items():
        logger.experiment.summary[f"sts/{task}"] = score


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
