"""Choosing long-mode detection settings on recordings with reference events (e.g. validation soundscapes).

``load_tuning_set`` reads and checks the recordings and their reference (before any scoring);
``tune_on_recordings`` runs the model over every recording exactly as ``predict.py --long``
does (``Predictor.predict_long``: the same windows, the same batches-to-probabilities helper),
then tries every combination of a ``DetectionGrid`` (``events.DETECTION_GRID``, or the config's
``detection_grid`` over it) with the same post-processing
(``inference.detect``, see ``candidate_events``) and keeps the settings with the lowest DCASE
2017 task 2 event error rate (onset only, 500 ms collar), then the highest F1 with the same
matching; the first such
combination in grid order wins a tie. Evaluation writes the result into
``operating_point.json`` (``inference.LONG_MODE_KEY``), where ``predict.py --long`` finds it.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from audioclf.events import (DETECTION_GRID, DetectionGrid, DetectionParams, Event, dcase2017_metrics, merge_events,
                             read_events_csv, score_events, trim_edges, unfinished_soundscapes)
from audioclf.inference import (Predictor, WindowPredictions, align_reference, collect_inputs, detect,
                                long_mode_settings)

log = logging.getLogger(__name__)

SELECTION_RULE = "lowest DCASE 2017 event error rate (onset only, 500 ms collar), then highest event F1"


class TuningError(ValueError):
    """Recordings and references that cannot tune detection; the message names the file or key."""


def candidate_events(windows: Sequence[WindowPredictions], class_names: Sequence[str], target_class: str,
                     candidates: Sequence[DetectionParams]) -> Iterator[tuple[DetectionParams, list[Event]]]:
    """``(params, detect(windows, ..., {target_class: params}))`` for each candidate, in order.

    ``detect`` runs once per threshold and median filter (without merging, a minimum length or
    trimming); merge gap, minimum duration and edge trim are then the last three steps of the
    rules (``events`` module docstring) applied to those events, which equals running ``detect`` with them and is
    far cheaper for a grid (``tests/test_tuning.py`` checks the equality).
    """
    runs: dict[tuple, list[Event]] = {}
    for params in candidates:
        key = (params.threshold, params.threshold_low, params.median_filter)
        if key not in runs:
            unmerged = dataclasses.replace(params, merge_gap=0.0, min_duration=0.0, edge_trim=0.0)
            runs[key] = detect(windows, class_names, {target_class: unmerged})
        merged = merge_events(runs[key], params.merge_gap)
        yield params, trim_edges([event for event in merged if event.duration_s >= params.min_duration],
                                 params.edge_trim)


def select_detection_params(windows: Sequence[WindowPredictions], class_names: Sequence[str], target_class: str,
                            reference: Sequence[Event], candidates: Sequence[DetectionParams] | None = None
                            ) -> tuple[DetectionParams, dict]:
    """The best of ``candidates`` (default: ``DETECTION_GRID``'s) by ``SELECTION_RULE``, and its DCASE 2017 scores.

    ``reference``: the target class's events, their ``file`` being the windows' files. Ties go to
    the earlier candidate.
    """
    best: tuple[tuple[float, float], DetectionParams, dict] | None = None
    candidates = DETECTION_GRID.candidates() if candidates is None else candidates
    for params, events in candidate_events(windows, class_names, target_class, candidates):
        scores = dcase2017_metrics(reference, events)
        key = (scores["error_rate"], -scores["f1"])
        if best is None or key < best[0]:
            best = (key, params, scores)
    return best[1], best[2]


@dataclass(frozen=True)
class TuningSet:
    """Recordings to tune on and their reference events of the target class (``load_tuning_set``)."""

    recordings: Path
    reference_csv: Path
    target_class: str
    paths: list[str]
    reference: list[Event]  # the target class's events, their ``file`` being one of ``paths``


def load_tuning_set(recordings: str | Path, reference_csv: str | Path, target_class: str) -> TuningSet:
    """The audio files under ``recordings`` and the ``target_class`` events of ``reference_csv``, checked.

    TuningError (or the reference reader's ValueError naming the line) for a missing folder or
    file, a folder without audio, events of files that are not there, or no target events: cheap,
    so evaluation calls it before any scoring.
    """
    recordings, reference_csv = Path(recordings), Path(reference_csv)
    if not recordings.is_dir():
        raise TuningError(f'"detection_soundscapes" folder not found: {recordings}')
    if unfinished_soundscapes(recordings):
        raise TuningError(f'"detection_soundscapes" {recordings}: its build was interrupted; run the '
                          "tools.soundscapes command again")
    paths = collect_inputs([recordings])
    if not paths:
        raise TuningError(f'"detection_soundscapes" {recordings} holds no audio files')
    try:
        reference = read_events_csv(reference_csv)
    except FileNotFoundError:
        raise TuningError(f'"detection_reference" file not found: {reference_csv}') from None
    aligned, unmatched = align_reference(reference, paths)
    if unmatched:
        raise TuningError(f"{reference_csv} names files that are not under {recordings}: {', '.join(unmatched[:5])}"
                          " (use the reference CSV written with these recordings)")
    aligned = [event for event in aligned if event.class_name == target_class]
    if not aligned:
        raise TuningError(f"{reference_csv} has no {target_class!r} events to tune detection on")
    return TuningSet(recordings, reference_csv, target_class, paths, aligned)


def tune_on_recordings(predictor: Predictor, tuning_set: TuningSet, hop_seconds: float, batch_size: int = 32,
                       grid: DetectionGrid = DETECTION_GRID, progress: bool = False) -> dict:
    """Long-mode detection settings chosen on ``tuning_set``'s recordings (``load_tuning_set``); the ``long_mode`` dict.

    Keys: ``hop_seconds``, ``threshold``, ``threshold_low``, ``median_filter``, ``merge_gap``,
    ``min_duration``, ``edge_trim`` (what ``predict.py --long`` uses), ``selected_by``, ``n_candidates``,
    ``recordings``, ``reference``, ``n_recordings``, ``audio_seconds``, ``n_reference_events`` and
    ``measured`` (``events.score_events`` of the chosen settings: event-based, ``dcase2017``, ...).
    """
    target_class = tuning_set.target_class
    if target_class not in predictor.class_names:
        raise TuningError(f"target class {target_class!r} is not a class of the model ({predictor.class_names})")
    recordings, reference_csv = tuning_set.recordings, tuning_set.reference_csv
    paths, aligned = tuning_set.paths, tuning_set.reference
    windows = [predictor.predict_long(path, hop_seconds, batch_size, progress=progress) for path in paths]
    params, _ = select_detection_params(windows, predictor.class_names, target_class, aligned, grid.candidates())
    events = detect(windows, predictor.class_names, {target_class: params})
    durations = {prediction.file: prediction.duration_s for prediction in windows}
    scores = score_events(aligned, events, durations, [target_class])
    log.info("detection settings from %d recordings (%.1f min, %d %s events): threshold %g, median filter %d, "
             "merge gap %g s, min duration %g s, edge trim %g s: event error rate %.3f, F1 %.3f (DCASE 2017)",
             len(paths), scores["audio_seconds"] / 60, len(aligned), target_class, params.threshold,
             params.median_filter, params.merge_gap, params.min_duration, params.edge_trim,
             scores["dcase2017"]["error_rate"], scores["dcase2017"]["f1"])
    return {**long_mode_settings(windows[0].hop_s, params), "selected_by": SELECTION_RULE,
            "n_candidates": len(grid.candidates()), "recordings": str(recordings), "reference": str(reference_csv),
            "n_recordings": len(paths), "audio_seconds": scores["audio_seconds"],
            "n_reference_events": len(aligned), "measured": scores}
