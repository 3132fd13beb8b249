"""Tests for the backbone registry in ``models/``: shapes, gradients, pretrained loading, errors.

Nothing here downloads: TORCH_HOME points at a temporary folder and the weights downloader is
replaced by one that raises URLError (the download tests talk to a server on 127.0.0.1). Pretrained files are random-init state dicts the tests
write themselves into the cache layout torch.hub uses.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
from pathlib import Path

import pytest
import torch

import models.weights
from models.weights import TorchvisionWeights
from models import (
    AudioCNN,
    PretrainedWeightsUnavailable,
    check_input_size,
    get_model,
    get_model_entry,
    list_models,
    model_min_input_size,
)

torch.set_num_threads(2)

CONTRACT_NAMES = ["densenet", "resnet", "inception", "resnet18", "resnet34", "resnet50", "efficientnetv2_s"]
NUM_CLASSES = 5
BATCH_SIZE = 2


def _no_network(*args: object, **kwargs: object) -> None:
    """Stand-in for torch.hub's downloader in a machine without network."""
    raise urllib.error.URLError("network disabled in tests")


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path, monkeypatch):
    """Empty torch.hub cache under tmp_path and no downloads, for every test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(models.weights, "download_file", _no_network)
    return tmp_path


def _pretrained_names() -> list[str]:
    """Registered models with torchvision weights (cached by torch.hub; yamnet's and
    efficientnet_lite0's come from installed packages and have tests of their own)."""
    return [name for name in list_models() if isinstance(get_model_entry(name).weights, TorchvisionWeights)]


def _write_fake_weights(name: str, torch_home: str) -> dict[str, torch.Tensor]:
    """Save a random-init original-head state dict where torch.hub would cache ``name``'s weights."""
    entry = get_model_entry(name)
    torch.manual_seed(0)
    state_dict = entry.builder(len(entry.weights.meta["categories"])).state_dict()
    checkpoint_dir = os.path.join(torch_home, "hub", "checkpoints")
    os.makedirs(checkpoint_dir, exist_ok=True)
    torch.save(state_dict, os.path.join(checkpoint_dir, os.path.basename(entry.weights.url)))
    return state_dict


def _small_spectrograms(name: str, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """(B, 1, n_mels, n_frames) noise at the model's minimum n_mels, a little wider in time.

    Minimal inputs keep DenseNet-201 / Inception fast on CPU; the non-square shape catches
    frequency/time axis mix-ups.
    """
    min_height, min_width = model_min_input_size(name)
    return torch.randn(batch_size, 1, min_height, min_width + 16)


def test_contract_names_are_registered():
    """The seven names other code relies on exist, plus the two CPU-friendly extras."""
    assert set(CONTRACT_NAMES + ["mobilenetv3_small", "audiocnn"]) <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_random_init(name):
    """Random-init 1-channel model gives (B, num_classes) logits in train and eval, finite grads."""
    torch.manual_seed(0)
    model = get_model(name, NUM_CLASSES, pretrained=False, in_channels=1)
    spectrograms = _small_spectrograms(name)  # (B, 1, n_mels, n_frames)

    model.train()
    logits = model(spectrograms)
    assert isinstance(logits, torch.Tensor) and logits.shape == (BATCH_SIZE, NUM_CLASSES)
    logits.sum().backward()
    first_conv = get_model_entry(name).get_first_conv(model)
    assert first_conv.weight.shape[1] == 1
    assert first_conv.weight.grad is not None and torch.isfinite(first_conv.weight.grad).all()

    model.eval()
    with torch.no_grad():
        logits = model(spectrograms)
    assert isinstance(logits, torch.Tensor) and logits.shape == (BATCH_SIZE, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", _pretrained_names())
def test_pretrained_loads_cached_file(name, offline_torch_home):
    """Weights come from the cache file; the first conv is the RGB kernels summed; head is new."""
    file_state = _write_fake_weights(name, str(offline_torch_home))
    entry = get_model_entry(name)
    model = get_model(name, NUM_CLASSES, pretrained=True, in_channels=1)
    model_state = model.state_dict()
    first_conv_key = entry.first_conv + ".weight"
    head_prefix = entry.classifier + "."

    for key, value in model_state.items():
        if key.startswith(head_prefix):
            continue
        if key == first_conv_key:
            assert torch.equal(value, file_state[key].sum(dim=1, keepdim=True)), key
        else:
            assert torch.equal(value, file_state[key]), key
    assert entry.get_classifier(model).out_features == NUM_CLASSES
    assert all(key.startswith("AuxLogits.") for key in file_state.keys() - model_state.keys())
    with torch.no_grad():
        logits = model.eval()(_small_spectrograms(name, batch_size=1))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, NUM_CLASSES)


def test_pretrained_keeps_rgb_and_scales_other_channel_counts(offline_torch_home):
    """in_channels=3 keeps the pretrained kernels; 2 channels repeat them scaled by 3/2."""
    file_state = _write_fake_weights("resnet18", str(offline_torch_home))
    rgb_weight = file_state["conv1.weight"]
    model = get_model("resnet18", NUM_CLASSES, pretrained=True, in_channels=3)
    assert torch.equal(model.conv1.weight, rgb_weight)
    model = get_model("resnet18", NUM_CLASSES, pretrained=True, in_channels=2)
    assert torch.allclose(model.conv1.weight, rgb_weight[:, :2] * 1.5)


def test_pretrained_densenet_legacy_keys_are_remapped(offline_torch_home):
    """Old-style DenseNet keys ('conv.1.weight'), as in the real download, load correctly."""
    file_state = _write_fake_weights("densenet", str(offline_torch_home))
    # The 2017 checkpoint names layers 'norm.1', 'conv.2', ... and predates num_batches_tracked.
    legacy_state = {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key): value
        for key, value in file_state.items()
        if not key.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.conv.1.weight" in legacy_state
    entry = get_model_entry("densenet")
    path = os.path.join(str(offline_torch_home), "hub", "checkpoints", os.path.basename(entry.weights.url))
    torch.save(legacy_state, path)
    model = get_model("densenet", NUM_CLASSES, pretrained=True)
    key = "features.denseblock1.denselayer1.conv1.weight"
    assert torch.equal(model.state_dict()[key], file_state[key])


@pytest.mark.parametrize("name", _pretrained_names())
def test_pretrained_missing_offline_explains_where_to_put_the_file(name, offline_torch_home):
    """No cached file and no network: the error names the file, its directory and the URL."""
    weights = get_model_entry(name).weights
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        get_model(name, NUM_CLASSES, pretrained=True)
    message = str(error.value)
    assert os.path.basename(weights.url) in message
    assert os.path.join(str(offline_torch_home), "hub", "checkpoints") in message
    assert weights.url in message
    assert "TORCH_HOME" in message and '"pretrained": false' in message


def test_corrupt_cached_file_is_reported(offline_torch_home):
    """A truncated cache file gives PretrainedWeightsUnavailable naming the file, not a pickle error."""
    weights = get_model_entry("resnet18").weights
    checkpoint_dir = os.path.join(str(offline_torch_home), "hub", "checkpoints")
    os.makedirs(checkpoint_dir)
    with open(os.path.join(checkpoint_dir, os.path.basename(weights.url)), "wb") as file:
        file.write(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsUnavailable, match=os.path.basename(weights.url)):
        get_model("resnet18", NUM_CLASSES, pretrained=True)


def test_audiocnn_has_no_pretrained_weights():
    """audiocnn with pretrained=True is a ValueError that says there are no weights."""
    with pytest.raises(ValueError, match="no pretrained weights"):
        get_model("audiocnn", NUM_CLASSES, pretrained=True)


def test_unknown_name_lists_known_and_suggests_close_match():
    """A typo names the closest model and lists every registered one."""
    with pytest.raises(ValueError) as error:
        get_model("resnet81", NUM_CLASSES)
    message = str(error.value)
    assert "Did you mean 'resnet18'?" in message
    assert all(name in message for name in list_models())


def test_check_input_size_inception_minimum():
    """Inception needs 75x75: 64x64 is rejected with a message naming the model and 75."""
    assert model_min_input_size("inception") == (75, 75)
    with pytest.raises(ValueError, match=r"inception.*75x75"):
        check_input_size("inception", n_mels=64, n_frames=64)
    check_input_size("inception", n_mels=75, n_frames=75)
    with pytest.raises(ValueError, match="audiocnn"):
        check_input_size("audiocnn", n_mels=64, n_frames=8)


@pytest.mark.parametrize("name", ["audiocnn", "resnet18", "mobilenetv3_small"])
def test_min_input_size_works(name):
    """A model accepts an input exactly at its declared minimum, in train mode."""
    height, width = model_min_input_size(name)
    model = get_model(name, NUM_CLASSES).train()
    assert model(torch.randn(BATCH_SIZE, 1, height, width)).shape == (BATCH_SIZE, NUM_CLASSES)


def test_in_channels_other_than_one():
    """Random-init models accept any channel count, e.g. 3 (mel + deltas)."""
    model = get_model("audiocnn", NUM_CLASSES, in_channels=3).eval()
    assert model(torch.randn(BATCH_SIZE, 3, 64, 100)).shape == (BATCH_SIZE, NUM_CLASSES)


def test_audiocnn_width_and_convs_per_block():
    """AudioCNN's width sets the channels 1x/2x/4x/8x; convs_per_block=2 is the CNN10 layout."""
    model = AudioCNN(NUM_CLASSES, width=16, convs_per_block=2, dropout=0.1)
    assert model.fc.in_features == 16 * 8
    assert sum(isinstance(module, torch.nn.Conv2d) for module in model.modules()) == 8
    assert model(torch.randn(BATCH_SIZE, 1, 64, 100)).shape == (BATCH_SIZE, NUM_CLASSES)


def test_model_kwargs_reach_the_builder():
    """``model_args`` such as audiocnn's width go to the builder; dropout works with pretrained too."""
    model = get_model("audiocnn", NUM_CLASSES, width=8, dropout=0.1)
    assert model.fc.in_features == 8 * 8 and model.dropout.p == 0.1
    assert get_model_entry("audiocnn").builder_arguments() == ["width", "convs_per_block", "dropout"]


def test_pretrained_with_dropout_kwarg(offline_torch_home):
    """A builder keyword that does not change the weights' shapes works with pretrained=True."""
    _write_fake_weights("mobilenetv3_small", str(offline_torch_home))
    model = get_model("mobilenetv3_small", NUM_CLASSES, pretrained=True, dropout=0.1)
    assert model.classifier[2].p == 0.1


def test_unknown_model_kwarg_names_accepted_ones():
    """A misspelt model_args key suggests the close match; ResNets accept none."""
    with pytest.raises(ValueError, match=r"'widht'.*Did you mean 'width'\?"):
        get_model("audiocnn", NUM_CLASSES, widht=8)
    with pytest.raises(ValueError, match=r"resnet18.*'dropout'.*none"):
        get_model("resnet18", NUM_CLASSES, dropout=0.2)


@pytest.mark.parametrize("model_args, message", [
    ({"width": "8"}, r"model_args 'width' of model 'audiocnn' must be of type int \(default 32\), got '8'"),
    ({"width": 8.0}, r"'width' .* must be of type int .*got 8\.0"),
    ({"width": True}, r"'width' .* must be of type int .*got True"),
    ({"dropout": "0.1"}, r"'dropout' .* must be of type float \(default 0\.3\), got '0\.1'"),
    ({"width": -8}, r"model_args \{'width': -8\} are not valid for model 'audiocnn': width and convs_per_block "
                    r"must be >= 1"),
    ({"width": 0}, r"are not valid for model 'audiocnn': width and convs_per_block must be >= 1"),
    ({"dropout": 2.0}, r"model_args \{'dropout': 2\.0\} are not valid for model 'audiocnn': dropout probability"),
])
def test_model_args_of_the_wrong_type_or_range_name_the_key(model_args, message):
    """A config's model_args value the builder cannot take is a ValueError naming it (train.py prints
    one line), not a traceback from inside torch; an int stands for a float."""
    with pytest.raises(ValueError, match=message):
        get_model("audiocnn", NUM_CLASSES, **model_args)
    assert get_model("audiocnn", NUM_CLASSES, width=4, dropout=0).dropout.p == 0


@pytest.mark.parametrize("name", ["inception", "resnet18", "yamnet", "efficientnet_lite0"])
def test_pretrained_and_random_models_have_the_same_state_dict_layout(name, offline_torch_home, request,
                                                                     monkeypatch):
    """A checkpoint of a pretrained=True model loads into the pretrained=False rebuild."""
    if name == "yamnet":
        monkeypatch.setenv("TORCH_HOME", str(request.getfixturevalue("yamnet_torch_home")))
    elif isinstance(get_model_entry(name).weights, TorchvisionWeights):
        _write_fake_weights(name, str(offline_torch_home))
    pretrained_state = get_model(name, NUM_CLASSES, pretrained=True).state_dict()
    rebuilt = get_model(name, NUM_CLASSES, pretrained=False)
    rebuilt.load_state_dict(pretrained_state)  # strict: same keys and shapes
    first_conv_key = get_model_entry(name).first_conv + ".weight"
    assert torch.equal(rebuilt.state_dict()[first_conv_key], pretrained_state[first_conv_key])


# ---------------------------------------------------------------------------------------
# Downloads that hang or crawl (a server on 127.0.0.1; nothing leaves the machine)
# ---------------------------------------------------------------------------------------

REAL_DOWNLOAD = models.weights.download_file


class LocalServer:
    """HTTP on 127.0.0.1 that answers ``body`` at once ("serve"), a byte per 50 ms ("trickle"),
    or reads the request and never answers ("hang")."""

    def __init__(self, behaviour: str, body: bytes = b""):
        self.behaviour, self.body = behaviour, body
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)  # the GET request
                if self.behaviour == "hang":
                    self.stop.wait(10)
                    continue
                connection.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n"
                                   "Connection: close\r\n\r\n".encode())
                step = 1 if self.behaviour == "trickle" else max(1, len(self.body))
                for start in range(0, len(self.body), step):
                    if self.stop.is_set():
                        break
                    connection.sendall(self.body[start:start + step])
                    if self.behaviour == "trickle":
                        time.sleep(0.05)

    def weights(self, file_name: str) -> types.SimpleNamespace:
        """A stand-in for a torchvision WeightsEnum whose URL is this server."""
        return types.SimpleNamespace(url=f"http://127.0.0.1:{self.port}/{file_name}")

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()


def _state_dict_bytes() -> tuple[bytes, dict[str, torch.Tensor]]:
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


@pytest.mark.parametrize("behaviour, expected", [("hang", "no data arrived for 0.2 s"),
                                                 ("trickle", "it did not finish within 0.3 s")])
def test_a_hanging_or_crawling_download_times_out_with_the_offline_message(behaviour, expected, monkeypatch,
                                                                           offline_torch_home):
    monkeypatch.setattr(models.weights, "download_file", REAL_DOWNLOAD)
    body, _ = _state_dict_bytes()
    with LocalServer(behaviour, body) as server:
        weights = server.weights("tiny-0123abcd.pth")
        started = time.monotonic()
        with pytest.raises(PretrainedWeightsUnavailable) as error:
            models.weights.load_weights_state_dict(weights, stall_timeout_s=0.2, timeout_s=0.3)
        assert time.monotonic() - started < 3
    message = str(error.value)
    assert f"not cached and the download timed out ({expected})" in message
    checkpoint_dir = os.path.join(str(offline_torch_home), "hub", "checkpoints")
    # the exact offline instructions follow the reason
    assert message.endswith(models.weights._unavailable_message(weights, "X").split("X", 1)[1])
    assert weights.url in message and f"tiny-0123abcd.pth in the directory {checkpoint_dir}" in message
    assert os.listdir(checkpoint_dir) == []  # no partial file left behind


def test_a_download_that_arrives_is_hash_checked_cached_and_loaded(monkeypatch, offline_torch_home):
    monkeypatch.setattr(models.weights, "download_file", REAL_DOWNLOAD)
    body, state = _state_dict_bytes()
    file_name = f"tiny-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    with LocalServer("serve", body) as server:
        loaded = models.weights.load_weights_state_dict(server.weights(file_name), stall_timeout_s=2, timeout_s=5)
        assert torch.equal(loaded["weight"], state["weight"])
        with pytest.raises(PretrainedWeightsUnavailable, match="does not start with 00000000"):
            models.weights.load_weights_state_dict(server.weights("tiny-00000000.pth"), stall_timeout_s=2,
                                                   timeout_s=5)
    checkpoint_dir = os.path.join(str(offline_torch_home), "hub", "checkpoints")
    assert os.listdir(checkpoint_dir) == [file_name]


def test_importing_the_registry_leaves_torchvision_unimported_until_a_torchvision_model_needs_it():
    code = ("import sys, models, predict; assert 'torchvision' not in sys.modules, 'imported early'; "
            "weights = models.get_model_entry('resnet18').weights; "
            "assert weights.url.endswith('resnet18-f37072fd.pth'); assert 'torchvision' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_a_mistyped_torchvision_weights_name_is_named_in_the_error():
    with pytest.raises(LookupError, match="no weights 'ResNet18_Weights.IMAGENET1K_V9'"):
        TorchvisionWeights("ResNet18_Weights.IMAGENET1K_V9").url
