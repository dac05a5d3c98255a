"""The ``results.json`` record every run and evaluation writes: one typed schema, one writer.

``embedft.run`` and ``embedft.evaluate`` fill a ``Results``; ``embedft.report`` reads the files.
The file is rewritten atomically at every change of state, so it always says where a job is:
``running``, then ``completed``, ``failed`` (with ``error``) or ``preempted``. ``attempts`` keeps
one entry per start of the job (a resume, a requeue, a sweep re-run that ``kept`` it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embedft.tracking import write_json

FILENAME = "results.json"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class Results:
    """What a job did and scored; ``sts`` is Spearman x 100 per task plus ``average``."""

    kind: str  # train | evaluate
    model: str = "?"
    status: str = "running"  # running | completed | failed | preempted
    overrides: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None  # the resolved config
    sts: dict[str, float] = field(default_factory=dict)
    stsb_dev: list[dict[str, float]] = field(default_factory=list)  # [{step, spearman}]
    train: dict[str, Any] | None = None  # steps, losses, wall time, resumed_from
    data: dict[str, Any] | None = None  # rows used/dropped (embedft.data.source.DataReport)
    checkpoint: str | None = None
    mteb_results: str | None = None  # evaluate: folder of its MTEB-format files
    error: str | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def start_attempt(self) -> None:
        self.attempts.append({"started": now(), "status": "running"})

    def end(self, status: str, error: str | None = None) -> None:
        self.status, self.error = status, error
        if self.attempts:
            self.attempts[-1].update(status=status, ended=now())

    def write(self, out_dir: Path) -> None:
        """Atomically; only on rank 0 (the other ranks of a DDP job train and write nothing)."""
        from embedft.launch import is_rank_zero

        if is_rank_zero():
            write_json(Path(out_dir) / FILENAME, asdict(self))

    def write_config(self, out_dir: Path) -> None:
        """``config.yaml``: the resolved config, beside results.json (rank 0 only, as write)."""
        from omegaconf import OmegaConf

        from embedft.launch import is_rank_zero

        if is_rank_zero():
            (Path(out_dir) / "config.yaml").write_text(OmegaConf.to_yaml(self.config))

    def keep(self, out_dir: Path) -> Results:
        """A completed job run again (a sweep re-run): its results stay, the attempt is noted."""
        import logging

        logging.getLogger("embedft.run").info(
            "%s already completed: keeping its results (delete it to run again)", out_dir
        )
        self.attempts.append({"started": now(), "status": "kept"})
        self.write(out_dir)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
