"""Atomic file writes: a reader sees the old file or the new one, never a partial one.

An output that cannot be written (a read-only folder, a folder where a file should go, a file
where a folder should be) raises ``OutputPathError``, a ValueError whose one line names the path,
so every script reports it like any other bad input.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort; not all platforms allow it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class OutputPathError(ValueError):
    """An output that cannot be written where it was asked for; the message names the path and why."""


def _why_unwritable(error: OSError) -> str:
    if isinstance(error, IsADirectoryError):
        return "it is a folder"
    if isinstance(error, (NotADirectoryError, FileExistsError)):
        return "a part of its folder path is a file"
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable"
    return error.strerror or str(error)


def make_folder(folder: str | os.PathLike[str], what: str = "folder") -> Path:
    """``folder`` created with its parents (fine if it exists); OutputPathError naming it when it cannot be."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"cannot create the {what} {folder}: it is a file; choose a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(f"cannot create the {what} {folder}: {_why_unwritable(error)}; "
                              "choose a path in a writable folder") from None
    return folder


def check_writable(path: str | os.PathLike[str], what: str = "output") -> None:
    """OutputPathError naming ``path`` unless a file could be written there (before slow work starts).

    Refused: a folder at ``path``, a file where one of its folders should be, a folder that exists
    but is not writable. Folders that do not exist yet are fine (``atomic_write`` creates them).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"cannot write the {what} {path}: it is a folder; give a file name")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"cannot write the {what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write the {what} {path}: {existing} is not writable; choose another path")


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[Any], None],
    check: Callable[[Path], None] | None = None,
    durable: bool = True,
) -> Path:
    """Write via ``write(binary_file)`` to a temp file beside ``path``, fsync, then rename.

    ``check(temp_path)``, if given, runs before the rename; if it raises, ``path`` is untouched.
    Readers see the old file or the new one, never a partial one. ``durable=False`` skips the
    fsyncs (still atomic; for many small files that a re-run would recompute anyway).
    """
    path = Path(path)
    make_folder(path.parent)
    check_writable(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 honours the umask, unlike tempfile's 0o600.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise OutputPathError(f"cannot write {path}: {_why_unwritable(error)}; "
                              "choose a path in a writable folder") from None
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            if durable:
                file.flush()
                os.fsync(file.fileno())
        if check is not None:
            check(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: temp file in the same folder, then rename."""
    return atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_save_npy(path: str | os.PathLike[str], array: Any) -> Path:
    """``np.save`` to ``path`` atomically (no fsync): never a truncated ``.npy``."""
    return atomic_write(path, lambda file: np.save(file, array), durable=False)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
