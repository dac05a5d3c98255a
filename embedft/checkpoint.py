"""Read an embedft training checkpoint without trusting it: ``load_checkpoint(path, key="ckpt")``.

Every checkpoint embedft reads (encode, export, evaluate, resume) goes through here. Checkpoints
travel between people and clusters, and a pickle can run any code while it loads, so they are
read with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only (what
``EmbeddingModule.on_save_checkpoint`` and Lightning write). Every failure is one
``CheckpointError`` line naming the argument, the file, the problem and what was expected::

    ckpt=evil.ckpt: refused: loading it would run code (it calls posix.system); an embedft
    checkpoint holds plain data only (tensors, numbers, strings, lists, dicts); expected a .ckpt
    file written by python -m embedft.run
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

EXPECTED = "expected a .ckpt file written by python -m embedft.run"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = b"\x80"  # the legacy format starts with a pickle protocol opcode
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe or not embedft's; the message says which."""


def load_checkpoint(path: str | Path, *, key: str = "ckpt") -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors on the CPU, memory-mapped when the format allows).

    ``key`` is the argument that named the file (``ckpt``, ``resume``), for the error message.
    Raises ``CheckpointError`` unless the file is a plain-data dict with an ``embedft_config``.
    """
    path = Path(path)
    where = f"{key}={path}"
    if not path.exists():
        raise CheckpointError(f"{where}: file not found; {EXPECTED}")
    if path.is_dir():
        raise CheckpointError(f"{where}: is a directory; {EXPECTED}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        raise CheckpointError(f"{where}: cannot be read ({err.strerror}); {EXPECTED}") from err
    if not head:
        raise CheckpointError(f"{where}: the file is empty; {EXPECTED}")
    is_zip = head.startswith(_ZIP_MAGIC)
    if not is_zip and not head.startswith(_PICKLE_PROTO):
        kind = "a text file" if _looks_like_text(head) else "not a PyTorch file"
        raise CheckpointError(f"{where}: {kind}, not a checkpoint; {EXPECTED}")
    try:
        with warnings.catch_warnings():
            # A foreign pickle protocol is reported as the error below, not as a warning too.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except MemoryError:
        raise
    except Exception as err:  # torch raises many types for bad files; each becomes one line
        raise CheckpointError(f"{where}: {_why(err, is_zip)}; {EXPECTED}") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("embedft_config"), dict):
        raise CheckpointError(
            f"{where}: a PyTorch file but not an embedft checkpoint (no 'embedft_config' "
            f"entry); {EXPECTED}"
        )
    return ckpt


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not just a character cut at the end of the sample
            return False
        text = head[: err.start].decode("utf-8")
    return "\x00" not in text


def _why(err: Exception, is_zip: bool) -> str:
    """One clause saying what is wrong, from whatever ``torch.load`` raised."""
    full = str(err)
    refused = _REFUSED_GLOBAL.search(full)
    if refused:
        return (
            f"refused: loading it would run code (it calls {refused.group(1)}); an embedft "
            "checkpoint holds plain data only (tensors, numbers, strings, lists, dicts)"
        )
    # torch wraps the unpickler's own message in a long explanation; the cause says what failed.
    detail = _first_sentence(str(err.__context__ or err) if "Weights only" in full else full)
    if "Weights only" in full:
        return f"refused by torch.load(weights_only=True) ({detail}): corrupt or not plain data"
    if is_zip:
        return f"truncated or corrupt ({type(err).__name__}: {detail})"
    return f"not a readable PyTorch checkpoint ({type(err).__name__}: {detail})"


def _first_sentence(text: str, limit: int = 120) -> str:
    line = " ".join(text.split()).split(". ")[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."
