"""Plumbing of bench/bench_accuracy.py on generated data (the real bench uses ../shared FSDD)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.fft

from bench import bench_accuracy
from bench.common import write_json
from dataloaders.dataloader import SpectrogramDataset
from tools.demo_data import generate_demo_dataset
from tools.synthetic_features import make_feature_dataset
from utils import Params


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """(metadata CSV, audio folder) of a small generated demo set, shared by this module's tests."""
    root = tmp_path_factory.mktemp("demo")
    return generate_demo_dataset(root / "data", clips_per_class=20, seed=1), root / "data" / "audio"


def test_both_protocols_run_end_to_end_on_generated_data(tmp_path, capsys, demo_data):
    csv_file, audio = demo_data
    results_path = tmp_path / "results.json"
    assert bench_accuracy.main([
        "--csv_file", str(csv_file), "--data_dir", str(audio),
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


def test_baseline_fits_logistic_regression_on_mfcc_statistics_over_the_same_folds(tmp_path, capsys, demo_data):
    csv_file, audio = demo_data
    results_path = tmp_path / "results.json"
    assert bench_accuracy.main([
        "--csv_file", str(csv_file), "--data_dir", str(audio), "--baseline",
        "--protocol", "both", "--heldout", "1", "--samplerate", "8000", "--n_fft", "256",
        "--n_mels", "16", "--n_frames", "32", "--num_workers", "1",
        "--work_dir", str(tmp_path / "work"), "--json", str(results_path)]) == 0
    random, speaker = json.loads(results_path.read_text())
    assert [run["evaluation_folds"] for run in speaker["runs"]] == [["1"]]
    for summary in (random, speaker):
        run = summary["runs"][0]
        assert run["model"].startswith("baseline: MFCC-40")
        # 6 demo classes (chance 1/6) with distinct spectra: a linear model on MFCC stats separates most
        assert run["accuracy"] >= 0.6 and 0.0 < run["macro_f1"] <= 1.0
        assert not (tmp_path / "work" / run["run"] / "checkpoints").exists()  # no CNN was trained
    assert "logistic regression" in capsys.readouterr().out


def test_mfcc_statistics_are_mean_and_std_of_the_dct_of_each_frame(tmp_path):
    features = make_feature_dataset(tmp_path, per_class=(2, 1, 1), n_mels=48, n_frames=5)
    dataset = SpectrogramDataset(features / "filenames/train.txt", features)
    statistics = bench_accuracy.mfcc_statistics(dataset)
    assert statistics.shape == (6, 80)  # 40 coefficients kept of 48 bands: mean, then std
    frame_dct = np.stack([scipy.fft.dct(frame, norm="ortho") for frame in dataset.load(0).T.astype(np.float64)])
    np.testing.assert_allclose(statistics[0, :40], frame_dct[:, :40].mean(axis=0))
    np.testing.assert_allclose(statistics[0, 40:], frame_dct[:, :40].std(axis=0))


def test_yamnet_linear_probe_runs_on_its_own_front_end(tmp_path, demo_data, yamnet_weights):
    """--frontend yamnet makes YAMNet's features (16 kHz, 64 mels, 96 frames) and a pretrained, frozen yamnet trains."""
    csv_file, audio = demo_data
    results_path = tmp_path / "results.json"
    assert bench_accuracy.main([
        "--csv_file", str(csv_file), "--data_dir", str(audio), "--frontend", "yamnet", "--protocol", "random",
        "--epochs", "1", "--num_workers", "1", "--set", 'model="yamnet"', "pretrained=true", "freeze_backbone=true",
        'normalization="none"', "model_args={}", "num_workers=0", "batch_size=16",
        "--work_dir", str(tmp_path / "work"), "--json", str(results_path)]) == 0
    (random,) = json.loads(results_path.read_text())
    assert 0.0 <= random["accuracy"] <= 1.0
    config = json.loads((tmp_path / "work" / "random" / "lists" / "feature_config.json").read_text())
    assert config["feature_params"]["frontend"] == "yamnet" and config["feature_params"]["n_frames"] == 96


def test_a_reused_work_dir_keeps_one_feature_folder_per_feature_setting(tmp_path, demo_data):
    """--work_dir reused with other feature flags: new features of their own, not an error saying to pass
    --overwrite (a flag the bench does not have); the same flags again reuse their folder."""
    csv_file, audio = demo_data

    def run(n_mels: str) -> None:
        assert bench_accuracy.main([
            "--csv_file", str(csv_file), "--data_dir", str(audio), "--baseline", "--protocol", "random",
            "--samplerate", "8000", "--n_fft", "256", "--n_mels", n_mels, "--n_frames", "32", "--num_workers", "1",
            "--work_dir", str(tmp_path / "work")]) == 0

    run("16")
    run("20")
    run("16")
    folders = sorted(tmp_path.joinpath("work").glob("features_*"))
    assert len(folders) == 2
    n_mels = sorted(json.loads((folder / "filenames" / "feature_config.json").read_text())["feature_params"]["n_mels"]
                    for folder in folders)
    assert n_mels == [16, 20]


def test_split_seed_draws_the_split_and_is_recorded(tmp_path, demo_data):
    csv_file, audio = demo_data

    def evaluation_clips(split_seed: str) -> tuple[list[str], dict]:
        results = tmp_path / f"results_{split_seed}.json"
        assert bench_accuracy.main([
            "--csv_file", str(csv_file), "--data_dir", str(audio), "--baseline", "--protocol", "random",
            "--samplerate", "8000", "--n_fft", "256", "--n_mels", "16", "--n_frames", "32", "--num_workers", "1",
            "--split_seed", split_seed, "--work_dir", str(tmp_path / "work"), "--json", str(results)]) == 0
        lists = tmp_path / "work" / "random" / "lists"
        split = json.loads((lists / "feature_config.json").read_text())["split"]
        assert json.loads(results.read_text())[0]["runs"][0]["split_seed"] == int(split_seed)
        return (lists / "evaluation.txt").read_text().splitlines(), split

    default, default_split = evaluation_clips("42")
    other, other_split = evaluation_clips("7")
    assert (default_split["seed"], other_split["seed"]) == (42, 7)
    assert len(default) == len(other) and sorted(default) != sorted(other)


def test_malformed_set_items_name_the_flag_and_the_form(capsys):
    """The --set KEY=JSON of bench_accuracy reads like bench_detection's (one parser, bench.common); refused
    by parse_args (exit status 2), before any work."""
    for item in ("epochs", "epochs=ten"):
        with pytest.raises(SystemExit) as exit:
            bench_accuracy.parse_args(["--set", item])
        assert exit.value.code == 2
        assert f"--set '{item}': expected KEY=JSON" in capsys.readouterr().err
    assert bench_accuracy.config_overrides(bench_accuracy.parse_args(["--set", "epochs=2", "--epochs", "3"])) == \
        {"epochs": 3}


def exit_status(argv: list[str]) -> int:
    """bench_accuracy's exit status for ``argv``, whether main returns it or parse_args exits with it."""
    try:
        return bench_accuracy.main(argv)
    except SystemExit as exit:
        return exit.code


@pytest.mark.parametrize("case, expected", [
    ("missing_csv", "--csv_file {tmp}/missing.csv: no such file; pass the metadata CSV of your clips"),
    ("missing_data_dir", "--data_dir {tmp}/no_audio: no such folder; pass the folder the clips of {csv} are in"),
    ("no_fold_column", "{tmp}/no_fold.csv has no 'fold' column, which --protocol speaker holds out (e.g. one "
                       "speaker per fold); add one, or pass --protocol random"),
    ("unknown_heldout", "--heldout 11 x: no such fold in the 'fold' column of {csv} (its folds: 1 2 3 4 5 6 7 8 9 "
                        "10); hold out some of those"),
    ("missing_config", "--config {tmp}/missing.json: no such file; pass a training config, e.g. one of configs/ ("),
    ("invalid_config", '--config {tmp}/bad.json: unknown key "epoch" (did you mean "epochs"?)'),
], ids=lambda value: value if "_" in value and " " not in value else "")
def test_bad_input_is_one_line_naming_the_file_and_what_to_pass_with_exit_status_2(tmp_path, capsys, demo_data,
                                                                                    case, expected):
    csv_file, audio = demo_data
    base = ["--csv_file", str(csv_file), "--data_dir", str(audio), "--baseline", "--num_workers", "1",
            "--samplerate", "8000", "--n_fft", "256", "--n_mels", "16", "--work_dir", str(tmp_path / "work")]
    no_fold = tmp_path / "no_fold.csv"
    no_fold.write_text("\n".join(",".join(cells[:4] + cells[5:]) for cells in
                                 (line.split(",") for line in csv_file.read_text().splitlines())) + "\n")
    config = Params(bench_accuracy.REPO / "configs" / "fsdd.json").to_dict()
    config["epoch"] = config.pop("epochs")
    (tmp_path / "bad.json").write_text(json.dumps(config))
    flags = {"missing_csv": ["--csv_file", str(tmp_path / "missing.csv")],
             "missing_data_dir": ["--data_dir", str(tmp_path / "no_audio")],
             "no_fold_column": ["--csv_file", str(no_fold), "--protocol", "speaker"],
             "unknown_heldout": ["--protocol", "both", "--heldout", "1", "11", "x"],
             "missing_config": ["--config", str(tmp_path / "missing.json")],
             "invalid_config": ["--config", str(tmp_path / "bad.json")]}[case]

    assert exit_status(base + flags) == 2

    captured = capsys.readouterr()
    assert captured.err.splitlines() == [captured.err.strip()]  # one line, no traceback
    assert captured.err.startswith("bench_accuracy: error: ")
    assert expected.format(tmp=tmp_path, csv=csv_file) in captured.err
    assert not (tmp_path / "work").exists()  # refused before any preprocessing


def test_write_json_interrupted_leaves_the_previous_results_whole(tmp_path, monkeypatch):
    """bench.common.write_json (every bench's --json) writes a temp file and renames it: an interrupt
    leaves the previous JSON, not half of the new one, and no temp file."""
    path = tmp_path / "results" / "results.json"
    write_json(path, {"run": 1})
    assert json.loads(path.read_text()) == {"run": 1}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"run": 2, "accuracy": [0.5] * 10000})
    assert json.loads(path.read_text()) == {"run": 1}
    assert [file.name for file in path.parent.iterdir()] == ["results.json"]


@pytest.mark.parametrize("items, expected", [
    (["epoch=3"], '--set: unknown key "epoch" (did you mean "epochs"?)'),
    (["mixup_alpha"], "--set 'mixup_alpha': expected KEY=JSON (no '=')"),
], ids=["unknown-key", "malformed"])
def test_bad_set_overrides_are_refused_before_any_preprocessing(tmp_path, capsys, demo_data, items, expected):
    """--set is checked against the config's schema at start, not after the features are computed."""
    csv_file, audio = demo_data
    argv = ["--csv_file", str(csv_file), "--data_dir", str(audio), "--protocol", "random", "--num_workers", "1",
            "--samplerate", "8000", "--n_fft", "256", "--n_mels", "16", "--work_dir", str(tmp_path / "work"),
            "--set", *items]

    assert exit_status(argv) == 2

    captured = capsys.readouterr()
    assert captured.err.splitlines() == [captured.err.strip()]
    assert captured.err.startswith("bench_accuracy: error: ") and expected in captured.err
    assert not (tmp_path / "work").exists()
