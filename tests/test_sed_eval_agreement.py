"""Our event metrics equal sed_eval 0.2.1's (a dev dependency) on randomized cases.

Event-based (onset + offset, 200 ms collar, 20 % of length), DCASE 2017 task 2's onset-only
500 ms metric and segment-based (1 s) figures, file by file as sed_eval evaluates them.
"""
from __future__ import annotations

import numpy as np
import pytest
import sed_eval

from audioclf.events import (DCASE2017_ONSET_COLLAR_S, Event, dcase2017_metrics, event_based_metrics,
                             segment_based_metrics)

CLASSES = ("cry", "dog")
DURATION_S = 30.0


def random_case(rng: np.random.Generator, n_files: int, classes: tuple[str, ...]) -> tuple[list[Event], list[Event]]:
    """References per file, and estimates: jittered copies (some relabelled), drops and strays, in random order."""
    reference, estimated = [], []
    for index in range(n_files):
        file = f"mix_{index}.wav"
        for _ in range(int(rng.integers(0, 4))):
            onset = round(float(rng.uniform(0, DURATION_S - 5)), 2)
            event = Event(file, str(rng.choice(classes)), onset, round(onset + float(rng.uniform(0.3, 4.5)), 2))
            reference.append(event)
            for _ in range(int(rng.choice([0, 1, 1, 2]))):  # missed, found, or found twice
                jitter_on, jitter_off = rng.normal(0, 0.35, 2)
                name = str(rng.choice(classes)) if rng.random() < 0.2 else event.class_name
                onset_e = round(min(max(0.0, event.onset_s + jitter_on), DURATION_S - 0.2), 2)
                offset_e = round(min(max(onset_e + 0.1, event.offset_s + jitter_off), DURATION_S), 2)
                estimated.append(Event(file, name, onset_e, offset_e))
        for _ in range(int(rng.integers(0, 3))):  # false alarms
            onset = round(float(rng.uniform(0, DURATION_S - 2)), 2)
            estimated.append(Event(file, str(rng.choice(classes)), onset, round(onset + float(rng.uniform(0.2, 2)), 2)))
    order = rng.permutation(len(estimated))
    return reference, [estimated[i] for i in order]


def as_sed_eval(events: list[Event]) -> list[dict]:
    return [{"filename": e.file, "event_label": e.class_name, "onset": e.onset_s, "offset": e.offset_s}
            for e in events]


def sed_eval_event_based(reference: list[Event], estimated: list[Event], files: list[str], classes, **kwargs) -> dict:
    metrics = sed_eval.sound_event.EventBasedMetrics(event_label_list=list(classes), **kwargs)
    for file in files:
        metrics.evaluate(as_sed_eval([e for e in reference if e.file == file]),
                         as_sed_eval([e for e in estimated if e.file == file]))
    return metrics.results_overall_metrics()


@pytest.mark.parametrize("classes", [CLASSES[:1], CLASSES], ids=["one-class", "two-classes"])
def test_event_based_and_dcase2017_metrics_equal_sed_eval(classes):
    rng = np.random.default_rng(2017)
    substitutions_seen = 0
    for _ in range(40):
        reference, estimated = random_case(rng, n_files=4, classes=classes)
        files = sorted({e.file for e in reference + estimated})
        for ours, theirs in [
            (event_based_metrics(reference, estimated),
             sed_eval_event_based(reference, estimated, files, classes, t_collar=0.2, percentage_of_length=0.2)),
            (dcase2017_metrics(reference, estimated),
             sed_eval_event_based(reference, estimated, files, classes, t_collar=DCASE2017_ONSET_COLLAR_S,
                                  evaluate_offset=False)),
        ]:
            n_reference = len(reference)
            rates = theirs["error_rate"]
            if n_reference:
                assert ours["error_rate"] == pytest.approx(rates["error_rate"])
                assert ours["substitutions"] == pytest.approx(rates["substitution_rate"] * n_reference)
                assert ours["deletions"] == pytest.approx(rates["deletion_rate"] * n_reference)
                assert ours["insertions"] == pytest.approx(rates["insertion_rate"] * n_reference)
            if ours["tp"]:  # sed_eval's F is NaN or 0 where nothing matched; ours is 0 (or 1 for nothing vs nothing)
                assert ours["f1"] == pytest.approx(theirs["f_measure"]["f_measure"])
                assert ours["precision"] == pytest.approx(theirs["f_measure"]["precision"])
                assert ours["recall"] == pytest.approx(theirs["f_measure"]["recall"])
            substitutions_seen += ours["substitutions"]
    if len(classes) > 1:
        assert substitutions_seen > 0  # the two-class cases do exercise substitutions


def test_segment_based_metrics_equal_sed_eval():
    rng = np.random.default_rng(7)
    for _ in range(40):
        reference, estimated = random_case(rng, n_files=3, classes=CLASSES)
        durations = {f"mix_{index}.wav": DURATION_S for index in range(3)}
        ours = segment_based_metrics(reference, estimated, durations, list(CLASSES))
        metrics = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=list(CLASSES), time_resolution=1.0)
        for file, duration in durations.items():
            metrics.evaluate(as_sed_eval([e for e in reference if e.file == file]),
                             as_sed_eval([e for e in estimated if e.file == file]), evaluated_length_seconds=duration)
        theirs = metrics.results_overall_metrics()
        assert ours["n_reference"] == metrics.overall["Nref"]
        assert (ours["tp"], ours["fp"], ours["fn"]) == (metrics.overall["Ntp"], metrics.overall["Nfp"],
                                                        metrics.overall["Nfn"])
        assert (ours["substitutions"], ours["deletions"], ours["insertions"]) == (
            metrics.overall["S"], metrics.overall["D"], metrics.overall["I"])
        if ours["n_reference"]:  # sed_eval divides by N + eps: no rate to compare without references
            assert ours["error_rate"] == pytest.approx(theirs["error_rate"]["error_rate"])
        if ours["tp"]:
            assert ours["f1"] == pytest.approx(theirs["f_measure"]["f_measure"])
