"""One command-line style for every entry point: Hydra ``key=value`` overrides on a typed schema.

Each ``python -m embedft.<tool>`` (run, evaluate, export, encode, report, prepare_nli,
model.sources) is a ``@hydra.main`` app whose root config ``conf/<tool>.yaml`` (model.sources:
``conf/sources.yaml``) starts from the tool's dataclass schema, so a misspelt key or a wrongly
typed value is refused while composing, before anything loads. ``@hydra.main`` finds ``conf/``
by absolute path (``embedft.paths.conf_dir``), so that ``main()`` also runs when its module is
imported rather than run (tests call it in-process). Values follow Hydra's override grammar: one
holding ``=``, ``,``, a space, a non-ASCII character or ``$`` is quoted, e.g.
``'ckpt="multirun/x/0_model=gemma/checkpoints/best.ckpt"'``.

- ``--help`` prints that tool's keys only: ``help_text`` (the help template of every root config,
  ``conf/hydra/help/embedft.yaml``) lists each key of the composed config with its value and the
  comment on its schema field, then the config groups this tool composes.
- Tools that write where they are told (export, encode, report, prepare_nli, model.sources)
  run in the current directory with no ``.hydra/`` copy and no log file (their root configs say
  so) and log to stderr (``log_to_stderr``), so stdout carries only their output.
- ``tool_config`` turns the composed config into the schema's object: a required key left out
  (``???``) is one line naming it, value checks are the schema's ``__post_init__``.
- ``one_line_errors``: an error the tool expects (a missing file, a bad value) ends it with one
  line on stderr, ``embedft.<tool>: error: <message>``, and exit code 2.
- ``override`` writes ``key=value`` as one shell word in that grammar (the commands a run prints).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import logging
import re
import shlex
import sys
import textwrap
import tokenize
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf

from embedft.paths import conf_dir

T = TypeVar("T")

FOOTER = (
    "Values use Hydra's override grammar: quote one holding = , spaces, non-ASCII or $, e.g.\n"
    "  'ckpt=\"multirun/x/0_model=gemma/checkpoints/best.ckpt\"'\n"
    "-m runs a sweep (key=a,b); --cfg job prints the composed config; --hydra-help: Hydra's flags."
)
_KEY_WIDTH = 32  # the comment column of the key listing


def help_text(root: DictConfig) -> str:
    """The ``--help`` of the tool whose composed config (with its ``hydra`` node) is ``root``."""
    schema = OmegaConf.get_type(root)
    schema = schema if dataclasses.is_dataclass(schema) else None
    values = OmegaConf.to_container(root, resolve=False)
    values.pop("hydra", None)
    choices = OmegaConf.select(root, "hydra.runtime.choices", default=None) or {}
    groups = {g: c for g, c in choices.items() if not g.startswith("hydra/")}
    # A group left unselected (encode's model=null) is listed with the groups, not as a key.
    values = {k: v for k, v in values.items() if not (k in groups and v is None)}
    header = (inspect.getdoc(schema) or "") if schema else ""
    lines = [header, "", "Keys (key=value, as now set):"]
    lines += _key_lines(values, schema, "")
    if groups:
        lines += ["", "Config groups (group=option):"]
        comments = field_comments(schema) if schema else {}
        for group, chosen in sorted(groups.items()):
            options = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
            about = f"{comments[group]}; " if group in comments else ""
            lines.append(
                _row(f"{group}={chosen or 'null'}", about + "one of: " + ", ".join(options))
            )
    lines += ["", FOOTER]
    # Hydra fills the template with string.Template: a literal $ must be written $$.
    return "\n".join(lines).replace("$", "$$") + "\n"


def _key_lines(values: dict[str, Any], schema: type | None, prefix: str) -> list[str]:
    """One line per leaf key (scalars first, then one block per nested group)."""
    comments = field_comments(schema) if schema else {}
    nested = _nested_schemas(schema) if schema else {}
    lines = []
    for key, value in values.items():
        if not (isinstance(value, dict) and key in nested):
            lines.append(_row(f"{prefix}{key}={_render(value)}", comments.get(key, "")))
    for key, value in values.items():
        if isinstance(value, dict) and key in nested:
            summary = (inspect.getdoc(nested[key]) or "").split("\n")[0]
            lines += ["", f"{prefix}{key}: {summary}"]
            lines += _key_lines(value, nested[key], f"{prefix}{key}.")
    return lines


def _row(left: str, comment: str) -> str:
    if not comment:
        return f"  {left}"
    return f"  {left:<{_KEY_WIDTH}} {comment}" if len(left) < _KEY_WIDTH else f"  {left}  {comment}"


def _render(value: Any) -> str:
    """A value as it would be written on the command line (``???``: required, not set)."""
    if isinstance(value, str):
        return value or "''"
    dumped = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return dumped.removesuffix("...").strip()


def _nested_schemas(schema: type) -> dict[str, type]:
    """Fields of ``schema`` whose type is (optionally) another dataclass: its groups."""
    nested = {}
    for name, hint in typing.get_type_hints(schema).items():
        for candidate in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(candidate):
                nested[name] = candidate
    return nested


@functools.cache
def field_comments(schema: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field line in ``schema``'s source: its help text."""
    try:
        source = textwrap.dedent(inspect.getsource(schema))
    except (OSError, TypeError):  # no source (a frozen app, a class built at run time)
        return {}
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    found = {}
    for number, line in enumerate(source.splitlines(), start=1):
        field = re.match(r"    (\w+)\s*:", line)  # `name: type = default` in the class body
        if field and number in comments:
            found[field.group(1)] = comments[number]
    return found


def tool_config(dcfg: DictConfig, schema: type[T]) -> T:
    """The schema object of a composed config; raises ``ConfigError`` naming what is wrong."""
    from embedft.config import ConfigError, to_object

    missing = sorted(OmegaConf.missing_keys(dcfg))
    if missing:
        raise ConfigError(f"missing required key(s): {', '.join(f'{k}=...' for k in missing)}")
    return to_object(dcfg, schema)


def override(key: str, value: object) -> str:
    """``key=value`` as one shell word that Hydra reads back as the string ``str(value)``.

    Left unquoted when Hydra's grammar already reads it so; else Hydra-quoted (``"..."``, a quote
    and the backslashes before it escaped) and then quoted for the shell.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    text = str(value)
    try:
        plain = OverridesParser.create().parse_override(f"{key}={text}").value() == text
    except HydraException:
        plain = False
    if not plain:
        escaped = re.sub(r'(\\*)("|$)', lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), text)
        text = f'"{escaped}"'
    return shlex.quote(f"{key}={text}")


def log_to_stderr() -> None:
    """INFO logs to stderr: stdout is the tool's output (``output=-`` writes embeddings there)."""
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


@contextmanager
def one_line_errors(tool: str, *expected: type[BaseException]) -> Iterator[None]:
    """Turn an ``expected`` error into ``<tool>: error: <message>`` on stderr and exit code 2."""
    try:
        yield
    except expected as err:
        print(f"{tool}: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
