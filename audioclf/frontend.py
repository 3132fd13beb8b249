"""The feature front end: audio file -> log-mel spectrogram, shared by every script.

Preprocessing, training-time checks and inference all call the functions here with the
parameters stored beside the features (``feature_config.json``) and in every checkpoint,
so the features a model sees at serving time are computed exactly as in training.

Formula of the default front end (documented in the README too)::

    x        = mono(audio)                     # mean over channels, float32 in [-1, 1]
    x        = resample(x, sample_rate)        # soxr, "HQ" quality
    x        = fit(x, n_samples(n_frames))     # repeat (default) or zero-pad / truncate
    mel      = MelSpectrogram(x)               # power 2, Hann window, center=True, HTK mel
    log_mel  = 10 * log10(max(mel, 1e-10))     # dB, floor at -100 dB

With ``center=True`` a signal of ``n`` samples gives ``1 + n // hop_length`` frames; the
front end keeps exactly ``n_frames`` of them, shape ``(n_mels, n_frames)``, float32.

The ``yamnet`` front end (``frontend="yamnet"``, preset ``FeatureParams.preset("yamnet")``) is
the one Google's YAMNet was trained with (its ``features.py``): 16 kHz, 25 ms periodic Hann
window, 10 ms hop, FFT 512, **magnitude** spectrogram of frames that are not centred,
TensorFlow's mel matrix (``tf.signal.linear_to_mel_weight_matrix``: 64 bands, 125-7500 Hz) and
``log(mel + 0.001)``. A signal of ``n`` samples gives ``1 + (n - win_length) // hop`` frames.

**The log-mel of a recording** (``FeatureExtractor.recording_frames``, ``LogMelStream``): its frames
are those centred inside the audio (default front end) or enough to reach its last sample (yamnet), at least
``n_frames``, rounded up to ``n_frames`` plus a whole number of half windows (``frame_grid``):
``recording_n_frames(n)``. The recording is padded at its end with ``pad_mode`` (repeated from its
start, or silence) to the samples those frames read, and transformed in one piece, or block by
block for long files with the same result. Rounding up to the grid means that windows of
``n_frames`` every half window always fit whole, as YAMNet pads a waveform to whole patches.
Whole-clip features (``max_seconds`` set), evaluation crops and ``predict.py``'s windows are all
frame ranges of it (``audioclf.windows``), so a clip scores the same in each. Its first
``n_frames`` frames are the fixed-length feature.
"""
from __future__ import annotations

import io
import math
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio
from torch import nn

from audioclf.files import atomic_write
from audioclf.windows import default_hop

AMIN = 1e-10  # power floor before the log: -100 dB
PAD_MODES = ("repeat", "zeros")
# File types read_audio opens (libsndfile through soundfile); folders are searched for these.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                              ".au", ".snd", ".w64", ".caf", ".rf64"})
FRONTENDS = ("default", "yamnet")  # default: torchaudio dB log-mel; yamnet: YAMNet's features
# YAMNet's params.py lives here, its one place (models/yamnet.py imports it): the log offset, the
# patches (0.96 s of 10 ms frames every 0.48 s) and the preset below.
YAMNET_LOG_OFFSET = 0.001  # YAMNet's stabilised log: log(mel + 0.001)
YAMNET_PATCH_FRAMES = 96  # one YAMNet example, 0.96 s
YAMNET_PATCH_HOP_FRAMES = 48  # patches overlap by half: 0.48 s
# The YAMNet preset; n_frames is one YAMNet patch. Every other value is what the AudioSet weights
# were trained with, so a pretrained yamnet checks them.
YAMNET_PRESET = dict(frontend="yamnet", sample_rate=16000, window_ms=25.0, hop_ms=10.0, n_fft=512, n_mels=64,
                     n_frames=YAMNET_PATCH_FRAMES, f_min=125.0, f_max=7500.0)
PRESETS = {"default": {}, "yamnet": YAMNET_PRESET}
# Parameters a preset leaves to the user: clip length, how short clips are filled, whole clips, trimming, level.
FREE_PARAMETERS = ("n_frames", "pad_mode", "max_seconds", "trim_db", "level_db")
# fields newer than the first feature format
_OMITTED_AT_DEFAULT = {"frontend": "default", "max_seconds": None, "trim_db": None, "level_db": None}
DEFAULT_MAX_SECONDS = 10.0  # whole clips: longer ones keep their first 10 s (ESC-50 5 s, UrbanSound8K 4 s fit)
# The preprocessing flag (audioclf.feature_flags defines them) that sets each field on its own, so
# messages name what a user typed: --window_size and --hop_size are the milliseconds of window_ms
# and hop_ms. frontend and max_seconds are flags of their own name; f_min and f_max have none (the
# preset's).
FLAG_OF_FIELD = {"sample_rate": "samplerate", "window_ms": "window_size", "hop_ms": "hop_size", "n_fft": "n_fft",
                 "n_mels": "n_mels", "n_frames": "n_frames", "pad_mode": "pad_mode", "trim_db": "trim_db",
                 "level_db": "level_db"}


def _flag(field: str) -> str:
    """``--window_size`` for ``window_ms``: the command-line flag of a field, for messages."""
    return "--" + FLAG_OF_FIELD.get(field, field)


class AudioReadError(Exception):
    """A clip that cannot be used; the message says why (shown in skipped.txt)."""


@dataclass(frozen=True)
class FeatureParams:
    """Every parameter that defines a feature; travels with features and checkpoints."""

    sample_rate: int = 16000
    window_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 1024
    n_mels: int = 128
    n_frames: int = 250
    f_min: float = 0.0
    f_max: float | None = None
    pad_mode: str = "repeat"
    frontend: str = "default"  # one of FRONTENDS
    # None: the fixed-length feature (the first n_frames). A number: whole clips, each kept up to
    # this many seconds as a variable-length (n_mels, T_i) feature, T_i >= n_frames.
    max_seconds: float | None = None
    # None: clips as recorded. A number: each clip's leading and trailing frames quieter than this
    # many dB below its loudest frame are cut before padding (``trim_silence``).
    trim_db: float | None = None
    # None: clips at their recorded level. A number (dB re full scale, e.g. -25): each clip is scaled
    # so that its active level is this (``normalize_level``), after trimming.
    level_db: float | None = None

    @classmethod
    def preset(cls, name: str, **overrides) -> "FeatureParams":
        """The parameters of preset ``name`` (``FRONTENDS``), with ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown front end {name!r}; choose one of {', '.join(FRONTENDS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def centered(self) -> bool:
        """Whether frames are centred on their sample (default front end) or start at it (yamnet)."""
        return self.frontend != "yamnet"

    @property
    def win_length(self) -> int:
        """Window length in samples at the target rate."""
        return int(round(self.sample_rate * self.window_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        """Hop length in samples at the target rate."""
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def frame_context(self) -> int:
        """Samples a recording is reflected by at each end before framing: ``n_fft // 2`` (torch.stft's
        ``center``), 0 for yamnet (``PaddedRecording``)."""
        return self.n_fft // 2 if self.centered else 0

    @property
    def frame_length(self) -> int:
        """Samples one frame reads from that padded signal: ``n_fft``, or ``win_length`` for yamnet."""
        return self.n_fft if self.centered else self.win_length

    def signal_samples(self, n_frames: int) -> int:
        """Samples of that padded signal ``n_frames`` frames read: ``(n_frames - 1) * hop + frame_length``."""
        return (n_frames - 1) * self.hop_length + self.frame_length

    @property
    def n_samples(self) -> int:
        """Samples needed for exactly ``n_frames`` frames (``samples_for``)."""
        return self.samples_for(self.n_frames)

    def samples_for(self, n_frames: int) -> int:
        """Samples needed for ``n_frames`` frames.

        Centred frames: the last frame's centre + n_fft/2 + 1; frames that start at their first
        sample (yamnet): the last frame's start + one window.
        """
        if not self.centered:
            return (n_frames - 1) * self.hop_length + self.win_length
        return (n_frames - 1) * self.hop_length + self.n_fft // 2 + 1

    @property
    def whole_clips(self) -> bool:
        """Features keep each clip whole (variable length) rather than its first ``n_frames``."""
        return self.max_seconds is not None

    @property
    def frame_grid(self) -> int:
        """A recording's frames are ``n_frames`` plus a multiple of this: half a window (the default hop)."""
        return default_hop(self.n_frames)

    @property
    def max_frames(self) -> int:
        """Most frames a feature holds: ``n_frames``, or for whole clips the frames of ``max_seconds``
        of audio (rounded up to the frame grid)."""
        if self.max_seconds is None:
            return self.n_frames
        return recording_n_frames(round(self.max_seconds * self.sample_rate), self)

    @property
    def kept_samples(self) -> int:
        """Samples of a clip (after trimming) that its feature is made from: ``n_samples``, or for whole
        clips all that a clip of ``max_frames`` whole frames can have (one more would give it another
        frame; yamnet counts that frame as soon as it reaches a sample, then cuts the feature at
        ``max_frames``, so its last ``hop_length - 1`` kept samples are read by no frame)."""
        if self.max_seconds is None:
            return self.n_samples
        return self.samples_for(self.max_frames + 1) - 1

    @property
    def read_samples(self) -> int | None:
        """Samples read from a file for its feature: ``kept_samples``, or None (all of it) when clips
        are trimmed, as their silence is cut first."""
        return None if self.trim_db is not None else self.kept_samples

    @property
    def clip_seconds(self) -> float:
        """Duration covered by one feature, ``n_frames * hop``, in seconds."""
        return self.n_frames * self.hop_length / self.sample_rate

    def validate(self) -> "FeatureParams":
        """Raise ValueError naming every inconsistent parameter; return self when valid."""
        # The messages name the preprocessing flags (FLAG_OF_FIELD), the fields' names are internal.
        problems = []
        for name in ("sample_rate", "window_ms", "hop_ms", "n_fft", "n_mels", "n_frames"):
            if not math.isfinite(getattr(self, name)):  # inf or nan would overflow in the sample counts
                problems.append(f"{_flag(name)} must be a positive finite number, got {getattr(self, name)}")
            elif not getattr(self, name) > 0:
                problems.append(f"{_flag(name)} must be positive, got {getattr(self, name)}")
        if not problems:
            window = f"--window_size {self.window_ms:g} ms"
            rate = f"--samplerate {self.sample_rate} Hz"
            if self.win_length < 1 or self.hop_length < 1:
                problems.append(
                    f"{window} / --hop_size {self.hop_ms:g} ms give {self.win_length} / {self.hop_length} "
                    f"samples at {rate}; both must be at least 1 sample (the sizes are milliseconds, "
                    "e.g. --window_size 25 --hop_size 10)")
            elif self.n_fft < self.win_length:
                problems.append(
                    f"--n_fft {self.n_fft} is smaller than the window ({window} = {self.win_length} samples "
                    f"at {rate}); use --n_fft {self.win_length} or more, or a shorter --window_size")
            nyquist = self.sample_rate / 2
            if self.f_max is not None and self.f_max > nyquist:
                problems.append(
                    f"the {self.frontend} front end's mel bands reach f_max {self.f_max:g} Hz, above half of "
                    f"{rate}; use --samplerate {math.ceil(2 * self.f_max)} or more")
            elif self.f_max is not None and not self.f_min < self.f_max:
                problems.append(f"f_max {self.f_max:g} Hz must lie above f_min {self.f_min:g} Hz")
            if self.n_mels > self.n_fft // 2 + 1:
                problems.append(
                    f"--n_mels {self.n_mels} exceeds the {self.n_fft // 2 + 1} FFT bins of --n_fft "
                    f"{self.n_fft}; lower --n_mels or raise --n_fft")
        if self.pad_mode not in PAD_MODES:
            problems.append(f"--pad_mode must be one of {', '.join(PAD_MODES)}, got {self.pad_mode!r}")
        if self.frontend not in FRONTENDS:
            problems.append(f"--frontend must be one of {', '.join(FRONTENDS)}, got {self.frontend!r}")
        if self.max_seconds is not None and not math.isfinite(self.max_seconds):
            problems.append(f"--max_seconds must be a positive finite number, got {self.max_seconds}")
        elif self.max_seconds is not None and not self.max_seconds > 0:
            problems.append(f"--max_seconds must be positive, got {self.max_seconds}")
        if self.trim_db is not None and not (math.isfinite(self.trim_db) and self.trim_db > 0):
            problems.append(f"--trim_db must be a positive number of dB (e.g. 40), got {self.trim_db}")
        if self.level_db is not None and not (math.isfinite(self.level_db) and self.level_db <= 0):
            problems.append(
                f"--level_db must be a level in dB re full scale, 0 or below (e.g. -25), got {self.level_db}")
        if problems:
            raise ValueError("invalid feature parameters:\n  " + "\n  ".join(problems))
        return self

    def differences(self, other: "FeatureParams", ignore: tuple[str, ...] = ()) -> list[str]:
        """Names of the fields (other than ``ignore``) whose values differ from ``other``'s."""
        return [f.name for f in fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)]

    def to_dict(self) -> dict:
        """Plain dict for JSON and checkpoints; fields added later are left out at their default value,
        so features and checkpoints made before them keep comparing equal."""
        values = asdict(self)
        for name, default in _OMITTED_AT_DEFAULT.items():
            if values[name] == default:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureParams":
        """Rebuild from ``to_dict`` output, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def preset_differences(self, name: str) -> list[str]:
        """``["n_mels 128 (preset: 64)", ...]``: where these parameters leave preset ``name``.

        ``FREE_PARAMETERS`` (clip length, padding, trimming) may differ; an empty list means a match.
        """
        expected = FeatureParams.preset(name)
        return [f"{item.name} {getattr(self, item.name)!r} (preset: {getattr(expected, item.name)!r})"
                for item in fields(self)
                if item.name not in FREE_PARAMETERS and getattr(self, item.name) != getattr(expected, item.name)]


class LogMel(nn.Module):
    """Waveform ``(..., n_samples)`` -> log-mel ``(..., n_mels, frames)`` in dB.

    Same as torchaudio's ``MelSpectrogram(power=2)`` + dB, but the power is taken as
    ``re**2 + im**2`` of the complex STFT, which skips the square root of ``abs()`` (about a
    third of the transform's time on one thread; values agree to float rounding).
    """

    def __init__(self, params: FeatureParams, center: bool = True):
        super().__init__()
        # center=False: frames start at sample 0 (LogMelStream adds the reflect padding itself).
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=params.n_fft, win_length=params.win_length, hop_length=params.hop_length,
            power=None, center=center, pad_mode="reflect")
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=params.n_mels, sample_rate=params.sample_rate, f_min=params.f_min, f_max=params.f_max,
            n_stft=params.n_fft // 2 + 1, mel_scale="htk")

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        stft = self.spectrogram(waveform)  # (..., n_fft // 2 + 1, frames), complex
        power = stft.real.square() + stft.imag.square()
        return 10.0 * torch.log10(torch.clamp(self.mel_scale(power), min=AMIN))


def hertz_to_mel_tf(frequencies: np.ndarray) -> np.ndarray:
    """TensorFlow's (HTK) mel scale: ``1127 * ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(frequencies / 700.0)


def tf_mel_matrix(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """``tf.signal.linear_to_mel_weight_matrix`` as numpy float32 ``(n_fft // 2 + 1, n_mels)``.

    Triangles are evaluated at each FFT bin's centre on the mel scale (torchaudio interpolates in
    Hz instead), they peak at 1 (no area normalisation), and the DC bin is always 0. Computed in
    float32 like TensorFlow, so the matrix matches it to float rounding.
    """
    n_bins = n_fft // 2 + 1
    bin_hz = np.linspace(0.0, sample_rate / 2.0, n_bins, dtype=np.float32)[1:]  # DC excluded (HTK)
    bin_mel = hertz_to_mel_tf(bin_hz)[:, None]  # (n_bins - 1, 1)
    edges = np.linspace(hertz_to_mel_tf(np.float32(f_min)), hertz_to_mel_tf(np.float32(f_max)), n_mels + 2,
                        dtype=np.float32)
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]  # (1, n_mels) each
    rising = (bin_mel - lower) / (center - lower)
    falling = (upper - bin_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    return np.concatenate([np.zeros((1, n_mels), dtype=np.float32), weights])  # (n_bins, n_mels)


def yamnet_mel_matrix(params: FeatureParams) -> np.ndarray:
    """TensorFlow's mel matrix ``(n_fft // 2 + 1, n_mels)`` for ``params`` of the yamnet front end."""
    f_max = params.f_max if params.f_max is not None else params.sample_rate / 2
    return tf_mel_matrix(params.n_mels, params.n_fft, params.sample_rate, params.f_min, f_max)


class YamnetLogMel(nn.Module):
    """Waveform ``(..., n_samples)`` -> YAMNet's log-mel ``(..., n_mels, frames)``.

    Frames of ``win_length`` samples every ``hop_length`` that start at their first sample (no
    centring, no padding), periodic Hann window, ``|rfft(frame, n_fft)|``, TensorFlow's mel
    matrix, ``log(mel + 0.001)``: YAMNet's ``features.py`` step by step.
    """

    def __init__(self, params: FeatureParams):
        super().__init__()
        self.win_length, self.hop_length, self.n_fft = params.win_length, params.hop_length, params.n_fft
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)
        self.register_buffer("mel_matrix", torch.from_numpy(yamnet_mel_matrix(params)),
                             persistent=False)  # (n_fft // 2 + 1, n_mels)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        frames = waveform.unfold(-1, self.win_length, self.hop_length)  # (..., frames, win_length)
        magnitude = torch.fft.rfft(frames * self.window, n=self.n_fft).abs()  # (..., frames, n_fft // 2 + 1)
        log_mel = torch.log(magnitude @ self.mel_matrix + YAMNET_LOG_OFFSET)  # (..., frames, n_mels)
        return log_mel.transpose(-1, -2)  # (..., n_mels, frames)


def make_logmel(params: FeatureParams) -> nn.Module:
    """The log-mel module of ``params.frontend``."""
    return YamnetLogMel(params) if params.frontend == "yamnet" else LogMel(params)


def n_frames_for(n_samples: int, hop_length: int) -> int:
    """Frames produced from ``n_samples`` with ``center=True``: ``1 + n_samples // hop``."""
    return 1 + n_samples // hop_length


def recording_n_frames(n_samples: int, params: FeatureParams) -> int:
    """Frames of a recording of ``n_samples``: those centred inside it (default front end), or, for
    yamnet's frames that start at their first sample, enough to reach its last sample; at least
    ``n_frames``, and rounded up to ``n_frames`` plus a whole number of ``frame_grid`` frames. For
    yamnet that is YAMNet's own count: it pads a waveform with zeros until its last 0.96-s patch
    (every 0.48 s) covers the last sample."""
    if params.centered:
        inside = math.ceil(n_samples / params.hop_length)
    else:
        inside = 1 + max(0, math.ceil((n_samples - params.win_length) / params.hop_length))
    grid = params.frame_grid
    return params.n_frames + grid * max(0, math.ceil((inside - params.n_frames) / grid))


def padding_reach(params: FeatureParams) -> int:
    """Most samples ``end_padding`` adds to a recording at least ``n_samples`` long (a grid of hops
    and an FFT window): how many of its first samples a stream keeps for ``repeat`` padding."""
    return (params.frame_grid + 1) * params.hop_length + params.n_fft


def end_padding(n_samples: int, first: np.ndarray, params: FeatureParams) -> np.ndarray:
    """The samples a recording of ``n_samples`` continues with so that its ``recording_n_frames``
    frames are whole: silence (``zeros``) or the recording again from its start (``repeat``, from
    ``first``: its first ``padding_reach`` samples, or all of it when shorter)."""
    extra = max(0, params.samples_for(recording_n_frames(n_samples, params)) - n_samples)
    if params.pad_mode == "zeros":
        return np.zeros(extra, dtype=np.float32)
    return fit_length(np.asarray(first, dtype=np.float32), extra, "repeat")


# ---------------------------------------------------------------------------------------
# The features' log scale (for arithmetic on mel energies, e.g. mixing in a background)
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LogScale:
    """How feature values map to mel energies (power) and back.

    ``db_power``: ``10 * log10(max(power, floor))`` (the default front end, floor ``AMIN``).
    ``log_magnitude``: ``ln(magnitude + floor)`` (YAMNet's front end, floor 0.001); the energy of
    a band is its magnitude squared. Energies add when uncorrelated sounds mix (the phase cross
    term averages to zero), so ``from_energy(to_energy(a) + to_energy(b))`` mixes two features.
    """

    kind: str = "db_power"
    floor: float = AMIN
    band_areas: tuple[float, ...] | None = None  # log_magnitude: each mel filter's area in FFT bins

    def to_energy(self, features: torch.Tensor) -> torch.Tensor:
        """Log-scale features (any shape) -> mel energies (power), same shape."""
        if self.kind == "db_power":
            return torch.pow(10.0, features / 10.0)
        if self.kind == "log_magnitude":
            return torch.clamp(torch.exp(features) - self.floor, min=0.0).square()
        raise ValueError(f"unknown log scale {self.kind!r}; expected 'db_power' or 'log_magnitude'")

    def from_energy(self, energy: torch.Tensor) -> torch.Tensor:
        """Mel energies (power) -> log-scale features, same shape."""
        if self.kind == "db_power":
            return 10.0 * torch.log10(torch.clamp(energy, min=self.floor))
        if self.kind == "log_magnitude":
            return torch.log(torch.sqrt(torch.clamp(energy, min=0.0)) + self.floor)
        raise ValueError(f"unknown log scale {self.kind!r}; expected 'db_power' or 'log_magnitude'")

    def band_power(self, energy: torch.Tensor) -> torch.Tensor:
        """Mel energies ``(..., n_mels, frames)`` -> the bands' powers, what an SNR compares.

        A ``db_power`` band's energy is its power already (at each FFT bin the triangular filters sum
        to one). A ``log_magnitude`` band's energy is its filtered magnitude squared, which grows with
        the square of the filter's area while its power grows with the area: divided by
        ``band_areas`` it is the band's power for a spectrum flat across the band, so a wide high
        band no longer counts several times a narrow low one.
        """
        if self.band_areas is None:
            return energy
        areas = torch.as_tensor(self.band_areas, dtype=energy.dtype, device=energy.device)  # (n_mels,)
        return energy / areas[:, None]

    @property
    def silence(self) -> float:
        """The feature value of a silent band."""
        return float(self.from_energy(torch.zeros(())))


def log_scale_for(params: FeatureParams) -> LogScale:
    """The log scale of features made with ``params``: the one place a new front end's scale is added."""
    if params.frontend == "yamnet":
        areas = yamnet_mel_matrix(params).sum(axis=0)  # (n_mels,)
        return LogScale("log_magnitude", YAMNET_LOG_OFFSET, tuple(float(area) for area in areas))
    return LogScale("db_power", AMIN)


# ---------------------------------------------------------------------------------------
# Reading audio
# ---------------------------------------------------------------------------------------

def check_wav_not_truncated(path: Path) -> None:
    """Raise AudioReadError when a RIFF/WAVE file's data chunk is cut short on disk.

    libsndfile silently reads what is there; a half-copied file should be reported instead.
    Streamed WAVs that declare a placeholder size (0 or 0xFFFFFFFF) are accepted.
    """
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        position = 12
        while position + 8 <= file_size:
            handle.seek(position)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                available = file_size - position - 8
                if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
                    raise AudioReadError(
                        f"truncated: header declares {chunk_size} bytes of audio, "
                        f"file holds {available}")
                return
            position += 8 + chunk_size + (chunk_size & 1)
    raise AudioReadError("truncated: WAV file has no data chunk")


def _open_error(path: Path, error: Exception) -> AudioReadError:
    if not path.exists():
        return AudioReadError("missing: file not found")
    if path.stat().st_size == 0:
        return AudioReadError("empty: file has 0 bytes")
    try:  # a WAV cut inside its header is a half-copied file: say so, not just "unreadable"
        check_wav_not_truncated(path)
    except AudioReadError as truncated:
        return truncated
    return AudioReadError(f"unreadable: not a supported audio file ({error})")


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """soundfile's info for ``path``; AudioReadError with a reason when it cannot be read."""
    path = Path(path)
    try:
        return sf.info(str(path))
    except Exception as error:  # libsndfile raises several types
        raise _open_error(path, error) from None


# ---------------------------------------------------------------------------------------
# Writing audio
# ---------------------------------------------------------------------------------------

def _zero_peak_timestamp(data: bytearray) -> bytearray:
    """Zero the wall-clock timestamp libsndfile writes into a float WAV's PEAK chunk (reproducible bytes)."""
    offset = 12  # after b"RIFF" <size> b"WAVE"
    while offset + 8 <= len(data):
        chunk_id, chunk_size = bytes(data[offset:offset + 4]), int.from_bytes(data[offset + 4:offset + 8], "little")
        if chunk_id == b"PEAK" and chunk_size >= 8:
            data[offset + 12:offset + 16] = bytes(4)  # layout: version (uint32), timestamp (uint32), peaks
            break
        if chunk_id == b"data":
            break
        offset += 8 + chunk_size + (chunk_size % 2)
    return data


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write ``audio`` ``(n,)`` or ``(n, channels)`` as a WAV file, atomically (no fsync).

    ``subtype`` is soundfile's (``PCM_16``, ``PCM_24``, ``PCM_U8``, ``FLOAT``, ...). The same
    samples always give the same bytes: the timestamp of a float WAV's PEAK chunk is zeroed.
    """
    def write(file) -> None:
        buffer = io.BytesIO()
        sf.write(buffer, audio, sample_rate, subtype=subtype, format="WAV")
        file.write(_zero_peak_timestamp(bytearray(buffer.getbuffer())))

    return atomic_write(path, write, durable=False)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """``(n,)`` or ``(n, channels)`` -> float32 ``(n,)``, mean over channels."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return np.ascontiguousarray(audio, dtype=np.float32)


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling with soxr ("HQ"); identity when the rates match."""
    if source_rate == target_rate:
        return audio
    return soxr.resample(audio, source_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _resample_margin(source_rate: int) -> int:
    # soxr's HQ filter reaches a few ms past a sample; read this much extra source audio so the
    # samples we keep match resampling the whole file (float tolerance).
    return int(0.02 * source_rate) + 64


def read_audio(path: str | Path, target_rate: int, max_samples: int | None = None) -> np.ndarray:
    """Read ``path`` as mono float32 at ``target_rate``; at most ``max_samples`` output samples.

    Only the source audio needed for ``max_samples`` (plus the resampler's margin) is read
    and resampled. Raises AudioReadError with a reason for missing, empty, truncated,
    non-audio or non-finite input.
    """
    path = Path(path)
    info = audio_info(path)
    if info.format == "WAV":
        check_wav_not_truncated(path)
    frames = -1
    if max_samples is not None:
        frames = math.ceil(max_samples * info.samplerate / target_rate) + _resample_margin(info.samplerate)
    try:
        audio, source_rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except Exception as error:
        raise _open_error(path, error) from None
    if audio.shape[0] == 0:
        raise AudioReadError("empty: file holds no audio samples")
    check_samples(audio)
    audio = resample(to_mono(audio), source_rate, target_rate)
    return audio[:max_samples] if max_samples is not None else audio


# Float audio lies in [-1, 1]; samples beyond 1e6 (120 dB above full scale) are not audio, and their
# power would overflow float32 in the log-mel (NaN probabilities).
MAX_ABS_SAMPLE = 1e6


def bad_samples(audio: np.ndarray) -> np.ndarray:
    """Boolean mask of samples that are NaN, infinite or beyond ``MAX_ABS_SAMPLE``."""
    return ~(np.abs(audio) <= MAX_ABS_SAMPLE)  # NaN compares False


def check_samples(audio: np.ndarray) -> None:
    """AudioReadError when any sample is NaN, infinite or beyond ``MAX_ABS_SAMPLE``."""
    if bad_samples(audio).any():
        if not np.isfinite(audio).all():
            raise AudioReadError("corrupt: audio contains NaN or infinite samples")
        raise AudioReadError(f"corrupt: samples up to {float(np.abs(audio).max()):.3g}, beyond {MAX_ABS_SAMPLE:g} "
                             "(float audio lies in [-1, 1])")


def iter_audio_blocks(path: str | Path, target_rate: int, block_seconds: float = 60.0
                      ) -> Iterator[np.ndarray]:
    """Yield a long file as consecutive mono float32 blocks at ``target_rate``.

    Memory stays bounded by the block size: the file is read block by block and resampled
    with a streaming soxr resampler, so the concatenation equals resampling the whole file.
    """
    path = Path(path)
    info = audio_info(path)
    if info.format == "WAV":
        check_wav_not_truncated(path)
    block_frames = max(1, int(block_seconds * info.samplerate))
    stream = None
    if info.samplerate != target_rate:
        stream = soxr.ResampleStream(info.samplerate, target_rate, 1, dtype="float32", quality="HQ")
    try:
        blocks = sf.blocks(str(path), blocksize=block_frames, dtype="float32", always_2d=True)
        for block in blocks:
            mono = to_mono(block)
            check_samples(mono)
            if stream is not None:
                mono = stream.resample_chunk(mono, last=False)
            if mono.size:
                yield mono
    except AudioReadError:
        raise
    except Exception as error:
        raise _open_error(path, error) from None
    if stream is not None:
        tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if tail.size:
            yield tail


# ---------------------------------------------------------------------------------------
# Waveform -> feature
# ---------------------------------------------------------------------------------------

FRAME_BLOCK = 1024  # frame_rms squares this many frames at a time (3 MB in float64 for 400-sample frames)
ACTIVE_RANGE_DB = 30.0  # normalize_level: frames within this many dB of the loudest one are the clip's active part


def frame_rms(audio: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """RMS of each frame of ``frame_length`` samples every ``hop_length``, float64 ``(F,)``; a clip
    shorter than one frame is one frame."""
    if audio.shape[-1] < frame_length:
        return np.sqrt(np.mean(np.square(audio, dtype=np.float64), axis=-1, keepdims=True))
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame_length)[::hop_length]  # (F, frame_length)
    # a block of frames at a time: the frames overlap, so squaring them all at once takes 2.5 x 8 bytes a sample
    blocks = (frames[start:start + FRAME_BLOCK] for start in range(0, len(frames), FRAME_BLOCK))
    return np.concatenate([np.sqrt(np.mean(np.square(block, dtype=np.float64), axis=1)) for block in blocks])


def trim_silence(audio: np.ndarray, top_db: float, frame_length: int, hop_length: int) -> np.ndarray:
    """``audio`` without its leading and trailing frames quieter than ``top_db`` below its loudest frame.

    Frames of ``frame_length`` samples every ``hop_length`` (the features' STFT window and hop);
    a frame's level is its RMS. Recordings of the same word differ in the silence around it
    (how soon the recorder starts and stops): cut, it can no longer tell the clip's source, or
    pass for a longer word. A clip shorter than one frame, or silent, is returned whole.
    """
    if audio.shape[-1] < frame_length:
        return audio
    rms = frame_rms(audio, frame_length, hop_length)
    if not rms.max() > 0:
        return audio
    loud = np.flatnonzero(rms > rms.max() * 10.0 ** (-top_db / 20.0))
    end = audio.shape[-1] if loud[-1] == len(rms) - 1 else loud[-1] * hop_length + frame_length  # keeps a loud tail
    return audio[loud[0] * hop_length: end]


def normalize_level(audio: np.ndarray, level_db: float, frame_length: int, hop_length: int) -> np.ndarray:
    """``audio`` scaled so that its active level is ``level_db`` dB re full scale (float32).

    The active level is the RMS over the frames (as in ``trim_silence``) within ``ACTIVE_RANGE_DB``
    of the loudest one, so the silence around a sound does not lower it (as speech's active level,
    ITU-T P.56, leaves out pauses). Recordings of the same sound differ in level by tens of dB
    with the microphone and its distance; scaled, the level no longer tells the source apart. The
    result may exceed full scale (it stays float). A silent clip is returned as it is.
    """
    power = np.square(frame_rms(audio, frame_length, hop_length))
    if not power.max() > 0:
        return audio
    active = power[power >= power.max() * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)]
    gain = 10.0 ** (level_db / 20.0) / np.sqrt(active.mean())
    return (audio * gain).astype(np.float32)


def clip_waveform(audio: np.ndarray, params: FeatureParams) -> np.ndarray:
    """A clip's waveform as its feature is made from it: trimmed (``trim_db``), brought to its level
    (``level_db``), then fitted to ``n_samples``, or for whole clips cut to ``kept_samples``."""
    if params.trim_db is not None:
        audio = trim_silence(audio, params.trim_db, params.win_length, params.hop_length)
    audio = audio[..., : params.kept_samples]  # the level is that of the samples the feature is made from
    if params.level_db is not None:
        audio = normalize_level(audio, params.level_db, params.win_length, params.hop_length)
    return audio if params.whole_clips else fit_length(audio, params.n_samples, params.pad_mode)


def fit_length(audio: np.ndarray, n_samples: int, pad_mode: str = "repeat") -> np.ndarray:
    """Truncate or pad ``audio`` to ``n_samples``: ``repeat`` tiles the clip, ``zeros`` pads silence.

    Repeating (the default) keeps short clips free of a silent tail whose length would
    otherwise tell the model the clip's duration rather than its content.
    """
    if audio.shape[-1] >= n_samples:
        return audio[..., :n_samples]
    if pad_mode == "repeat":
        repeats = math.ceil(n_samples / audio.shape[-1])
        return np.tile(audio, repeats)[..., :n_samples]
    return np.pad(audio, (0, n_samples - audio.shape[-1]))


class FeatureExtractor:
    """Builds the mel transform once, then turns files or waveforms into ``(n_mels, n_frames)``."""

    def __init__(self, params: FeatureParams, device: str | torch.device = "cpu"):
        self.params = params.validate()
        self.device = torch.device(device)
        self.logmel = make_logmel(params).to(self.device)
        # LogMelStream's transform: frames that start at sample 0 (YamnetLogMel's never centre).
        self.frame_logmel = (LogMel(params, center=False) if params.centered else self.logmel).to(self.device)

    @torch.inference_mode()
    def waveforms_to_features(self, waveforms: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(B, n_samples)`` float32 at the target rate -> ``(B, n_mels, n_frames)`` float32."""
        batch = torch.as_tensor(waveforms, dtype=torch.float32).to(self.device)
        features = self.logmel(batch)[..., : self.params.n_frames]  # (B, n_mels, n_frames)
        return features.cpu().numpy()

    def waveform_to_feature(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 waveform at the target rate (any length) -> ``(n_mels, n_frames)``."""
        if audio.size == 0:
            raise AudioReadError("empty: file holds no audio samples")
        fitted = fit_length(audio, self.params.n_samples, self.params.pad_mode)
        return self.waveforms_to_features(fitted[None])[0]

    def file_to_feature(self, path: str | Path) -> np.ndarray:
        """Audio file of any rate/channels/length -> its feature (``clip_feature``), float32."""
        audio = read_audio(path, self.params.sample_rate, max_samples=self.params.read_samples)
        return self.clip_feature(audio)

    def clip_feature(self, audio: np.ndarray) -> np.ndarray:
        """What preprocessing stores for a clip: ``(n_mels, n_frames)``, or for whole clips
        ``(n_mels, T)``, the recording's first ``T <= max_frames`` frames (after ``clip_waveform``)."""
        return self.prepared_clip_feature(clip_waveform(audio, self.params))

    def prepared_clip_feature(self, prepared: np.ndarray) -> np.ndarray:
        """``clip_feature`` of a waveform that ``clip_waveform`` has prepared."""
        if not self.params.whole_clips:
            return self.waveforms_to_features(prepared[None])[0]
        return self.recording_frames(prepared)[:, : self.params.max_frames]

    def recording_frames(self, audio: np.ndarray) -> np.ndarray:
        """The log-mel of a whole recording held in memory: ``(n_mels, recording_n_frames(n))``."""
        stream = LogMelStream(self)
        return np.concatenate([stream.feed(audio), stream.finish()], axis=1)


class PaddedRecording:
    """The samples a recording's frames read, fed in blocks: frame ``t`` of its log-mel reads
    ``frame_length`` samples from sample ``t * hop_length`` of this signal.

    The signal is the recording padded at its end with ``pad_mode`` to the samples its
    ``recording_n_frames`` frames read (a recording shorter than ``n_samples`` as a short clip), then
    reflected by ``n_fft // 2`` samples at both ends (default front end: torch.stft's ``center``;
    yamnet's frames are not centred and nothing is reflected). ``LogMelStream`` computes its frames
    from it, and an exported model's windows are cut from it (``streaming.WaveformWindows``), so both
    see the same samples. Memory holds the recording's first few hops (for ``repeat`` padding).
    """

    def __init__(self, params: FeatureParams):
        self.params = params
        self.half = params.frame_context  # reflect padding on each side
        # The end is padded by at most a grid of hops and an FFT window: the recording's first samples.
        self.first_limit = padding_reach(params)
        self.first = np.zeros(0, dtype=np.float32)
        self.head: list[np.ndarray] = []  # samples held until n_samples have arrived (padding decision)
        self.started = False  # whether the left reflection has been given out
        self.tail = np.zeros(0, dtype=np.float32)  # the last half + 1 samples, for the end's reflection
        self.n_seen = 0

    def _signal(self, samples: np.ndarray) -> np.ndarray:
        self.tail = np.concatenate([self.tail, samples])[-(self.half + 1):]
        if self.started:
            return samples
        self.started = True
        left = samples[1:self.half + 1][::-1]  # reflect: x[half], ..., x[1] (nothing for yamnet)
        return np.concatenate([left, samples]).astype(np.float32, copy=False)

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Add mono float32 samples; returns the signal's next samples, ``(k,)``, k >= 0."""
        block = np.asarray(block, dtype=np.float32)
        self.n_seen += block.size
        if self.first.size < self.first_limit:
            self.first = np.concatenate([self.first, block[:self.first_limit - self.first.size]])
        if not self.started:
            self.head.append(block)
            if self.n_seen < self.params.n_samples:
                return np.zeros(0, dtype=np.float32)
            block, self.head = np.concatenate(self.head), []
        return self._signal(block)

    @property
    def n_frames(self) -> int:
        """Frames of the recording fed so far (``recording_n_frames``)."""
        return recording_n_frames(self.n_seen, self.params)

    def finish(self) -> np.ndarray:
        """The signal's last samples: the end's padding and reflection, ``(k,)``."""
        if self.n_seen == 0:
            raise AudioReadError("empty: file holds no audio samples")
        if not self.started:  # shorter than n_samples: padded like a short clip
            padded_length = max(self.n_seen, self.params.samples_for(self.n_frames))
            padded = self._signal(fit_length(np.concatenate(self.head), padded_length, self.params.pad_mode))
            self.head = []
        else:  # silence, or the recording from its start
            padded = self._signal(end_padding(self.n_seen, self.first, self.params))
        right = self.tail[:-1][::-1][:self.half]  # reflect: x[n - 2], ..., x[n - 1 - half] (nothing for yamnet)
        return np.concatenate([padded, right])


class LogMelStream:
    """The log-mel of one recording fed in blocks of samples: frames as soon as they are complete.

    The frames equal the front end's transform over the whole recording (default front end:
    ``center=True``, reflect padding at both ends; yamnet: frames that start at their first
    sample) after the recording is padded with ``pad_mode`` to the samples its
    ``recording_n_frames`` frames read (a short one to ``n_samples`` at least, as a short clip):
    the frames of ``PaddedRecording``'s signal. Memory holds one block, one FFT window and the
    recording's first few hops (for ``repeat`` padding), so hours of audio stream in bounded memory.
    """

    def __init__(self, extractor: FeatureExtractor):
        self.extractor = extractor
        self.params = extractor.params
        self.logmel = extractor.frame_logmel
        self.signal = PaddedRecording(self.params)
        self.frame_length = self.params.frame_length  # samples one frame reads
        self.buffer = np.zeros(0, dtype=np.float32)  # signal samples from the next frame's first one
        self.n_emitted = 0

    @property
    def n_seen(self) -> int:
        """Samples of the recording fed so far."""
        return self.signal.n_seen

    def _frames(self, padded: np.ndarray, count: int) -> np.ndarray:
        """The first ``count`` frames of ``padded`` (frame ``t`` starts at ``t * hop``): ``(n_mels, count)``."""
        if count <= 0:
            return np.zeros((self.params.n_mels, 0), dtype=np.float32)
        needed = self.params.signal_samples(count)
        with torch.inference_mode():
            waveform = torch.from_numpy(np.ascontiguousarray(padded[:needed])).to(self.extractor.device)
            frames = self.logmel(waveform)[:, :count]  # (n_mels, count)
        return frames.cpu().numpy()

    def _emit_complete(self, limit: int | None = None) -> np.ndarray:
        hop = self.params.hop_length
        count = 0 if self.buffer.size < self.frame_length else 1 + (self.buffer.size - self.frame_length) // hop
        count = count if limit is None else min(count, limit)
        frames = self._frames(self.buffer, count)
        self.buffer = self.buffer[count * hop:]
        self.n_emitted += count
        return frames

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Add mono float32 samples; returns the frames they complete, ``(n_mels, k)``, k >= 0."""
        self.buffer = np.concatenate([self.buffer, self.signal.feed(block)])
        return self._emit_complete()

    def finish(self) -> np.ndarray:
        """The remaining frames (those reaching into the end's padding), ``(n_mels, k)``."""
        self.buffer = np.concatenate([self.buffer, self.signal.finish()])
        frames = self._emit_complete(self.signal.n_frames - self.n_emitted)
        self.buffer = np.zeros(0, dtype=np.float32)
        return frames


def iter_recording_frames(path: str | Path, extractor: FeatureExtractor, block_seconds: float = 10.0
                          ) -> Iterator[np.ndarray]:
    """A file's recording log-mel in blocks of frames ``(n_mels, k)``, read and computed block by block."""
    stream = LogMelStream(extractor)
    for block in iter_audio_blocks(path, extractor.params.sample_rate, block_seconds):
        frames = stream.feed(block)
        if frames.shape[1]:
            yield frames
    yield stream.finish()
