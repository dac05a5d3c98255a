"""Tests for ``python -m embedft.prepare_nli``: readers per format, the triplet policy, drop
accounting, input errors, determinism, atomic writes and the counts on the real NLI files."""

from __future__ import annotations

import csv
import fcntl
import json
import os
from pathlib import Path

import pytest

from embedft.data import prepare_nli
from embedft.data.nli_formats import (
    CONTRADICTION,
    ENTAILMENT,
    NEUTRAL,
    NO_CONSENSUS,
    GenericSpec,
    NliInputError,
    Pair,
    read_nli_file,
)
from embedft.data.prepare_nli import NliSource, group_triplets, prepare
from embedft.paths import data_dir
from embedft.prepare_nli import main
from tests.conftest import run_cli

SNLI_TXT_HEADER = (
    "gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tcaptionID\tpairID\tlabel1\tlabel2\tlabel3\tlabel4\t"
    "label5"
)
GLUE_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)


def snli_txt_row(gold: str, s1: str, s2: str) -> str:
    return "\t".join(
        [gold, "(bp1)", "(bp2)", "(p1)", "(p2)", s1, s2, "c1", "p1", gold, "", "", "", ""]
    )


def glue_row(index: int, s1: str, s2: str, gold: str) -> str:
    return "\t".join([str(index), "1", "1e", "fiction", "(", "(", "(", "(", s1, s2, gold, gold])


def run_one(
    tmp_path: Path, fmt: str, name: str, content: str | bytes, generic: GenericSpec | None = None
) -> tuple[list[tuple[str, ...]], dict]:
    """Write ``content`` to ``tmp_path/name``, prepare it alone; (sorted triplets, source report)."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = tmp_path / "out" / "triplets.csv"
    manifest = prepare([NliSource(name, fmt, path)], out, generic=generic)
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["sent0", "sent1", "hard_neg"]
    return sorted(tuple(r) for r in rows[1:]), manifest["sources"][0]


def test_group_triplets_applies_round_robin_policy_and_counts_every_row():
    # Given P1 with 3 entailments / 2 contradictions, P2 with 1 / 3, one-sided P3 and P4, a
    # hypothesis of P5 labelled both ways, a repeated row, a neutral and a no-consensus row
    rows = [
        ("P1", "a", ENTAILMENT),
        ("P1", "x", CONTRADICTION),
        ("P1", "b", ENTAILMENT),
        ("P1", "n", NEUTRAL),
        ("P1", "y", CONTRADICTION),
        ("P1", "c", ENTAILMENT),
        ("P1", "a", ENTAILMENT),
        ("P1", "m", NO_CONSENSUS),
        ("P2", "d", ENTAILMENT),
        ("P2", "u", CONTRADICTION),
        ("P2", "v", CONTRADICTION),
        ("P2", "w", CONTRADICTION),
        ("P3", "e", ENTAILMENT),
        ("P4", "z", CONTRADICTION),
        ("P5", "h", ENTAILMENT),
        ("P5", "h", CONTRADICTION),
        ("P5", "g", ENTAILMENT),
        ("P5", "k", CONTRADICTION),
    ]
    pairs = [Pair(i + 1, p, h, label) for i, (p, h, label) in enumerate(rows)]

    # When
    triplets, dropped, used = group_triplets(pairs)

    # Then each entailment is used once, contradictions cycle in file order
    assert triplets == [
        ("P1", "a", "x"),
        ("P1", "b", "y"),
        ("P1", "c", "x"),
        ("P2", "d", "u"),
        ("P5", "g", "k"),
    ]
    assert dict(dropped) == {
        "neutral": 1,
        "no_consensus": 1,
        "duplicate_pair": 1,
        "contradiction_unused": 2,
        "premise_without_contradiction": 1,
        "premise_without_entailment": 1,
        "conflicting_labels": 2,
    }
    assert used == 5 + 2 + 2  # P1 a,b,c,x,y; P2 d,u; P5 g,k
    assert used + sum(dropped.values()) == len(rows)


def test_snli_jsonl_counts_malformed_rows_per_reason_with_line_numbers(tmp_path):
    # Given 8 rows: one triplet's worth, a "-" row, a neutral and 4 malformed rows (50%: allowed)
    def row(gold: str, s1: str, s2: str) -> str:
        return json.dumps({"gold_label": gold, "sentence1": s1, "sentence2": s2})

    lines = [
        row("entailment", "A man sleeps.", "A person rests."),
        row("contradiction", "A man sleeps.", "A man runs."),
        row("-", "A man sleeps.", "A man dreams."),
        row("neutral", "A man sleeps.", "A man is tired."),
        "{not json",
        row("entailment", "  ", "Someone."),
        row("maybe", "A dog barks.", "A dog is loud."),
        json.dumps({"sentence1": "A dog barks.", "sentence2": "Quiet."}),
    ]

    # When
    triplets, report = run_one(tmp_path, "snli_jsonl", "snli.jsonl", "\n".join(lines) + "\n")

    # Then
    assert triplets == [("A man sleeps.", "A person rests.", "A man runs.")]
    assert report["rows_read"] == 8
    assert report["rows_used"] == 2
    assert report["rows_dropped"] == {
        "empty_text": 1,
        "invalid_json": 1,
        "missing_field": 1,
        "neutral": 1,
        "no_consensus": 1,
        "unknown_label": 1,
    }
    assert report["malformed_first_lines"] == {
        "empty_text": [6],
        "invalid_json": [5],
        "missing_field": [8],
        "unknown_label": [7],
    }


def test_snli_txt_reads_named_columns_and_rejects_wrong_column_count(tmp_path):
    # Given the official header, a CRLF file, and a row that lost a column
    lines = [
        SNLI_TXT_HEADER,
        snli_txt_row("entailment", "Kids play.", "Children play."),
        snli_txt_row("contradiction", "Kids play.", "Kids sleep."),
        snli_txt_row("contradiction", "Kids play.", "Nobody plays.").rsplit("\t", 1)[0],
    ]

    # When
    triplets, report = run_one(tmp_path, "snli_txt", "snli.txt", "\r\n".join(lines) + "\r\n")

    # Then
    assert triplets == [("Kids play.", "Children play.", "Kids sleep.")]
    assert report["rows_dropped"] == {"wrong_column_count": 1}
    assert report["malformed_first_lines"] == {"wrong_column_count": [4]}


def test_senteval_strips_trailing_space_and_hashes_all_three_files(tmp_path):
    # Given aligned s1/s2/labels files whose lines end with " " (as SentEval's), one empty s2
    (tmp_path / "s2.dev").write_text("A cat sits . \nA dog sits . \n \nA cat is up . \n")
    (tmp_path / "labels.dev").write_text("entailment\ncontradiction\nentailment\nneutral\n")

    # When
    triplets, report = run_one(tmp_path, "senteval", "s1.dev", "A cat sits on a mat . \n" * 4)

    # Then
    assert triplets == [("A cat sits on a mat .", "A cat sits .", "A dog sits .")]
    assert [f["path"].rsplit("/", 1)[-1] for f in report["files"]] == [
        "s1.dev",
        "s2.dev",
        "labels.dev",
    ]
    assert report["rows_dropped"] == {"empty_text": 1, "neutral": 1}
    assert report["malformed_first_lines"] == {"empty_text": [3]}


def test_senteval_misaligned_files_are_an_error(tmp_path):
    # Given labels.dev one line shorter than s1.dev and s2.dev
    (tmp_path / "s1.dev").write_text("P .\nP .\n")
    (tmp_path / "s2.dev").write_text("H .\nK .\n")
    (tmp_path / "labels.dev").write_text("entailment\n")

    # When / Then
    with pytest.raises(NliInputError, match=r"not aligned.*'labels.dev': 1"):
        prepare([NliSource("x", "senteval", tmp_path / "s1.dev")], tmp_path / "o.csv")


def test_mnli_glue_keeps_quotes_literally(tmp_path):
    # Given GLUE rows whose sentences contain '"' (GLUE tsv has no quoting)
    lines = [
        GLUE_HEADER,
        glue_row(0, 'He said "no".', "He spoke.", "entailment"),
        glue_row(1, 'He said "no".', 'He said "yes".', "contradiction"),
        glue_row(2, 'He said "no".', "He was rude.", "neutral"),
    ]

    # When
    triplets, report = run_one(tmp_path, "mnli_glue", "dev_matched.tsv", "\n".join(lines) + "\n")

    # Then
    assert triplets == [('He said "no".', "He spoke.", 'He said "yes".')]
    assert report["rows_dropped"] == {"neutral": 1}


def test_textfooler_and_xnli_formats(tmp_path):
    # Given a header-less TextFooler file with a 2-column row and an XNLI file with label 3
    textfooler = (
        "entailment\tThe sun rises .\tIt is morning .\n"
        "contradiction\tThe sun rises .\tIt is midnight .\n"
        "neutral\tThe sun rises .\n"
    )
    xnli = (
        "id\tpremise\thypothesis\tlabel\n"
        "0\tI went home.\tI left.\t0\n1\tI went home.\tI stayed.\t2\n"
        "2\tI went home.\tI was tired.\t1\n3\tI went home.\tHome.\t3\n"
    )

    # When
    tf_triplets, tf_report = run_one(tmp_path, "textfooler", "mnli_matched", textfooler)
    x_triplets, x_report = run_one(tmp_path, "xnli", "xnli.tsv", xnli)

    # Then
    assert tf_triplets == [("The sun rises .", "It is morning .", "It is midnight .")]
    assert tf_report["rows_dropped"] == {"wrong_column_count": 1}
    assert tf_report["malformed_first_lines"] == {"wrong_column_count": [3]}
    assert x_triplets == [("I went home.", "I left.", "I stayed.")]
    assert x_report["rows_dropped"] == {"neutral": 1, "unknown_label": 1}
    assert x_report["malformed_first_lines"] == {"unknown_label": [5]}


def test_generic_csv_tsv_jsonl_with_configured_columns_and_labels(tmp_path):
    # Given the same 3 pairs as csv (quoted comma and newline), tsv and jsonl (int labels)
    spec = GenericSpec("s1", "s2", "gold", "0", "1", "2")
    csv_text = (
        's1,s2,gold\n"Rain, then sun.",Weather changed.,0\n"Rain, then sun.","Only\nsun.",2\n'
    )
    tsv_text = "gold\ts1\ts2\n0\tA.\tB.\n2\tA.\tC.\n1\tA.\tD.\n"
    jsonl_text = '{"s1": "A.", "s2": "B.", "gold": 0}\n{"s1": "A.", "s2": "C.", "gold": 2}\n'

    # When
    csv_triplets, _ = run_one(tmp_path, "generic", "pairs.csv", csv_text, spec)
    tsv_triplets, tsv_report = run_one(tmp_path, "generic", "pairs.tsv", tsv_text, spec)
    jsonl_triplets, _ = run_one(tmp_path, "generic", "pairs.jsonl", jsonl_text, spec)

    # Then
    assert csv_triplets == [("Rain, then sun.", "Weather changed.", "Only\nsun.")]
    assert tsv_triplets == jsonl_triplets == [("A.", "B.", "C.")]
    assert tsv_report["rows_dropped"] == {"neutral": 1}


def test_duplicate_triplets_across_sources_are_removed_from_the_later_source(tmp_path):
    # Given the same TextFooler file listed twice
    path = tmp_path / "tf"
    path.write_text("entailment\tP .\tE .\ncontradiction\tP .\tC .\n")
    sources = [NliSource("first", "textfooler", path), NliSource("second", "textfooler", path)]

    # When
    manifest = prepare(sources, tmp_path / "o.csv")

    # Then
    assert [s["triplets_built"] for s in manifest["sources"]] == [1, 1]
    assert [s["duplicate_triplets_removed"] for s in manifest["sources"]] == [0, 1]
    assert manifest["triplets_written"] == 1
    assert (tmp_path / "o.csv").read_text() == "sent0,sent1,hard_neg\nP .,E .,C .\n"


def test_mostly_malformed_file_is_an_error_and_nothing_is_written(tmp_path):
    # Given 3 rows of which 2 have the wrong column count (67% > 50%)
    path = tmp_path / "tf"
    path.write_text("entailment\tP .\tE .\nentailment\tP .\ncontradiction\n")
    out = tmp_path / "out" / "o.csv"

    # When / Then
    with pytest.raises(NliInputError, match=r"tf: 2 of 3 rows are malformed.*\[2, 3\]"):
        prepare([NliSource("tf", "textfooler", path)], out)
    assert not out.parent.exists()


def test_non_utf8_file_error_names_file_and_byte_offset(tmp_path):
    # Given an 0xff byte after "entailment\tA\tB\n" (15 bytes) + "contradiction\tA\t" (16)
    path = tmp_path / "latin.tsv"
    path.write_bytes(b"entailment\tA\tB\ncontradiction\tA\t\xff\n")

    # When / Then
    with pytest.raises(NliInputError, match=r"latin\.tsv: not valid UTF-8 at byte offset 31 "):
        prepare([NliSource("x", "textfooler", path)], tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()


def test_missing_columns_error_names_the_columns_and_header(tmp_path):
    # Given an XNLI-like file using GLUE column names, and a csv without the generic label column
    xnli = tmp_path / "x.tsv"
    xnli.write_text("id\tsentence1\tsentence2\tlabel\n0\tA.\tB.\t0\n")
    generic = tmp_path / "g.csv"
    generic.write_text("premise,hypothesis\nA.,B.\n")

    # When / Then
    with pytest.raises(NliInputError, match=r"x\.tsv: missing column\(s\) \['premise', 'hyp"):
        prepare([NliSource("x", "xnli", xnli)], tmp_path / "o.csv")
    with pytest.raises(NliInputError, match=r"g\.csv: missing column\(s\) \['label'\]"):
        prepare([NliSource("g", "generic", generic)], tmp_path / "o.csv")


def _write_pairs(path: Path, n_premises: int) -> None:
    lines = []
    for i in range(n_premises):
        lines += [f"entailment\tP{i} .\tE{i} .", f"contradiction\tP{i} .\tC{i} ."]
    path.write_text("\n".join(lines) + "\n")


def test_same_inputs_and_seed_give_byte_identical_output(tmp_path):
    # Given 20 premises -> 20 triplets
    source = tmp_path / "tf"
    _write_pairs(source, 20)

    def build(name: str, seed: int, fmt: str = "csv") -> tuple[bytes, bytes]:
        out = tmp_path / name
        args = [f"inputs=[textfooler:{source}]", f"out={out}", f"seed={seed}"]
        assert run_cli(main, *args, f"format={fmt}") == 0
        return out.read_bytes(), prepare_nli.manifest_path_for(out).read_bytes()

    # When
    first, again, other_seed = build("a.csv", 7), build("b.csv", 7), build("c.csv", 8)
    parquet, parquet_again = build("a.parquet", 7, "parquet"), build("b.parquet", 7, "parquet")

    # Then the seed only reorders
    assert first[0] == again[0]
    assert first[1] == again[1].replace(b'"b.csv"', b'"a.csv"')
    assert parquet[0] == parquet_again[0]
    assert other_seed[0] != first[0]
    assert sorted(other_seed[0].splitlines()) == sorted(first[0].splitlines())


def test_crash_while_writing_leaves_old_output_and_no_temp_file(tmp_path, monkeypatch):
    # Given an existing output file and a writer that fails after writing part of the file
    source = tmp_path / "in" / "tf"
    source.parent.mkdir()
    _write_pairs(source, 3)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "nli.csv"
    out.write_text("old\n")

    def crash(triplets, path: Path) -> None:
        path.write_text("sent0,sent1,hard_neg\nP0 .,")
        raise OSError("disk full")

    monkeypatch.setitem(prepare_nli.WRITERS, "csv", crash)

    # When / Then
    with pytest.raises(OSError, match="disk full"):
        prepare([NliSource("tf", "textfooler", source)], out)
    assert out.read_text() == "old\n"
    assert os.listdir(out_dir) == ["nli.csv"]


def test_out_naming_an_existing_directory_is_one_error_before_any_work(tmp_path, capsys):
    # Given an input and an out= that is an existing directory
    source = tmp_path / "tf"
    _write_pairs(source, 3)
    out = tmp_path / "data"
    out.mkdir()
    # When
    code = run_cli(main, f"inputs=[textfooler:{source}]", f"out={out}")
    # Then exit 2, one line saying what out= must be, and nothing written anywhere
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"embedft.prepare_nli: error: out={out} is an existing directory; expected a file path "
        f"such as {out / 'nli_triplets.csv'}"
    ]
    assert sorted(os.listdir(tmp_path)) == ["data", "tf"] and os.listdir(out) == []
    # And it comes before the inputs are even looked for
    assert run_cli(main, f"data_dir={tmp_path / 'absent'}", f"out={out}") == 2
    assert "is an existing directory" in capsys.readouterr().err


def test_temp_files_of_a_killed_run_are_removed_but_not_a_live_writers(tmp_path):
    # Given temp files a killed run left (output and manifest) and one a running writer holds
    source = tmp_path / "tf"
    _write_pairs(source, 3)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "nli.csv"
    killed = [out_dir / ".nli.csv.k1ll3d.tmp", out_dir / ".nli.manifest.json.x7q2a.tmp"]
    for path in killed:
        path.write_text("half a file")
    live = out_dir / ".nli.csv.l1ve.tmp"
    live.write_text("being written")
    holder = os.open(live, os.O_RDONLY)  # another open file: its lock is another writer's
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        # When the next run writes the same output
        prepare([NliSource("tf", "textfooler", source)], out)
        # Then the killed run's files are gone and the live writer's file is untouched
        assert sorted(os.listdir(out_dir)) == [".nli.csv.l1ve.tmp", "nli.csv", "nli.manifest.json"]
        assert live.read_text() == "being written"
    finally:
        os.close(holder)


def test_cli_reports_input_errors_with_exit_code_2(tmp_path, capsys):
    # Given a format name that does not exist
    # When
    code = run_cli(main, f"inputs=[snli_csv:{tmp_path / 'x.csv'}]", f"out={tmp_path / 'o.csv'}")

    # Then
    assert code == 2
    assert "expected FORMAT:PATH with FORMAT in" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_default_output_is_under_repo_data_dir_and_follows_format():
    # Given no out= / When / Then
    root = prepare_nli.repo_root()
    assert prepare_nli.output_and_format(None, None) == (root / "data/nli_triplets.csv", "csv")
    assert prepare_nli.output_and_format(None, "parquet") == (
        root / "data/nli_triplets.parquet",
        "parquet",
    )
    assert prepare_nli.output_and_format(Path("x.parquet"), None) == (Path("x.parquet"), "parquet")
    assert prepare_nli.manifest_path_for(root / "data/nli_triplets.csv") == (
        root / "data/nli_triplets.manifest.json"
    )


@pytest.fixture
def nli_data_dir() -> Path:
    base = data_dir()
    if not (base / "nli").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"NLI data missing at {base}/nli (CI=true requires it)")
        pytest.skip(f"NLI data not found at {base}/nli; set EMBEDFT_DATA_DIR")
    return base


def test_real_gold_sets_give_the_verified_triplet_counts(nli_data_dir, tmp_path):
    # Given the default gold sources of ../shared/data/nli
    sources = prepare_nli.default_sources(nli_data_dir)

    # When
    manifest = prepare(sources, tmp_path / "t.csv", base_dir=nli_data_dir)

    # Then: one triplet per entailment of a premise that also has a contradiction. The distinct
    # premises among those triplets are the README's "premises with both E and C": SNLI dev
    # 2943 (+227 extra triplets from premises with several entailments), SNLI test 2921 (+246),
    # XNLI 830 + 1670 = 2500 (exactly one E and one C per premise). The TextFooler MNLI samples
    # are 1000 random pairs each, so few premises have both (30 + 35 premises).
    written = {s["name"]: s["triplets_written"] for s in manifest["sources"]}
    assert written == {
        "snli_dev": 3170,
        "snli_test": 3167,
        "xnli_validation": 830,
        "xnli_test": 1670,
        "mnli_matched": 31,
        "mnli_mismatched": 35,
    }
    assert manifest["triplets_written"] == 8903
    premises = {
        src.name: len({t[0] for t in group_triplets(read_nli_file(src.fmt, src.path).pairs)[0]})
        for src in sources
    }
    assert premises == {
        "snli_dev": 2943,
        "snli_test": 2921,
        "xnli_validation": 830,
        "xnli_test": 1670,
        "mnli_matched": 30,
        "mnli_mismatched": 35,
    }
    for src in manifest["sources"]:
        assert src["malformed_first_lines"] == {}
        assert src["rows_used"] + sum(src["rows_dropped"].values()) == src["rows_read"]
    assert sum(s["rows_read"] for s in manifest["sources"]) == 29166  # README gold total


def test_cli_names_generic_columns_and_labels_as_lists(tmp_path, capsys):
    # Given a generic tsv with its own column names and numeric labels
    source = tmp_path / "pairs.tsv"
    source.write_text("gold\ts1\ts2\n0\tA.\tB.\n2\tA.\tC.\n")
    out = tmp_path / "t.csv"
    given = [f"inputs=[generic:{source}]", "columns=[s1,s2,gold]", f"out={out}"]
    # When the labels are named on the command line / Then the triplet is built from them
    assert run_cli(main, *given, "labels=[0,1,2]") == 0
    assert out.read_text().splitlines() == ["sent0,sent1,hard_neg", "A.,B.,C."]
    # And a label list of the wrong length is one line naming both keys
    assert run_cli(main, *given, "labels=[0,2]") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "embedft.prepare_nli: error: columns=['s1', 's2', 'gold'] and labels=['0', '2'] need 3 "
        "values each"
    )
