"""Plumbing of bench/bench_train.py on tiny inputs (the numbers themselves are for the README)."""
from __future__ import annotations

import json

import pytest
import torch

from bench import bench_train

TINY = ["--n_mels", "16", "--n_frames", "24", "--model_args", '{"width": 4}', "--steps", "2", "--repeats", "1",
        "--device", "cpu"]


def test_every_batch_size_is_measured_on_the_same_clips_through_the_cache(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert bench_train.main([*TINY, "--batch_sizes", "4", "8", "--work_dir", str(tmp_path / "work"),
                             "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    settings = result["settings"]
    # 2 steps of the largest batch: 6 clips per class x 3 classes = 18 clips -> 5 batches of 4, 3 of 8
    assert [(s["batch_size"], s["compile"], s["steps_per_epoch"]) for s in settings] == [(4, False, 5), (8, False, 3)]
    for setting in settings:
        assert setting["loader"] == "CachedBatchLoader" and setting["device"] == "cpu"
        assert setting["real_samples_per_s"] > 0 and setting["pure_samples_per_s"] > 0
        assert setting["ratio"] == setting["real_samples_per_s"] / setting["pure_samples_per_s"]
    assert "real / pure" in capsys.readouterr().out


def test_the_files_loader_is_measured_when_asked(tmp_path):
    out = tmp_path / "result.json"
    assert bench_train.main([*TINY, "--batch_sizes", "4", "--loader", "files", "--work_dir", str(tmp_path / "w"),
                             "--json", str(out)]) == 0
    assert json.loads(out.read_text())["settings"][0]["loader"] == "DataLoader"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: --device cuda runs")
def test_device_cuda_without_a_gpu_says_so():
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench_train.main(["--device", "cuda", "--steps", "1"])
