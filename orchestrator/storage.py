"""Study storage I/O: a local directory or a URI (s3://, gs://...), through pyarrow's file systems."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def absolute(path: str) -> str:
    """A URI as given; a local path made absolute (a ``ray job`` runs in a temporary working directory)."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def filesystem(path: str) -> tuple[Any, str]:
    """``(pyarrow file system, path inside it)`` for a local path or a URI."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def storage_uri(storage: str, fs_path: str) -> str:
    """The URI of ``fs_path`` (a path on the file system of ``storage``, as Ray reports it) under ``storage``."""
    if "://" not in storage:
        return fs_path
    root = filesystem(storage)[1].rstrip("/")
    return storage.rstrip("/") + fs_path[len(root):] if fs_path.startswith(root) else fs_path


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = filesystem(path)
    return bool(fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound)


def read_text(path: str) -> str:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as fh:
        return str(fh.read().decode())


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, creating its directory."""
    fs, p = filesystem(path)
    fs.create_dir(p.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(p) as fh:
        fh.write(text.encode())


@contextmanager
def local_dir(path: str) -> Iterator[str]:
    """A local directory with the contents of directory ``path`` (a local path or a URI such as s3://).

    A local path is used in place; a remote one is copied to a temporary directory removed afterwards.
    """
    if "://" not in path:
        yield str(Path(path).expanduser())
        return
    import pyarrow.fs

    fs, where = filesystem(path)
    with tempfile.TemporaryDirectory(prefix="arat_ckpt_") as tmp:
        pyarrow.fs.copy_files(where, tmp, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield tmp


def read_bytes(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes from the start of ``path`` (a local path or a URI)."""
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as fh:
        return bytes(fh.read(limit))


def delete(path: str) -> None:
    """Remove the file ``path`` if it is there."""
    import pyarrow.fs

    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound:
        fs.delete_file(p)
