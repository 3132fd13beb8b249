"""Plumbing of bench/bench_accuracy.py on generated data (the real bench uses ../shared FSDD)."""
from __future__ import annotations

import json

from tools.demo_data import generate_demo_dataset
from bench import bench_accuracy


def test_both_protocols_run_end_to_end_on_generated_data(tmp_path, capsys):
    csv_file = generate_demo_dataset(tmp_path / "data", clips_per_class=20, seed=1)
    results_path = tmp_path / "results.json"
    assert bench_accuracy.main([
        "--csv_file", str(csv_file), "--data_dir", str(tmp_path / "data" / "audio"),
        "--protocol", "both", "--heldout", "1", "2", "--samplerate", "8000", "--n_fft", "256",
        "--n_mels", "16", "--n_frames", "32", "--epochs", "1", "--num_workers", "1",
        "--set", 'model_args={"width": 4}', "num_workers=0", "batch_size=16",
        "--work_dir", str(tmp_path / "work"), "--json", str(results_path)]) == 0
    results = json.loads(results_path.read_text())
    assert [summary["protocol"] for summary in results] == ["random", "speaker"]
    speaker = results[1]
    # each held-out fold is evaluated alone; validation is drawn from the training folds
    assert [(run["evaluation_folds"], run["validation_folds"]) for run in speaker["runs"]] == [(["1"], []), (["2"], [])]
    for summary in results:
        assert 0.0 <= summary["accuracy"] <= 1.0
        assert summary["accuracy"] == sum(run["accuracy"] for run in summary["runs"]) / len(summary["runs"])
    # every speaker-protocol evaluation list holds exactly its held-out fold: 6 classes x 1 clip
    for run in speaker["runs"]:
        lists = tmp_path / "work" / run["run"] / "lists"
        evaluation = (lists / "evaluation.txt").read_text().splitlines()
        assert len(evaluation) == 12  # 6 classes x 2 clips in each fold
        held_out = {line.split()[0] for line in evaluation}
        for split in ("train.txt", "validation.txt"):
            assert not held_out & {line.split()[0] for line in (lists / split).read_text().splitlines()}
    printed = capsys.readouterr().out
    assert "= speaker (mean)" in printed and "speaker_heldout_2" in printed
