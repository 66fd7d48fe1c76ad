"""YAML from files and command-line values, read without trusting them.

A config file or a ``--set`` value is refused, with a one-line :class:`~arat_train.config.ConfigError`, when it is
larger than a config could sensibly be, is not UTF-8 text, uses YAML aliases (``*name``: a few nested aliases
expand to billions of nodes, the "billion laughs"), or nests deeper than any config does. Nothing is expanded or
built before these checks pass, so a hostile file costs at most the time to read its first bytes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError

MAX_FILE_BYTES = 256 * 1024  # a preset or training config is a few KB
MAX_VALUE_BYTES = 16 * 1024  # one --set value
MAX_DEPTH = 32  # mappings and lists inside each other; a config nests four levels


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases and bounding the nesting depth while the node tree is composed."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(f"YAML aliases (*name) are not allowed{_where(mark)}; write the value out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep{_where(self.peek_event().start_mark)}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    """A structure the strict loader refuses (raised from inside PyYAML's composer)."""


def _where(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err).splitlines()[0]
    return f"{problem}{_where(getattr(err, 'problem_mark', None))}"


def load_yaml(data: bytes | str, field: str, *, source: str | None = None,
              max_bytes: int = MAX_VALUE_BYTES) -> Any:
    """Parse ``data`` (YAML text) strictly; a refusal raises :class:`ConfigError` for ``field``, naming the file
    ``source`` when the text came from one."""
    what = source or "the value"
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise ConfigError(field, f"{what} is {len(raw):,} bytes or more; at most {max_bytes:,} are accepted")
    if b"\x00" in raw:
        raise ConfigError(field, f"{what} is not text (it holds NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(field, f"{what} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                                 f"{err.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as err:
        raise ConfigError(field, f"{source}: {err}" if source else str(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(field, f"{what} is not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise ConfigError(field, f"{what} nests too deeply") from None


def read_yaml_file(path: str | Path, field: str, *, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Read and parse the YAML file ``path`` strictly (a regular file of at most ``max_bytes``).

    A special file (a FIFO, ``/dev/zero``, a directory) is refused before it is opened, so reading never blocks.
    """
    try:
        info = os.stat(path)
    except OSError as err:
        raise ConfigError(field, f"cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(field, f"{path} is not a regular file")
    if info.st_size > max_bytes:
        raise ConfigError(field, f"{path} is {info.st_size:,} bytes; a config file is at most {max_bytes:,}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as err:
        raise ConfigError(field, f"cannot read {path}: {err.strerror}") from None
    return load_yaml(data, field, source=str(path), max_bytes=max_bytes)
