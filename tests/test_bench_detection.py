"""Plumbing of bench/bench_detection.py on a tiny generated demo (the real bench trains the demo recipe)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from audioclf.events import read_events_csv
from audioclf.listfile import FEATURE_CONFIG, LISTS_DIR
from bench import bench_detection


def tiny_args(work, *variants: str) -> list[str]:
    """The bench's flags for tiny data, features, model and soundscapes."""
    return [
        "--variants", *variants, "--seeds", "3", "--clips_per_class", "20", "--n_mixtures", "2", "4",
        "--duration", "10",
        "--epochs", "1", "--features", "n_mels=16", "n_frames=32", "samplerate=8000", "n_fft=256",
        "--set", 'model_args={"width": 4}', "batch_size=16", "--num_workers", "1",
        "--work_dir", str(work)]


@pytest.fixture(scope="module")
def bench_results(tmp_path_factory):
    """Two variants (clip threshold; settings tuned on soundscapes), tiny everything."""
    work = tmp_path_factory.mktemp("bench_detection")
    results_path = work / "results.json"
    assert bench_detection.main(tiny_args(work, "fixed", "tuned") + ["--json", str(results_path)]) == 0
    return work, json.loads(results_path.read_text())


def test_every_variant_and_seed_is_scored_on_the_evaluation_soundscapes(bench_results):
    work, results = bench_results
    assert [(run["variant"], run["seed"]) for run in results["runs"]] == [
        ("fixed", 3), ("tuned", 3)]
    reference = read_events_csv(work / "soundscapes" / "evaluation" / "events.csv")
    assert len(reference) == 2  # 4 mixtures, half with an event
    for run in results["runs"]:
        assert run["n_reference"] == 2 and len(run["events"]) == 2
        assert {event["ebr_db"] for event in run["events"]} <= {-6.0, 0.0, 6.0}
        assert all(event["clip"].startswith("babycry/") for event in run["events"])
        found = sum(event["found"] for event in run["events"])
        # DCASE 2017 counts: ER = (D + I) / N with D the events not found
        assert run["deletions"] == 2 - found
        assert run["error_rate"] == pytest.approx((run["deletions"] + run["insertions"]) / 2)
        # the oracle picks from the tuning grid on these very soundscapes: never worse than the tuned settings
        if run["variant"] == "tuned":
            assert run["oracle"]["error_rate"] <= run["error_rate"]


def test_tuned_variants_take_their_settings_from_the_validation_soundscapes(bench_results):
    work, results = bench_results
    fixed, tuned = results["runs"]
    assert fixed["tuned_on_validation"] is None  # the clip threshold, median filter 3 (predict's defaults)
    assert fixed["settings"]["babycry"]["median_filter"] == 3
    assert tuned["tuned_on_validation"]["n_reference"] == 1  # 2 validation mixtures, one event
    point = json.loads((work / "runs" / "tuned_seed3" / "checkpoints" / "scores" / "operating_point.json").read_text())
    assert tuned["settings"]["babycry"] == {key: point["long_mode"][key] for key in tuned["settings"]["babycry"]}


def test_summaries_give_mean_and_spread_over_seeds(bench_results):
    _, results = bench_results
    assert [summary["seeds"] for summary in results["summaries"]] == [[3], [3]]
    run = results["runs"][0]
    other = {**run, "seed": 4, "error_rate": run["error_rate"] + 0.5,
             "recall_by_ebr": {ebr: 1.0 for ebr in run["recall_by_ebr"]}}
    summary = bench_detection.summarise(bench_detection.VARIANTS[0], [run, other])
    assert summary["error_rate"] == {"mean": run["error_rate"] + 0.25, "min": run["error_rate"],
                                     "max": run["error_rate"] + 0.5}
    assert summary["recall_by_ebr"] == {ebr: (value + 1.0) / 2 for ebr, value in run["recall_by_ebr"].items()}
    table = bench_detection.format_results(results["summaries"] + [summary])
    assert table.splitlines()[0].split()[:3] == ["variant", "ER", "F1"]
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["fixed", "tuned", "fixed"]
    assert f"({run['error_rate']:.3f}..{run['error_rate'] + 0.5:.3f})" in table.splitlines()[-1]


def test_reuse_skips_training_only_for_the_same_config(bench_results, caplog):
    work, results = bench_results
    checkpoint = work / "runs" / "fixed_seed3" / "checkpoints" / "model_best.pth.tar"
    trained_at = checkpoint.stat().st_mtime_ns
    again = work / "again.json"
    assert bench_detection.main(tiny_args(work, "fixed") + ["--reuse", "--json", str(again)]) == 0
    assert checkpoint.stat().st_mtime_ns == trained_at and "reusing" in caplog.text
    rerun = json.loads(again.read_text())["runs"][0]
    assert rerun["error_rate"] == results["runs"][0]["error_rate"]
    assert rerun["events"] == results["runs"][0]["events"]
    # a key only evaluation reads (here the tuning grid) does not make a new model
    caplog.clear()
    args = tiny_args(work, "fixed")
    args.insert(args.index("batch_size=16") + 1, 'detection_grid={"edge_trims": [0]}')  # one more --set value
    assert bench_detection.main(args + ["--reuse", "--json", str(again)]) == 0
    assert checkpoint.stat().st_mtime_ns == trained_at and "reusing" in caplog.text
    assert json.loads(again.read_text())["runs"][0]["oracle"]["settings"]["edge_trim"] == 0.0  # the config's grid
    # another config (here one more epoch; a later flag wins) trains again
    assert bench_detection.main(tiny_args(work, "fixed") + ["--reuse", "--epochs", "2"]) == 0
    assert checkpoint.stat().st_mtime_ns != trained_at


def test_malformed_overrides_name_the_flag():
    with pytest.raises(SystemExit, match="--set 'epochs': expected KEY=JSON"):
        bench_detection.key_values(["epochs"], "--set")


def test_a_kept_work_dir_makes_one_feature_folder_per_feature_setting(bench_results):
    work, _ = bench_results
    folders = {}
    for n_mels in ("16", "12"):  # the fixture's setting, then another one in the same --work_dir
        args = bench_detection.parse_args(tiny_args(work, "fixed") + ["--features", f"n_mels={n_mels}"])
        bench = bench_detection.Bench(args, work)
        bench.prepare_data()
        folders[n_mels] = bench.feature_dir("fixed")
    assert folders["16"] != folders["12"]
    for n_mels, folder in folders.items():
        recorded = json.loads((folder / LISTS_DIR / FEATURE_CONFIG).read_text())
        assert recorded["feature_params"]["n_mels"] == int(n_mels)


def test_the_bench_builds_the_demo_that_make_demo_builds():
    """bench_detection's demo size and soundscapes are the Makefile's (they live in both: make has no Python)."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert f"--clips_per_class {bench_detection.DEMO_CLIPS_PER_CLASS} " in makefile
    splits = {**bench_detection.SOUNDSCAPES, "train": bench_detection.TRAIN_SOUNDSCAPES}
    for split, (n_mixtures, seed) in splits.items():
        command = makefile.split(f"filenames/{split}.txt", 1)[1].split("\n\t$(PY)", 1)[0]
        assert f"--n_mixtures {n_mixtures} --seed {seed}" in command, split


def test_training_soundscapes_are_the_benchs_own_and_built_only_when_used(tmp_path):
    work = tmp_path / "bench"
    args = tiny_args(work, "soundscapes") + ["--n_train_mixtures", "3", "--json", str(tmp_path / "a.json")]
    assert bench_detection.main(args) == 0
    config = json.loads((work / "runs" / "soundscapes_seed3" / "checkpoints" / bench_detection.RUN_CONFIG).read_text())
    assert config["train_soundscapes"] == str(work / "soundscapes" / "train")
    assert len(read_events_csv(work / "soundscapes" / "train" / "events.csv")) == 2  # half of the 3 mixtures
    plain = tmp_path / "plain"  # the recipe (configs/demo_cnn.json names training soundscapes) with them turned off
    args = tiny_args(plain, "recipe")
    args.insert(args.index("batch_size=16") + 1, "train_soundscapes=null")  # one --set flag: a second replaces it
    assert bench_detection.main(args) == 0
    assert not (plain / "soundscapes" / "train").exists()
