"""audioclf/streaming.py in-process: PCM decoding, malformed input, events as in long mode, latency, memory.

A "loudness" classifier (probability = window RMS, scaled) stands in for a model here, so the
tests are about the stream plumbing and the detector; ``test_predict_stream.py`` runs the real
``predict.py --stream`` with a trained model through a pipe.
"""
from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from audioclf.events import DetectionParams, detect_events
from audioclf.frontend import FeatureParams, iter_audio_blocks
from audioclf.export import OnnxMetadata
from audioclf.streaming import (PcmFormat, StreamDetector, StreamError, latency_bound_s, read_pcm,
                                write_json_lines)
from audioclf.windows import WindowSlicer

PARAMS = FeatureParams(sample_rate=16000, n_fft=512, n_mels=32, n_frames=50)  # 0.5 s windows


class LoudnessClassifier:
    """Probability of ``loud`` = RMS / 0.2 (clipped) of the window's samples that its frames read; ``quiet``
    the rest. Takes graph inputs (``classify_inputs``) or waveform windows, like an exported model
    (``OnnxClassifier``)."""

    class_names = ["loud", "quiet"]
    params = PARAMS
    metadata = OnnxMetadata(class_names, PARAMS, PARAMS.n_samples, PARAMS.sample_rate)

    def classify_inputs(self, inputs: np.ndarray) -> np.ndarray:
        context = self.metadata.context_samples
        window = np.ascontiguousarray(inputs[:, context:context + self.metadata.window_samples], dtype=np.float64)
        loud = np.clip(np.sqrt(np.mean(np.square(window), axis=1)) / 0.2, 0.0, 1.0)
        return np.stack([loud, 1.0 - loud], axis=1).astype(np.float32)

    def classify_waveforms(self, waveforms: np.ndarray) -> np.ndarray:
        return self.classify_inputs(self.metadata.window_input(waveforms))


def bursts_signal(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Quiet noise with loud tone bursts (0.3-4 s) at random times; float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    audio = 0.01 * rng.standard_normal(n)
    t = 1.0
    while t < seconds - 1:
        length = rng.uniform(0.3, 4.0)
        start, stop = int(t * rate), min(n, int((t + length) * rate))
        audio[start:stop] += rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * 440 * np.arange(stop - start) / rate)
        t += length + rng.uniform(0.2, 8.0)
    return np.clip(audio, -1, 1).astype(np.float32)


def as_s16le(audio: np.ndarray) -> bytes:
    """Float audio ``(n,)`` or ``(n, channels)`` -> interleaved little-endian int16 bytes."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2").tobytes()


class TrickleReader(io.RawIOBase):
    """A pipe that hands out at most ``size`` bytes per read (random sizes)."""

    def __init__(self, data: bytes, seed: int = 0):
        self.data, self.position, self.rng = data, 0, np.random.default_rng(seed)

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        step = int(self.rng.integers(1, 3000))
        chunk = self.data[self.position:self.position + min(step, size)]
        self.position += len(chunk)
        return chunk

    read = read1


SETTINGS = {"loud": DetectionParams(threshold=0.5, median_filter=3, min_duration=0.3, merge_gap=0.5)}


def long_mode_events(audio: np.ndarray, hop_s: float, settings=SETTINGS):
    """Long mode's path: all windows, then detect_events on the whole column."""
    classifier = LoudnessClassifier()
    hop = round(hop_s / (PARAMS.hop_length / PARAMS.sample_rate)) * PARAMS.hop_length  # whole frames
    slicer = WindowSlicer(PARAMS.n_samples, hop, PARAMS.pad_mode)
    windows = [w.copy() for w in slicer.feed(audio)] + list(slicer.finish())
    probabilities = np.concatenate([classifier.classify_waveforms(w[None]) for w in windows])
    events = []
    for name, params in settings.items():
        column = probabilities[:, classifier.class_names.index(name)]
        events += detect_events(column, hop / PARAMS.sample_rate, PARAMS.clip_seconds, len(audio) / PARAMS.sample_rate,
                                params, class_name=name)
    return [e.to_dict() for e in events]


def end_records(records: list[dict]) -> list[dict]:
    return [{"file": "", "class": r["class"], **{k: r[k] for k in ("onset_s", "offset_s", "peak_probability",
                                                                    "mean_probability")}}
            for r in records if r["event"] == "end"]


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------

def test_pcm_decodes_like_a_wav_file_of_the_same_samples(tmp_path):
    rng = np.random.default_rng(0)
    stereo = np.clip(rng.normal(0, 0.2, (22050 * 3, 2)), -1, 1).astype(np.float32)
    sf.write(tmp_path / "x.wav", stereo, 22050, subtype="PCM_16")
    expected = np.concatenate(list(iter_audio_blocks(tmp_path / "x.wav", 16000, block_seconds=1.0)))
    quantised, _ = sf.read(tmp_path / "x.wav", dtype="float32")
    as_int16, _ = sf.read(tmp_path / "x.wav", dtype="int16")  # the file's own samples, as a pipe carries them
    for data, sample_format in ((as_int16.astype("<i2").tobytes(), "s16le"),
                                (quantised.astype("<f4").tobytes(), "f32le")):
        pcm = PcmFormat(sample_format, 22050, 2)
        got = np.concatenate(list(read_pcm(TrickleReader(data), pcm, 16000)))
        np.testing.assert_array_equal(got, expected)  # mono + resampling exactly as long mode reads files
    same_rate = np.concatenate(list(read_pcm(io.BytesIO(as_int16.astype("<i2").tobytes()),
                                             PcmFormat("s16le", 22050, 2), 22050)))
    np.testing.assert_array_equal(same_rate, quantised.mean(axis=1))


def test_malformed_input_gets_a_clear_error_after_the_whole_frames():
    data = as_s16le(np.zeros((1000, 2), dtype=np.float32)) + b"\x01\x02\x03"  # 3 bytes of a 4-byte frame
    blocks = read_pcm(io.BytesIO(data), PcmFormat("s16le", 16000, 2), 16000)
    received = 0
    with pytest.raises(StreamError, match=r"ended inside a sample frame: 3 byte\(s\) after 1000 whole frames "
                                          r"of 4 bytes \(s16le, 2 channel\(s\)\)"):
        for block in blocks:
            received += block.size
    assert received == 1000
    nan = np.zeros(100, dtype="<f4")
    nan[50] = np.nan
    with pytest.raises(StreamError, match=r"sample frame 50 \(0.003 s\) is NaN, infinite or beyond 1e\+06"):
        list(read_pcm(io.BytesIO(nan.tobytes()), PcmFormat("f32le", 16000, 1), 16000))
    huge = np.zeros(100, dtype="<f4")
    huge[70] = 1e30  # finite, but its power overflows the log-mel: NaN probabilities, not an answer
    with pytest.raises(StreamError, match=r"sample frame 70 \(0.004 s\) is NaN, infinite or beyond"):
        list(read_pcm(io.BytesIO(huge.tobytes()), PcmFormat("f32le", 16000, 1), 16000))
    for bad, message in ((PcmFormat(rate=0), "--rate must be a whole number of Hz"),
                         (PcmFormat(rate=44100.5), "--rate must be"),
                         (PcmFormat(channels=0), "--channels must be a whole number in 1..64"),
                         (PcmFormat("s24le"), "--format must be one of s16le, f32le")):
        with pytest.raises(ValueError, match=message):
            bad.validate()


# ---------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------

def test_streamed_events_equal_long_mode_and_come_within_the_latency_bound():
    audio = bursts_signal(180.0)
    hop_s = 0.1
    settings = {"loud": DetectionParams(threshold=0.5, threshold_low=0.5, median_filter=5, min_duration=0.4,
                                        merge_gap=0.6)}
    detector = StreamDetector(LoudnessClassifier(), settings, hop_seconds=hop_s)
    records = list(detector.run(read_pcm(TrickleReader(as_s16le(audio)), PcmFormat("s16le", 16000, 1), 16000)))
    quantised = np.frombuffer(as_s16le(audio), "<i2").astype(np.float32) / 32768.0
    expected = long_mode_events(quantised, hop_s, settings)
    assert len(expected) >= 10
    assert end_records(records) == expected
    # every start line before its end line, lines in decision order
    assert [r["event"] for r in records] == ["start", "end"] * len(expected)
    assert [r["time_s"] for r in records if r["event"] == "start"] == [e["onset_s"] for e in expected]
    assert all(a["stream_s"] <= b["stream_s"] for a, b in zip(records, records[1:]))
    # without hysteresis back-dating, every line comes within the stated bound (audio time)
    start_bound, end_bound = latency_bound_s(PARAMS.n_samples / 16000, hop_s, settings["loud"])
    starts = [r["stream_s"] - r["time_s"] for r in records if r["event"] == "start"]
    ends = [r["stream_s"] - r["time_s"] for r in records if r["event"] == "end"]
    assert max(starts) <= start_bound + 1e-3 and max(ends) <= end_bound + 1e-3
    assert min(starts) > 0 and min(ends) > 0


def test_end_of_input_closes_the_open_event_and_lines_are_json():
    audio = bursts_signal(4.0, seed=2)
    audio[-16000 * 2:] = 0.4  # loud until the very end
    detector = StreamDetector(LoudnessClassifier(), SETTINGS)
    out = io.StringIO()
    n = write_json_lines(detector.run(read_pcm(io.BytesIO(as_s16le(audio)), PcmFormat(), 16000)), out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == n and lines
    last = lines[-1]
    assert last["event"] == "end" and last["offset_s"] == last["time_s"] == 4.0 == last["stream_s"]
    assert set(last) == {"event", "class", "time_s", "probability", "onset_s", "offset_s", "peak_probability",
                         "mean_probability", "stream_s"}
    assert set(lines[0]) == {"event", "class", "time_s", "probability", "stream_s"}


def test_malformed_input_still_closes_open_events_before_the_error():
    data = as_s16le(np.full(16000 * 3, 0.4, dtype=np.float32)) + b"\x00"  # loud, then half a sample
    detector = StreamDetector(LoudnessClassifier(), SETTINGS)
    records = []
    with pytest.raises(StreamError, match="ended inside a sample frame"):
        for record in detector.run(read_pcm(io.BytesIO(data), PcmFormat(), 16000)):
            records.append(record)
    assert [r["event"] for r in records] == ["start", "end"] and records[-1]["offset_s"] == 3.0


def test_memory_stays_flat_over_a_long_stream():
    def blocks(minutes: float):
        rng = np.random.default_rng(0)
        for _ in range(int(minutes * 60 / 2)):  # 2 s blocks, never the whole signal
            block = (0.01 * rng.standard_normal(32000)).astype(np.float32)
            block[:8000] += 0.3
            yield block

    peaks = []
    for minutes in (2, 20):
        detector = StreamDetector(LoudnessClassifier(), SETTINGS, hop_seconds=0.25)
        tracemalloc.start()
        n_lines = sum(1 for _ in detector.run(blocks(minutes)))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert n_lines == 2 * minutes * 30  # one event per block, each a start and an end line
    assert peaks[1] < 1.2 * peaks[0] + 64 * 1024, peaks


def test_ctrl_c_while_waiting_for_audio_closes_the_open_event_first():
    def blocks():
        yield np.full(16000 * 2, 0.4, dtype=np.float32)
        raise KeyboardInterrupt

    records = []
    with pytest.raises(KeyboardInterrupt):
        for record in StreamDetector(LoudnessClassifier(), SETTINGS).run(blocks()):
            records.append(record)
    assert [r["event"] for r in records] == ["start", "end"] and records[-1]["offset_s"] == 2.0
