"""Sound event detection from sliding-window probabilities, and its scoring. Pure functions.

Windows -> events, in this order (``detect_events``)::

    p        = per-window probability of one class       # (n_windows,)
    p        = median_filter(p, size)                    # odd size in windows; 1 = off
    active   = hysteresis_mask(p, threshold, low)        # runs >= low that reach >= threshold
    events   = window_cells(...) of each active run      # the time rule below
    events   = merge_events(events, merge_gap)           # join events <= merge_gap s apart
    events   = [e for e in events if duration >= min_duration]
    events   = trim_edges(events, edge_trim)             # each end moves in by min(edge_trim, duration / 4)

``EventDetector`` applies these rules incrementally, window by window, and reports each event's
start and end as soon as they are certain; ``detect_events`` (long mode) feeds it a whole
sequence, live streaming feeds it as the audio arrives: one state machine, the same events.

Time rule. Window ``i`` covers the audio ``[i * hop, min(i * hop + window, duration))``. A
window's decision is attributed to the stretch of time around its centre: window ``i`` owns
the cell between the midpoints of its centre and its neighbours' centres; the first cell starts
as far before its centre as the second does (or at 0 s), the last ends at the end of the file,
where an event still sounding closes when the audio stops (a file of one window is its one
cell). With full windows the cells are ``[c_i - hop / 2, c_i + hop / 2)`` with
``c_i = i * hop + window / 2``; they tile the file from half a hop before the first centre to
its end, so an event is the union of its windows' cells and its boundaries have a resolution of
one hop. A first cell from 0 s would give every cry of the file's first second the onset 0 s,
since the first window fires for a cry anywhere in it: up to ``(window - hop) / 2`` earlier than
the same cry later in the file, 0.36 s for YAMNet's 0.96-s windows every 0.25 s. (The union of
the windows themselves would stretch every event by up to a window on each side: a window whose
edge grazes a cry is not evidence that the cry was there.)
Still, a model that hears a sound anywhere in its window fires in windows whose centre lies
before the sound starts and after it ends, so the cells start early and end late by about as
much at both edges (a fine-tuned YAMNet on 0.96 s windows: 0.15-0.3 s). ``edge_trim`` takes that
off each end, by at most a quarter of the event's length so that no event vanishes; tuning
(``DETECTION_GRID``, ``tuning``) picks it on recordings with reference events, with the other settings.

Scoring follows the DCASE / sed_eval conventions: event-based F1 with a 200 ms onset collar and
an offset collar of max(200 ms, 20 % of the reference event's length), each reference event
matched to at most one detection (maximum bipartite matching); segment-based F1 and error rate
on 1 s segments; and DCASE 2017 task 2's own metric (rare sound events), the event-based error
rate and F1 with onset-only matching and a ``DCASE2017_ONSET_COLLAR_S`` collar. Event-based
error rate, as sed_eval defines it::

    TP = matched pairs (same file and class, onset within the collar [, offset within its collar])
    S  = unmatched reference events that an unmatched detection of another class would match
         on time (greedy, in list order)
    D  = n_reference - TP - S,   I = n_estimated - TP - S,   ER = (S + D + I) / n_reference

F1 counts a substitution as a miss and a false alarm: ``2 TP / (n_reference + n_estimated)``.
"""
from __future__ import annotations

import csv
import difflib
import io
import itertools
import json
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from audioclf.files import atomic_write_text

EVENT_CSV_COLUMNS = ("file", "class", "onset_s", "offset_s", "peak_probability", "mean_probability")
REFERENCE_CSV_COLUMNS = ("file", "onset_s", "offset_s", "class")  # annotations: no probabilities
# A soundscape folder (tools.soundscapes): its reference events and its parts (which clip where, of which class).
SOUNDSCAPE_EVENTS_FILE = "events.csv"
SOUNDSCAPE_PARTS_FILE = "parts.csv"
SOUNDSCAPE_MANIFEST_FILE = "manifest.json"  # how it was built; "complete": false while tools.soundscapes fills it
# "class" came last (tools.soundscapes version 2), so that scripts reading columns by position still work
SOUNDSCAPE_PARTS_COLUMNS = ("file", "part", "clip", "start_s", "end_s", "ebr_db", "event_gain", "output_gain", "class")
# DCASE / sed_eval scoring: onset collar (s); offset collar max(ONSET_COLLAR_S, fraction x reference length).
ONSET_COLLAR_S = 0.2
OFFSET_COLLAR_FRACTION = 0.2
SEGMENT_S = 1.0  # segment length of the segment-based metrics
# DCASE 2017 task 2 scores a detection by its onset alone: within 500 ms of the true onset.
DCASE2017_ONSET_COLLAR_S = 0.5
ONSET_COLUMNS = ("onset_s", "onset")
OFFSET_COLUMNS = ("offset_s", "offset")
CLASS_COLUMNS = ("class", "event_label", "label")


def unfinished_soundscapes(folder: str | Path) -> bool:
    """True when ``folder``'s manifest says tools.soundscapes has not finished building it (interrupted)."""
    try:
        manifest = json.loads((Path(folder) / SOUNDSCAPE_MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False  # no manifest (a folder made by hand) or not this tool's: nothing says it is unfinished
    return isinstance(manifest, dict) and manifest.get("complete") is False


@dataclass(frozen=True)
class Event:
    """One sound event; probabilities are NaN for reference (annotated) events."""

    file: str
    class_name: str
    onset_s: float
    offset_s: float
    peak_probability: float = math.nan
    mean_probability: float = math.nan

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.offset_s - self.onset_s

    def to_dict(self) -> dict:
        """Row for CSV/JSON output (``class`` key, times rounded to ms, probabilities to 1e-4)."""
        row = asdict(self)
        row["class"] = row.pop("class_name")
        for key in ("onset_s", "offset_s"):
            row[key] = round(row[key], 3)
        for key in ("peak_probability", "mean_probability"):
            row[key] = None if math.isnan(row[key]) else round(row[key], 4)
        return {key: row[key] for key in EVENT_CSV_COLUMNS}


@dataclass(frozen=True)
class DetectionParams:
    """Post-processing settings; ``threshold_low=None`` means ``LOW_THRESHOLD_RATIO * threshold``."""

    threshold: float = 0.5
    threshold_low: float | None = None
    median_filter: int = 3
    min_duration: float = 0.0
    merge_gap: float = 0.0
    edge_trim: float = 0.0  # s off each end of an event (at most a quarter of its length), applied last

    @property
    def low(self) -> float:
        """The hysteresis threshold that keeps an event going."""
        return LOW_THRESHOLD_RATIO * self.threshold if self.threshold_low is None else self.threshold_low

    def validate(self) -> "DetectionParams":
        """Raise ValueError naming each bad setting; return self when valid."""
        problems = []
        if not 0.0 < self.threshold <= 1.0:
            problems.append(f"threshold must lie in (0, 1], got {self.threshold}")
        elif not 0.0 < self.low <= self.threshold:
            problems.append(f"threshold_low must lie in (0, threshold={self.threshold}], got {self.low}")
        if self.median_filter < 1 or self.median_filter % 2 == 0:
            problems.append(f"median_filter must be an odd number of windows >= 1, got {self.median_filter}")
        if self.min_duration < 0:
            problems.append(f"min_duration must be >= 0 s, got {self.min_duration}")
        if self.merge_gap < 0:
            problems.append(f"merge_gap must be >= 0 s, got {self.merge_gap}")
        if not self.edge_trim >= 0 or math.isinf(self.edge_trim):
            problems.append(f"edge_trim must be a finite number of seconds >= 0, got {self.edge_trim}")
        if problems:
            raise ValueError("invalid detection settings: " + "; ".join(problems))
        return self


# Hysteresis: an event starts at ``threshold`` and lasts while the probability stays above
# 70 % of it, so a cry whose probability wobbles around the threshold stays one event.
LOW_THRESHOLD_RATIO = 0.7


@dataclass(frozen=True)
class DetectionGrid:
    """Detection settings to try (``tuning``): every combination; the threshold_low ratio is the default.

    Each field holds the values of the ``DetectionParams`` setting that ``GRID_SETTINGS`` names.
    """

    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
    median_filters: tuple[int, ...] = (1, 3, 5, 9)  # windows
    merge_gaps: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)  # s
    min_durations: tuple[float, ...] = (0.0, 0.5, 1.0)  # s
    edge_trims: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)  # s

    def candidates(self) -> list[DetectionParams]:
        """Every combination, in grid order (fields in order: threshold outermost, edge trim innermost)."""
        return [DetectionParams(**dict(zip(GRID_SETTINGS.values(), values)))
                for values in itertools.product(*(getattr(self, field) for field in GRID_SETTINGS))]


# Each grid field (config key "detection_grid") -> the DetectionParams setting its values are, in grid order.
GRID_SETTINGS = {"thresholds": "threshold", "median_filters": "median_filter", "merge_gaps": "merge_gap",
                 "min_durations": "min_duration", "edge_trims": "edge_trim"}
DETECTION_GRID = DetectionGrid()


def check_grid(overrides: dict) -> tuple[dict, list[str]]:
    """``overrides`` (grid field -> list of values: the config key ``detection_grid``) with its numbers as the
    settings take them, and what is wrong with it (each field and value named)."""
    problems, checked = [], {}
    for field, values in overrides.items():
        if field not in GRID_SETTINGS:
            close = difflib.get_close_matches(str(field), GRID_SETTINGS, n=1)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            problems.append(f'"detection_grid": unknown field "{field}" ({hint}fields: {", ".join(GRID_SETTINGS)})')
            continue
        setting = GRID_SETTINGS[field]
        whole = setting == "median_filter"
        if not isinstance(values, list) or not values or any(
                isinstance(value, bool) or not isinstance(value, int if whole else (int, float))
                or not math.isfinite(value) for value in values):
            kind = "odd whole numbers of windows" if whole else "finite numbers"
            problems.append(f'"detection_grid": "{field}" must be a non-empty list of {kind}, got {json.dumps(values)}')
            continue
        values = [value if whole else float(value) for value in values]
        if len(set(values)) < len(values):
            problems.append(f'"detection_grid": "{field}" lists a value twice: {json.dumps(values)}')
            continue
        for value in values:
            try:
                DetectionParams(**{setting: value}).validate()
            except ValueError as error:
                problems.append(f'"detection_grid": "{field}" value {value}: '
                                + str(error).removeprefix("invalid detection settings: "))
        checked[field] = values
    return checked, problems


def detection_grid(overrides: dict) -> DetectionGrid:
    """``DETECTION_GRID`` with the fields of ``overrides`` replaced; ValueError naming each bad one (``check_grid``)."""
    checked, problems = check_grid(overrides)
    if problems:
        raise ValueError("; ".join(problems))
    return replace(DETECTION_GRID, **{field: tuple(values) for field, values in checked.items()})


# ---------------------------------------------------------------------------------------
# Windows -> events
# ---------------------------------------------------------------------------------------

def median_filter(values: np.ndarray, size: int) -> np.ndarray:
    """Running median over ``size`` (odd) windows along axis 0; edges repeat the end values."""
    values = np.asarray(values, dtype=np.float64)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"median filter size must be odd and >= 1, got {size}")
    if size == 1 or values.shape[0] == 0:
        return values.copy()
    half = size // 2
    padded = np.pad(values, [(half, half)] + [(0, 0)] * (values.ndim - 1), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, size, axis=0)  # (n, ..., size)
    return np.median(windows, axis=-1)


def hysteresis_mask(values: np.ndarray, high: float, low: float) -> np.ndarray:
    """True on every run of ``values >= low`` that contains at least one value ``>= high``."""
    values = np.asarray(values, dtype=np.float64)
    if low > high:
        raise ValueError(f"low threshold {low} is above the high threshold {high}")
    mask = np.zeros(values.shape, dtype=bool)
    for start, stop in active_runs(values >= low):
        if (values[start:stop] >= high).any():
            mask[start:stop] = True
    return mask


def active_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` (stop exclusive) of the runs of True in a 1-D boolean mask."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(start), int(stop)) for start, stop in zip(edges[::2], edges[1::2])]


def window_bounds(n_windows: int, hop_s: float, window_s: float, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (s) of each window: ``[i * hop, min(i * hop + window, duration))``."""
    starts = np.arange(n_windows) * hop_s
    return starts, np.minimum(starts + window_s, max(duration_s, 0.0))


def first_cell_start(first_centre: float, second_centre: float) -> float:
    """Where the first window's cell starts: as far before its centre as the second's, not before 0 s."""
    return max(first_centre - (second_centre - first_centre) / 2.0, 0.0)


def window_cells(n_windows: int, hop_s: float, window_s: float, duration_s: float) -> np.ndarray:
    """Boundaries ``(n_windows + 1,)`` of the time cells the windows own (see the module docstring).

    Cell ``i`` is ``[bounds[i], bounds[i + 1])``: from the midpoint between window ``i - 1``'s
    and window ``i``'s centres to the midpoint with window ``i + 1``; the first cell starts as far
    before its centre as the second (not before 0), the last ends at ``duration_s``, and one
    window's cell is the whole file. A window is centred on the audio it covers, so a padded last
    window is centred on its real samples.
    """
    starts, ends = window_bounds(n_windows, hop_s, window_s, duration_s)
    centres = np.maximum.accumulate((starts + np.maximum(ends, starts)) / 2.0)
    duration_s = max(duration_s, 0.0)
    if n_windows < 2:  # one window: the whole file
        return np.array([0.0, duration_s])[: n_windows + 1]
    bounds = np.concatenate([[first_cell_start(centres[0], centres[1])], (centres[:-1] + centres[1:]) / 2.0,
                             [duration_s]])
    return np.minimum(bounds, duration_s)


def trim_event(event: Event, edge_trim: float) -> Event:
    """``event`` with each end moved in by ``edge_trim``, at most a quarter of its length (the last rule)."""
    cut = min(edge_trim, event.duration_s / 4.0)
    return replace(event, onset_s=event.onset_s + cut, offset_s=event.offset_s - cut) if cut else event


def trim_edges(events: Sequence[Event], edge_trim: float) -> list[Event]:
    """``trim_event`` on each event."""
    return [trim_event(event, edge_trim) for event in events]


def _merge_pair(last: Event, event: Event) -> Event:
    """``last`` extended by ``event``: peak of both, mean weighted by their durations."""
    weight_last, weight_new = last.duration_s, event.duration_s
    total = weight_last + weight_new
    mean = ((last.mean_probability * weight_last + event.mean_probability * weight_new) / total
            if total > 0 else max(last.mean_probability, event.mean_probability))
    return replace(last, offset_s=max(last.offset_s, event.offset_s),
                   peak_probability=max(last.peak_probability, event.peak_probability), mean_probability=mean)


def merge_events(events: Sequence[Event], max_gap: float) -> list[Event]:
    """Join events of the same file and class whose gap is ``<= max_gap`` s (sorted by onset).

    Peak and mean probabilities of a merged event are the peak and duration-weighted mean of
    its parts.
    """
    merged: list[Event] = []
    for event in sorted(events, key=lambda e: (e.file, e.class_name, e.onset_s)):
        last = merged[-1] if merged else None
        if (last is not None and (last.file, last.class_name) == (event.file, event.class_name)
                and event.onset_s - last.offset_s <= max_gap):
            merged[-1] = _merge_pair(last, event)
        else:
            merged.append(event)
    return sorted(merged, key=lambda e: (e.file, e.onset_s, e.class_name))


@dataclass(frozen=True)
class EventUpdate:
    """A decision of ``EventDetector``: an event ``start`` or an ``end``.

    ``decided_s`` is the audio time (seconds of input seen) at which the decision became
    certain, so ``decided_s - event.onset_s`` (start) or ``decided_s - event.offset_s`` (end)
    is the detector's latency. A start carries the event as known then: its onset is final,
    its offset and probabilities are what has been seen so far; an end carries the final event.
    """

    kind: str  # "start" or "end"
    event: Event
    decided_s: float


@dataclass
class _Run:
    """A run of windows whose smoothed probability stays ``>= low`` (window indices)."""

    start: int
    onset_s: float
    qualified: bool  # some smoothed probability in the run reached the threshold
    peak: float
    total: float  # sum of the raw probabilities, for the mean
    count: int


class EventDetector:
    """Incremental windows -> events of one class: the one state machine of long mode and streaming.

    ``push`` takes the raw probabilities of the next windows as they are computed (window ``i``
    starts at ``i * hop_s``) and ``finish`` the length of the audio; both return the
    ``EventUpdate`` objects that became certain. The events equal the batch rules of the module
    docstring applied to the whole sequence (``detect_events`` is ``push`` everything +
    ``finish``), so a recording gives the same events whether it is read from a file or
    streamed. Memory is bounded: a few windows of values plus the event in progress.

    When each decision is made (``median_filter`` = 2 h + 1 windows):

    * a window's smoothed value needs the ``h`` windows after it;
    * an event's start is reported once its run reaches the threshold and the event is known
      to last ``min_duration`` and ``4 * edge_trim`` (so a start is never taken back, and its
      trimmed onset is final);
    * its end once the probability has dropped below ``low`` and no event can follow within
      ``merge_gap`` (the next run, if any, starts more than ``merge_gap`` later).
    """

    def __init__(self, params: DetectionParams, hop_s: float, window_s: float, file: str = "",
                 class_name: str = ""):
        self.params = params.validate()
        if not hop_s > 0 or not window_s > 0:
            raise ValueError(f"hop_s and window_s must be positive, got {hop_s} and {window_s}")
        self.hop_s, self.window_s, self.file, self.class_name = hop_s, window_s, file, class_name
        self._half = params.median_filter // 2
        self._raw: dict[int, float] = {}  # window index -> raw probability, kept while still needed
        self._first_raw: float | None = None  # the left edge padding of the median filter
        self._n_pushed = 0
        self._centres: dict[int, float] = {}  # window index -> centre (s), once final
        self._n_centres = 0  # centres 0 .. _n_centres - 1 are final
        self._last_centre = -math.inf
        self._n_decided = 0  # windows whose smoothed value went through the hysteresis
        self._run: _Run | None = None
        self._current: Event | None = None  # merged event of finished runs, not yet reported ended
        self._current_started = False
        self._duration_s: float | None = None  # known after finish
        self._audio_s = 0.0

    # -- time rule -------------------------------------------------------------------------

    def _finalize_centres(self) -> None:
        """Centres of windows whose end is known (the audio behind them is seen, or finish)."""
        while self._n_centres < self._n_pushed:
            index = self._n_centres
            start = index * self.hop_s
            if self._duration_s is None:
                end = start + self.window_s
                if end > self._audio_s:  # the window may be cut by the end of the file: wait
                    return
            else:
                end = min(start + self.window_s, max(self._duration_s, 0.0))
            self._last_centre = max(self._last_centre, (start + max(end, start)) / 2.0)
            self._centres[index] = self._last_centre
            self._n_centres += 1

    def _bound(self, index: int) -> float | None:
        """Start of window ``index``'s cell (end of ``index - 1``'s), or None while unknown."""
        finished = self._duration_s is not None
        end = max(self._duration_s, 0.0) if finished else math.inf
        if finished and self._n_pushed < 2:  # one window: the whole file
            return 0.0 if index == 0 else end
        if index == 0:  # as wide around the first centre as the cell after it
            if self._n_centres < 2:
                return None
            return min(first_cell_start(self._centres[0], self._centres[1]), end)
        if finished and index == self._n_pushed:
            return end
        if index >= self._n_centres:
            return None
        return min((self._centres[index - 1] + self._centres[index]) / 2.0, end)

    def _known_bound(self, index: int) -> float:
        """A lower bound of ``_bound(index)``: the latest known cell boundary up to it (0 before any)."""
        while index > 0 and self._bound(index) is None:
            index -= 1
        bound = self._bound(index)
        return 0.0 if bound is None else bound

    # -- feeding ---------------------------------------------------------------------------

    def push(self, probabilities: Sequence[float] | np.ndarray, audio_s: float) -> list[EventUpdate]:
        """Raw probabilities ``(n,)`` of the next windows; ``audio_s``: seconds of audio seen so far."""
        if self._duration_s is not None:
            raise RuntimeError("push() after finish()")
        values = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        self._audio_s = max(self._audio_s, float(audio_s))
        for value in values.tolist():
            if self._first_raw is None:
                self._first_raw = value
            self._raw[self._n_pushed] = value
            self._n_pushed += 1
        self._finalize_centres()
        return self._advance()

    def finish(self, duration_s: float) -> list[EventUpdate]:
        """End of the audio (``duration_s`` long): decide every window, close the last event."""
        if self._duration_s is not None:
            return []
        self._duration_s = float(duration_s)
        self._audio_s = max(self._audio_s, self._duration_s)
        self._finalize_centres()
        updates = self._advance()
        if self._run is not None:
            updates += self._close_run(self._n_pushed)
        if self._current is not None:
            updates += self._report_end()
        return updates

    # -- decisions -------------------------------------------------------------------------

    def _smoothed(self, index: int) -> float | None:
        """Median of windows ``index - h .. index + h`` (edges repeat the end values)."""
        if self._half == 0:
            return self._raw[index]
        last = self._n_pushed - 1
        if index + self._half > last and self._duration_s is None:
            return None
        values = [self._raw[min(max(i, 0), last)] if i >= 0 else self._first_raw
                  for i in range(index - self._half, index + self._half + 1)]
        return sorted(values)[self._half]

    def _advance(self) -> list[EventUpdate]:
        updates: list[EventUpdate] = []
        params = self.params
        while self._n_decided < self._n_pushed:
            index = self._n_decided
            smoothed = self._smoothed(index)
            onset = self._bound(index)
            if smoothed is None or onset is None:
                break
            raw = self._raw[index]
            self._n_decided += 1
            if smoothed >= params.low:
                run = self._run
                if run is None:
                    self._run = _Run(index, onset, smoothed >= params.threshold, raw, raw, 1)
                else:
                    run.qualified |= smoothed >= params.threshold
                    run.peak, run.total, run.count = max(run.peak, raw), run.total + raw, run.count + 1
            elif self._run is not None:
                updates += self._close_run(index)
            self._raw.pop(index - self._half - 1, None)  # no longer in any median window
            self._centres.pop(index - 2, None)
            updates += self._settle()
        return updates

    def _close_run(self, stop: int) -> list[EventUpdate]:
        """The run ends before window ``stop``: an event if it reached the threshold."""
        run, self._run = self._run, None
        offset = self._bound(stop)
        if not run.qualified or offset <= run.onset_s:
            return []
        event = Event(self.file, self.class_name, run.onset_s, offset, run.peak, run.total / run.count)
        updates = []
        if self._current is not None and event.onset_s - self._current.offset_s <= self.params.merge_gap:
            self._current = _merge_pair(self._current, event)
        else:
            if self._current is not None:  # (it cannot have been reported as this run's start)
                updates += self._report_end()
            self._current = event  # _current_started stays: it may be this run's start
        return updates

    def _settle(self) -> list[EventUpdate]:
        """Report the current event's end once nothing can merge into it, its start once it is sure."""
        updates = []
        run, current, params = self._run, self._current, self.params
        if current is not None:
            next_onset = run.onset_s if run is not None else self._known_bound(self._n_decided)
            if next_onset - current.offset_s > params.merge_gap:
                updates += self._report_end()
                current = None
        if self._current_started:
            return updates
        joins = run is not None and run.qualified and (
            current is None or run.onset_s - current.offset_s <= params.merge_gap)
        if current is None and not joins:
            return updates
        # The event so far: the finished runs (current) plus the run in progress if it joins them.
        onset = current.onset_s if current is not None else run.onset_s
        offset = current.offset_s if current is not None else -math.inf
        peak = current.peak_probability if current is not None else -math.inf
        if joins:  # its cells reach at least the boundary after the last decided window
            offset, peak = max(offset, self._known_bound(self._n_decided)), max(peak, run.peak)
        if offset > onset and offset - onset >= max(params.min_duration, 4.0 * params.edge_trim):
            mean = current.mean_probability if current is not None else run.total / run.count
            self._current_started = True  # refers to current, or to the run once it ends
            event = Event(self.file, self.class_name, onset, offset, peak, mean)
            updates.append(EventUpdate("start", trim_event(event, params.edge_trim), self._audio_s))
        return updates

    def _report_end(self) -> list[EventUpdate]:
        event, started = self._current, self._current_started
        self._current, self._current_started = None, False
        if event.duration_s < self.params.min_duration:
            return []
        event = trim_event(event, self.params.edge_trim)
        updates = [] if started else [EventUpdate("start", event, self._audio_s)]
        return updates + [EventUpdate("end", event, self._audio_s)]


def detect_events(probabilities: np.ndarray, hop_s: float, window_s: float, duration_s: float,
                  params: DetectionParams, file: str = "", class_name: str = "") -> list[Event]:
    """Per-window probabilities ``(n_windows,)`` of one class -> events (see the module docstring).

    Peak and mean probability are taken over the *raw* (unsmoothed) probabilities of the
    windows that make up the event. This is ``EventDetector`` fed the whole sequence at once.
    """
    params.validate()
    raw = np.asarray(probabilities, dtype=np.float64)
    if raw.ndim != 1:
        raise ValueError(f"expected one probability per window (1-D), got shape {raw.shape}")
    if raw.size == 0:
        return []
    detector = EventDetector(params, hop_s, window_s, file, class_name)
    updates = detector.push(raw, duration_s) + detector.finish(duration_s)
    return [update.event for update in updates if update.kind == "end"]


# ---------------------------------------------------------------------------------------
# Scoring (DCASE conventions)
# ---------------------------------------------------------------------------------------

def events_match(reference: Event, estimated: Event, t_collar: float = ONSET_COLLAR_S,
                 percentage_of_length: float = OFFSET_COLLAR_FRACTION, evaluate_offset: bool = True,
                 same_class: bool = True) -> bool:
    """sed_eval's time condition for a reference/estimate pair of the same file (and class).

    Onsets within ``t_collar``; with ``evaluate_offset`` also offsets within
    ``max(t_collar, percentage_of_length * reference length)``. ``same_class=False`` ignores
    the labels (sed_eval's substitution test).
    """
    if reference.file != estimated.file or (same_class and reference.class_name != estimated.class_name):
        return False
    if abs(reference.onset_s - estimated.onset_s) > t_collar:
        return False
    offset_collar = max(t_collar, percentage_of_length * reference.duration_s)
    return not evaluate_offset or abs(reference.offset_s - estimated.offset_s) <= offset_collar


def match_events(reference: Sequence[Event], estimated: Sequence[Event], t_collar: float = ONSET_COLLAR_S,
                 percentage_of_length: float = OFFSET_COLLAR_FRACTION, evaluate_offset: bool = True
                 ) -> list[tuple[int, int]]:
    """One-to-one ``(reference index, estimated index)`` pairs: a maximum bipartite matching.

    Only events of the same file and class can match, so each reference event is tried against
    those alone: the pairs scanned grow with the events per file and class, not with all events.
    """
    same_file_and_class = _indices_by(estimated, lambda event: (event.file, event.class_name))
    candidates: dict[int, list[int]] = {
        r: [e for e in same_file_and_class.get((ref.file, ref.class_name), ())
            if events_match(ref, estimated[e], t_collar, percentage_of_length, evaluate_offset)]
        for r, ref in enumerate(reference)}
    owner: dict[int, int] = {}  # estimated index -> reference index

    def augment(r: int, seen: set[int]) -> bool:  # Kuhn's augmenting path
        for e in candidates[r]:
            if e in seen:
                continue
            seen.add(e)
            if e not in owner or augment(owner[e], seen):
                owner[e] = r
                return True
        return False

    for r in candidates:
        augment(r, set())
    return sorted((r, e) for e, r in owner.items())


def count_substitutions(reference: Sequence[Event], estimated: Sequence[Event], matches: Sequence[tuple[int, int]],
                        t_collar: float, percentage_of_length: float, evaluate_offset: bool) -> int:
    """Unmatched reference events an unmatched detection of another class matches on time (sed_eval's greedy)."""
    matched_reference, matched_estimated = {r for r, _ in matches}, {e for _, e in matches}
    free = {file: [e for e in indices if e not in matched_estimated]
            for file, indices in _indices_by(estimated, lambda event: event.file).items()}
    substitutions = 0
    for r, ref in enumerate(reference):
        if r in matched_reference:
            continue
        same_file = free.get(ref.file, [])
        for e in same_file:
            if events_match(ref, estimated[e], t_collar, percentage_of_length, evaluate_offset, same_class=False):
                same_file.remove(e)
                substitutions += 1
                break
    return substitutions


def _indices_by(events: Sequence[Event], key: Callable[[Event], Hashable]) -> dict[Hashable, list[int]]:
    """The indices of ``events``, in order, grouped by ``key(event)``."""
    groups: dict[Hashable, list[int]] = {}
    for index, event in enumerate(events):
        groups.setdefault(key(event), []).append(index)
    return groups


def _prf(tp: int, fp: int, fn: int) -> dict:
    # With nothing to find and nothing found every score is 1; nothing found of something: 0.
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else float(fp == 0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _error_rate(substitutions: int, deletions: int, insertions: int, n_reference: int) -> dict:
    # With nothing to find the rate is undefined: 0 when nothing was found either, else 1.
    errors = substitutions + deletions + insertions
    return {"substitutions": substitutions, "deletions": deletions, "insertions": insertions,
            "error_rate": errors / n_reference if n_reference else float(errors > 0)}


def event_based_metrics(reference: Sequence[Event], estimated: Sequence[Event], t_collar: float = ONSET_COLLAR_S,
                        percentage_of_length: float = OFFSET_COLLAR_FRACTION, evaluate_offset: bool = True) -> dict:
    """Overall (micro) event-based counts, precision, recall, F1, error rate, plus the scores per class.

    ``evaluate_offset=False`` matches on onsets only (DCASE 2017 task 2: ``dcase2017_metrics``).
    """
    matches = match_events(reference, estimated, t_collar, percentage_of_length, evaluate_offset)
    tp = len(matches)
    substitutions = count_substitutions(reference, estimated, matches, t_collar, percentage_of_length,
                                        evaluate_offset)
    result = {"n_reference": len(reference), "n_estimated": len(estimated), "tp": tp,
              "fp": len(estimated) - tp, "fn": len(reference) - tp, "t_collar": t_collar,
              "percentage_of_length": percentage_of_length, "evaluate_offset": evaluate_offset}
    result.update(_prf(tp, result["fp"], result["fn"]))
    result.update(_error_rate(substitutions, len(reference) - tp - substitutions,
                              len(estimated) - tp - substitutions, len(reference)))
    classes = sorted({e.class_name for e in reference} | {e.class_name for e in estimated})
    matched_reference = {r for r, _ in matches}
    class_wise = {}
    for name in classes:
        n_ref = sum(e.class_name == name for e in reference)
        n_est = sum(e.class_name == name for e in estimated)
        class_tp = sum(reference[r].class_name == name for r in matched_reference)
        class_wise[name] = {"n_reference": n_ref, "n_estimated": n_est, "tp": class_tp,
                            **_prf(class_tp, n_est - class_tp, n_ref - class_tp),
                            **_error_rate(0, n_ref - class_tp, n_est - class_tp, n_ref)}
    result["class_wise"] = class_wise
    return result


def dcase2017_metrics(reference: Sequence[Event], estimated: Sequence[Event]) -> dict:
    """DCASE 2017 task 2's metric: event-based error rate (its ranking metric) and F1, onset only."""
    return event_based_metrics(reference, estimated, t_collar=DCASE2017_ONSET_COLLAR_S, evaluate_offset=False)


def activity_matrix(events: Iterable[Event], classes: Sequence[str], n_segments: int,
                    segment_s: float = SEGMENT_S) -> np.ndarray:
    """``(n_segments, n_classes)`` bool: segment ``k`` = ``[k * s, (k + 1) * s)`` overlaps an event."""
    activity = np.zeros((n_segments, len(classes)), dtype=bool)
    index = {name: i for i, name in enumerate(classes)}
    for event in events:
        if event.class_name not in index or event.offset_s <= event.onset_s:
            continue
        first = max(0, math.floor(event.onset_s / segment_s))
        last = min(n_segments, math.ceil(event.offset_s / segment_s))
        activity[first:last, index[event.class_name]] = True
    return activity


def segment_based_metrics(reference: Sequence[Event], estimated: Sequence[Event],
                          durations_s: dict[str, float], classes: Sequence[str] | None = None,
                          segment_s: float = SEGMENT_S) -> dict:
    """Overall segment-based precision, recall, F1 and error rate (sed_eval's definitions).

    Each file of ``durations_s`` is cut into ``ceil(duration / segment_s)`` segments; per segment,
    substitutions ``S = min(FN, FP)``, deletions ``D = max(0, FN - FP)``, insertions
    ``I = max(0, FP - FN)`` count over classes, and ``ER = (S + D + I) / N`` with ``N`` the number
    of active reference (segment, class) pairs.
    """
    if classes is None:
        classes = sorted({e.class_name for e in reference} | {e.class_name for e in estimated})
    tp = fp = fn = n_reference = substitutions = deletions = insertions = 0
    for file, duration in durations_s.items():
        file_reference = [e for e in reference if e.file == file]
        file_estimated = [e for e in estimated if e.file == file]
        last_offset = max((e.offset_s for e in file_reference + file_estimated), default=0.0)
        n_segments = math.ceil(round(max(duration, last_offset) / segment_s, 9))
        ref = activity_matrix(file_reference, classes, n_segments, segment_s)
        est = activity_matrix(file_estimated, classes, n_segments, segment_s)
        segment_fn = (ref & ~est).sum(axis=1)
        segment_fp = (~ref & est).sum(axis=1)
        tp += int((ref & est).sum())
        fp += int(segment_fp.sum())
        fn += int(segment_fn.sum())
        n_reference += int(ref.sum())
        substitutions += int(np.minimum(segment_fn, segment_fp).sum())
        deletions += int(np.maximum(0, segment_fn - segment_fp).sum())
        insertions += int(np.maximum(0, segment_fp - segment_fn).sum())
    result = {"segment_s": segment_s, "tp": tp, "fp": fp, "fn": fn, "n_reference": n_reference,
              **_error_rate(substitutions, deletions, insertions, n_reference)}
    result.update(_prf(tp, fp, fn))
    return result


def overlap_counts(reference: Sequence[Event], estimated: Sequence[Event]) -> dict:
    """How many reference events overlap some detection (same file and class), and vice versa.

    Coarser than the collars: it says whether an event was found at all, however loose its bounds.
    """
    def overlaps(a: Event, b: Event) -> bool:
        return (a.file, a.class_name) == (b.file, b.class_name) and a.onset_s < b.offset_s and b.onset_s < a.offset_s

    return {"n_reference": len(reference), "reference_found": sum(any(overlaps(r, e) for e in estimated)
                                                                   for r in reference),
            "n_estimated": len(estimated), "estimated_on_reference": sum(any(overlaps(e, r) for r in reference)
                                                                         for e in estimated)}


def false_alarms_per_hour(n_false_alarms: int, total_seconds: float) -> float:
    """False alarms per hour of audio (0 when no audio)."""
    return n_false_alarms * 3600.0 / total_seconds if total_seconds > 0 else 0.0


def score_events(reference: Sequence[Event], estimated: Sequence[Event], durations_s: dict[str, float],
                 classes: Sequence[str] | None = None) -> dict:
    """Event-based, DCASE 2017, segment-based, overlap and false-alarm-rate scores over ``durations_s``'s files.

    Events of files not in ``durations_s`` and (when given) of classes not in ``classes`` are ignored.
    """
    def keep(events: Sequence[Event]) -> list[Event]:
        return [e for e in events if e.file in durations_s and (classes is None or e.class_name in classes)]

    reference, estimated = keep(reference), keep(estimated)
    event_scores = event_based_metrics(reference, estimated)
    dcase2017 = dcase2017_metrics(reference, estimated)
    total_seconds = float(sum(durations_s.values()))
    dcase2017["false_alarms_per_hour"] = false_alarms_per_hour(dcase2017["fp"], total_seconds)
    return {"event_based": event_scores, "dcase2017": dcase2017,
            "segment_based": segment_based_metrics(reference, estimated, durations_s, classes),
            "overlap": overlap_counts(reference, estimated),
            "false_alarms_per_hour": false_alarms_per_hour(event_scores["fp"], total_seconds),
            "audio_seconds": total_seconds, "n_files": len(durations_s)}


# ---------------------------------------------------------------------------------------
# Files and tables
# ---------------------------------------------------------------------------------------

def _pick_column(header: Sequence[str], names: Sequence[str], path: Path) -> str:
    for name in names:
        if name in header:
            return name
    raise ValueError(f"{path}: no {' or '.join(repr(n) for n in names)} column (columns: {', '.join(header)})")


def read_events_csv(path: str | Path) -> list[Event]:
    """Annotations: columns ``file``, ``onset`` or ``onset_s``, ``offset`` or ``offset_s``, ``class``.

    Comma- or tab-separated (DCASE files use tabs); ``event_label`` is accepted for ``class``.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        first_line = handle.readline()
        handle.seek(0)
        delimiter = "\t" if "\t" in first_line and "," not in first_line else ","
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        file_column = _pick_column(header, ("file", "filename"), path)
        onset_column = _pick_column(header, ONSET_COLUMNS, path)
        offset_column = _pick_column(header, OFFSET_COLUMNS, path)
        class_column = _pick_column(header, CLASS_COLUMNS, path)
        events = []
        for line, row in enumerate(reader, start=2):
            try:
                onset, offset = float(row[onset_column]), float(row[offset_column])
            except (TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: onset/offset must be numbers, got "
                                 f"{row[onset_column]!r} / {row[offset_column]!r}") from None
            if not (math.isfinite(onset) and math.isfinite(offset)) or onset < 0:
                raise ValueError(f"{path}, line {line}: onset/offset must be finite seconds >= 0, got "
                                 f"{row[onset_column]!r} / {row[offset_column]!r}")
            if offset < onset:
                raise ValueError(f"{path}, line {line}: offset {offset} is before onset {onset}")
            events.append(Event(row[file_column].strip(), row[class_column].strip(), onset, offset))
    return events


def write_events_csv(events: Iterable[Event], path: str | Path,
                     columns: Sequence[str] = EVENT_CSV_COLUMNS) -> Path:
    """Write events with ``columns`` (default ``file, class, onset_s, offset_s, peak_probability,
    mean_probability``; ``REFERENCE_CSV_COLUMNS`` for annotations), atomically. ``read_events_csv`` reads both."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(event.to_dict() for event in events)
    return atomic_write_text(path, buffer.getvalue())


def format_events_table(events: Sequence[Event]) -> str:
    """Fixed-width table of detected events: class, onset, offset, duration, peak, mean."""
    lines = [f"  {'class':<16} {'onset_s':>9} {'offset_s':>9} {'dur_s':>7} {'peak':>6} {'mean':>6}"]
    for e in events:
        lines.append(f"  {e.class_name:<16} {e.onset_s:9.2f} {e.offset_s:9.2f} {e.duration_s:7.2f} "
                     f"{e.peak_probability:6.3f} {e.mean_probability:6.3f}")
    if not events:
        lines.append("  (no events)")
    return "\n".join(lines)


def format_comparison(reference: Sequence[Event], estimated: Sequence[Event], t_collar: float = ONSET_COLLAR_S,
                      percentage_of_length: float = OFFSET_COLLAR_FRACTION) -> str:
    """Side-by-side table, in time order: true event | detected event | hit / miss / false alarm.

    A detection is shown next to the reference event it is matched to (DCASE collars); an
    unmatched detection sits next to an unmatched reference event it overlaps, if any (it counts
    as a miss and a false alarm: its onset or offset is outside the collars), marked when that
    pair is a hit of DCASE 2017's onset-only matching (``dcase2017_metrics``).
    """
    matches = dict(match_events(reference, estimated, t_collar, percentage_of_length))
    onset_matches = set(match_events(reference, estimated, DCASE2017_ONSET_COLLAR_S, evaluate_offset=False))
    matched_estimates = set(matches.values())
    rows: list[tuple[float, Event | None, Event | None, str]] = []
    paired_estimates: set[int] = set()
    for r, ref in enumerate(reference):
        if r in matches:
            est = estimated[matches[r]]
            rows.append((ref.onset_s, ref, est, "hit"))
            paired_estimates.add(matches[r])
            continue
        overlapping = [(min(ref.offset_s, est.offset_s) - max(ref.onset_s, est.onset_s), e)
                       for e, est in enumerate(estimated)
                       if e not in matched_estimates and e not in paired_estimates
                       and est.file == ref.file and est.class_name == ref.class_name
                       and min(ref.offset_s, est.offset_s) > max(ref.onset_s, est.onset_s)]
        if overlapping:
            e = max(overlapping)[1]
            paired_estimates.add(e)
            status = "overlaps, outside collars (miss + FA)"
            if (r, e) in onset_matches:
                status += f"; DCASE 2017 hit (onset within {DCASE2017_ONSET_COLLAR_S * 1000:.0f} ms)"
            rows.append((ref.onset_s, ref, estimated[e], status))
        else:
            rows.append((ref.onset_s, ref, None, "miss"))
    for e, est in enumerate(estimated):
        if e not in paired_estimates:
            rows.append((est.onset_s, None, est, "false alarm"))
    rows.sort(key=lambda row: ((row[1] or row[2]).file, row[0]))

    def span(event: Event | None) -> str:
        return f"{event.onset_s:8.2f} - {event.offset_s:8.2f}" if event else f"{'':>8}   {'':>8}"

    several_files = len({e.file for e in list(reference) + list(estimated)}) > 1
    header = f"  {'true (s)':^19} | {'detected (s)':^19} | {'peak':>5} | result"
    lines = [header, "  " + "-" * (len(header) - 2)]
    for _, ref, est, status in rows:
        peak = f"{est.peak_probability:5.2f}" if est is not None else " " * 5
        prefix = f"  [{(ref or est).file}]" if several_files else ""
        lines.append(f"  {span(ref)} | {span(est)} | {peak} | {status}{prefix}")
    if not rows:
        lines.append("  (no true and no detected events)")
    return "\n".join(lines)
