"""Build SimCSE-style training triplets (premise, entailment, contradiction) from offline NLI files.

Run (command line: ``embedft/prepare_nli.py``, ``--help`` lists the keys)::

    python -m embedft.prepare_nli                      # gold sets under the data dir
    python -m embedft.prepare_nli format=parquet seed=7 \\
        inputs=[textfooler:../shared/data/nli/MNLI/textfooler_gold_sample/mnli_matched]

Output: ``data/nli_triplets.csv`` under the repository root (columns ``sent0,sent1,hard_neg``, as
SimCSE's ``nli_for_simcse.csv``; this is what ``data=local`` trains on) or ``.parquet``, and a
manifest ``<stem>.manifest.json`` beside it: input files with sha256, rows read, rows dropped per
reason, the first malformed line numbers, triplets written per source. Both files are written to
a temp file in the same directory and moved into place with ``os.replace``, after every input
has been read and checked, so a bad input or a crash never leaves a half file under the final
name. Each temp file is locked while it is written (``embedft.tempfiles``): the next run removes
those a killed run left, never those of a run still writing. An ``out`` that is a directory is
refused before anything is read. Same inputs and seed give byte-identical files (no timestamps;
the seed only shuffles).

Triplet policy, per source file (premises are not matched across files):

- Pairs are grouped by exact premise text (after whitespace strip), in order of first appearance.
  A repeated (premise, hypothesis, label) row is dropped (``duplicate_pair``); a hypothesis
  labelled both entailment and contradiction for one premise is dropped in both rows
  (``conflicting_labels``).
- For a premise with entailments E1..Em and contradictions C1..Ck (file order), entailment Ei
  gives one triplet (premise, Ei, C((i-1) mod k + 1)): round-robin. So each entailment is used
  exactly once, as in SimCSE (one triplet per (premise, entailment)), and every contradiction is
  used at least once when k <= m; the k - m left over otherwise count as
  ``contradiction_unused``. No cross product: it would over-weight premises with many
  hypotheses.
- A premise without a contradiction drops its entailments (``premise_without_contradiction``)
  and vice versa (``premise_without_entailment``). Neutral rows are ``neutral``; SNLI's ``-``
  is ``no_consensus``. Per source, rows_read = sum(rows_dropped) + rows_used.
- A triplet identical to one from an earlier source is removed (``duplicate_triplets_removed``).
- Finally the triplets are shuffled with ``random.Random(seed)``, so any prefix of the file
  (e.g. a debug subset) mixes all sources.

Default inputs (``DEFAULT_SOURCES``): every gold-labelled NLI set in the data dir, i.e. SNLI
dev+test (SentEval copy), XNLI-en validation+test and the TextFooler MNLI gold samples. Left out:
the felipessalvatore SNLI ``dev.csv`` (an untokenized duplicate of SNLI dev; read it with
``inputs=[generic:PATH]`` instead of SentEval dev if untokenized text is wanted), the
``NOISY_LABELS`` MNLI file (labels are not gold) and SICK (it is the SICK-R evaluation set).

Bad input: malformed rows (see ``nli_formats``) are counted per reason; a file with more than
half its rows malformed, no rows, non-UTF-8 bytes or missing columns raises ``NliInputError``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from embedft.data.nli_formats import (
    ENTAILMENT,
    FORMATS,
    NEUTRAL,
    NO_CONSENSUS,
    GenericSpec,
    NliInputError,
    Pair,
    ParsedFile,
    read_nli_file,
)
from embedft.paths import repo_root
from embedft.tempfiles import locked_temp_file, remove_abandoned_temp_files

COLUMNS = ("sent0", "sent1", "hard_neg")
DEFAULT_OUT = Path("data") / "nli_triplets.csv"
MANIFEST_VERSION = 1
FIRST_LINES_REPORTED = 5
MAX_MALFORMED_FRACTION = 0.5
POLICY = (
    "per premise: each entailment once, with a contradiction chosen round-robin in file order; "
    "exact duplicate triplets removed; shuffled with the seed"
)

# (name, format, path under the data dir): the gold-labelled NLI sets, see the module docstring.
DEFAULT_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("snli_dev", "senteval", "nli/SNLI/SentEval/SNLI/s1.dev"),
    ("snli_test", "senteval", "nli/SNLI/SentEval/SNLI/s1.test"),
    ("xnli_validation", "xnli", "nli/XNLI-en/xnli_validation_en.tsv"),
    ("xnli_test", "xnli", "nli/XNLI-en/xnli_test_en.tsv"),
    ("mnli_matched", "textfooler", "nli/MNLI/textfooler_gold_sample/mnli_matched"),
    ("mnli_mismatched", "textfooler", "nli/MNLI/textfooler_gold_sample/mnli_mismatched"),
)

Triplet = tuple[str, str, str]


@dataclass(frozen=True)
class NliSource:
    """One input: a display name, its format (``nli_formats.FORMATS``) and its path."""

    name: str
    fmt: str
    path: Path


def group_triplets(pairs: Iterable[Pair]) -> tuple[list[Triplet], Counter[str], int]:
    """Apply the triplet policy to one source's pairs: (triplets, dropped per reason, rows used)."""
    dropped: Counter[str] = Counter()
    seen: set[tuple[str, str, str]] = set()
    by_premise: dict[str, tuple[list[str], list[str]]] = {}
    for pair in pairs:
        if pair.label == NEUTRAL:
            dropped["neutral"] += 1
        elif pair.label == NO_CONSENSUS:
            dropped["no_consensus"] += 1
        elif (pair.premise, pair.hypothesis, pair.label) in seen:
            dropped["duplicate_pair"] += 1
        else:
            seen.add((pair.premise, pair.hypothesis, pair.label))
            entailments, contradictions = by_premise.setdefault(pair.premise, ([], []))
            (entailments if pair.label == ENTAILMENT else contradictions).append(pair.hypothesis)

    triplets: list[Triplet] = []
    used = 0
    for premise, (entailments, contradictions) in by_premise.items():
        both = set(entailments) & set(contradictions)
        if both:
            dropped["conflicting_labels"] += 2 * len(both)
            entailments = [h for h in entailments if h not in both]
            contradictions = [h for h in contradictions if h not in both]
        if not contradictions:
            dropped["premise_without_contradiction"] += len(entailments)
        elif not entailments:
            dropped["premise_without_entailment"] += len(contradictions)
        else:
            k = len(contradictions)
            triplets.extend((premise, h, contradictions[i % k]) for i, h in enumerate(entailments))
            dropped["contradiction_unused"] += max(0, k - len(entailments))
            used += len(entailments) + min(k, len(entailments))
    return triplets, +dropped, used  # unary + drops zero counts


def _check_malformed(source: NliSource, parsed: ParsedFile) -> None:
    if parsed.rows_read == 0:
        raise NliInputError(f"{source.path}: no data rows (format {source.fmt})")
    bad = parsed.malformed_count
    if bad > MAX_MALFORMED_FRACTION * parsed.rows_read:
        first = {reason: lines[:FIRST_LINES_REPORTED] for reason, lines in parsed.malformed.items()}
        raise NliInputError(
            f"{source.path}: {bad} of {parsed.rows_read} rows are malformed (more than "
            f"{MAX_MALFORMED_FRACTION:.0%}); is {source.fmt!r} the right format? "
            f"First lines per reason: {first}"
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _display(path: Path, base: Path | None) -> str:
    resolved = path.resolve()
    if base is not None and resolved.is_relative_to(base.resolve()):
        return resolved.relative_to(base.resolve()).as_posix()
    return resolved.as_posix()


def _write_csv(triplets: Sequence[Triplet], path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(triplets)


def _write_parquet(triplets: Sequence[Triplet], path: Path) -> None:
    import pyarrow as pa  # imported here: csv output needs no pyarrow
    import pyarrow.parquet as pq

    table = pa.table({name: [t[i] for t in triplets] for i, name in enumerate(COLUMNS)})
    pq.write_table(table, path)


WRITERS: dict[str, Callable[[Sequence[Triplet], Path], None]] = {
    "csv": _write_csv,
    "parquet": _write_parquet,
}


def _write_temp(tmp: Path, write: Callable[[Path], None]) -> None:
    """Write via ``write`` into ``tmp``, a locked temp file beside the final path (same
    filesystem, so os.replace is atomic), and flush it to disk."""
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the output is an ordinary data file


def manifest_path_for(out: Path) -> Path:
    return out.with_name(f"{out.stem}.manifest.json")


def prepare(
    sources: Sequence[NliSource],
    out: Path,
    *,
    fmt: str = "csv",
    seed: int = 7,
    generic: GenericSpec | None = None,
    base_dir: Path | None = None,
) -> dict:
    """Read and check every source, build the triplets, write ``out`` and its manifest.

    Returns the manifest. ``base_dir`` (the data dir) shortens the file paths in the manifest.
    """
    if fmt not in WRITERS:
        raise NliInputError(f"output format {fmt!r} is not one of {list(WRITERS)}")
    if not sources:
        raise NliInputError("no NLI inputs given")
    check_output_path(out)
    parsed_all = []
    for source in sources:  # everything is read and checked before anything is written
        parsed = read_nli_file(source.fmt, source.path, generic)
        _check_malformed(source, parsed)
        parsed_all.append(parsed)

    seen: set[Triplet] = set()
    triplets: list[Triplet] = []
    reports = []
    for source, parsed in zip(sources, parsed_all, strict=True):
        built, dropped, used = group_triplets(parsed.pairs)
        for reason, lines in parsed.malformed.items():
            dropped[reason] += len(lines)
        fresh = []
        for triplet in built:
            if triplet not in seen:
                seen.add(triplet)
                fresh.append(triplet)
        triplets.extend(fresh)
        reports.append(
            {
                "name": source.name,
                "format": source.fmt,
                "files": [
                    {"path": _display(f, base_dir), "sha256": _sha256(f)} for f in parsed.files
                ],
                "rows_read": parsed.rows_read,
                "rows_used": used,
                "rows_dropped": dict(sorted(dropped.items())),
                "malformed_first_lines": {
                    reason: lines[:FIRST_LINES_REPORTED]
                    for reason, lines in sorted(parsed.malformed.items())
                },
                "triplets_built": len(built),
                "duplicate_triplets_removed": len(built) - len(fresh),
                "triplets_written": len(fresh),
            }
        )
    random.Random(seed).shuffle(triplets)

    out.parent.mkdir(parents=True, exist_ok=True)
    manifest_path = manifest_path_for(out)
    for final in (out, manifest_path):  # temp files of a killed run (kill -9, OOM)
        remove_abandoned_temp_files(final)
    with locked_temp_file(out) as tmp_out, locked_temp_file(manifest_path) as tmp_manifest:
        _write_temp(tmp_out, lambda p: WRITERS[fmt](triplets, p))
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "output": out.name,
            "output_format": fmt,
            "output_sha256": _sha256(tmp_out),
            "columns": list(COLUMNS),
            "seed": seed,
            "policy": POLICY,
            "triplets_written": len(triplets),
            "sources": reports,
        }
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        _write_temp(tmp_manifest, lambda p: p.write_text(text, encoding="utf-8"))
        os.replace(tmp_out, out)
        os.replace(tmp_manifest, manifest_path)
    return manifest


def check_output_path(out: Path) -> None:
    """Refuse, before any input is read, an output path that cannot become a file."""
    if out.is_dir():
        raise NliInputError(
            f"out={out} is an existing directory; expected a file path such as "
            f"{out / DEFAULT_OUT.name}"
        )
    if manifest_path_for(out).is_dir():
        raise NliInputError(
            f"out={out}: its manifest path {manifest_path_for(out)} is an existing directory"
        )
    existing = next((p for p in out.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NliInputError(f"out={out}: {existing} is a file, not a directory")


def default_sources(base: Path) -> list[NliSource]:
    """``DEFAULT_SOURCES`` under ``base``; every one must exist (a partial data dir is an error,
    not a silently smaller training set)."""
    if not (base / "nli").is_dir():
        raise NliInputError(
            f"data dir {base}: no nli/ folder; set data_dir= or EMBEDFT_DATA_DIR, "
            "or name inputs with inputs=[FORMAT:PATH]"
        )
    sources = [NliSource(name, fmt, base / rel) for name, fmt, rel in DEFAULT_SOURCES]
    missing = [str(s.path) for s in sources if not s.path.is_file()]
    if missing:
        raise NliInputError(
            f"data dir {base}: missing NLI gold file(s) {missing}; set data_dir= or "
            "EMBEDFT_DATA_DIR, or name inputs with inputs=[FORMAT:PATH]"
        )
    return sources


def parse_input_spec(spec: str, base: Path | None = None) -> NliSource:
    """``FORMAT:PATH`` -> NliSource; a relative PATH is relative to the current directory."""
    fmt, sep, path = spec.partition(":")
    if not sep or not path or fmt not in FORMATS:
        raise NliInputError(
            f"inputs: {spec!r}: expected FORMAT:PATH with FORMAT in {list(FORMATS)}"
        )
    return NliSource(_display(Path(path), base), fmt, Path(path))


def summary(manifest: dict, out: Path) -> str:
    """What was read, written and dropped per source, as a table for the terminal."""
    sources = manifest["sources"]
    width = max(len("source"), *(len(src["name"]) for src in sources))
    rows = [f"{'source':<{width}} {'rows':>7} {'triplets':>9}  dropped"]
    for src in sources:
        dropped = ", ".join(f"{k}={v}" for k, v in src["rows_dropped"].items()) or "-"
        rows.append(
            f"{src['name']:<{width}} {src['rows_read']:>7} {src['triplets_written']:>9}  {dropped}"
        )
    total_rows = sum(src["rows_read"] for src in sources)
    rows.append(f"{'total':<{width}} {total_rows:>7} {manifest['triplets_written']:>9}")
    rows.append(f"wrote {out} and {manifest_path_for(out)}")
    return "\n".join(rows)


def output_and_format(out: Path | None, fmt: str | None) -> tuple[Path, str]:
    """The output path and format: a missing one follows the other (default csv)."""
    if out is None:
        fmt = fmt or "csv"
        return repo_root() / DEFAULT_OUT.with_suffix(f".{fmt}"), fmt
    suffix_fmt = out.suffix.lower().lstrip(".")
    if fmt is None:
        fmt = suffix_fmt if suffix_fmt in WRITERS else "csv"
    elif suffix_fmt in WRITERS and suffix_fmt != fmt:
        raise NliInputError(f"out={out} has a .{suffix_fmt} suffix but format={fmt}")
    return out, fmt


def generic_spec(columns: Sequence[str], labels: Sequence[str]) -> GenericSpec:
    """``generic`` inputs' premise/hypothesis/label names and entailment/neutral/contradiction
    values."""
    if len(columns) != 3 or len(labels) != 3:
        raise NliInputError(f"columns={list(columns)} and labels={list(labels)} need 3 values each")
    return GenericSpec(*columns, *labels)
