"""Atomic file writes: a reader sees the old file, nothing, or the complete new file, never half of one.

Every writer in the project that replaces a file another process may read (run summaries, resolved configs, merge
trees, lookup tables, checkpoints) goes through :func:`atomic_write`. Also the file digest and the full-disk test
that several modules share.
"""

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, save: Callable[[Path], object], mode: int | None = None) -> None:
    """``save(tmp)`` writes a temporary file beside ``path``, which is then renamed to ``path``.

    ``mode`` (e.g. ``0o600``) is applied to the temporary file before the rename, so the file never exists with
    looser permissions. The temporary name keeps ``path``'s suffix (``np.save`` and friends look at it).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        save(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as error:
        if error.filename is None:  # a failed write or flush names no file: name the one being written
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, mode: int | None = None) -> None:
    """``text`` into ``path``, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text), mode)


def write_json(path: str | os.PathLike, data, mode: int | None = None) -> None:
    """``data`` as indented JSON (non-JSON values as ``str``), atomically."""
    write_text(path, json.dumps(data, indent=2, default=str), mode)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: A file system with less free space than this counts as full (writers that fail without ENOSPC: SQLite, mmap).
NEARLY_FULL_BYTES = 2**20


def nearly_full(directory: str | os.PathLike) -> bool:
    """Whether the file system of ``directory`` has less than :data:`NEARLY_FULL_BYTES` free (False if unknown)."""
    try:
        return shutil.disk_usage(directory).free < NEARLY_FULL_BYTES
    except OSError:
        return False
