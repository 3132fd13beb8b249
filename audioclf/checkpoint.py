"""The checkpoint format and the run folder's layout: one place that says what a run writes.

A run folder (the config's ``checkpoint_dir``) holds::

    config.json                         the resolved training config
    checkpoint_epochNNNN.pth.tar        one per epoch; the newest ``keep_checkpoints`` are kept
    model_best.pth.tar                  a copy of the best epoch's checkpoint (never rotated away)
    scores/                             evaluation.py's output (see audioclf/evaluation.py):
        score.txt probabilities.csv report.txt metrics.json confusion_matrix.png
        roc_curve.png pr_curve.png operating_point.json   (detection only)

A checkpoint is a dict (``checkpoint_state``) loadable with ``torch.load(weights_only=True)``:
model (unwrapped from DDP), optimizer, scheduler, scaler, epoch, best metric, config, model
constructor arguments, class names, feature parameters and the model's input shape, the windows
that score a clip, normalisation, RNG state and the epoch's metrics. ``model_from_checkpoint``
rebuilds the model from it alone.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audioclf.classifier import AudioClassifier
from audioclf.ema import WeightAverage
from audioclf.windows import default_hop
from audioclf.files import atomic_write

# ---- the run folder ------------------------------------------------------------------------
CONFIG_FILE = "config.json"
BEST_CHECKPOINT_NAME = "model_best.pth.tar"
_EPOCH_PREFIX, _CHECKPOINT_SUFFIX = "checkpoint_epoch", ".pth.tar"
_EPOCH_CHECKPOINT_RE = re.compile(rf"^{_EPOCH_PREFIX}(\d+){re.escape(_CHECKPOINT_SUFFIX)}$")
SCORES_DIRNAME = "scores"
SCORE_FILE = "score.txt"
PROBABILITIES_FILE = "probabilities.csv"
REPORT_FILE = "report.txt"
METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
ROC_CURVE_FILE = "roc_curve.png"
PR_CURVE_FILE = "pr_curve.png"
OPERATING_POINT_FILE = "operating_point.json"
# Written only for detection; an evaluation without detection removes them (they would describe another model).
DETECTION_FILES = (OPERATING_POINT_FILE, ROC_CURVE_FILE, PR_CURVE_FILE)

# ---- the checkpoint dict -------------------------------------------------------------------
# Keys every consumer of a checkpoint (evaluation, prediction) relies on.
REQUIRED_KEYS = ("model", "model_args", "class_names", "feature_shape")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be written or read back."""


def scores_dir(checkpoint_dir: str | os.PathLike[str]) -> Path:
    """``<checkpoint_dir>/scores``: where evaluation writes its files."""
    return Path(checkpoint_dir) / SCORES_DIRNAME


def operating_point_path(checkpoint_path: str | os.PathLike[str]) -> Path:
    """``<checkpoint's folder>/scores/operating_point.json``: the threshold evaluation chose for it."""
    return scores_dir(Path(checkpoint_path).parent) / OPERATING_POINT_FILE


def epoch_checkpoint_path(checkpoint_dir: str | os.PathLike[str], epoch: int) -> Path:
    """``<checkpoint_dir>/checkpoint_epochNNNN.pth.tar``."""
    return Path(checkpoint_dir) / f"{_EPOCH_PREFIX}{epoch:04d}{_CHECKPOINT_SUFFIX}"


def checkpoint_state(model: AudioClassifier, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: torch.amp.GradScaler, *, epoch: int, best: dict, config: dict, model_args: dict,
                     class_names: list[str], feature_params: dict | None, feature_shape: tuple[int, int],
                     rng_state: dict, metrics: dict, windows: dict | None = None,
                     averaged: WeightAverage | None = None) -> dict:
    """Everything needed to resume, evaluate or serve (loadable with ``weights_only=True``).

    ``model`` is the plain model (not a DDP wrapper); ``best`` is ``{"accuracy", "loss", "epoch"}``;
    ``config`` the resolved config (``Params.to_dict()``); ``feature_shape`` the model's input
    ``(n_mels, window frames)``; ``windows`` ``{"frames", "hop"}``: the windows that score a clip
    (``audioclf.windows``), default one window of ``feature_shape[1]`` frames every half window.
    With ``averaged`` (the moving average of the weights, ``ema_decay``), ``model`` holds the average:
    what evaluation and prediction use; the trained weights are ``training_model``, for resuming.
    """
    state = {
        "model": (model if averaged is None else averaged.module).state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "best_accuracy": best["accuracy"],
        "best_loss": best["loss"],
        "best_epoch": best["epoch"],
        "config": config,
        "model_name": config["model"],
        "model_args": model_args,
        "class_names": list(class_names),
        "feature_params": feature_params,
        "feature_shape": list(feature_shape),
        "windows": dict(windows) if windows else {"frames": feature_shape[1], "hop": default_hop(feature_shape[1])},
        "normalization": {"mode": config["normalization"], "mean": model.normalize.mean.flatten().cpu(),
                          "std": model.normalize.std.flatten().cpu()},
        "rng_state": rng_state,
        "metrics": metrics,
    }
    if averaged is not None:
        state.update(training_model=model.state_dict(), ema_updates=averaged.updates)
    return state


def training_weights(checkpoint: dict) -> dict:
    """The weights a resumed run continues training: ``training_model`` when the checkpoint's
    ``model`` is a moving average of them, else ``model``."""
    return checkpoint.get("training_model", checkpoint["model"])


def checkpoint_windows(checkpoint: dict) -> tuple[int, int]:
    """``(frames, hop)`` of the windows that score a clip; checkpoints from before windows: the input
    length, every half window."""
    windows = checkpoint.get("windows") or {}
    frames = int(windows.get("frames", checkpoint["feature_shape"][1]))
    return frames, int(windows.get("hop", default_hop(frames)))


def check_required_keys(checkpoint: Any, path: str | os.PathLike[str]) -> dict:
    """``checkpoint`` when it holds ``REQUIRED_KEYS``; else CheckpointError naming the missing ones."""
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint written by train.py: missing {missing}")
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> AudioClassifier:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    model = AudioClassifier(**checkpoint["model_args"], pretrained=False)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper; the model itself otherwise."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---- files ---------------------------------------------------------------------------------

def _check_loadable(path: Path) -> None:
    """Fail now, not at resume time, if a checkpoint cannot be read with ``weights_only=True``."""
    try:
        # mmap: tensors are not read back, only the pickled structure is checked.
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise CheckpointError(
            "checkpoint state cannot be loaded with torch.load(weights_only=True); store only "
            "tensors, containers and plain Python values (e.g. float(metric), params.to_dict(), "
            f"not numpy scalars or argparse.Namespace): {error}"
        ) from error


def save_checkpoint(
    state: dict[str, Any],
    checkpoint_dir: str | os.PathLike[str],
    epoch: int,
    is_best: bool,
    keep: int = 5,
) -> Path:
    """Write ``checkpoint_epoch{epoch:04d}.pth.tar`` (and ``model_best.pth.tar``) atomically.

    Afterwards only the ``keep`` highest-epoch checkpoint files remain (``keep=0`` keeps all);
    ``model_best.pth.tar`` and the file just written are never deleted. Returns the epoch file.
    Raises ``CheckpointError`` (leaving no file behind) if ``state`` would not load back with
    ``weights_only=True``.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    checkpoint_dir = Path(checkpoint_dir)
    epoch_path = epoch_checkpoint_path(checkpoint_dir, epoch)
    # The best model first: a process killed between the two writes leaves the previous epoch as the newest
    # checkpoint, so --resume runs this epoch again (the same epoch, when it runs on the same device and
    # loader) and rewrites both; the other order left a model_best.pth.tar older than the run's best epoch
    # that no resume repaired.
    first = checkpoint_dir / BEST_CHECKPOINT_NAME if is_best else epoch_path
    atomic_write(first, lambda file: torch.save(state, file), check=_check_loadable)
    if is_best:
        # Copy the verified bytes rather than pickling the state a second time.
        def copy_best_file(file: Any) -> None:
            with open(first, "rb") as source:
                while chunk := source.read(1 << 20):
                    file.write(chunk)

        atomic_write(epoch_path, copy_best_file)
    if keep:
        for old in list_checkpoints(checkpoint_dir)[:-keep]:
            if old != epoch_path:
                old.unlink(missing_ok=True)
    return epoch_path


def list_checkpoints(checkpoint_dir: str | os.PathLike[str]) -> list[Path]:
    """Epoch checkpoint files in ``checkpoint_dir`` sorted by epoch; ``[]`` if none or no folder."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = _EPOCH_CHECKPOINT_RE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
    """The highest-epoch checkpoint in ``checkpoint_dir``, or None."""
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(..., weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. Train a model first with "
            "`python train.py --config_path <config.json>`, or check the path."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot load checkpoint {path}: {_load_failure(path, error)}; use one that train.py "
                              "wrote (a damaged checkpoint_epoch*.pth.tar can be deleted: --resume then continues "
                              "from the newest one left)") from None


def _load_failure(path: Path, error: Exception) -> str:
    """One line for why ``torch.load(weights_only=True)`` failed (torch's own text spans many lines)."""
    with open(path, "rb") as file:
        head = file.read(2)
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):  # torch.save: a zip, or (legacy) a pickle
        return "not a torch.save file (truncated, or another kind of file)"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch colours part of its message
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Weights only load failed" in text:
        detail = next((line for line in lines if "Unsupported global" in line), None)
        return "it holds objects other than tensors and plain values" + (f" ({detail})" if detail else "")
    return f"corrupt or truncated? {lines[0] if lines else type(error).__name__}"
