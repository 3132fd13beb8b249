"""Deterministic, download-free demo dataset for a baby-cry detector.

Everything here is synthesised with numpy/scipy from a seed, so the same seed gives byte-identical
files on the same machine. The clips imitate a user's messy folder of WAV files (mixed sample rates,
mono/stereo, 8/16/24-bit and float, one file name with a space) and come with an UrbanSound8K-style
``metadata.csv``. ``make_long_recording`` writes a long background recording with known target
events for testing sliding-window detection.

Usage::

    python -m tools.demo_data --out data/demo [--clips_per_class 40] [--seed 0] \
        [--long_recording data/demo/long.wav --long_duration 120]
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal
from scipy.ndimage import uniform_filter1d

from audioclf.events import REFERENCE_CSV_COLUMNS, Event, write_events_csv
from audioclf.frontend import write_audio

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("babycry", "speech", "dog_bark", "siren", "hum", "noise")

# Format cycles are indexed by the clip's global position; their lengths (4, 3, 7) are pairwise
# coprime so every sample rate meets every channel count and subtype, and no format predicts the class.
SAMPLE_RATE_CYCLE: tuple[int, ...] = (8000, 16000, 22050, 44100)
CHANNEL_CYCLE: tuple[int, ...] = (1, 1, 2)
SUBTYPE_CYCLE: tuple[str, ...] = ("PCM_16", "FLOAT", "PCM_16", "FLOAT", "PCM_24", "PCM_16", "PCM_U8")

METADATA_COLUMNS: tuple[str, ...] = ("slice_file_name", "classID", "start", "end", "fold", "class")
INFO_FILE_NAME = "demo_info.json"
METADATA_FILE_NAME = "metadata.csv"
# Bump when the synthesis changes so cached demo folders are regenerated.
GENERATOR_VERSION = 1
N_FOLDS = 10
CLIP_DURATION_RANGE_S = (0.5, 5.0)
CLIP_PEAK_DBFS_RANGE = (-30.0, -3.0)
# Clip mixing, relative to the class sound's peak: background noise RMS, and an optional fainter sound.
BACKGROUND_LEVEL_DB_RANGE = (-60.0, -20.0)
DISTRACTOR_PROBABILITY = 0.3
DISTRACTOR_LEVEL_DB_RANGE = (-30.0, -12.0)
TARGET_CLASS = "babycry"
SPACED_NAME_CLASS = "speech"
SPACED_NAME_INDEX = 7

LONG_EVENT_DURATION_RANGE_S = (1.5, 4.0)
LONG_EDGE_MARGIN_S = 0.5
LONG_MIN_EVENT_GAP_S = 1.0
LONG_BLOCK_S = 10.0
CONFUSER_CLASSES: tuple[str, ...] = ("hum", "speech", "dog_bark", "siren")
CONFUSERS_PER_SECOND = 1.0 / 15.0

# Paul Kellet's economy pink-noise filter (-3 dB/octave within ~1% over the audio band).
_PINK_B = np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786])
_PINK_A = np.array([1.0, -2.494956002, 2.017265875, -0.522189400])
# Leaky integrator for brown (-6 dB/octave) noise; the leak keeps it from drifting off.
_BROWN_B = np.array([1.0])
_BROWN_A = np.array([1.0, -0.995])
_NOISE_FILTERS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "pink": (_PINK_B, _PINK_A),
    "brown": (_BROWN_B, _BROWN_A),
}

# Adult vowel formants F1-F3 (Hz), roughly after Peterson & Barney.
_VOWEL_FORMANTS_HZ: tuple[tuple[float, float, float], ...] = (
    (730.0, 1090.0, 2440.0),  # a
    (270.0, 2290.0, 3010.0),  # i
    (300.0, 870.0, 2240.0),  # u
    (530.0, 1840.0, 2480.0),  # e
    (570.0, 840.0, 2410.0),  # o
    (660.0, 1720.0, 2410.0),  # ae
    (490.0, 1350.0, 1690.0),  # er
)
_FORMANT_BANDWIDTHS_HZ: tuple[float, float, float] = (80.0, 110.0, 160.0)


# --------------------------------------------------------------------------------------------
# Small signal helpers
# --------------------------------------------------------------------------------------------


def _db_to_amplitude(db: float) -> float:
    """Convert decibels to a linear amplitude factor."""
    return float(10.0 ** (db / 20.0))


def _n_samples(duration_s: float, sample_rate: int) -> int:
    """Number of samples for a duration, as round(duration_s * sample_rate)."""
    return int(round(duration_s * sample_rate))


def _normalize_peak(x: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """Scale x so that max |x| == peak (silence stays silence)."""
    current = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / current) if current > 0.0 else x


def _normalize_rms(x: np.ndarray) -> np.ndarray:
    """Scale x to unit RMS (silence stays silence)."""
    rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    return x / rms if rms > 0.0 else x


def _nyquist_safe(freq_hz: float, sample_rate: int, fraction: float = 0.45) -> float:
    """Clamp a filter frequency to below `fraction` of the sample rate."""
    return float(min(freq_hz, fraction * sample_rate))


@functools.cache
def _noise_filter_gain(kind: str, n_taps: int = 20000) -> float:
    """RMS gain of the pink or brown noise filter for white input (sqrt of impulse-response energy)."""
    b, a = _NOISE_FILTERS[kind]
    impulse = np.zeros(n_taps)
    impulse[0] = 1.0
    return float(np.sqrt(np.sum(signal.lfilter(b, a, impulse) ** 2)))


def _colored_noise(
    kind: str, n_samples: int, rng: np.random.Generator, state: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (unit-RMS white/pink/brown noise, filter state); pass the state back to continue a stream."""
    white = rng.standard_normal(n_samples)
    if kind == "white":
        return white, None
    if kind not in _NOISE_FILTERS:
        raise ValueError(f"unknown noise kind {kind!r}; expected white, pink or brown")
    b, a = _NOISE_FILTERS[kind]
    zi = np.zeros(len(a) - 1) if state is None else state
    colored, zf = signal.lfilter(b, a, white, zi=zi)
    return colored / _noise_filter_gain(kind), zf


def _smooth_contour(n_samples: int, n_knots: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random curve in [-1, 1] through `n_knots` random knots (cosine interpolation)."""
    n_knots = max(2, n_knots)
    knots = rng.uniform(-1.0, 1.0, n_knots)
    position = np.linspace(0.0, n_knots - 1.0, n_samples)
    left = np.minimum(position.astype(np.int64), n_knots - 2)
    weight = 0.5 - 0.5 * np.cos(np.pi * (position - left))
    return knots[left] * (1.0 - weight) + knots[left + 1] * weight


def _attack_release(n_samples: int, sample_rate: int, attack_s: float, release_s: float) -> np.ndarray:
    """Raised-cosine attack and release envelope of n_samples (flat 1 in between)."""
    envelope = np.ones(n_samples)
    n_attack = min(n_samples // 2, max(1, int(attack_s * sample_rate)))
    n_release = min(n_samples - n_attack, max(1, int(release_s * sample_rate)))
    if n_attack > 0:
        envelope[:n_attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(n_attack) / n_attack)
    if n_release > 0:
        envelope[n_samples - n_release :] *= 0.5 + 0.5 * np.cos(
            np.pi * np.arange(1, n_release + 1) / n_release
        )
    return envelope


def _formant_weight(
    freqs_hz: np.ndarray, centers_hz: Sequence[float], gains: Sequence[float], bandwidths_hz: Sequence[float]
) -> np.ndarray:
    """Spectral envelope 1 + sum of Gaussian bumps, evaluated at freqs_hz."""
    weight = np.ones_like(freqs_hz)
    for center, gain, bandwidth in zip(centers_hz, gains, bandwidths_hz):
        weight += gain * np.exp(-0.5 * ((freqs_hz - center) / bandwidth) ** 2)
    return weight


def _harmonic_stack(
    f0_hz: np.ndarray,
    sample_rate: int,
    harmonic_gains: Sequence[float],
    rng: np.random.Generator,
    spectral_weight: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Sum of harmonics k*f0(t) with the given gains; harmonics fade out before Nyquist (no aliasing)."""
    nyquist = sample_rate / 2.0
    phase = np.mod(2.0 * np.pi * np.cumsum(f0_hz) / sample_rate, 2.0 * np.pi)
    fundamental = np.cos(phase) + 1j * np.sin(phase)
    rotor = np.ones_like(
        fundamental
    )  # exp(1j * harmonic * phase) by repeated multiplication: far cheaper than sin
    out = np.zeros_like(f0_hz)
    for harmonic, gain in enumerate(harmonic_gains, start=1):
        rotor *= fundamental
        freqs = harmonic * f0_hz
        alias_guard = np.clip((0.9 * nyquist - freqs) / (0.1 * nyquist), 0.0, 1.0)
        if not alias_guard.any():
            break
        amplitude = gain * alias_guard
        if spectral_weight is not None:
            amplitude = amplitude * spectral_weight(freqs)
        offset = rng.uniform(0.0, 2.0 * np.pi)
        out += amplitude * (
            rotor.imag * np.cos(offset) + rotor.real * np.sin(offset)
        )  # sin(k*phase + offset)
    return out


def _resonator(x: np.ndarray, center_hz: float, bandwidth_hz: float, sample_rate: int) -> np.ndarray:
    """Two-pole resonator (a formant) at center_hz with the given bandwidth."""
    radius = np.exp(-np.pi * bandwidth_hz / sample_rate)
    theta = 2.0 * np.pi * _nyquist_safe(center_hz, sample_rate) / sample_rate
    return signal.lfilter([1.0 - radius], [1.0, -2.0 * radius * np.cos(theta), radius**2], x)


def _bandpass(x: np.ndarray, low_hz: float, high_hz: float, sample_rate: int, order: int = 2) -> np.ndarray:
    """Butterworth band-pass, with edges clamped below Nyquist."""
    high = _nyquist_safe(high_hz, sample_rate)
    low = min(low_hz, 0.5 * high)
    sos = signal.butter(order, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    return signal.sosfilt(sos, x)


def _highpass(x: np.ndarray, cutoff_hz: float, sample_rate: int, order: int = 4) -> np.ndarray:
    """Butterworth high-pass, with the cutoff clamped below Nyquist."""
    sos = signal.butter(
        order, _nyquist_safe(cutoff_hz, sample_rate, 0.4), btype="highpass", fs=sample_rate, output="sos"
    )
    return signal.sosfilt(sos, x)


def _place_non_overlapping(
    durations_s: np.ndarray, start_s: float, end_s: float, min_gap_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Random onsets (in the given order) fitting the intervals in [start_s, end_s], >= min_gap_s apart."""
    n_intervals = len(durations_s)
    if n_intervals == 0:
        return np.zeros(0)
    slack = (end_s - start_s) - float(np.sum(durations_s)) - min_gap_s * (n_intervals - 1)
    if slack < 0.0:
        raise ValueError(
            f"cannot fit {n_intervals} intervals totalling {np.sum(durations_s):.2f} s "
            f"with {min_gap_s} s gaps into [{start_s:.2f}, {end_s:.2f}] s"
        )
    gaps = rng.dirichlet(np.ones(n_intervals + 1))[:n_intervals] * slack
    preceding = np.concatenate([[0.0], np.cumsum(durations_s)[:-1]])
    return start_s + np.cumsum(gaps) + preceding + min_gap_s * np.arange(n_intervals)


# --------------------------------------------------------------------------------------------
# Per-class sources (each returns float64 of n_samples, peak-normalised to 1)
# --------------------------------------------------------------------------------------------


def _cry_bursts(duration_s: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(start_s, end_s) cry bursts from t=0, separated by short inhalation gaps, running to the end."""
    bursts: list[tuple[float, float]] = []
    start = 0.0
    while start < duration_s:
        end = min(start + rng.uniform(0.3, 1.2), duration_s)
        gap = rng.uniform(0.08, 0.35)
        if duration_s - (end + gap) < 0.3:  # too little left for another burst: cry to the end
            end = duration_s
        bursts.append((start, end))
        start = end + gap
    return bursts


def _synth_babycry(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Harmonic cry bursts: f0 300-600 Hz with arcs, vibrato, formant emphasis and breath noise."""
    duration_s = n_samples / sample_rate
    t = np.arange(n_samples) / sample_rate
    burst_envelope = np.zeros(n_samples)
    arc = np.zeros(n_samples)  # relative f0 deviation within each burst (rise-fall melody)
    for start_s, end_s in _cry_bursts(duration_s, rng):
        first, last = int(start_s * sample_rate), min(n_samples, _n_samples(end_s, sample_rate))
        length = last - first
        if length <= 0:
            continue
        burst_envelope[first:last] = rng.uniform(0.6, 1.0) * _attack_release(
            length, sample_rate, rng.uniform(0.02, 0.08), rng.uniform(0.05, 0.2)
        )
        position = np.linspace(0.0, 1.0, length)
        arc[first:last] = (
            rng.uniform(-0.05, 0.2) * np.sin(np.pi * position) - rng.uniform(0.0, 0.12) * position
        )

    f0_base = rng.uniform(300.0, 600.0)
    slow_drift = 0.08 * _smooth_contour(n_samples, int(duration_s * 2) + 2, rng)
    vibrato = rng.uniform(0.01, 0.04) * np.sin(
        2.0 * np.pi * rng.uniform(5.0, 8.0) * t + rng.uniform(0, 2 * np.pi)
    )
    f0 = f0_base * (1.0 + arc + slow_drift + vibrato)

    n_harmonics = int(rng.integers(6, 13))
    harmonic_gains = np.arange(1, n_harmonics + 1, dtype=float) ** -rng.uniform(0.8, 1.6)
    centers = (rng.uniform(1000.0, 1800.0), rng.uniform(2000.0, 3000.0))
    formant_gains = (rng.uniform(0.5, 2.0), rng.uniform(0.2, 1.0))
    bandwidths = (rng.uniform(200.0, 400.0), rng.uniform(250.0, 500.0))
    voiced = _harmonic_stack(
        f0,
        sample_rate,
        harmonic_gains,
        rng,
        lambda freqs: _formant_weight(freqs, centers, formant_gains, bandwidths),
    )
    cry = _normalize_peak(voiced * burst_envelope)
    if rng.random() < 0.3:  # hoarse (dysphonic) cry: turbulent noise riding on the bursts
        hoarse, _ = _colored_noise("white", n_samples, rng)
        hoarse = _normalize_peak(_bandpass(hoarse, 500.0, 4000.0, sample_rate) * burst_envelope)
        cry = cry + rng.uniform(0.1, 0.35) * hoarse

    # Breath noise: faint under the cry, louder during the inhalation gaps.
    gap_indicator = uniform_filter1d((burst_envelope < 0.05).astype(float), max(1, int(0.02 * sample_rate)))
    breath_level = rng.uniform(0.003, 0.015) + rng.uniform(0.01, 0.05) * gap_indicator
    breath, _ = _colored_noise("white", n_samples, rng)
    breath = _highpass(breath, rng.uniform(800.0, 1500.0), sample_rate)
    return _normalize_peak(cry + breath_level * breath)


def _speech_syllables(duration_s: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(start_s, end_s) syllables at 3-6 Hz with occasional pauses."""
    rate_hz = rng.uniform(3.0, 6.0)
    syllables: list[tuple[float, float]] = []
    start = rng.uniform(0.0, 0.15)
    while start < duration_s - 0.05:
        length = rng.uniform(0.6, 1.4) / rate_hz
        syllables.append((start, min(start + length, duration_s)))
        start += length
        if rng.random() < 0.15:
            start += rng.uniform(0.15, 0.6)
    return syllables


def _glottal_source(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Glottal pulse train (f0 90-250 Hz, declination + drift) with -6 dB/octave tilt and aspiration."""
    duration_s = n_samples / sample_rate
    t = np.arange(n_samples) / sample_rate
    f0_base = rng.uniform(90.0, 250.0)
    contour = 0.12 * _smooth_contour(n_samples, int(duration_s * 3) + 2, rng)
    declination = -rng.uniform(0.0, 0.15) * t / max(duration_s, 1e-9)
    f0 = f0_base * (1.0 + contour + declination)
    cycles = np.cumsum(f0) / sample_rate + rng.uniform(0.0, 1.0)
    pulses = (np.diff(np.floor(cycles), prepend=np.floor(cycles[0])) > 0).astype(float)
    pole = np.exp(-2.0 * np.pi * 200.0 / sample_rate)
    glottal = signal.lfilter([1.0], [1.0, -2.0 * pole, pole**2], pulses)  # -12 dB/oct glottal roll-off
    radiated = np.diff(glottal, prepend=0.0)  # +6 dB/oct lip radiation
    aspiration, _ = _colored_noise("white", n_samples, rng)
    return _normalize_rms(radiated) + rng.uniform(0.0, 0.1) * aspiration


def _synth_speech(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like babble: glottal source through moving vowel formants, syllable AM, pauses, fricatives."""
    duration_s = n_samples / sample_rate
    syllables = _speech_syllables(duration_s, rng)
    source = _glottal_source(n_samples, sample_rate, rng)

    speaker_scale = rng.uniform(0.9, 1.25)
    n_vowels = int(rng.integers(3, 6))
    vowel_ids = rng.choice(len(_VOWEL_FORMANTS_HZ), size=n_vowels, replace=False)
    vowel_signals = np.empty((n_vowels, n_samples))  # (V, n_samples)
    for row, vowel_id in enumerate(vowel_ids):
        filtered = source
        for formant_hz, bandwidth_hz in zip(_VOWEL_FORMANTS_HZ[vowel_id], _FORMANT_BANDWIDTHS_HZ):
            filtered = _resonator(filtered, formant_hz * speaker_scale, bandwidth_hz, sample_rate)
        vowel_signals[row] = _normalize_rms(filtered)

    vowel_weights = np.zeros((n_vowels, n_samples))  # (V, n_samples), one-hot per syllable, then cross-faded
    envelope = np.zeros(n_samples)
    fricatives = np.zeros(n_samples)
    for start_s, end_s in syllables:
        first, last = int(start_s * sample_rate), min(n_samples, _n_samples(end_s, sample_rate))
        if last - first < 2:
            continue
        vowel_weights[rng.integers(n_vowels), first:last] = 1.0
        length = last - first
        envelope[first:last] = rng.uniform(0.4, 1.0) * _attack_release(
            length,
            sample_rate,
            length * rng.uniform(0.2, 0.4) / sample_rate,
            length * rng.uniform(0.3, 0.5) / sample_rate,
        )
        if rng.random() < 0.35:
            fricative_len = min(first, int(rng.uniform(0.04, 0.12) * sample_rate))
            if fricative_len > 8:
                burst = rng.standard_normal(fricative_len) * _attack_release(
                    fricative_len, sample_rate, 0.01, 0.02
                )
                fricatives[first - fricative_len : first] += rng.uniform(0.2, 0.6) * burst
    vowel_weights = uniform_filter1d(vowel_weights, max(1, int(0.04 * sample_rate)), axis=1)
    voiced = np.sum(vowel_weights * vowel_signals, axis=0) * envelope
    hiss = _highpass(fricatives, rng.uniform(2500.0, 4500.0), sample_rate)
    return _normalize_peak(voiced + hiss * float(np.std(voiced) + 1e-12) / 0.3)


def _one_bark(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One bark: sharp attack, fast decay, rough harmonic + broadband noise, pitch rise-then-fall."""
    position = np.linspace(0.0, 1.0, n_samples)
    f0_peak = rng.uniform(150.0, 700.0)
    roughness = 0.03 * _smooth_contour(n_samples, 12, rng)
    f0 = f0_peak * (
        1.0 + rng.uniform(0.0, 0.2) * np.sin(np.pi * position) - rng.uniform(0.1, 0.4) * position + roughness
    )
    gains = np.arange(1, 21, dtype=float) ** -rng.uniform(0.4, 1.0)
    center, gain, bandwidth = rng.uniform(500.0, 1500.0), rng.uniform(1.0, 3.0), rng.uniform(300.0, 600.0)
    tonal = _normalize_rms(
        _harmonic_stack(
            f0,
            sample_rate,
            gains,
            rng,
            lambda freqs: _formant_weight(freqs, (center,), (gain,), (bandwidth,)),
        )
    )
    noise, _ = _colored_noise("white", n_samples, rng)
    noisy = _normalize_rms(_bandpass(noise, 200.0, 4000.0, sample_rate))
    noise_fraction = rng.uniform(0.2, 0.6)
    decay_tau_s = (n_samples / sample_rate) / rng.uniform(2.0, 4.0)
    envelope = np.exp(-np.arange(n_samples) / sample_rate / decay_tau_s) * _attack_release(
        n_samples, sample_rate, rng.uniform(0.002, 0.01), 0.01
    )
    return ((1.0 - noise_fraction) * tonal + noise_fraction * noisy) * envelope


def _synth_dog_bark(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """1-4 barks of 0.1-0.3 s at random non-overlapping times."""
    duration_s = n_samples / sample_rate
    min_gap_s = 0.08
    durations = rng.uniform(0.1, 0.3, int(rng.integers(1, 5)))
    while len(durations) > 1 and durations.sum() + min_gap_s * (len(durations) - 1) > duration_s:
        durations = durations[:-1]
    durations = np.minimum(durations, duration_s)
    onsets = _place_non_overlapping(durations, 0.0, duration_s, min_gap_s, rng)
    out = np.zeros(n_samples)
    for onset_s, bark_s in zip(onsets, durations):
        first = min(int(onset_s * sample_rate), n_samples - 1)
        length = min(n_samples - first, int(bark_s * sample_rate))
        if length > 16:
            out[first : first + length] += rng.uniform(0.5, 1.0) * _one_bark(length, sample_rate, rng)
    return _normalize_peak(out)


def _siren_sweep(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Siren frequency track (Hz): wail, yelp or hi-lo pattern."""
    t = np.arange(n_samples) / sample_rate
    mode = rng.choice(("wail", "yelp", "hilo"), p=(0.5, 0.35, 0.15))
    low_hz = rng.uniform(550.0, 800.0)
    if mode == "wail":
        high_hz = rng.uniform(1100.0, 1600.0)
        sweep = 0.5 - 0.5 * np.cos(2.0 * np.pi * rng.uniform(0.12, 0.5) * t + rng.uniform(0, 2 * np.pi))
    elif mode == "yelp":
        high_hz = rng.uniform(1100.0, 1600.0)
        cycle = (rng.uniform(2.5, 5.0) * t + rng.uniform(0.0, 1.0)) % 1.0
        rise = rng.uniform(0.5, 0.8)
        sweep = np.minimum(cycle / rise, (1.0 - cycle) / (1.0 - rise))
    else:
        high_hz = low_hz * rng.uniform(1.25, 1.5)
        square = np.floor(2.0 * rng.uniform(0.6, 1.2) * t + rng.uniform(0.0, 2.0)) % 2
        sweep = uniform_filter1d(square, max(1, int(0.01 * sample_rate)))
    return low_hz + (high_hz - low_hz) * sweep


def _synth_siren(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Emergency siren: swept tone with a few harmonics and slow level variation (distance)."""
    frequency = _siren_sweep(n_samples, sample_rate, rng)
    n_harmonics = int(rng.integers(2, 7))
    harmonics = np.arange(1, n_harmonics + 1, dtype=float)
    if rng.random() < 0.5:  # square-ish electronic siren: odd harmonics only
        gains = np.where(harmonics % 2 == 1, 1.0 / harmonics, 0.0)
    else:
        gains = harmonics ** -rng.uniform(1.0, 2.0)
    tone = _harmonic_stack(frequency, sample_rate, gains, rng)
    level = 1.0 + rng.uniform(0.0, 0.4) * _smooth_contour(n_samples, 4, rng)
    return _normalize_peak(tone * level)


def _synth_hum(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Mains/appliance hum: 50 or 60 Hz and harmonics (1st or 2nd strongest), drift and a little noise."""
    t = np.arange(n_samples) / sample_rate
    mains_hz = float(rng.choice((50.0, 60.0))) * (1.0 + rng.uniform(-0.002, 0.002))
    f0 = mains_hz * (1.0 + 0.001 * _smooth_contour(n_samples, 4, rng))
    n_harmonics = int(rng.integers(3, 9))
    first_two = rng.uniform(0.3, 1.0, 2)
    upper = rng.uniform(0.02, 0.5, n_harmonics - 2) * first_two.max() / np.arange(2, n_harmonics)
    tone = _normalize_rms(_harmonic_stack(f0, sample_rate, np.concatenate([first_two, upper]), rng))
    drift = 1.0 + rng.uniform(0.0, 0.3) * np.sin(
        2.0 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 2 * np.pi)
    )
    noise, _ = _colored_noise(str(rng.choice(("pink", "brown"))), n_samples, rng)
    return _normalize_peak(tone * drift + rng.uniform(0.02, 0.1) * noise)


def _rain(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Rain-like crackle: random drop impulses, band-passed, over a pink bed."""
    n_drops = int(rng.poisson(rng.uniform(100.0, 2000.0) * n_samples / sample_rate))
    impulses = np.zeros(n_samples)
    np.add.at(
        impulses,
        rng.integers(0, n_samples, n_drops),
        rng.exponential(1.0, n_drops) * rng.choice((-1.0, 1.0), n_drops),
    )
    drops = _normalize_rms(
        _bandpass(impulses, rng.uniform(800.0, 2000.0), rng.uniform(4000.0, 8000.0), sample_rate)
    )
    bed, _ = _colored_noise("pink", n_samples, rng)
    return drops + rng.uniform(0.1, 0.5) * bed


def _synth_noise(n_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Background noise: white, pink, brown or rain, with slow gusts."""
    kind = str(rng.choice(("white", "pink", "brown", "rain")))
    if kind == "rain":
        noise = _rain(n_samples, sample_rate, rng)
    else:
        noise, _ = _colored_noise(kind, n_samples, rng)
    gusts = 1.0 + rng.uniform(0.0, 0.5) * _smooth_contour(n_samples, int(n_samples / sample_rate) + 2, rng)
    return _normalize_peak(noise * gusts)


_SYNTHESIZERS: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "babycry": _synth_babycry,
    "speech": _synth_speech,
    "dog_bark": _synth_dog_bark,
    "siren": _synth_siren,
    "hum": _synth_hum,
    "noise": _synth_noise,
}


def _synthesize_source(
    class_name: str, n_samples: int, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Clean class sound of n_samples, peak-normalised to 1 (float64)."""
    if class_name not in _SYNTHESIZERS:
        raise ValueError(f"unknown class {class_name!r}; known classes: {', '.join(CLASS_NAMES)}")
    if n_samples < 1:
        raise ValueError(f"clip must have at least one sample, got {n_samples}")
    return _SYNTHESIZERS[class_name](n_samples, sample_rate, rng)


def _distractor_classes(class_name: str) -> list[str]:
    """Classes that may sound faintly under a clip of class_name (never a cry under a non-cry clip)."""
    return [name for name in CLASS_NAMES if name not in (class_name, TARGET_CLASS)]


def synthesize_clip(
    class_name: str, duration_s: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Return a float32 mono waveform in [-1, 1] of round(duration_s*sample_rate) samples."""
    n_samples = _n_samples(duration_s, sample_rate)
    mix = _synthesize_source(class_name, n_samples, sample_rate, rng)
    if rng.random() < DISTRACTOR_PROBABILITY:  # real clips rarely contain one sound only
        distractor = str(rng.choice(_distractor_classes(class_name)))
        level = _db_to_amplitude(rng.uniform(*DISTRACTOR_LEVEL_DB_RANGE))
        mix = mix + level * _synthesize_source(distractor, n_samples, sample_rate, rng)
    background, _ = _colored_noise(str(rng.choice(("white", "pink"))), n_samples, rng)
    mix = mix + _db_to_amplitude(rng.uniform(*BACKGROUND_LEVEL_DB_RANGE)) * background
    peak = _db_to_amplitude(rng.uniform(*CLIP_PEAK_DBFS_RANGE))
    return np.clip(_normalize_peak(mix, peak), -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Demo clip folder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """Where and how one demo clip is written."""

    class_id: int
    clip_index: int
    relative_path: str  # relative to <root>/audio, POSIX separators
    sample_rate: int
    channels: int
    subtype: str
    fold: int


def clip_file_name(class_name: str, clip_index: int, clips_per_class: int) -> str:
    """File name of a demo clip; one speech clip deliberately contains a space."""
    spaced_index = min(SPACED_NAME_INDEX, clips_per_class - 1)
    separator = " " if (class_name == SPACED_NAME_CLASS and clip_index == spaced_index) else "_"
    return f"{class_name}{separator}{clip_index:03d}.wav"


def plan_clips(clips_per_class: int) -> list[ClipSpec]:
    """Deterministic list of clip specs, ordered by classID then clip index."""
    specs = []
    for class_id, class_name in enumerate(CLASS_NAMES):
        for clip_index in range(clips_per_class):
            position = class_id * clips_per_class + clip_index
            specs.append(
                ClipSpec(
                    class_id=class_id,
                    clip_index=clip_index,
                    relative_path=f"{class_name}/{clip_file_name(class_name, clip_index, clips_per_class)}",
                    sample_rate=SAMPLE_RATE_CYCLE[position % len(SAMPLE_RATE_CYCLE)],
                    channels=CHANNEL_CYCLE[position % len(CHANNEL_CYCLE)],
                    subtype=SUBTYPE_CYCLE[position % len(SUBTYPE_CYCLE)],
                    fold=clip_index % N_FOLDS + 1,
                )
            )
    return specs


def _to_stereo(mono: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Two slightly different channels (small inter-channel delay and gain), shape (n_samples, 2)."""
    delay = int(rng.integers(0, int(0.0015 * sample_rate) + 1))
    gain = np.float32(rng.uniform(0.7, 1.0))
    other = np.concatenate([np.zeros(delay, dtype=mono.dtype), mono[: len(mono) - delay]]) * gain
    channels = (mono, other) if rng.random() < 0.5 else (other, mono)
    return np.stack(channels, axis=1)


def _write_clip(audio_dir: Path, spec: ClipSpec, seed: int) -> float:
    """Synthesise and write one clip; return its duration in seconds (3 decimals)."""
    rng = np.random.default_rng([seed, spec.class_id, spec.clip_index])
    duration_s = round(rng.uniform(*CLIP_DURATION_RANGE_S), 3)
    mono = synthesize_clip(CLASS_NAMES[spec.class_id], duration_s, spec.sample_rate, rng)
    data = _to_stereo(mono, spec.sample_rate, rng) if spec.channels == 2 else mono
    write_audio(audio_dir / spec.relative_path, data, spec.sample_rate, spec.subtype)
    return round(len(mono) / spec.sample_rate, 3)


def _read_info(root: Path) -> dict | None:
    """Contents of <root>/demo_info.json, or None when missing or unreadable."""
    try:
        return json.loads((root / INFO_FILE_NAME).read_text())
    except (OSError, ValueError):
        return None


def _listed_files(csv_path: Path) -> list[str]:
    """slice_file_name column of an existing metadata CSV (empty if unreadable)."""
    try:
        with csv_path.open(newline="") as handle:
            return [row["slice_file_name"] for row in csv.DictReader(handle)]
    except (OSError, KeyError, csv.Error):
        return []


def _is_up_to_date(root: Path, clips_per_class: int, seed: int) -> bool:
    """True when <root> already holds a complete demo set made with these arguments."""
    info = _read_info(root)
    csv_path = root / METADATA_FILE_NAME
    if info is None or not csv_path.is_file():
        return False
    wanted = {"clips_per_class": clips_per_class, "seed": seed, "generator_version": GENERATOR_VERSION}
    if any(info.get(key) != value for key, value in wanted.items()):
        return False
    listed = _listed_files(csv_path)
    return len(listed) == clips_per_class * len(CLASS_NAMES) and all(
        (root / "audio" / name).is_file() for name in listed
    )


def _remove_previous_demo(root: Path) -> None:
    """Delete clips listed by a previous demo generation (only if demo_info.json says we made them)."""
    csv_path = root / METADATA_FILE_NAME
    if _read_info(root) is None or not csv_path.is_file():
        return
    for name in _listed_files(csv_path):
        (root / "audio" / name).unlink(missing_ok=True)
    (root / INFO_FILE_NAME).unlink(missing_ok=True)


def _write_metadata(csv_path: Path, specs: Sequence[ClipSpec], durations_s: Sequence[float]) -> None:
    """Write the UrbanSound8K-style metadata CSV (rows in spec order)."""
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        for spec, duration_s in zip(specs, durations_s):
            writer.writerow(
                [spec.relative_path, spec.class_id, 0.0, duration_s, spec.fold, CLASS_NAMES[spec.class_id]]
            )


def _write_clips(audio_dir: Path, specs: Sequence[ClipSpec], seed: int, workers: int) -> list[float]:
    """``_write_clip`` for every spec, on ``workers`` processes; durations in spec order.

    Each clip's random stream comes from (seed, class, index) alone, so the files do not depend on
    the number of workers or the order they finish in.
    """
    write = functools.partial(_write_clip, audio_dir, seed=seed)
    if workers <= 1 or len(specs) < 2:
        return [write(spec) for spec in specs]
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with context.Pool(min(workers, len(specs))) as pool:
        return pool.map(write, specs, chunksize=max(1, len(specs) // (workers * 8)))


def generate_demo_dataset(root: str | Path, clips_per_class: int = 40, seed: int = 0,
                          workers: int | None = None) -> Path:
    """Write <root>/audio/... and <root>/metadata.csv; return the CSV path.

    Idempotent: if <root>/demo_info.json shows a complete set made with the same (clips_per_class, seed),
    nothing is regenerated. Otherwise clips listed by a previous demo generation are removed first.
    ``workers``: processes that synthesise the clips (default: one per CPU this process may use);
    the files are the same for any number.
    """
    if clips_per_class < 1:
        raise ValueError(f"clips_per_class must be >= 1, got {clips_per_class}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)
    csv_path = root / METADATA_FILE_NAME
    if _is_up_to_date(root, clips_per_class, seed):
        logger.info(
            "demo dataset in %s is up to date (clips_per_class=%d, seed=%d)", root, clips_per_class, seed
        )
        return csv_path
    _remove_previous_demo(root)
    started = time.perf_counter()
    specs = plan_clips(clips_per_class)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    durations_s = _write_clips(root / "audio", specs, seed, workers)
    _write_metadata(csv_path, specs, durations_s)
    # Written last: its presence marks a complete generation.
    info = {
        "clips_per_class": clips_per_class,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "class_names": list(CLASS_NAMES),
        "n_clips": len(specs),
    }
    (root / INFO_FILE_NAME).write_text(json.dumps(info, indent=2) + "\n")
    logger.info("wrote %d demo clips to %s in %.1f s", len(specs), root, time.perf_counter() - started)
    return csv_path


# --------------------------------------------------------------------------------------------
# Long recording with known events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlannedEvent:
    """One sound event placed in a long recording."""

    class_name: str
    onset_sample: int
    n_samples: int
    peak: float
    seed_key: tuple[int, ...]  # the event's own RNG seed, so rendering is independent of block layout

    @property
    def offset_sample(self) -> int:
        """First sample after the event."""
        return self.onset_sample + self.n_samples


def _plan_targets(
    duration_s: float,
    sample_rate: int,
    target_class: str,
    n_events: int,
    quiet_until_s: float | None,
    seed: int,
    rng: np.random.Generator,
) -> list[_PlannedEvent]:
    """Non-overlapping target events on a millisecond grid, none starting before quiet_until_s."""
    durations_s = np.round(rng.uniform(*LONG_EVENT_DURATION_RANGE_S, n_events), 3)
    start_s = max(LONG_EDGE_MARGIN_S, quiet_until_s or 0.0)
    end_s = duration_s - LONG_EDGE_MARGIN_S
    onsets_s = _place_non_overlapping(durations_s, start_s, end_s, LONG_MIN_EVENT_GAP_S, rng)
    onsets_s = np.ceil(onsets_s * 1000.0) / 1000.0  # millisecond grid, never earlier than start_s
    events = []
    for index, (onset_s, event_s) in enumerate(zip(onsets_s, durations_s)):
        onset_sample = _n_samples(onset_s, sample_rate)
        events.append(
            _PlannedEvent(
                class_name=target_class,
                onset_sample=onset_sample,
                n_samples=_n_samples(onset_s + event_s, sample_rate) - onset_sample,
                peak=_db_to_amplitude(rng.uniform(-24.0, -8.0)),
                seed_key=(seed, 2000, index),
            )
        )
    return events


def _plan_confusers(
    duration_s: float,
    sample_rate: int,
    target_class: str,
    occupied: Sequence[_PlannedEvent],
    seed: int,
    rng: np.random.Generator,
) -> list[_PlannedEvent]:
    """Occasional confuser events placed (by rejection sampling) so they overlap no other event."""
    classes = [name for name in CONFUSER_CLASSES if name != target_class]
    margin = int(0.3 * sample_rate)
    taken = [(event.onset_sample - margin, event.offset_sample + margin) for event in occupied]
    events: list[_PlannedEvent] = []
    for index in range(int(rng.poisson(duration_s * CONFUSERS_PER_SECOND))):
        class_name = str(rng.choice(classes))
        event_s = rng.uniform(3.0, 10.0) if class_name == "hum" else rng.uniform(1.0, 4.0)
        n_samples = _n_samples(min(event_s, duration_s), sample_rate)
        for _ in range(20):
            onset = int(rng.integers(0, max(1, _n_samples(duration_s, sample_rate) - n_samples)))
            if all(onset + n_samples <= begin or onset >= end for begin, end in taken):
                taken.append((onset - margin, onset + n_samples + margin))
                peak = _db_to_amplitude(rng.uniform(-30.0, -10.0))
                events.append(_PlannedEvent(class_name, onset, n_samples, peak, (seed, 3000, index)))
                break
    return events


def _render_event(event: _PlannedEvent, sample_rate: int) -> np.ndarray:
    """Waveform of a planned event (deterministic from its seed key), with short fades."""
    rng = np.random.default_rng(list(event.seed_key))
    source = _synthesize_source(event.class_name, event.n_samples, sample_rate, rng)
    fade_s = min(0.01, 0.25 * event.n_samples / sample_rate)
    return event.peak * source * _attack_release(event.n_samples, sample_rate, fade_s, fade_s)


@dataclass
class _Background:
    """Continuous background (pink noise + optional faint mains hum) generated block by block."""

    sample_rate: int
    rng: np.random.Generator
    noise_level: float
    hum_level: float
    hum_hz: float
    noise_state: np.ndarray | None = None

    def next_block(self, first_sample: int, n_samples: int) -> np.ndarray:
        """Background samples [first_sample, first_sample + n_samples); call with consecutive blocks."""
        noise, self.noise_state = _colored_noise("pink", n_samples, self.rng, self.noise_state)
        t = (
            first_sample + np.arange(n_samples)
        ) / self.sample_rate  # absolute time keeps hum phase continuous
        hum = np.sin(2.0 * np.pi * self.hum_hz * t) + 0.6 * np.sin(4.0 * np.pi * self.hum_hz * t)
        return self.noise_level * noise + self.hum_level * hum


def write_reference_csv(events: Sequence[dict], path: str | Path) -> Path:
    """Write ``make_long_recording``'s events as an annotations CSV (file, onset_s, offset_s, class)."""
    rows = [Event(event["file"], event["class"], event["onset_s"], event["offset_s"]) for event in events]
    return write_events_csv(rows, path, REFERENCE_CSV_COLUMNS)


def make_long_recording(
    path: str | Path,
    duration_s: float = 120.0,
    sample_rate: int = 16000,
    target_class: str = "babycry",
    n_events: int = 6,
    seed: int = 0,
    quiet_until_s: float | None = None,
) -> list[dict]:
    """Write a long mono 16-bit WAV with `n_events` target events; return the true events sorted by onset.

    The background is continuous low noise (sometimes faint hum) with occasional confuser events
    (hum/speech/dog_bark/siren) that never overlap a target event. Events are dicts
    {"file", "onset_s", "offset_s", "class"}; each target lasts 1.5-4 s.

    Before `quiet_until_s` there are no target events (background, which may include confusers, only).
    The file is written in blocks, so memory stays bounded for long durations.
    """
    if target_class not in CLASS_NAMES:
        raise ValueError(f"unknown target_class {target_class!r}; known classes: {', '.join(CLASS_NAMES)}")
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    path = Path(path)
    plan_rng = np.random.default_rng([seed, 1000])
    targets = _plan_targets(duration_s, sample_rate, target_class, n_events, quiet_until_s, seed, plan_rng)
    confusers = _plan_confusers(duration_s, sample_rate, target_class, targets, seed, plan_rng)
    planned = sorted(targets + confusers, key=lambda event: event.onset_sample)
    background = _Background(
        sample_rate=sample_rate,
        rng=np.random.default_rng([seed, 1001]),
        noise_level=_db_to_amplitude(plan_rng.uniform(-58.0, -46.0)),
        hum_level=_db_to_amplitude(plan_rng.uniform(-62.0, -50.0)) if plan_rng.random() < 0.5 else 0.0,
        hum_hz=float(plan_rng.choice((50.0, 60.0))),
    )

    total_samples = _n_samples(duration_s, sample_rate)
    block_samples = _n_samples(LONG_BLOCK_S, sample_rate)
    rendered: dict[int, np.ndarray] = {}  # event index -> waveform, kept only while the event is in range
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV") as out:
        for block_start in range(0, total_samples, block_samples):
            block_end = min(total_samples, block_start + block_samples)
            block = background.next_block(block_start, block_end - block_start)
            for index, event in enumerate(planned):
                if event.offset_sample <= block_start or event.onset_sample >= block_end:
                    rendered.pop(index, None)
                    continue
                if index not in rendered:
                    rendered[index] = _render_event(event, sample_rate)
                waveform = rendered[index]
                first, last = max(block_start, event.onset_sample), min(block_end, event.offset_sample)
                block[first - block_start : last - block_start] += waveform[
                    first - event.onset_sample : last - event.onset_sample
                ]
            out.write(np.clip(block, -1.0, 1.0))

    logger.info(
        "wrote %s: %.1f s, %d %s events, %d confusers",
        path,
        duration_s,
        len(targets),
        target_class,
        len(confusers),
    )
    return [
        {
            "file": path.name,
            "onset_s": round(event.onset_sample / sample_rate, 3),
            "offset_s": round(event.offset_sample / sample_rate, 3),
            "class": target_class,
        }
        for event in sorted(targets, key=lambda event: event.onset_sample)
    ]


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Argument parser for `python -m tools.demo_data`."""
    parser = argparse.ArgumentParser(
        description="Generate the synthetic baby-cry demo dataset (no downloads)."
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output root (audio/ and metadata.csv go here)"
    )
    parser.add_argument("--clips_per_class", type=int, default=40, help="clips per class (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that synthesise the clips (default: one per CPU; same files for any number)")
    parser.add_argument(
        "--long_recording", type=Path, default=None, help="also write a long WAV with known events here"
    )
    parser.add_argument("--long_duration", type=float, default=120.0, help="long recording length in seconds")
    parser.add_argument(
        "--long_events", type=int, default=6, help="number of target events in the long recording"
    )
    parser.add_argument(
        "--quiet_until", type=float, default=None, help="no target events before this time (s)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    csv_path = generate_demo_dataset(args.out, clips_per_class=args.clips_per_class, seed=args.seed,
                                     workers=args.workers)
    logger.info("metadata: %s", csv_path)
    if args.long_recording is not None:
        events = make_long_recording(
            args.long_recording,
            duration_s=args.long_duration,
            n_events=args.long_events,
            seed=args.seed,
            quiet_until_s=args.quiet_until,
        )
        events_path = write_reference_csv(
            events, args.long_recording.with_name(f"{args.long_recording.stem}_events.csv")
        )
        logger.info("events: %s", events_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
