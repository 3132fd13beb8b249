"""Tests for audioclf/events.py on hand-made examples: smoothing, hysteresis, time rule, metrics."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from audioclf.events import (DCASE2017_ONSET_COLLAR_S, DetectionParams, Event, EventDetector, EventUpdate, active_runs,
                             dcase2017_metrics, detect_events, event_based_metrics, events_match,
                             false_alarms_per_hour, format_comparison, hysteresis_mask, match_events, median_filter,
                             merge_events, read_events_csv, score_events, segment_based_metrics, window_cells,
                             write_events_csv)
from audioclf.streaming import latency_bound_s


def ev(onset: float, offset: float, name: str = "cry", file: str = "a.wav") -> Event:
    return Event(file, name, onset, offset)


# ---------------------------------------------------------------------------------------
# Smoothing and thresholds
# ---------------------------------------------------------------------------------------

def test_median_filter_removes_blips_and_fills_holes_with_edge_padding():
    values = np.array([0, 1, 0, 0, 1, 1, 0], dtype=float)
    # padded with the edge values: 0 0 1 0 0 1 1 0 0 -> medians of 3
    np.testing.assert_array_equal(median_filter(values, 3), [0, 0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(median_filter([1, 0, 1, 1, 0, 1], 3), [1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(median_filter(values, 1), values)
    assert median_filter(np.zeros(0), 5).shape == (0,)
    # a 2-D input is filtered per column
    np.testing.assert_array_equal(median_filter(np.stack([values, 1 - values], axis=1), 3)[:, 1],
                                  [1, 1, 1, 1, 0, 0, 1])
    with pytest.raises(ValueError, match="odd"):
        median_filter(values, 4)


def test_hysteresis_keeps_runs_above_low_that_reach_high():
    values = np.array([0.2, 0.6, 0.9, 0.6, 0.3, 0.6, 0.2, 0.85])
    np.testing.assert_array_equal(hysteresis_mask(values, high=0.8, low=0.5),
                                  [False, True, True, True, False, False, False, True])
    # low == high is a plain threshold
    np.testing.assert_array_equal(hysteresis_mask(values, 0.6, 0.6), values >= 0.6)
    with pytest.raises(ValueError, match="above the high"):
        hysteresis_mask(values, 0.5, 0.6)
    assert active_runs(np.array([True, True, False, True])) == [(0, 2), (3, 4)]
    assert active_runs(np.array([], dtype=bool)) == []


def test_detection_params_defaults_and_validation():
    assert DetectionParams(threshold=0.8).low == pytest.approx(0.56)  # 0.7 x threshold
    assert DetectionParams(threshold=0.8, threshold_low=0.3).low == 0.3
    with pytest.raises(ValueError, match="threshold_low"):
        DetectionParams(threshold=0.5, threshold_low=0.6).validate()
    with pytest.raises(ValueError, match="median_filter"):
        DetectionParams(median_filter=2).validate()
    with pytest.raises(ValueError, match="min_duration"):
        DetectionParams(min_duration=-1).validate()
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="edge_trim"):
            DetectionParams(edge_trim=bad).validate()


# ---------------------------------------------------------------------------------------
# The time rule
# ---------------------------------------------------------------------------------------

def test_window_cells_tile_the_file_around_window_centres():
    # 5 full windows of 2 s every 1 s in 6 s: centres 1..5 s, cells split halfway between them, the first
    # starting as far before its centre as the second (not at 0 s), the last ending at the end of the file
    np.testing.assert_allclose(window_cells(5, 1.0, 2.0, 6.0), [0.5, 1.5, 2.5, 3.5, 4.5, 6.0])
    # a padded last window [4, 5.5) is centred on its real audio (4.75 s)
    np.testing.assert_allclose(window_cells(5, 1.0, 2.0, 5.5), [0.5, 1.5, 2.5, 3.5, 4.375, 5.5])
    # YAMNet's windows every 0.25 s; a first cell never starts before the file
    np.testing.assert_allclose(window_cells(3, 0.25, 0.96, 2.0), [0.355, 0.605, 0.855, 2.0])
    np.testing.assert_allclose(window_cells(3, 2.0, 2.0, 6.0), [0.0, 2.0, 4.0, 6.0])
    # a file shorter than one window: one cell, the whole file
    np.testing.assert_allclose(window_cells(1, 1.0, 2.0, 0.7), [0, 0.7])


def test_a_cry_in_the_first_second_gets_the_onset_a_later_one_would():
    # YAMNet-like windows (0.96 s every 0.25 s); the model fires for a cry anywhere in a window. A cry from
    # 0.8 s to 3 s fires windows 0.. (window 0 spans 0-0.96 s); the same cry 10 s later fires from the
    # window whose span first reaches it. Both onsets must sit as far before their cry.
    hop, window, duration = 0.25, 0.96, 20.0
    n = int((duration - window) / hop) + 1
    starts = np.arange(n) * hop

    def onset_of(cry_start: float, cry_end: float) -> float:
        fires = (starts < cry_end) & (starts + window > cry_start)
        events = detect_events(fires.astype(float), hop, window, duration, DetectionParams(threshold=0.5))
        assert len(events) == 1
        return events[0].onset_s

    early, late = onset_of(0.8, 3.0) - 0.8, onset_of(10.8, 13.0) - 10.8
    assert early == pytest.approx(late, abs=hop)
    assert abs(early) < DCASE2017_ONSET_COLLAR_S  # within DCASE 2017's collar (0 s was 0.8 s off)


def test_detect_events_maps_window_runs_to_cells_then_merges_and_drops_short():
    # 7 windows of 2 s every 1 s over 8 s: cells [0,1.5) [1.5,2.5) ... [5.5,6.5) [6.5,8)
    probabilities = np.array([0.1, 0.9, 0.7, 0.1, 0.1, 0.6, 0.1])
    plain = DetectionParams(threshold=0.5, median_filter=1)
    events = detect_events(probabilities, 1.0, 2.0, 8.0, plain, file="x.wav", class_name="cry")
    assert [(e.onset_s, e.offset_s) for e in events] == [(1.5, 3.5), (5.5, 6.5)]
    assert (events[0].peak_probability, events[0].mean_probability) == pytest.approx((0.9, 0.8))
    assert (events[1].file, events[1].class_name, events[1].peak_probability) == ("x.wav", "cry", 0.6)

    merged = detect_events(probabilities, 1.0, 2.0, 8.0, DetectionParams(0.5, median_filter=1, merge_gap=2.0))
    assert [(e.onset_s, e.offset_s) for e in merged] == [(1.5, 6.5)]
    # peak over both parts, mean weighted by the parts' durations: (0.8 * 2 + 0.6 * 1) / 3
    assert (merged[0].peak_probability, merged[0].mean_probability) == pytest.approx((0.9, 2.2 / 3))
    # a gap of 2 s is not merged with merge_gap 1.9
    assert len(detect_events(probabilities, 1.0, 2.0, 8.0, DetectionParams(0.5, median_filter=1, merge_gap=1.9))) == 2

    long_only = detect_events(probabilities, 1.0, 2.0, 8.0, DetectionParams(0.5, median_filter=1, min_duration=1.5))
    assert [(e.onset_s, e.offset_s) for e in long_only] == [(1.5, 3.5)]

    # a median filter of 3 windows removes the one-window blip at window 5
    smoothed = detect_events(probabilities, 1.0, 2.0, 8.0, DetectionParams(0.5, median_filter=3))
    assert [(e.onset_s, e.offset_s) for e in smoothed] == [(1.5, 3.5)]


def test_edge_trim_moves_both_ends_in_by_at_most_a_quarter_of_the_event():
    # 7 windows of 2 s every 1 s over 8 s: events [1.5, 3.5) and [5.5, 6.5) untrimmed (the test above)
    probabilities = np.array([0.1, 0.9, 0.7, 0.1, 0.1, 0.6, 0.1])
    trimmed = detect_events(probabilities, 1.0, 2.0, 8.0, DetectionParams(0.5, median_filter=1, edge_trim=0.3))
    # 2 s long: 0.3 s off each end; 1 s long: a quarter of it, 0.25 s, so that it keeps half its length
    assert [(e.onset_s, e.offset_s) for e in trimmed] == [pytest.approx((1.8, 3.2)), pytest.approx((5.75, 6.25))]
    assert [e.peak_probability for e in trimmed] == [0.9, 0.6]
    # merging and the minimum length see the untrimmed events: the trim comes last
    merged = detect_events(probabilities, 1.0, 2.0, 8.0,
                           DetectionParams(0.5, median_filter=1, merge_gap=2.0, min_duration=5.0, edge_trim=0.3))
    assert [(e.onset_s, e.offset_s) for e in merged] == [pytest.approx((1.8, 6.2))]


def test_a_trimmed_start_waits_until_its_onset_is_final():
    # 1 s windows every 0.5 s; untrimmed, the event's cells start at 5.25 s and its start is certain
    # once one cell is active; with edge_trim 0.5 it waits for 2 s (4 x 0.5) of event, so the
    # reported onset (5.75 s) is the final one
    hop_s, window_s = 0.5, 1.0
    params = DetectionParams(threshold=0.5, median_filter=1, edge_trim=0.5)
    detector = EventDetector(params, hop_s, window_s, class_name="cry")
    updates = {}
    for index, p in enumerate([0.0] * 10 + [0.9] * 6 + [0.0] * 6):
        for update in detector.push([p], index * hop_s + window_s):
            updates[update.kind] = (update, index)
    (start, start_index), (end, _) = updates["start"], updates["end"]
    assert (start.event.onset_s, end.event.onset_s, end.event.offset_s) == (5.75, 5.75, 7.75)  # [5.25, 8.25) trimmed
    # window 13's cell ends at 5.25 + 2 s = 7.25 s, where window 14's starts: known once window 14 is in
    # (untrimmed, as in test_incremental_detector_reports_as_soon_as_the_rules_allow, at window 11)
    assert start_index == 14 and start.decided_s == 14 * hop_s + window_s


def test_detect_events_hysteresis_extends_events_below_threshold():
    probabilities = np.array([0.1, 0.6, 0.9, 0.6, 0.1, 0.6])
    events = detect_events(probabilities, 0.5, 1.0, 3.5, DetectionParams(0.8, threshold_low=0.5, median_filter=1))
    # windows 1..3 (centres 1.0, 1.5, 2.0 s) -> cells from 0.75 to 2.25 s; window 5 never reaches 0.8
    assert [(e.onset_s, e.offset_s) for e in events] == [(0.75, 2.25)]
    assert events[0].mean_probability == pytest.approx(0.7)
    without = detect_events(probabilities, 0.5, 1.0, 3.5, DetectionParams(0.8, threshold_low=0.8, median_filter=1))
    assert [(e.onset_s, e.offset_s) for e in without] == [(1.25, 1.75)]
    # events at the file edges: from half a hop before the first centre (1 s), to the file's end
    edges = detect_events(np.array([0.9, 0.1, 0.9]), 1.0, 2.0, 4.0, DetectionParams(0.5, median_filter=1))
    assert [(e.onset_s, e.offset_s) for e in edges] == [(0.5, 1.5), (2.5, 4.0)]
    assert detect_events(np.zeros(0), 1.0, 2.0, 0.0, DetectionParams()) == []


def test_merge_events_keeps_files_and_classes_apart():
    events = [ev(0, 1), ev(1.2, 2), ev(1.1, 3, name="dog"), ev(1.3, 2, file="b.wav")]
    merged = merge_events(events, 0.5)
    assert sorted((e.file, e.class_name, e.onset_s, e.offset_s) for e in merged) == [
        ("a.wav", "cry", 0, 2), ("a.wav", "dog", 1.1, 3), ("b.wav", "cry", 1.3, 2)]


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------

def test_event_based_metrics_collars_by_hand():
    reference = [ev(1.0, 3.0), ev(10.0, 15.0), ev(20.0, 21.0)]
    estimated = [
        ev(1.15, 3.19),   # onset 0.15 <= 0.2, offset 0.19 <= 0.2: hit
        ev(10.1, 15.9),   # offset off by 0.9 <= 20 % of 5 s = 1.0: hit
        ev(19.7, 21.0),   # onset off by 0.3 > 0.2: miss + false alarm
        ev(30.0, 31.0),   # nothing there: false alarm
    ]
    scores = event_based_metrics(reference, estimated)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (2, 2, 1)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 7)
    # the offset collar is at least 200 ms for short events: off by 0.21 s misses
    assert event_based_metrics([ev(0, 0.5)], [ev(0, 0.71)])["tp"] == 0
    assert event_based_metrics([ev(0, 0.5)], [ev(0, 0.69)])["tp"] == 1


def test_event_matching_is_one_to_one_and_maximal():
    # two detections of one event: one hit, one false alarm
    scores = event_based_metrics([ev(0, 2)], [ev(0.05, 2), ev(0.1, 2.1)])
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 1, 0)
    # greedy matching would give R1 <- E1 and leave R2 unmatched; the maximum matching finds 2
    reference = [ev(0.0, 1.0), ev(0.35, 1.0)]
    estimated = [ev(0.18, 1.0), ev(0.0, 1.0)]
    assert match_events(reference, estimated) == [(0, 1), (1, 0)]
    # other class or other file never matches
    assert event_based_metrics([ev(0, 1)], [ev(0, 1, name="dog"), ev(0, 1, file="b.wav")])["tp"] == 0
    # nothing to find and nothing found is perfect; nothing found of something scores 0
    assert event_based_metrics([], [])["f1"] == 1.0
    assert event_based_metrics([ev(0, 1)], [])["f1"] == 0.0


def random_events(rng: np.random.Generator, n: int) -> list[Event]:
    """``n`` events in 3 files and 2 classes, onsets in 0-4 s, 0.2-2.2 s long."""
    return [Event(f"f{rng.integers(3)}.wav", ["cry", "dog"][rng.integers(2)], onset, onset + rng.uniform(0.2, 2))
            for onset in rng.uniform(0, 4, n)]


def test_matching_pairs_events_within_their_own_file_in_list_order():
    """Two files interleaved: the pairs (and so the substitutions) are the ones the list order gives."""
    reference = [ev(0.0, 1.0, file="a.wav"), ev(0.0, 1.0, file="b.wav"), ev(0.3, 1.0, file="a.wav")]
    estimated = [ev(0.1, 1.0, file="b.wav"), ev(0.2, 1.0, file="a.wav"), ev(0.1, 1.0, file="a.wav")]
    # the first a.wav reference takes estimate 1, the first it can; the third then claims 1 back by an
    # augmenting path, so the first moves on to 2 (the pairs the all-pairs scan gave before files were grouped)
    assert match_events(reference, estimated, t_collar=0.5, evaluate_offset=False) == [(0, 2), (1, 0), (2, 1)]
    # a dog in b.wav and one in a.wav: the unmatched cry of a.wav takes a.wav's dog (sed_eval's substitution)
    reference = [ev(0.0, 1.0, file="a.wav"), ev(2.0, 3.0, file="a.wav")]
    estimated = [ev(0.0, 1.0, file="a.wav"), ev(2.1, 3.0, name="dog", file="b.wav"),
                 ev(2.1, 3.0, name="dog", file="a.wav")]
    scores = dcase2017_metrics(reference, estimated)
    assert (scores["tp"], scores["substitutions"], scores["deletions"], scores["insertions"]) == (1, 1, 0, 1)


def test_matching_over_many_files_equals_a_brute_force_maximum_matching():
    """Random events in several files and classes: as many pairs as the best assignment, every pair a real match,
    and the substitutions sed_eval's greedy pass over all unmatched events would count."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        reference, estimated = random_events(rng, int(rng.integers(0, 5))), random_events(rng, int(rng.integers(0, 5)))
        pairs = match_events(reference, estimated, t_collar=0.5, evaluate_offset=False)
        assert all(events_match(reference[r], estimated[e], 0.5, evaluate_offset=False) for r, e in pairs)
        assert len({r for r, _ in pairs}) == len({e for _, e in pairs}) == len(pairs)
        best = 0
        for assignment in itertools.permutations(range(len(estimated) + len(reference)), len(reference)):
            best = max(best, sum(e < len(estimated) and events_match(reference[r], estimated[e], 0.5,
                                                                     evaluate_offset=False)
                                 for r, e in enumerate(assignment)))
        assert len(pairs) == best
        free = [e for e in range(len(estimated)) if e not in {e for _, e in pairs}]
        expected = 0
        for r in sorted(set(range(len(reference))) - {r for r, _ in pairs}):
            hit = next((e for e in free if events_match(reference[r], estimated[e], 0.5, evaluate_offset=False,
                                                        same_class=False)), None)
            if hit is not None:
                free.remove(hit)
                expected += 1
        assert dcase2017_metrics(reference, estimated)["substitutions"] == expected


def test_dcase2017_metric_matches_onsets_only_within_500_ms():
    assert DCASE2017_ONSET_COLLAR_S == 0.5
    # the offset does not count: a detection running 8 s past the cry's end is a hit
    hit = dcase2017_metrics([ev(10.0, 12.0)], [ev(10.4, 20.0)])
    assert (hit["tp"], hit["error_rate"], hit["f1"]) == (1, 0.0, 1.0)
    assert hit["evaluate_offset"] is False and hit["t_collar"] == 0.5
    # exactly 500 ms off is inside the collar, 600 ms off is a deletion plus an insertion
    assert dcase2017_metrics([ev(10.0, 12.0)], [ev(10.5, 11.0)])["tp"] == 1
    miss = dcase2017_metrics([ev(10.0, 12.0)], [ev(10.6, 12.0)])
    assert (miss["substitutions"], miss["deletions"], miss["insertions"]) == (0, 1, 1)
    assert (miss["error_rate"], miss["f1"]) == (2.0, 0.0)
    # the same pair under the default event-based collars (200 ms onset) is a miss as well
    assert event_based_metrics([ev(10.0, 12.0)], [ev(10.4, 20.0)])["tp"] == 0


def test_dcase2017_error_rate_by_hand_over_files():
    # a.wav: found (onset 0.3 s late); b.wav: missed; c.wav (no cry): one false alarm, and a
    # second detection of a.wav's cry is an insertion too. N = 2, D = 1, I = 2: ER = 3 / 2.
    reference = [ev(5.0, 7.0), ev(3.0, 4.0, file="b.wav")]
    estimated = [ev(5.3, 6.0), ev(5.4, 7.0), ev(12.0, 13.0, file="c.wav")]
    scores = dcase2017_metrics(reference, estimated)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 2, 1)
    assert (scores["substitutions"], scores["deletions"], scores["insertions"]) == (0, 1, 2)
    assert scores["error_rate"] == pytest.approx(1.5)
    assert scores["f1"] == pytest.approx(2 * 1 / (2 + 3))  # 2 TP / (N_ref + N_est)
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == pytest.approx(0.5)
    # a dog called a cry at the right time is one substitution (ER 1), not a deletion and an insertion (ER 2)
    substituted = dcase2017_metrics([ev(5.0, 6.0, name="dog")], [ev(5.1, 6.0)])
    assert (substituted["substitutions"], substituted["deletions"], substituted["insertions"]) == (1, 0, 0)
    assert (substituted["error_rate"], substituted["f1"]) == (1.0, 0.0)
    assert substituted["class_wise"]["dog"]["error_rate"] == 1.0  # per class: a deletion
    # nothing to find: 0 when nothing is found, else 1
    assert dcase2017_metrics([], [])["error_rate"] == 0.0
    assert dcase2017_metrics([], [ev(1, 2)])["error_rate"] == 1.0


def test_segment_based_metrics_by_hand():
    # 1 s segments over 5 s; ref cry covers segments 0-2, detection covers 1-3
    scores = segment_based_metrics([ev(0.5, 2.2)], [ev(1.5, 3.1)], {"a.wav": 5.0}, ["cry", "dog"])
    assert (scores["tp"], scores["fp"], scores["fn"], scores["n_reference"]) == (2, 1, 1, 3)
    assert (scores["substitutions"], scores["deletions"], scores["insertions"]) == (0, 1, 1)
    assert scores["error_rate"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    # a dog called a cry in segment 4 is one substitution, not a deletion plus an insertion
    reference = [ev(0.5, 2.2), ev(4.0, 4.5, name="dog")]
    estimated = [ev(1.5, 3.1), ev(4.2, 4.8)]
    scores = segment_based_metrics(reference, estimated, {"a.wav": 5.0}, ["cry", "dog"])
    assert (scores["substitutions"], scores["deletions"], scores["insertions"]) == (1, 1, 1)
    assert scores["error_rate"] == pytest.approx(3 / 4)
    assert scores["f1"] == pytest.approx(0.5)
    # an event ending exactly on a boundary does not touch the next segment
    assert segment_based_metrics([ev(0, 2.0)], [ev(2.0, 3.0)], {"a.wav": 4.0})["tp"] == 0


def test_score_events_and_false_alarm_rate():
    assert false_alarms_per_hour(2, 1800.0) == pytest.approx(4.0)
    assert false_alarms_per_hour(3, 0.0) == 0.0
    reference = [ev(1, 3), ev(1, 3, file="other.wav"), ev(5, 6, name="dog")]
    estimated = [ev(1.1, 3.1), ev(10, 11)]
    scores = score_events(reference, estimated, {"a.wav": 1800.0}, classes=["cry"])
    # other.wav is not scored (not processed); dog is not a scored class
    assert scores["event_based"]["tp"] == 1 and scores["event_based"]["fp"] == 1
    assert scores["event_based"]["n_reference"] == 1
    assert scores["false_alarms_per_hour"] == pytest.approx(2.0)
    # DCASE 2017's onset-only figures sit beside the others, with their own false-alarm rate
    assert scores["dcase2017"]["tp"] == 1 and scores["dcase2017"]["false_alarms_per_hour"] == pytest.approx(2.0)
    # a detection 0.5 s early misses the collars but still overlaps its event
    loose = score_events([ev(1, 3), ev(10, 12)], [ev(0.5, 3.5), ev(20, 21)], {"a.wav": 60.0})
    assert loose["event_based"]["tp"] == 0
    assert loose["overlap"] == {"n_reference": 2, "reference_found": 1, "n_estimated": 2,
                                "estimated_on_reference": 1}


# ---------------------------------------------------------------------------------------
# Files and tables
# ---------------------------------------------------------------------------------------

def test_read_events_csv_accepts_both_column_styles_and_tabs(tmp_path):
    (tmp_path / "a.csv").write_text("file,onset_s,offset_s,class\nlong.wav,1.5,3.0,babycry\n")
    (tmp_path / "b.tsv").write_text("filename\tonset\toffset\tevent_label\nx/long.wav\t2\t4.25\tdog\n")
    assert read_events_csv(tmp_path / "a.csv") == [Event("long.wav", "babycry", 1.5, 3.0)]
    assert read_events_csv(tmp_path / "b.tsv") == [Event("x/long.wav", "dog", 2.0, 4.25)]
    (tmp_path / "bad.csv").write_text("file,start,offset,class\na,1,2,c\n")
    with pytest.raises(ValueError, match="'onset_s' or 'onset'"):
        read_events_csv(tmp_path / "bad.csv")
    (tmp_path / "reversed.csv").write_text("file,onset,offset,class\na,3,2,c\n")
    with pytest.raises(ValueError, match="line 2"):
        read_events_csv(tmp_path / "reversed.csv")


@pytest.mark.parametrize("onset, offset", [("nan", "3"), ("1", "inf"), ("-1", "2")])
def test_a_reference_time_that_is_not_finite_or_negative_names_its_line(tmp_path, onset, offset):
    """NaN or inf would stop scoring after the whole long-mode pass with a traceback; refused on reading."""
    (tmp_path / "ref.csv").write_text(f"file,onset,offset,class\na.wav,0,1,c\na.wav,{onset},{offset},c\n")
    with pytest.raises(ValueError, match=rf"ref\.csv, line 3: onset/offset must be finite seconds >= 0, "
                                         rf"got '{onset}' / '{offset}'"):
        read_events_csv(tmp_path / "ref.csv")


def test_write_events_csv_round_trips(tmp_path):
    events = [Event("a.wav", "cry", 1.23456, 2.5, 0.91234, 0.8)]
    path = write_events_csv(events, tmp_path / "events.csv")
    assert path.read_text().splitlines() == [
        "file,class,onset_s,offset_s,peak_probability,mean_probability", "a.wav,cry,1.235,2.5,0.9123,0.8"]
    assert read_events_csv(path) == [Event("a.wav", "cry", 1.235, 2.5)]
    assert math.isnan(read_events_csv(path)[0].peak_probability)
    json.dumps(events[0].to_dict())  # JSON-ready


def test_format_comparison_lists_hits_misses_and_false_alarms():
    reference = [ev(1.0, 3.0), ev(10.0, 12.0)]
    estimated = [Event("a.wav", "cry", 1.1, 3.1, 0.95, 0.9), Event("a.wav", "cry", 30.0, 31.0, 0.7, 0.6)]
    lines = format_comparison(reference, estimated).splitlines()
    body = lines[2:]
    assert len(body) == 3
    assert "1.00 -     3.00" in body[0] and "1.10 -     3.10" in body[0] and body[0].endswith("hit")
    assert "10.00 -    12.00" in body[1] and body[1].endswith("miss")
    assert "30.00 -    31.00" in body[2] and body[2].endswith("false alarm")
    # onset 0.4 s late: outside the 200 ms collar, inside DCASE 2017's 500 ms one (offsets ignored there)
    late = format_comparison([ev(1.0, 3.0)], [ev(1.4, 2.0)]).splitlines()[2]
    assert late.endswith("overlaps, outside collars (miss + FA); DCASE 2017 hit (onset within 500 ms)")
    assert format_comparison([ev(1.0, 3.0)], [ev(1.6, 3.0)]).splitlines()[2].endswith("(miss + FA)")


# ---------------------------------------------------------------------------------------
# The incremental detector (long mode and streaming)
# ---------------------------------------------------------------------------------------

def batch_reference_events(raw: np.ndarray, hop_s: float, window_s: float, duration_s: float,
                           params: DetectionParams) -> list[Event]:
    """The rules of the module docstring applied to a whole sequence with numpy (the oracle)."""
    smoothed = median_filter(raw, params.median_filter)
    bounds = window_cells(raw.size, hop_s, window_s, duration_s)
    events = [Event("", "", float(bounds[start]), float(bounds[stop]), float(raw[start:stop].max()),
                    float(raw[start:stop].mean()))
              for start, stop in active_runs(hysteresis_mask(smoothed, params.threshold, params.low))
              if bounds[stop] > bounds[start]]
    kept = [e for e in merge_events(events, params.merge_gap) if e.duration_s >= params.min_duration]
    cuts = [min(params.edge_trim, e.duration_s / 4) for e in kept]
    return [Event(e.file, e.class_name, e.onset_s + cut, e.offset_s - cut, e.peak_probability, e.mean_probability)
            for e, cut in zip(kept, cuts)]


def stream_through(detector: EventDetector, raw: np.ndarray, hop_s: float, window_s: float, duration_s: float,
                   rng: np.random.Generator) -> list[EventUpdate]:
    """Feed ``raw`` in random chunks, each when the audio behind its windows has been seen."""
    updates, index = [], 0
    while index < raw.size:
        size = int(rng.integers(1, 6))
        chunk = raw[index:index + size]
        index += chunk.size
        audio_s = min(duration_s, (index - 1) * hop_s + window_s + rng.uniform(0, hop_s))
        updates += detector.push(chunk, audio_s)
    return updates + detector.finish(duration_s)


def test_incremental_detector_equals_the_batch_rules_on_random_sequences():
    rng = np.random.default_rng(0)
    n_events = 0
    for trial in range(300):
        n = int(rng.integers(1, 80))
        # smooth random walks in [0, 1]: runs, blips, hovering between low and high
        raw = np.clip(np.cumsum(rng.normal(0, 0.25, n)) % 2.0, 0, 2)
        raw = np.where(raw > 1, 2 - raw, raw)
        hop_s = float(rng.choice([0.1, 0.25, 0.5, 1.0]))
        window_s = hop_s * float(rng.choice([1, 2, 4]))
        duration_s = (n - 1) * hop_s + window_s * float(rng.uniform(0.3, 1.0))  # last window padded
        params = DetectionParams(threshold=float(rng.uniform(0.4, 0.9)), threshold_low=None,
                                 median_filter=int(rng.choice([1, 3, 5, 7])),
                                 min_duration=float(rng.choice([0.0, 0.3, 1.0, 2.5])),
                                 merge_gap=float(rng.choice([0.0, 0.2, 1.0, 3.0])),
                                 edge_trim=float(rng.choice([0.0, 0.0, 0.1, 0.3, 1.0])))
        expected = batch_reference_events(raw, hop_s, window_s, duration_s, params)
        detector = EventDetector(params, hop_s, window_s)
        updates = stream_through(detector, raw, hop_s, window_s, duration_s, rng)
        ends = [u.event for u in updates if u.kind == "end"]
        starts = [u for u in updates if u.kind == "start"]
        assert [(e.onset_s, e.offset_s, e.peak_probability) for e in ends] == \
            [(e.onset_s, e.offset_s, e.peak_probability) for e in expected], trial
        np.testing.assert_allclose([e.mean_probability for e in ends], [e.mean_probability for e in expected])
        # one start per event, before its end, with the final onset; decisions in time order
        assert [u.event.onset_s for u in starts] == [e.onset_s for e in ends]
        kinds = [u.kind for u in updates]
        assert kinds == ["start", "end"] * len(ends)
        assert all(a.decided_s <= b.decided_s for a, b in zip(updates, updates[1:]))
        assert detect_events(raw, hop_s, window_s, duration_s, params) == ends
        n_events += len(ends)
    assert n_events > 100  # the sequences exercise the rules


def test_incremental_detector_reports_as_soon_as_the_rules_allow():
    # 1 s windows every 0.5 s: window i starts at 0.5 i, cells [0.5 i + 0.25, 0.5 i + 0.75)
    hop_s, window_s = 0.5, 1.0
    params = DetectionParams(threshold=0.5, median_filter=3, min_duration=1.0, merge_gap=1.0)
    detector = EventDetector(params, hop_s, window_s, file="live", class_name="cry")
    probabilities = [0.0] * 10 + [0.9] * 6 + [0.0] * 12
    updates = {}
    for index, p in enumerate(probabilities):  # each window as soon as its audio is in
        for update in detector.push([p], index * hop_s + window_s):
            updates[update.kind] = (update, index)
    start, start_index = updates["start"]
    end, end_index = updates["end"]
    assert (start.event.onset_s, end.event.offset_s) == (5.25, 8.25)
    # the start waits until the event is known to last min_duration: onset 5.25 s + 1 s = 6.25 s is
    # where window 12's cell starts, so window 11 must be active, which the median filter knows
    # once window 12 is in (at 12 * hop + window = 7 s of audio)
    assert start_index == 12 and start.decided_s == 12 * hop_s + window_s
    # the end waits for the median filter and until a next event would start > merge_gap later
    assert end.decided_s - end.event.offset_s <= window_s + hop_s + hop_s * (params.median_filter // 2) \
        + params.merge_gap
    assert end_index < len(probabilities) - 1  # not held back until the end of the input
    assert detector.finish(len(probabilities) * hop_s + window_s) == []


@pytest.mark.parametrize("min_duration, merge_gap, edge_trim", [
    (0.0, 0.0, 0.0), (1.0, 1.0, 0.0), (0.0, 2.0, 0.3), (0.5, 0.5, 0.1), (1.0, 0.0, 0.3), (0.0, 0.0, 1.0)])
def test_a_single_event_is_reported_within_the_latency_bounds(min_duration, merge_gap, edge_trim):
    # one burst of 1..12 windows, each window pushed as soon as its audio is in; no hysteresis band
    hop_s, window_s = 0.5, 1.0
    params = DetectionParams(threshold=0.5, threshold_low=0.5, median_filter=3, min_duration=min_duration,
                             merge_gap=merge_gap, edge_trim=edge_trim)
    start_bound, end_bound = latency_bound_s(window_s, hop_s, params)
    worst_start = 0.0
    for length in range(1, 13):
        detector = EventDetector(params, hop_s, window_s)
        probabilities = [0.0] * 6 + [0.9] * length + [0.0] * 20
        updates = []
        for index, p in enumerate(probabilities):
            updates += detector.push([p], index * hop_s + window_s)
        updates += detector.finish(len(probabilities) * hop_s + window_s)
        if not updates:  # shorter than min_duration
            continue
        start, end = updates
        worst_start = max(worst_start, start.decided_s - start.event.onset_s)
        assert start.decided_s - start.event.onset_s <= start_bound + 1e-9, length
        assert end.decided_s - end.event.offset_s <= end_bound + 1e-9, length
    assert worst_start > 0


def test_a_piece_too_short_to_start_alone_is_reported_within_the_start_bound_once_merged():
    # a one-window piece (0.48 s, under the 0.5 s minimum) and, within the 1 s merge gap, a longer one: the
    # event's start waits for the second piece, measured from the first piece's onset
    hop_s, window_s = 0.48, 0.96
    params = DetectionParams(threshold=0.5, threshold_low=0.5, median_filter=1, min_duration=0.5, merge_gap=1.0)
    start_bound, _ = latency_bound_s(window_s, hop_s, params)
    detector = EventDetector(params, hop_s, window_s)
    updates = []
    for index, p in enumerate([0.0, 0.9, 0.0, 0.0, 0.9, 0.9, 0.9] + [0.0] * 8):
        updates += detector.push([p], index * hop_s + window_s)
    start = next(update for update in updates if update.kind == "start")
    assert start.event.onset_s == pytest.approx(0.72)  # the first piece's cell
    latency = start.decided_s - start.event.onset_s
    assert window_s + hop_s + params.min_duration < latency <= start_bound + 1e-9  # more than the wait alone


def test_lines_come_within_the_latency_bounds_on_random_sequences():
    # random on/off sequences, pushed one window at a time as their audio arrives, over the rules' settings
    rng = np.random.default_rng(0)
    for _ in range(300):
        hop_s, window_s = float(rng.choice([0.25, 0.48, 0.5])), float(rng.choice([0.5, 0.96, 1.0]))
        params = DetectionParams(threshold=0.5, threshold_low=0.5, median_filter=int(rng.choice([1, 3, 5])),
                                 min_duration=float(rng.choice([0, 0.5, 1])), merge_gap=float(rng.choice([0, 0.5, 1])),
                                 edge_trim=float(rng.choice([0, 0.1, 0.3])))
        start_bound, end_bound = latency_bound_s(window_s, hop_s, params)
        probabilities = (rng.uniform(size=int(rng.integers(2, 30))) > rng.uniform(0.2, 0.8)) * 0.9
        detector = EventDetector(params, hop_s, window_s)
        for index, p in enumerate(probabilities):
            for update in detector.push([p], index * hop_s + window_s):  # (finish decides at the file's end)
                edge = update.event.onset_s if update.kind == "start" else update.event.offset_s
                assert update.decided_s - edge <= (start_bound if update.kind == "start" else end_bound) + 1e-9


def test_end_of_input_closes_an_open_event():
    detector = EventDetector(DetectionParams(threshold=0.5, median_filter=1), 1.0, 2.0, class_name="cry")
    updates = detector.push([0.1, 0.9, 0.9], audio_s=4.0)
    assert [u.kind for u in updates] == ["start"]
    final = detector.finish(duration_s=4.5)
    assert [(u.kind, u.event.onset_s, u.event.offset_s) for u in final] == [("end", 1.5, 4.5)]
    with pytest.raises(RuntimeError, match="after finish"):
        detector.push([0.5], 5.0)
