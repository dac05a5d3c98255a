"""Embed texts from a file or stdin: ``python -m embedft.encode ckpt=PATH input=FILE output=FILE``.

Arguments (key=value):
  ckpt=PATH          a training checkpoint (.ckpt) or an export directory (python -m embedft.export)
  model=NAME         instead of ckpt: the base model conf/model/NAME.yaml, without LoRA
  input=FILE|-       .txt: one text per line (every line, blank ones too, so row i is line i);
                     .jsonl: one JSON object per line, text under text_field; -: stdin
  output=FILE|-      .npy: float32 array (N, H); .jsonl: each input record plus "embedding";
                     -: JSON lines on stdout
  text_field=text    the jsonl field holding the text
  input_format=auto  auto (by extension; stdin: txt) | txt | jsonl
  batch_size=64      texts per forward pass
  device=auto        auto (cuda when available) | cpu | cuda | cuda:N
  max_length=0       0: the model's own; else cut texts to this many tokens
  trust_remote_code=false   true: let the model run code shipped with it (never read from ckpt)

Embeddings are L2-normalised. A progress bar goes to stderr. Texts are encoded longest first,
each distinct text once (``embedft.eval.encoder.encode_texts``), and written in input order.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from embedft.export import UsageError, parse_args, require

log = logging.getLogger("embedft.encode")

DEFAULTS: dict[str, Any] = {
    "ckpt": None,
    "model": None,
    "input": None,
    "output": None,
    "text_field": "text",
    "input_format": "auto",
    "batch_size": 64,
    "device": "auto",
    "max_length": 0,
    "trust_remote_code": False,
}
OUTPUT_SUFFIXES = (".npy", ".jsonl")


def read_records(source: str, input_format: str, text_field: str) -> list[dict[str, Any]]:
    """Input records (each with ``text_field``), from a file or ``-`` (stdin)."""
    fmt = input_format
    if fmt == "auto":
        fmt = "jsonl" if source != "-" and Path(source).suffix == ".jsonl" else "txt"
    if fmt not in ("txt", "jsonl"):
        raise UsageError(f"input_format must be auto, txt or jsonl, got {input_format!r}")
    if source == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    elif not Path(source).is_file():
        raise FileNotFoundError(f"input={source}: file not found")
    else:
        data = Path(source).read_bytes()
    text = _as_text(data, source, fmt)
    # newline=None: \r\n and \r end lines too, as open() in text mode reads them.
    name = "stdin" if source == "-" else source
    return _parse(io.StringIO(text, newline=None), fmt, text_field, name)


def _as_text(data: bytes | str, source: str, fmt: str) -> str:
    """``data`` as text, or one error naming the input, where it fails and what is expected."""
    expected = "UTF-8 JSON lines" if fmt == "jsonl" else "UTF-8 text with one sentence per line"
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise ValueError(
                f"input={source}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                f"{err.start}, line {line}); expected {expected}"
            ) from None
    if "\x00" in data:
        line = data.count("\n", 0, data.index("\x00")) + 1
        raise ValueError(f"input={source}: binary (NUL byte on line {line}); expected {expected}")
    return data


def _parse(handle: TextIO, fmt: str, text_field: str, name: str) -> list[dict[str, Any]]:
    if fmt == "txt":
        return [{text_field: line.rstrip("\r\n")} for line in handle]
    records = []
    for lineno, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise ValueError(
                f"{name} line {lineno}: expected an object with a string {text_field!r} field "
                "(set text_field=...)"
            )
        records.append(record)
    return records


def check_output(output: str) -> None:
    """Fail before any model loads when the output cannot be written."""
    if output == "-":
        return
    path = Path(output)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise UsageError(f"output={output}: expected a file ending in {OUTPUT_SUFFIXES} or -")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output={output}: directory {path.parent} does not exist")


def write_output(output: str, records: list[dict[str, Any]], embeddings: np.ndarray) -> None:
    if output != "-" and Path(output).suffix == ".npy":
        np.save(output, embeddings.astype(np.float32))
        return
    handle = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")
    try:
        for record, row in zip(records, embeddings, strict=True):
            handle.write(json.dumps({**record, "embedding": row.tolist()}, ensure_ascii=False))
            handle.write("\n")
    finally:
        if handle is not sys.stdout:
            handle.close()


def base_model_config(name: str) -> Any:
    """The ModelConfig of conf/model/NAME.yaml (validated)."""
    from embedft.model.sources import model_config_by_name

    try:
        return model_config_by_name(name)
    except ValueError as err:
        raise UsageError(str(err)) from err


def load(args: dict[str, Any]) -> Any:
    """The Embedder that ``ckpt=`` or ``model=`` names, on ``device``."""
    import torch

    from embedft.export import load_embedder
    from embedft.model.embedder import build_embedder

    device = args["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args["ckpt"]:
        embedder = load_embedder(args["ckpt"], device, trust_remote_code=args["trust_remote_code"])
    else:
        embedder = build_embedder(base_model_config(args["model"]), None, device=device)
    if args["max_length"]:
        embedder.max_length = args["max_length"]
    return embedder


def encode(args: dict[str, Any]) -> int:
    """Read, embed, write; returns the number of texts embedded."""
    from embedft.eval.encoder import encode_texts

    if bool(args["ckpt"]) == bool(args["model"]):
        raise UsageError("give exactly one of ckpt=PATH or model=NAME")
    require(args, "input", "output")
    if args["batch_size"] < 1:
        raise UsageError(f"batch_size must be >= 1, got {args['batch_size']}")
    if args["max_length"] == 1 or args["max_length"] < 0:
        raise UsageError(f"max_length must be 0 (the model's) or >= 2, got {args['max_length']}")
    check_output(args["output"])
    records = read_records(args["input"], args["input_format"], args["text_field"])
    if not records:
        raise ValueError(f"input={args['input']}: no texts to embed")
    embedder = load(args)
    texts = [r[args["text_field"]] for r in records]
    embeddings = encode_texts(embedder, texts, args["batch_size"], show_progress=True)
    write_output(args["output"], records, embeddings.numpy())
    log.info("embedded %d texts (dim %d) -> %s", len(texts), embeddings.shape[1], args["output"])
    return len(texts)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, __doc__)
        encode(args)
    except (UsageError, FileNotFoundError, ValueError) as err:
        print(f"embedft.encode: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
