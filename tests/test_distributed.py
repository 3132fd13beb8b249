"""torchrun (DDP, gloo on CPU): one set of outputs, exact sharded validation, resume."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from audioclf.checkpoint import checkpoint_windows, model_from_checkpoint
from audioclf.training import StepOptions, evaluate
from dataloaders.crops import window_loader
from dataloaders.dataloader import SpectrogramDataset
from tools.synthetic_features import make_config, make_feature_dataset
from test_training import read_scalar_tags
from utils import list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def torchrun(config: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run train.py under torchrun with 2 CPU processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "train.py"), "--config_path", str(config), "--no_progress", *extra]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def single_process_validation(checkpoint: dict, features: Path) -> dict:
    """evaluation.py-style: one process, the whole validation list, the saved weights."""
    model = model_from_checkpoint(checkpoint)
    dataset = SpectrogramDataset(features / "filenames/validation.txt", features)
    options = StepOptions(torch.device("cpu"), None, False, None, 0.0, 0.0)
    window, hop = checkpoint_windows(checkpoint)
    return evaluate(model, window_loader(dataset, window, hop, batch_size=4), options)


@pytest.mark.timeout(480)
def test_torchrun_two_processes_train_log_once_and_resume(tmp_path):
    # 15 validation clips: shards of 8 and 7, so padded duplicates would change the metrics.
    features = make_feature_dataset(tmp_path, per_class=(16, 5, 4))
    # CPU/gloo whatever the machine has: two processes need not find two GPUs.
    config = make_config(tmp_path, features, epochs=2, batch_size=4, device="cpu")
    run = torchrun(config)
    assert run.returncode == 0, run.stderr[-3000:]
    # one process built each list's feature cache (training and validation); the other waited for it
    assert run.stderr.count("building the feature cache of") == 2, run.stderr[-3000:]
    assert len(list((features / "filenames" / "cache").glob("*.frames.npy"))) == 2

    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in checkpoints] == ["checkpoint_epoch0001.pth.tar", "checkpoint_epoch0002.pth.tar"]
    event_files = list((tmp_path / "runs").glob("events.out.tfevents.*"))
    assert len(event_files) == 1  # rank 0 only
    assert read_scalar_tags(tmp_path / "runs")["accuracy/validation"].__len__() == 2

    for path in checkpoints:
        checkpoint = load_checkpoint(path)
        assert not any(name.startswith("module.") for name in checkpoint["model"])  # unwrapped
        logged = checkpoint["metrics"]["validation"]
        reference = single_process_validation(checkpoint, features)
        assert logged["n"] == reference["n"] == 15
        assert logged["accuracy"] == pytest.approx(reference["accuracy"], abs=1e-12)
        assert logged["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        # training figures are both processes' (DistributedSampler pads the list to a multiple of 2)
        n_train = len((features / "filenames" / "train.txt").read_text().splitlines())
        assert checkpoint["metrics"]["train"]["n"] == 2 * math.ceil(n_train / 2)

    make_config(tmp_path, features, epochs=3, batch_size=4, device="cpu")
    resumed = torchrun(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing at epoch 3" in resumed.stderr
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "checkpoint_epoch0003.pth.tar"
    assert load_checkpoint(tmp_path / "checkpoints/checkpoint_epoch0003.pth.tar")["epoch"] == 3


@pytest.mark.timeout(300)
def test_torchrun_moving_average_is_rank_zeros_on_every_process(tmp_path):
    # Few steps, so an average that began from each process's own random head would still differ across
    # processes, and the sharded validation figures would then not be those of the saved (rank 0's) average.
    features = make_feature_dataset(tmp_path, per_class=(16, 5, 4))
    config = make_config(tmp_path, features, epochs=1, batch_size=8, device="cpu", ema_decay=0.9)
    run = torchrun(config)
    assert run.returncode == 0, run.stderr[-3000:]
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_epoch0001.pth.tar")
    assert checkpoint["ema_updates"] > 0 and "training_model" in checkpoint
    logged = checkpoint["metrics"]["validation"]
    reference = single_process_validation(checkpoint, features)
    assert logged["accuracy"] == pytest.approx(reference["accuracy"], abs=1e-12)
    assert logged["loss"] == pytest.approx(reference["loss"], rel=1e-6)
