"""Tests for the synthetic demo dataset generator (tools.demo_data)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy import signal

from tools.demo_data import (
    CLASS_NAMES,
    METADATA_COLUMNS,
    generate_demo_dataset,
    make_long_recording,
    synthesize_clip,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIPS_PER_CLASS = 2  # 12 clips: enough to walk every format cycle (lengths 4, 3 and 7)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo dataset shared by the read-only tests."""
    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, clips_per_class=CLIPS_PER_CLASS, seed=0)
    return root


@pytest.fixture(scope="module")
def metadata(demo_root: Path) -> pd.DataFrame:
    """The demo dataset's metadata.csv."""
    return pd.read_csv(demo_root / "metadata.csv")


def _all_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes for every file under root."""
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def _dominant_frequency(waveform: np.ndarray, sample_rate: int) -> float:
    """Frequency (Hz) of the largest Welch power-spectrum bin."""
    freqs, power = signal.welch(waveform, sample_rate, nperseg=min(len(waveform), 4096))
    return float(freqs[np.argmax(power)])


def test_same_seed_gives_byte_identical_files(demo_root: Path, tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path / "again", clips_per_class=CLIPS_PER_CLASS, seed=0)
    assert _all_files(tmp_path / "again") == _all_files(demo_root)


def test_files_do_not_depend_on_the_number_of_workers(demo_root: Path, tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path / "one", clips_per_class=CLIPS_PER_CLASS, seed=0, workers=1)
    generate_demo_dataset(tmp_path / "three", clips_per_class=CLIPS_PER_CLASS, seed=0, workers=3)
    assert _all_files(tmp_path / "one") == _all_files(demo_root) == _all_files(tmp_path / "three")


def test_workers_below_one_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        generate_demo_dataset(tmp_path / "none", clips_per_class=CLIPS_PER_CLASS, workers=0)


def test_other_seed_gives_different_audio(demo_root: Path, tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path / "other", clips_per_class=CLIPS_PER_CLASS, seed=1)
    first, second = _all_files(demo_root), _all_files(tmp_path / "other")
    audio_names = [name for name in first if name.endswith(".wav")]
    assert set(audio_names) == {name for name in second if name.endswith(".wav")}
    assert all(first[name] != second[name] for name in audio_names)


def test_metadata_columns_rows_and_labels(metadata: pd.DataFrame) -> None:
    assert (
        tuple(metadata.columns)
        == METADATA_COLUMNS
        == ("slice_file_name", "classID", "start", "end", "fold", "class")
    )
    assert len(metadata) == CLIPS_PER_CLASS * len(CLASS_NAMES)
    assert sorted(metadata["classID"].unique()) == list(range(len(CLASS_NAMES)))
    assert metadata["classID"].is_monotonic_increasing
    assert (metadata["class"] == [CLASS_NAMES[class_id] for class_id in metadata["classID"]]).all()
    assert (metadata["start"] == 0.0).all()
    assert metadata["end"].between(0.5, 5.0).all()
    for _, group in metadata.groupby("classID"):
        assert group["fold"].tolist() == [index % 10 + 1 for index in range(CLIPS_PER_CLASS)]
    for name, class_name in zip(metadata["slice_file_name"], metadata["class"]):
        assert name.startswith(f"{class_name}/") and name.endswith(".wav")


def test_every_file_readable_with_declared_duration(demo_root: Path, metadata: pd.DataFrame) -> None:
    for name, end in zip(metadata["slice_file_name"], metadata["end"]):
        data, sample_rate = sf.read(demo_root / "audio" / name, always_2d=True)
        assert abs(len(data) / sample_rate - end) < 1e-3, name
        peak = np.max(np.abs(data))
        assert 10 ** (-31 / 20) < peak <= 10 ** (-3 / 20) + 1e-2, name  # -30..-3 dBFS (+ 8-bit rounding)


def test_formats_cover_rates_channels_and_subtypes(demo_root: Path, metadata: pd.DataFrame) -> None:
    infos = [sf.info(str(demo_root / "audio" / name)) for name in metadata["slice_file_name"]]
    assert {info.samplerate for info in infos} == {8000, 16000, 22050, 44100}
    assert {info.channels for info in infos} == {1, 2}
    assert {info.subtype for info in infos} == {"PCM_16", "FLOAT", "PCM_24", "PCM_U8"}
    assert {info.format for info in infos} == {"WAV"}


def test_stereo_channels_are_similar_but_not_identical(demo_root: Path, metadata: pd.DataFrame) -> None:
    for name in metadata["slice_file_name"]:
        data, _ = sf.read(demo_root / "audio" / name, always_2d=True)
        if data.shape[1] == 2:
            left, right = data[:, 0], data[:, 1]
            assert not np.array_equal(left, right), name
            assert np.max(np.abs(right)) > 0.5 * np.max(np.abs(left)), name


def test_exactly_one_file_name_has_a_space(demo_root: Path, metadata: pd.DataFrame) -> None:
    spaced = [name for name in metadata["slice_file_name"] if " " in name]
    assert spaced == ["speech/speech 001.wav"]  # index min(7, clips_per_class - 1)
    assert (demo_root / "audio" / spaced[0]).is_file()
    assert len(list((demo_root / "audio").rglob("* *.wav"))) == 1


def test_demo_info_records_arguments(demo_root: Path) -> None:
    info = json.loads((demo_root / "demo_info.json").read_text())
    assert info["clips_per_class"] == CLIPS_PER_CLASS and info["seed"] == 0
    assert info["class_names"] == list(CLASS_NAMES)


def test_regeneration_is_skipped_or_redone_as_needed(tmp_path: Path) -> None:
    csv_path = generate_demo_dataset(tmp_path, clips_per_class=2, seed=0)
    first_clip = tmp_path / "audio" / "babycry" / "babycry_000.wav"
    stamp = first_clip.stat().st_mtime_ns
    assert generate_demo_dataset(tmp_path, clips_per_class=2, seed=0) == csv_path
    assert first_clip.stat().st_mtime_ns == stamp  # skipped

    generate_demo_dataset(tmp_path, clips_per_class=1, seed=0)
    assert len(pd.read_csv(csv_path)) == len(CLASS_NAMES)
    assert not (tmp_path / "audio" / "babycry" / "babycry_001.wav").exists()  # stale clip removed
    assert len(list((tmp_path / "audio").rglob("*.wav"))) == len(CLASS_NAMES)

    (tmp_path / "audio" / "hum" / "hum_000.wav").unlink()  # damaged folder -> regenerated
    generate_demo_dataset(tmp_path, clips_per_class=1, seed=0)
    assert (tmp_path / "audio" / "hum" / "hum_000.wav").is_file()


@pytest.mark.parametrize("sample_rate", [8000, 16000, 22050, 44100])
def test_synthesize_clip_contract(sample_rate: int) -> None:
    for class_name in CLASS_NAMES:
        clip = synthesize_clip(class_name, 1.2345, sample_rate, np.random.default_rng(3))
        assert clip.dtype == np.float32
        assert clip.shape == (round(1.2345 * sample_rate),)
        assert 10 ** (-30.01 / 20) <= np.max(np.abs(clip)) <= 10 ** (-2.99 / 20)


def test_synthesize_clip_rejects_unknown_class() -> None:
    with pytest.raises(ValueError, match="babycry"):
        synthesize_clip("cat", 1.0, 16000, np.random.default_rng(0))


@pytest.mark.parametrize("sample_rate", [8000, 16000, 22050, 44100])
def test_dominant_frequencies_are_class_typical(sample_rate: int) -> None:
    for seed in range(3):
        cry = synthesize_clip("babycry", 2.0, sample_rate, np.random.default_rng([seed, 0, sample_rate]))
        hum = synthesize_clip("hum", 2.0, sample_rate, np.random.default_rng([seed, 4, sample_rate]))
        assert 250.0 <= _dominant_frequency(cry, sample_rate) <= 2000.0
        assert _dominant_frequency(hum, sample_rate) < 400.0


def test_long_recording_events(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    events = make_long_recording(
        path, duration_s=40.0, sample_rate=16000, n_events=4, seed=3, quiet_until_s=12.0
    )
    info = sf.info(str(path))
    assert (info.channels, info.samplerate, info.subtype) == (1, 16000, "PCM_16")
    assert info.frames == 40 * 16000
    assert len(events) == 4
    assert [event["onset_s"] for event in events] == sorted(event["onset_s"] for event in events)
    for event in events:
        assert event == {
            "file": "long.wav",
            "onset_s": event["onset_s"],
            "offset_s": event["offset_s"],
            "class": "babycry",
        }
        assert event["onset_s"] >= 12.0 and event["offset_s"] <= 40.0
        assert 1.5 - 1e-3 <= event["offset_s"] - event["onset_s"] <= 4.0 + 1e-3
    for earlier, later in zip(events, events[1:]):
        assert earlier["offset_s"] <= later["onset_s"]

    audio, sample_rate = sf.read(path)
    frame_rms = np.sqrt(
        np.mean(audio[: len(audio) // 1600 * 1600].reshape(-1, 1600) ** 2, axis=1)
    )  # 0.1 s frames
    noise_floor = np.percentile(frame_rms, 10)
    for event in events:
        segment = audio[int(event["onset_s"] * sample_rate) : int(event["offset_s"] * sample_rate)]
        assert np.sqrt(np.mean(segment**2)) > 5 * noise_floor  # the cry really is there


def test_long_recording_is_deterministic(tmp_path: Path) -> None:
    first = make_long_recording(tmp_path / "a.wav", duration_s=25.0, n_events=2, seed=5)
    second = make_long_recording(tmp_path / "b.wav", duration_s=25.0, n_events=2, seed=5)
    assert [(e["onset_s"], e["offset_s"]) for e in first] == [(e["onset_s"], e["offset_s"]) for e in second]
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


def test_long_recording_rejects_impossible_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot fit"):
        make_long_recording(tmp_path / "x.wav", duration_s=10.0, n_events=3, quiet_until_s=6.0)


def test_cli_writes_dataset_and_long_recording(tmp_path: Path) -> None:
    out = tmp_path / "demo dir"
    long_path = out / "long.wav"
    command = [
        sys.executable, "-m", "tools.demo_data", "--out", str(out), "--clips_per_class", "1",
        "--long_recording", str(long_path), "--long_duration", "20", "--long_events", "2",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(out / "metadata.csv")) == len(CLASS_NAMES)
    with (out / "long_events.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "onset_s", "offset_s", "class"]
    assert [row["file"] for row in rows] == ["long.wav", "long.wav"]
    assert sf.info(str(long_path)).duration == pytest.approx(20.0)
