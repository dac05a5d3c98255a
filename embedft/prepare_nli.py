"""``python -m embedft.prepare_nli [inputs=[FORMAT:PATH]] [out=FILE]``: NLI files -> triplets.

The command line of ``embedft.data.prepare_nli`` (which holds the triplet policy, the readers and
the manifest). Without ``inputs`` the gold NLI sets under the data dir are used and the triplets
go to ``data/nli_triplets.csv`` (what ``data=local`` trains on). Errors (a missing or malformed
input, an ``out`` that is a directory) are one line on stderr and exit code 2, before any output
file is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from embedft.cli import log_to_stderr, one_line_errors, tool_config
from embedft.config import ConfigError
from embedft.data.nli_formats import NliInputError
from embedft.data.prepare_nli import (
    WRITERS,
    check_output_path,
    default_sources,
    generic_spec,
    output_and_format,
    parse_input_spec,
    prepare,
    summary,
)
from embedft.paths import conf_dir, data_dir


@dataclass
class PrepareNliConfig:
    """python -m embedft.prepare_nli [inputs=[FORMAT:PATH,...]] [out=FILE] [format=parquet]

    SimCSE triplets (sent0, sent1, hard_neg) from NLI files, and a manifest of what was kept and
    dropped beside them (the policy: embedft/data/prepare_nli.py). No inputs: the gold sets
    under data_dir. Generic csv/tsv/jsonl inputs name their columns and labels with
    columns=[premise,hypothesis,label] and labels=[entailment,neutral,contradiction].
    """

    data_dir: str | None = None  # offline data; null: $EMBEDFT_DATA_DIR, else <repo>/../shared/data
    inputs: list[str] = field(default_factory=list)  # FORMAT:PATH (embedft/data/nli_formats.py)
    out: str | None = None  # output file; null: <repo>/data/nli_triplets.csv (.parquet: parquet)
    format: str | None = None  # csv | parquet; null: from out's suffix, else csv
    seed: int = 7  # shuffle seed (the same inputs and seed give byte-identical files)
    columns: list[str] = field(default_factory=lambda: ["premise", "hypothesis", "label"])
    labels: list[str] = field(default_factory=lambda: ["entailment", "neutral", "contradiction"])

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in WRITERS:
            raise ConfigError(
                f"format must be one of {sorted(WRITERS)} or null, got {self.format!r}"
            )


ConfigStore.instance().store(name="prepare_nli_schema", node=PrepareNliConfig)


def prepare_from_config(cfg: PrepareNliConfig) -> str:
    """Check the output, read the inputs, write triplets + manifest; returns the summary."""
    base = Path(cfg.data_dir or data_dir()).resolve()
    out, fmt = output_and_format(Path(cfg.out) if cfg.out else None, cfg.format)
    check_output_path(out)  # before the inputs are looked for: the cheapest error first
    generic = generic_spec(cfg.columns, cfg.labels)
    if cfg.inputs:
        sources = [parse_input_spec(spec, base) for spec in cfg.inputs]
    else:
        sources = default_sources(base)
    manifest = prepare(sources, out, fmt=fmt, seed=cfg.seed, generic=generic, base_dir=base)
    return summary(manifest, out)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="prepare_nli")
def main(dcfg: DictConfig) -> None:
    log_to_stderr()
    with one_line_errors("embedft.prepare_nli", NliInputError, ConfigError):
        text = prepare_from_config(tool_config(dcfg, PrepareNliConfig))
    print(text)


if __name__ == "__main__":
    main()
