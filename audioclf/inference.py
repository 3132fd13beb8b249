"""Inference with a trained checkpoint: clip classification and sliding-window detection.

The model, its class names, the feature parameters and the windows all come from the
checkpoint; features are computed by ``audioclf.frontend`` exactly as preprocessing computed them
and cut into windows as ``audioclf.windows`` defines them, so a file gets the same probabilities
here as its preprocessed ``.npy`` gets in evaluation.

Clip mode scores what preprocessing stores for a file (the first ``n_frames``, or the whole clip
up to ``max_seconds`` for whole-clip features) by the mean over its windows. Long mode streams
the file in blocks (``iter_audio_blocks``), computes one continuous log-mel of the recording
block by block (``LogMelStream``), cuts windows of the model's frames every ``hop`` frames and
classifies them in batches; memory is bounded by one block plus one batch of windows.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audioclf.checkpoint import (CheckpointError, check_required_keys, checkpoint_windows, load_checkpoint,
                                 model_from_checkpoint, operating_point_path)
from audioclf.zeroshot import is_zero_shot, zero_shot_checkpoint
from audioclf.events import DetectionParams, Event, detect_events, window_bounds
from audioclf.files import atomic_write_json, atomic_write_text
from audioclf.frontend import (AUDIO_EXTENSIONS, AudioReadError, FeatureExtractor, FeatureParams, LogMelStream,
                               audio_info, iter_audio_blocks, log_scale_for)
from audioclf.listfile import FEATURE_CONFIG
from audioclf.runtime import amp_dtype_for, fold_batch_norms, predict_probabilities
from audioclf.windows import WindowSlicer, cut_windows, hop_from_seconds, pool_windows

log = logging.getLogger(__name__)

LIST_EXTENSION = ".txt"
# Auto mode: a file longer than this many windows (and a whole-clip model's max_seconds) gets long mode.
LONG_FACTOR = 4.0
MODES = ("auto", "clip", "file", "long")
BLOCK_SECONDS = 10.0  # audio decoded per read in long mode
# operating_point.json's entry for long-mode detection settings chosen on recordings (audioclf/tuning.py).
LONG_MODE_KEY = "long_mode"


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

def collect_inputs(inputs: Sequence[str | Path]) -> list[str]:
    """Expand files, folders (recursive, audio extensions) and ``.txt`` lists into file paths.

    A list file holds one path per line (blank lines and ``#`` comments ignored); relative paths
    are taken relative to the list file's folder. Paths that do not exist are kept, so they are
    reported as unreadable with the other failures.
    """
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
            if not found:
                log.warning("%s: no audio files (%s) in this folder", path, ", ".join(sorted(AUDIO_EXTENSIONS)))
            paths.extend(found)
        elif path.suffix.lower() == LIST_EXTENSION and path.is_file():
            listed = [Path(line.strip()) for line in path.read_text(encoding="utf-8").splitlines()
                      if line.strip() and not line.strip().startswith("#")]
            if not listed:
                log.warning("%s: the list names no file (one path per line; blank lines and # comments are "
                            "ignored)", path)
            paths.extend(str(entry if entry.is_absolute() else path.parent / entry) for entry in listed)
        else:
            paths.append(str(item))
    return paths


def long_mode_settings(hop_seconds: float, params: DetectionParams) -> dict:
    """The ``long_mode`` entry of ``operating_point.json``: window hop and detection settings."""
    return {"hop_seconds": hop_seconds, "threshold": params.threshold, "threshold_low": params.threshold_low,
            "median_filter": params.median_filter, "merge_gap": params.merge_gap, "min_duration": params.min_duration,
            "edge_trim": params.edge_trim}


def _read_long_mode(entry: dict) -> tuple[float, DetectionParams]:
    """``long_mode_settings``'s dict back to ``(hop_seconds, DetectionParams)``; ValueError/KeyError when invalid."""
    hop_seconds = float(entry["hop_seconds"])
    if not hop_seconds > 0:
        raise ValueError(f"hop_seconds must be positive, got {hop_seconds}")
    low = entry["threshold_low"]
    params = DetectionParams(float(entry["threshold"]), None if low is None else float(low),
                             int(entry["median_filter"]), float(entry["min_duration"]), float(entry["merge_gap"]),
                             float(entry.get("edge_trim", 0.0)))  # absent in operating points written before it
    return hop_seconds, params.validate()


def load_operating_point(checkpoint_path: str | Path, class_names: Sequence[str]) -> dict | None:
    """``<checkpoint dir>/scores/operating_point.json`` when it exists and names a class of this model.

    Keys: ``target_class``, ``class_id``, ``threshold`` (clip level), ``path`` and ``long_mode``:
    ``(hop_seconds, DetectionParams)`` chosen on recordings (evaluation's ``detection_soundscapes``), or None.
    A pretrained model used as it is (``audioset:yamnet``) has no run folder, hence no operating point.
    """
    if is_zero_shot(checkpoint_path):
        return None
    path = operating_point_path(checkpoint_path)
    if not path.is_file():
        return None
    try:
        point = json.loads(path.read_text())
    except ValueError as error:
        log.warning("ignoring %s: %s", path, error)
        return None
    return parse_operating_point(point, class_names, path)


def parse_operating_point(point: dict, class_names: Sequence[str], source: str | Path) -> dict | None:
    """An operating point as ``operating_point.json`` (or an exported model's metadata) holds it ->
    ``load_operating_point``'s dict; None, with a warning naming ``source``, when unusable."""
    try:
        target, class_id, threshold = point["target_class"], int(point["class_id"]), float(point["threshold"])
    except (ValueError, KeyError, TypeError) as error:
        log.warning("ignoring %s: %s", source, error)
        return None
    if target not in class_names or not 0 <= class_id < len(class_names) or class_names[class_id] != target:
        log.warning("ignoring %s: class %r (id %d) is not this model's class", source, target, class_id)
        return None
    long_mode = None
    if point.get(LONG_MODE_KEY) is not None:
        try:
            long_mode = _read_long_mode(point[LONG_MODE_KEY])
        except (ValueError, KeyError, TypeError) as error:
            log.warning("ignoring the %r settings of %s: %s", LONG_MODE_KEY, source, error)
    return {"target_class": target, "class_id": class_id, "threshold": threshold, "path": str(source),
            LONG_MODE_KEY: long_mode}


def exported_operating_point(point: dict) -> dict:
    """What an exported model carries of ``load_operating_point``'s dict: the clip threshold and, when
    chosen on recordings, the long-mode settings (``operating_point.json``'s keys, read back by
    ``parse_operating_point``)."""
    exported = {key: point[key] for key in ("target_class", "class_id", "threshold")}
    if point.get(LONG_MODE_KEY) is not None:
        exported[LONG_MODE_KEY] = long_mode_settings(*point[LONG_MODE_KEY])
    return exported


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------

@dataclass
class ClipPrediction:
    """Class probabilities ``(n_classes,)`` of one file: the mean over the windows of its clip feature
    (clip mode), or over all its long-mode windows (file mode)."""

    file: str
    probabilities: np.ndarray
    duration_s: float = math.nan


@dataclass
class WindowPredictions:
    """Per-window class probabilities ``(n_windows, n_classes)`` of one long file."""

    file: str
    probabilities: np.ndarray
    hop_s: float
    window_s: float
    duration_s: float

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Window start and end times (s), as ``events.window_bounds`` defines them."""
        return window_bounds(len(self.probabilities), self.hop_s, self.window_s, self.duration_s)


@dataclass
class Timings:
    """Seconds spent per stage (for the benchmark and the log)."""

    decode_s: float = 0.0  # reading + mono + resampling
    features_s: float = 0.0
    model_s: float = 0.0
    audio_s: float = 0.0

    @property
    def total_s(self) -> float:
        """Sum of the stages."""
        return self.decode_s + self.features_s + self.model_s


@dataclass
class Skipped:
    """An input that could not be processed, and why."""

    file: str
    reason: str


@dataclass
class Results:
    """Everything one run produced."""

    clips: list[ClipPrediction] = field(default_factory=list)
    long: list[WindowPredictions] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def n_processed(self) -> int:
        """Files that produced predictions."""
        return len(self.clips) + len(self.long)


# ---------------------------------------------------------------------------------------
# The predictor
# ---------------------------------------------------------------------------------------

class Predictor:
    """A checkpoint's model, class names and feature front end, ready to classify audio.

    ``channels_last`` (default on) stores conv weights and inputs channels-last: measured
    1.1-2x faster on CPU for resnet18 and audiocnn (``bench/bench_predict.py --sweep``).
    ``fold_batch_norm`` (default on) folds batch norms into the convs before them
    (``runtime.fold_batch_norms``); evaluation.py scores clips with the same folded model.
    AMP applies on CUDA only (``amp_dtype_for``), as in training.
    """

    def __init__(self, checkpoint: dict, device: str | torch.device = "cpu", amp: bool = True,
                 channels_last: bool = True, fold_batch_norm: bool = True):
        self.device = torch.device(device)
        self.class_names: list[str] = list(checkpoint["class_names"])
        if not checkpoint.get("feature_params"):
            raise CheckpointError(f"the checkpoint has no feature parameters (its lists had no {FEATURE_CONFIG}); "
                                  "re-run preprocessingBabyCrying.py, then train again")
        self.params = FeatureParams.from_dict(checkpoint["feature_params"])
        self.extractor = FeatureExtractor(self.params, self.device)
        self.window, self.hop = checkpoint_windows(checkpoint)  # frames
        self.silence = log_scale_for(self.params).silence  # what a padded window is filled with (pad_mode zeros)
        self.model = model_from_checkpoint(checkpoint)
        if fold_batch_norm:
            fold_batch_norms(self.model)
        self.model.to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = amp_dtype_for(self.device, amp)
        self.timings = Timings()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs) -> "Predictor":
        """Load ``path`` (FileNotFoundError with a hint when it is missing), or build ``audioset:<model>``."""
        if is_zero_shot(path):
            return cls(zero_shot_checkpoint(str(path)), device, **kwargs)
        return cls(check_required_keys(load_checkpoint(path, map_location="cpu"), path), device, **kwargs)

    @property
    def frame_s(self) -> float:
        """Seconds per frame (the front end's hop)."""
        return self.params.hop_length / self.params.sample_rate

    def auto_long_seconds(self, long_factor: float = LONG_FACTOR) -> float:
        """Auto mode's limit: files longer than ``long_factor`` windows go to long mode, except that a model
        trained on whole clips scores as one clip everything up to the ``max_seconds`` it was trained on."""
        return max(long_factor * self.window_s, self.params.max_seconds or 0.0)

    @property
    def window_s(self) -> float:
        """Window length in seconds: the model's input frames."""
        return self.window * self.frame_s

    @torch.inference_mode()
    def classify_features(self, features: np.ndarray) -> np.ndarray:
        """Log-mel features ``(B, n_mels, n_frames)`` -> probabilities ``(B, n_classes)`` (the model's activation)."""
        started = time.perf_counter()
        inputs = torch.as_tensor(features, dtype=torch.float32)[:, None]  # (B, 1, n_mels, n_frames)
        probabilities, _ = predict_probabilities(self.model, [inputs], self.device, self.amp_dtype, self.channels_last)
        self.timings.model_s += time.perf_counter() - started
        return probabilities

    def classify_clip_windows(self, windows: np.ndarray, counts: Sequence[int], batch_size: int = 32) -> np.ndarray:
        """Windows of several clips ``(N, n_mels, window)`` and ``counts`` per clip -> mean probabilities ``(B, C)``."""
        probabilities = np.concatenate([self.classify_features(windows[start:start + batch_size])
                                        for start in range(0, len(windows), batch_size)])
        return pool_windows(torch.from_numpy(probabilities), torch.as_tensor(counts)).numpy()

    def file_feature(self, path: str | Path) -> np.ndarray:
        """The feature preprocessing stores for ``path``: ``(n_mels, n_frames)``, or ``(n_mels, T)`` for whole clips."""
        started = time.perf_counter()
        feature = self.extractor.file_to_feature(path)
        self.timings.features_s += time.perf_counter() - started
        return feature

    def predict_clips(self, paths: Sequence[str], batch_size: int = 32) -> tuple[list[ClipPrediction], list[Skipped]]:
        """Clip mode for each of ``paths`` (batched); unreadable files are returned as Skipped."""
        predictions, skipped = [], []
        pending: list[tuple[str, np.ndarray]] = []  # (file, its windows (n_windows, n_mels, window))

        def flush() -> None:
            if pending:
                probabilities = self.classify_clip_windows(np.concatenate([windows for _, windows in pending]),
                                                           [len(windows) for _, windows in pending], batch_size)
                predictions.extend(ClipPrediction(file, p) for (file, _), p in zip(pending, probabilities))
                pending.clear()

        for path in paths:
            try:
                windows = cut_windows(self.file_feature(path), self.window, self.hop, self.params.pad_mode,
                                      self.silence)
            except Exception as error:  # one bad file never stops the run
                skipped.append(Skipped(path, describe_error(error)))
                continue
            pending.append((path, windows))
            if sum(len(windows) for _, windows in pending) >= batch_size:
                flush()
        flush()
        return predictions, skipped

    def predict_long(self, path: str | Path, hop_seconds: float | None = None, batch_size: int = 32,
                     block_seconds: float = BLOCK_SECONDS, progress: bool = False) -> WindowPredictions:
        """Sliding-window probabilities for one file, read block by block (bounded memory).

        Windows of the model's ``window`` frames of the recording's log-mel start every
        ``hop_seconds`` (rounded to whole frames; default: the checkpoint's hop, half a window);
        the last window is padded when frames remain after the last full one
        (``audioclf.windows``).
        """
        rate = self.params.sample_rate
        hop = self.hop_frames(hop_seconds)
        stream = LogMelStream(self.extractor)
        slicer = WindowSlicer(self.window, hop, self.params.pad_mode, self.silence)
        batch = np.empty((batch_size, self.params.n_mels, self.window), dtype=np.float32)
        n_batched, outputs = 0, []
        bar = tqdm(total=None, unit="s", desc=Path(path).name, disable=not progress, leave=False)
        blocks = iter_audio_blocks(path, rate, block_seconds)
        while True:
            started = time.perf_counter()
            block = next(blocks, None)
            self.timings.decode_s += time.perf_counter() - started
            started = time.perf_counter()
            frames = stream.finish() if block is None else stream.feed(block)  # (n_mels, k)
            self.timings.features_s += time.perf_counter() - started
            windows = slicer.feed(frames)
            for window in itertools.chain(windows, slicer.finish() if block is None else ()):
                batch[n_batched] = window
                n_batched += 1
                if n_batched == batch_size:
                    outputs.append(self.classify_features(batch))
                    n_batched = 0
            if block is None:
                break
            bar.update(round(block.shape[0] / rate, 1))
        bar.close()
        if n_batched:
            outputs.append(self.classify_features(batch[:n_batched]))
        duration = stream.n_seen / rate
        self.timings.audio_s += duration
        return WindowPredictions(str(path), np.concatenate(outputs), hop * self.frame_s, self.window_s, duration)

    def hop_frames(self, hop_seconds: float | None = None) -> int:
        """Long mode's hop in frames: ``hop_seconds`` rounded to whole frames, or the checkpoint's hop."""
        if hop_seconds is None:
            return self.hop
        return hop_from_seconds(hop_seconds, self.frame_s)

    def predict_file(self, path: str | Path, hop_seconds: float | None = None, batch_size: int = 32
                     ) -> ClipPrediction:
        """File mode: the mean of the long-mode window probabilities over the whole file.

        For YAMNet (0.96 s windows every 0.48 s, zero padding) this is YAMNet's own per-file score:
        the mean of its patch scores.
        """
        windows = self.predict_long(path, hop_seconds, batch_size)
        return ClipPrediction(str(path), windows.probabilities.mean(axis=0), windows.duration_s)

    def run(self, paths: Sequence[str], mode: str = "auto", long_factor: float = LONG_FACTOR,
            hop_seconds: float | None = None, batch_size: int = 32, progress: bool = False) -> Results:
        """Clip, file or long mode per file (``auto``: long when longer than ``auto_long_seconds``, else clip)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        results = Results()
        if mode == "file":
            for path in paths:
                try:
                    results.clips.append(self.predict_file(path, hop_seconds, batch_size))
                except Exception as error:
                    results.skipped.append(Skipped(path, describe_error(error)))
            return results
        clip_paths, long_paths = [], []
        for path in paths:
            if mode != "auto":
                (clip_paths if mode == "clip" else long_paths).append(path)
                continue
            try:
                duration = audio_info(path).duration
            except AudioReadError as error:
                results.skipped.append(Skipped(path, str(error)))
                continue
            (long_paths if duration > self.auto_long_seconds(long_factor) else clip_paths).append(path)
        clips, skipped = self.predict_clips(clip_paths, batch_size)
        results.clips.extend(clips)
        results.skipped.extend(skipped)
        for path in long_paths:
            try:
                results.long.append(self.predict_long(path, hop_seconds, batch_size, progress=progress))
            except Exception as error:
                results.skipped.append(Skipped(path, describe_error(error)))
        order = {path: index for index, path in enumerate(paths)}
        results.skipped.sort(key=lambda s: order.get(s.file, len(order)))
        return results


def describe_error(error: Exception) -> str:
    """The reason shown for a skipped file."""
    if isinstance(error, AudioReadError):
        return str(error)
    return f"unreadable: {type(error).__name__}: {error}"


# ---------------------------------------------------------------------------------------
# Detection and reference matching
# ---------------------------------------------------------------------------------------

def detect(windows: Sequence[WindowPredictions], class_names: Sequence[str],
           settings: dict[str, DetectionParams]) -> list[Event]:
    """Events of each class in ``settings`` (class name -> its detection settings) in every file."""
    events = []
    for prediction in windows:
        for name, params in settings.items():
            column = prediction.probabilities[:, class_names.index(name)]
            events.extend(detect_events(column, prediction.hop_s, prediction.window_s, prediction.duration_s,
                                        params, file=prediction.file, class_name=name))
    return sorted(events, key=lambda e: (e.file, e.onset_s, e.class_name))


def same_file(reference_name: str, path: str) -> bool:
    """A reference ``file`` entry names ``path`` when its path parts are a suffix of ``path``'s."""
    reference_parts = Path(reference_name).parts
    path_parts = Path(path).resolve().parts
    return len(reference_parts) <= len(path_parts) and path_parts[-len(reference_parts):] == reference_parts


def align_reference(reference: Sequence[Event], paths: Sequence[str]) -> tuple[list[Event], list[str]]:
    """Reference events re-keyed to the processed ``paths`` they name; plus the names matching none."""
    aligned, unmatched = [], []
    for event in reference:
        match = next((path for path in paths if event.file == path or same_file(event.file, path)), None)
        if match is None:
            unmatched.append(event.file)
        else:
            aligned.append(Event(match, event.class_name, event.onset_s, event.offset_s))
    return aligned, sorted(set(unmatched))


# ---------------------------------------------------------------------------------------
# Output files and tables
# ---------------------------------------------------------------------------------------

def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable ``(class, probability)`` pairs, most probable first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(class_names[i], float(probabilities[i])) for i in order]


def write_clip_csv(clips: Sequence[ClipPrediction], class_names: Sequence[str], k: int, path: str | Path) -> Path:
    """Columns ``file, class_1, probability_1, ..., class_k, probability_k``."""
    k = min(k, len(class_names))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file"] + [f"{name}_{rank}" for rank in range(1, k + 1) for name in ("class", "probability")])
    for clip in clips:
        writer.writerow([clip.file] + [value for name, p in top_k(clip.probabilities, class_names, k)
                                       for value in (name, f"{p:.6f}")])
    return atomic_write_text(path, buffer.getvalue())


def write_clip_json(clips: Sequence[ClipPrediction], class_names: Sequence[str], k: int, path: str | Path) -> Path:
    """A list of ``{file, top_k: [{class, probability}], probabilities: {class: p}}``."""
    rows = [{"file": clip.file,
             "top_k": [{"class": name, "probability": p} for name, p in top_k(clip.probabilities, class_names, k)],
             "probabilities": {name: float(p) for name, p in zip(class_names, clip.probabilities)}}
            for clip in clips]
    return atomic_write_json(path, rows)


def write_windows_csv(windows: Sequence[WindowPredictions], class_names: Sequence[str], path: str | Path) -> Path:
    """Columns ``file, start_s, end_s, <one probability column per class>``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "start_s", "end_s", *class_names])
    for prediction in windows:
        for start, end, row in zip(*prediction.bounds, prediction.probabilities):
            writer.writerow([prediction.file, f"{start:.3f}", f"{end:.3f}", *(f"{p:.6f}" for p in row)])
    return atomic_write_text(path, buffer.getvalue())


def write_events_json(events: Sequence[Event], path: str | Path) -> Path:
    """A list of event dicts (the CSV's columns)."""
    return atomic_write_json(path, [event.to_dict() for event in events])


def format_clip_table(clips: Sequence[ClipPrediction], class_names: Sequence[str], k: int) -> str:
    """One line per file: the file and its top-k ``class probability`` pairs."""
    width = min(60, max([len(c.file) for c in clips] + [4]))
    ranks = range(1, min(k, len(class_names)) + 1)
    lines = [f"{'file':<{width}}  " + "  ".join(f"{'top-' + str(rank):<24}" for rank in ranks)]
    for clip in clips:
        name = clip.file if len(clip.file) <= width else "..." + clip.file[-(width - 3):]
        lines.append(f"{name:<{width}}  " + "  ".join(
            f"{label[:17]:<17} {p:6.3f}" for label, p in top_k(clip.probabilities, class_names, k)))
    return "\n".join(lines)


def format_dcase2017(scores: dict) -> str:
    """``score_events``'s DCASE 2017 task 2 figures on one line: error rate, F1, false alarms per hour."""
    dcase = scores["dcase2017"]
    return (f"  DCASE 2017    error rate {dcase['error_rate']:.3f}  F1 {dcase['f1']:.3f}"
            f"  false alarms {dcase['false_alarms_per_hour']:.1f} per hour  (onset only, {dcase['t_collar'] * 1000:.0f}"
            f" ms collar; S {dcase['substitutions']}, D {dcase['deletions']}, I {dcase['insertions']},"
            f" N {dcase['n_reference']})")


def format_metrics(scores: dict) -> str:
    """DCASE 2017, event-based, segment-based, overlap and false-alarm lines."""
    event, segment = scores["event_based"], scores["segment_based"]
    return "\n".join([
        format_dcase2017(scores),
        f"  event-based   F1 {event['f1']:.3f}  precision {event['precision']:.3f}  recall {event['recall']:.3f}"
        f"  (TP {event['tp']}, FP {event['fp']}, FN {event['fn']}; onset collar {event['t_collar'] * 1000:.0f} ms,"
        f" offset collar max({event['t_collar'] * 1000:.0f} ms, {event['percentage_of_length']:.0%} of length))",
        f"  segment-based F1 {segment['f1']:.3f}  error rate {segment['error_rate']:.3f}"
        f"  ({segment['segment_s']:g} s segments; S {segment['substitutions']}, D {segment['deletions']},"
        f" I {segment['insertions']}, N {segment['n_reference']})",
        f"  overlap       {scores['overlap']['reference_found']} of {scores['overlap']['n_reference']} true events"
        f" overlap a detection; {scores['overlap']['estimated_on_reference']} of {scores['overlap']['n_estimated']}"
        " detections overlap a true event",
        f"  false alarms  {scores['false_alarms_per_hour']:.1f} per hour"
        f" ({event['fp']} in {scores['audio_seconds'] / 60:.1f} min of audio)",
    ])
