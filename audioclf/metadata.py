"""Metadata CSV validation and train/validation/evaluation splitting."""
from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from audioclf.listfile import SPLITS

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("slice_file_name", "classID", "class")
N_FOLDS = 10
TRAIN_FOLDS = range(0, 8)  # of the 10 per-class folds: 8 train, 1 validation, 1 evaluation
VALIDATION_FOLD, EVALUATION_FOLD = 8, 9
GROUP_COLUMN = "group"  # written by tools.datasets; a grouped split uses it when the CSV has it
AUTO_GROUPS, NO_GROUPS = "auto", "none"  # --group_column values: the CSV's `group` column if any / off
_WHOLE_NUMBER = re.compile(r"[0-9]+")


class MetadataError(ValueError):
    """The metadata CSV cannot be used as it is; the message names file, rows and columns."""


def feature_file_of(slice_file_name: str) -> str:
    """The feature file preprocessing writes for a CSV row's ``slice_file_name`` (relative, ``.npy``)."""
    return str(PurePosixPath(slice_file_name).with_suffix(".npy"))


@dataclass(frozen=True)
class Clip:
    """One usable CSV row. ``line`` is the CSV line number (header = line 1)."""

    line: int
    slice_file_name: str
    class_id: int
    class_name: str
    fold: str | None = None
    group: str | None = None  # clips of one group (recording, source file, speaker) share a split

    @property
    def feature_file(self) -> str:
        """Feature path relative to the save dir: the CSV's relative path with ``.npy``."""
        return feature_file_of(self.slice_file_name)


@dataclass(frozen=True)
class Refused:
    """A CSV row that is not processed, with the reason."""

    line: int
    slice_file_name: str
    reason: str


def _lines(rows: pd.Index | list[int]) -> str:
    numbers = [int(row) + 2 for row in rows]
    shown = ", ".join(map(str, numbers[:10])) + (f" (+{len(numbers) - 10} more)" if len(numbers) > 10 else "")
    return f"CSV line{'s' if len(numbers) > 1 else ''} {shown}"


def _check_columns(frame: pd.DataFrame, csv_path: Path) -> None:
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        header = ",".join(map(str, frame.columns))
        separator = next((mark for mark in (";", "\t", "|") if all(column in header.split(mark)
                                                                    for column in REQUIRED_COLUMNS)), None)
        hint = (f" It looks {separator!r}-separated: the metadata CSV must be comma-separated."
                if separator is not None else "")
        raise MetadataError(
            f"{csv_path}: missing required column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, frame.columns))}. The CSV needs "
            f"{', '.join(REQUIRED_COLUMNS)} (extra columns are ignored).{hint}")


def _check_class_ids(frame: pd.DataFrame, csv_path: Path) -> pd.Series:
    ids = pd.to_numeric(frame["classID"].str.strip(), errors="coerce")
    bad = frame.index[ids.isna() | (ids % 1 != 0)]
    if len(bad):
        raise MetadataError(f"{csv_path}: classID must be a whole number at {_lines(bad)}")
    ids = ids.astype(int)
    problems = []
    names_per_id = frame.groupby(ids)["class"].unique()
    for class_id, names in names_per_id.items():
        if len(names) > 1:
            rows = frame.index[(ids == class_id)]
            problems.append(f"classID {class_id} has several class names {sorted(names)} ({_lines(rows)})")
    ids_per_name = ids.groupby(frame["class"]).unique()
    for name, class_ids in ids_per_name.items():
        if len(class_ids) > 1:
            rows = frame.index[frame["class"] == name]
            problems.append(f"class {name!r} has several classIDs {sorted(class_ids.tolist())} ({_lines(rows)})")
    present = sorted(set(ids))
    expected = list(range(len(present)))
    if present != expected:
        missing = sorted(set(range(max(present) + 1)) - set(present))
        extra = [i for i in present if i < 0 or i >= len(present)]
        rows = frame.index[ids.isin(extra)]
        problems.append(
            f"classIDs must be contiguous from 0 (0..{len(present) - 1} for {len(present)} classes); "
            f"found {present}" + (f", missing {missing}" if missing else "")
            + (f"; out-of-range IDs at {_lines(rows)}" if len(rows) else "")
            + ". Renumber the classID column.")
    blank = frame.index[frame["class"].str.strip() == ""]
    if len(blank):
        problems.append(f"empty class name at {_lines(blank)}; every class needs a name")
    broken = frame.index[frame["class"].map(_has_line_break)]
    if len(broken):
        problems.append(f"line break inside a class name at {_lines(broken)} (the split lists hold one clip "
                        "per line)")
    if problems:
        raise MetadataError(f"{csv_path}: " + "; ".join(problems))
    return ids


def _check_duplicates(frame: pd.DataFrame, csv_path: Path) -> None:
    duplicated = frame["slice_file_name"].duplicated(keep=False)
    if duplicated.any():
        names = sorted(frame.loc[duplicated, "slice_file_name"].unique())
        raise MetadataError(
            f"{csv_path}: duplicate slice_file_name {names[:5]} at {_lines(frame.index[duplicated])}; "
            "each clip must appear once")


def refusal_reason(slice_file_name: str, column: str = "slice_file_name", folder: str = "--data_dir") -> str | None:
    """Why a path from a CSV's ``column`` may not be read (absolute, escaping ``folder``, empty), else None."""
    if not slice_file_name.strip():
        return f"refused: empty {column}"
    if os.path.isabs(slice_file_name) or PurePosixPath(slice_file_name).is_absolute() \
            or (len(slice_file_name) > 1 and slice_file_name[1] == ":"):
        return f"refused: absolute path; {column} must be relative to {folder}"
    path = PurePosixPath(slice_file_name.replace("\\", "/"))
    if ".." in path.parts:
        return f"refused: '..' in path escapes {folder}"
    if not path.name:
        return f"refused: {column} names a folder ({slice_file_name!r}), not a file"
    if _has_line_break(slice_file_name):
        return f"refused: line break in {column} (the split lists hold one clip per line)"
    return None


def _has_line_break(text: str) -> bool:
    """Whether ``text`` holds a character that ends a line (``\\n``, ``\\r``, U+2028 ...: ``str.splitlines``'s)."""
    return len((text + "x").splitlines()) > 1


def is_whole_number(text: str | None) -> bool:
    """True for ``"7"`` or ``"10"``; False for ``"1/../.."``, ``"-1"``, ``""`` (folds that name folders)."""
    return text is not None and _WHOLE_NUMBER.fullmatch(text) is not None


def fold_refusal_reason(fold: str | None) -> str | None:
    """Why a ``fold`` may not name the folder ``fold<N>/`` (``--fold_subdirs``), else None."""
    if not is_whole_number(fold):
        return (f"refused: fold {fold!r} is not a whole number; with --fold_subdirs clips are read from "
                "--data_dir/fold<N>/")
    return None


def _check_feature_collisions(clips: list[Clip], csv_path: Path) -> None:
    by_feature: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        by_feature[clip.feature_file].append(clip)
    clashes = [group for group in by_feature.values() if len(group) > 1]
    if clashes:
        detail = "; ".join(
            f"{', '.join(c.slice_file_name for c in group)} (CSV lines {', '.join(str(c.line) for c in group)})"
            for group in clashes[:5])
        raise MetadataError(f"{csv_path}: these clips would write the same feature file: {detail}")


def _read_frame(csv_path: Path, **read_args) -> pd.DataFrame:
    if not csv_path.is_file():
        raise MetadataError(f"metadata CSV not found: {csv_path}")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True, **read_args)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MetadataError(f"{csv_path}: cannot parse as CSV ({error})") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def resolve_group_column(csv_path: str | Path, requested: str | None) -> str | None:
    """The column a grouped split uses: ``auto`` is ``group`` when the CSV has it; ``none``/None is off."""
    if requested is None or requested == NO_GROUPS:
        return None
    if requested != AUTO_GROUPS:
        return requested
    return GROUP_COLUMN if GROUP_COLUMN in _read_frame(Path(csv_path), nrows=0).columns else None


def _read_groups(frame: pd.DataFrame, column: str, csv_path: Path) -> pd.Series:
    if column not in frame.columns:
        raise MetadataError(
            f"{csv_path}: --group_column {column!r} is not a column of the CSV (found "
            f"{', '.join(map(str, frame.columns))}); name one of those, or pass --group_column {NO_GROUPS}")
    groups = frame[column].str.strip()
    empty = frame.index[groups == ""]
    if len(empty):
        log.warning("%s: empty %s at %s: each of those clips is a group of its own", csv_path, column,
                    _lines(empty))
        groups = groups.where(groups != "", [f"<line {int(row) + 2}>" for row in frame.index])
    return groups


def read_metadata(csv_path: str | Path, group_column: str | None = None
                  ) -> tuple[list[Clip], list[Refused], list[str]]:
    """Validate the metadata CSV; return (usable clips, refused rows, class names by ID).

    ``group_column`` (a column name, or None) fills each clip's ``group`` for a grouped split.
    """
    csv_path = Path(csv_path)
    frame = _read_frame(csv_path)
    _check_columns(frame, csv_path)
    if frame.empty:
        raise MetadataError(f"{csv_path}: no rows")
    class_ids = _check_class_ids(frame, csv_path)
    _check_duplicates(frame, csv_path)
    class_names = [str(name) for name in frame.groupby(class_ids)["class"].first()]
    groups = _read_groups(frame, group_column, csv_path) if group_column else None
    has_fold = "fold" in frame.columns
    clips, refused = [], []
    for row, name, class_id, class_name in zip(frame.index, frame["slice_file_name"], class_ids, frame["class"]):
        line = int(row) + 2
        reason = refusal_reason(name)
        if reason:
            log.warning("%s line %d: %s (%s)", csv_path, line, reason, name)
            refused.append(Refused(line, name, reason))
            continue
        fold = str(frame.at[row, "fold"]).strip() if has_fold else None
        group = str(groups[row]) if groups is not None else None
        clips.append(Clip(line, name, int(class_id), str(class_name), fold, group))
    _check_feature_collisions(clips, csv_path)
    return clips, refused, class_names


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------

def deal_folds(clips: list[Clip], n_classes: int, seed: int, n_folds: int = N_FOLDS) -> list[list[Clip]]:
    """Seeded shuffle, then each class dealt round-robin into ``n_folds`` folds (stratified)."""
    rng = np.random.default_rng(seed)
    folds: list[list[Clip]] = [[] for _ in range(n_folds)]
    for class_id in range(n_classes):
        members = [clip for clip in clips if clip.class_id == class_id]
        for position, index in enumerate(rng.permutation(len(members))):
            folds[position % n_folds].append(members[index])
    return [sorted(fold, key=lambda clip: clip.line) for fold in folds]


def deal_groups(clips: list[Clip], n_classes: int, seed: int, n_folds: int = N_FOLDS) -> list[list[Clip]]:
    """Whole groups into ``n_folds`` folds, stratified by class as far as the groups allow.

    Greedy, largest group first (equal sizes in a seeded order): each group goes to the fold
    that holds the smallest share of the group's classes so far; ties go to the fold with the
    fewest clips, then to a seeded random one. A group is never split across folds.
    """
    rng = np.random.default_rng(seed)
    members: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        members[clip.group].append(clip)
    keys = list(members)
    names = [keys[index] for index in rng.permutation(len(keys))]
    names.sort(key=lambda name: -len(members[name]))  # stable: the seeded order breaks size ties
    class_totals = np.bincount([clip.class_id for clip in clips], minlength=n_classes)  # (n_classes,)
    weights = 1.0 / np.maximum(class_totals, 1)
    fold_counts = np.zeros((n_folds, n_classes))  # clips of each class per fold so far
    fold_sizes = np.zeros(n_folds)
    folds: list[list[Clip]] = [[] for _ in range(n_folds)]
    for name in names:
        group_counts = np.bincount([clip.class_id for clip in members[name]], minlength=n_classes)
        present = np.flatnonzero(group_counts)
        share = fold_counts[:, present] @ (group_counts[present] * weights[present])  # (n_folds,)
        fold = int(np.lexsort((rng.random(n_folds), fold_sizes, share))[0])  # last key sorts first
        fold_counts[fold] += group_counts
        fold_sizes[fold] += len(members[name])
        folds[fold].extend(members[name])
    return [sorted(fold, key=lambda clip: clip.line) for fold in folds]


def _deal(clips: list[Clip], n_classes: int, seed: int, by_group: bool) -> list[list[Clip]]:
    return deal_groups(clips, n_classes, seed) if by_group else deal_folds(clips, n_classes, seed)


def split_random(clips: list[Clip], n_classes: int, seed: int, by_group: bool = False) -> dict[str, list[Clip]]:
    """Seeded shuffle, then per class into 10 folds: folds 0-7 train, 8 validation, 9 evaluation.

    Deterministic for a seed and a set of clips; each class is split on its own (stratified),
    so every split holds ~80/10/10 % of every class. ``by_group`` deals whole groups instead
    (``deal_groups``): no group straddles two splits, and the shares hold as far as group sizes allow.
    """
    folds = _deal(clips, n_classes, seed, by_group)
    train = sorted((clip for fold in TRAIN_FOLDS for clip in folds[fold]), key=lambda clip: clip.line)
    return {"train": train, "validation": folds[VALIDATION_FOLD], "evaluation": folds[EVALUATION_FOLD]}


def check_folds(clips: list[Clip], validation_folds: list[str], evaluation_folds: list[str]) -> None:
    """MetadataError unless the named folds are distinct and in the CSV's ``fold`` column (preprocessing
    checks this before extracting any feature)."""
    if clips and clips[0].fold is None:
        raise MetadataError("--val_fold/--eval_fold need a 'fold' column in the metadata CSV")
    overlap = set(validation_folds) & set(evaluation_folds)
    if overlap:
        raise MetadataError(f"fold(s) {sorted(overlap)} named for both validation and evaluation")
    present = {clip.fold for clip in clips}
    unknown = [fold for fold in validation_folds + evaluation_folds if fold not in present]
    if unknown:
        raise MetadataError(f"fold(s) {unknown} not found in the CSV's fold column (found {sorted(present)})")


def split_by_fold(clips: list[Clip], validation_folds: list[str], evaluation_folds: list[str],
                  n_classes: int = 0, seed: int = 42, by_group: bool = False) -> dict[str, list[Clip]]:
    """Use the CSV's own ``fold`` column (e.g. UrbanSound8K's official folds or speakers).

    With evaluation folds but no validation folds, validation is one tenth of every class of
    the remaining clips (seeded; whole groups with ``by_group``), so every other fold still
    trains: e.g. hold out one speaker for evaluation and train on all the others.
    """
    check_folds(clips, validation_folds, evaluation_folds)
    if not validation_folds:
        evaluation = [clip for clip in clips if clip.fold in evaluation_folds]
        rest = _deal([clip for clip in clips if clip.fold not in evaluation_folds], n_classes, seed, by_group)
        train = sorted((clip for fold in rest[:-1] for clip in fold), key=lambda clip: clip.line)
        return {"train": train, "validation": rest[-1], "evaluation": evaluation}
    splits: dict[str, list[Clip]] = {split: [] for split in SPLITS}
    for clip in clips:
        split = ("validation" if clip.fold in validation_folds
                 else "evaluation" if clip.fold in evaluation_folds else "train")
        splits[split].append(clip)
    return splits


def straddling_groups(splits: dict[str, list[Clip]]) -> dict[str, list[str]]:
    """Groups whose clips sit in more than one split -> those splits (empty for a grouped split)."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for split, members in splits.items():
        for clip in members:
            if clip.group is not None:
                splits_of[clip.group].add(split)
    return {group: [split for split in SPLITS if split in names]
            for group, names in splits_of.items() if len(names) > 1}


def empty_split_warnings(splits: dict[str, list[Clip]], class_names: list[str], by_group: bool = False
                         ) -> list[str]:
    """One message per class that some split gets none of (e.g. a class with < 10 clips or groups)."""
    enough = "a class needs 10 or more groups for every split to get some" if by_group \
        else "10 or more clips give every split some"
    messages = []
    for class_id, name in enumerate(class_names):
        counts = {split: sum(clip.class_id == class_id for clip in members) for split, members in splits.items()}
        empty = [split for split, count in counts.items() if count == 0]
        if empty and sum(counts.values()):
            messages.append(
                f"class {name!r} (classID {class_id}) has {sum(counts.values())} usable clip(s): "
                f"the {' and '.join(empty)} split(s) get none of it ({enough})")
    return messages
