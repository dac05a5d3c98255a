"""Readers of STS files: one function per file format, each returning the scored pairs.

A reader takes the paths of one task split, in the order its row in ``embedft.eval.tasks`` lists
them, and returns ``(sentences1, sentences2, scores)``:

=======================  ======================================================================
``read_input_gold``      SemEval/SentEval: ``STS.input.*.txt`` + ``STS.gs.*.txt`` file pairs
``read_stsb``            STS Benchmark csv (``sts-{test,dev,train}.csv``)
``read_biosses``         BIOSSES (blagec copy): sentences on consecutive lines + a score file
``read_sick``            SICK.txt with a header naming its columns
=======================  ======================================================================

Errors are ``StsDataError`` naming the file (and line) and the expected layout; a gold file whose
line count disagrees with its input file is an error, never a silent truncation. Standard library
only, so the task table can import the readers cheaply.

    >>> from pathlib import Path
    >>> from embedft.eval.readers import read_sick
    >>> s1, s2, scores = read_sick(Path("sts/SICK-R/praguna_sick_dataset/SICK.txt"))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from pathlib import Path

Columns = tuple[list[str], list[str], list[float]]  # sentences1, sentences2, gold scores


class StsDataError(ValueError):
    """An STS file is missing or malformed; the message names the path and the expected layout."""


def read_input_gold(*paths: Path) -> Columns:
    """SemEval STS files ``input_1, gold_1, input_2, gold_2, ...``, pairs concatenated in order.

    Input: ``s1<TAB>s2[<TAB>...]`` a line; gold: one score a line, aligned with the input. A blank
    gold line marks an unscored distractor pair (STS15/16) and is skipped, as SentEval and MTEB do.
    """
    if not paths or len(paths) % 2:
        raise ValueError(f"read_input_gold needs (input, gold) file pairs, got {len(paths)} paths")
    s1, s2, scores = [], [], []
    for input_path, gold_path in zip(paths[0::2], paths[1::2], strict=True):
        a, b, gold = _read_input_gold_pair(input_path, gold_path)
        s1.extend(a)
        s2.extend(b)
        scores.extend(gold)
    return s1, s2, scores


def read_stsb(path: Path) -> Columns:
    """STS Benchmark csv: TAB-separated, no header: genre, file, year, id, score, s1, s2[, ...]."""
    layout = "TAB-separated, no header: genre file year id score sentence1 sentence2 [extra]"
    s1, s2, scores = [], [], []
    with _require(path, layout).open(encoding="utf-8", newline="") as f:
        # QUOTE_NONE: sentences contain '"'; some rows carry 2 extra licence/source columns.
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) < 7:
                raise StsDataError(f"{path}:{lineno}: {len(row)} columns, expected >= 7 ({layout})")
            scores.append(_score(row[4], path, lineno))
            s1.append(row[5])
            s2.append(row[6])
    return s1, s2, scores


def read_biosses(sent_path: Path, gold_path: Path) -> Columns:
    """blagec copy: sentence pairs on consecutive lines (2 per pair), one score per line."""
    sentences = _lines(sent_path, "one sentence per line, pair i on lines 2i+1 and 2i+2")
    golds = _lines(
        gold_path, f"one score per line, pair i on line i+1 (sentences: {sent_path.name})"
    )
    if len(sentences) != 2 * len(golds):
        raise StsDataError(
            f"{sent_path} has {len(sentences)} lines but {gold_path} has {len(golds)} scores; "
            "expected 2 sentence lines per score"
        )
    scores = [_score(g, gold_path, i) for i, g in enumerate(golds, start=1)]
    return sentences[0::2], sentences[1::2], scores


def read_sick(path: Path) -> Columns:
    """SICK.txt: TAB-separated with a header naming sentence_A, sentence_B, relatedness_score."""
    layout = "TAB-separated with header pair_ID sentence_A sentence_B relatedness_score ..."
    header, *rows = _lines(path, layout)
    names = header.split("\t")
    wanted = ("sentence_A", "sentence_B", "relatedness_score")
    missing = [n for n in wanted if n not in names]
    if missing:
        raise StsDataError(f"{path}: header lacks columns {missing}; expected {layout}")
    ia, ib, ir = (names.index(n) for n in wanted)
    s1, s2, scores = [], [], []
    for lineno, line in enumerate(rows, start=2):
        cols = line.split("\t")
        if len(cols) != len(names):
            raise StsDataError(f"{path}:{lineno}: {len(cols)} columns, header has {len(names)}")
        s1.append(cols[ia])
        s2.append(cols[ib])
        scores.append(_score(cols[ir], path, lineno))
    return s1, s2, scores


def _read_input_gold_pair(input_path: Path, gold_path: Path) -> Columns:
    inputs = _lines(input_path, "one 'sentence1<TAB>sentence2' pair per line")
    golds = _lines(gold_path, f"one gold score per line, aligned with {input_path.name}")
    if len(inputs) != len(golds):
        raise StsDataError(
            f"{gold_path} has {len(golds)} lines but {input_path} has {len(inputs)}; "
            "expected one gold line (score or blank) per input pair"
        )
    s1, s2, scores = [], [], []
    for lineno, (pair, gold) in enumerate(zip(inputs, golds, strict=True), start=1):
        if not gold.strip():
            continue  # unscored distractor pair
        cols = pair.split("\t")
        if len(cols) < 2:
            raise StsDataError(
                f"{input_path}:{lineno}: expected 'sentence1<TAB>sentence2', got {pair[:80]!r}"
            )
        s1.append(cols[0])
        s2.append(cols[1])
        scores.append(_score(gold, gold_path, lineno))
    return s1, s2, scores


def _require(path: Path, layout: str) -> Path:
    if not path.is_file():
        raise StsDataError(f"STS file not found: {path} (expected {layout})")
    return path


def _lines(path: Path, layout: str) -> list[str]:
    return _require(path, layout).read_text(encoding="utf-8").splitlines()


def _score(text: str, path: Path, lineno: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise StsDataError(f"{path}:{lineno}: score {text!r} is not a number") from None
