"""Embed texts from a file or stdin: ``python -m embedft.encode ckpt=PATH input=FILE output=FILE``.

``ckpt`` is a training checkpoint or an export directory (``embedft.model.load``); ``model=NAME``
instead embeds with the base model ``conf/model/NAME.yaml`` (no LoRA). ``input``: ``.txt`` (one
text per line, every line, blank ones too, so row i is line i), ``.jsonl`` (the text under
``text_field``) or ``-`` (stdin); ``output``: ``.npy`` (float32, (N, H)), ``.jsonl`` (each input
record plus ``"embedding"``) or ``-`` (JSON lines on stdout). ``--help`` lists every key.

Embeddings are L2-normalised. A progress bar and logs go to stderr. Texts are encoded longest
first, each distinct text once (``embedft.eval.encoder.encode_texts``), and written in input
order. Errors (a bad checkpoint, an input that is not UTF-8 text, an unwritable output) are one
line on stderr and exit code 2, before any model loads where they can be.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from embedft.cli import log_to_stderr, one_line_errors, tool_config
from embedft.config import ConfigError, ModelConfig
from embedft.paths import conf_dir

log = logging.getLogger("embedft.encode")

INPUT_FORMATS = ("auto", "txt", "jsonl")
OUTPUT_SUFFIXES = (".npy", ".jsonl")


@dataclass
class EncodeConfig:
    """python -m embedft.encode ckpt=PATH input=FILE output=FILE   (or model=NAME, not ckpt)

    Embed texts from a file or stdin (input=-) into .npy, .jsonl or stdout (output=-):
    L2-normalised, one row per input line or record, in input order.
    """

    ckpt: str | None = None  # a training checkpoint (.ckpt) or an export dir (embedft.export)
    model: ModelConfig | None = None  # instead of ckpt: the base model conf/model/NAME.yaml
    input: str = MISSING  # .txt: a text per line (row i = line i); .jsonl: records; -: stdin
    output: str = MISSING  # .npy: float32 (N, H); .jsonl: records + "embedding"; -: stdout
    text_field: str = "text"  # the jsonl field holding the text
    input_format: str = "auto"  # auto (by extension; stdin: txt) | txt | jsonl
    batch_size: int = 64  # texts per forward pass
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    max_length: int = 0  # 0: the model's own; else cut texts to this many tokens (>= 2)
    trust_remote_code: bool = False  # true: ckpt's model may run code it ships (never from ckpt)

    def __post_init__(self) -> None:
        if bool(self.ckpt) == (self.model is not None):
            raise ConfigError("give exactly one of ckpt=PATH or model=NAME")
        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(
                f"input_format must be one of {list(INPUT_FORMATS)}, got {self.input_format!r}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length == 1 or self.max_length < 0:
            raise ConfigError(f"max_length must be 0 (the model's) or >= 2, got {self.max_length}")


ConfigStore.instance().store(name="encode_schema", node=EncodeConfig)


def read_records(source: str, input_format: str, text_field: str) -> list[dict[str, Any]]:
    """Input records (each with ``text_field``), from a file or ``-`` (stdin)."""
    fmt = input_format
    if fmt == "auto":
        fmt = "jsonl" if source != "-" and Path(source).suffix == ".jsonl" else "txt"
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {list(INPUT_FORMATS)}, got {input_format!r}")
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
        raise ValueError(f"output={output}: expected a file ending in {OUTPUT_SUFFIXES} or -")
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


def encode(cfg: EncodeConfig) -> int:
    """Read, embed, write; returns the number of texts embedded."""
    from embedft.eval.encoder import encode_texts
    from embedft.model.load import load_embedder

    check_output(cfg.output)
    records = read_records(cfg.input, cfg.input_format, cfg.text_field)
    if not records:
        raise ValueError(f"input={cfg.input}: no texts to embed")
    embedder = load_embedder(
        cfg.model or cfg.ckpt, cfg.device, trust_remote_code=cfg.trust_remote_code
    )
    if cfg.max_length:
        embedder.max_length = cfg.max_length
    texts = [r[cfg.text_field] for r in records]
    embeddings = encode_texts(embedder, texts, cfg.batch_size, show_progress=True)
    write_output(cfg.output, records, embeddings.numpy())
    log.info("embedded %d texts (dim %d) -> %s", len(texts), embeddings.shape[1], cfg.output)
    return len(texts)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="encode")
def main(dcfg: DictConfig) -> None:
    log_to_stderr()
    with one_line_errors("embedft.encode", FileNotFoundError, ValueError):
        encode(tool_config(dcfg, EncodeConfig))


if __name__ == "__main__":
    main()
