"""Evaluation: score.txt, metrics against hand-computed values, pictures, operating point, errors.

One tiny model is trained once per module (seconds); every test evaluates that checkpoint.
"""
from __future__ import annotations

import csv
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation
from audioclf.checkpoint import model_from_checkpoint
from audioclf.evaluation import (EvaluationError, classification_report_dict, detection_report, operating_point,
                                 predict_list, read_score_file, resolve_target_class, run_evaluation,
                                 threshold_metrics)
from audioclf.listfile import ListEntry, read_list, render_list
from audioclf.training import train
from audioclf.transfer import TransferError
from dataloaders.dataloader import FEATURE_CONFIG, FeatureDataError, SpectrogramDataset
from audioclf.tuning import TuningError
from conftest import write_wav
from tools.synthetic_features import CLASS_NAMES, make_config, make_feature_dataset
from utils import BEST_CHECKPOINT_NAME, Params, load_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Trained:
    root: Path
    features: Path
    config: Path
    checkpoint: Path

    def params(self, **overrides) -> Params:
        """A fresh copy of the config, with ``overrides``."""
        params = Params(self.config)
        params.update(overrides)
        return params


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """A 3-class model (babycry, dog bark, noise) trained for two epochs; target class babycry."""
    root = tmp_path_factory.mktemp("evaluation")
    features = make_feature_dataset(root)
    config = make_config(root, features, epochs=2, target_class="babycry")
    train(Params(config), show_progress=False)
    return Trained(root, features, config, root / "checkpoints" / BEST_CHECKPOINT_NAME)


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory) -> tuple[dict, Path]:
    """``run_evaluation`` on the shared checkpoint, written to its own folder: (metrics, folder)."""
    output_dir = tmp_path_factory.mktemp("scores")
    return run_evaluation(trained.params(), output_dir=output_dir), output_dir


# ---------------------------------------------------------------------------------------
# Metrics against hand-computed values
# ---------------------------------------------------------------------------------------

def one_hot_probabilities(predictions: list[int], n_classes: int) -> np.ndarray:
    """Probabilities whose arg-max is ``predictions``: 0.6 on the predicted class, the rest shared."""
    probabilities = np.full((len(predictions), n_classes), 0.4 / (n_classes - 1), dtype=np.float32)
    probabilities[np.arange(len(predictions)), predictions] = 0.6
    return probabilities


def test_classification_report_matches_hand_computed_example():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    predictions = [0, 0, 1, 1, 2, 2, 2, 0]
    report = classification_report_dict(one_hot_probabilities(predictions, 3), labels, ["a", "b", "c"])

    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    # precision = diagonal / column sum, recall = diagonal / row sum: 2/3, 1/2, 2/3 both ways
    for name, expected in zip("abc", (2 / 3, 1 / 2, 2 / 3)):
        assert report["per_class"][name]["precision"] == pytest.approx(expected)
        assert report["per_class"][name]["recall"] == pytest.approx(expected)
        assert report["per_class"][name]["f1"] == pytest.approx(expected)
    assert [report["per_class"][name]["support"] for name in "abc"] == [3, 2, 3]
    assert report["accuracy"] == pytest.approx(5 / 8)
    assert report["macro_f1"] == pytest.approx(11 / 18)
    assert report["balanced_accuracy"] == pytest.approx(11 / 18)
    assert report["n_clips"] == 8


def test_classification_report_class_without_clips_is_listed_but_not_averaged():
    labels = np.array([0, 0, 1, 1])
    report = classification_report_dict(one_hot_probabilities([0, 0, 1, 2], 3), labels, ["a", "b", "c"])
    assert report["per_class"]["c"] == {"class_id": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # classes a (F1 1) and b (F1 2/3) only; balanced accuracy = mean recall of a and b
    assert report["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert report["balanced_accuracy"] == pytest.approx((1 + 0.5) / 2)


# Validation scores sorted high to low: T T N T N T N N N (T target, N non-target).
TARGET_SCORES = [0.9, 0.8, 0.6, 0.3]
OTHER_SCORES = [0.7, 0.4, 0.2, 0.1, 0.05]


def hand_scores() -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(TARGET_SCORES + OTHER_SCORES)
    return scores, np.array([True] * len(TARGET_SCORES) + [False] * len(OTHER_SCORES))


def test_operating_point_matches_hand_computed_example():
    scores, is_target = hand_scores()
    # At most 1 of 5 non-target clips may reach the threshold: 0.7 is that one, and 0.6 is the
    # lowest threshold still letting only it through (0.4 would let two through).
    # F1 by threshold: 0.9 .40, 0.8 .67, 0.7 .57, 0.6 .75, 0.4 .67, 0.3 .80, 0.2 .73, ... -> 0.3.
    point = operating_point(scores, is_target, max_false_alarm_rate=0.2)
    assert point == {"false_alarm_threshold": pytest.approx(0.6), "best_f1_threshold": pytest.approx(0.3)}
    assert operating_point(scores, is_target, 0.0)["false_alarm_threshold"] == pytest.approx(0.8)

    at = threshold_metrics(scores, is_target, 0.6)
    assert (at["tp"], at["fp"], at["tn"], at["fn"]) == (3, 1, 4, 1)
    assert at["precision"] == pytest.approx(0.75) and at["recall"] == pytest.approx(0.75)
    assert at["f1"] == pytest.approx(0.75) and at["false_alarm_rate"] == pytest.approx(0.2)


def test_operating_point_when_a_non_target_scores_highest():
    scores, is_target = np.array([0.5, 0.9, 0.1]), np.array([True, False, False])
    threshold = operating_point(scores, is_target, 0.0)["false_alarm_threshold"]
    assert 0.9 < threshold < 0.9 + 1e-6  # just above the top non-target score: no false alarm
    assert np.float32(0.9) < np.float32(threshold)  # also where probabilities are float32
    assert threshold_metrics(scores, is_target, threshold)["fp"] == 0


def test_operating_point_needs_both_kinds_of_clips():
    with pytest.raises(EvaluationError, match="target and non-target"):
        operating_point(np.array([0.2, 0.4]), np.array([False, False]), 0.05)


def test_detection_report_takes_thresholds_from_validation_only():
    scores, is_target = hand_scores()
    validation = (np.stack([scores, 1 - scores], axis=1), np.where(is_target, 0, 1))
    # the evaluation list: every score shifted down by 0.05, so fewer clips pass the same threshold
    evaluation_scores = scores - 0.05
    evaluation_list = (np.stack([evaluation_scores, 1 - evaluation_scores], axis=1), np.where(is_target, 0, 1))
    report = detection_report("cry", 0, 0.2, validation, evaluation_list)

    assert report["threshold"] == report["false_alarm_threshold"] == pytest.approx(0.6)
    assert report["best_f1_threshold"] == pytest.approx(0.3)
    assert report["validation"]["at_threshold"]["recall"] == pytest.approx(0.75)
    assert report["evaluation"]["at_threshold"]["threshold"] == pytest.approx(0.6)
    assert report["evaluation"]["at_threshold"]["recall"] == pytest.approx(0.5)  # 0.85, 0.75 pass; 0.55 does not
    assert report["validation"]["roc_auc"] == pytest.approx(1 - 3 / 20)  # 3 of 20 pairs ranked wrongly
    assert report["validation"]["n_target"] == 4 and report["validation"]["n_clips"] == 9


def test_resolve_target_class():
    assert resolve_target_class(["noise", "cry"], None) == 1  # binary: class 1 is the target
    assert resolve_target_class(list(CLASS_NAMES), None) is None  # multi-class: no detection
    assert resolve_target_class(list(CLASS_NAMES), "noise") == 2


# ---------------------------------------------------------------------------------------
# Inference and the written report
# ---------------------------------------------------------------------------------------

def test_predict_list_gives_probabilities_in_list_order(trained):
    params = trained.params()
    dataset = SpectrogramDataset(params.evallist, params.datapath)
    model = model_from_checkpoint(load_checkpoint(trained.checkpoint))
    probabilities, labels = predict_list(model, dataset, torch.device("cpu"), batch_size=5)
    assert probabilities.shape == (len(dataset), len(CLASS_NAMES)) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, dataset.labels.numpy())
    one_by_one, _ = predict_list(model, dataset, torch.device("cpu"), batch_size=1)
    np.testing.assert_allclose(one_by_one, probabilities, atol=1e-5)


def test_score_file_accuracy_equals_its_lines(evaluated, trained):
    metrics, output_dir = evaluated
    rows, accuracy = read_score_file(output_dir / "score.txt")
    lines = (output_dir / "score.txt").read_text().splitlines()
    assert lines[0] == "file\ttrue_class\tpredicted_class\tconfidence"
    assert lines[-1].startswith("# accuracy: ") and not any(line.startswith("#") for line in lines[:-1])

    entries = read_list(trained.params().evallist)
    assert [row["file"] for row in rows] == [entry.feature_file for entry in entries]
    assert [row["true_class"] for row in rows] == [entry.class_name for entry in entries]
    recomputed = np.mean([row["true_class"] == row["predicted_class"] for row in rows])
    assert accuracy == pytest.approx(recomputed, abs=1e-6)
    assert metrics["accuracy"] == pytest.approx(recomputed)
    assert all(1 / len(CLASS_NAMES) - 1e-6 <= float(row["confidence"]) <= 1 for row in rows)


def test_written_metrics_agree_with_probabilities_csv(evaluated):
    metrics, output_dir = evaluated
    with open(output_dir / "probabilities.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["file", "true_class", "predicted_class", *CLASS_NAMES]
    probabilities = np.array([[float(row[name]) for name in CLASS_NAMES] for row in rows])
    labels = np.array([CLASS_NAMES.index(row["true_class"]) for row in rows])

    expected = classification_report_dict(probabilities, labels, CLASS_NAMES)
    on_disk = json.loads((output_dir / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "n_clips"):
        assert on_disk[key] == pytest.approx(expected[key]) if isinstance(expected[key], float) \
            else on_disk[key] == expected[key]
    assert on_disk["class_names"] == list(CLASS_NAMES)
    report = (output_dir / "report.txt").read_text()
    assert "true \\ predicted" in report and "macro-F1" in report and "dog bark" in report
    assert metrics["files"]["score"] == str(output_dir / "score.txt")


def test_operating_point_file_is_computed_on_the_validation_list(evaluated, trained):
    metrics, output_dir = evaluated
    point = json.loads((output_dir / "operating_point.json").read_text())
    assert point["target_class"] == "babycry" and point["class_id"] == 0
    assert point["threshold"] == point["false_alarm_threshold"]
    assert point["max_false_alarm_rate"] == 0.05
    assert point == metrics["detection"]

    params = trained.params()
    model = model_from_checkpoint(load_checkpoint(trained.checkpoint))
    validation = SpectrogramDataset(params.vallist, params.datapath)
    probabilities, labels = predict_list(model, validation, torch.device("cpu"))
    expected = operating_point(probabilities[:, 0], labels == 0, 0.05)
    assert point["false_alarm_threshold"] == pytest.approx(expected["false_alarm_threshold"], abs=1e-6)
    assert point["best_f1_threshold"] == pytest.approx(expected["best_f1_threshold"], abs=1e-6)
    assert point["validation"]["at_threshold"]["false_alarm_rate"] <= 0.05
    for split in ("validation", "evaluation"):
        assert set(point[split]["at_threshold"]) >= {"precision", "recall", "false_alarm_rate"}
        assert point[split]["roc_auc"] is not None and point[split]["average_precision"] is not None


@pytest.mark.parametrize("name", ["confusion_matrix.png", "roc_curve.png", "pr_curve.png"])
def test_pictures_are_real_images(evaluated, name):
    _, output_dir = evaluated
    path = output_dir / name
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert width > 100 and height > 100
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # not a blank canvas


def tensorboard_tags(log_dir: Path) -> set[str]:
    """Every summary tag in the TFRecord event files under ``log_dir``."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in log_dir.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):  # record: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            tags.update(value.tag for value in event.summary.value)
            offset += 12 + length + 4
    return tags


def test_figures_and_pr_curve_go_to_tensorboard(evaluated, trained):
    metrics, _ = evaluated
    log_dir = Path(trained.params().summaries_dir) / "evaluation"
    assert metrics["tensorboard_dir"] == str(log_dir)
    tags = tensorboard_tags(log_dir)
    assert {"evaluation/confusion_matrix", "evaluation/roc_curve", "evaluation/pr_curve",
            "evaluation/accuracy", "evaluation/macro_f1"} <= tags
    assert any(tag.startswith("evaluation/pr_curve/babycry") for tag in tags)


def test_multiclass_without_target_writes_no_operating_point(trained, tmp_path):
    stale = tmp_path / "scores" / "operating_point.json"  # from an earlier run, for another model
    stale.parent.mkdir()
    stale.write_text('{"target_class": "babycry", "class_id": 0, "threshold": 0.5}')
    metrics = run_evaluation(trained.params(target_class=None, summaries_dir=str(tmp_path / "runs")),
                             output_dir=tmp_path / "scores")
    assert metrics["detection"] is None
    assert sorted(path.name for path in (tmp_path / "scores").iterdir()) == [
        "confusion_matrix.png", "metrics.json", "probabilities.csv", "report.txt", "score.txt"]


# ---------------------------------------------------------------------------------------
# The script, end to end
# ---------------------------------------------------------------------------------------

def test_main_end_to_end(trained, capsys, monkeypatch):
    import audioclf.evaluation as module

    locations = []

    def spy(path, map_location=None):
        locations.append(map_location)
        return load_checkpoint(path, map_location=map_location)

    monkeypatch.setattr(module, "load_checkpoint", spy)
    assert evaluation.main(["--config_path", str(trained.config), "--no_progress"]) == 0
    assert locations == ["cpu"]

    scores = trained.root / "checkpoints" / "scores"
    expected = {"score.txt", "probabilities.csv", "report.txt", "metrics.json", "confusion_matrix.png",
                "roc_curve.png", "pr_curve.png", "operating_point.json"}
    assert expected <= {path.name for path in scores.iterdir()}
    _, accuracy = read_score_file(scores / "score.txt")
    metrics = json.loads((scores / "metrics.json").read_text())
    printed = capsys.readouterr().out
    assert f"accuracy {accuracy:.4f}" in printed and f"macro-F1 {metrics['macro_f1']:.4f}" in printed
    for name in ("score.txt", "report.txt", "confusion_matrix.png", "pr_curve.png", "operating_point.json"):
        assert str(scores / name) in printed


def test_flags_choose_checkpoint_and_target_and_a_cuda_checkpoint_runs_on_cpu(trained, tmp_path, monkeypatch,
                                                                             capsys):
    checkpoint = load_checkpoint(trained.checkpoint)
    cuda_checkpoint = tmp_path / "trained_on_gpu.pth.tar"
    with monkeypatch.context() as patch:  # tag every tensor as living on cuda:0, as a GPU run would
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, cuda_checkpoint)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_checkpoint, weights_only=True)  # what a loader without map_location hits
    # a config for another run folder, no target class, model fields not used
    config = make_config(tmp_path, trained.features, checkpoint_dir=str(tmp_path / "elsewhere"),
                         summaries_dir=str(tmp_path / "runs"), model="resnet18", device="cpu")
    assert evaluation.main(["--config_path", str(config), "--checkpoint", str(cuda_checkpoint),
                            "--target_class", "noise", "--no_progress"]) == 0
    scores = tmp_path / "elsewhere" / "scores"
    point = json.loads((scores / "operating_point.json").read_text())
    assert point["target_class"] == "noise" and point["class_id"] == 2
    assert point["checkpoint"] == str(cuda_checkpoint)
    metrics = json.loads((scores / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(cuda_checkpoint) and metrics["n_clips"] == 12
    assert "noise: threshold" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

def test_missing_checkpoint_names_path_and_suggests_training(trained, tmp_path, caplog):
    missing = tmp_path / "nothing_here.pth.tar"
    with pytest.raises(FileNotFoundError) as error:
        run_evaluation(trained.params(), checkpoint_path=missing)
    assert str(missing) in str(error.value) and "train.py" in str(error.value)

    config = make_config(tmp_path, trained.features, checkpoint_dir=str(tmp_path / "empty_run"))
    assert evaluation.main(["--config_path", str(config), "--no_progress"]) == 1
    assert str(tmp_path / "empty_run" / BEST_CHECKPOINT_NAME) in caplog.text and "train.py" in caplog.text


def test_class_count_mismatch_names_both(trained, tmp_path):
    other = make_feature_dataset(tmp_path, class_names=("babycry", "noise"), per_class=(1, 1, 2))
    params = trained.params(datapath=str(other), evallist=str(other / "filenames/evaluation.txt"))
    with pytest.raises(EvaluationError) as error:
        run_evaluation(params, output_dir=tmp_path / "scores")
    message = str(error.value)
    assert "3 classes" in message and "2 classes" in message
    assert str(trained.checkpoint) in message and str(other / "filenames/evaluation.txt") in message
    assert not (tmp_path / "scores").exists()


def write_list(path: Path, entries: list[ListEntry], trained: Trained) -> Path:
    """A list file at ``path`` with the training feature config beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_list(entries))
    (path.parent / FEATURE_CONFIG).write_text((trained.features / "filenames" / FEATURE_CONFIG).read_text())
    return path


def test_list_without_feature_config_is_checked_line_by_line(trained, tmp_path):
    entries = [entry for entry in read_list(trained.features / "filenames" / "evaluation.txt") if entry.class_id < 2]
    subset = tmp_path / "subset" / "evaluation.txt"  # classes 0 and 1 only, no feature_config.json
    subset.parent.mkdir()
    subset.write_text(render_list(entries))
    metrics = run_evaluation(trained.params(evallist=str(subset), target_class=None), output_dir=tmp_path / "scores")
    assert metrics["n_clips"] == 8 and metrics["per_class"]["noise"]["support"] == 0

    subset.write_text(render_list([ListEntry(entries[0].feature_file, 0, "cat")]))
    with pytest.raises(EvaluationError, match=r"evaluation.txt:1: class 0 'cat' is not class 0 of the checkpoint"):
        run_evaluation(trained.params(evallist=str(subset)), output_dir=tmp_path / "scores")
    subset.write_text("\n" + render_list([entries[0], ListEntry(entries[1].feature_file, 1, "cat")]))
    with pytest.raises(EvaluationError, match=r"evaluation.txt:3: class 1 'cat' is not class 1 of the checkpoint"):
        run_evaluation(trained.params(evallist=str(subset)), output_dir=tmp_path / "scores")  # line 3 of the file


def test_a_list_without_feature_config_is_checked_against_the_block_by_the_checkpoints_features(trained, tmp_path):
    """A recipe config (a "features" block) on a hand-made list with no feature_config.json beside it:
    the features the checkpoint was trained on (checked against the block then) stand for the list's."""
    entries = read_list(trained.features / "filenames" / "evaluation.txt")
    subset = tmp_path / "subset" / "evaluation.txt"
    subset.parent.mkdir()
    subset.write_text(render_list(entries))
    block = {"n_fft": 512, "n_mels": 32, "n_frames": 40}  # make_feature_dataset's features
    metrics = run_evaluation(trained.params(evallist=str(subset), features=block), output_dir=tmp_path / "scores")
    assert metrics["n_clips"] == len(entries)
    with pytest.raises(TransferError, match=rf"the features of {re.escape(str(trained.checkpoint))} .*differ from "
                                            r"the \"features\" block of .*: n_frames 40 \(config: 50\)"):
        run_evaluation(trained.params(evallist=str(subset), features={**block, "n_frames": 50}),
                       output_dir=tmp_path / "scores")


def test_empty_evaluation_list(trained, tmp_path):
    empty = write_list(tmp_path / "lists" / "evaluation.txt", [], trained)
    with pytest.raises(FeatureDataError, match="empty") as error:
        run_evaluation(trained.params(evallist=str(empty)), output_dir=tmp_path / "scores")
    assert str(empty) in str(error.value)


def test_missing_evaluation_list_names_the_key(trained, tmp_path):
    missing = tmp_path / "no_such_list.txt"
    with pytest.raises(FileNotFoundError) as error:
        run_evaluation(trained.params(evallist=str(missing)), output_dir=tmp_path / "scores")
    assert str(missing) in str(error.value) and "evallist" in str(error.value)


@pytest.mark.parametrize("content, expected", [
    (b"just-one-field.npy\n", "evaluation.txt:1"),  # malformed line: file and line named
    (b"\xff\xfe\x00binary\x00garbage\n", "cannot read"),  # not text at all
])
def test_unreadable_evaluation_list(trained, tmp_path, content, expected):
    bad = write_list(tmp_path / "lists" / "evaluation.txt", [], trained)
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=expected) as error:
        run_evaluation(trained.params(evallist=str(bad)), output_dir=tmp_path / "scores")
    assert str(bad) in str(error.value)


def test_missing_feature_files_are_named(trained, tmp_path, caplog):
    entries = read_list(trained.features / "filenames" / "evaluation.txt")
    entries += [ListEntry("babycry/gone_1.npy", 0, "babycry"), ListEntry("noise/gone_2.npy", 2, "noise")]
    listed = write_list(tmp_path / "lists" / "evaluation.txt", entries, trained)
    with pytest.raises(FeatureDataError) as error:
        run_evaluation(trained.params(evallist=str(listed)), output_dir=tmp_path / "scores")
    assert "2 feature file(s)" in str(error.value)
    assert "gone_1.npy" in str(error.value) and "gone_2.npy" in str(error.value)


def test_unknown_target_class_lists_the_classes(trained, tmp_path, caplog):
    with pytest.raises(EvaluationError) as error:
        run_evaluation(trained.params(), target_class="cat", output_dir=tmp_path / "scores")
    assert "'cat'" in str(error.value)
    assert all(name in str(error.value) for name in CLASS_NAMES)

    assert evaluation.main(["--config_path", str(trained.config), "--target_class", "cat", "--no_progress"]) == 1
    assert "unknown target class 'cat'" in caplog.text and "dog bark" in caplog.text


# ---------------------------------------------------------------------------------------
# Long-mode settings from recordings (detection_soundscapes); the full path is in test_predict.py
# ---------------------------------------------------------------------------------------

def test_detection_soundscapes_keys_come_together_and_need_a_target(trained, tmp_path):
    with pytest.raises(EvaluationError, match='"detection_soundscapes" is set but "detection_reference" is not'):
        run_evaluation(trained.params(detection_soundscapes=str(tmp_path)), output_dir=tmp_path / "scores")
    with pytest.raises(EvaluationError, match='"detection_reference" is set but "detection_soundscapes" is not'):
        run_evaluation(trained.params(detection_reference=str(tmp_path / "a.csv")), output_dir=tmp_path / "scores")
    with pytest.raises(EvaluationError, match='set "target_class"'):
        run_evaluation(trained.params(target_class=None, detection_soundscapes=str(tmp_path),
                                      detection_reference=str(tmp_path / "a.csv")), output_dir=tmp_path / "scores")


def test_detection_reference_must_name_the_recordings(trained, tmp_path):
    recordings = tmp_path / "recordings"
    write_wav(recordings / "a.wav", duration=2.0)
    reference = tmp_path / "reference.csv"
    reference.write_text("file,onset_s,offset_s,class\nelsewhere.wav,0.5,1.0,babycry\n")
    params = trained.params(detection_soundscapes=str(recordings), detection_reference=str(reference))
    with pytest.raises(TuningError, match=r"names files that are not under .*recordings: elsewhere\.wav"):
        run_evaluation(params, output_dir=tmp_path / "scores")
    reference.write_text("file,onset_s,offset_s,class\na.wav,0.5,1.0,dog_bark\n")
    with pytest.raises(TuningError, match="has no 'babycry' events"):
        run_evaluation(params, output_dir=tmp_path / "scores")
    with pytest.raises(TuningError, match='"detection_soundscapes" folder not found'):
        run_evaluation(trained.params(detection_soundscapes=str(tmp_path / "nowhere"),
                                      detection_reference=str(reference)), output_dir=tmp_path / "scores")
