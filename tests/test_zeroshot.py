"""Zero-shot: ``predict.py --checkpoint audioset:yamnet`` uses YAMNet's AudioSet head without training."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import predict
from audioclf.inference import Predictor, load_operating_point
from audioclf.zeroshot import zero_shot_checkpoint, zero_shot_models
from tools.demo_data import make_long_recording

GOLDEN = Path(__file__).parent / "data" / "yamnet_golden.npz"
CRY = "Baby cry, infant cry"


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The demo's kind of long recording: 40 s, cries after 10 s (known times)."""
    path = tmp_path_factory.mktemp("zeroshot") / "long.wav"
    events = make_long_recording(path, duration_s=40.0, sample_rate=22050, n_events=3, seed=1, quiet_until_s=10.0)
    return path, events


def test_file_mode_is_yamnets_own_per_file_score(tmp_path, yamnet_weights):
    """Mean over 0.96 s windows every 0.48 s, zero-padded: the original's mean patch scores (1e-4)."""
    golden = np.load(GOLDEN)
    path = tmp_path / "chirp.wav"
    sf.write(path, golden["chirp_waveform"], 16000, subtype="FLOAT")
    prediction = Predictor.from_checkpoint("audioset:yamnet").predict_file(path)
    assert np.abs(prediction.probabilities - golden["chirp_scores"].mean(axis=0)).max() < 1e-4


def test_top_k_per_file_with_audioset_names(tmp_path, yamnet_weights, capsys):
    """Auto mode is file mode for audioset:yamnet: silence is 'Silence'; the CSV names AudioSet classes."""
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(24000, dtype=np.float32), 16000)
    output = tmp_path / "top.csv"
    assert predict.main(["--checkpoint", "audioset:yamnet", str(silent), "--output_csv", str(output)]) == 0
    with open(output, newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["class_1"] == "Silence" and float(row["probability_1"]) > 0.9
    assert "Silence" in capsys.readouterr().out


def test_long_mode_hears_the_demo_cries(long_recording, tmp_path, yamnet_weights):
    """Detection out of the box: 'Baby cry' is several times more probable during the true cries than elsewhere."""
    path, events = long_recording
    windows_csv = tmp_path / "windows.csv"
    assert predict.main(["--checkpoint", "audioset:yamnet", "--long", str(path), "--target_class", CRY,
                         "--windows_csv", str(windows_csv), "--no_progress"]) == 0
    with open(windows_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 83  # 40 s: windows of 0.96 s every 0.48 s
    inside, outside = [], []
    for row in rows:
        centre = (float(row["start_s"]) + float(row["end_s"])) / 2
        during = any(event["onset_s"] < centre < event["offset_s"] for event in events)
        (inside if during else outside).append(float(row[CRY]))
    assert np.mean(inside) > 3 * np.mean(outside)


def test_reference_class_renames_the_reference(long_recording, tmp_path, yamnet_weights):
    """--reference_class babycry scores the demo's reference against YAMNet's cry class (else none would match)."""
    path, events = long_recording
    reference = tmp_path / "ref.csv"
    reference.write_text("file,onset,offset,class\n" + "".join(
        f"{path.name},{event['onset_s']},{event['offset_s']},babycry\n" for event in events))
    counted = {}
    for extra in ([], ["--reference_class", "babycry"]):
        metrics = tmp_path / f"metrics{len(extra)}.json"
        assert predict.main(["--checkpoint", "audioset:yamnet", "--long", str(path), "--target_class", CRY,
                             "--reference", str(reference), "--metrics_json", str(metrics), "--no_progress",
                             *extra]) == 0
        event_based = json.loads(metrics.read_text())["event_based"]
        counted[len(extra)] = event_based["tp"] + event_based["fn"]
    assert counted == {0: 0, 2: len(events)}


def test_zero_shot_checkpoint_describes_yamnet(yamnet_weights, tmp_path, monkeypatch):
    """521 classes, the yamnet front end with zero padding, sigmoid head; no operating point is looked up."""
    checkpoint = zero_shot_checkpoint("audioset:yamnet")
    assert len(checkpoint["class_names"]) == 521 and checkpoint["feature_shape"] == [64, 96]
    assert checkpoint["feature_params"]["frontend"] == "yamnet" and checkpoint["feature_params"]["pad_mode"] == "zeros"
    assert checkpoint["model_args"]["multi_label"] is True
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "operating_point.json").write_text('{"target_class": "Speech", "class_id": 0, '
                                                             '"threshold": 0.9}')
    assert load_operating_point("audioset:yamnet", checkpoint["class_names"]) is None
    assert zero_shot_models() == ["yamnet"]


def test_unknown_model_and_missing_weights_are_clear(tmp_path, monkeypatch, caplog):
    """audioset:<unknown> lists the usable ones; without converted weights the command is named."""
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    assert predict.main(["--checkpoint", "audioset:resnet18", str(wav)]) == 1
    assert "known: audioset:yamnet" in caplog.text
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert predict.main(["--checkpoint", "audioset:yamnet", str(wav)]) == 1
    assert "python -m models.convert yamnet" in caplog.text
