"""Training's data path: the feature cache (float32/float16, prefetch), the per-file fallback,
validation batch size, and torch.compile's fallback inside a real run."""
from __future__ import annotations

import logging

import pytest
import torch

from audioclf.runtime import DistInfo
from audioclf.training import build_data, train
from dataloaders.feature_cache import CachedBatchLoader
from tools.synthetic_features import make_config, make_feature_dataset
from utils import Params, load_checkpoint


@pytest.fixture
def features(tmp_path):
    return make_feature_dataset(tmp_path / "data", per_class=(8, 3, 2), n_mels=16, n_frames=24)


def final_weights(root, features, **overrides) -> dict[str, torch.Tensor]:
    root.mkdir(exist_ok=True)
    config = make_config(root, features, epochs=2, batch_size=4, model_args={"width": 4}, **overrides)
    train(Params(config), show_progress=False)
    return load_checkpoint(root / "checkpoints" / "checkpoint_epoch0002.pth.tar")["model"]


def test_training_reads_the_cache_and_prefetching_changes_no_weight(tmp_path, features):
    threaded = final_weights(tmp_path / "a", features, prefetch_batches=2, spec_augment=True, mixup_alpha=0.2)
    caches = sorted(path.name.split(".")[0].rsplit("-", 1)[0] for path in (features / "filenames" / "cache").glob("*.frames.npy"))
    assert caches == ["train", "validation"]  # beside the lists (evaluation.py reads its list directly)
    inline = final_weights(tmp_path / "b", features, prefetch_batches=0, spec_augment=True, mixup_alpha=0.2)
    assert threaded.keys() == inline.keys()
    assert all(torch.equal(threaded[key], inline[key]) for key in threaded)


def test_float16_cache_trains_and_batches_reach_the_model_as_float32(tmp_path, features):
    config = make_config(tmp_path, features, batch_size=4, feature_cache_dtype="float16")
    data = build_data(Params(config), DistInfo(), torch.device("cpu"))
    inputs, _ = next(iter(data.train_loader))
    assert isinstance(data.train_loader, CachedBatchLoader) and inputs.dtype == torch.float16
    weights = final_weights(tmp_path, features, feature_cache_dtype="float16")
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())
    assert list((features / "filenames" / "cache").glob("train-*.float16.*.frames.npy"))


def test_feature_cache_false_reads_the_files_and_writes_no_cache(tmp_path, features):
    config = make_config(tmp_path, features, feature_cache=False)
    data = build_data(Params(config), DistInfo(), torch.device("cpu"))
    assert isinstance(data.train_loader, torch.utils.data.DataLoader)
    assert not (features / "filenames" / "cache").exists()


def test_an_unwritable_list_folder_falls_back_to_the_files_with_a_warning(tmp_path, features, caplog):
    (features / "filenames" / "cache").write_text("a file where the cache folder would go")
    config = make_config(tmp_path, features)
    with caplog.at_level(logging.WARNING, logger="dataloaders.feature_cache"):
        data = build_data(Params(config), DistInfo(), torch.device("cpu"))
    assert isinstance(data.train_loader, torch.utils.data.DataLoader)
    assert "cannot build the feature cache beside" in caplog.text and "train.txt" in caplog.text


def test_validation_batches_are_four_training_batches_unless_set(tmp_path, features):
    params = Params(make_config(tmp_path, features, batch_size=2))
    assert params.eval_batch_size == 8
    data = build_data(params, DistInfo(), torch.device("cpu"))
    assert [len(labels) for _, labels in data.val_loader] == [8, 1]  # 9 validation clips
    params.update({"eval_batch_size": 5})
    data = build_data(params, DistInfo(), torch.device("cpu"))
    assert [len(labels) for _, labels in data.val_loader] == [5, 4]


def test_compile_that_fails_warns_and_trains_eagerly(tmp_path, features, monkeypatch, caplog):
    real_compile = torch.compile

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("inductor cannot run here")

    monkeypatch.setattr(torch, "compile", lambda module, **options: real_compile(module, backend=broken_backend))
    with caplog.at_level(logging.WARNING, logger="audioclf.acceleration"):
        weights = final_weights(tmp_path, features, compile=True)
    warnings = [record.getMessage() for record in caplog.records if record.name == "audioclf.acceleration"]
    assert len(warnings) == 1 and "could not compile AudioClassifier" in warnings[0]
    assert "inductor cannot run here" in warnings[0]
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in weights)  # the plain model is saved


def test_compile_that_fails_in_the_first_backward_trains_exactly_like_eager(tmp_path, features, monkeypatch, caplog):
    """The backward graph is compiled at the first backward(); its failure falls back too, and the
    step is redone from the same state, so the weights equal a run without compile."""
    from torch._dynamo.backends.common import aot_autograd

    def broken(graph_module, example_inputs):
        raise RuntimeError("cannot compile the backward graph here")

    eager = final_weights(tmp_path / "eager", features, spec_augment=True)
    real_compile = torch.compile
    backend = aot_autograd(fw_compiler=lambda graph_module, example_inputs: graph_module.forward, bw_compiler=broken)
    monkeypatch.setattr(torch, "compile", lambda module, **options: real_compile(module, backend=backend))
    with caplog.at_level(logging.WARNING, logger="audioclf.acceleration"):
        weights = final_weights(tmp_path / "compiled", features, spec_augment=True, compile=True)
    warnings = [record.getMessage() for record in caplog.records if record.name == "audioclf.acceleration"]
    assert len(warnings) == 1 and "could not compile AudioClassifier at its first training step" in warnings[0]
    assert "cannot compile the backward graph here" in warnings[0]
    assert weights.keys() == eager.keys()
    assert all(torch.equal(weights[key], eager[key]) for key in eager)
