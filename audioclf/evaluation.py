"""Evaluate a trained checkpoint on the evaluation list: scores, metrics, pictures, operating point.

``run_evaluation(params)`` is what ``evaluation.py`` runs. The model is rebuilt from the
checkpoint alone (``model_args``, weights, normalisation, class names), loaded with
``map_location="cpu"`` so a checkpoint trained on CUDA evaluates anywhere. Everything is
written to ``<checkpoint_dir>/scores/``. A clip's probabilities are the mean over the windows that
cover it (``audioclf.windows``: ``crop_frames`` frames every ``crop_hop_frames``, stored in the
checkpoint), the same as ``predict.py`` gives for its audio; a fixed-length clip is one window.

``score.txt``
    Tab-separated, UTF-8. The first line is the header
    ``file<TAB>true_class<TAB>predicted_class<TAB>confidence``; then one line per clip of the
    evaluation list, in list order: the feature file as written in the list, the true and the
    predicted class name, and the softmax probability of the predicted class with six decimals.
    The last line is the only one starting with ``#``: ``# accuracy: 0.937500`` (fraction of
    clips whose predicted class is the true one, six decimals). A field containing a tab, a
    double quote or a line break is double-quoted CSV-style. Read it with
    ``pandas.read_csv(path, sep="\\t", comment="#")``, or ``read_score_file(path)``.
``probabilities.csv``
    Comma-separated with a header: ``file,true_class,predicted_class,<class 0>,<class 1>,...``;
    one row per clip with the softmax probability of every class (class names as in the
    checkpoint, columns in class-ID order), written exactly (the shortest decimal that reads
    back as the same float32), so thresholds from ``operating_point.json`` apply to them as is.
``report.txt``
    Human-readable: per-class precision, recall, F1 and support (scikit-learn's
    ``classification_report``), accuracy, balanced accuracy, macro-F1, the confusion matrix
    (rows: true class, columns: predicted class) and, for detection, the operating point.
``confusion_matrix.png``
    The confusion matrix (counts).
``metrics.json``
    Everything above, machine-readable (see ``run_evaluation`` for the keys).

Detection (binary tasks, or a named target class such as ``babycry``): the score of a clip is
the softmax probability of the target class, and a clip counts as a detection when
``score >= threshold``. Also written:

``roc_curve.png``, ``pr_curve.png``
    ROC and precision-recall curves of the evaluation list.
``operating_point.json``
    Thresholds chosen on the **validation** list, then measured on both lists:
    ``{"target_class", "class_id", "rule", "threshold", "best_f1_threshold",
    "false_alarm_threshold", "max_false_alarm_rate", "validation": {...}, "evaluation": {...},
    "checkpoint"}`` (``checkpoint``: the evaluated file the thresholds belong to).
    ``threshold`` (the one to deploy) is ``false_alarm_threshold``: the lowest threshold whose
    false-alarm rate (false positive rate over non-target validation clips) is at most
    ``max_false_alarm_rate``. ``best_f1_threshold`` maximises F1 on the validation list.
    ``validation`` and ``evaluation`` each hold ``n_clips``, ``n_target``, ``roc_auc``,
    ``average_precision`` and, under ``at_threshold`` / ``at_best_f1_threshold``, the
    ``precision``, ``recall``, ``f1``, ``false_alarm_rate`` and ``tp``/``fp``/``tn``/``fn``.
    For a binary task with no target class named, the target is class ID 1. A run without
    detection removes these three files if an earlier run left them.

    With ``detection_soundscapes`` (a folder of recordings, e.g. validation soundscapes from
    ``tools.soundscapes``) and ``detection_reference`` (their events CSV), it also holds
    ``long_mode``: the long-mode detection settings ``predict.py --long`` uses by default,
    chosen on those recordings (``audioclf/tuning.py``: windows every ``detection_hop_seconds``,
    every combination of a small grid, lowest DCASE 2017 event error rate, then highest F1):
    ``hop_seconds``, ``threshold``, ``threshold_low`` (null: 0.7 x threshold), ``median_filter``,
    ``merge_gap``, ``min_duration``, ``edge_trim``, ``selected_by``, ``n_candidates``, ``recordings``,
    ``reference``, ``n_recordings``, ``audio_seconds``, ``n_reference_events`` and ``measured``
    (``events.score_events`` on those recordings: ``dcase2017``, ``event_based``, ...).

When ``summaries_dir`` is set, the confusion matrix and curves also go to TensorBoard under
``<summaries_dir>/evaluation`` (images, a PR curve and scalars, at the checkpoint's epoch).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from torch import nn
from tqdm import tqdm

from audioclf.checkpoint import (BEST_CHECKPOINT_NAME, CONFUSION_MATRIX_FILE, DETECTION_FILES, METRICS_FILE,
                                 OPERATING_POINT_FILE, PR_CURVE_FILE, PROBABILITIES_FILE, REPORT_FILE, ROC_CURVE_FILE,
                                 SCORE_FILE, check_required_keys, checkpoint_windows, load_checkpoint,
                                 model_from_checkpoint, scores_dir)
from audioclf.config import Params
from audioclf.events import detection_grid
from audioclf.files import atomic_write, atomic_write_json, atomic_write_text, check_writable, make_folder
from audioclf.inference import LONG_MODE_KEY, Predictor
from audioclf.listfile import FEATURE_CONFIG
from audioclf.frontend import FeatureParams
from audioclf.runtime import amp_dtype_for, fold_batch_norms, resolve_device
from audioclf.transfer import check_features
from audioclf.tuning import load_tuning_set, tune_on_recordings
from audioclf.windows import default_hop, iter_window_outputs, pool_windows
from dataloaders.crops import window_loader
from dataloaders.dataloader import SpectrogramDataset

log = logging.getLogger(__name__)

SCORE_HEADER = ("file", "true_class", "predicted_class", "confidence")
ACCURACY_PREFIX = "# accuracy: "
DETECTION_RULE = "p(target_class) >= threshold"


class EvaluationError(ValueError):
    """Evaluation inputs that do not fit together; the message says which and how to fix it."""


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

def default_checkpoint_path(params: Params) -> Path:
    """``<checkpoint_dir>/model_best.pth.tar``."""
    return Path(params.checkpoint_dir) / BEST_CHECKPOINT_NAME


def load_evaluation_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint on the CPU and check it holds what evaluation needs."""
    return check_required_keys(load_checkpoint(path, map_location="cpu"), path)


def load_list(list_file: str | Path, datapath: str | Path, key: str) -> SpectrogramDataset:
    """The dataset of a split list; unreadable lists raise ``EvaluationError`` naming config ``key``."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f'"{key}" list file not found: {list_file} (run preprocessingBabyCrying.py first, '
                                "or fix the path in the config)")
    try:
        return SpectrogramDataset(list_file, datapath)
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f'cannot read the "{key}" list {list_file}: {error}') from None


def check_matches_checkpoint(dataset: SpectrogramDataset, checkpoint: dict, checkpoint_path: str | Path) -> None:
    """The list's classes and feature shape must be the ones the checkpoint was trained on."""
    trained, listed = list(checkpoint["class_names"]), list(dataset.class_names)
    if Path(dataset.info.source).name != FEATURE_CONFIG:
        # No feature config beside the list: its class names come from its own lines and may
        # cover only some classes, so check each line against the checkpoint instead.
        for entry in dataset.entries:
            if not (0 <= entry.class_id < len(trained) and trained[entry.class_id] == entry.class_name):
                raise EvaluationError(
                    f"{dataset.list_file}:{entry.line_number}: class {entry.class_id} {entry.class_name!r} is not class "
                    f"{entry.class_id} of the checkpoint {checkpoint_path}, whose {len(trained)} classes are {trained}")
        listed = trained
    if len(trained) != len(listed):
        raise EvaluationError(
            f"the checkpoint {checkpoint_path} has {len(trained)} classes {trained}, but the list "
            f"{dataset.list_file} has {len(listed)} classes {listed} (from {dataset.info.source}); evaluate "
            "with the lists the model was trained for")
    if trained != listed:
        raise EvaluationError(
            f"the checkpoint {checkpoint_path} has classes {trained}, but the list {dataset.list_file} has "
            f"{listed} (from {dataset.info.source}); class IDs must mean the same classes")
    # Whole clips and fixed-length features of the same front end both hold frames of the same
    # recording log-mel, so either can be scored with the checkpoint's windows.
    trained_params, listed_params = checkpoint.get("feature_params"), dataset.info.feature_params
    n_mels = checkpoint["feature_shape"][0]
    n_frames = (trained_params or {}).get("n_frames", checkpoint["feature_shape"][1])
    if dataset.n_mels != n_mels or (not dataset.variable_length and dataset.n_frames != n_frames):
        shape = f"({dataset.n_mels}, {'T' if dataset.variable_length else dataset.n_frames})"
        raise EvaluationError(
            f"features of {dataset.list_file} have shape {shape} (n_mels, n_frames), but the checkpoint "
            f"{checkpoint_path} was trained on ({n_mels}, {n_frames}); preprocess with the training settings")
    if trained_params and listed_params:
        differing = FeatureParams.from_dict(trained_params).differences(FeatureParams.from_dict(listed_params),
                                                                       ignore=("max_seconds",))
        if differing:
            raise EvaluationError(
                f"features of {dataset.list_file} were made with other front-end settings than the checkpoint "
                f"{checkpoint_path} was trained on (differing: {differing}); preprocess with the training settings")


def check_detection_keys(params: Params, class_id: int | None) -> None:
    """``detection_soundscapes`` and ``detection_reference`` come together, and with a detection target."""
    soundscapes, reference = params.detection_soundscapes, params.detection_reference
    if (soundscapes is None) != (reference is None):
        given, missing = ("detection_soundscapes", "detection_reference") if reference is None else (
            "detection_reference", "detection_soundscapes")
        raise EvaluationError(f'"{given}" is set but "{missing}" is not; give both (the recordings and their '
                              "reference events CSV) or neither")
    if soundscapes is not None and class_id is None:
        raise EvaluationError('"detection_soundscapes" tunes the detection of a target class: set "target_class" '
                              "(or pass --target_class)")


def resolve_target_class(class_names: Sequence[str], target_class: str | None) -> int | None:
    """Class ID of the detection target: the named class, class 1 of a binary task, else None."""
    if target_class is None:
        return 1 if len(class_names) == 2 else None
    if target_class not in class_names:
        raise EvaluationError(f"unknown target class {target_class!r}; the model's classes are {list(class_names)}")
    return list(class_names).index(target_class)


# ---------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------

@torch.inference_mode()
def predict_list(model: nn.Module, dataset: SpectrogramDataset, device: torch.device, batch_size: int = 64,
                 num_workers: int = 0, amp: bool = True, show_progress: bool = False, window: int | None = None,
                 hop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(N, C)`` float32 and labels ``(N,)`` int64 for every clip, in list order.

    A clip's probabilities are the mean over its windows of ``window`` frames (default the
    features' ``n_frames``) every ``hop`` (default half a window), as ``audioclf.windows`` cuts them.
    """
    window = window or dataset.n_frames
    hop = hop or default_hop(window)
    model = model.to(device).eval()
    loader = window_loader(dataset, window, hop, batch_size, num_workers=num_workers,
                           pin_memory=device.type == "cuda")
    batches = tqdm(loader, desc=f"evaluate {dataset.list_file.name}", unit="batch", leave=False,
                   disable=not show_progress)
    probabilities, labels = [], []
    for output, counts in iter_window_outputs(model, batches, device, amp_dtype_for(device, amp),
                                              max_windows=batch_size):
        probabilities.append(pool_windows(output.probabilities, counts).cpu())
        labels.append(output.targets.cpu())
    return torch.cat(probabilities).numpy(), torch.cat(labels).numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------
# Metrics (scikit-learn)
# ---------------------------------------------------------------------------------------

def classification_report_dict(probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1/support and the confusion matrix.

    ``probabilities``: ``(N, C)``; ``labels``: ``(N,)`` class IDs. The prediction is the arg-max.
    ``confusion_matrix[i][j]`` counts clips of true class ``i`` predicted as ``j``. Macro-F1 and
    balanced accuracy average over the classes present in ``labels`` (zero-support classes
    are listed per class but not averaged).
    """
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    predictions = probabilities.argmax(axis=1)
    class_ids = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=class_ids, zero_division=0)
    present = sorted(set(labels.tolist()))
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected, handled above
        warnings.simplefilter("ignore", UserWarning)
        balanced = skm.balanced_accuracy_score(labels, predictions)
    return {
        "n_clips": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(skm.f1_score(labels, predictions, labels=present, average="macro", zero_division=0)),
        "per_class": {name: {"class_id": index, "precision": float(precision[index]),
                             "recall": float(recall[index]), "f1": float(f1[index]),
                             "support": int(support[index])}
                      for index, name in enumerate(class_names)},
        "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=class_ids).tolist(),
    }


def threshold_metrics(scores: np.ndarray, is_target: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1, false-alarm rate and counts when ``score >= threshold`` is a detection."""
    is_target = np.asarray(is_target, dtype=bool)
    detected = np.asarray(scores) >= threshold
    tn, fp, fn, tp = skm.confusion_matrix(is_target, detected, labels=[False, True]).ravel().tolist()
    return {
        "threshold": float(threshold),
        "precision": float(skm.precision_score(is_target, detected, zero_division=0)),
        "recall": float(skm.recall_score(is_target, detected, zero_division=0)),
        "f1": float(skm.f1_score(is_target, detected, zero_division=0)),
        "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def _has_both(is_target: np.ndarray) -> bool:
    return bool(is_target.any()) and not bool(is_target.all())


def ranking_metrics(scores: np.ndarray, is_target: np.ndarray) -> dict:
    """ROC-AUC and average precision of ``scores`` (None when only one side is present)."""
    is_target = np.asarray(is_target, dtype=bool)
    both = _has_both(is_target)
    return {
        "n_clips": int(len(is_target)),
        "n_target": int(is_target.sum()),
        "roc_auc": float(skm.roc_auc_score(is_target, scores)) if both else None,
        "average_precision": float(skm.average_precision_score(is_target, scores)) if both else None,
    }


def operating_point(scores: np.ndarray, is_target: np.ndarray, max_false_alarm_rate: float) -> dict:
    """Thresholds on detection ``scores``: ``{"best_f1_threshold", "false_alarm_threshold"}``.

    ``false_alarm_threshold`` is the lowest threshold (highest recall) whose false-alarm rate,
    the fraction of non-target clips with ``score >= threshold``, is at most
    ``max_false_alarm_rate``; when even the top score is a non-target's, it is the next float32
    above the highest non-target score. ``best_f1_threshold`` maximises F1 (the lowest such
    threshold on ties). Both are scores of the given clips, so they apply to lists like it.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_target = np.asarray(is_target, dtype=bool)
    if not _has_both(is_target):
        raise EvaluationError(f"an operating point needs target and non-target clips; got {int(is_target.sum())} "
                              f"target and {int((~is_target).sum())} non-target clips")
    precision, recall, thresholds = skm.precision_recall_curve(is_target, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best_f1_threshold = float(thresholds[int(np.argmax(f1))])

    false_positive_rate, _, roc_thresholds = skm.roc_curve(is_target, scores, drop_intermediate=False)
    # roc_thresholds decrease (the first is +inf), so the false-positive rate never decreases.
    last_allowed = int(np.searchsorted(false_positive_rate, max_false_alarm_rate + 1e-12, side="right")) - 1
    false_alarm_threshold = float(roc_thresholds[last_allowed])
    if not math.isfinite(false_alarm_threshold):
        # The next float32 above the top non-target score: above it in float32 and float64 alike,
        # since deployed models compare float32 probabilities with the threshold.
        top = np.float32(scores[~is_target].max())
        false_alarm_threshold = float(np.nextafter(top, np.float32(np.inf)))
    return {"best_f1_threshold": best_f1_threshold, "false_alarm_threshold": false_alarm_threshold}


def detection_report(target_class: str, class_id: int, max_false_alarm_rate: float,
                     validation: tuple[np.ndarray, np.ndarray], evaluation: tuple[np.ndarray, np.ndarray]) -> dict:
    """The ``operating_point.json`` content from validation and evaluation ``(probabilities, labels)``.

    Thresholds come from the validation list only and are then measured on both lists.
    """
    def scores_of(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(probabilities)[:, class_id], np.asarray(labels) == class_id

    try:
        chosen = operating_point(*scores_of(*validation), max_false_alarm_rate)
    except EvaluationError as error:
        raise EvaluationError(f"validation list, target class {target_class!r}: {error}") from None

    def measured(probabilities: np.ndarray, labels: np.ndarray) -> dict:
        scores, is_target = scores_of(probabilities, labels)
        return {**ranking_metrics(scores, is_target),
                "at_threshold": threshold_metrics(scores, is_target, chosen["false_alarm_threshold"]),
                "at_best_f1_threshold": threshold_metrics(scores, is_target, chosen["best_f1_threshold"])}

    return {"target_class": target_class, "class_id": class_id, "rule": DETECTION_RULE,
            "threshold": chosen["false_alarm_threshold"], **chosen, "max_false_alarm_rate": max_false_alarm_rate,
            "validation": measured(*validation), "evaluation": measured(*evaluation)}


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------

def _tsv_line(fields: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter="\t", lineterminator="\n").writerow(fields)
    return buffer.getvalue()


def score_file_text(files: Sequence[str], probabilities: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str]) -> str:
    """The content of ``score.txt`` (format in the module docstring)."""
    predictions = probabilities.argmax(axis=1)
    lines = [_tsv_line(SCORE_HEADER)]
    for name, label, predicted, row in zip(files, labels, predictions, probabilities):
        lines.append(_tsv_line((name, class_names[label], class_names[predicted], f"{row[predicted]:.6f}")))
    accuracy = float(np.mean(predictions == labels))
    lines.append(f"{ACCURACY_PREFIX}{accuracy:.6f}\n")
    return "".join(lines)


def read_score_file(path: str | Path) -> tuple[list[dict[str, str]], float]:
    """Parse ``score.txt``: the rows (dicts keyed by the header) and the trailing accuracy."""
    text = Path(path).read_text(encoding="utf-8")
    body, _, trailer = text.rstrip("\n").rpartition("\n")
    if not trailer.startswith(ACCURACY_PREFIX):
        raise ValueError(f"{path}: last line should start with {ACCURACY_PREFIX!r}, got {trailer!r}")
    rows = list(csv.DictReader(io.StringIO(body + "\n"), delimiter="\t"))
    return rows, float(trailer[len(ACCURACY_PREFIX):])


def probabilities_csv_text(files: Sequence[str], probabilities: np.ndarray, labels: np.ndarray,
                           class_names: Sequence[str]) -> str:
    """The content of ``probabilities.csv``: file, true and predicted class, one column per class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "true_class", "predicted_class", *class_names])
    for name, label, row in zip(files, labels, probabilities):
        writer.writerow([name, class_names[label], class_names[int(row.argmax())], *(_exact(p) for p in row)])
    return buffer.getvalue()


def _exact(probability: np.floating) -> str:
    """Shortest decimal that reads back as the same float32, e.g. ``0.70557696``."""
    return np.format_float_positional(np.float32(probability), trim="-")


def confusion_matrix_text(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """An aligned text table: rows are true classes, columns predicted classes."""
    corner = "true \\ predicted"
    header = [corner, *class_names]
    rows = [[name, *(str(count) for count in counts)] for name, counts in zip(class_names, matrix)]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) if column else cell.ljust(width)
                               for column, (cell, width) in enumerate(zip(row, widths)))
                     for row in [header, *rows]) + "\n"


def long_mode_text(long_mode: dict) -> str:
    """Two lines: the long-mode settings chosen on recordings, and their DCASE 2017 scores there."""
    dcase = long_mode["measured"]["dcase2017"]
    return (f"long mode (predict.py --long) on {long_mode['n_recordings']} recordings of {long_mode['recordings']} "
            f"({long_mode['audio_seconds'] / 60:.1f} min, {long_mode['n_reference_events']} events): hop "
            f"{long_mode['hop_seconds']:g} s, threshold {long_mode['threshold']:g}, median filter "
            f"{long_mode['median_filter']} windows, merge gap {long_mode['merge_gap']:g} s, min duration "
            f"{long_mode['min_duration']:g} s, edge trim {long_mode.get('edge_trim', 0.0):g} s\n"
            f"  chosen by {long_mode['selected_by']} of {long_mode['n_candidates']}: error rate "
            f"{dcase['error_rate']:.4f}  F1 {dcase['f1']:.4f}  false alarms {dcase['false_alarms_per_hour']:.1f} per hour")


def report_text(report: dict, class_names: Sequence[str], labels: np.ndarray, predictions: np.ndarray,
                detection: dict | None, checkpoint_path: str | Path, list_file: str | Path) -> str:
    """The human-readable ``report.txt``."""
    parts = [f"checkpoint: {checkpoint_path}\nevaluation list: {list_file} ({report['n_clips']} clips)\n",
             skm.classification_report(labels, predictions, labels=list(range(len(class_names))),
                                       target_names=list(class_names), digits=4, zero_division=0),
             f"accuracy           {report['accuracy']:.4f}\n"
             f"balanced accuracy  {report['balanced_accuracy']:.4f}\n"
             f"macro-F1           {report['macro_f1']:.4f}\n",
             "confusion matrix (rows: true class, columns: predicted class)\n"
             + confusion_matrix_text(report["confusion_matrix"], class_names)]
    if detection is not None:
        lines = [f"detection of {detection['target_class']!r} (rule: {detection['rule']}; thresholds from the "
                 "validation list)",
                 f"threshold {detection['threshold']:.6f} (false-alarm rate <= {detection['max_false_alarm_rate']})"
                 f", best-F1 threshold {detection['best_f1_threshold']:.6f}"]
        for split in ("validation", "evaluation"):
            values = detection[split]
            auc = "n/a" if values["roc_auc"] is None else f"{values['roc_auc']:.4f}"
            ap = "n/a" if values["average_precision"] is None else f"{values['average_precision']:.4f}"
            lines.append(f"{split}: ROC-AUC {auc}, average precision {ap}")
            for key in ("at_threshold", "at_best_f1_threshold"):
                at = values[key]
                lines.append(f"  {key:<21} precision {at['precision']:.4f}  recall {at['recall']:.4f}  "
                             f"F1 {at['f1']:.4f}  false-alarm rate {at['false_alarm_rate']:.4f}")
        if detection.get(LONG_MODE_KEY) is not None:
            lines.append(long_mode_text(detection[LONG_MODE_KEY]))
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# Pictures (matplotlib's object API: no pyplot state, no backend switch)
# ---------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str]):
    """Confusion-matrix figure (counts; rows true, columns predicted)."""
    size = 3.0 + 0.5 * len(class_names)
    figure = _figure(size + 1.0, size)
    axes = figure.add_subplot()
    skm.ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names)).plot(
        ax=axes, cmap="Blues", colorbar=True, xticks_rotation=45 if len(class_names) > 3 else "horizontal")
    axes.set_title("Confusion matrix (evaluation list)")
    return figure


def plot_roc_curve(scores: np.ndarray, is_target: np.ndarray, target_class: str, threshold: float | None = None):
    """ROC-curve figure of detection ``scores``, marking the false-alarm rate at ``threshold``."""
    figure = _figure(5.0, 5.0)
    axes = figure.add_subplot()
    skm.RocCurveDisplay.from_predictions(is_target, scores, ax=axes, name=target_class, plot_chance_level=True)
    if threshold is not None:
        at = threshold_metrics(scores, is_target, threshold)
        axes.plot([at["false_alarm_rate"]], [at["recall"]], "o", color="tab:red",
                  label=f"threshold {threshold:.3f}")
        axes.legend(loc="lower right")
    axes.set_xlabel("False-alarm rate (false positive rate)")
    axes.set_ylabel("Recall (true positive rate)")
    axes.set_title(f"ROC: {target_class} (evaluation list)")
    return figure


def plot_pr_curve(scores: np.ndarray, is_target: np.ndarray, target_class: str, threshold: float | None = None):
    """Precision-recall figure of detection ``scores``, marking the point at ``threshold``."""
    figure = _figure(5.0, 5.0)
    axes = figure.add_subplot()
    skm.PrecisionRecallDisplay.from_predictions(is_target, scores, ax=axes, name=target_class,
                                                plot_chance_level=True)
    if threshold is not None:
        at = threshold_metrics(scores, is_target, threshold)
        axes.plot([at["recall"]], [at["precision"]], "o", color="tab:red", label=f"threshold {threshold:.3f}")
        axes.legend(loc="lower left")
    axes.set_xlabel("Recall")
    axes.set_ylabel("Precision")
    axes.set_title(f"Precision-recall: {target_class} (evaluation list)")
    return figure


def render_figure(figure) -> np.ndarray:
    """Draw a matplotlib figure once: RGB pixels ``(H, W, 3)`` uint8 (for the PNG and TensorBoard)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG encoding of RGB pixels ``(H, W, 3)`` uint8."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def log_to_tensorboard(summaries_dir: str | Path, step: int, report: dict, images: dict[str, np.ndarray],
                       detection: dict | None = None, scores: np.ndarray | None = None,
                       is_target: np.ndarray | None = None) -> Path:
    """Scalars, pictures (RGB ``(H, W, 3)``) and the PR curve under ``<summaries_dir>/evaluation``."""
    from tensorboardX import SummaryWriter

    log_dir = Path(summaries_dir) / "evaluation"
    writer = SummaryWriter(str(log_dir))
    try:
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            writer.add_scalar(f"evaluation/{key}", report[key], step)
        for name, pixels in images.items():
            writer.add_image(f"evaluation/{name}", pixels, step, dataformats="HWC")
        if detection is not None and scores is not None and is_target is not None:
            target = detection["target_class"]
            writer.add_pr_curve(f"evaluation/pr_curve/{target}", np.asarray(is_target, dtype=np.int64),
                                np.asarray(scores, dtype=np.float32), step)
            for key in ("roc_auc", "average_precision"):
                if detection["evaluation"][key] is not None:
                    writer.add_scalar(f"evaluation/{key}/{target}", detection["evaluation"][key], step)
    finally:
        writer.close()
    return log_dir


def write_report(output_dir: str | Path, files: Sequence[str], probabilities: np.ndarray, labels: np.ndarray,
                 class_names: Sequence[str], report: dict, detection: dict | None = None,
                 checkpoint_path: str | Path = "", list_file: str | Path = "",
                 extra_metrics: dict | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Write every file of the module docstring to ``output_dir``; returns ``(metrics, images)``.

    ``metrics`` is what ``metrics.json`` holds: ``extra_metrics``, ``report``, ``detection`` and
    ``files`` (``{kind: path}``); ``images`` are the pictures' RGB pixels (for TensorBoard).
    """
    output_dir = make_folder(output_dir, "report folder")
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    predictions = probabilities.argmax(axis=1)
    paths = {"score": output_dir / SCORE_FILE, "probabilities": output_dir / PROBABILITIES_FILE,
             "report": output_dir / REPORT_FILE, "confusion_matrix_png": output_dir / CONFUSION_MATRIX_FILE,
             "metrics": output_dir / METRICS_FILE}
    atomic_write_text(paths["score"], score_file_text(files, probabilities, labels, class_names))
    atomic_write_text(paths["probabilities"], probabilities_csv_text(files, probabilities, labels, class_names))
    atomic_write_text(paths["report"], report_text(report, class_names, labels, predictions, detection,
                                                   checkpoint_path, list_file))
    figures = {"confusion_matrix": plot_confusion_matrix(report["confusion_matrix"], class_names)}
    if detection is not None:
        scores, is_target = probabilities[:, detection["class_id"]], labels == detection["class_id"]
        if _has_both(is_target):
            figures["roc_curve"] = plot_roc_curve(scores, is_target, detection["target_class"], detection["threshold"])
            figures["pr_curve"] = plot_pr_curve(scores, is_target, detection["target_class"], detection["threshold"])
            paths["roc_curve_png"] = output_dir / ROC_CURVE_FILE
            paths["pr_curve_png"] = output_dir / PR_CURVE_FILE
        else:
            log.warning("evaluation list has no %s clips of %r: no ROC/PR curves drawn",
                        "non-target" if is_target.all() else "target", detection["target_class"])
        paths["operating_point"] = output_dir / OPERATING_POINT_FILE
        atomic_write_json(paths["operating_point"], detection)
    images = {name: render_figure(figure) for name, figure in figures.items()}
    for name, pixels in images.items():
        atomic_write(paths[f"{name}_png"], lambda file, pixels=pixels: file.write(png_bytes(pixels)))
    # A detection file left by an earlier run would describe another model (predict.py reads
    # operating_point.json as its default threshold), so whatever this run did not write goes.
    for stale in DETECTION_FILES:
        path = output_dir / stale
        if path not in paths.values() and path.exists():
            log.info("removing %s from an earlier evaluation", path)
            path.unlink()
    metrics = {**(extra_metrics or {}), "checkpoint": str(checkpoint_path), "evallist": str(list_file),
               "class_names": list(class_names), **report, "detection": detection,
               "files": {name: str(path) for name, path in paths.items()}}
    atomic_write_json(paths["metrics"], metrics)
    return metrics, images


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------

def run_evaluation(params: Params, checkpoint_path: str | Path | None = None, target_class: str | None = None,
                   output_dir: str | Path | None = None, show_progress: bool = False) -> dict:
    """Evaluate a checkpoint on ``params.evallist`` and write the report; returns ``metrics.json``'s dict.

    ``checkpoint_path`` defaults to ``<checkpoint_dir>/model_best.pth.tar``; ``target_class``
    (else the config's ``target_class``) names the detection target; ``output_dir`` defaults to
    ``<checkpoint_dir>/scores``. Keys of the result: ``checkpoint``, ``evallist``, ``epoch``,
    ``class_names``, ``n_clips``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
    ``per_class`` (``{name: {class_id, precision, recall, f1, support}}``), ``confusion_matrix``
    (rows true, columns predicted), ``detection`` (``operating_point.json``'s content or None),
    ``files`` (``{kind: path}``) and ``tensorboard_dir`` (or None).
    """
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else default_checkpoint_path(params)
    output_dir = Path(output_dir) if output_dir is not None else scores_dir(params.checkpoint_dir)
    checkpoint = load_evaluation_checkpoint(checkpoint_path)
    class_names = list(checkpoint["class_names"])
    class_id = resolve_target_class(class_names, target_class if target_class is not None else params.target_class)

    check_detection_keys(params, class_id)
    tuning_set = None  # read and checked before any scoring, as is the report's folder (below)
    if class_id is not None and params.detection_soundscapes is not None:
        tuning_set = load_tuning_set(params.detection_soundscapes, params.detection_reference, class_names[class_id])
    evaluation_set = load_list(params.evallist, params.datapath, "evallist")
    feature_params, feature_source = evaluation_set.info.feature_params, evaluation_set.info.source
    if feature_params is None:  # a hand-made list: its features are the checkpoint's (check_matches_checkpoint)
        feature_params = checkpoint.get("feature_params")
        feature_source = f"{checkpoint_path} (the list {params.evallist} has no {FEATURE_CONFIG} beside it)"
    check_features(params, feature_params, feature_source)
    check_matches_checkpoint(evaluation_set, checkpoint, checkpoint_path)
    validation_set = None
    if class_id is not None:
        validation_set = load_list(params.vallist, params.datapath, "vallist")
        check_matches_checkpoint(validation_set, checkpoint, checkpoint_path)

    check_writable(output_dir / SCORE_FILE, "report")  # before the scoring, whose results it would hold
    device = resolve_device(params.device)
    model = fold_batch_norms(model_from_checkpoint(checkpoint))  # as Predictor scores windows
    epoch = int(checkpoint.get("epoch", 0))
    log.info("evaluating %s (epoch %d, %s) on %s (%d clips, %s)", checkpoint_path, epoch,
             checkpoint["model_args"].get("model_name"), evaluation_set.list_file, len(evaluation_set), device)
    window, hop = checkpoint_windows(checkpoint)
    predict = dict(device=device, window=window, hop=hop, batch_size=params.eval_batch_size,
                   num_workers=params.num_workers, amp=params.amp, show_progress=show_progress)
    probabilities, labels = predict_list(model, evaluation_set, **predict)
    report = classification_report_dict(probabilities, labels, class_names)

    detection = None
    if class_id is not None:
        validation = predict_list(model, validation_set, **predict)
        detection = detection_report(class_names[class_id], class_id, params.max_false_alarm_rate,
                                     validation, (probabilities, labels))
        detection["checkpoint"] = str(checkpoint_path)  # the model these thresholds belong to
        if tuning_set is not None:
            # The same windows, batches and post-processing as predict.py --long.
            predictor = Predictor(checkpoint, device, amp=params.amp, channels_last=params.channels_last)
            detection[LONG_MODE_KEY] = tune_on_recordings(predictor, tuning_set, params.detection_hop_seconds,
                                                          batch_size=params.batch_size, progress=show_progress,
                                                          grid=detection_grid(params.detection_grid))

    files = [entry.feature_file for entry in evaluation_set.entries]
    metrics, images = write_report(output_dir, files, probabilities, labels, class_names, report, detection,
                                   checkpoint_path, evaluation_set.list_file, extra_metrics={"epoch": epoch})
    tensorboard_dir = None
    if params.summaries_dir:
        scores = probabilities[:, class_id] if class_id is not None else None
        is_target = labels == class_id if class_id is not None else None
        tensorboard_dir = log_to_tensorboard(params.summaries_dir, epoch, report, images, detection, scores,
                                             is_target)
    return {**metrics, "tensorboard_dir": str(tensorboard_dir) if tensorboard_dir is not None else None}


def summary_text(metrics: dict) -> str:
    """The lines printed at the end of a run: accuracy, macro-F1, threshold, where the files are."""
    lines = [f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
             f"balanced accuracy {metrics['balanced_accuracy']:.4f}  ({metrics['n_clips']} clips)"]
    detection = metrics.get("detection")
    if detection is not None:
        auc = detection["evaluation"]["roc_auc"]
        lines.append(f"{detection['target_class']}: threshold {detection['threshold']:.6f} "
                     f"(false-alarm rate <= {detection['max_false_alarm_rate']} on validation)"
                     + (f", ROC-AUC {auc:.4f}" if auc is not None else ""))
        if detection.get(LONG_MODE_KEY) is not None:
            lines.append(long_mode_text(detection[LONG_MODE_KEY]))
    files = metrics["files"]
    lines.append(f"scores:  {files['score']}")
    lines.append(f"report:  {files['report']}")
    lines.append(f"metrics: {files['metrics']}")
    pictures = [path for name, path in files.items() if name.endswith("_png")]
    lines.append("pictures: " + ", ".join(pictures))
    if "operating_point" in files:
        lines.append(f"operating point: {files['operating_point']}")
    if metrics.get("tensorboard_dir"):
        lines.append(f"tensorboard: {metrics['tensorboard_dir']}")
    return "\n".join(lines)
