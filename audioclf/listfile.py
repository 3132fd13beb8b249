"""Split list files: one line per clip, ``<feature-file.npy> <classID> <class-name>``; and the names
of the files preprocessing writes beside them (``<save_dir>/filenames/``).

Fields are separated by single spaces. A field that contains a space (or a quote) is quoted
shell-style (``shlex.quote``), so ``'my clip.npy' 0 'baby cry'`` round-trips; plain names are
written bare, exactly as in the original format.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

SPLITS = ("train", "validation", "evaluation")
# The feature folder: ``<save_dir>/<LISTS_DIR>/`` holds the lists and these files.
LISTS_DIR = "filenames"
LIST_SUFFIX = ".txt"
FEATURE_CONFIG = "feature_config.json"  # feature parameters, class names, split counts
FEATURE_PARAMS_FILE = "feature_params.json"  # the parameters the features on disk were made with
SKIPPED_FILE = "skipped.txt"  # clips not usable, with the reason


def list_path(lists_dir: str | Path, split: str) -> Path:
    """``<lists_dir>/<split>.txt``."""
    return Path(lists_dir) / f"{split}{LIST_SUFFIX}"


@dataclass(frozen=True)
class ListEntry:
    """One line of a split list; ``line_number`` is where it was read (1-based; 0: made in code)."""

    feature_file: str
    class_id: int
    class_name: str
    line_number: int = field(default=0, compare=False)  # for error messages; not part of the entry


class ListFileError(ValueError):
    """A split list that cannot be parsed; the message names the file and line."""


def format_line(entry: ListEntry) -> str:
    """``ListEntry`` -> one list line (no newline)."""
    return " ".join(shlex.quote(str(field)) for field in
                    (entry.feature_file, entry.class_id, entry.class_name))


def parse_line(line: str, path: str | Path = "<list>", line_number: int = 0) -> ListEntry:
    """One list line -> ``ListEntry``; ListFileError naming file and line when malformed."""
    try:
        fields = shlex.split(line)
    except ValueError as error:
        raise ListFileError(f"{path}:{line_number}: cannot parse {line!r} ({error})") from None
    if len(fields) != 3 or not fields[1].lstrip("-").isdigit():
        raise ListFileError(
            f"{path}:{line_number}: expected '<feature-file.npy> <classID> <class-name>' "
            f"(quote names with spaces), got {line!r}")
    return ListEntry(fields[0], int(fields[1]), fields[2], line_number)


def read_list(path: str | Path) -> list[ListEntry]:
    """Read a split list; blank lines are ignored. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path} (run preprocessingBabyCrying.py first?)")
    text = path.read_text(encoding="utf-8")
    return [parse_line(line, path, number)
            for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def render_list(entries: Iterable[ListEntry]) -> str:
    """Entries -> list-file text."""
    return "".join(format_line(entry) + "\n" for entry in entries)
