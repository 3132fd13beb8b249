"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""
from __future__ import annotations

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
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 honours the umask, unlike tempfile's 0o600.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
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
