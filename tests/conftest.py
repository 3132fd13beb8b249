"""Shared test helpers: tiny WAV files and small metadata-CSV datasets written under tmp_path.

Everything here is generic (no assertion about the code under test), so any test file can use
``write_wav`` / ``make_signal`` directly, or the ``wav_factory`` / ``dataset_factory`` fixtures.
"""
from __future__ import annotations

import os

# Before numpy/torch start their thread pools: idle OpenMP threads sleep instead of spinning,
# which keeps the suite fast when it shares 2 cores with DataLoader workers or torchrun ranks.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import csv  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from audioclf.frontend import FeatureParams, write_audio

# Columns of a UrbanSound8K-style metadata CSV: the three required ones plus extras.
CSV_COLUMNS = ("slice_file_name", "fold", "start", "end", "classID", "class")


def make_signal(kind: str = "tone", *, sample_rate: int = 16000, duration: float = 1.0,
                channels: int = 1, frequency: float = 1000.0, amplitude: float = 0.5,
                seed: int = 0) -> np.ndarray:
    """Float32 signal ``(n,)`` (mono) or ``(n, channels)``; every channel holds the same signal.

    ``kind``: ``tone`` (sine at ``frequency``), ``noise`` (uniform white noise, peak ``amplitude``),
    ``silence`` (zeros), or ``tone+noise`` (the tone plus white noise 20 dB below it).
    """
    n_samples = int(round(duration * sample_rate))
    time = np.arange(n_samples) / sample_rate
    rng = np.random.default_rng(seed)
    if kind == "tone":
        mono = amplitude * np.sin(2 * np.pi * frequency * time)
    elif kind == "noise":
        mono = amplitude * rng.uniform(-1.0, 1.0, n_samples)
    elif kind == "silence":
        mono = np.zeros(n_samples)
    elif kind == "tone+noise":
        mono = amplitude * (0.9 * np.sin(2 * np.pi * frequency * time) + 0.09 * rng.uniform(-1, 1, n_samples))
    else:
        raise ValueError(f"unknown signal kind {kind!r}")
    mono = mono.astype(np.float32)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def write_wav(path: str | Path, signal: np.ndarray | None = None, *, sample_rate: int = 16000,
              subtype: str = "PCM_16", **signal_args) -> Path:
    """Write ``signal`` (or ``make_signal(sample_rate=..., **signal_args)``) as a WAV file."""
    if signal is None:
        signal = make_signal(sample_rate=sample_rate, **signal_args)
    return write_audio(path, signal, sample_rate, subtype)


@pytest.fixture
def wav_factory(tmp_path: Path) -> Callable[..., Path]:
    """``wav_factory("name.wav", kind=..., sample_rate=..., channels=..., subtype=..., duration=...)``."""
    def factory(name: str = "clip.wav", signal: np.ndarray | None = None, **kwargs) -> Path:
        return write_wav(tmp_path / name, signal, **kwargs)
    return factory


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch ops on one thread; for modules of tiny tensors (opt in with usefixtures)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def small_params() -> FeatureParams:
    """Front-end parameters small enough for fast tests (n_mels 32, n_frames 50, ~0.5 s)."""
    return FeatureParams(n_fft=512, n_mels=32, n_frames=50)


# ---------------------------------------------------------------------------------------
# Datasets: audio folder + metadata CSV
# ---------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """A small dataset on disk. ``rows`` are the CSV rows as dicts (all values as written)."""

    root: Path
    csv_file: Path
    data_dir: Path
    save_dir: Path
    class_names: list[str]
    rows: list[dict] = field(default_factory=list)

    def rewrite_csv(self, rows: list[dict] | None = None, columns: tuple[str, ...] = CSV_COLUMNS) -> Path:
        """Write ``rows`` (default: ``self.rows``) back to ``csv_file``; returns its path."""
        if rows is not None:
            self.rows = rows
        return write_metadata(self.csv_file, self.rows, columns)

    def audio_path(self, row: dict) -> Path:
        """Where the audio of ``row`` lives."""
        return self.data_dir / row["slice_file_name"]

    def feature_path(self, row: dict) -> Path:
        """Where preprocessing writes the feature of ``row``."""
        return self.save_dir / Path(row["slice_file_name"]).with_suffix(".npy")


def write_metadata(csv_file: Path, rows: list[dict], columns: tuple[str, ...] = CSV_COLUMNS) -> Path:
    """Write ``rows`` as a CSV with ``columns`` (fields with commas/quotes are quoted)."""
    csv_file.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_file, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return csv_file


def make_dataset(root: Path, class_names: tuple[str, ...] | list[str] = ("baby cry", "laugh", "noise"),
                 clips_per_class: int | list[int] = 10, *, duration: float = 0.6,
                 sample_rate: int = 16000, subfolder: Callable[[int, int], str] | None = None,
                 name: Callable[[int, int], str] | None = None, n_folds: int = 10) -> Dataset:
    """Write ``clips_per_class`` WAVs per class under ``root/audio`` and ``root/metadata.csv``.

    Each class gets its own tone (300 Hz, 600 Hz, ...) plus clip-specific noise, so every
    clip's feature differs. ``subfolder(class_id, index)`` / ``name(class_id, index)`` choose the
    relative path (default ``<class folder>/c<ID>_<index>.wav``); ``fold`` cycles 1..n_folds.
    """
    data_dir = root / "audio"
    counts = [clips_per_class] * len(class_names) if isinstance(clips_per_class, int) else list(clips_per_class)
    rows = []
    for class_id, (class_name, count) in enumerate(zip(class_names, counts)):
        for index in range(count):
            folder = subfolder(class_id, index) if subfolder else class_name.replace(" ", "_")
            file_name = name(class_id, index) if name else f"c{class_id}_{index:03d}.wav"
            relative = f"{folder}/{file_name}" if folder else file_name
            write_wav(data_dir / relative, sample_rate=sample_rate, duration=duration, kind="tone+noise",
                      frequency=300.0 * (class_id + 1), seed=1000 * class_id + index)
            rows.append({"slice_file_name": relative, "fold": str(index % n_folds + 1),
                         "start": "0.0", "end": f"{duration}", "classID": str(class_id), "class": class_name})
    csv_file = write_metadata(root / "metadata.csv", rows)
    return Dataset(root=root, csv_file=csv_file, data_dir=data_dir, save_dir=root / "features",
                   class_names=list(class_names), rows=rows)


@pytest.fixture
def dataset_factory(tmp_path: Path) -> Callable[..., Dataset]:
    """``dataset_factory(class_names=..., clips_per_class=..., ...)`` -> ``Dataset`` under tmp_path."""
    made = []

    def factory(*args, root: str = "", **kwargs) -> Dataset:
        folder = tmp_path / (root or f"dataset{len(made)}")
        made.append(folder)
        return make_dataset(folder, *args, **kwargs)
    return factory


# ---------------------------------------------------------------------------------------
# Pretrained YAMNet: the real AudioSet weights, converted once per test session
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def yamnet_torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding YAMNet's weights converted from the installed carrier package (no download)."""
    from models.convert import convert_yamnet

    home = tmp_path_factory.mktemp("torch_home")
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    try:
        convert_yamnet()  # writes <TORCH_HOME>/hub/checkpoints/yamnet_audioset.pth
    finally:
        if previous is None:
            del os.environ["TORCH_HOME"]
        else:
            os.environ["TORCH_HOME"] = previous
    return home


@pytest.fixture
def yamnet_weights(yamnet_torch_home, monkeypatch) -> Path:
    """TORCH_HOME set to the session's converted YAMNet weights for one test."""
    monkeypatch.setenv("TORCH_HOME", str(yamnet_torch_home))
    return yamnet_torch_home
