"""Tiny synthetic feature sets and configs, for tests and the training benchmark.

Features are written directly (no audio) so training takes seconds: class ``k`` has a
bright horizontal band at mel rows ``4k..4k+3`` on top of noise, which a tiny CNN learns fast.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from audioclf.frontend import FeatureParams
from audioclf.listfile import FEATURE_CONFIG, LISTS_DIR, SPLITS, ListEntry, list_path, render_list

CLASS_NAMES = ("babycry", "dog bark", "noise")


def make_feature_dataset(root: Path, class_names=CLASS_NAMES, per_class: tuple[int, int, int] = (16, 4, 4),
                         n_mels: int = 32, n_frames: int = 40, seed: int = 0) -> Path:
    """Write ``root/features/<class>/<i>.npy`` and ``root/features/filenames/*`` (train/val/eval); return the folder."""
    rng = np.random.default_rng(seed)
    features = root / "features"
    lists = features / LISTS_DIR
    lists.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[ListEntry]] = {split: [] for split in SPLITS}
    for class_id, name in enumerate(class_names):
        index = 0
        for split, count in zip(splits, per_class):
            for _ in range(count):
                feature = rng.normal(-60.0, 6.0, size=(n_mels, n_frames)).astype(np.float32)
                feature[4 * class_id: 4 * class_id + 4] += 30.0
                relative = f"{name}/{index:03d}.npy"
                (features / relative).parent.mkdir(parents=True, exist_ok=True)
                np.save(features / relative, feature)
                splits[split].append(ListEntry(relative, class_id, name))
                index += 1
    for split, entries in splits.items():
        list_path(lists, split).write_text(render_list(entries))
    params = FeatureParams(n_mels=n_mels, n_frames=n_frames, n_fft=512)
    (lists / FEATURE_CONFIG).write_text(json.dumps({
        "feature_params": params.to_dict(), "class_names": list(class_names), "n_classes": len(class_names)}))
    return features


def make_config(root: Path, features: Path, **overrides) -> Path:
    """A valid training config for ``features`` (tiny, CPU, deterministic); returns its path."""
    config = {
        "datapath": str(features),
        "trainlist": str(list_path(features / LISTS_DIR, "train")),
        "vallist": str(list_path(features / LISTS_DIR, "validation")),
        "evallist": str(list_path(features / LISTS_DIR, "evaluation")),
        "checkpoint_dir": str(root / "checkpoints"),
        "summaries_dir": str(root / "runs"),
        "model": "audiocnn",
        "pretrained": False,
        "batch_size": 8,
        "epochs": 3,
        "lr": 0.003,
        "num_workers": 0,
        "device": "cpu",
        "seed": 0,
        "model_args": {"width": 8},
    }
    config.update(overrides)
    path = root / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path
