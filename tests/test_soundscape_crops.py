"""dataloaders/soundscapes.py: training crops of soundscapes, their labels, seeds and checks."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from audioclf.frontend import FeatureExtractor, FeatureParams, read_audio
from audioclf.listfile import ListEntry, render_list
from conftest import make_signal, write_metadata, write_wav
from dataloaders.crops import ConcatCrops
from dataloaders.soundscapes import (EVENT_CROP_SHARE, LabelledRecording, SoundscapeCrops, SoundscapeDataError,
                                     crop_start, load_training_soundscapes, window_label)
from tools.soundscapes import EVENTS_FILE, PARTS_FILE, build_soundscapes

SPEECH, SIREN, CRY = 1, 2, 0
# frames: speech 0-100, siren 90-300 (a 10-frame cross-fade), a 30-frame event at 150-180
RECORDING = LabelledRecording("m.wav", np.zeros((4, 300), np.float32), ((0, 100, SPEECH), (90, 300, SIREN)), (150, 180))


@pytest.mark.parametrize("start, label", [
    (0, SPEECH),      # speech covers all 100 frames, the siren 10
    (41, SPEECH),     # speech 59 frames, the siren 51
    (100, CRY),       # the whole event inside: 30 frames >= half the event
    (165, CRY),       # 15 frames of the event: exactly half of it
    (166, SIREN),     # 14 frames: not the event's; the siren covers the rest
    (51, SIREN),      # event not reached; speech 49, siren 100
])
def test_window_label_follows_the_event_then_the_covering_clip(start, label):
    assert window_label(RECORDING, start, 100, CRY) == label


def test_a_tie_between_clips_goes_to_the_first_listed_and_a_long_event_needs_half_the_window():
    tie = LabelledRecording("t.wav", np.zeros((4, 200), np.float32), ((0, 100, SPEECH), (100, 200, SIREN)), None)
    assert window_label(tie, 50, 100, CRY) == SPEECH  # 50 frames each
    long_event = LabelledRecording("l.wav", np.zeros((4, 400), np.float32), ((0, 400, SPEECH),), (100, 300))
    assert window_label(long_event, 50, 100, CRY) == CRY  # 50 of the window's 100 frames
    assert window_label(long_event, 49, 100, CRY) == SPEECH  # 49 frames: less than half the window


def test_crop_starts_are_seeded_per_key_and_about_half_land_on_the_event():
    starts = [crop_start(RECORDING, 100, 7, epoch, position, 0) for epoch in range(20) for position in range(20)]
    assert starts == [crop_start(RECORDING, 100, 7, epoch, position, 0) for epoch in range(20) for position in range(20)]
    assert starts != [crop_start(RECORDING, 100, 8, epoch, position, 0) for epoch in range(20) for position in range(20)]
    assert min(starts) >= 0 and max(starts) <= 200
    on_event = np.mean([window_label(RECORDING, start, 100, CRY) == CRY for start in starts])
    uniform_share = (165 - 80 + 1) / 201  # starts 80..165 label the event; a uniform start hits them too
    expected = EVENT_CROP_SHARE + (1 - EVENT_CROP_SHARE) * uniform_share
    assert on_event == pytest.approx(expected, abs=0.06)
    no_event = LabelledRecording("n.wav", RECORDING.feature, RECORDING.parts, None)
    assert all(window_label(no_event, crop_start(no_event, 100, 7, 0, p, 0), 100, CRY) != CRY for p in range(50))
    short = LabelledRecording("s.wav", np.zeros((4, 60), np.float32), ((0, 60, SPEECH),), (10, 40))
    assert {crop_start(short, 100, 7, 0, p, 0) for p in range(20)} == {0}  # shorter than a window: padded


def test_concat_crops_route_keys_to_each_part():
    class Part:
        def __init__(self, name, n):
            self.name, self.n = name, n

        def __len__(self):
            return self.n

        def __getitem__(self, key):
            return self.name, key

    crops = ConcatCrops(Part("clips", 3), Part("soundscapes", 2))
    assert len(crops) == 5
    assert crops[(2, 4, 9)] == ("clips", (2, 4, 9))
    assert crops[(3, 4, 9)] == ("soundscapes", (0, 4, 9))
    assert crops[(4, 1, 0)] == ("soundscapes", (1, 1, 0))


RATE = 8000
PARAMS = FeatureParams(sample_rate=RATE, n_fft=256, n_mels=16, n_frames=40)


@pytest.fixture
def folder(tmp_path: Path):
    """Six soundscapes of 4 s from cry tones and two background classes, and the training list they came from."""
    data_dir, rows = tmp_path / "audio", []
    for index in range(3):
        name = f"cry/cry_{index}.wav"
        write_wav(data_dir / name, make_signal("tone", sample_rate=RATE, duration=1.0, frequency=900, amplitude=0.3,
                                               seed=index), sample_rate=RATE)
        rows.append({"slice_file_name": name, "classID": "0", "class": "babycry"})
    for index in range(6):
        class_id, class_name = (1, "speech") if index % 2 else (2, "siren")
        name = f"{class_name}/{class_name}_{index}.wav"
        write_wav(data_dir / name, make_signal("noise", sample_rate=RATE, duration=1.5, amplitude=0.1, seed=9 + index),
                  sample_rate=RATE)
        rows.append({"slice_file_name": name, "classID": str(class_id), "class": class_name})
    csv_file = write_metadata(tmp_path / "metadata.csv", rows)
    entries = [ListEntry(str(Path(row["slice_file_name"]).with_suffix(".npy")), int(row["classID"]), row["class"])
               for row in rows]
    list_file = tmp_path / "train.txt"
    list_file.write_text(render_list(entries))
    out = tmp_path / "soundscapes"
    build_soundscapes(csv_file, data_dir, list_file, "babycry", out, n_mixtures=6, seed=1, duration_s=4.0,
                      sample_rate=RATE)
    return out, {entry.feature_file for entry in entries}


CLASSES = ["babycry", "speech", "siren"]


def test_loaded_soundscapes_hold_the_recordings_log_mel_and_their_parts_in_frames(folder):
    out, training = folder
    recordings = load_training_soundscapes(out, PARAMS, CLASSES, "babycry", training)
    assert [r.file for r in recordings] == [f"mixture_{i:04d}.wav" for i in range(6)]
    frame_s = PARAMS.hop_length / RATE
    with open(out / EVENTS_FILE, newline="") as handle:
        events = {row["file"]: row for row in csv.DictReader(handle)}
    with open(out / PARTS_FILE, newline="") as handle:
        parts = [row for row in csv.DictReader(handle) if row["part"] == "background"]
    for recording in recordings:
        expected = FeatureExtractor(PARAMS).recording_frames(read_audio(out / recording.file, RATE))
        np.testing.assert_array_equal(recording.feature, expected)
        if recording.file in events:
            row = events[recording.file]
            assert recording.event == (round(float(row["onset_s"]) / frame_s), round(float(row["offset_s"]) / frame_s))
        else:
            assert recording.event is None
        mine = [row for row in parts if row["file"] == recording.file]
        assert recording.parts == tuple((round(float(r["start_s"]) / frame_s), round(float(r["end_s"]) / frame_s),
                                         CLASSES.index(r["class"])) for r in mine)
    assert sum(r.event is not None for r in recordings) == 3
    dataset = SoundscapeCrops(recordings, 40, seed=0, target_id=0)
    crop, label = dataset[(0, 0, 0)]
    assert crop.shape == (1, 16, 40) and label in (0, 1, 2)


def test_a_soundscape_of_clips_outside_the_training_list_is_refused(folder):
    out, training = folder
    with pytest.raises(SoundscapeDataError, match=r"parts.csv:\d+: 'cry/cry_1.wav' is not a training clip"):
        load_training_soundscapes(out, PARAMS, CLASSES, "babycry", training - {"cry/cry_1.npy"})


def test_soundscapes_built_for_another_target_class_are_refused(folder):
    out, training = folder  # its events are babycry clips
    with pytest.raises(SoundscapeDataError, match=r"its event is a 'babycry' clip, not \"target_class\" 'speech'"):
        load_training_soundscapes(out, PARAMS, CLASSES, "speech", training)


def test_folder_errors_name_the_file_and_the_fix(folder, tmp_path):
    out, training = folder
    with pytest.raises(SoundscapeDataError, match='"train_soundscapes" folder not found: .*python -m tools.soundscapes'):
        load_training_soundscapes(tmp_path / "nowhere", PARAMS, CLASSES, "babycry", training)
    with pytest.raises(SoundscapeDataError, match=r"class 'siren' is not a training class"):
        load_training_soundscapes(out, PARAMS, ["babycry", "speech", "dog"], "babycry", training)
    text = (out / PARTS_FILE).read_text().splitlines()
    (out / PARTS_FILE).write_text("\n".join(line.rsplit(",", 1)[0] for line in text) + "\n")  # version 1: no class
    with pytest.raises(SoundscapeDataError, match="no class column; rebuild the folder"):
        load_training_soundscapes(out, PARAMS, CLASSES, "babycry", training)


@pytest.mark.parametrize("column, value, message", [
    ("file", "../outside.wav", r"parts.csv:2: file '\.\./outside\.wav' refused: '\.\.' in path escapes"),
    ("file", "/tmp/outside.wav", r"parts.csv:2: file '/tmp/outside\.wav' refused: absolute path"),
    ("start_s", "abc", r"parts.csv:2: start_s 'abc' is not a number; rebuild the folder"),
    ("end_s", "nan", r"parts.csv:2: end_s 'nan' is not a number"),
])
def test_a_parts_row_that_leaves_the_folder_or_is_not_a_number_is_named(folder, column, value, message):
    out, training = folder
    with open(out / PARTS_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0][column] = value
    with open(out / PARTS_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(SoundscapeDataError, match=message):
        load_training_soundscapes(out, PARAMS, CLASSES, "babycry", training)
