"""Live detection: raw PCM from a pipe -> one JSON line per event start and end, as they happen.

    arecord -f S16_LE -r 16000 -c 1 | python predict.py --checkpoint C --stream - --rate 16000

The audio goes through the steps of long mode, incrementally: PCM -> mono float32 -> the
streaming soxr resampler (chunk sizes do not change its output) -> the recording's log-mel in
blocks (``LogMelStream``) -> windows of the model's frames every hop (``windows.WindowSlicer``)
-> the model, one window as soon as its last frame is complete -> ``events.EventDetector`` per
class, the state machine long mode uses too. A recording streamed in therefore gives the events
``predict.py --long`` gives for it (bit for bit with ``--batch_size 1``: batched CPU kernels round
the model's output differently in the 7th digit). An exported model (``--onnx``) is given the
samples each of those windows' frames read instead (``WaveformWindows``), and computes the same
frames in its graph.

Memory is bounded (a window, the resampler's filter and the front end's overlap, a few windows
of probabilities per class), whatever the length of the stream. Latency from the audio to a line, in audio time
(``latency_bound_s``): a start line comes at most window + hop + (median_filter // 2) hops +
max(min_duration, 4 x edge_trim), plus merge_gap when that is not 0, after the event's onset (a
piece too short to start alone waits up to merge_gap for the next to join it; an event shorter
than 4 x edge_trim starts with its end), an end line at most window + hop +
(median_filter // 2) hops + merge_gap + edge_trim after its offset; add the model's time for one
window. Hysteresis adds the time the probability spends between ``threshold_low`` and the
threshold: an onset is dated back to where it rose above ``threshold_low``, and an end waits
while a new rise within merge_gap has not yet shown whether it reaches the threshold (and
merges) or falls back; each merge with a later run can add up to merge_gap to a start.
"""
from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import numpy as np
import soxr

from audioclf.events import DetectionParams, EventDetector, EventUpdate
from audioclf.frontend import MAX_ABS_SAMPLE, FeatureParams, LogMelStream, PaddedRecording, bad_samples, to_mono
from audioclf.windows import WindowSlicer, hop_from_seconds, window_starts

log = logging.getLogger(__name__)

# PCM sample formats: name -> (numpy dtype of one sample, scale to [-1, 1]).
PCM_FORMATS: dict[str, tuple[np.dtype, float]] = {
    "s16le": (np.dtype("<i2"), 1.0 / 32768.0),
    "f32le": (np.dtype("<f4"), 1.0),
}
MAX_RATE = 768_000  # Hz; anything above is a typo
MAX_CHANNELS = 64
READ_BYTES = 8192  # per read from the pipe: returns as soon as some audio is there


class StreamError(Exception):
    """Malformed input on the stream; the message says what and where."""


class WindowClassifier(Protocol):
    """What streaming needs from a model: a ``Predictor`` (``classify_features`` of log-mel windows,
    its ``extractor``, ``window``, ``hop_frames``) or an ``OnnxClassifier`` (``classify_inputs`` of the samples
    those windows' frames read, ``metadata``: ``WaveformWindows``)."""

    class_names: list[str]
    params: FeatureParams


@dataclass(frozen=True)
class PcmFormat:
    """The layout of the raw input: sample format, rate and interleaved channels."""

    sample_format: str = "s16le"
    rate: int = 16000
    channels: int = 1

    def validate(self) -> "PcmFormat":
        """ValueError naming the bad value; self when valid."""
        if self.sample_format not in PCM_FORMATS:
            raise ValueError(f"--format must be one of {', '.join(PCM_FORMATS)}, got {self.sample_format!r}")
        if not (isinstance(self.rate, int) and 1 <= self.rate <= MAX_RATE):
            raise ValueError(f"--rate must be a whole number of Hz in 1..{MAX_RATE}, got {self.rate!r}")
        if not (isinstance(self.channels, int) and 1 <= self.channels <= MAX_CHANNELS):
            raise ValueError(f"--channels must be a whole number in 1..{MAX_CHANNELS}, got {self.channels!r}")
        return self

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample of every channel."""
        return PCM_FORMATS[self.sample_format][0].itemsize * self.channels


def read_pcm(stream: BinaryIO, pcm: PcmFormat, target_rate: int, read_bytes: int = READ_BYTES
             ) -> Iterator[np.ndarray]:
    """Mono float32 blocks at ``target_rate`` from raw interleaved PCM, as soon as they arrive.

    Raises StreamError for a stream that ends inside a sample frame or holds NaN/inf samples
    (after yielding every whole frame before it).
    """
    pcm.validate()
    dtype, scale = PCM_FORMATS[pcm.sample_format]
    resampler = None if pcm.rate == target_rate else soxr.ResampleStream(
        pcm.rate, target_rate, 1, dtype="float32", quality="HQ")
    read = getattr(stream, "read1", stream.read)  # read1: what the pipe has, without waiting for more
    pending = b""
    n_frames = 0
    while True:
        data = read(read_bytes)
        if not data:
            break
        data = pending + data
        whole = len(data) - len(data) % pcm.frame_bytes
        pending = data[whole:]
        if not whole:
            continue
        samples = np.frombuffer(data[:whole], dtype=dtype).reshape(-1, pcm.channels)
        block = samples.astype(np.float32) * np.float32(scale) if scale != 1.0 else samples.astype(np.float32)
        bad_frames = bad_samples(block).any(axis=1)
        if bad_frames.any():
            bad = n_frames + int(np.flatnonzero(bad_frames)[0])
            raise StreamError(f"sample frame {bad} ({bad / pcm.rate:.3f} s) is NaN, infinite or beyond "
                              f"{MAX_ABS_SAMPLE:g}: is the input really {pcm.sample_format}?")
        n_frames += len(block)
        mono = to_mono(block)  # (n,)
        if resampler is not None:
            mono = resampler.resample_chunk(mono, last=False)
        if mono.size:
            yield mono
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if tail.size:
            yield tail
    if pending:
        raise StreamError(f"the input ended inside a sample frame: {len(pending)} byte(s) after {n_frames} whole "
                          f"frames of {pcm.frame_bytes} bytes ({pcm.sample_format}, {pcm.channels} channel(s)); "
                          "the events up to there were written")


def update_record(update: EventUpdate) -> dict:
    """One JSON line: ``{"event": "start"|"end", "class", "time_s", "probability", ...}``.

    ``time_s`` is the onset (start) or offset (end); ``probability`` the peak so far (start) or
    the event's peak (end). An end line also carries the event's columns as long mode writes
    them (``onset_s, offset_s, peak_probability, mean_probability``). ``stream_s`` is the audio
    time at which the line was decided.
    """
    row = update.event.to_dict()
    record = {"event": update.kind, "class": row["class"],
              "time_s": row["onset_s"] if update.kind == "start" else row["offset_s"],
              "probability": row["peak_probability"]}
    if update.kind == "end":
        record.update({key: row[key] for key in ("onset_s", "offset_s", "peak_probability", "mean_probability")})
    record["stream_s"] = round(update.decided_s, 3)
    return record


class FeatureWindows:
    """Long mode's windows, incrementally: the recording's log-mel (``LogMelStream``) in frame windows.

    For a ``Predictor``: the frames equal the one-piece log-mel of everything fed so far, and the
    windows are ``audioclf.windows``' frame ranges of it, exactly as ``predict_long`` cuts them.
    """

    def __init__(self, predictor, hop_seconds: float | None):
        self.predictor = predictor
        params = predictor.params
        self.stream = LogMelStream(predictor.extractor)
        self.hop = predictor.hop_frames(hop_seconds)  # frames
        self.window = predictor.window
        self.slicer = WindowSlicer(self.window, self.hop, params.pad_mode, predictor.silence)
        self.rate = params.sample_rate
        self.hop_s, self.window_s = self.hop * predictor.frame_s, predictor.window_s
        # samples a frame needs past its first sample: centred frames reach n_fft / 2 beyond their centre
        self._frame_reach = params.n_fft // 2 + 1 if params.centered else params.win_length
        self._hop_length = params.hop_length

    @property
    def n_seen(self) -> int:
        """Samples fed so far."""
        return self.stream.n_seen

    def _ready_s(self) -> float:
        """Audio time at which the latest window's last frame was complete (for latency)."""
        last_frame = (self.slicer.n_windows - 1) * self.hop + self.window - 1
        return min(self.stream.n_seen, last_frame * self._hop_length + self._frame_reach) / self.rate

    def feed(self, block: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        """``(probabilities (n_classes,), audio_s)`` of each window ``block`` completes."""
        for window in self.slicer.feed(self.stream.feed(block)):
            yield self.predictor.classify_features(window[None])[0], self._ready_s()

    def finish(self) -> Iterator[tuple[np.ndarray, float]]:
        """The windows of the recording's last frames (its padded end), then the padded last window."""
        if self.stream.n_seen == 0:
            return
        for window in itertools.chain(self.slicer.feed(self.stream.finish()), self.slicer.finish()):
            yield self.predictor.classify_features(window[None])[0], self.n_seen / self.rate


class WaveformWindows:
    """Long mode's windows for a model that takes samples (``OnnxClassifier``), incrementally.

    The exported graph computes frames without padding, so window ``i`` is given the samples its frames
    read in long mode: ``input_samples`` of the recording's padded signal (``frontend.PaddedRecording``:
    the end padded with ``pad_mode``, reflected by ``n_fft // 2`` at both ends) from frame ``i * hop``'s
    first sample. Its frames are then long mode's, whose windows (``windows.window_starts``) are cut
    here; a padded last window gets the samples of its frames in the recording only, and the graph
    fills the rest as long mode does. Probabilities equal long mode's to float rounding.
    """

    def __init__(self, classifier, hop_seconds: float | None):
        self.classifier = classifier
        params, metadata = classifier.params, classifier.metadata
        self.params = params
        self.rate = params.sample_rate
        frame_s = params.hop_length / self.rate
        self.window = metadata.window_frames
        self.hop = metadata.hop_frames if hop_seconds is None else hop_from_seconds(hop_seconds, frame_s)
        self.hop_s, self.window_s = self.hop * frame_s, self.window * frame_s
        self.signal = PaddedRecording(params)
        self._input_samples, self._window_samples = metadata.input_samples, metadata.window_samples
        self._hop_samples = self.hop * params.hop_length
        self._buffer = np.zeros(0, dtype=np.float32)  # signal samples from position _offset on
        self._offset = 0
        self.n_windows = 0

    @property
    def n_seen(self) -> int:
        """Samples fed so far (without the end's padding)."""
        return self.signal.n_seen

    def _complete(self, samples: np.ndarray, limit: int | None = None) -> list[np.ndarray]:
        """Add signal samples; the inputs ``(input_samples,)`` of the windows they complete (at most ``limit``)."""
        self._buffer = np.concatenate([self._buffer, samples])
        inputs = []
        while limit is None or self.n_windows < limit:
            start = self.n_windows * self._hop_samples - self._offset
            if start + self._input_samples > self._buffer.size:
                break
            inputs.append(self._buffer[start:start + self._input_samples])
            self.n_windows += 1
        drop = min(self._buffer.size, self.n_windows * self._hop_samples - self._offset)  # before the next window
        self._buffer, self._offset = self._buffer[drop:], self._offset + drop
        return inputs

    def feed(self, block: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        """``(probabilities (n_classes,), audio_s)`` of each window ``block`` completes."""
        # A window whose samples are all in lies inside the recording's frames (long mode has it whole).
        for inputs in self._complete(self.signal.feed(block)):
            end = (self.n_windows - 1) * self._hop_samples + self._window_samples
            yield self.classifier.classify_inputs(inputs[None])[0], min(self.n_seen, end) / self.rate

    def finish(self) -> Iterator[tuple[np.ndarray, float]]:
        """The windows reaching into the end's padding (long mode's last ones), then the padded last window
        when frames remain after the last full one (a hop that is not the grid's)."""
        if self.n_seen == 0:
            return
        tail = self.signal.finish()
        total = self.signal.n_frames
        starts = window_starts(total, self.window, self.hop)
        n_whole = int(np.count_nonzero(starts + self.window <= total))
        inputs = self._complete(tail, n_whole)
        if len(starts) > n_whole:  # its frames in the recording only: the graph fills the window as long mode does
            start = int(starts[-1])
            begin = start * self.params.hop_length - self._offset
            inputs.append(self._buffer[begin:begin + self.params.signal_samples(total - start)])
        for window in inputs:
            yield self.classifier.classify_inputs(window[None])[0], self.n_seen / self.rate


class StreamDetector:
    """Blocks of mono audio at the model's rate -> event updates, window by window.

    A ``Predictor`` gets long mode's windows (``FeatureWindows``), so a recording streamed in gives
    ``--long``'s events; an ``OnnxClassifier`` gets the samples of those windows' frames (``WaveformWindows``).
    """

    def __init__(self, classifier: WindowClassifier, settings: dict[str, DetectionParams],
                 hop_seconds: float | None = None):
        self.classifier = classifier
        self.windows = (FeatureWindows(classifier, hop_seconds) if hasattr(classifier, "classify_features")
                        else WaveformWindows(classifier, hop_seconds))
        self.rate = classifier.params.sample_rate
        unknown = [name for name in settings if name not in classifier.class_names]
        if unknown:
            raise ValueError(f"not classes of this model: {', '.join(unknown)}")
        self.columns = [classifier.class_names.index(name) for name in settings]
        self.detectors = [EventDetector(p, self.windows.hop_s, self.windows.window_s, class_name=name)
                          for name, p in settings.items()]
        self.n_windows = 0

    @property
    def hop_s(self) -> float:
        """Seconds between window starts."""
        return self.windows.hop_s

    @property
    def window_s(self) -> float:
        """Seconds one window covers."""
        return self.windows.window_s

    @property
    def n_seen(self) -> int:
        """Samples fed so far."""
        return self.windows.n_seen

    def _push(self, scored: Iterable[tuple[np.ndarray, float]]) -> list[EventUpdate]:
        updates = []
        for probabilities, audio_s in scored:
            self.n_windows += 1
            for detector, column in zip(self.detectors, self.columns):
                updates += detector.push(probabilities[column:column + 1], audio_s)
        return updates

    def feed(self, block: np.ndarray) -> list[EventUpdate]:
        """Every update the windows completed by ``block`` (1-D float32) decide."""
        return self._push(self.windows.feed(block))

    def finish(self) -> list[EventUpdate]:
        """End of input: the last windows, then every open event closes."""
        updates = self._push(self.windows.finish())
        duration_s = self.n_seen / self.rate
        for detector in self.detectors:
            updates += detector.finish(duration_s)
        return updates

    def run(self, blocks: Iterable[np.ndarray]) -> Iterator[dict]:
        """JSON-able records of every update, in decision order; finishes when ``blocks`` ends.

        When reading ``blocks`` raises (malformed input, Ctrl-C), the open events are closed
        first at the end of the audio received, then the error propagates.
        """
        blocks = iter(blocks)
        while True:
            try:
                block = next(blocks, None)
            except BaseException:
                for update in self.finish():
                    yield update_record(update)
                raise
            if block is None:
                break
            for update in self.feed(block):
                yield update_record(update)
        for update in self.finish():
            yield update_record(update)


def write_json_lines(records: Iterable[dict], out) -> int:
    """Write each record as one JSON line, flushed at once; returns the number of lines."""
    count = 0
    for record in records:
        out.write(json.dumps(record) + "\n")
        out.flush()
        count += 1
    return count


def latency_bound_s(window_s: float, hop_s: float, params: DetectionParams) -> tuple[float, float]:
    """(start, end) latency bounds in audio seconds: window + hop + smoothing delay + the rules' wait."""
    smoothing = (params.median_filter // 2) * hop_s
    trim = params.edge_trim
    start_wait = max(params.min_duration, 4.0 * trim)  # a start's trimmed onset must be final
    if start_wait > 0:  # a piece too short to start alone waits up to merge_gap for the next to join it (or
        start_wait += params.merge_gap  # for its own end, which also covers an event shorter than 4 x trim)
    return (window_s + hop_s + smoothing + start_wait,
            window_s + hop_s + smoothing + params.merge_gap + trim)  # the trimmed offset is earlier


def stream_summary(detector: StreamDetector, pcm: PcmFormat, settings: dict[str, DetectionParams]) -> str:
    """One log line: what is listened to, and the latency bounds."""
    window_s = detector.window_s
    bounds = [latency_bound_s(window_s, detector.hop_s, p) for p in settings.values()]
    return (f"listening: {pcm.sample_format} {pcm.rate} Hz x {pcm.channels} ch -> windows of {window_s:.2f} s "
            f"every {detector.hop_s:.2f} s at {detector.rate} Hz; classes {', '.join(settings)}; lines at most "
            f"{max(b[0] for b in bounds):.2f} s (start) / {max(b[1] for b in bounds):.2f} s (end) after the event")

