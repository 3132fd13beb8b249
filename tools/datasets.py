"""From downloaded corpora to the pipeline's metadata CSV, in one command.

    python -m tools.datasets esc50 --root ESC-50-master --out data/esc50.csv
    python -m tools.datasets esc50 donateacry --root ESC-50-master --root donateacry-corpus \\
        --target babycry --out data/babycry.csv

One ``NAME`` per corpus (``urbansound8k``, ``esc50``, ``audioset``, ``donateacry``, ``folders``),
each with its ``--root`` in the same order; several are merged into one CSV. Columns written:

    slice_file_name  path of the clip relative to the data folder printed at the end: pass it to
                     preprocessing as --data_dir (the deepest folder holding every corpus's audio)
    classID, class   0..K-1 and the name; with --target: 0 = other, 1 = the target
    fold             the corpus's own fold (UrbanSound8K 1-10, ESC-50 1-5), empty elsewhere
    group            <source>:<recording id>, unique across corpora: clips of one recording share
                     a split when preprocessing deals groups (it uses this column automatically)
    source, label    which corpus, and the corpus's own class name
    ...              each corpus's extra columns (fsID, salience, src_file, take, ytid, ...)

Bad input (a missing metadata file, an unknown class name, clips listed but absent, duplicate
rows) is reported with its file and line; what is usable is still written, and every dropped row
is listed in ``<out>.dropped.tsv``.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import io
import logging
import os
import re
import shlex
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from audioclf.files import OutputPathError, atomic_write_text
from audioclf.frontend import AUDIO_EXTENSIONS
from audioclf.metadata import GROUP_COLUMN, is_whole_number, refusal_reason
from audioclf.config import Params
from audioclf.runtime import setup_logging

log = logging.getLogger("datasets")
REPO = Path(__file__).resolve().parents[1]

OTHER = "other"  # class 0 of a --target (binary) CSV
BASE_COLUMNS = ("slice_file_name", "classID", "class", "fold", GROUP_COLUMN, "source", "label")
DROPPED_SUFFIX = ".dropped.tsv"
EXAMPLES = 3  # rows named per kind of problem in the log; all of them go to the dropped file

# A --target / --classes name stands for each corpus's own name of the same sound.
ALIASES = {
    "babycry": ("crying_baby", "Baby cry, infant cry", "baby_cry", "cry", "crying"),
    "dog": ("dog_bark", "Dog", "Bark"),
    "siren": ("Siren",),
    "car_horn": ("Vehicle horn, car horn, honking",),
    "laughter": ("laughing", "Laughter"),
}
WHOLE_CORPUS = {"babycry": ("donateacry",)}  # every clip of these corpora is that sound


@dataclass(frozen=True)
class Recipe:
    """A recipe of configs/ made for a CSV this tool writes, and the split flags of its preprocessing command."""

    config: str  # relative to the repository, e.g. "configs/esc50.json"
    split_flags: tuple[str, ...] = ()  # e.g. the corpus's official validation and evaluation folds


# One corpus adapted as it is (every class): its recipe, with the folds the README's command holds out.
CORPUS_RECIPES = {"esc50": Recipe("configs/esc50.json", ("--val_fold", "4", "--eval_fold", "5")),
                  "urbansound8k": Recipe("configs/urbansound8k.json", ("--val_fold", "9", "--eval_fold", "10"))}
# A --target CSV (the target vs other) of corpora other than AudioSet: split by group. (An AudioSet one
# needs a copy of the recipe with longer clips: README "AudioSet".)
TARGET_RECIPES = {"babycry": Recipe("configs/babycry.json")}

US8K_META = Path("metadata") / "UrbanSound8K.csv"
US8K_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
ESC50_META = Path("meta") / "esc50.csv"
ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
AUDIOSET_LABELS = "class_labels_indices.csv"
AUDIOSET_LABEL_COLUMNS = ("index", "mid", "display_name")
AUDIOSET_SEGMENTS_GLOB = "*segments*.csv"
DONATEACRY_FOLDER = "donateacry_corpus_cleaned_and_updated_data"
# <app instance uuid>-<unix time>-<app version>-<gender>-<age>-<reason> (the corpus's README)
DONATEACRY_NAME = re.compile(r"(?P<uuid>[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})-(?P<time>\d+)"
                             r"-(?P<version>[0-9.]+)-(?P<gender>[mf])-(?P<age>\d+)-(?P<reason>[a-z]+)")
# A downloaded AudioSet clip: [Y]<YTID>[_<start>[_<end>]] (YouTube IDs have 11 characters).
AUDIOSET_STEM = re.compile(r"(?P<ytid>[A-Za-z0-9_-]{11})(?:_(?P<start>\d+(?:\.\d+)?)(?:_(?P<end>\d+(?:\.\d+)?))?)?")


class DatasetError(ValueError):
    """Nothing usable can be written; the message says why and what to do."""


class CorpusError(DatasetError):
    """One corpus cannot be read at all (e.g. its metadata file is missing)."""


@dataclass
class Row:
    """One clip listed by a corpus. ``labels``: the corpus's class names for it (AudioSet: several).

    ``path`` is None when no file was found for it (``missing`` says where it was looked for).
    """

    path: Path | None
    labels: tuple[str, ...]
    group: str
    where: str
    fold: str = ""
    extras: dict[str, str] = field(default_factory=dict)
    missing: str = ""


@dataclass(frozen=True)
class Dropped:
    """Something left out of the CSV: ``where`` is file:line (or a file), ``reason`` says why."""

    source: str
    where: str
    reason: str
    kind: str = "bad row"


@dataclass
class Corpus:
    """What one adapter read: its clips, every class name it defines (in its order), what it dropped.

    ``name`` is the layout (``esc50``), ``source`` the name written in the CSV (``esc50``, or
    ``folders2`` for a second tree of the same layout).
    """

    name: str
    source: str
    audio_root: Path
    vocabulary: list[str]
    vocabulary_file: str
    rows: list[Row] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def drop(self, where: str, reason: str, kind: str = "bad row") -> None:
        """Record a row (or file) left out."""
        self.dropped.append(Dropped(self.source, where, reason, kind))


@dataclass
class AdapterOptions:
    """Per-corpus switches from the command line."""

    esc10: bool = False
    segments: list[Path] = field(default_factory=list)
    clips: Path | None = None


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------

def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _locate(root: Path, marker: Path | str, folder: str) -> Path:
    """``root``, or ``root/<folder>`` (the corpus's own top folder), whichever holds ``marker``."""
    root = _absolute(root)
    if not (root / marker).exists() and (root / folder / marker).exists():
        return root / folder
    return root


def _read_table(path: Path, required: tuple[str, ...], corpus: Corpus, hint: str) -> list[tuple[int, dict]]:
    """Rows of a CSV metadata file with their line numbers; malformed rows are dropped and noted."""
    if not path.is_file():
        raise CorpusError(f"{corpus.source}: metadata file not found: {path}. {hint}")
    try:
        return _table_rows(path, required, corpus)
    except UnicodeDecodeError as error:
        raise _not_utf8(corpus, path, error) from None


def _not_utf8(corpus: Corpus, path: Path, error: UnicodeDecodeError) -> CorpusError:
    """The error for a metadata file that is not UTF-8, naming its first line that does not decode."""
    where = "it"
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            where = f"line {number}"
            break
    return CorpusError(f"{corpus.source}: {path} is not UTF-8 text ({where} cannot be decoded: {error.reason}); "
                       "save it as UTF-8")


def _table_rows(path: Path, required: tuple[str, ...], corpus: Corpus) -> list[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in header]
        if missing:
            raise CorpusError(f"{corpus.source}: {path} lacks column(s) {', '.join(missing)} "
                              f"(found {', '.join(header) or 'no header'}); is it the corpus's own file?")
        reader.fieldnames = header
        rows = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row or None in row.values():
                n_fields = sum(value is not None for key, value in row.items() if key is not None)
                corpus.drop(where, f"has {n_fields + len(row.get(None) or [])} fields, the header {len(header)}")
                continue
            rows.append((reader.line_num, {key: value.strip() for key, value in row.items()}))
    return rows


def _bare_name_problem(column: str, name: str, folder: str) -> str | None:
    """Why a metadata file name may not be joined to ``folder`` (not a bare file name), else None."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return f"{column} {name!r} is not a bare file name (the corpus keeps its clips directly in {folder})"
    return None


def _fold_problem(fold: str) -> str | None:
    return None if is_whole_number(fold) else f"fold {fold!r} is not a whole number"


def _audio_files(folder: Path) -> Iterable[Path]:
    """Audio files under ``folder`` in sorted order, following folder links once (no cycles)."""
    seen = set()
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS and not name.startswith("."):
                yield Path(directory) / name


def _class_folders(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))


def _other_files(folder: Path) -> Counter:
    """Suffixes of files under ``folder`` that are not audio the front end reads."""
    return Counter(path.suffix.lower() or path.name for path in folder.rglob("*")
                   if path.is_file() and path.suffix.lower() not in AUDIO_EXTENSIONS
                   and not path.name.startswith("."))


# ---------------------------------------------------------------------------------------
# Adapters: one per corpus layout
# ---------------------------------------------------------------------------------------

def _vocabulary(table, id_column: str, name_column: str) -> list[str]:
    """The corpus's class names in the order of its own integer class IDs (first name per ID)."""
    names: dict[int, str] = {}
    for _, row in table:
        if is_whole_number(row[id_column]):
            names.setdefault(int(row[id_column]), row[name_column])
    return [names[class_id] for class_id in sorted(names)]


def read_urbansound8k(root: Path, source: str, options: AdapterOptions) -> Corpus:
    """UrbanSound8K: ``metadata/UrbanSound8K.csv`` and ``audio/fold<N>/<slice_file_name>``."""
    root = _locate(root, US8K_META, "UrbanSound8K")
    meta = root / US8K_META
    corpus = Corpus("urbansound8k", source, root / "audio", [], str(meta))
    table = _read_table(meta, US8K_COLUMNS, corpus,
                        "--root must be the UrbanSound8K folder (metadata/UrbanSound8K.csv, audio/fold1..10/)")
    corpus.vocabulary = _vocabulary(table, "classID", "class")
    for line, row in table:
        where = f"{meta}:{line}"
        problem = (_bare_name_problem("slice_file_name", row["slice_file_name"], "audio/fold<N>/")
                   or _fold_problem(row["fold"]))
        if problem:
            corpus.drop(where, problem)
            continue
        corpus.rows.append(Row(root / "audio" / f"fold{row['fold']}" / row["slice_file_name"], (row["class"],),
                               row["fsID"], where, row["fold"],
                               {key: row[key] for key in ("fsID", "start", "end", "salience")}))
    return corpus


def read_esc50(root: Path, source: str, options: AdapterOptions) -> Corpus:
    """ESC-50: ``meta/esc50.csv`` and ``audio/<filename>``; ``esc10`` keeps the ESC-10 subset."""
    root = _locate(root, ESC50_META, "ESC-50-master")
    meta = root / ESC50_META
    corpus = Corpus("esc50", source, root / "audio", [], str(meta))
    table = _read_table(meta, ESC50_COLUMNS, corpus,
                        "--root must be the ESC-50 folder (ESC-50-master: meta/esc50.csv, audio/)")
    corpus.vocabulary = _vocabulary(table, "target", "category")
    not_esc10 = 0
    for line, row in table:
        where = f"{meta}:{line}"
        if options.esc10 and row["esc10"].lower() != "true":
            not_esc10 += 1
            continue
        problem = _bare_name_problem("filename", row["filename"], "audio/") or _fold_problem(row["fold"])
        if problem:
            corpus.drop(where, problem)
            continue
        corpus.rows.append(Row(root / "audio" / row["filename"], (row["category"],), row["src_file"], where,
                               row["fold"], {key: row[key] for key in ("target", "esc10", "src_file", "take")}))
    if options.esc10:
        corpus.notes.append(f"--esc10: kept the {len(corpus.rows)} ESC-10 rows, left out {not_esc10} others")
    return corpus


def _parse_clip_stem(stem: str) -> list[tuple[str, float | None]]:
    """(YTID, start or None) readings of a downloaded clip's file name (``Y`` prefix optional)."""
    readings = []
    for text in (stem, stem[1:] if stem.startswith("Y") else None):
        match = AUDIOSET_STEM.fullmatch(text) if text else None
        if match:
            readings.append((match["ytid"], float(match["start"]) if match["start"] else None))
    return readings


def _same_start(file_start: float, segment_start: float) -> bool:
    """A file's start (seconds, or milliseconds as some downloaders write) equals the segment's."""
    return abs(file_start - segment_start) < 1e-3 or abs(file_start - 1000 * segment_start) < 0.5


def _read_audioset_labels(path: Path, corpus: Corpus) -> dict[str, str]:
    table = _read_table(path, AUDIOSET_LABEL_COLUMNS, corpus,
                        f"--root must hold AudioSet's {AUDIOSET_LABELS} next to the *_segments.csv files")
    names = {row["mid"]: row["display_name"] for _, row in table}
    order = {row["mid"]: int(row["index"]) if is_whole_number(row["index"]) else len(table) for _, row in table}
    corpus.vocabulary = [names[mid] for mid in sorted(names, key=order.get)]
    return names


def _read_segments(path: Path, names: dict[str, str], corpus: Corpus, unknown: Counter
                   ) -> Iterable[tuple[str, str, float, str, list[str]]]:
    """(where, YTID, start, end, known label names) per segment line of one segments CSV."""
    try:
        yield from _segment_lines(path, names, corpus, unknown)
    except UnicodeDecodeError as error:
        raise _not_utf8(corpus, path, error) from None


def _segment_lines(path: Path, names: dict[str, str], corpus: Corpus, unknown: Counter
                   ) -> Iterable[tuple[str, str, float, str, list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            where = f"{path}:{line}"
            fields = next(csv.reader([text], skipinitialspace=True))
            if len(fields) != 4:
                corpus.drop(where, f"expected 4 fields (YTID, start_seconds, end_seconds, positive_labels), "
                                   f"found {len(fields)}")
                continue
            ytid, start, end, labels = (value.strip() for value in fields)
            try:
                start_s = float(start)
                float(end)
            except ValueError:
                corpus.drop(where, f"start_seconds {start!r} / end_seconds {end!r} are not numbers")
                continue
            mids = [mid.strip() for mid in labels.split(",") if mid.strip()]
            for mid in mids:
                if mid not in names:
                    unknown[mid] += 1
                    if unknown[mid] == 1:
                        log.warning("%s: %s: unknown label id %r (not in %s); ignored", corpus.source, where, mid,
                                    AUDIOSET_LABELS)
            known = [names[mid] for mid in mids if mid in names]
            if not known:
                corpus.drop(where, f"no known label id in {labels!r}", "unknown label")
                continue
            yield where, ytid, start_s, end, known


def read_audioset(root: Path, source: str, options: AdapterOptions) -> Corpus:
    """AudioSet: ``class_labels_indices.csv``, ``*_segments.csv`` and a folder of downloaded clips.

    A clip file is found by its name: ``[Y]<YTID>.<ext>``, ``<YTID>_<start>.<ext>`` or
    ``<YTID>_<start>_<end>.<ext>``, start/end in seconds (``30``, ``30.000``) or milliseconds
    (``30000``), in any folder under ``--clips`` (default: the root).
    """
    root = _absolute(root)
    clips_dir = _absolute(options.clips) if options.clips else root
    corpus = Corpus("audioset", source, clips_dir, [], str(root / AUDIOSET_LABELS))
    names = _read_audioset_labels(root / AUDIOSET_LABELS, corpus)
    order = {name: index for index, name in enumerate(corpus.vocabulary)}
    segment_files = [path if path.is_absolute() else root / path for path in options.segments] \
        or sorted(root.glob(AUDIOSET_SEGMENTS_GLOB))
    if not segment_files:
        raise CorpusError(f"{source}: no segment CSV ({AUDIOSET_SEGMENTS_GLOB}, e.g. balanced_train_segments.csv) "
                          f"in {root}; download them next to {AUDIOSET_LABELS} or name them with --segments")
    for path in segment_files:
        if not path.is_file():
            raise CorpusError(f"{source}: segment CSV not found: {path}")
    if not clips_dir.is_dir():
        raise CorpusError(f"{source}: clip folder not found: {clips_dir} (--clips)")
    unknown: Counter = Counter()
    segments, first_seen = [], {}
    for path in segment_files:
        for where, ytid, start, end, known in _read_segments(path, names, corpus, unknown):
            key = (ytid, round(start, 3))
            if key in first_seen:
                corpus.drop(where, f"duplicate segment: {ytid} at {start:g} s is also {first_seen[key]}",
                            "duplicate")
                continue
            first_seen[key] = where
            segments.append((where, ytid, start, end, sorted(set(known), key=order.get), path.name))
    if unknown:
        corpus.notes.append(f"{sum(unknown.values())} label id(s) not in {AUDIOSET_LABELS} ignored: "
                            f"{', '.join(sorted(unknown)[:5])}")
    ytids = Counter(ytid for _, ytid, *_ in segments)
    files: dict[str, list[tuple[float | None, Path]]] = defaultdict(list)
    unmatched = []
    for path in _audio_files(clips_dir):
        readings = [(ytid, start) for ytid, start in _parse_clip_stem(path.stem) if ytid in ytids]
        if readings:
            files[readings[0][0]].append((readings[0][1], path))
        else:
            unmatched.append(path)
    for where, ytid, start, end, labels, segment_file in segments:
        timed = [path for file_start, path in files.get(ytid, []) if file_start is not None
                 and _same_start(file_start, start)]
        untimed = [path for file_start, path in files.get(ytid, []) if file_start is None]
        if not timed and untimed and ytids[ytid] > 1:
            corpus.drop(where, f"ambiguous: {untimed[0].name} has no start time and {ytid} has {ytids[ytid]} "
                               "segments; name the file <YTID>_<start>.<ext>", "ambiguous")
            continue
        found = timed or untimed
        for extra in found[1:]:
            corpus.drop(str(extra), f"a second file of segment {where}; using {found[0].name}", "duplicate")
        # A segment without a file is reported only if its classes are kept (see merge).
        corpus.rows.append(Row(found[0] if found else None, tuple(labels), ytid, where, "", {
            "ytid": ytid, "start_seconds": f"{start:.3f}", "end_seconds": end, "labels": "; ".join(labels),
            "segments": Path(segment_file).stem.removesuffix("_segments")},
            missing=f"no file for {ytid} at {start:g} s under {clips_dir}"))
    for path in unmatched:
        corpus.drop(str(path), "audio file matches no segment of the segment CSVs (names: [Y]<YTID>[_<start>"
                               "[_<end>]].<ext>)", "no segment")
    return corpus


def _class_tree(root: Path, corpus: Corpus, group_of: Callable[[Path, Path], tuple[str, dict]]) -> None:
    """Fill ``corpus`` from a folder per class; ``group_of(class folder, file)`` -> (group, extras)."""
    if not root.is_dir():
        raise CorpusError(f"{corpus.source}: folder not found: {root}")
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
            corpus.drop(str(path), "not inside a class folder (the layout is <root>/<class>/<clips>)")
    for folder in _class_folders(root):
        found = list(_audio_files(folder))
        if found:
            corpus.vocabulary.append(folder.name)
        for path in found:
            group, extras = group_of(folder, path)
            corpus.rows.append(Row(path, (folder.name,), group, str(path), "", extras))
        others = _other_files(folder)
        if others:
            corpus.notes.append(f"{folder}: {sum(others.values())} file(s) that are not audio the front end "
                                f"reads ({', '.join(sorted(others))}); convert them (e.g. ffmpeg -i x.3gp x.wav)")
    if not corpus.vocabulary:
        raise CorpusError(f"{corpus.source}: no class folder with audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})"
                          f" under {root}; the layout is <root>/<class>/<clips>")


def read_donateacry(root: Path, source: str, options: AdapterOptions) -> Corpus:
    """donateacry-corpus: ``donateacry_corpus_cleaned_and_updated_data/<reason>/<uuid>-...-<reason>.wav``."""
    root = _absolute(root)
    if (root / DONATEACRY_FOLDER).is_dir():
        root = root / DONATEACRY_FOLDER
    corpus = Corpus("donateacry", source, root, [], f"{root} (one folder per cry reason)")

    def group_of(folder: Path, path: Path) -> tuple[str, dict]:
        match = DONATEACRY_NAME.fullmatch(path.stem)
        if not match:  # not the app's naming: the file is a recording of its own
            return path.relative_to(root).as_posix(), {}
        return match["uuid"].lower(), {"gender": match["gender"], "age": match["age"], "reason": match["reason"]}

    _class_tree(root, corpus, group_of)
    return corpus


def read_folders(root: Path, source: str, options: AdapterOptions) -> Corpus:
    """Any ``<root>/<class>/...`` tree; a clip's group is its first subfolder below the class (else itself)."""
    root = _absolute(root)
    corpus = Corpus("folders", source, root, [], f"{root} (one folder per class)")

    def group_of(folder: Path, path: Path) -> tuple[str, dict]:
        inner = path.relative_to(folder).parts
        return f"{folder.name}/{inner[0] if len(inner) > 1 else path.relative_to(folder).as_posix()}", {}

    _class_tree(root, corpus, group_of)
    return corpus


ADAPTERS: dict[str, Callable[[Path, str, AdapterOptions], Corpus]] = {
    "urbansound8k": read_urbansound8k,
    "esc50": read_esc50,
    "audioset": read_audioset,
    "donateacry": read_donateacry,
    "folders": read_folders,
}


# ---------------------------------------------------------------------------------------
# Classes: the corpus's own names -> the CSV's classes
# ---------------------------------------------------------------------------------------

def normalise(name: str) -> str:
    """Case, ``_``/``-`` and spacing do not matter when names are compared."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


@dataclass
class ClassSpec:
    """A class of the output CSV and the corpus names (and whole corpora) it takes."""

    name: str
    names: set[str]
    corpora: set[str] = field(default_factory=set)

    @classmethod
    def from_request(cls, requested: str) -> ClassSpec:
        """The class a --target/--classes name stands for, with its aliases."""
        key = normalise(requested)
        for canonical, aliases in ALIASES.items():
            names = {normalise(canonical), *map(normalise, aliases)}
            if key in names:
                return cls(requested, names, set(WHOLE_CORPUS.get(canonical, ())))
        return cls(requested, {key})

    def matches(self, corpus_name: str, label: str) -> bool:
        """True when ``label`` of corpus ``corpus_name`` (e.g. ``esc50``) belongs to this class."""
        return corpus_name in self.corpora or normalise(label) in self.names


def _known(spec: ClassSpec, corpora: list[Corpus]) -> bool:
    return any(spec.matches(corpus.name, label) for corpus in corpora for label in corpus.vocabulary)


def _unknown_message(option: str, requested: str, corpora: list[Corpus]) -> str:
    vocabulary = sorted({label for corpus in corpora for label in corpus.vocabulary})
    close = difflib.get_close_matches(requested, vocabulary, n=3, cutoff=0.6) \
        or [label for label in vocabulary if normalise(requested) in normalise(label)][:3]
    files = "; ".join(f"{corpus.source}: {corpus.vocabulary_file}" for corpus in corpora)
    return (f"{option} {requested!r} is no class of the corpora read ({files})"
            + (f"; close matches: {', '.join(map(repr, close))}" if close else "")
            + f"; aliases: {', '.join(sorted(ALIASES))}")


def class_specs(corpora: list[Corpus], target: list[str], classes: list[str]
                ) -> tuple[list[ClassSpec] | None, ClassSpec | None]:
    """(kept classes or None for all, target class or None); unknown names warned about or refused."""
    kept = []
    for requested in classes:
        spec = ClassSpec.from_request(requested)
        if _known(spec, corpora):
            kept.append(spec)
        else:
            log.error("%s; left out", _unknown_message("--classes", requested, corpora))
    if classes and not kept:
        raise DatasetError("none of the --classes names is a class of the corpora read; nothing to write")
    if not target:
        return kept or None, None
    specs = []
    for requested in target:
        spec = ClassSpec.from_request(requested)
        if _known(spec, corpora):
            specs.append(spec)
        else:
            log.error("%s; left out", _unknown_message("--target", requested, corpora))
    if not specs:
        raise DatasetError(f"no --target name ({', '.join(target)}) is a class of the corpora read; "
                           "nothing to write (see the close matches above)")
    if normalise(specs[0].name) == OTHER:
        raise DatasetError(f"--target {specs[0].name!r}: {OTHER!r} is the name of class 0 in a --target CSV")
    merged = ClassSpec(specs[0].name, set().union(*(s.names for s in specs)), set().union(*(s.corpora for s in specs)))
    for corpus in corpora:
        if not _known(merged, [corpus]):
            log.info("%s has no class for --target %r: all its clips are class 0 (%s)", corpus.source, merged.name,
                     OTHER)
    return kept or None, merged


def assign_class(row: Row, corpus_name: str, kept: list[ClassSpec] | None, target: ClassSpec | None
                 ) -> tuple[str, str] | None:
    """(class name, deciding corpus label) of a row, or None when --classes leaves it out.

    A row with several labels (AudioSet) takes the first kept class in --classes order (else in
    the corpus's label order); with --target it is the target when any of its labels is.
    """
    if target is not None:
        for label in row.labels:
            if target.matches(corpus_name, label):
                return target.name, label
        if kept is None:
            return OTHER, row.labels[0]
    if kept is None:
        return row.labels[0], row.labels[0]
    for spec in kept:
        for label in row.labels:
            if spec.matches(corpus_name, label):
                return (OTHER if target is not None else spec.name), label
    return None


# ---------------------------------------------------------------------------------------
# Merging and writing
# ---------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """The merged CSV's rows, classes, data folder, and everything dropped or failed."""

    rows: list[dict]
    columns: list[str]
    class_names: list[str]
    data_dir: Path
    dropped: list[Dropped]
    failed: list[str]
    left_out: Counter


def data_folder(corpora: list[Corpus], data_dir: Path | None) -> Path:
    """The folder every clip path is written relative to: ``data_dir`` or the corpora's common folder."""
    roots = [str(corpus.audio_root) for corpus in corpora]
    if data_dir is None:
        return Path(os.path.commonpath(roots))
    base = _absolute(data_dir)
    outside = [root for root in roots if os.path.commonpath([root, str(base)]) != str(base)]
    if outside:
        raise DatasetError(f"--data_dir {base} does not hold {', '.join(outside)}; "
                           "give a folder above every --root (or leave --data_dir out)")
    return base


def _check_files(chosen: list[tuple[Corpus, Row, str, str]]) -> list[tuple[Corpus, Row, str, str]]:
    """Drop rows whose audio is absent, and later rows naming a file an earlier row already has."""
    first: dict[Path, tuple[str, str]] = {}
    kept = []
    for corpus, row, name, label in chosen:
        if row.path is None or not row.path.is_file():
            corpus.drop(row.where, f"clip listed but absent: {row.missing or f'{row.path} not found'}", "absent")
        elif row.path in first:
            source, where = first[row.path]
            corpus.drop(row.where, f"duplicate: the same clip as {where}"
                                   + (f" ({source})" if source != corpus.source else ""), "duplicate")
        else:
            first[row.path] = (corpus.source, row.where)
            kept.append((corpus, row, name, label))
    return kept


def merge(corpora: list[Corpus], target: list[str], classes: list[str], data_dir: Path | None) -> Outcome:
    """Rows of the output CSV from the corpora read (classes assigned, IDs contiguous, groups prefixed)."""
    kept, target_spec = class_specs(corpora, target, classes)
    base = data_folder(corpora, data_dir)
    chosen, left_out = [], Counter()
    for corpus in corpora:
        for row in corpus.rows:
            decided = assign_class(row, corpus.name, kept, target_spec)
            if decided is None:
                left_out[corpus.source] += 1
            else:
                chosen.append((corpus, row, *decided))
    assigned = []
    for corpus, row, name, label in _check_files(chosen):
        relative = PurePosixPath(Path(os.path.relpath(row.path, base)).as_posix())
        problem = refusal_reason(str(relative))
        if problem:  # cannot happen for files found under the root; a last guard all the same
            corpus.drop(row.where, problem)
            continue
        assigned.append((corpus, row, str(relative), name, label))
    if target_spec is not None:
        class_names = [OTHER, target_spec.name]
    elif kept is not None:
        class_names = [spec.name for spec in kept]
    else:
        class_names = list(dict.fromkeys(label for corpus in corpora for label in corpus.vocabulary))
    present = {name for _, _, _, name, _ in assigned}
    for name in class_names:
        if name not in present and (target_spec is not None or kept is not None):
            log.warning("class %r has no clip in the corpora read", name)
    if target_spec is not None and len(present) < 2:
        missing = [name for name in class_names if name not in present]
        raise DatasetError(f"--target CSV without any {' or '.join(map(repr, missing))} clip: a detector needs "
                           "both; merge a corpus of the missing kind (e.g. add esc50 for other sounds)")
    if target_spec is None:
        class_names = [name for name in class_names if name in present]
    if target_spec is None and kept is None:  # every label kept as it is spelt: say which look like one class
        spellings: dict[str, list[str]] = {}
        for name in class_names:
            spellings.setdefault(normalise(name), []).append(name)
        for names in (names for names in spellings.values() if len(names) > 1):
            log.warning("classes %s differ only in case, '_', '-' or spacing and stay separate classes; to merge "
                        "them, name the class once with --classes", " and ".join(map(repr, names)))
    class_id = {name: index for index, name in enumerate(class_names)}
    has_fold = any(row.fold for _, row, *_ in assigned)
    extras = list(dict.fromkeys(key for _, row, *_ in assigned for key in row.extras))
    columns = [c for c in BASE_COLUMNS if c != "fold" or has_fold] + [e for e in extras if e not in BASE_COLUMNS]
    rows = []
    for corpus, row, relative, name, label in assigned:
        rows.append({"slice_file_name": relative, "classID": str(class_id[name]), "class": name, "fold": row.fold,
                     GROUP_COLUMN: f"{corpus.source}:{row.group or relative}", "source": corpus.source,
                     "label": label, **row.extras})
    _warn_shared_recordings(corpora)
    dropped = [item for corpus in corpora for item in corpus.dropped]
    return Outcome(rows, columns, class_names, base, dropped, [], left_out)


def _warn_shared_recordings(corpora: list[Corpus]) -> None:
    """ESC-50's src_file and UrbanSound8K's fsID are both Freesound IDs: the same ID is one recording."""
    ids = defaultdict(set)
    for corpus in corpora:
        if corpus.name in ("esc50", "urbansound8k"):
            ids[corpus.source] |= {row.group for row in corpus.rows if row.path is not None}
    if len(ids) > 1:
        shared = set.intersection(*ids.values())
        if shared:
            log.warning("%d Freesound recording(s) appear in both ESC-50 and UrbanSound8K (e.g. %s); their groups "
                        "differ (esc50:<id>, urbansound8k:<id>), so their clips may land in different splits",
                        len(shared), ", ".join(sorted(shared)[:3]))


def render_csv(rows: list[dict], columns: list[str]) -> str:
    """CSV text (header + rows; fields with commas or quotes are quoted)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def dropped_path(out: Path) -> Path:
    """Where the rows left out are listed: ``<out without .csv>.dropped.tsv``."""
    return out.with_name(out.stem + DROPPED_SUFFIX)


def write_outputs(outcome: Outcome, out: Path) -> None:
    """The CSV and its dropped-rows TSV, each written atomically."""
    atomic_write_text(out, render_csv(outcome.rows, outcome.columns))
    atomic_write_text(dropped_path(out), "source\twhere\tkind\treason\n" + "".join(
        f"{d.source}\t{d.where}\t{d.kind}\t{d.reason}\n" for d in outcome.dropped))


def read_corpora(names: list[str], roots: list[Path], options: AdapterOptions
                 ) -> tuple[list[Corpus], dict[str, str]]:
    """Each corpus through its adapter: (those read, {source: why not} for those that cannot be)."""
    corpora, failed = [], {}
    seen = Counter()
    for name, root in zip(names, roots):
        seen[name] += 1
        source = name if seen[name] == 1 else f"{name}{seen[name]}"  # a second `folders` tree: folders2
        try:
            corpora.append(ADAPTERS[name](root, source, options))
        except CorpusError as error:
            failed[source] = str(error)
    return corpora, failed


def build(names: list[str], roots: list[Path], out: Path, target: list[str] = (), classes: list[str] = (),
          options: AdapterOptions | None = None, data_dir: Path | None = None) -> Outcome:
    """Read, merge and write: the whole command. DatasetError when nothing usable remains."""
    corpora, failed = read_corpora(list(names), list(roots), options or AdapterOptions())
    if not corpora:
        raise DatasetError(" / ".join(failed.values()) + "; nothing written")
    for message in failed.values():
        log.error("%s; writing the other corpora", message)
    outcome = merge(corpora, list(target), list(classes), data_dir)
    outcome.failed = list(failed)
    if not outcome.rows:
        raise DatasetError("no usable clip remains (see the dropped rows above); nothing written")
    write_outputs(outcome, out)
    log_summary(outcome, corpora, out)
    subset = bool(classes) or (options or AdapterOptions()).esc10
    log.info("slice_file_name is relative to %s; next:\n  %s", outcome.data_dir,
             preprocessing_command(out, outcome.data_dir, recipe_for(list(names), list(target), subset)))
    return outcome


def recipe_for(names: list[str], target: list[str], subset: bool = False) -> Recipe | None:
    """The recipe of configs/ made for the CSV of corpora ``names`` with ``target``, if there is one.

    ``subset``: only some of the classes were kept (``--classes``, ``--esc10``); a corpus's recipe trains
    all of them and saves into its own datapath, so a subset gets none (a target recipe stays binary).
    """
    if not target:
        return CORPUS_RECIPES.get(names[0]) if len(names) == 1 and not subset else None
    if len(target) == 1 and "audioset" not in names:
        return TARGET_RECIPES.get(target[0])
    return None


def preprocessing_command(csv_file: Path, data_dir: Path, recipe: Recipe | None) -> str:
    """The preprocessing command for the written CSV: with the recipe's ``--config_path`` (features
    from its block, into its ``datapath``) and split flags when there is a recipe."""
    command = ["python", "preprocessingBabyCrying.py", "--csv_file", str(csv_file), "--data_dir", str(data_dir)]
    if recipe is None:
        return shlex.join(command + ["--save_dir", f"features/{csv_file.stem}"])
    config = REPO / recipe.config  # the config resolves its paths against the working folder, as the scripts do
    return shlex.join(command + ["--save_dir", os.path.relpath(Params(config).datapath),
                                 "--config_path", os.path.relpath(config), *recipe.split_flags])


def log_summary(outcome: Outcome, corpora: list[Corpus], out: Path) -> None:
    """Per source: clips per class and what was dropped (a few examples each)."""
    for corpus in corpora:
        for note in corpus.notes:
            log.info("%s: %s", corpus.source, note)
        kinds = defaultdict(list)
        for item in corpus.dropped:
            kinds[item.kind].append(item)
        for kind, items in kinds.items():
            log.warning("%s: %d dropped (%s), e.g.\n  %s", corpus.source, len(items), kind,
                        "\n  ".join(f"{item.where}: {item.reason}" for item in items[:EXAMPLES]))
        if outcome.left_out[corpus.source]:
            log.info("%s: %d clip(s) of other classes left out (--classes)", corpus.source,
                     outcome.left_out[corpus.source])
    per_class = Counter(row["class"] for row in outcome.rows)
    per_source = Counter(row["source"] for row in outcome.rows)
    log.info("wrote %s: %d clips, %d classes (%s) from %s; %d groups", out, len(outcome.rows),
             len(outcome.class_names), ", ".join(f"{name} {per_class[name]}" for name in outcome.class_names),
             ", ".join(f"{source} {count}" for source, count in per_source.items()),
             len({row[GROUP_COLUMN] for row in outcome.rows}))
    if outcome.dropped:
        log.warning("%d row(s) or file(s) dropped in all: listed in %s", len(outcome.dropped), dropped_path(out))


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; NAME and --root pair up in order."""
    parser = argparse.ArgumentParser(prog="python -m tools.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", metavar="NAME", choices=sorted(ADAPTERS),
                        help=f"corpus layout(s): {', '.join(ADAPTERS)}")
    parser.add_argument("--root", action="append", type=Path, required=True, metavar="DIR",
                        help="the corpus's folder as downloaded; once per NAME, in the same order")
    parser.add_argument("--out", type=Path, required=True, metavar="CSV", help="metadata CSV to write")
    parser.add_argument("--target", nargs="+", default=[], metavar="CLASS",
                        help="binary CSV: class 1 = these (each corpus's own name or an alias: "
                             f"{', '.join(sorted(ALIASES))}), class 0 = {OTHER!r}")
    parser.add_argument("--classes", nargs="+", default=[], metavar="CLASS",
                        help="keep only these classes (in this order: classIDs and, for clips with several "
                             "labels, priority); with --target: the other sounds kept as class 0")
    parser.add_argument("--esc10", action="store_true", help="esc50: only the ESC-10 subset")
    parser.add_argument("--segments", nargs="+", type=Path, default=[], metavar="CSV",
                        help=f"audioset: segment CSVs to read (default: every {AUDIOSET_SEGMENTS_GLOB} in its root)")
    parser.add_argument("--clips", type=Path, default=None, metavar="DIR",
                        help="audioset: folder of the downloaded clips (default: its root)")
    parser.add_argument("--data_dir", type=Path, default=None, metavar="DIR",
                        help="write clip paths relative to this folder (default: the deepest folder holding "
                             "every corpus's audio)")
    args = parser.parse_intermixed_args(argv)  # `esc50 --root A donateacry --root B` pairs up too
    if len(args.root) != len(args.names):
        parser.error(f"{len(args.names)} NAME(s) but {len(args.root)} --root: give one --root per NAME, in order")
    if args.esc10 and "esc50" not in args.names:
        parser.error("--esc10 applies to esc50, which is not among the NAMEs")
    if (args.segments or args.clips) and "audioset" not in args.names:
        parser.error("--segments/--clips apply to audioset, which is not among the NAMEs")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when written and every corpus was read; 1 when one could not be read or nothing was written."""
    setup_logging()
    args = parse_args(argv)
    try:
        outcome = build(args.names, args.root, args.out, args.target, args.classes,
                        AdapterOptions(esc10=args.esc10, segments=args.segments, clips=args.clips), args.data_dir)
    except (DatasetError, OutputPathError) as error:
        log.error("%s", error)
        return 1
    if outcome.failed:
        log.error("written without %s, which could not be read (see above)", ", ".join(outcome.failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
