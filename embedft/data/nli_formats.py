"""Readers for the NLI file formats that ``python -m embedft.prepare_nli`` turns into triplets.

Each reader returns a ``ParsedFile``: the labelled pairs it could read (labels mapped to
``entailment`` / ``neutral`` / ``contradiction`` / ``no_consensus``) and, per reason, the line
numbers of the rows it could not. Readers only report; what a pair is used for is decided in
``prepare_nli``. Problems with a whole file (missing, not UTF-8, missing columns, misaligned
SentEval files, unknown suffix) raise ``NliInputError``.

Formats (the name is what ``inputs=[FORMAT:PATH]`` takes):

- ``snli_jsonl``  official ``snli_1.0_*.jsonl``: keys gold_label, sentence1, sentence2.
- ``snli_txt``    official ``snli_1.0_*.txt``: TAB-separated with a header; uses the columns
  gold_label, sentence1, sentence2.
- ``senteval``    SentEval layout; PATH is ``<dir>/s1.<split>``, with ``s2.<split>`` and
  ``labels.<split>`` beside it, one item per line, aligned line by line.
- ``mnli_glue``   GLUE MNLI tsv (``dev_matched.tsv`` ...): TAB, header; sentence1, sentence2,
  gold_label.
- ``textfooler``  no header: ``label<TAB>premise<TAB>hypothesis``.
- ``xnli``        TAB, header ``id premise hypothesis label``; label 0/1/2 =
  entailment/neutral/contradiction (the HF convention).
- ``generic``     ``.csv`` (RFC 4180 quoting), ``.tsv`` or ``.jsonl`` whose column/key names and
  label values are given by ``GenericSpec``.

Word labels (all formats but xnli and generic) are entailment/neutral/contradiction, and ``-``
(SNLI's "no annotator consensus") maps to ``no_consensus``. TSV files are split on TAB without
quote processing, as GLUE and XNLI are written: their sentences contain ``"``. Text and labels
are stripped of surrounding whitespace (SentEval lines end with a space). A malformed row gets
the first reason that applies, checked in the order: column count / JSON, text, label.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENTAILMENT = "entailment"
NEUTRAL = "neutral"
CONTRADICTION = "contradiction"
NO_CONSENSUS = "no_consensus"

WORD_LABELS: dict[str, str] = {
    "entailment": ENTAILMENT,
    "neutral": NEUTRAL,
    "contradiction": CONTRADICTION,
    "-": NO_CONSENSUS,
}
XNLI_LABELS: dict[str, str] = {"0": ENTAILMENT, "1": NEUTRAL, "2": CONTRADICTION}

FORMATS = ("snli_jsonl", "snli_txt", "senteval", "mnli_glue", "textfooler", "xnli", "generic")


class NliInputError(ValueError):
    """An input that cannot be used at all; raised before any output file is written."""


@dataclass(frozen=True)
class Pair:
    """One readable labelled row."""

    line: int
    premise: str
    hypothesis: str
    label: str  # ENTAILMENT | NEUTRAL | CONTRADICTION | NO_CONSENSUS


@dataclass(frozen=True)
class GenericSpec:
    """Column (or JSON key) names and label values of a ``generic`` input."""

    premise: str = "premise"
    hypothesis: str = "hypothesis"
    label: str = "label"
    entailment: str = "entailment"
    neutral: str = "neutral"
    contradiction: str = "contradiction"

    def __post_init__(self) -> None:
        if len(set(self.columns)) != 3:
            raise NliInputError(f"generic columns must be 3 distinct names, got {self.columns}")
        if len(self.labels) != 3:
            raise NliInputError(
                "generic labels must be 3 distinct values, got "
                f"{(self.entailment, self.neutral, self.contradiction)}"
            )

    @property
    def columns(self) -> tuple[str, str, str]:
        return (self.premise, self.hypothesis, self.label)

    @property
    def labels(self) -> dict[str, str]:
        return {
            self.entailment: ENTAILMENT,
            self.neutral: NEUTRAL,
            self.contradiction: CONTRADICTION,
        }


@dataclass
class ParsedFile:
    """What a reader got out of one input (SentEval: three files)."""

    files: list[Path]
    rows_read: int = 0
    pairs: list[Pair] = field(default_factory=list)
    malformed: dict[str, list[int]] = field(default_factory=dict)  # reason -> line numbers

    @property
    def malformed_count(self) -> int:
        return sum(len(lines) for lines in self.malformed.values())

    def reject(self, line: int, reason: str) -> None:
        self.rows_read += 1
        self.malformed.setdefault(reason, []).append(line)

    def add(
        self,
        line: int,
        premise: object,
        hypothesis: object,
        raw_label: object,
        labels: Mapping[str, str],
    ) -> None:
        if not isinstance(premise, str) or not isinstance(hypothesis, str):
            self.reject(line, "not_text")
            return
        premise, hypothesis = premise.strip(), hypothesis.strip()
        if not premise or not hypothesis:
            self.reject(line, "empty_text")
            return
        # JSON labels may be ints (0/1/2); bools and floats stay unknown via their str().
        label = labels.get(str(raw_label).strip()) if raw_label is not None else None
        if label is None:
            self.reject(line, "unknown_label")
            return
        self.rows_read += 1
        self.pairs.append(Pair(line, premise, hypothesis, label))


def read_utf8(path: Path) -> str:
    """The file's text; a UTF-8 BOM is dropped. Names the byte offset of the first bad byte."""
    if not path.is_file():
        raise NliInputError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NliInputError(
            f"{path}: not valid UTF-8 at byte offset {err.start} (byte 0x{data[err.start]:02x});"
            " NLI inputs must be UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _lines(text: str) -> list[str]:
    # split("\n") rather than splitlines(): the latter also splits on U+2028, U+0085 etc.,
    # which can occur inside a sentence and would shift every later line number.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _column_indices(path: Path, header: list[str], columns: tuple[str, str, str]) -> list[int]:
    missing = [name for name in columns if name not in header]
    if missing:
        raise NliInputError(
            f"{path}: missing column(s) {missing}; the header has {header}, "
            f"expected it to contain {list(columns)}"
        )
    return [header.index(name) for name in columns]


def read_header_tsv(
    path: Path, columns: tuple[str, str, str], labels: Mapping[str, str]
) -> ParsedFile:
    """TAB-separated with a header line; ``columns`` = (premise, hypothesis, label) names."""
    lines = _lines(read_utf8(path))
    if not lines:
        raise NliInputError(f"{path}: empty file, expected a header with columns {list(columns)}")
    header = [name.strip() for name in lines[0].split("\t")]
    p, h, lab = _column_indices(path, header, columns)
    parsed = ParsedFile([path])
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            parsed.reject(number, "wrong_column_count")
        else:
            parsed.add(number, fields[p], fields[h], fields[lab], labels)
    return parsed


def read_textfooler(path: Path) -> ParsedFile:
    """No header: ``label<TAB>premise<TAB>hypothesis``."""
    parsed = ParsedFile([path])
    for number, line in enumerate(_lines(read_utf8(path)), start=1):
        fields = line.split("\t")
        if len(fields) != 3:
            parsed.reject(number, "wrong_column_count")
        else:
            parsed.add(number, fields[1], fields[2], fields[0], WORD_LABELS)
    return parsed


def read_senteval(path: Path) -> ParsedFile:
    """``<dir>/s1.<split>`` given; ``s2.<split>`` and ``labels.<split>`` read beside it."""
    if not path.name.startswith("s1."):
        raise NliInputError(
            f"{path}: a senteval input is named by its s1 file (s1.<split>), got {path.name!r}"
        )
    split = path.name.removeprefix("s1.")
    files = [path, path.with_name(f"s2.{split}"), path.with_name(f"labels.{split}")]
    columns = [_lines(read_utf8(file)) for file in files]
    counts = {file.name: len(lines) for file, lines in zip(files, columns, strict=True)}
    if len(set(counts.values())) != 1:
        raise NliInputError(f"{path.parent}: SentEval files are not aligned, line counts {counts}")
    parsed = ParsedFile(files)
    for number, (premise, hypothesis, label) in enumerate(zip(*columns, strict=True), start=1):
        parsed.add(number, premise, hypothesis, label, WORD_LABELS)
    return parsed


def read_jsonl(path: Path, columns: tuple[str, str, str], labels: Mapping[str, str]) -> ParsedFile:
    """One JSON object per line; ``columns`` = (premise, hypothesis, label) keys."""
    parsed = ParsedFile([path])
    checked_keys = False
    for number, line in enumerate(_lines(read_utf8(path)), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            parsed.reject(number, "invalid_json")
            continue
        if not checked_keys:
            # The first object stands in for a header: a file keyed differently is the wrong
            # configuration, not a file of malformed rows.
            _column_indices(path, list(row), columns)
            checked_keys = True
        if any(key not in row for key in columns):
            parsed.reject(number, "missing_field")
            continue
        parsed.add(number, row[columns[0]], row[columns[1]], row[columns[2]], labels)
    return parsed


def read_csv(path: Path, columns: tuple[str, str, str], labels: Mapping[str, str]) -> ParsedFile:
    """Comma-separated with a header and RFC 4180 quoting (fields may span lines)."""
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise NliInputError(f"{path}: empty file, expected a header with {list(columns)}")
        p, h, lab = _column_indices(path, header, columns)
        parsed = ParsedFile([path])
        for fields in reader:
            number = reader.line_num  # the line on which the record ends
            if len(fields) != len(header):
                parsed.reject(number, "wrong_column_count")
            else:
                parsed.add(number, fields[p], fields[h], fields[lab], labels)
    except csv.Error as err:
        raise NliInputError(f"{path}: unreadable CSV near line {reader.line_num}: {err}") from None
    return parsed


def read_nli_file(fmt: str, path: Path, generic: GenericSpec | None = None) -> ParsedFile:
    """Read ``path`` as format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "senteval":
        return read_senteval(path)
    if fmt == "textfooler":
        return read_textfooler(path)
    if fmt == "xnli":
        return read_header_tsv(path, ("premise", "hypothesis", "label"), XNLI_LABELS)
    if fmt in ("snli_txt", "mnli_glue"):
        return read_header_tsv(path, ("sentence1", "sentence2", "gold_label"), WORD_LABELS)
    if fmt == "snli_jsonl":
        return read_jsonl(path, ("sentence1", "sentence2", "gold_label"), WORD_LABELS)
    if fmt == "generic":
        spec = generic or GenericSpec()
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return read_csv(path, spec.columns, spec.labels)
        if suffix == ".tsv":
            return read_header_tsv(path, spec.columns, spec.labels)
        if suffix == ".jsonl":
            return read_jsonl(path, spec.columns, spec.labels)
        raise NliInputError(f"{path}: a generic input must end in .csv, .tsv or .jsonl")
    raise NliInputError(f"{path}: unknown NLI format {fmt!r}; expected one of {list(FORMATS)}")
