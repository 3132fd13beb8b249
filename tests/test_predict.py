"""predict.py and audioclf/inference.py: no train/serve skew, detection, bounded memory, errors.

One tiny model is trained (module fixture, seconds) on features that the real front end
computed from a small synthetic demo dataset, so clip predictions can be compared with the
model's output on the preprocessed ``.npy`` files and detection can be checked on a long
recording with known cry times.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import predict
from tools.demo_data import generate_demo_dataset, make_long_recording, write_reference_csv
from audioclf.evaluation import run_evaluation
from audioclf.events import DetectionParams, Event, read_events_csv, score_events
from audioclf.frontend import FeatureParams, read_audio
from audioclf.inference import LONG_MODE_KEY, Predictor, align_reference, collect_inputs, detect, load_operating_point
from audioclf.listfile import LISTS_DIR, list_path
from audioclf.preprocess import PreprocessOptions, run_preprocessing
from audioclf.training import train
from audioclf.tuning import select_detection_params
from audioclf.windows import cut_windows
from tools.soundscapes import EVENTS_FILE, build_soundscapes
from tools.synthetic_features import make_config
from utils import Params

REPO = Path(__file__).resolve().parents[1]
# Small front end: 32 mels x 100 frames of 10 ms = 1 s windows at 16 kHz.
PARAMS = FeatureParams(sample_rate=16000, n_mels=32, n_frames=100)
TARGET = "babycry"


@dataclass
class Trained:
    checkpoint: Path
    audio_dir: Path
    features_dir: Path
    rows: list[dict]
    long_file: Path
    true_events: list[dict]
    quiet_until_s: float


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("predict")
    csv_file = generate_demo_dataset(root / "demo", clips_per_class=30, seed=0)
    features = root / "features"
    run_preprocessing(PreprocessOptions(csv_file=csv_file, data_dir=csv_file.parent / "audio", save_dir=features,
                                        params=PARAMS, num_workers=2))
    config = make_config(root, features, epochs=20, batch_size=16, lr=0.01, scheduler="cosine", random_shift=True,
                         normalization="per_clip", model_args={"width": 16})
    train(Params(config), show_progress=False)
    with open(csv_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    long_file = root / "long" / "long.wav"
    true_events = make_long_recording(long_file, duration_s=90.0, sample_rate=22050, n_events=5, seed=1,
                                      quiet_until_s=30.0)
    write_reference_csv(true_events, long_file.with_name("long_events.csv"))
    return Trained(root / "checkpoints" / "model_best.pth.tar", csv_file.parent / "audio", features, rows,
                   long_file, true_events, 30.0)


@pytest.fixture(scope="module")
def predictor(trained) -> Predictor:
    return Predictor.from_checkpoint(trained.checkpoint)


def model_probabilities(predictor: Predictor, feature: np.ndarray) -> np.ndarray:
    """The model's softmax on one stored feature ``(n_mels, n_frames)``, computed independently."""
    with torch.inference_mode():
        logits = predictor.model(torch.from_numpy(feature)[None, None])
    return torch.softmax(logits, dim=1)[0].numpy()


# ---------------------------------------------------------------------------------------
# Clip mode: no train/serve skew
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate, channels", [(8000, 1), (44100, 2)])
def test_clip_probabilities_equal_the_model_on_the_preprocessed_npy(trained, predictor, rate, channels):
    matching = [row for row in trained.rows
                if (lambda info: (info.samplerate, info.channels))(sf.info(trained.audio_dir / row["slice_file_name"]))
                == (rate, channels)]
    assert matching, f"the demo set has no {rate} Hz / {channels}-channel clip"
    paths = [str(trained.audio_dir / row["slice_file_name"]) for row in matching[:3]]
    predictions, skipped = predictor.predict_clips(paths, batch_size=2)
    assert not skipped
    for row, prediction in zip(matching, predictions):
        stored = np.load(trained.features_dir / Path(row["slice_file_name"]).with_suffix(".npy"))
        np.testing.assert_allclose(prediction.probabilities, model_probabilities(predictor, stored),
                                   rtol=1e-5, atol=1e-6)
        assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_checkpoint_carries_everything_inference_needs(trained, predictor):
    assert predictor.params == PARAMS
    assert predictor.class_names[0] == TARGET and len(predictor.class_names) == 6
    assert predictor.window_s == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------
# Long mode: streaming windows
# ---------------------------------------------------------------------------------------

def test_long_mode_windows_are_frame_ranges_of_the_decoded_files_log_mel(trained, predictor):
    result = predictor.predict_long(trained.long_file, hop_seconds=0.5, batch_size=7, block_seconds=3.3)
    assert result.duration_s == pytest.approx(90.0, abs=1e-3)
    # starts 0, 0.5, ..., 89.0 s: the 9000 frames centred inside the 90 s hold 179 windows of 100
    # frames every 50 frames, the last one ending at the last frame (no padded window)
    assert len(result.probabilities) == 179
    starts, ends = result.bounds
    np.testing.assert_allclose(starts[:3], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(ends[-2:], [89.5, 90.0])
    audio = read_audio(trained.long_file, PARAMS.sample_rate)  # whole file at once
    frames = predictor.extractor.recording_frames(audio)  # one log-mel of the recording, (n_mels, 9000)
    assert frames.shape == (32, 9000)
    picks = [0, 57, 177, 178]
    expected = predictor.classify_features(np.stack([frames[:, 50 * i:50 * i + 100] for i in picks]))
    np.testing.assert_allclose(result.probabilities[picks], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.probabilities, predictor.classify_features(cut_windows(frames, 100, 50)),
                               rtol=1e-4, atol=1e-5)


def test_long_recording_cries_are_detected_and_background_stays_quiet(trained, predictor):
    result = predictor.predict_long(trained.long_file)  # default hop: half a window
    settings = {TARGET: DetectionParams(threshold=0.5, median_filter=3)}
    detected = detect([result], predictor.class_names, settings)
    truth = [Event(str(trained.long_file), TARGET, e["onset_s"], e["offset_s"]) for e in trained.true_events]
    for event in truth:  # every true cry overlaps a detection
        assert any(d.onset_s < event.offset_s and d.offset_s > event.onset_s for d in detected), event
    # nothing before the first cry: 30 s of background with confusers (hum, speech, barks, sirens)
    assert not [d for d in detected if d.offset_s < trained.quiet_until_s], detected
    scores = score_events(truth, detected, {result.file: result.duration_s}, [TARGET])
    # Measured here: segment F1 0.95 (1 s segments); event F1 0.8 (4 of 5 cries within the DCASE
    # collars: 200 ms onset). One-second windows place boundaries only to about +-0.5 s, so the
    # event F1 is reported, not relied on; the segment F1 is.
    assert scores["segment_based"]["f1"] >= 0.8, scores
    assert scores["event_based"]["tp"] >= 1, scores


def test_long_mode_memory_stays_bounded_for_a_long_44k_stereo_file(tmp_path, predictor):
    path = tmp_path / "ten_minutes.wav"
    rate, seconds, rng = 44100, 600, np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as out:
        for _ in range(seconds // 20):  # written in 20-s blocks
            out.write((0.1 * rng.standard_normal((20 * rate, 2))).astype(np.float32))
    decoded_bytes = seconds * rate * 2 * 4  # float32 stereo, what reading it whole would take: 212 MB
    tracemalloc.start()
    try:
        result = predictor.predict_long(path, hop_seconds=1.0, batch_size=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.probabilities) == 600
    print(f"peak {peak/1e6:.1f} MB")
    # one 10-s block of stereo float32 is 3.5 MB; the whole decoded file is 212 MB
    assert peak < 25e6, f"peak traced memory {peak / 1e6:.1f} MB"
    assert peak < decoded_bytes / 8


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------

def test_unreadable_inputs_are_reported_and_skipped(trained, tmp_path, capsys, caplog):
    good = [str(trained.audio_dir / row["slice_file_name"]) for row in trained.rows[:2]]
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 10)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.wav"
    out_csv, out_json = tmp_path / "clips.csv", tmp_path / "clips.json"
    status = predict.main(["--checkpoint", str(trained.checkpoint), "--clip", good[0], str(garbage), str(empty),
                           str(missing), good[1], "--output_csv", str(out_csv), "--output_json", str(out_json),
                           "--top_k", "2"])
    assert status == 0
    warnings = caplog.text
    assert f"skipped {garbage}: unreadable" in warnings
    assert f"skipped {empty}: empty" in warnings
    assert f"skipped {missing}: missing" in warnings
    assert "3 of 5 inputs skipped" in warnings
    printed = capsys.readouterr().out
    assert all(Path(path).name in printed for path in good)
    with open(out_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == good
    assert list(rows[0]) == ["file", "class_1", "probability_1", "class_2", "probability_2"]
    listed = json.loads(out_json.read_text())
    assert [entry["file"] for entry in listed] == good
    assert len(listed[0]["top_k"]) == 2 and len(listed[0]["probabilities"]) == 6
    assert listed[0]["top_k"][0]["class"] == rows[0]["class_1"]
    assert sum(listed[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    assert predict.main(["--checkpoint", str(trained.checkpoint), str(garbage), str(missing)]) == 1
    assert "no input could be processed" in caplog.text


def test_an_output_that_cannot_be_written_is_refused_before_any_work(trained, tmp_path, caplog, monkeypatch):
    (tmp_path / "taken").mkdir()
    monkeypatch.setattr(predict.Predictor, "from_checkpoint", None)  # reaching the model would be too late
    assert predict.main(["--checkpoint", str(trained.checkpoint), "--long", str(trained.long_file),
                         "--events_csv", str(tmp_path / "taken")]) == 1
    assert f"cannot write the --events_csv {tmp_path / 'taken'}: it is a folder; give a file name" in caplog.text


def test_a_detection_reference_that_cannot_be_read_stops_evaluation_before_any_scoring(trained, tmp_path,
                                                                                      monkeypatch):
    soundscapes = tmp_path / "soundscapes"
    build_soundscapes(trained.audio_dir.parent / "metadata.csv", trained.audio_dir,
                      list_path(trained.features_dir / LISTS_DIR, "validation"), TARGET, soundscapes, n_mixtures=2,
                      seed=0, duration_s=8.0)
    reference = tmp_path / "events.csv"
    rows = (soundscapes / EVENTS_FILE).read_text().splitlines()
    reference.write_text("\n".join([rows[0], "mixture_0000.wav,abc,2.0,babycry"]) + "\n")
    params = Params(trained.checkpoint.parents[1] / "config.json")
    params.update({"target_class": TARGET, "detection_soundscapes": str(soundscapes),
                   "detection_reference": str(reference)})
    monkeypatch.setattr("audioclf.evaluation.predict_list", None)  # scoring the clips first would waste them
    with pytest.raises(ValueError, match=r"events.csv, line 2: onset/offset must be numbers"):
        run_evaluation(params, checkpoint_path=trained.checkpoint, output_dir=tmp_path / "scores")
    assert not (tmp_path / "scores").exists()


def test_missing_checkpoint_gives_a_clear_message(tmp_path, caplog):
    assert predict.main(["--checkpoint", str(tmp_path / "nope.pth.tar"), "x.wav"]) == 1
    assert "checkpoint not found" in caplog.text and "nope.pth.tar" in caplog.text


def test_inputs_from_folders_and_list_files(tmp_path):
    for name in ("a/one.wav", "a/b/two.FLAC", "a/notes.txt", "a/b/three.ogg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("# clips\na/one.wav\n\n/abs/path.wav\n")
    found = collect_inputs([tmp_path / "a", listing, "loose.wav"])
    assert found == [str(tmp_path / "a/b/three.ogg"), str(tmp_path / "a/b/two.FLAC"), str(tmp_path / "a/one.wav"),
                     str(tmp_path / "a/one.wav"), "/abs/path.wav", "loose.wav"]


def test_a_list_or_folder_that_names_no_file_is_warned_about_by_name(tmp_path, caplog):
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    (tmp_path / "no_audio").mkdir()
    with caplog.at_level(logging.WARNING):
        assert collect_inputs([tmp_path / "empty.txt", tmp_path / "no_audio"]) == []
    assert f"{tmp_path / 'empty.txt'}: the list names no file" in caplog.text
    assert f"{tmp_path / 'no_audio'}: no audio files" in caplog.text


def test_threshold_defaults_come_from_the_operating_point(trained, tmp_path):
    checkpoint = tmp_path / "model_best.pth.tar"
    shutil.copy(trained.checkpoint, checkpoint)
    names = ["babycry", "speech", "dog_bark"]
    args = predict.parse_args(["--checkpoint", str(checkpoint), "x.wav"])
    assert load_operating_point(checkpoint, names) is None
    assert {name: s.threshold for name, s in predict.detection_settings(args, names, None).items()} == {
        "babycry": 0.5, "speech": 0.5, "dog_bark": 0.5}  # no operating point: every class at 0.5
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "operating_point.json").write_text(
        json.dumps({"target_class": "babycry", "class_id": 0, "threshold": 0.83}))
    point = load_operating_point(checkpoint, names)
    settings = predict.detection_settings(args, names, point)
    assert list(settings) == ["babycry"]
    assert settings["babycry"].threshold == 0.83
    assert settings["babycry"].low == pytest.approx(0.7 * 0.83)
    other = predict.parse_args(["--checkpoint", str(checkpoint), "--target_class", "speech", "x.wav"])
    assert predict.detection_settings(other, names, point)["speech"].threshold == 0.5
    explicit = predict.parse_args(["--checkpoint", str(checkpoint), "--threshold", "0.6", "x.wav"])
    assert predict.detection_settings(explicit, names, point)["babycry"].threshold == 0.6
    assert load_operating_point(checkpoint, ["speech", "babycry"]) is None  # class id does not match
    bad = predict.parse_args(["--checkpoint", str(checkpoint), "--target_class", "cat", "x.wav"])
    with pytest.raises(ValueError, match="babycry, speech, dog_bark"):
        predict.detection_settings(bad, names, point)
    # long-mode settings that do not validate are ignored (with a warning), the clip threshold still applies
    (tmp_path / "scores" / "operating_point.json").write_text(json.dumps(
        {"target_class": "babycry", "class_id": 0, "threshold": 0.83, LONG_MODE_KEY: {
            "hop_seconds": 0.25, "threshold": 0.9, "threshold_low": None, "median_filter": 4, "merge_gap": 0.0,
            "min_duration": 0.0}}))
    point = load_operating_point(checkpoint, names)
    assert point[LONG_MODE_KEY] is None and point["threshold"] == 0.83
    # an operating point written before edge_trim existed: its long mode reads with no trim
    (tmp_path / "scores" / "operating_point.json").write_text(json.dumps(
        {"target_class": "babycry", "class_id": 0, "threshold": 0.83, LONG_MODE_KEY: {
            "hop_seconds": 0.25, "threshold": 0.9, "threshold_low": None, "median_filter": 5, "merge_gap": 0.0,
            "min_duration": 0.0}}))
    assert load_operating_point(checkpoint, names)[LONG_MODE_KEY] == (0.25, DetectionParams(0.9, None, 5))
    assert predict.long_mode_hop(args, point) is None
    # an exported ONNX model's operating point carries the clip threshold only
    onnx_point = {"target_class": "babycry", "class_id": 0, "threshold": 0.83}
    assert predict.detection_settings(args, names, onnx_point)["babycry"].threshold == 0.83
    assert predict.long_mode_hop(args, onnx_point) is None


def test_evaluation_tunes_long_mode_on_soundscapes_and_predict_uses_it(trained, tmp_path):
    """Validation soundscapes -> evaluation picks detection settings -> operating_point.json -> predict's defaults."""
    soundscapes = tmp_path / "soundscapes"
    build_soundscapes(trained.audio_dir.parent / "metadata.csv", trained.audio_dir,
                      list_path(trained.features_dir / LISTS_DIR, "validation"), TARGET, soundscapes, n_mixtures=4,
                      seed=0, duration_s=8.0)
    checkpoint = tmp_path / "model_best.pth.tar"
    shutil.copy(trained.checkpoint, checkpoint)
    params = Params(trained.checkpoint.parents[1] / "config.json")
    params.update({"target_class": TARGET, "detection_soundscapes": str(soundscapes),
                   "detection_reference": str(soundscapes / EVENTS_FILE), "detection_hop_seconds": 0.5})
    metrics = run_evaluation(params, checkpoint_path=checkpoint, output_dir=tmp_path / "scores")
    long_mode = metrics["detection"][LONG_MODE_KEY]
    assert (long_mode["n_recordings"], long_mode["n_reference_events"], long_mode["hop_seconds"]) == (4, 2, 0.5)

    # the settings are the grid's best by the rule on predict's own long-mode windows of those recordings
    predictor = Predictor.from_checkpoint(checkpoint)
    paths = collect_inputs([soundscapes])
    windows = [predictor.predict_long(path, 0.5) for path in paths]
    reference, _ = align_reference(read_events_csv(soundscapes / EVENTS_FILE), paths)
    best, scores = select_detection_params(windows, predictor.class_names, TARGET, reference)
    assert long_mode["measured"]["dcase2017"]["error_rate"] == scores["error_rate"]
    assert long_mode["measured"]["dcase2017"]["f1"] == scores["f1"]
    # ... and never worse there than the defaults (which are in the grid)
    defaults = select_detection_params(windows, predictor.class_names, TARGET, reference, [DetectionParams()])[1]
    assert (scores["error_rate"], -scores["f1"]) <= (defaults["error_rate"], -defaults["f1"])

    # predict.py --long takes them as its defaults; flags still win
    point = load_operating_point(checkpoint, predictor.class_names)
    assert point[LONG_MODE_KEY] == (0.5, best)
    args = predict.parse_args(["--checkpoint", str(checkpoint), "--long", "x.wav"])
    assert predict.detection_settings(args, predictor.class_names, point) == {TARGET: best}
    assert predict.long_mode_hop(args, point) == 0.5
    flags = predict.parse_args(["--checkpoint", str(checkpoint), "--long", "--median_filter", "7", "--hop_seconds",
                                "0.25", "x.wav"])
    assert predict.detection_settings(flags, predictor.class_names, point)[TARGET].median_filter == 7
    assert predict.long_mode_hop(flags, point) == 0.25
    report = (tmp_path / "scores" / "report.txt").read_text()
    assert "long mode (predict.py --long) on 4 recordings" in report and "error rate" in report
    flags = predict.parse_args(["--checkpoint", str(checkpoint), "--long", "--edge_trim", "0.3", "x.wav"])
    assert predict.detection_settings(flags, predictor.class_names, point)[TARGET] == \
        dataclasses.replace(best, edge_trim=0.3)

    # "detection_grid" replaces the grid's lists: one candidate here, chosen whatever it scores
    params.update({"detection_grid": {"thresholds": [0.45], "median_filters": [7], "merge_gaps": [0.5],
                                      "min_durations": [0.25], "edge_trims": [0.2]}})
    long_mode = run_evaluation(params, checkpoint_path=checkpoint, output_dir=tmp_path / "scores")["detection"][
        LONG_MODE_KEY]
    assert long_mode["n_candidates"] == 1
    assert load_operating_point(checkpoint, predictor.class_names)[LONG_MODE_KEY] == (
        0.5, DetectionParams(threshold=0.45, median_filter=7, merge_gap=0.5, min_duration=0.25, edge_trim=0.2))
    assert "edge trim 0.2 s" in (tmp_path / "scores" / "report.txt").read_text()


def test_predict_script_end_to_end(trained, tmp_path):
    """As a user runs it: long mode with a reference prints truth vs detections and writes every file."""
    out = {name: tmp_path / name for name in ("windows.csv", "events.csv", "events.json", "metrics.json")}
    completed = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), "--checkpoint", str(trained.checkpoint), "--long",
         str(trained.long_file), "--reference", str(trained.long_file.with_name("long_events.csv")),
         "--target_class", TARGET, "--windows_csv", str(out["windows.csv"]), "--events_csv", str(out["events.csv"]),
         "--events_json", str(out["events.json"]), "--metrics_json", str(out["metrics.json"]), "--no_progress",
         "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "true vs detected events" in completed.stdout and "event-based   F1" in completed.stdout
    assert "DCASE 2017    error rate" in completed.stdout and "onset only, 500 ms collar" in completed.stdout
    n_true = len(trained.true_events)
    assert f"{n_true} of {n_true} true events overlap a detection" in completed.stdout
    with open(out["windows.csv"], newline="") as handle:
        windows = list(csv.DictReader(handle))
    assert list(windows[0])[:3] == ["file", "start_s", "end_s"] and TARGET in windows[0]
    assert (windows[1]["start_s"], windows[1]["end_s"]) == ("0.500", "1.500")
    with open(out["events.csv"], newline="") as handle:
        events = list(csv.DictReader(handle))
    assert events and list(events[0]) == ["file", "class", "onset_s", "offset_s", "peak_probability",
                                          "mean_probability"]
    assert json.loads(out["events.json"].read_text())[0]["class"] == TARGET
    metrics = json.loads(out["metrics.json"].read_text())
    assert metrics["event_based"]["n_reference"] == len(trained.true_events)
    assert set(metrics) >= {"event_based", "segment_based", "false_alarms_per_hour"}
