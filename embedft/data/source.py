"""Where training triplets come from, and which of their rows are usable.

``load_stream`` opens the configured triplet source with ``datasets`` in streaming mode (a local
csv/tsv/jsonl/parquet file, or a hub dataset); ``column_mapping`` maps the training names
(anchor, positive, negative) to its columns. Rows with a missing, empty or non-text cell
(``bad_cell``) are dropped, never trained on as "None" or "['d']": ``check_data`` counts them per
column and reason before training (``DataReport``, kept in the run's results.json) and stops with
the file, line and column of the first ones when more than ``data.max_bad_fraction`` of the rows
are bad. Every problem is a ``DataError`` naming the file and the key to change.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedft.config import DataConfig
from embedft.paths import repo_root

log = logging.getLogger(__name__)

_LOCAL_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


class DataError(ValueError):
    """The training data cannot be read as configured; the message names file and columns."""


def resolve_local_path(cfg: DataConfig) -> Path:
    """A local triplet file: absolute, or relative to the repository root (``make data``)."""
    path = Path(cfg.path).expanduser()
    return path if path.is_absolute() else repo_root() / path


def load_stream(cfg: DataConfig):
    """The raw ``datasets.IterableDataset`` named by ``cfg`` (no shuffling or sharding yet)."""
    from datasets import load_dataset

    if cfg.source == "local":
        path = resolve_local_path(cfg)
        if not path.is_file():
            raise DataError(
                f"data.path: triplet file {path} does not exist; build it with `make data` "
                f"(python -m embedft.prepare_nli) or point data.path at a csv/jsonl/parquet file"
            )
        builder = _LOCAL_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"data.path: {path} must end in one of {sorted(_LOCAL_BUILDERS)}")
        kwargs: dict[str, Any] = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        return load_dataset(builder, data_files=str(path), split="train", streaming=True, **kwargs)
    return load_dataset(
        cfg.path, cfg.subset, data_files=cfg.data_files, split=cfg.split, streaming=True
    )


def column_mapping(cfg: DataConfig) -> dict[str, str]:
    """The training names (anchor, positive, negative) -> the data's column names."""
    mapping = {"anchor": cfg.anchor_column, "positive": cfg.positive_column}
    if cfg.negative_column:
        mapping["negative"] = cfg.negative_column
    return mapping


def bad_cell(value: Any) -> str | None:
    """Why a cell cannot be a training text (None when it can)."""
    if value is None:
        return "null"
    if not isinstance(value, str):
        return "not_text"
    if not value.strip():
        return "empty"
    return None


@dataclass
class DataReport:
    """What ``check_data`` found: usable rows and the dropped ones per ``column:reason``."""

    path: str
    rows_read: int | None = None
    rows_used: int | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # "line L, column C: reason" of the first


def _line_of(path: Path | str, index: int) -> str:
    suffix = Path(str(path)).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return f"line {index + 2}"  # after the header (multi-line quoted cells shift this)
    if suffix in (".jsonl", ".json"):
        return f"line {index + 1}"
    return f"row {index}"


def _iterate(stream, where) -> Iterator[dict[str, Any]]:
    try:
        yield from stream
    except DataError:
        raise
    except Exception as err:  # pandas/pyarrow/json errors name neither the file nor the fix
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "No columns to parse" in reason:
            reason = "the file is empty (no header row)"
        raise DataError(f"data.path: {where} cannot be read: {reason}") from None


def check_data(cfg: DataConfig) -> DataReport:
    """Fail fast on a missing/unreadable file, missing columns or too many bad rows.

    Local files are read once in full: the report counts usable rows (one epoch) and the
    dropped ones. A hub stream is only checked on its first row (its length stays unknown).
    """
    stream = load_stream(cfg)
    where = resolve_local_path(cfg) if cfg.source == "local" else cfg.path
    report = DataReport(path=str(where))
    rows = _iterate(stream, where)
    first = next(rows, None)
    if first is None:
        raise DataError(f"data.path: {where} holds no rows")
    columns = column_mapping(cfg)
    missing = [col for col in columns.values() if col not in first]
    if missing:
        raise DataError(
            f"{where}: columns {missing} not found (have {sorted(first)}); set "
            f"data.anchor_column/positive_column/negative_column"
        )
    if cfg.source != "local":
        report.rows_used = cfg.num_examples
        return report
    read = used = 0
    for index, row in enumerate(itertools.chain([first], rows)):
        if cfg.num_examples is not None and index >= cfg.num_examples:
            break
        read += 1
        problems = [(col, bad_cell(row[col])) for col in columns.values()]
        problems = [(col, why) for col, why in problems if why]
        if not problems:
            used += 1
            continue
        for col, why in problems:
            report.dropped[f"{col}:{why}"] = report.dropped.get(f"{col}:{why}", 0) + 1
        if len(report.examples) < 5:
            col, why = problems[0]
            report.examples.append(f"{_line_of(where, index)}, column {col!r}: {why}")
    report.rows_read, report.rows_used = read, used
    bad = read - used
    if bad:
        log.warning("%s: dropping %d of %d rows (%s)", where, bad, read, report.dropped)
    if used == 0 or bad / read > cfg.max_bad_fraction:
        raise DataError(
            f"{where}: {bad} of {read} rows have a missing, empty or non-text cell "
            f"(over data.max_bad_fraction={cfg.max_bad_fraction}): {'; '.join(report.examples)}"
        )
    return report
