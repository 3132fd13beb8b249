"""export.py and audioclf/export.py: the ONNX model equals the PyTorch pipeline, carries its metadata.

Random-weight checkpoints (audiocnn and resnet18) with non-trivial normalisation statistics are
exported once per module; their onnxruntime probabilities on demo clips are compared with what
``predict.py`` prints for the same files.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

import predict
from audioclf.classifier import AudioClassifier, constructor_args
from tools.demo_data import generate_demo_dataset
from audioclf.export import (EXPORT_TOLERANCE, DftLogMel, DftYamnetLogMel, OnnxClassifier, OnnxExportError, check_onnx,
                             export_onnx, waveform_classifier)
from audioclf.frontend import FeatureParams, LogMel, YamnetLogMel, end_padding, fit_length, read_audio
from audioclf.inference import Predictor

REPO = Path(__file__).resolve().parents[1]
PARAMS = FeatureParams(sample_rate=16000, n_fft=512, n_mels=32, n_frames=50)  # 0.5 s windows
CLASS_NAMES = ["babycry", "speech", "noise"]
YAMNET_PARAMS = FeatureParams.preset("yamnet", n_frames=144, pad_mode="zeros")  # 1.44 s: two 96-frame patches


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


def random_checkpoint(model_name: str, model_args: dict, params: FeatureParams = PARAMS, seed: int = 0,
                      multi_label: bool = False) -> dict:
    """What inference needs from a checkpoint, with random weights and feature-like statistics."""
    torch.manual_seed(seed)
    args = constructor_args(model_name, len(CLASS_NAMES), params.n_mels, model_args, center_per_clip=True,
                            multi_label=multi_label)
    model = AudioClassifier(**args)
    if params.frontend == "default":  # dB features; YAMNet's are natural-log magnitudes
        model.normalize.set_statistics(torch.linspace(-5.0, 5.0, params.n_mels), torch.linspace(4.0, 8.0, params.n_mels))
    if model_name == "yamnet":
        # a random YAMNet's activations vanish through its 14 layers (outputs ignore the input):
        # batch-norm statistics of one random batch, as after training, keep them alive
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0
        with torch.no_grad():
            model.train()(torch.randn(8, 1, params.n_mels, params.n_frames) * 5.0)
        model.eval()
    return {"model": model.state_dict(), "model_args": args, "class_names": CLASS_NAMES,
            "feature_params": params.to_dict(), "feature_shape": [params.n_mels, params.n_frames]}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    csv_file = generate_demo_dataset(tmp_path_factory.mktemp("demo"), clips_per_class=1, seed=3)
    return sorted((csv_file.parent / "audio").rglob("*.wav"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Model name -> (checkpoint, ONNX file): audiocnn through export.py as a user runs it."""
    root = tmp_path_factory.mktemp("export")
    result = {}
    for name, model_args in (("audiocnn", {"width": 8}), ("resnet18", {}), ("yamnet", {})):
        checkpoint_path = root / name / "model_best.pth.tar"
        checkpoint_path.parent.mkdir()
        if name == "yamnet":  # its own front end (magnitude STFT, TF mel matrix, log(mel + 0.001)), sigmoid head
            checkpoint = random_checkpoint(name, model_args, YAMNET_PARAMS, multi_label=True)
        else:
            checkpoint = random_checkpoint(name, model_args)
        torch.save(checkpoint, checkpoint_path)
        onnx_path = root / f"{name}.onnx"
        if name == "audiocnn":
            (checkpoint_path.parent / "scores").mkdir()
            (checkpoint_path.parent / "scores" / "operating_point.json").write_text(
                json.dumps({"target_class": "babycry", "class_id": 0, "threshold": 0.62}))
            done = subprocess.run([sys.executable, "export.py", "--checkpoint", str(checkpoint_path),
                                   "--onnx", str(onnx_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            assert f"wrote {onnx_path}" in done.stderr
        else:
            export_onnx(torch.load(checkpoint_path, weights_only=True), onnx_path)
        result[name] = (checkpoint_path, onnx_path)
    return result


def test_dft_front_end_equals_yamnets_front_end():
    rng = np.random.default_rng(1)
    params = YAMNET_PARAMS
    logmel = YamnetLogMel(params)
    audio = rng.uniform(-0.5, 0.5, (3, params.n_samples)).astype(np.float32)
    audio[1] *= 1e-4
    audio[2, : params.n_samples // 2] = 0.0  # silence: log(0 + 0.001)
    batch = torch.from_numpy(audio)
    expected = logmel(batch)[..., : params.n_frames]
    got = DftYamnetLogMel(logmel)(batch[:, :params.signal_samples(params.n_frames)])  # frames not centred: no context
    assert got.shape == expected.shape == (3, 64, params.n_frames)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)  # natural log


def test_dft_front_end_equals_the_log_mel_front_end():
    rng = np.random.default_rng(0)
    for params in (PARAMS, FeatureParams(), FeatureParams(sample_rate=8000, n_fft=256, window_ms=32, n_mels=40,
                                                          n_frames=30, f_min=50.0, f_max=3500.0)):
        logmel = LogMel(params)
        audio = rng.uniform(-0.5, 0.5, (3, params.n_samples)).astype(np.float32)
        audio[1] *= 1e-4  # quiet: the log magnifies relative errors
        audio[2, : params.n_samples // 2] = 0.0  # digital silence hits the -100 dB floor
        batch = torch.from_numpy(audio)
        expected = logmel(batch)[..., : params.n_frames]
        half = params.n_fft // 2  # the graph is given the centring's reflection (PaddedRecording), it pads nothing
        signal = F.pad(batch[:, None], (half, half), mode="reflect")[:, 0, :params.signal_samples(params.n_frames)]
        got = DftLogMel(logmel)(signal)
        assert got.shape == expected.shape == (3, params.n_mels, params.n_frames)
        torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # dB


@pytest.mark.parametrize("name", ["audiocnn", "resnet18", "yamnet"])
def test_onnx_probabilities_equal_predict_on_demo_clips(name, exported, clips, tmp_path):
    checkpoint_path, onnx_path = exported[name]
    output = tmp_path / "clips.json"
    assert predict.main(["--checkpoint", str(checkpoint_path), "--clip", "--no_progress", "--output_json",
                         str(output), *map(str, clips)]) == 0
    expected = np.array([[row["probabilities"][c] for c in CLASS_NAMES] for row in json.loads(output.read_text())])

    classifier = OnnxClassifier(onnx_path)
    params = classifier.params
    n = classifier.metadata.window_samples
    windows = np.stack([fit_length(read_audio(clip, params.sample_rate, n), n,
                                   params.pad_mode) for clip in clips])  # (n_clips, window_samples)
    got = classifier.classify_waveforms(windows)
    assert got.shape == (len(clips), len(CLASS_NAMES))
    assert classifier.metadata.activation == ("sigmoid" if name == "yamnet" else "softmax")
    assert np.abs(got - expected).max() <= 1e-4
    assert expected.std(axis=0).max() > 0.01  # the clips get different probabilities: the check has teeth
    # any batch size: one window at a time gives the same rows
    np.testing.assert_allclose(np.concatenate([classifier.classify_waveforms(w[None]) for w in windows]), got,
                               atol=1e-6)


def test_metadata_describes_the_input_and_the_classes(exported):
    _, onnx_path = exported["audiocnn"]
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == CLASS_NAMES
    assert FeatureParams.from_dict(json.loads(props["feature_params"])) == PARAMS
    assert int(props["window_samples"]) == PARAMS.n_samples and int(props["sample_rate"]) == 16000
    assert props["model_name"] == "audiocnn" and props["activation"] == "softmax"
    assert json.loads(props["operating_point"]) == {"target_class": "babycry", "class_id": 0, "threshold": 0.62}
    waveform = model.graph.input[0]
    assert waveform.name == "waveform"
    dims = waveform.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
    assert dims[1].dim_param and not dims[1].dim_value  # fewer samples: a padded last window
    # the STFT context: the samples the window's 50 frames read, 256 (n_fft / 2) before its first sample
    assert int(props["input_samples"]) == 49 * PARAMS.hop_length + PARAMS.n_fft == 8352
    assert int(props["context_samples"]) == PARAMS.n_fft // 2 == 256
    assert int(props["window_frames"]) == 50 and int(props["hop_frames"]) == 25
    assert OnnxClassifier(onnx_path).metadata.operating_point["threshold"] == 0.62


def test_the_metadata_is_enough_to_feed_long_mode_windows(exported, tmp_path):
    """Another runtime, from the metadata alone (onnxruntime, numpy), scores a recording's windows as long mode
    does: the recording padded at its end (README: pad_mode), reflected by context_samples at both ends, inputs
    of input_samples every hop_frames frames. The windows' first and last frames then see the audio around them."""
    import onnxruntime

    checkpoint_path, onnx_path = exported["audiocnn"]
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    props = dict(session.get_modelmeta().custom_metadata_map)
    context, length = int(props["context_samples"]), int(props["input_samples"])
    hop = int(props["hop_frames"]) * FeatureParams.from_dict(json.loads(props["feature_params"])).hop_length
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(20032) * np.sin(np.arange(20032) / 900.0)).astype(np.float32)  # 1.25 s
    sf.write(tmp_path / "recording.wav", audio, 16000, subtype="FLOAT")
    long = Predictor.from_checkpoint(checkpoint_path).predict_long(tmp_path / "recording.wav")  # (n_windows, 3)

    padded = np.concatenate([audio, end_padding(audio.size, audio, PARAMS)])  # repeated from its start
    signal = np.pad(padded, context, mode="reflect")
    inputs = np.stack([signal[i * hop:i * hop + length] for i in range(len(long.probabilities))])
    assert inputs.shape == (5, 8352) and (len(long.probabilities) - 1) * hop + length <= signal.size  # 150 frames
    got = session.run(["probabilities"], {"waveform": inputs})[0]
    difference = np.abs(got - long.probabilities).max()
    assert difference <= 1e-4
    # each window alone (its own reflection at its edges, as before this context) is further off (this
    # briefly trained model's probabilities are close to uniform: 2.5e-5 here, 0.04 on the untrained ones of
    # test_predict_stream)
    windows = np.stack([padded[i * hop:i * hop + PARAMS.n_samples] for i in range(len(inputs))])
    alone = OnnxClassifier(onnx_path).classify_waveforms(windows)
    assert np.abs(alone - long.probabilities).max() > 10 * difference


def test_wrong_input_and_foreign_models_get_clear_errors(exported, tmp_path):
    _, onnx_path = exported["audiocnn"]
    classifier = OnnxClassifier(onnx_path)
    with pytest.raises(ValueError, match=rf"expected windows of shape \(batch, {PARAMS.n_samples}\)"):
        classifier.classify_waveforms(np.zeros((1, 100), dtype=np.float32))
    with pytest.raises(FileNotFoundError, match="export one with export.py"):
        OnnxClassifier(tmp_path / "missing.onnx")
    foreign = onnx.load(str(onnx_path))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="no class_names, feature_params, window_samples, sample_rate"):
        OnnxClassifier(tmp_path / "foreign.onnx").metadata
    # a file written before the graph took the STFT context is refused, naming itself and the re-export
    old = onnx.load(str(onnx_path))
    kept = [p for p in old.metadata_props if p.key not in ("input_samples", "context_samples")]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    onnx.save(old, str(tmp_path / "old.onnx"))
    with pytest.raises(ValueError, match=rf"{tmp_path / 'old.onnx'} was exported by an older version .* export it "
                                         rf"again: python export.py --checkpoint C --onnx {tmp_path / 'old.onnx'}"):
        OnnxClassifier(tmp_path / "old.onnx").metadata


def test_check_rejects_a_graph_that_computes_something_else(exported):
    _, onnx_path = exported["audiocnn"]
    other = waveform_classifier(random_checkpoint("audiocnn", {"width": 8}, seed=1))
    example = torch.zeros(2, PARAMS.n_samples).uniform_(-0.5, 0.5)
    with pytest.raises(OnnxExportError, match="computes other probabilities than PyTorch"):
        check_onnx(onnx_path, other, example, "audiocnn")
    same = waveform_classifier(torch.load(exported["audiocnn"][0], weights_only=True))
    assert check_onnx(onnx_path, same, example) <= EXPORT_TOLERANCE


class DataDependent(torch.nn.Module):
    """A model whose control flow depends on the input values: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x.mean(dim=(1, 2, 3))[:, None].repeat(1, 3)
        return x.amax(dim=(1, 2, 3))[:, None].repeat(1, 3)


def test_a_model_onnx_cannot_express_gets_a_message_naming_it(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr("audioclf.export.model_from_checkpoint", lambda checkpoint: DataDependent())
    checkpoint = random_checkpoint("audiocnn", {"width": 8})
    with pytest.raises(OnnxExportError, match="model 'audiocnn' cannot be exported to ONNX"):
        export_onnx(checkpoint, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    import export
    torch.save(checkpoint, tmp_path / "c.pth.tar")
    assert export.main(["--checkpoint", str(tmp_path / "c.pth.tar"), "--onnx", str(tmp_path / "x.onnx")]) == 1
    assert "cannot be exported to ONNX" in caplog.text
    assert export.main(["--checkpoint", str(tmp_path / "missing.pth.tar"), "--onnx", str(tmp_path / "y.onnx")]) == 1
    assert "checkpoint not found" in caplog.text


def test_export_and_streaming_import_no_training_code():
    code = ("import json, sys; import export, audioclf.export, audioclf.streaming; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('audioclf.training', "
            "'audioclf.distributed', 'audioclf.augment', 'dataloaders')))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("preset", [{}, {"frontend": "yamnet"}], ids=["default", "yamnet"])
def test_the_shortest_graph_input_is_one_frames_samples(preset):
    """OnnxMetadata.frame_samples (the export's dynamic length and classify_inputs' check): n_fft samples, or
    yamnet's win_length (its frames are not centred), and input_samples is that plus a hop per further frame."""
    from audioclf.export import OnnxMetadata

    params = FeatureParams.from_dict({**preset, "n_frames": 20}) if preset else FeatureParams(n_frames=20)
    metadata = OnnxMetadata(["a", "b"], params, params.n_samples, params.sample_rate)
    assert metadata.frame_samples == (params.win_length if preset else params.n_fft) == params.frame_length
    assert metadata.input_samples == metadata.frame_samples + 19 * params.hop_length


def test_a_file_that_is_not_an_onnx_model_gets_one_line(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("not a model\n")
    with pytest.raises(ValueError) as info:
        OnnxClassifier(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: not an ONNX model")
    assert message.endswith("export one with export.py")
