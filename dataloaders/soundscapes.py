"""Training crops cut from soundscapes: windows as a detector hears them, labelled from the mixture's parts.

A ``train_soundscapes`` folder is what ``tools.soundscapes`` writes from the *training* list: 30-s
mixtures of chained non-target clips (cross-faded) with one target event in half of them, at an
event-to-background ratio of -6, 0 or +6 dB, plus ``events.csv`` and ``parts.csv`` (each clip's
place and class). The clips' own crops never show a window where one background clip gives way to
the next, nor a faint cry over speech or a siren; these do, exactly as long-mode detection sees them.

Every epoch, each mixture gives one crop of ``window`` frames beside the clips' crops (seeded by
``(seed, epoch, position, index)``, like ``crops.RandomCrops``, so a resumed run draws the same). For
a mixture with an event, half of the crops (``EVENT_CROP_SHARE``) are drawn among the windows
labelled with the event; the rest, and every crop of a mixture without one, fall anywhere.

A window ``[s, s + window)`` is labelled the target class when it overlaps the event by at least
half of the window or half of the event (a short event inside it), else the class of the background
clip that covers most of it (the first listed on a tie).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from audioclf.events import SOUNDSCAPE_EVENTS_FILE, SOUNDSCAPE_PARTS_FILE, read_events_csv, unfinished_soundscapes
from audioclf.frontend import AudioReadError, FeatureExtractor, FeatureParams, read_audio
from audioclf.metadata import feature_file_of, refusal_reason
from dataloaders.crops import CropKey, random_crop

PARTS_NEEDED = ("file", "part", "clip", "class", "start_s", "end_s")  # the parts.csv columns read here
EVENT_CROP_SHARE = 0.5
_STREAM = 1  # keeps these crops' random numbers apart from the clips' crops of the same key


class SoundscapeDataError(ValueError):
    """A ``train_soundscapes`` folder that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class LabelledRecording:
    """One mixture's log-mel and its parts in frames: background clips ``(start, end, class id)``."""

    file: str
    feature: np.ndarray  # (n_mels, T)
    parts: tuple[tuple[int, int, int], ...]
    event: tuple[int, int] | None  # the target event's frames [start, end)

    @property
    def n_frames(self) -> int:
        return self.feature.shape[1]


def _overlap(start: int, end: int, span: tuple[int, int]) -> int:
    return max(0, min(end, span[1]) - max(start, span[0]))


def event_overlap_needed(event: tuple[int, int], window: int) -> int:
    """Frames of overlap with the event that make a window the event's: half the window or half the event."""
    return max(1, -(-min(window, event[1] - event[0]) // 2))


def window_label(recording: LabelledRecording, start: int, window: int, target_id: int) -> int:
    """The class of ``[start, start + window)`` (module docstring)."""
    end = start + window
    event = recording.event
    if event is not None and _overlap(start, end, event) >= event_overlap_needed(event, window):
        return target_id
    cover: dict[int, int] = {}
    for part_start, part_end, class_id in recording.parts:
        cover[class_id] = cover.get(class_id, 0) + _overlap(start, end, (part_start, part_end))
    return max(cover, key=cover.get)  # the first class listed wins a tie (dicts keep insertion order)


def crop_start(recording: LabelledRecording, window: int, seed: int, epoch: int, position: int,
               index: int) -> int:
    """Seeded crop start (module docstring): on the event with ``EVENT_CROP_SHARE``, else uniform."""
    last = max(recording.n_frames - window, 0)
    rng = np.random.default_rng([seed % 2**32, epoch, position, index, _STREAM])
    on_event = rng.random() < EVENT_CROP_SHARE
    if recording.event is not None and on_event:
        need = event_overlap_needed(recording.event, window)
        low = max(recording.event[0] + need - window, 0)
        high = min(recording.event[1] - need, last)
        if low <= high:
            return int(rng.integers(low, high + 1))
    return int(rng.integers(last + 1))


def _read_parts(path: Path) -> list[dict]:
    if not path.is_file():
        raise SoundscapeDataError(f"{path}: file not found; build the folder with python -m tools.soundscapes")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in PARTS_NEEDED if column not in (reader.fieldnames or [])]
        if missing:
            raise SoundscapeDataError(f"{path}: no {', '.join(missing)} column; rebuild the folder with "
                                      "python -m tools.soundscapes (its parts.csv names each clip's class)")
        return [dict(row, line=line) for line, row in enumerate(reader, start=2)]


def _is_finite_number(text: str | None) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def load_training_soundscapes(folder: str | Path, params: FeatureParams, class_names: list[str],
                              target_class: str, training_clips: set[str]) -> list[LabelledRecording]:
    """The mixtures of ``folder`` as labelled log-mels of the training features (``params``).

    ``training_clips`` are the training list's feature files: a mixture built from any other clip
    (validation or evaluation) would leak it into training, and is refused.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SoundscapeDataError(f'"train_soundscapes" folder not found: {folder}; build it from the training '
                                  "list with python -m tools.soundscapes --list <trainlist> --out <folder>")
    if target_class not in class_names:
        raise SoundscapeDataError(f'"target_class" {target_class!r} is not a training class ({class_names})')
    if unfinished_soundscapes(folder):
        raise SoundscapeDataError(f'"train_soundscapes" {folder}: its build was interrupted; run the '
                                  "tools.soundscapes command again")
    class_ids = {name: index for index, name in enumerate(class_names)}
    rows = _read_parts(folder / SOUNDSCAPE_PARTS_FILE)
    events = {event.file: event for event in read_events_csv(folder / SOUNDSCAPE_EVENTS_FILE)}
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        if feature_file_of(row["clip"]) not in training_clips:
            raise SoundscapeDataError(
                f"{folder / SOUNDSCAPE_PARTS_FILE}:{row['line']}: {row['clip']!r} is not a training clip; build "
                '"train_soundscapes" from the training list only (other clips would leak into training)')
        if row["part"] == "event" and row["class"] != target_class:
            raise SoundscapeDataError(
                f"{folder / SOUNDSCAPE_PARTS_FILE}:{row['line']}: its event is a {row['class']!r} clip, not "
                f'"target_class" {target_class!r}; rebuild the folder with python -m tools.soundscapes '
                f"--target_class {target_class!r}")
        if row["class"] not in class_ids:
            raise SoundscapeDataError(f"{folder / SOUNDSCAPE_PARTS_FILE}:{row['line']}: class {row['class']!r} is "
                                      f"not a training class ({class_names})")
        problem = refusal_reason(row["file"], "file", str(folder))
        if problem is not None:
            raise SoundscapeDataError(f"{folder / SOUNDSCAPE_PARTS_FILE}:{row['line']}: file {row['file']!r} "
                                      f"{problem}")
        for column in ("start_s", "end_s"):
            if not _is_finite_number(row[column]):
                raise SoundscapeDataError(f"{folder / SOUNDSCAPE_PARTS_FILE}:{row['line']}: {column} "
                                          f"{row[column]!r} is not a number; rebuild the folder with "
                                          "python -m tools.soundscapes")
        by_file.setdefault(row["file"], []).append(row)
    extractor = FeatureExtractor(params)
    frame_s = params.hop_length / params.sample_rate

    def frames(seconds: str | float) -> int:
        return round(float(seconds) / frame_s)

    recordings = []
    for name, parts in sorted(by_file.items()):
        path = folder / name
        try:
            feature = extractor.recording_frames(read_audio(path, params.sample_rate))
        except AudioReadError as error:
            raise SoundscapeDataError(f"{path}: {error}") from None
        background = tuple((frames(row["start_s"]), frames(row["end_s"]), class_ids[row["class"]])
                           for row in parts if row["part"] == "background")
        if not background:
            raise SoundscapeDataError(f"{folder / SOUNDSCAPE_PARTS_FILE}: {name} has no background rows; rebuild "
                                      "the folder")
        event = events.get(name)
        event_frames = None if event is None else (frames(event.onset_s), max(frames(event.offset_s),
                                                                              frames(event.onset_s) + 1))
        recordings.append(LabelledRecording(name, feature.astype(np.float32), background, event_frames))
    if not recordings:
        raise SoundscapeDataError(f"{folder / SOUNDSCAPE_PARTS_FILE} lists no mixtures; rebuild the folder")
    return recordings


class SoundscapeCrops(Dataset):
    """Training items ``((1, n_mels, window), label)`` keyed like ``crops.RandomCrops``: one per mixture."""

    def __init__(self, recordings: list[LabelledRecording], window: int, seed: int, target_id: int,
                 pad_mode: str = "repeat", silence: float = 0.0):
        self.recordings, self.window, self.seed, self.target_id = recordings, window, seed, target_id
        self.pad_mode, self.silence = pad_mode, silence

    def __len__(self) -> int:
        return len(self.recordings)

    def __getitem__(self, key: CropKey) -> tuple[torch.Tensor, int]:
        index, epoch, position = key
        recording = self.recordings[index]
        start = crop_start(recording, self.window, self.seed, epoch, position, index)
        crop = random_crop(recording.feature, self.window, start, self.pad_mode, self.silence)
        label = window_label(recording, start, self.window, self.target_id)
        return torch.from_numpy(np.ascontiguousarray(crop)).unsqueeze(0), label
