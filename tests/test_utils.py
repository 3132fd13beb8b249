"""Tests for utils.py: config loading/validation, RunningAverage, atomic files, checkpoints."""

import argparse
import copy
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

import utils
from audioclf import checkpoint as checkpoint_module
from audioclf.files import OutputPathError, check_writable
from utils import (
    CONFIG_SCHEMA,
    CheckpointError,
    ConfigError,
    Params,
    RunningAverage,
    atomic_write_json,
    atomic_write_text,
    config_reference_markdown,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)

README_EXAMPLE = """\
// Example config: comments and trailing commas are allowed.
{
    "datapath": "features/esc50",        // folder with the .npy features
    "trainlist": "features/filenames/train.txt",
    "vallist": "features/filenames/val.txt",
    "evallist": "features/filenames/eval.txt",
    "checkpoint_dir": "checkpoints/esc50_resnet18",
    /* model and optimisation */
    "model": "resnet18",
    "pretrained": true,
    "epochs": 30,
    "batch_size": 32,
    "lr": 0.001,
    "scheduler": "cosine",
    "model_args": {"dropout": 0.2,},
}
"""

MINIMAL = {
    "datapath": "/data/features",
    "trainlist": "/data/train.txt",
    "vallist": "/data/val.txt",
    "evallist": "/data/eval.txt",
    "checkpoint_dir": "/runs/exp1",
    "model": "resnet18",
    "epochs": 10,
    "batch_size": 8,
    "lr": 0.01,
}


def write_config(tmp_path: Path, text: str, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Params.from_dict(data, source="cfg.json")
    return info.value


# ---- loading -------------------------------------------------------------------------------


def test_readme_example_with_comments_and_trailing_commas_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = Params(write_config(tmp_path, README_EXAMPLE))
    assert params.model == "resnet18"
    assert params.pretrained is True
    assert params.epochs == 30
    assert params.lr == 0.001
    assert params.scheduler == "cosine"
    assert params.model_args == {"dropout": 0.2}
    assert params.datapath == str(tmp_path / "features" / "esc50")
    assert params.source == str(tmp_path / "config.json")


def test_double_slash_inside_strings_survives(tmp_path):
    text = json.dumps({**MINIMAL, "dataset_name": "s3://bucket/x", "model_args": {"url": "http://x"}})
    text = text.replace(', "model"', ',  // a comment\n "model"')
    params = Params(write_config(tmp_path, text))
    assert params.dataset_name == "s3://bucket/x"
    assert params.model_args == {"url": "http://x"}


def test_url_valued_path_is_not_made_absolute():
    params = Params.from_dict({**MINIMAL, "datapath": "s3://bucket/features"})
    assert params.datapath == "s3://bucket/features"


def test_syntax_error_names_file_and_line(tmp_path):
    path = write_config(tmp_path, '{\n  "model": "resnet18",\n  "epochs": ,\n}\n')
    with pytest.raises(ConfigError) as info:
        Params(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert isinstance(info.value, ValueError)


def test_duplicate_key_is_an_error(tmp_path):
    text = json.dumps(MINIMAL)[:-1] + ', "lr": 0.1}'
    with pytest.raises(ConfigError, match='Duplicate key "lr"'):
        Params(write_config(tmp_path, text))


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Params(tmp_path / "nope.json")


def test_a_folder_given_as_the_config_is_a_config_error_naming_it(tmp_path):
    """train.py, evaluation.py and preprocessing print a ConfigError as one line, not a traceback."""
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))}: cannot read the config file: Is a directory$"):
        Params(tmp_path)


def test_top_level_must_be_object(tmp_path):
    with pytest.raises(ConfigError, match="JSON object"):
        Params(write_config(tmp_path, "[1, 2]"))


# ---- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typo, suggestion",
    [
        ("leraning_rate", "lr"),
        ("lr_rate", "lr"),
        ("learning_rate", "lr"),
        ("batchsize", "batch_size"),
        ("num_epochs", "epochs"),
        ("normalisation", "normalization"),
        ("LR", "lr"),
    ],
)
def test_unknown_key_suggests_closest(typo, suggestion):
    error = config_error({**MINIMAL, typo: 1})
    assert f'unknown key "{typo}"' in str(error)
    assert f'did you mean "{suggestion}"?' in str(error)


def test_unknown_key_without_close_match_has_no_suggestion():
    error = config_error({**MINIMAL, "zzzzqqqq": 1})
    assert 'unknown key "zzzzqqqq"' in str(error)
    assert "did you mean" not in str(error)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("epochs", "ten", '"epochs" must be int, got "ten" (str)'),
        ("lr", True, '"lr" must be float, got true (bool)'),
        ("batch_size", True, '"batch_size" must be int, got true (bool)'),
        ("epochs", 10.0, '"epochs" must be int, got 10.0 (float)'),
        ("pretrained", 1, '"pretrained" must be bool, got 1 (int)'),
        ("model_args", [1], '"model_args" must be dict, got [1] (list)'),
        ("datapath", None, '"datapath" must be str, got null'),
        ("seed", None, '"seed" must be int, got null'),
    ],
)
def test_wrong_type_names_key_type_and_value(key, value, expected):
    assert expected in str(config_error({**MINIMAL, key: value}))


def test_none_accepted_where_default_is_none():
    params = Params.from_dict({**MINIMAL, "target_class": None, "summaries_dir": None})
    assert params.target_class is None
    assert params.summaries_dir == "/runs/exp1/runs"


def test_missing_required_key_is_named():
    data = dict(MINIMAL)
    del data["datapath"]
    assert 'missing required key "datapath"' in str(config_error(data))


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("normalization", "perband", '"normalization" must be one of "per_band", "per_clip", "global", "none"'),
        ("class_weighting", "inverse", '"none", "balanced"'),
        ("scheduler", "linear", '"step", "cosine", "none"'),
        ("device", "gpu", '"auto", "cpu", "cuda", "cuda:N"'),
        ("device", "cuda:x", '"cuda:N"'),
        ("epochs", 0, '"epochs" must be > 0, got 0'),
        ("batch_size", -4, '"batch_size" must be > 0, got -4'),
        ("lr", 0, '"lr" must be > 0, got 0.0'),
        ("num_workers", -1, '"num_workers" must be >= 0, got -1'),
        ("label_smoothing", 1.5, '"label_smoothing" must be <= 1, got 1.5'),
        ("lr", float("nan"), '"lr" must be a finite number'),
    ],
)
def test_value_constraints(key, value, fragment):
    assert fragment in str(config_error({**MINIMAL, key: value}))


def test_balanced_sampling_with_balanced_class_weights_is_refused():
    """Both even out the classes; together a class weighs 1 / count**2."""
    assert Params.from_dict({**MINIMAL, "balanced_sampling": True}).balanced_sampling
    message = str(config_error({**MINIMAL, "balanced_sampling": True, "class_weighting": "balanced"}))
    assert '"balanced_sampling" and "class_weighting": "balanced" each even out the classes' in message
    assert "keep one" in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_devices(device):
    assert Params.from_dict({**MINIMAL, "device": device}).device == device


def test_all_problems_reported_together_one_per_line():
    data = {**MINIMAL, "epochs": "ten", "lr": True, "batchsize": 4, "normalization": "x"}
    del data["model"]
    error = config_error(data)
    lines = str(error).splitlines()
    assert len(lines) == 5 == len(error.problems)
    assert all(line.startswith("cfg.json: ") for line in lines)
    text = str(error)
    for fragment in ['"epochs"', '"lr"', 'unknown key "batchsize"', '"normalization"', '"model"']:
        assert fragment in text


def test_detection_grid_names_each_bad_field_and_value():
    assert Params.from_dict({**MINIMAL, "detection_grid": {"edge_trims": [0, 0.5]}}).detection_grid == \
        {"edge_trims": [0, 0.5]}
    assert Params.from_dict({**MINIMAL, "detection_grid": {"merge_gaps": [0, 1]}}).detection_grid == \
        {"merge_gaps": [0.0, 1.0]}  # numbers as the settings take them
    error = config_error({**MINIMAL, "detection_grid": {"thresold": [0.5], "thresholds": [0.5, 1.5],
                                                          "median_filters": [2], "merge_gaps": [],
                                                          "edge_trims": [0.1, 0.1]}})
    assert len(error.problems) == 5
    text = str(error)
    assert 'unknown field "thresold" (did you mean "thresholds"? fields: thresholds, median_filters' in text
    assert '"edge_trims" lists a value twice: [0.1, 0.1]' in text
    assert '"thresholds" value 1.5: threshold must lie in (0, 1]' in text
    assert '"median_filters" value 2: median_filter must be an odd number' in text
    assert '"merge_gaps" must be a non-empty list of finite numbers, got []' in text
    assert "must be dict" in str(config_error({**MINIMAL, "detection_grid": [0.5]}))


def test_int_accepted_for_float():
    params = Params.from_dict({**MINIMAL, "lr": 1, "weight_decay": 0})
    assert params.lr == 1.0 and isinstance(params.lr, float)
    assert isinstance(params.weight_decay, float)


def test_scheduler_normalised_to_string():
    assert Params.from_dict({**MINIMAL, "scheduler": True}).scheduler == "step"
    assert Params.from_dict({**MINIMAL, "scheduler": False}).scheduler == "none"
    assert Params.from_dict(MINIMAL).scheduler == "none"
    assert Params.from_dict({**MINIMAL, "scheduler": "cosine"}).scheduler == "cosine"


def test_relative_paths_resolved_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = {**MINIMAL, "datapath": "feats", "trainlist": "lists/train.txt", "checkpoint_dir": "ckpt"}
    params = Params.from_dict(data)
    assert params.datapath == str(tmp_path / "feats")
    assert params.trainlist == str(tmp_path / "lists" / "train.txt")
    assert params.checkpoint_dir == str(tmp_path / "ckpt")
    assert params.summaries_dir == str(tmp_path / "ckpt" / "runs")
    assert params.vallist == "/data/val.txt"  # absolute paths unchanged


def test_defaults_filled():
    params = Params.from_dict(MINIMAL)
    for key, spec in CONFIG_SCHEMA.items():
        if not spec.required and key not in ("summaries_dir", "scheduler", "eval_batch_size"):
            assert params[key] == spec.default, key
    assert params.summaries_dir == "/runs/exp1/runs"
    assert params.eval_batch_size == 4 * params.batch_size
    assert Params.from_dict({**MINIMAL, "eval_batch_size": 7}).eval_batch_size == 7
    assert params.amp is True and params.keep_checkpoints == 5 and params.device == "auto"
    assert params.model_args == {}


def test_mutable_defaults_are_not_shared():
    first = Params.from_dict(MINIMAL)
    first.model_args["depth"] = 3
    assert Params.from_dict(MINIMAL).model_args == {}
    assert CONFIG_SCHEMA["model_args"].default == {}


# ---- access --------------------------------------------------------------------------------


def test_attribute_key_in_get():
    params = Params.from_dict(MINIMAL)
    assert params.lr == params["lr"] == params.get("lr") == 0.01
    assert "lr" in params and "nope" not in params
    assert params.get("nope", 7) == 7
    with pytest.raises(KeyError):
        params["nope"]
    with pytest.raises(AttributeError, match='did you mean "batch_size"'):
        params.batchsize


def test_assigning_unknown_attribute_is_error():
    params = Params.from_dict(MINIMAL)
    with pytest.raises(ConfigError, match='did you mean "lr"'):
        params.learning_rate = 0.1
    with pytest.raises(ConfigError):
        params["bogus"] = 1


def test_assigning_known_attribute_validates():
    params = Params.from_dict(MINIMAL)
    params.epochs = 3
    assert params.epochs == 3
    with pytest.raises(ConfigError, match='"epochs"'):
        params.epochs = "three"
    assert params.epochs == 3


def test_update_validates_and_is_all_or_nothing(tmp_path, monkeypatch):
    params = Params.from_dict(MINIMAL)
    with pytest.raises(ConfigError) as info:
        params.update({"lr": 0.5, "epochs": -1, "bogus": 1})
    assert len(info.value.problems) == 2
    assert params.lr == 0.01 and params.epochs == 10
    monkeypatch.chdir(tmp_path)
    params.update({"lr": 2, "checkpoint_dir": "elsewhere"})
    assert params.lr == 2.0
    assert params.checkpoint_dir == str(tmp_path / "elsewhere")
    # summaries_dir was derived, so it follows checkpoint_dir.
    assert params.summaries_dir == str(tmp_path / "elsewhere" / "runs")


def test_to_dict_round_trips_through_save_and_load(tmp_path):
    params = Params.from_dict({**MINIMAL, "model_args": {"dropout": 0.1}, "target_class": "dog"})
    path = tmp_path / "run" / "config.json"
    params.save(path)
    saved = json.loads(path.read_text())
    assert saved == params.to_dict()
    assert list(saved) == list(CONFIG_SCHEMA)
    reloaded = Params(path)
    assert reloaded.to_dict() == params.to_dict()
    assert reloaded == params
    assert list(tmp_path.joinpath("run").iterdir()) == [path]


def test_params_survive_copy_and_pickle():
    params = Params.from_dict(MINIMAL)
    assert copy.deepcopy(params) == params
    assert pickle.loads(pickle.dumps(params)) == params


def test_schema_keys_do_not_shadow_params_methods():
    assert not set(CONFIG_SCHEMA) & set(dir(Params))


def test_config_reference_markdown_lists_every_key():
    table = config_reference_markdown()
    lines = table.strip().splitlines()
    assert lines[0] == "| Key | Type | Default | Meaning |"
    assert len(lines) == 2 + len(CONFIG_SCHEMA)
    assert "| `lr` | float | *required* |" in table
    assert '| `normalization` | str | `"per_band"` |' in table
    assert "`cuda:N`" in table


# ---- RunningAverage ------------------------------------------------------------------------


def test_running_average_weighted_mean():
    meter = RunningAverage()
    assert meter.avg == 0.0 and meter() == 0.0 and meter.count == 0
    meter.update(1.0, n=2)
    meter.update(4.0)
    assert meter.count == 3
    assert meter.total == 6.0
    assert meter.avg == 2.0 == meter()
    meter.update(torch.tensor(0.5), n=4)
    assert meter.avg == pytest.approx(8.0 / 7.0, abs=0, rel=1e-15)
    with pytest.raises(ValueError):
        meter.update(1.0, n=-1)


# ---- atomic files --------------------------------------------------------------------------


def test_atomic_write_text_and_json(tmp_path):
    path = tmp_path / "sub" / "notes.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    json_path = atomic_write_json(tmp_path / "meta.json", {"a": [1, 2]})
    assert json.loads(json_path.read_text()) == {"a": [1, 2]}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["meta.json", "notes.txt", "sub"]


def test_an_output_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = [(tmp_path / "folder", "it is a folder"),
             (tmp_path / "file.txt" / "sub" / "out.csv", "is a file, not a folder")]
    for path, why in cases:
        with pytest.raises(OutputPathError, match=why) as info:  # checked before any work
            check_writable(path, "--output_csv")
        assert str(info.value).startswith(f"cannot write the --output_csv {path}: ")
    with pytest.raises(OutputPathError, match=r"folder\b.*: it is a folder; give a file name"):
        atomic_write_text(tmp_path / "folder", "x")
    with pytest.raises(OutputPathError, match=r"file.txt/sub: a part of its folder path is a file"):
        atomic_write_text(tmp_path / "file.txt" / "sub" / "out.csv", "x")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file.txt", "folder"]
    check_writable(tmp_path / "new" / "deeper" / "out.csv")  # folders still to be made are fine


def test_atomic_write_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "x.json", "old")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# ---- checkpoints ---------------------------------------------------------------------------


def test_save_checkpoint_keeps_last_five_and_best(tmp_path):
    best_epoch = 3
    for epoch in range(1, 8):
        state = {"epoch": epoch, "weights": torch.full((3,), float(epoch))}
        path = save_checkpoint(state, tmp_path, epoch, is_best=epoch == best_epoch, keep=5)
        assert path == tmp_path / f"checkpoint_epoch{epoch:04d}.pth.tar"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"checkpoint_epoch{e:04d}.pth.tar" for e in range(3, 8)] + ["model_best.pth.tar"]
    best = load_checkpoint(tmp_path / "model_best.pth.tar")
    assert best["epoch"] == best_epoch
    assert torch.equal(best["weights"], torch.full((3,), 3.0))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_kill_between_the_two_writes_of_a_best_epoch_leaves_a_run_that_resumes_right(tmp_path, monkeypatch):
    save_checkpoint({"epoch": 1}, tmp_path, 1, is_best=True)
    real = checkpoint_module.atomic_write

    def killed_after_one(path, *args, **kwargs):  # the process dies once the first file of epoch 2 is written
        real(path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "atomic_write", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, tmp_path, 2, is_best=True)
    # model_best already holds epoch 2; the newest epoch file is still 1, so --resume runs epoch 2 again
    assert load_checkpoint(tmp_path / "model_best.pth.tar")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch0001.pth.tar", "model_best.pth.tar"]


def test_keep_zero_keeps_all(tmp_path):
    for epoch in range(7):
        save_checkpoint({"epoch": epoch}, tmp_path, epoch, is_best=False, keep=0)
    assert len(list_checkpoints(tmp_path)) == 7


def test_pruning_never_deletes_file_just_written(tmp_path):
    for epoch in range(10, 13):
        save_checkpoint({"epoch": epoch}, tmp_path, epoch, is_best=False, keep=2)
    path = save_checkpoint({"epoch": 1}, tmp_path, 1, is_best=False, keep=2)
    assert path.exists()


def test_list_and_latest_checkpoint_sorted_by_epoch(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == []
    assert latest_checkpoint(tmp_path) is None
    for epoch in (2, 10, 9999, 10000):
        save_checkpoint({"epoch": epoch}, tmp_path, epoch, is_best=epoch == 2, keep=0)
    (tmp_path / "notes.txt").write_text("x")
    epochs = [load_checkpoint(p)["epoch"] for p in list_checkpoints(tmp_path)]
    assert epochs == [2, 10, 9999, 10000]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_epoch10000.pth.tar"


def test_load_checkpoint_round_trips_nested_state(tmp_path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 4,
        "best_metric": 0.75,
        "config": Params.from_dict(MINIMAL).to_dict(),
        "class_names": ["cat", "dog"],
        "feature_params": {"n_mels": 64, "sample_rate": 16000, "window": None, "shape": (1, 64)},
    }
    path = save_checkpoint(state, tmp_path, 4, is_best=True)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4 and loaded["best_metric"] == 0.75
    assert loaded["config"] == state["config"]
    assert loaded["class_names"] == ["cat", "dog"]
    assert loaded["feature_params"] == state["feature_params"]
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    restored = torch.optim.Adam(torch.nn.Linear(4, 2).parameters(), lr=1e-3)
    restored.load_state_dict(loaded["optimizer"])
    assert restored.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_state_that_weights_only_cannot_load_is_refused_at_save(tmp_path):
    import numpy as np

    with pytest.raises(CheckpointError, match="weights_only"):
        save_checkpoint({"best_metric": np.float64(0.5)}, tmp_path, 1, is_best=True)
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_error_names_path(tmp_path):
    path = save_checkpoint({"weights": torch.arange(1000.0)}, tmp_path, 1, is_best=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    empty = tmp_path / "empty.pth.tar"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth.tar"):
        load_checkpoint(empty)


def test_a_text_file_as_checkpoint_gets_one_line_that_says_what_to_do(tmp_path):
    path = tmp_path / "model_best.pth.tar"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "not a torch.save file" in message
    assert "use one that train.py wrote" in message and "weights_only" not in message
    legacy = tmp_path / "legacy.pth.tar"  # the pre-zip torch.save format still loads
    torch.save({"epoch": 3}, legacy, _use_new_zipfile_serialization=False)
    assert load_checkpoint(legacy) == {"epoch": 3}
    namespace = tmp_path / "namespace.pth.tar"  # a real checkpoint that weights_only refuses: say why
    torch.save({"args": argparse.Namespace(lr=0.1)}, namespace)
    with pytest.raises(CheckpointError, match=r"it holds objects other than tensors and plain values "
                                              r"\(.*Unsupported global: GLOBAL argparse.Namespace") as info:
        load_checkpoint(namespace)
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)


def test_missing_checkpoint_suggests_training(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint(tmp_path / "model_best.pth.tar")
    assert str(tmp_path / "model_best.pth.tar") in str(info.value)
    assert "python train.py --config_path" in str(info.value)


def test_best_checkpoint_name_constant():
    assert utils.BEST_CHECKPOINT_NAME == "model_best.pth.tar"
