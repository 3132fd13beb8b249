"""Recipes in one file: a config's ``features`` block drives preprocessing and is checked by training and evaluation."""
from __future__ import annotations

import json
import logging
import math
import shlex
from pathlib import Path

import numpy as np
import pytest

import evaluation
import preprocessingBabyCrying
from audioclf.config import ConfigError, Params
from audioclf.evaluation import run_evaluation
from audioclf.feature_flags import FEATURE_FLAGS, feature_params_from_flags
from audioclf.frontend import FeatureParams
from audioclf.training import train
from audioclf.transfer import TransferError
from tools.synthetic_features import make_config, make_feature_dataset

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"datapath": "f", "trainlist": "t", "vallist": "v", "evallist": "e", "checkpoint_dir": "c",
           "model": "audiocnn", "epochs": 1, "batch_size": 8, "lr": 0.01}
BASE = ["--csv_file", "meta.csv", "--data_dir", "wav"]
SMALL_BLOCK = {"samplerate": 8000, "n_fft": 256, "n_mels": 16, "n_frames": 20, "whole_clips": True, "max_seconds": 1.0}


def write_config(path: Path, **keys) -> Path:
    """A config file of MINIMAL plus ``keys``."""
    path.write_text(json.dumps({**MINIMAL, **keys}))
    return path


# ---- the block in the schema -----------------------------------------------------------

def test_a_valid_block_is_kept_with_numbers_normalised_to_the_flags_types():
    params = Params.from_dict({**MINIMAL, "features": {"frontend": "yamnet", "whole_clips": True, "max_seconds": 5}})
    assert params.features == {"frontend": "yamnet", "whole_clips": True, "max_seconds": 5.0}
    assert isinstance(params.features["max_seconds"], float)
    assert Params.from_dict(MINIMAL).features == {}  # no block: nothing expected


def test_an_unknown_flag_names_the_key_the_file_and_every_valid_name(tmp_path):
    path = write_config(tmp_path / "recipe.json", features={"nmels": 64})
    with pytest.raises(ConfigError) as error:
        Params(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert 'unknown feature flag "features.nmels" (did you mean "n_mels"?)' in message
    assert ", ".join(FEATURE_FLAGS) in message
    assert set(FEATURE_FLAGS) == {"frontend", "samplerate", "window_size", "hop_size", "n_fft", "n_mels", "n_frames",
                                  "pad_mode", "whole_clips", "max_seconds", "trim_db", "level_db"}


@pytest.mark.parametrize("block, problem", [
    ({"n_mels": "64"}, '"features.n_mels" must be an int, got "64" (str)'),
    ({"n_frames": 96.0}, '"features.n_frames" must be an int, got 96.0 (float)'),
    ({"whole_clips": 1}, '"features.whole_clips" must be true or false, got 1 (int)'),
    ({"max_seconds": "5"}, '"features.max_seconds" must be a number'),
    ({"frontend": "vggish"}, '"features.frontend" must be one of "default", "yamnet"; got "vggish"'),
    ({"pad_mode": "reflect"}, '"features.pad_mode" must be one of "repeat", "zeros"; got "reflect"'),
    ({"max_seconds": 5}, '"features.max_seconds" only applies to whole clips'),
    ({"n_fft": 256, "n_mels": 200}, "--n_mels 200 exceeds the 129 FFT bins of --n_fft 256"),
    ({"n_frames": 0}, "--n_frames must be positive, got 0"),
    ({"window_size": math.inf}, "--window_size must be a positive finite number, got inf"),  # JSON5's Infinity
    ({"whole_clips": True, "max_seconds": math.inf}, "--max_seconds must be a positive finite number, got inf"),
])
def test_wrong_types_and_inconsistent_features_are_errors_naming_the_key(block, problem):
    with pytest.raises(ConfigError) as error:
        Params.from_dict({**MINIMAL, "features": block}, source="recipe.json")
    assert problem in str(error.value) and str(error.value).startswith("recipe.json: ")


def test_every_shipped_block_equals_the_same_flags_on_the_command_line(tmp_path, monkeypatch):
    """The block holds preprocessing flags by name: --config_path X gives what its flags typed out give."""
    monkeypatch.chdir(tmp_path)
    blocks = {}
    for path in sorted((REPO / "configs").glob("*.json")):
        block = Params(path).features
        assert block, f"{path.name} records no preprocessing"
        flags = [f"--{name}" if value is True else f"--{name} {value}" for name, value in block.items()]
        typed = preprocessingBabyCrying.parse_args(BASE + shlex.split(" ".join(flags)))
        from_config = preprocessingBabyCrying.parse_args(BASE + ["--config_path", str(path)])
        assert preprocessingBabyCrying.feature_params_from_args(from_config) == \
            preprocessingBabyCrying.feature_params_from_args(typed) == feature_params_from_flags(block), path.name
        blocks[path.stem] = preprocessingBabyCrying.feature_params_from_args(from_config)
    # the recipes of issue 10: YAMNet's front end, clips whole up to 5 s
    for name in ("esc50", "babycry", "demo"):
        assert blocks[name] == FeatureParams.preset("yamnet", max_seconds=5.0)
    assert blocks["fsdd"] == FeatureParams(sample_rate=8000, n_fft=512, n_mels=40, n_frames=100)  # the README's flags
    assert blocks["demo_cnn"] == FeatureParams(n_mels=64, n_frames=100, max_seconds=10.0)  # whole clips (issue 11)


# ---- preprocessingBabyCrying.py --config_path ------------------------------------------

def test_preprocessing_takes_its_features_from_the_block(dataset_factory, tmp_path):
    data = dataset_factory(class_names=("a", "b"), clips_per_class=4, duration=1.3, sample_rate=8000)
    config = write_config(tmp_path / "recipe.json", datapath=str(data.save_dir), features=SMALL_BLOCK)
    assert preprocessingBabyCrying.main(["--csv_file", str(data.csv_file), "--data_dir", str(data.data_dir),
                                         "--save_dir", str(data.save_dir), "--config_path", str(config),
                                         "--num_workers", "1"]) == 0
    recorded = json.loads((data.save_dir / "filenames" / "feature_config.json").read_text())["feature_params"]
    expected = FeatureParams(sample_rate=8000, n_fft=256, n_mels=16, n_frames=20, max_seconds=1.0)
    assert recorded == expected.to_dict()
    # whole clips cut at max_seconds: 1.3-s clips give the frames of 1 s
    assert np.load(data.feature_path(data.rows[0])).shape == (16, expected.max_frames)


def test_a_flag_repeating_the_blocks_value_is_fine_and_one_contradicting_it_is_an_error(tmp_path, capsys):
    config = write_config(tmp_path / "recipe.json", features=SMALL_BLOCK)
    # n_mels repeats the block; hop_size repeats the preset's value, which the block leaves it at
    args = preprocessingBabyCrying.parse_args(BASE + ["--config_path", str(config), "--n_mels", "16", "--hop_size", "10"])
    assert (args.n_mels, args.hop_size, args.n_frames, args.whole_clips, args.max_seconds) == (16, 10.0, 20, True, 1.0)
    with pytest.raises(SystemExit) as exit_info:
        preprocessingBabyCrying.parse_args(BASE + ["--config_path", str(config), "--n_mels", "32",
                                                   "--max_seconds", "2"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "--n_mels 32 (the block has 16), --max_seconds 2.0 (the block has 1.0)" in message
    assert f'differ from the "features" block of {config}' in message


@pytest.mark.parametrize("flags, conflict", [
    (["--hop_size", "20"], "--hop_size 20.0 (the block leaves it at 10.0)"),
    (["--frontend", "yamnet"], "--frontend yamnet (the block leaves it at 'default')"),
])
def test_a_flag_the_block_leaves_out_may_not_change_the_blocks_features(tmp_path, capsys, flags, conflict):
    """Training checks every feature parameter against the block, so preprocessing refuses to make others."""
    config = write_config(tmp_path / "recipe.json", features=SMALL_BLOCK)
    with pytest.raises(SystemExit) as exit_info:
        preprocessingBabyCrying.parse_args(BASE + ["--config_path", str(config), *flags])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert conflict in message and f'differ from the "features" block of {config}' in message


def test_a_config_without_a_block_or_with_a_bad_one_is_refused_by_preprocessing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocessingBabyCrying.parse_args(BASE + ["--config_path", str(write_config(tmp_path / "plain.json"))])
    assert f'{tmp_path / "plain.json"}: no "features" block' in capsys.readouterr().err
    bad = write_config(tmp_path / "bad.json", features={"n_mel": 64})
    with pytest.raises(SystemExit):
        preprocessingBabyCrying.parse_args(BASE + ["--config_path", str(bad)])
    assert f'{bad}: unknown feature flag "features.n_mel" (did you mean "n_mels"?)' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preprocessingBabyCrying.parse_args(BASE + ["--config_path", str(tmp_path / "missing.json")])
    assert "config file not found" in capsys.readouterr().err


def test_a_save_dir_other_than_the_configs_datapath_is_warned_about(tmp_path, caplog):
    config = write_config(tmp_path / "recipe.json", datapath=str(tmp_path / "features"), features=SMALL_BLOCK)
    with caplog.at_level(logging.WARNING, logger="preprocess"):
        preprocessingBabyCrying.parse_args(BASE + ["--config_path", str(config), "--save_dir", str(tmp_path / "f")])
    assert f"is not the datapath of {config}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="preprocess"):
        preprocessingBabyCrying.parse_args(BASE + ["--config_path", str(config), "--save_dir",
                                                   str(tmp_path / "features")])
    assert caplog.text == ""


# ---- training and evaluation check the features against the block --------------------

BLOCK_OF_SYNTHETIC = {"n_fft": 512, "n_mels": 32, "n_frames": 40}  # make_feature_dataset's features


def recipe_config(root: Path, features: Path, block: dict, name: str = "config.json", **keys) -> Path:
    """``make_config``'s tiny training config with a ``features`` block."""
    path = make_config(root, features, **keys)
    config = {**json.loads(path.read_text()), "features": block}
    path.unlink()
    (root / name).write_text(json.dumps(config))
    return root / name


def test_training_refuses_features_made_otherwise_naming_each_parameter_and_the_command(tmp_path):
    features = make_feature_dataset(tmp_path, per_class=(4, 2, 2))
    config = recipe_config(tmp_path, features, {**BLOCK_OF_SYNTHETIC, "samplerate": 8000, "n_fft": 256})
    with pytest.raises(TransferError) as error:
        train(Params(config), show_progress=False)
    message = str(error.value)
    assert f'the features of {features / "filenames" / "feature_config.json"} differ from the "features" block ' \
           f"of {config}: samplerate 16000 (config: 8000), n_fft 512 (config: 256)." in message  # the block's names
    assert (f"python preprocessingBabyCrying.py --csv_file CSV --data_dir DIR --save_dir {features} "
            f"--config_path {config} --overwrite") in message
    assert not (tmp_path / "checkpoints").exists()  # refused before the run started


def test_evaluation_refuses_features_that_no_longer_match_the_block(tmp_path, caplog):
    features = make_feature_dataset(tmp_path, per_class=(4, 2, 2))
    config = recipe_config(tmp_path, features, BLOCK_OF_SYNTHETIC, epochs=1)
    train(Params(config), show_progress=False)  # the block matches: trains
    assert run_evaluation(Params(config))["n_clips"] == 6
    changed = recipe_config(tmp_path, features, {**BLOCK_OF_SYNTHETIC, "n_frames": 50}, "changed.json", epochs=1)
    with pytest.raises(TransferError, match=r"differ from the \"features\" block of .*: n_frames 40 \(config: 50\)"):
        run_evaluation(Params(changed))
    assert evaluation.main(["--config_path", str(changed), "--no_progress"]) == 1
    assert "--config_path" in caplog.text and "n_frames 40 (config: 50)" in caplog.text


def test_a_pretrained_yamnet_recipe_on_default_features_says_to_fix_the_block(tmp_path):
    """The one pretrained front-end check, reached with a block that matches the (wrong) features."""
    features = make_feature_dataset(tmp_path, per_class=(4, 2, 2), n_frames=96)
    config = recipe_config(tmp_path, features, {**BLOCK_OF_SYNTHETIC, "n_frames": 96}, model="yamnet",
                           pretrained=True, model_args={})
    with pytest.raises(TransferError) as error:
        train(Params(config), show_progress=False)
    message = str(error.value)
    assert 'pretrained "yamnet" was trained on the "yamnet" front end' in message
    assert f'set "frontend": "yamnet" in the "features" block of {config}' in message


# ---- bench_accuracy --config: a recipe end to end on any CSV with a fold column ------------------

def test_the_esc50_recipe_runs_five_fold_cross_validation_on_a_generated_csv(tmp_path, dataset_factory,
                                                                             yamnet_weights):
    """The issue's command, on 30 generated 1.5-s clips in folds 1-5: features from the recipe's block."""
    from bench import bench_accuracy

    data = dataset_factory(class_names=("dog", "rain"), clips_per_class=15, duration=1.5, n_folds=5)
    results_path = tmp_path / "results.json"
    assert bench_accuracy.main([
        "--config", str(REPO / "configs" / "esc50.json"), "--csv_file", str(data.csv_file),
        "--data_dir", str(data.data_dir), "--protocol", "speaker", "--heldout", "1", "2", "3", "4", "5",
        "--epochs", "1", "--num_workers", "1", "--work_dir", str(tmp_path / "work"),
        "--json", str(results_path)]) == 0
    (speaker,) = json.loads(results_path.read_text())
    block = Params(REPO / "configs" / "esc50.json").features
    assert [run["evaluation_folds"] for run in speaker["runs"]] == [["1"], ["2"], ["3"], ["4"], ["5"]]
    for run in speaker["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["macro_f1"] <= 1.0
        assert run["features"] == block
        lists = tmp_path / "work" / run["run"] / "lists"
        used = json.loads((lists / "feature_config.json").read_text())
        assert used["feature_params"] == FeatureParams.preset("yamnet", max_seconds=5.0).to_dict()
        assert len((lists / "evaluation.txt").read_text().splitlines()) == 6  # its fold: 3 clips per class
        trained = json.loads((tmp_path / "work" / run["run"] / "checkpoints" / "config.json").read_text())
        assert (trained["model"], trained["pretrained"], trained["features"]) == ("yamnet", True, block)
    assert speaker["accuracy"] == pytest.approx(sum(run["accuracy"] for run in speaker["runs"]) / 5)


def test_the_readme_recipe_commands_parse_and_agree_with_the_recipe(tmp_path, monkeypatch):
    """The "Recipes" section's commands: preprocessing writes the recipe's datapath with its block; the bench reads it."""
    import re

    import train
    from bench import bench_accuracy

    monkeypatch.chdir(tmp_path)
    section = (REPO / "README.md").read_text().split("## Recipes: one file each", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert [command[1] if command[1] != "-m" else command[2] for command in commands] == [
        "tools.datasets", "preprocessingBabyCrying.py", "train.py", "evaluation.py", "bench.bench_accuracy"]
    _, preprocess, training, evaluating, bench = commands
    recipe = REPO / preprocess[preprocess.index("--config_path") + 1]
    args = preprocessingBabyCrying.parse_args([str(recipe) if arg.startswith("configs/") else arg
                                               for arg in preprocess[2:]])
    assert preprocessingBabyCrying.feature_params_from_args(args) == feature_params_from_flags(Params(recipe).features)
    assert Path(Params(recipe).datapath) == tmp_path / args.save_dir
    for command in (training, evaluating):
        assert REPO / train.parse_args(command[2:]).config_path == recipe
    # the bench reads its config when parsing (to check the feature flags): the README's path, in the repository
    bench_args = bench_accuracy.parse_args([str(REPO / arg) if arg.startswith("configs/") else arg
                                            for arg in bench[3:]])
    assert (REPO / bench_args.config, bench_args.protocol, bench_args.heldout) == \
        (recipe, "speaker", ["1", "2", "3", "4", "5"])
    assert bench_args.csv_file == Path(args.csv_file) and bench_args.data_dir == Path(args.data_dir)


def test_bench_feature_flags_default_to_the_block_and_explicit_ones_override_it():
    from bench import bench_accuracy

    def flags(*argv: str) -> dict:
        return bench_accuracy.feature_flags(bench_accuracy.parse_args(["--config", str(REPO / "configs/fsdd.json"),
                                                                       *argv]))
    block = {"samplerate": 8000, "n_fft": 512, "n_mels": 40, "n_frames": 100}
    assert flags() == block
    assert flags("--n_mels", "16", "--whole_clips") == {**block, "n_mels": 16, "whole_clips": True}
    # another front end: the block's values belong to the default one, so none of them is kept
    assert flags("--frontend", "yamnet") == {"frontend": "yamnet"}
    assert flags("--frontend", "default", "--n_frames", "50") == {**block, "frontend": "default", "n_frames": 50}


@pytest.mark.parametrize("argv, problem", [
    (["--max_seconds", "3"], '"features.max_seconds" only applies to whole clips'),
    (["--n_mels", "600"], "--n_mels 600 exceeds the 257 FFT bins of --n_fft 512"),
])
def test_bench_feature_flags_that_do_not_define_features_are_refused_before_any_run(argv, problem, capsys):
    """Refused at parse time (not after preprocessing, in the per-run config), naming the flags' source."""
    from bench import bench_accuracy

    with pytest.raises(SystemExit) as exit_info:
        bench_accuracy.parse_args(["--config", str(REPO / "configs/fsdd.json"), *argv])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert problem in message and "configs/fsdd.json" in message and "with the flags given here" in message
