"""The seams: serving imports no training code, each shared constant is spelt once, devices fit the job."""
from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import predict
from audioclf import distributed
from audioclf.checkpoint import model_from_checkpoint
from audioclf.classifier import AudioClassifier, constructor_args
from audioclf.config import Params
from audioclf.events import DetectionParams
from audioclf.inference import Predictor
from audioclf.runtime import DistInfo, fold_batch_norms, iter_outputs, predict_probabilities, resolve_device
from audioclf.training import train
from models import get_model_entry, list_models
from tools.synthetic_features import make_config, make_feature_dataset

REPO = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("audioclf.training", "audioclf.distributed", "audioclf.augment", "dataloaders")


@functools.cache
def library_sources() -> dict[Path, ast.Module]:
    """Every Python file of the project except the tests, parsed."""
    paths = [path for path in REPO.rglob("*.py")
             if path.relative_to(REPO).parts[0] not in ("tests", ".venv", "data", "runs", "features")
             and not path.relative_to(REPO).parts[0].startswith(".")]
    return {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(paths)}


def string_constants(tree: ast.Module) -> list[str]:
    """String literals of a module, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


# ---------------------------------------------------------------------------------------
# Serving does not import training
# ---------------------------------------------------------------------------------------

def test_importing_predict_imports_no_training_code():
    code = ("import json, sys; import predict; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({TRAINING_ONLY!r}))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------------------------------
# Constants spelt once
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["feature_config.json", "feature_params.json", "skipped.txt", "filenames",
                                  "operating_point.json", "scores", "score.txt", "probabilities.csv",
                                  "metrics.json", "report.txt", "model_best.pth.tar", "roc_curve.png",
                                  "pr_curve.png", "confusion_matrix.png"])
def test_each_file_name_is_spelt_once(name):
    places = [f"{path.relative_to(REPO)}" for path, tree in library_sources().items()
              for value in string_constants(tree) if value == name]
    assert len(places) == 1, f"{name!r} is spelt in {places}; import the constant instead"


def test_collars_and_segment_length_are_defined_once():
    events = ast.parse((REPO / "audioclf/events.py").read_text())
    defaults = {}
    for node in ast.walk(events):
        if isinstance(node, ast.FunctionDef):
            arguments = node.args.args[len(node.args.args) - len(node.args.defaults):]
            for argument, default in zip(arguments, node.args.defaults):
                if argument.arg in ("t_collar", "percentage_of_length", "segment_s"):
                    defaults.setdefault(argument.arg, []).append(default)
    assert set(defaults) == {"t_collar", "percentage_of_length", "segment_s"}
    for argument, values in defaults.items():
        assert all(isinstance(value, ast.Name) for value in values), f"{argument} has a literal default"
    for path, tree in library_sources().items():  # nobody else passes a collar of their own
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg in ("t_collar", "percentage_of_length"):
                assert not isinstance(node.value, ast.Constant), f"{path}: literal {node.arg}"


def numeric_constants(tree: ast.Module) -> list[float]:
    """Number literals of a module (booleans left out)."""
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)]


def test_yamnets_numbers_are_defined_once():
    """YAMNet's params.py (patches, STFT, mel bands) is spelt in audioclf/frontend.py only; the port imports it."""
    sources = library_sources()
    yamnet_numbers = {96, 48, 0.96, 0.48, 0.975, 15600, 16000, 25, 10, 160, 400, 125, 7500, 0.001}
    port = sorted(set(numeric_constants(sources[REPO / "models/yamnet.py"])) & yamnet_numbers)
    assert port == [], f"models/yamnet.py spells YAMNet's {port}; import them from audioclf.frontend"
    frontend = sources[REPO / "audioclf/frontend.py"]
    assert numeric_constants(frontend).count(96) == 1 and numeric_constants(frontend).count(48) == 1
    preset = next(node.value for node in ast.walk(frontend) if isinstance(node, ast.Assign)
                  and getattr(node.targets[0], "id", "") == "YAMNET_PRESET")
    n_frames = next(keyword.value for keyword in preset.keywords if keyword.arg == "n_frames")
    assert isinstance(n_frames, ast.Name) and n_frames.id == "YAMNET_PATCH_FRAMES"
    patch_frames = [f"{path.relative_to(REPO)}" for path, tree in sources.items()
                    if path.relative_to(REPO).parts[0] != "tools" and 96 in numeric_constants(tree)]
    assert patch_frames == ["audioclf/frontend.py"], f"a YAMNet patch (96 frames) is spelt in {patch_frames}"


def plain_writes(tree: ast.Module) -> list[int]:
    """Lines that write a file in place: ``write_text``/``write_bytes``, ``open(..., "w"/"a"/"x")``."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        modes = [arg.value for arg in node.args[1:2] if isinstance(arg, ast.Constant)]
        modes += [keyword.value.value for keyword in node.keywords
                  if keyword.arg == "mode" and isinstance(keyword.value, ast.Constant)]
        if isinstance(node.func, ast.Attribute) and node.args and isinstance(node.args[0], ast.Constant):
            modes.append(node.args[0].value)  # path.open("w")
        if name in ("write_text", "write_bytes") or (
                name == "open" and any(isinstance(mode, str) and set(mode) & set("wax") for mode in modes)):
            lines.append(node.lineno)
    return lines


def test_the_pipeline_writes_its_files_atomically():
    """Every file the library and the scripts write goes through audioclf.files (temp file + rename),
    so an interrupted run never leaves a half-written result. Tools and benches make throwaway data."""
    allowed = {"audioclf/files.py",  # the atomic writers themselves
               "models/weights.py",  # downloads into a temp file it renames when complete
               "dataloaders/feature_cache.py"}  # opens the build lock file ("a"), writes nothing in it
    found = {f"{path.relative_to(REPO)}:{line}" for path, tree in library_sources().items()
             if path.relative_to(REPO).parts[0] not in ("tools", "bench") and str(path.relative_to(REPO)) not in allowed
             for line in plain_writes(tree)}
    assert not found, f"files written in place (use audioclf.files' atomic writers): {sorted(found)}"


def test_predict_takes_its_detection_defaults_from_detection_params():
    tree = ast.parse((REPO / "predict.py").read_text())
    flags = {"--threshold", "--threshold_low", "--median_filter", "--min_duration", "--merge_gap", "--edge_trim"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            flag = getattr(node.args[0], "value", None)
            if flag in flags:
                default = next(k.value for k in node.keywords if k.arg == "default")
                assert not (isinstance(default, ast.Constant) and default.value is not None), flag
    numbers = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
               and isinstance(node.value, float)]
    assert numbers == []  # no threshold or duration of its own
    args = predict.parse_args(["x.wav", "--checkpoint", "c.pth.tar"])
    # flags left out are None (not given): the operating point's settings, else DetectionParams' defaults
    assert (args.threshold, args.threshold_low, args.median_filter, args.min_duration, args.merge_gap,
            args.edge_trim) == (None,) * 6
    assert predict.detection_settings(args, ["babycry", "noise"], None)["babycry"] == DetectionParams()


# ---------------------------------------------------------------------------------------
# Devices under torchrun
# ---------------------------------------------------------------------------------------

@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has ``n`` visible GPUs."""
    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return fake


TWO_LOCAL = dict(world_size=2, local_world_size=2)


def test_each_torchrun_process_takes_its_local_ranks_gpu(gpus):
    gpus(2)
    assert resolve_device("cuda", DistInfo(rank=1, local_rank=1, **TWO_LOCAL)) == torch.device("cuda", 1)
    assert resolve_device("auto", DistInfo(rank=3, world_size=4, local_rank=1, local_world_size=2)) == \
        torch.device("cuda", 1)
    assert resolve_device("cpu", DistInfo(rank=1, local_rank=1, **TWO_LOCAL)) == torch.device("cpu")


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_more_torchrun_processes_than_gpus_is_a_clear_error(gpus, device):
    gpus(1)
    with pytest.raises(ValueError, match=r"2 processes on this node, but only 1 GPU\(s\) are visible") as error:
        resolve_device(device, DistInfo(rank=1, local_rank=1, **TWO_LOCAL))
    assert "--nproc_per_node=1" in str(error.value) and '"device": "cpu"' in str(error.value)


def test_cuda_n_under_torchrun_is_a_clear_error(gpus):
    gpus(2)
    with pytest.raises(ValueError, match='"device": "cuda:0" cannot be used under torchrun.*use "cuda"'):
        resolve_device("cuda:0", DistInfo(rank=0, local_rank=0, **TWO_LOCAL))


def test_single_process_devices(gpus):
    gpus(1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r'"cuda:1" was asked for, but only 1 GPU\(s\) are visible'):
        resolve_device("cuda:1")
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_dist_info_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert DistInfo.from_env() == DistInfo()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert DistInfo.from_env() == DistInfo(rank=3, world_size=4, local_rank=1, local_world_size=2)


def test_training_refuses_a_gpu_count_that_does_not_fit_before_any_work(tmp_path, gpus, monkeypatch):
    gpus(1)
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)

    def no_group(*args, **kwargs):
        raise AssertionError("the process group must not be joined")

    monkeypatch.setattr(distributed.dist, "init_process_group", no_group)
    features = make_feature_dataset(tmp_path)
    params = Params(make_config(tmp_path, features, device="auto"))
    with pytest.raises(ValueError, match="--nproc_per_node=1"):
        train(params, show_progress=False)
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------------------------
# One helper: batches -> probabilities, activation from the model
# ---------------------------------------------------------------------------------------

def tiny_classifier() -> AudioClassifier:
    torch.manual_seed(0)
    return AudioClassifier(**constructor_args("audiocnn", 3, 16, {"width": 4})).eval()


def test_only_yamnets_audioset_head_is_multi_label_and_trained_models_are_single_label():
    assert [name for name in list_models() if get_model_entry(name).multi_label] == ["yamnet"]
    assert tiny_classifier().multi_label is False
    yamnet = AudioClassifier(**constructor_args("yamnet", 2, 64, {}))  # a head trained here: cross-entropy
    assert yamnet.multi_label is False and yamnet.backbone.multi_label is False


def test_probabilities_use_the_models_activation():
    model = tiny_classifier()
    inputs = torch.randn(5, 1, 16, 20)  # (B, 1, n_mels, n_frames)
    with torch.no_grad():
        logits = model(inputs)
    probabilities, labels = predict_probabilities(model, [inputs[:3], inputs[3:]], torch.device("cpu"))
    assert labels is None
    torch.testing.assert_close(torch.from_numpy(probabilities), torch.softmax(logits, dim=1))
    assert probabilities.sum(axis=1) == pytest.approx(1.0, abs=1e-6)
    model.multi_label = True  # as a multi-label head (e.g. AudioSet's) would say
    multi, _ = predict_probabilities(model, [inputs], torch.device("cpu"), channels_last=True)
    torch.testing.assert_close(torch.from_numpy(multi), torch.sigmoid(logits))


def test_labelled_batches_give_logits_probabilities_and_targets():
    model = tiny_classifier()
    inputs, targets = torch.randn(4, 1, 16, 20), torch.tensor([0, 2, 1, 0])
    (output,) = list(iter_outputs(model, [(inputs, targets)], torch.device("cpu")))
    assert output.logits.dtype == torch.float32 and output.logits.shape == (4, 3)
    torch.testing.assert_close(output.probabilities, torch.softmax(output.logits, dim=1))
    assert output.targets.tolist() == [0, 2, 1, 0]
    _, labels = predict_probabilities(model, [(inputs, targets)], torch.device("cpu"))
    assert labels.tolist() == [0, 2, 1, 0]


def test_a_rebuilt_checkpoint_model_keeps_its_activation():
    model = tiny_classifier()
    checkpoint = {"model": model.state_dict(), "model_args": constructor_args("audiocnn", 3, 16, {"width": 4})}
    rebuilt = model_from_checkpoint(checkpoint)
    assert rebuilt.multi_label is False
    assert rebuilt.probabilities(torch.zeros(1, 3)).tolist()[0] == pytest.approx([1 / 3] * 3)


def trained_statistics(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """``model`` (eval mode) with batch-norm statistics and affine weights away from the initial ones."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            shape = module.running_mean.shape
            module.running_mean.data = torch.randn(shape, generator=generator) * 0.2
            module.running_var.data = torch.rand(shape, generator=generator) * 1.5 + 0.5
            module.weight.data = torch.rand(shape, generator=generator) + 0.5
            module.bias.data = torch.randn(shape, generator=generator) * 0.2
    return model.eval()


@pytest.mark.parametrize("name, n_mels, n_frames", [("audiocnn", 16, 40), ("yamnet", 64, 96)])
def test_folding_batch_norms_removes_them_and_keeps_the_outputs(name, n_mels, n_frames):
    def build(seed: int) -> AudioClassifier:
        torch.manual_seed(0)  # the same weights; only the batch-norm statistics differ by seed
        return trained_statistics(AudioClassifier(**constructor_args(name, 3, n_mels, {})), seed)

    inputs = torch.randn(4, 1, n_mels, n_frames) * 3 - 5
    model = build(1)
    with torch.inference_mode():
        before, other_statistics = model(inputs), build(2)(inputs)
        folded = fold_batch_norms(model)
        after = folded(inputs)
    assert folded is model
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())
    scale = (before - other_statistics).abs().max()
    assert scale > 1e-2  # the statistics change the outputs, so equal outputs mean they were folded in
    assert (after - before).abs().max() < 1e-3 * scale


def test_folding_batch_norms_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match=r"call model.eval\(\) first"):
        fold_batch_norms(tiny_classifier().train())


def test_the_predictor_folds_batch_norms_unless_told_not_to():
    checkpoint = {"model": trained_statistics(tiny_classifier()).state_dict(), "class_names": ["a", "b", "c"],
                  "model_args": constructor_args("audiocnn", 3, 16, {"width": 4}),
                  "feature_params": {"n_mels": 16, "n_frames": 40}, "feature_shape": [16, 40]}
    features = np.random.default_rng(0).normal(-5, 3, (6, 16, 40)).astype(np.float32)
    folded, plain = Predictor(checkpoint), Predictor(checkpoint, fold_batch_norm=False)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.model.modules())
    assert any(isinstance(module, torch.nn.BatchNorm2d) for module in plain.model.modules())
    np.testing.assert_allclose(folded.classify_features(features), plain.classify_features(features), atol=1e-5)


def test_auto_mode_scores_a_whole_clip_models_clips_as_clips_up_to_its_max_seconds(tmp_path):
    import soundfile as sf

    checkpoint = {"model": tiny_classifier().state_dict(), "class_names": ["a", "b", "c"],
                  "model_args": constructor_args("audiocnn", 3, 16, {"width": 4}),
                  "feature_params": {"n_mels": 16, "n_frames": 40, "max_seconds": 6.0}, "feature_shape": [16, 40]}
    predictor = Predictor(checkpoint)  # windows of 40 frames = 0.4 s; trained on clips of up to 6 s
    assert predictor.auto_long_seconds() == 6.0
    fixed = Predictor({**checkpoint, "feature_params": {"n_mels": 16, "n_frames": 40}})
    assert fixed.auto_long_seconds() == pytest.approx(1.6)  # 4 windows
    noise = np.random.default_rng(0).normal(0, 0.1, 16000 * 3).astype(np.float32)
    for name, seconds in (("clip.wav", 3), ("recording.wav", 7)):
        sf.write(tmp_path / name, noise[: 16000 * seconds] if seconds <= 3 else np.tile(noise, 3)[: 16000 * seconds],
                 16000)
    results = predictor.run([str(tmp_path / "clip.wav"), str(tmp_path / "recording.wav")])
    assert [clip.file for clip in results.clips] == [str(tmp_path / "clip.wav")]
    assert [long.file for long in results.long] == [str(tmp_path / "recording.wav")]
