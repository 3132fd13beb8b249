"""Tests for audioclf/frontend.py: log-mel values, resampling, file formats, padding, errors."""
from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from audioclf.frontend import (AMIN, AudioReadError, FeatureExtractor, FeatureParams, LogMel, LogMelStream, LogScale,
                               fit_length, iter_audio_blocks, iter_recording_frames, log_scale_for, n_frames_for,
                               read_audio, recording_n_frames)
from conftest import make_signal, write_wav

FLOOR_DB = 10 * np.log10(AMIN)  # -100 dB: the value of a silent frame

# Tiny tensors: torch's thread pool only adds overhead (and stalls on a busy 2-core box).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mel_points(params: FeatureParams) -> np.ndarray:
    """The ``n_mels + 2`` HTK mel-scale corner frequencies (Hz), computed independently of the front end."""
    f_max = params.f_max or params.sample_rate / 2
    low, high = (2595 * np.log10(1 + f / 700) for f in (params.f_min, f_max))
    return 700 * (10 ** (np.linspace(low, high, params.n_mels + 2) / 2595) - 1)


def mel_band_centres(params: FeatureParams) -> np.ndarray:
    """Centre frequency (Hz) of each mel band: ``(n_mels,)``."""
    return mel_points(params)[1:-1]


def reference_log_mel(audio: np.ndarray, params: FeatureParams) -> np.ndarray:
    """The documented formula in plain numpy (float64): ``(n_mels, 1 + n // hop)``."""
    n_fft, hop, win = params.n_fft, params.hop_length, params.win_length
    padded = np.pad(audio.astype(np.float64), n_fft // 2, mode="reflect")
    window = np.zeros(n_fft)
    periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    window[(n_fft - win) // 2:(n_fft - win) // 2 + win] = periodic_hann  # centred, as torch.stft
    n_frames = 1 + audio.size // hop
    frames = np.stack([padded[t * hop:t * hop + n_fft] for t in range(n_frames)])  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (T, n_fft // 2 + 1)
    bins = np.linspace(0, params.sample_rate / 2, n_fft // 2 + 1)
    corners = mel_points(params)
    rising = (bins[None] - corners[:-2, None]) / (corners[1:-1] - corners[:-2])[:, None]
    falling = (corners[2:, None] - bins[None]) / (corners[2:] - corners[1:-1])[:, None]
    filters = np.maximum(0, np.minimum(rising, falling))  # (n_mels, n_fft // 2 + 1), peak 1
    return 10 * np.log10(np.maximum(filters @ power.T, AMIN))


def tones(frequencies: tuple[float, ...], sample_rate: int, duration: float = 1.0,
          channels: int = 1, fade_seconds: float = 0.03) -> np.ndarray:
    """Sum of sines with a raised-cosine fade-in: no onset click for the resampler to ring on."""
    time = np.arange(int(round(duration * sample_rate))) / sample_rate
    signal = sum(0.25 * np.sin(2 * np.pi * frequency * time) for frequency in frequencies)
    fade = int(fade_seconds * sample_rate)
    signal[:fade] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    signal = signal.astype(np.float32)
    return signal if channels == 1 else np.repeat(signal[:, None], channels, axis=1)


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(FeatureParams(n_mels=64, n_frames=50))


# ---------------------------------------------------------------------------------------
# Values of the log-mel
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("frequency", [300.0, 1000.0, 3000.0])
def test_pure_tone_peaks_in_the_nearest_mel_band(tmp_path, extractor, frequency):
    path = write_wav(tmp_path / "tone.wav", kind="tone", frequency=frequency, duration=1.0)

    feature = extractor.file_to_feature(path)

    params = extractor.params
    assert feature.shape == (params.n_mels, params.n_frames)
    assert feature.dtype == np.float32
    nearest = int(np.argmin(np.abs(mel_band_centres(params) - frequency)))
    # Frame 0 is centred on sample 0: its window holds the reflect-padded (kinked) edge.
    steady = feature[:, 1:]
    per_frame_peak = steady.argmax(axis=0)  # (n_frames - 1,)
    assert (per_frame_peak == nearest).all(), (frequency, nearest, per_frame_peak)
    # A 0.5-amplitude sine puts ~(0.5 * sum(hann) / 2)^2 ~ 10^3.9 power in its bin,
    # while bands far from it hold only window leakage and 16-bit quantisation noise.
    assert steady[nearest].min() > 30
    far = np.abs(np.arange(params.n_mels) - nearest) > 8
    assert steady[far].max() < steady[nearest].min() - 40


def test_log_mel_matches_the_documented_formula():
    """mono -> fit -> |STFT|^2 (Hann, centred, reflect) -> HTK triangles -> 10*log10(max(., 1e-10))."""
    params = FeatureParams(n_mels=40, n_frames=30, n_fft=512)
    audio = make_signal("tone+noise", frequency=700.0, duration=0.5, seed=2)
    audio[4000:4400] = 0  # a silent stretch: low values and the log floor's neighbourhood too

    feature = FeatureExtractor(params).waveform_to_feature(audio)

    expected = reference_log_mel(fit_length(audio, params.n_samples, "repeat"), params)[:, : params.n_frames]
    np.testing.assert_allclose(feature, expected, atol=1e-3)  # dB


@pytest.mark.parametrize("n_samples", [1600, 8000, 8159, 8160, 8161])
def test_unpadded_frame_count_is_one_plus_n_over_hop(n_samples):
    params = FeatureParams(n_mels=32, n_fft=512)
    waveform = torch.from_numpy(make_signal("noise", duration=n_samples / params.sample_rate))

    log_mel = LogMel(params)(waveform)

    assert log_mel.shape == (params.n_mels, n_frames_for(n_samples, params.hop_length))
    assert n_frames_for(n_samples, params.hop_length) == 1 + n_samples // 160


def test_feature_has_exactly_n_frames_whatever_the_clip_length(small_params):
    extractor = FeatureExtractor(small_params)
    assert n_frames_for(small_params.n_samples, small_params.hop_length) >= small_params.n_frames
    for duration in (0.05, 0.5, 2.0):
        feature = extractor.waveform_to_feature(make_signal("noise", duration=duration))
        assert feature.shape == (32, 50) and feature.dtype == np.float32


# ---------------------------------------------------------------------------------------
# Sample rates, channels, sample formats
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("source_rate, channels", [(8000, 1), (44100, 2)])
def test_other_rates_resample_to_the_same_features(tmp_path, extractor, source_rate, channels):
    frequencies = (440.0, 1000.0, 2500.0)
    reference_path = write_wav(tmp_path / "ref.wav", tones(frequencies, 16000), sample_rate=16000, subtype="FLOAT")
    path = write_wav(tmp_path / "other.wav", tones(frequencies, source_rate, channels=channels),
                     sample_rate=source_rate, subtype="FLOAT")

    audio = read_audio(path, 16000)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(audio.size - 16000) <= 1  # 1.0 s at the target rate

    reference = extractor.file_to_feature(reference_path)
    feature = extractor.file_to_feature(path)
    below_4k = mel_band_centres(extractor.params) < 3500  # 8 kHz audio holds nothing above 4 kHz
    with_energy = reference > reference.max() - 60
    compared = below_4k[:, None] & with_energy
    assert compared.sum() > 300
    assert np.abs(feature - reference)[compared].max() < 0.5  # dB
    # The tone bands themselves agree to a small fraction of a dB.
    strong = below_4k[:, None] & (reference > reference.max() - 20)
    assert np.abs(feature - reference)[strong].max() < 0.05


def test_stereo_is_downmixed_to_the_channel_mean(tmp_path, extractor):
    left = make_signal("tone", frequency=500.0, duration=0.7)
    right = make_signal("noise", amplitude=0.3, duration=0.7, seed=4)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), subtype="FLOAT")

    audio = read_audio(path, 16000)

    np.testing.assert_allclose(audio, (left + right) / 2, atol=1e-6)
    np.testing.assert_allclose(extractor.file_to_feature(path),
                               extractor.waveform_to_feature((left + right) / 2), atol=1e-3)


@pytest.mark.parametrize("subtype, sample_tolerance, db_tolerance",
                         [("PCM_U8", 1 / 128, 3.0), ("PCM_24", 2 ** -15, 0.02), ("FLOAT", 2 ** -15, 0.02)])
def test_sample_formats_give_the_features_of_pcm16(tmp_path, extractor, subtype, sample_tolerance, db_tolerance):
    signal = make_signal("tone+noise", frequency=1000.0, duration=1.0, seed=3)
    reference_path = write_wav(tmp_path / "pcm16.wav", signal, subtype="PCM_16")
    path = write_wav(tmp_path / "other.wav", signal, subtype=subtype)

    audio = read_audio(path, 16000)
    np.testing.assert_allclose(audio, read_audio(reference_path, 16000), atol=sample_tolerance)

    reference = extractor.file_to_feature(reference_path)
    with_energy = reference > reference.max() - 30  # the tone's bands; elsewhere 8-bit noise dominates
    assert with_energy.sum() >= 2 * extractor.params.n_frames
    assert np.abs(extractor.file_to_feature(path) - reference)[with_energy].max() < db_tolerance


def test_reading_only_the_needed_prefix_equals_reading_the_whole_file(tmp_path, extractor):
    signal = make_signal("tone+noise", sample_rate=44100, frequency=800.0, duration=3.0, channels=2, seed=5)
    path = write_wav(tmp_path / "long.wav", signal, sample_rate=44100)
    n_samples = extractor.params.n_samples

    whole = read_audio(path, 16000)
    prefix = read_audio(path, 16000, max_samples=n_samples)

    assert whole.size == 48000 and prefix.size == n_samples
    np.testing.assert_allclose(prefix, whole[:n_samples], atol=1e-5)
    from_prefix = extractor.file_to_feature(path)
    from_whole = extractor.waveform_to_feature(whole)  # truncates to n_samples itself
    assert from_whole.min() > FLOOR_DB + 20  # noise puts energy in every band
    np.testing.assert_allclose(from_prefix, from_whole, atol=1e-3)


# ---------------------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------------------

def test_fit_length_repeats_zero_pads_or_truncates():
    audio = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(fit_length(audio, 7, "repeat"), [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(fit_length(audio, 5, "zeros"), [1, 2, 3, 0, 0])
    np.testing.assert_array_equal(fit_length(audio, 2, "repeat"), [1, 2])
    np.testing.assert_array_equal(fit_length(audio, 2, "zeros"), [1, 2])


def test_short_clip_repeat_padding_has_no_silent_frames_zero_padding_has_a_silent_tail():
    short = make_signal("noise", duration=0.1, seed=7)  # 1600 samples = 10 hops, frames need 0.5 s
    repeat = FeatureExtractor(FeatureParams(n_mels=64, n_frames=50, pad_mode="repeat")).waveform_to_feature(short)
    zeros = FeatureExtractor(FeatureParams(n_mels=64, n_frames=50, pad_mode="zeros")).waveform_to_feature(short)

    # repeat: no column at the -100 dB floor, and the clip's frames recur with its 10-hop period.
    assert repeat.min(axis=0).min() > FLOOR_DB + 50
    np.testing.assert_allclose(repeat[:, 2:39], repeat[:, 12:49], atol=1e-3)
    # zeros: frames whose 400-sample window ends before sample 1600 (t <= 8) are the clip's own;
    # once the window starts past sample 1600 (t >= 12) every band is the floor.
    assert zeros[:, :10].min() > FLOOR_DB + 50
    np.testing.assert_allclose(zeros[:, :9], repeat[:, :9], atol=1e-3)
    assert (zeros[:, 12:] == np.float32(FLOOR_DB)).all()


# ---------------------------------------------------------------------------------------
# Streaming reads
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("source_rate", [44100, 16000])
def test_iter_audio_blocks_concatenate_to_read_audio(tmp_path, source_rate):
    signal = make_signal("tone+noise", sample_rate=source_rate, duration=2.3, channels=2, seed=9)
    path = write_wav(tmp_path / "long.wav", signal, sample_rate=source_rate, subtype="FLOAT")

    blocks = list(iter_audio_blocks(path, 16000, block_seconds=0.5))

    assert len(blocks) >= 4
    assert all(block.ndim == 1 and block.dtype == np.float32 for block in blocks)
    assert max(block.size for block in blocks) <= 0.5 * 16000 + 200  # memory bounded by the block
    np.testing.assert_allclose(np.concatenate(blocks), read_audio(path, 16000), atol=1e-5)


# ---------------------------------------------------------------------------------------
# Unreadable files
# ---------------------------------------------------------------------------------------

def _write_unusable(path: Path, kind: str) -> None:
    """Leave at ``path`` a file that cannot be used: missing, empty, text, truncated."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("slice_file_name,classID\nnot audio,0\n")
    elif kind in ("cut_in_data", "cut_in_header"):
        write_wav(path, duration=1.0)  # 44-byte header + 32000 bytes of audio
        path.write_bytes(path.read_bytes()[:20000 if kind == "cut_in_data" else 30])


@pytest.mark.parametrize("kind, reason", [
    ("missing", "missing: file not found"),
    ("empty", "empty: file has 0 bytes"),
    ("text", "unreadable: not a supported audio file"),
    ("cut_in_data", "truncated: header declares 32000 bytes of audio, file holds 19956"),
    ("cut_in_header", "truncated: WAV file has no data chunk"),
])
def test_unusable_files_raise_audio_read_error_with_the_reason(tmp_path, extractor, kind, reason):
    path = tmp_path / "clip.wav"
    _write_unusable(path, kind)
    with pytest.raises(AudioReadError, match=reason):
        extractor.file_to_feature(path)
    with pytest.raises(AudioReadError, match=reason):
        list(iter_audio_blocks(path, 16000))


@pytest.mark.parametrize("value, reason", [(np.nan, "audio contains NaN or infinite samples"),
                                           (1e20, r"samples up to 1e\+20, beyond 1e\+06 \(float audio lies in")])
def test_non_finite_or_absurd_samples_are_reported_as_corrupt(tmp_path, extractor, value, reason):
    signal = make_signal("tone", duration=0.3)
    signal[100] = value  # 1e20 is finite, but its power overflows the log-mel into NaN probabilities
    path = write_wav(tmp_path / "bad.wav", signal, subtype="FLOAT")
    with pytest.raises(AudioReadError, match="corrupt: " + reason):
        extractor.file_to_feature(path)
    with pytest.raises(AudioReadError, match="corrupt: " + reason):
        list(iter_audio_blocks(path, 16000))


def test_streamed_wav_with_placeholder_data_size_is_accepted(tmp_path):
    path = write_wav(tmp_path / "stream.wav", duration=0.5)
    data = bytearray(path.read_bytes())
    data_chunk = data.index(b"data")
    data[data_chunk + 4: data_chunk + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    assert read_audio(path, 16000).size == 8000


# ---------------------------------------------------------------------------------------
# Parameter validation
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, flag", [("window_ms", "--window_size"), ("hop_ms", "--hop_size"),
                                        ("max_seconds", "--max_seconds")])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_infinite_or_nan_durations_raise_value_error_naming_the_flag(name, flag, value):
    """An infinite duration (JSON5's Infinity in a features block, or --max_seconds inf) would
    otherwise overflow deep in the frame arithmetic."""
    params = FeatureParams(**{name: value})
    with pytest.raises(ValueError, match=f"{flag} must be a positive finite number, got {value}"):
        params.validate()


@pytest.mark.parametrize("name, flag", [("sample_rate", "--samplerate"), ("window_ms", "--window_size"),
                                        ("hop_ms", "--hop_size"), ("n_fft", "--n_fft"), ("n_mels", "--n_mels"),
                                        ("n_frames", "--n_frames")])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_sizes_raise_value_error_naming_the_flag(name, flag, value):
    params = FeatureParams(**{name: value})
    with pytest.raises(ValueError, match=f"{flag} must be positive, got {value}"):
        params.validate()
    with pytest.raises(ValueError, match=flag):
        FeatureExtractor(params)


def test_n_fft_smaller_than_the_window_names_n_fft_and_the_window():
    with pytest.raises(ValueError) as error:
        FeatureParams(n_fft=256).validate()
    assert ("--n_fft 256 is smaller than the window (--window_size 25 ms = 400 samples at --samplerate 16000 Hz); "
            "use --n_fft 400 or more, or a shorter --window_size") in str(error.value)
    FeatureParams(n_fft=400).validate()  # equal is fine


@pytest.mark.parametrize("changes, message", [
    # a window given in seconds, read as milliseconds: under one sample
    ({"window_ms": 0.025}, "--window_size 0.025 ms / --hop_size 10 ms give 0 / 160 samples at --samplerate 16000 Hz; "
                           "both must be at least 1 sample (the sizes are milliseconds, e.g. --window_size 25 "
                           "--hop_size 10)"),
    ({"hop_ms": 0.01}, "--window_size 25 ms / --hop_size 0.01 ms give 400 / 0 samples"),
    ({"n_mels": 600, "n_fft": 1024}, "--n_mels 600 exceeds the 513 FFT bins of --n_fft 1024; lower --n_mels or "
                                     "raise --n_fft"),
    ({"f_max": 9000.0}, "mel bands reach f_max 9000 Hz, above half of --samplerate 16000 Hz; use --samplerate "
                        "18000 or more"),
    ({"pad_mode": "reflect"}, "--pad_mode must be one of repeat, zeros, got 'reflect'"),
    ({"frontend": "vggish"}, "--frontend must be one of default, yamnet, got 'vggish'"),
])
def test_other_inconsistent_parameters_name_the_flags_a_user_can_change(changes, message):
    """The messages name preprocessingBabyCrying.py's flags (and their units), never the internal field names."""
    with pytest.raises(ValueError) as error:
        FeatureParams(**changes).validate()
    assert message in str(error.value)
    assert not any(field in str(error.value) for field in ("window_ms", "hop_ms", "sample_rate"))


def test_params_round_trip_through_a_dict():
    params = FeatureParams(n_mels=40, pad_mode="zeros", f_max=7000.0)
    assert FeatureParams.from_dict({**params.to_dict(), "unknown_future_key": 1}) == params


# ---------------------------------------------------------------------------------------
# The yamnet front end (YAMNet's features; the golden comparison with TensorFlow is in test_yamnet.py)
# ---------------------------------------------------------------------------------------

def test_yamnet_preset_is_yamnets_parameters():
    """16 kHz, 25 ms / 10 ms, FFT 512, 64 mels over 125-7500 Hz, one 96-frame patch of 15600 samples."""
    params = FeatureParams.preset("yamnet").validate()
    assert (params.sample_rate, params.win_length, params.hop_length, params.n_fft) == (16000, 400, 160, 512)
    assert (params.n_mels, params.f_min, params.f_max, params.n_frames) == (64, 125.0, 7500.0, 96)
    assert not params.centered and params.n_samples == 95 * 160 + 400
    assert FeatureParams.preset("yamnet", n_frames=480).n_frames == 480
    with pytest.raises(ValueError, match="unknown front end 'vggish'"):
        FeatureParams.preset("vggish")


def test_yamnet_log_mel_is_ln_of_magnitude_mel_of_uncentred_frames():
    """Independent float64 numpy version: frame t covers samples [160 t, 160 t + 400), |rfft|, ln(mel + 0.001)."""
    from audioclf.frontend import tf_mel_matrix

    params = FeatureParams.preset("yamnet")
    # Noise fills every band: in a near-empty band float32 rounding of the tones' leakage dominates.
    audio = tones((440.0, 3000.0), 16000, duration=1.0) + make_signal("noise", amplitude=0.05, seed=3)
    feature = FeatureExtractor(params).waveform_to_feature(audio)  # (64, 96)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    frames = np.stack([audio[160 * t:160 * t + 400].astype(np.float64) * window for t in range(96)])
    magnitude = np.abs(np.fft.rfft(frames, n=512, axis=1))  # (96, 257)
    expected = np.log(magnitude @ tf_mel_matrix(64, 512, 16000, 125.0, 7500.0).astype(np.float64) + 0.001)
    np.testing.assert_allclose(feature, expected.T, atol=1e-4)
    assert feature.min() >= np.log(0.001) - 1e-6  # the stabilised log's floor


def test_new_fields_are_recorded_only_when_set():
    """frontend is written for yamnet features and left out for default ones (old feature configs still match)."""
    assert "frontend" not in FeatureParams().to_dict()
    recorded = FeatureParams.preset("yamnet").to_dict()
    assert recorded["frontend"] == "yamnet" and FeatureParams.from_dict(recorded) == FeatureParams.preset("yamnet")
    assert FeatureParams.from_dict({k: v for k, v in FeatureParams().to_dict().items()}) == FeatureParams()


def test_preset_differences_name_each_parameter_but_not_clip_length():
    """What a pretrained model's check reports: every differing parameter, except n_frames and pad_mode."""
    assert FeatureParams.preset("yamnet", n_frames=480, pad_mode="zeros").preset_differences("yamnet") == []
    differences = FeatureParams(n_mels=64).preset_differences("yamnet")
    assert "n_mels" not in " ".join(differences)
    assert "n_fft 1024 (preset: 512)" in differences and "frontend 'default' (preset: 'yamnet')" in differences


def test_default_params_dict_is_unchanged_and_whole_clip_params_round_trip():
    # Features and checkpoints made before whole clips existed compare equal to today's defaults.
    assert "max_seconds" not in FeatureParams().to_dict()
    assert FeatureParams().max_frames == 250 and not FeatureParams().whole_clips
    whole = FeatureParams(max_seconds=10.0)
    assert whole.to_dict()["max_seconds"] == 10.0 and FeatureParams.from_dict(whole.to_dict()) == whole
    assert whole.whole_clips and whole.max_frames == 1000  # 10 s of 10-ms frames
    assert FeatureParams(max_seconds=0.5).max_frames == 250  # never fewer than n_frames
    with pytest.raises(ValueError, match="max_seconds must be positive"):
        FeatureParams(max_seconds=0.0).validate()


# ---------------------------------------------------------------------------------------
# The log-mel of a whole recording, in blocks
# ---------------------------------------------------------------------------------------

def padded_recording(audio: np.ndarray, params: FeatureParams, n_frames: int) -> np.ndarray:
    """The documented padding: with pad_mode to the samples n_frames frames read (never shorter)."""
    return fit_length(audio, max(audio.size, params.samples_for(n_frames)), params.pad_mode)


@pytest.mark.parametrize("n_samples, n_frames", [
    (100, 50), (8000, 50),       # shorter than n_samples (8161): padded to one clip
    (8159, 75), (8161, 75),      # 51 frames centred inside: rounded up to 50 + one half window
    (12000, 75), (33333, 225),   # 75 and 209 frames inside -> 75 and 225
])
@pytest.mark.parametrize("pad_mode", ["repeat", "zeros"])
def test_recording_log_mel_in_blocks_equals_the_one_piece_transform(small_params, n_samples, n_frames, pad_mode):
    params = dataclasses.replace(small_params, pad_mode=pad_mode)  # 50 frames, grid of 25
    extractor = FeatureExtractor(params)
    audio = make_signal("tone+noise", duration=n_samples / 16000, seed=n_samples)
    assert recording_n_frames(n_samples, params) == n_frames
    expected = LogMel(params)(torch.from_numpy(padded_recording(audio, params, n_frames))).numpy()[:, :n_frames]
    rng = np.random.default_rng(n_samples)
    for _ in range(3):  # random block sizes, 1 sample to 0.2 s
        stream, parts, position = LogMelStream(extractor), [], 0
        while position < n_samples:
            size = int(rng.integers(1, 3200))
            parts.append(stream.feed(audio[position:position + size]))
            position += size
        frames = np.concatenate(parts + [stream.finish()], axis=1)
        assert frames.shape == (32, n_frames)
        np.testing.assert_allclose(frames, expected, atol=1e-4)
    # its first n_frames are the fixed-length feature
    np.testing.assert_allclose(frames[:, :50], extractor.waveform_to_feature(audio), atol=1e-4)


def test_yamnet_recordings_get_yamnets_patch_count_at_every_length():
    params = FeatureParams.preset("yamnet")
    lengths = np.arange(1, 200_000, 7)
    patches = [(recording_n_frames(int(n), params) - 96) // 48 + 1 for n in lengths]
    yamnets = 1 + np.maximum(0, np.ceil((lengths - 15600) / 7680)).astype(int)  # its pad_waveform
    np.testing.assert_array_equal(patches, yamnets)


@pytest.mark.parametrize("n_samples, n_frames", [(5000, 96), (15600, 96), (15601, 144), (15759, 144),
                                                 (23280, 144), (23281, 192), (40000, 288)])
def test_yamnet_recording_log_mel_is_yamnets_padding_to_whole_patches(n_samples, n_frames):
    # frames start at their first sample: enough to reach the last one, rounded up to 96 + 48 k, the
    # waveform zero-padded to match: what YAMNet does to cover its last sample with a 0.96-s patch
    # (0.48 s hop), 15600 + 7680 * ceil((n - 15600) / 7680) samples
    params = FeatureParams.preset("yamnet", pad_mode="zeros")
    extractor = FeatureExtractor(params)
    audio = make_signal("tone+noise", duration=n_samples / 16000, seed=n_samples)
    assert recording_n_frames(n_samples, params) == n_frames
    padded = padded_recording(audio, params, n_frames)
    assert padded.size == max(n_samples, 15600 + 7680 * ((n_frames - 96) // 48))
    expected = extractor.logmel(torch.from_numpy(padded)).numpy()
    stream, parts = LogMelStream(extractor), []
    for block in np.array_split(audio, 7):
        parts.append(stream.feed(block))
    frames = np.concatenate(parts + [stream.finish()], axis=1)
    np.testing.assert_allclose(frames, expected[:, :n_frames], atol=1e-5)
    scale = log_scale_for(params)
    assert (scale.kind, scale.floor) == ("log_magnitude", 0.001)
    np.testing.assert_allclose(scale.band_areas, extractor.logmel.mel_matrix.sum(0).numpy(), rtol=1e-6)
    assert 0.9 < min(scale.band_areas) < 1.0 and 8.9 < max(scale.band_areas) < 9.0  # 1 to 9 FFT bins wide


def test_recording_frames_of_a_file_and_a_whole_clip_feature(tmp_path):
    params = FeatureParams(n_fft=512, n_mels=32, n_frames=50, max_seconds=1.0)  # up to 100 frames
    extractor = FeatureExtractor(params)
    short = write_wav(tmp_path / "short.wav", kind="tone+noise", duration=0.3, seed=1)
    middle = write_wav(tmp_path / "middle.wav", kind="tone+noise", duration=0.73, seed=2)
    long = write_wav(tmp_path / "long.wav", kind="tone+noise", sample_rate=44100, duration=2.5, seed=3)
    fixed = FeatureExtractor(FeatureParams(n_fft=512, n_mels=32, n_frames=50))
    np.testing.assert_allclose(extractor.file_to_feature(short), fixed.file_to_feature(short), atol=1e-4)
    assert extractor.file_to_feature(middle).shape == (32, 75)  # 73 frames inside, rounded up to the grid
    whole_file = np.concatenate(list(iter_recording_frames(long, extractor, block_seconds=0.3)), axis=1)
    assert whole_file.shape == (32, 250)
    feature = extractor.file_to_feature(long)  # reads only the first second (+ the FFT's half window)
    assert feature.shape == (32, 100)
    np.testing.assert_allclose(feature, whole_file[:, :100], atol=1e-3)


@pytest.mark.parametrize("scale", [LogScale("db_power", AMIN), LogScale("log_magnitude", 0.001)])
def test_log_scales_convert_to_energy_and_back(scale):
    energy = torch.tensor([0.0, 1e-6, 0.25, 1.0, 4.0, 1e3])
    features = scale.from_energy(energy)
    back = scale.to_energy(features)
    np.testing.assert_allclose(back[1:].numpy(), energy[1:].numpy(), rtol=1e-4)
    assert scale.silence == pytest.approx(float(features[0]))
    if scale.kind == "db_power":
        np.testing.assert_allclose(features[2:].numpy(), 10 * np.log10([0.25, 1.0, 4.0, 1e3]), atol=1e-5)
        assert scale.silence == pytest.approx(FLOOR_DB)
    else:  # ln(magnitude + 0.001), energy = magnitude ** 2
        np.testing.assert_allclose(features[2:].numpy(), np.log(np.sqrt([0.25, 1.0, 4.0, 1e3]) + 0.001), atol=1e-6)
        assert scale.silence == pytest.approx(np.log(0.001))
    assert log_scale_for(FeatureParams()) == LogScale("db_power", AMIN)
