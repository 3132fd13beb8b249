"""The moving average of the weights (``ema_decay``): its arithmetic, what the checkpoints hold, resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from audioclf.ema import WARMUP, WeightAverage
from audioclf.training import train
from test_distributed import single_process_validation
from tools.synthetic_features import make_config, make_feature_dataset
from utils import Params, load_checkpoint


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    return make_feature_dataset(tmp_path_factory.mktemp("data"))


def test_average_follows_the_weights_with_a_warming_up_rate():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)  # a frozen tensor stays exactly what it was
    averaged = WeightAverage(model, decay=0.5)
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    expected = {name: tensor.clone() for name, tensor in start.items()}
    rates = []
    for step in range(4):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].running_mean.add_(2.0)
        model[1].num_batches_tracked += 3
        rate = min(0.5, (1 + step) / (WARMUP + step))
        rates.append(averaged.rate())
        averaged.update()
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                expected[name] = rate * expected[name] + (1 - rate) * tensor
    assert rates == pytest.approx([0.1, 2 / 11, 0.25, 4 / 13])  # below decay 0.5 throughout the warm-up
    assert averaged.updates == 4
    state = averaged.module.state_dict()
    for name, tensor in expected.items():
        if tensor.is_floating_point():
            assert torch.allclose(state[name], tensor, atol=1e-6), name
    assert torch.equal(state["0.bias"], start["0.bias"])
    assert state["1.num_batches_tracked"].item() == 12  # integer buffers are copied, not averaged
    assert not averaged.module.training and not any(p.requires_grad for p in averaged.module.parameters())
    # after the warm-up the rate is the decay itself
    averaged.updates = 1000
    assert averaged.rate() == 0.5


def test_decay_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="ema_decay must be in"):
        WeightAverage(nn.Linear(2, 2), decay=1.0)


def test_checkpoints_serve_the_average_and_validation_scores_it(tmp_path, features):
    result = train(Params(make_config(tmp_path, features, epochs=2, ema_decay=0.9)), show_progress=False)
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "checkpoint_epoch0002.pth.tar")
    assert checkpoint["ema_updates"] == 2 * 6  # 48 training clips in batches of 8, two epochs
    served, trained = checkpoint["model"], checkpoint["training_model"]
    assert served.keys() == trained.keys()
    assert any(not torch.equal(served[name], trained[name]) for name in served if served[name].is_floating_point())
    # The epoch's validation figures are the served (averaged) model's, as evaluation.py would measure them.
    measured = single_process_validation(checkpoint, features)
    logged = result["history"][-1]["validation"]
    assert measured["accuracy"] == logged["accuracy"]
    assert measured["loss"] == pytest.approx(logged["loss"], rel=1e-6)


def test_resume_with_an_average_equals_an_uninterrupted_run(tmp_path, features):
    common = dict(ema_decay=0.9, spec_augment=True, scheduler="step", scheduler_step=1)
    for name, epochs in (("straight", [3]), ("resumed", [2, 3])):
        (tmp_path / name).mkdir()
        for index, total in enumerate(epochs):
            train(Params(make_config(tmp_path / name, features, epochs=total, **common)), resume=index > 0,
                  show_progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "checkpoint_epoch0003.pth.tar")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "checkpoint_epoch0003.pth.tar")
    assert a["ema_updates"] == b["ema_updates"] == 18
    for key in ("model", "training_model"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
