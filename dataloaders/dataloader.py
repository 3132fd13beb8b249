"""Dataset over a split list of precomputed log-mel ``.npy`` files.

Each item is ``(feature, label)`` with ``feature`` a float32 tensor ``(1, n_mels, n_frames)``;
for whole clips (variable length, ``preprocessingBabyCrying.py --whole_clips``) it is
``(1, n_mels, T_i)``, and ``dataloaders.crops`` turns clips into fixed-size training crops and
evaluation windows. ``SpectrogramDataset.load(index)`` is the per-clip ``(n_mels, T_i)`` accessor
everything else builds on. Class names and feature parameters come from ``feature_config.json``
beside the list (written by ``preprocessingBabyCrying.py``), so a new dataset needs no code change.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
from torch.utils.data import Dataset

from audioclf.listfile import FEATURE_CONFIG, ListEntry, read_list


class FeatureDataError(ValueError):
    """Features or lists that do not fit together; the message names the file."""


@dataclass(frozen=True)
class FeatureInfo:
    """What the lists' ``feature_config.json`` says (class names, feature parameters)."""

    class_names: list[str]
    feature_params: dict | None
    source: str

    @property
    def whole_clips(self) -> bool:
        """The features are whole clips of varying length (``max_seconds`` recorded)."""
        return bool(self.feature_params) and self.feature_params.get("max_seconds") is not None


def load_feature_info(list_path: str | Path, entries: list[ListEntry] | None = None) -> FeatureInfo:
    """Read ``feature_config.json`` beside ``list_path``; else derive class names from the list."""
    list_path = Path(list_path)
    config_path = list_path.parent / FEATURE_CONFIG
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        return FeatureInfo(list(config["class_names"]), config.get("feature_params"), str(config_path))
    entries = entries if entries is not None else read_list(list_path)
    names: dict[int, str] = {}
    for entry in entries:
        names.setdefault(entry.class_id, entry.class_name)
    if sorted(names) != list(range(len(names))):
        raise FeatureDataError(
            f"{list_path}: no {FEATURE_CONFIG} beside it and its classIDs {sorted(names)} are not 0..N-1; "
            "re-run preprocessingBabyCrying.py to write the feature config")
    return FeatureInfo([names[i] for i in range(len(names))], None, str(list_path))


def read_npy_shape(path: Path) -> tuple[int, ...]:
    """Shape of a ``.npy`` file from its header, without reading the data; FeatureDataError naming
    the file when it cannot be read (truncated, not a ``.npy``)."""
    try:
        with open(path, "rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(handle)
    except (OSError, ValueError, EOFError) as error:
        raise FeatureDataError(f"{path}: cannot read feature file ({error}); re-run preprocessing") from None
    return tuple(shape)


class SpectrogramDataset(Dataset):
    """``(1, n_mels, n_frames)`` float tensors and integer labels from a split list.

    Items are deterministic: random augmentation happens on whole batches in the training
    step (and random crops are seeded per clip and epoch), so runs and resumed runs see the same
    data whatever the worker count. With whole clips (``variable_length``) every feature has
    ``n_mels`` rows and at least one frame; ``feature_shape`` is ``(n_mels, None)``.
    """

    def __init__(self, list_file: str | Path, datapath: str | Path, class_names: list[str] | None = None):
        self.list_file = Path(list_file)
        self.datapath = Path(datapath)
        self.entries = read_list(self.list_file)
        if not self.entries:
            raise FeatureDataError(f"{self.list_file}: the list is empty")
        self.info = load_feature_info(self.list_file, self.entries)
        self.class_names = list(class_names) if class_names is not None else self.info.class_names
        self._check_labels()
        self._check_inside_datapath()
        self.paths = [self.datapath / entry.feature_file for entry in self.entries]
        self._check_files_exist()
        first_shape = read_npy_shape(self.paths[0])
        if len(first_shape) != 2:
            raise FeatureDataError(f"{self.paths[0]}: expected a 2-D (n_mels, n_frames) array, "
                                   f"got shape {first_shape}")
        self.variable_length = self.info.whole_clips
        self.feature_shape = (first_shape[0], None) if self.variable_length else tuple(first_shape)
        self.labels = torch.tensor([entry.class_id for entry in self.entries], dtype=torch.long)

    def _check_labels(self) -> None:
        n_classes = len(self.class_names)
        for entry in self.entries:
            if not 0 <= entry.class_id < n_classes or self.class_names[entry.class_id] != entry.class_name:
                raise FeatureDataError(
                    f"{self.list_file}:{entry.line_number}: label {entry.class_id} ({entry.class_name!r}) is not one of "
                    f"the {n_classes} training classes {self.class_names}")

    def _check_inside_datapath(self) -> None:
        # A list names files relative to datapath; an absolute path or '..' would read elsewhere.
        for entry in self.entries:
            name = entry.feature_file
            if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() \
                    or PureWindowsPath(name).drive or ".." in PurePosixPath(name.replace("\\", "/")).parts:
                raise FeatureDataError(
                    f"{self.list_file}:{entry.line_number}: feature file {name!r} is not inside the data folder "
                    f"{self.datapath}; list entries must be relative paths without '..'")

    def _check_files_exist(self) -> None:
        missing = [str(path) for path in self.paths if not path.is_file()]
        if missing:
            shown = "\n  ".join(missing[:10]) + (f"\n  (+{len(missing) - 10} more)" if len(missing) > 10 else "")
            raise FeatureDataError(
                f"{len(missing)} feature file(s) listed in {self.list_file} are missing under {self.datapath}:\n  "
                f"{shown}\nCheck 'datapath' in the config or re-run preprocessingBabyCrying.py")

    @property
    def n_mels(self) -> int:
        return self.feature_shape[0]

    @property
    def n_frames(self) -> int:
        """Frames of every feature; for whole clips the fewest a clip has (the features' ``n_frames``)."""
        if self.variable_length:
            return int(self.info.feature_params["n_frames"])
        return self.feature_shape[1]

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int) -> np.ndarray:
        """The raw ``(n_mels, T_i)`` array of item ``index`` (``T_i = n_frames`` unless whole clips), shape-checked."""
        path = self.paths[index]
        try:
            feature = np.load(path)
        except (OSError, ValueError) as error:
            raise FeatureDataError(f"{path}: cannot read feature file ({error}); re-run preprocessing") from None
        if self.variable_length:
            if feature.ndim != 2 or feature.shape[0] != self.n_mels or feature.shape[1] < 1:
                raise FeatureDataError(f"{path}: shape {feature.shape} is not ({self.n_mels}, T) like "
                                       f"{self.paths[0]}; features were made with different settings")
        elif feature.shape != self.feature_shape:
            raise FeatureDataError(f"{path}: shape {feature.shape} differs from {self.feature_shape} "
                                   f"of {self.paths[0]}; features were made with different settings")
        return feature

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        feature = torch.from_numpy(self.load(index))  # (n_mels, T_i) float32
        return feature.unsqueeze(0), int(self.labels[index])  # (1, n_mels, T_i)

    def class_counts(self) -> torch.Tensor:
        """Number of items per class, ``(n_classes,)``."""
        return torch.bincount(self.labels, minlength=len(self.class_names))


def check_compatible(train: SpectrogramDataset, other: SpectrogramDataset) -> None:
    """Validation/evaluation lists must use the training classes and feature shape."""
    if other.feature_shape != train.feature_shape:
        raise FeatureDataError(f"{other.list_file}: features of shape {other.feature_shape}, but training "
                               f"features are {train.feature_shape} (None: whole clips of any length)")
    unseen = sorted(set(other.labels.tolist()) - set(train.labels.tolist()))
    if unseen:
        names = [train.class_names[i] for i in unseen]
        raise FeatureDataError(f"{other.list_file}: class(es) {names} (IDs {unseen}) never occur in the "
                               f"training list {train.list_file}; the model cannot learn them")


def feature_statistics(dataset: SpectrogramDataset, per_band: bool = True, max_items: int = 5000,
                       seed: int = 0, center_per_clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the features (per mel band or global), over up to ``max_items`` items.

    With ``center_per_clip`` each clip's per-band mean is removed first (as the model will).
    Returns tensors shaped ``(n_mels,)`` (per band) or ``(1,)``; float64 accumulation.
    """
    indices = np.arange(len(dataset))
    if len(indices) > max_items:
        indices = np.sort(np.random.default_rng(seed).choice(indices, max_items, replace=False))
    total = np.zeros(dataset.n_mels)
    total_sq = np.zeros(dataset.n_mels)
    count = 0
    for index in indices:
        feature = dataset.load(int(index)).astype(np.float64)  # (n_mels, T_i)
        if center_per_clip:
            feature -= feature.mean(axis=1, keepdims=True)
        total += feature.sum(axis=1)
        total_sq += (feature ** 2).sum(axis=1)
        count += feature.shape[1]
    if not per_band:
        total, total_sq, count = total.sum(keepdims=True), total_sq.sum(keepdims=True), count * dataset.n_mels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
