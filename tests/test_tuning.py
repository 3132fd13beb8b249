"""audioclf/tuning.py: detection settings picked on recordings by event error rate, then F1."""
from __future__ import annotations

import numpy as np
import pytest

from audioclf.events import DETECTION_GRID, DetectionGrid, DetectionParams, Event
from audioclf.inference import WindowPredictions, detect
from audioclf.tuning import candidate_events, select_detection_params

CLASSES = ["babycry", "other"]
HOP_S, WINDOW_S = 0.5, 1.0


def windows_of(file: str, target: list[float]) -> WindowPredictions:
    """Per-window probabilities ``(n, 2)`` from the target column; windows of 1 s every 0.5 s."""
    target = np.asarray(target, dtype=np.float64)
    probabilities = np.stack([target, 1 - target], axis=1)  # (n_windows, 2)
    return WindowPredictions(file, probabilities, HOP_S, WINDOW_S, duration_s=(len(target) + 1) * HOP_S)


def cry(file: str, onset: float, offset: float) -> Event:
    return Event(file, "babycry", onset, offset)


def test_the_grid_is_every_combination_in_order():
    candidates = DETECTION_GRID.candidates()
    grid = DETECTION_GRID
    assert len(candidates) == (len(grid.thresholds) * len(grid.median_filters) * len(grid.merge_gaps)
                               * len(grid.min_durations) * len(grid.edge_trims)) == 1536
    assert candidates[0] == DetectionParams(grid.thresholds[0], None, grid.median_filters[0], grid.min_durations[0],
                                            grid.merge_gaps[0], grid.edge_trims[0])
    assert candidates[1] == DetectionParams(grid.thresholds[0], None, grid.median_filters[0], grid.min_durations[0],
                                            grid.merge_gaps[0], grid.edge_trims[1])  # edge trim innermost
    assert all(params.validate() for params in candidates)


def test_selection_finds_the_settings_that_remove_a_blip_and_bridge_a_dip():
    # a.wav: a cry over windows 4-11 whose probability dips for one window, and a one-window blip at 16;
    # b.wav: no cry, one weaker blip
    a = windows_of("a.wav", [0.05] * 4 + [0.9, 0.95, 0.9, 0.2, 0.9, 0.95, 0.9, 0.9] + [0.05] * 4 + [0.97] + [0.05] * 4)
    b = windows_of("b.wav", [0.05] * 8 + [0.6] + [0.05] * 8)
    reference = [cry("a.wav", 2.25, 6.25)]  # cells of windows 4..11: [2.25, 6.25)
    plain = DetectionParams(threshold=0.5, median_filter=1)
    plain_events = detect([a, b], CLASSES, {"babycry": plain})
    assert len(plain_events) == 4  # the cry in two halves, the blip, b's blip
    params, scores = select_detection_params([a, b], CLASSES, "babycry", reference)
    assert (scores["error_rate"], scores["f1"]) == (0.0, 1.0)
    events = detect([a, b], CLASSES, {"babycry": params})
    assert [(e.file, e.onset_s) for e in events] == [("a.wav", 2.25)]
    # the first such settings in grid order: at the lowest threshold and no median filter, a 0.5 s merge
    # gap bridges the dip (one 0.5 s cell) and a 1 s minimum drops the blips (one cell each)
    assert params == DetectionParams(threshold=0.3, median_filter=1, merge_gap=0.5, min_duration=1.0)


def test_error_rate_first_then_f1_then_candidate_order():
    # a.wav: a 1 s cry and two one-window false alarms; b.wav and c.wav: weaker cries
    a = windows_of("a.wav", [0.1, 0.9, 0.9, 0.1, 0.99, 0.1, 0.1, 0.99, 0.1])
    b = windows_of("b.wav", [0.1, 0.6, 0.6, 0.1, 0.1])
    c = windows_of("c.wav", [0.1, 0.6, 0.6, 0.1, 0.1])
    recordings = [a, b, c]
    reference = [cry("a.wav", 0.75, 1.75), cry("b.wav", 0.75, 1.75), cry("c.wav", 0.75, 1.75)]
    low = DetectionParams(threshold=0.5, median_filter=1)  # 3 hits, 2 false alarms: ER 2/3, F1 0.75
    high = DetectionParams(threshold=0.95, median_filter=1)  # 3 misses, 2 false alarms: ER 5/3, F1 0
    strict = DetectionParams(threshold=0.8, median_filter=1, min_duration=0.8)  # 1 hit, 2 misses: ER 2/3, F1 0.5
    params, scores = select_detection_params(recordings, CLASSES, "babycry", reference, [high, low])
    assert params == low and scores["error_rate"] == pytest.approx(2 / 3) and scores["f1"] == pytest.approx(0.75)
    # equal error rates: the higher F1 wins, whatever the order
    for candidates in ([strict, low], [low, strict]):
        params, scores = select_detection_params(recordings, CLASSES, "babycry", reference, candidates)
        assert params == low and scores["f1"] == pytest.approx(0.75)
    _, strict_scores = select_detection_params(recordings, CLASSES, "babycry", reference, [strict])
    assert (strict_scores["error_rate"], strict_scores["f1"]) == (pytest.approx(2 / 3), pytest.approx(0.5))
    # identical scores: the first candidate
    same = DetectionParams(threshold=0.55, median_filter=1)
    assert select_detection_params(recordings, CLASSES, "babycry", reference, [same, low])[0] == same


def test_candidate_events_equal_detect_for_every_setting_of_the_grid():
    rng = np.random.default_rng(0)
    recordings = []
    for index in range(3):  # random walks in [0, 1]: runs, dips, blips
        walk = np.abs(np.cumsum(rng.normal(0, 0.2, 60)) % 2.0)
        recordings.append(windows_of(f"{index}.wav", np.where(walk > 1, 2 - walk, walk).tolist()))
    n_events = 0
    for params, events in candidate_events(recordings, CLASSES, "babycry", DETECTION_GRID.candidates()):
        expected = detect(recordings, CLASSES, {"babycry": params})
        assert [(e.file, e.onset_s, e.offset_s, e.peak_probability) for e in events] == \
            [(e.file, e.onset_s, e.offset_s, e.peak_probability) for e in expected], params
        np.testing.assert_allclose([e.mean_probability for e in events], [e.mean_probability for e in expected])
        n_events += len(events)
    assert n_events > 1000  # the sequences give events under most settings
