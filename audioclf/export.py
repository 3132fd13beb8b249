"""ONNX export: one window of raw audio -> class probabilities, front end and normalisation inside.

The exported graph is the whole serving pipeline after resampling::

    waveform       (batch, window_samples) float32 at the checkpoint's sample rate
    log-mel        STFT as a strided conv1d whose kernels are the windowed DFT basis, power,
                   mel matrix, 10 log10(max(., 1e-10)): the front end of audioclf/frontend.py
    normalisation  the model's stored statistics (per band, per clip, ...)
    backbone       the registry model
    probabilities  (batch, n_classes): the model's activation (softmax / sigmoid)

The batch is dynamic. The model's metadata (``metadata_props``) holds the class names, the
feature parameters, the window length in samples and the sample rate, so a caller needs
nothing but the ``.onnx`` file: cut the audio (mono, at ``sample_rate``) into windows of
``window_samples`` samples, as ``predict.py`` and streaming do, and run them in batches.

An FFT does not export reliably to ONNX (opset 17's STFT op is missing or slow in several
runtimes); a DFT as a convolution is plain Conv + Mul + MatMul, which every runtime has. Only
the window's taps are non-zero, so the kernels are ``win_length`` long, not ``n_fft``. Both
front ends have their form here (``ONNX_FRONTENDS``): the default dB log-mel and YAMNet's.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audioclf.checkpoint import checkpoint_windows, model_from_checkpoint
from audioclf.files import atomic_write
from audioclf.frontend import AMIN, YAMNET_LOG_OFFSET, FeatureExtractor, FeatureParams, LogMel, YamnetLogMel
from audioclf.windows import default_hop

log = logging.getLogger(__name__)

OPSET_VERSION = 18
INPUT_NAME = "waveform"
OUTPUT_NAME = "probabilities"
# Largest |onnxruntime - PyTorch| probability difference accepted by the check after export.
EXPORT_TOLERANCE = 1e-4
# metadata_props keys; values are strings (JSON for the structured ones).
META_CLASS_NAMES = "class_names"
META_FEATURE_PARAMS = "feature_params"
META_WINDOW_SAMPLES = "window_samples"
META_SAMPLE_RATE = "sample_rate"
META_MODEL_NAME = "model_name"
META_ACTIVATION = "activation"
META_OPERATING_POINT = "operating_point"
META_WINDOW_FRAMES = "window_frames"
META_HOP_FRAMES = "hop_frames"


class OnnxExportError(Exception):
    """A checkpoint that cannot be written as ONNX; the message says which part and why."""


# ---------------------------------------------------------------------------------------
# The front end in ONNX-friendly operations
# ---------------------------------------------------------------------------------------

class DftLogMel(nn.Module):
    """``LogMel`` as conv1d + matmul: waveform ``(B, n_samples)`` -> log-mel ``(B, n_mels, n_frames)``.

    Built from a ``LogMel`` (its window and mel matrix are reused, not re-derived), so the two
    cannot drift apart; they agree to float rounding (a few 1e-6 dB, tested).
    """

    def __init__(self, logmel: LogMel, n_frames: int):
        super().__init__()
        spectrogram = logmel.spectrogram
        n_fft, hop, window = spectrogram.n_fft, spectrogram.hop_length, spectrogram.window
        win_length = window.numel()
        self.n_fft, self.hop_length, self.n_frames = n_fft, hop, n_frames
        self.n_bins = n_fft // 2 + 1
        # torch.stft centres a shorter window inside the n_fft frame; the taps outside are zero.
        self.left = (n_fft - win_length) // 2
        taps = torch.arange(win_length) + self.left  # positions in the n_fft frame
        self.register_buffer("dft_basis", dft_basis(n_fft, taps, window))  # (2 n_bins, 1, win_length)
        self.register_buffer("mel_matrix", logmel.mel_scale.fb.T.contiguous())  # (n_mels, n_bins)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        half = self.n_fft // 2
        padded = F.pad(waveform[:, None], (half, half), mode="reflect")  # (B, 1, n + n_fft), center=True
        span = (self.n_frames - 1) * self.hop_length + self.dft_basis.shape[-1]
        frames = padded[..., self.left:self.left + span]  # the samples the kept frames see
        spectrum = F.conv1d(frames, self.dft_basis, stride=self.hop_length)  # (B, 2 n_bins, n_frames)
        power = spectrum[:, :self.n_bins].square() + spectrum[:, self.n_bins:].square()
        mel = torch.matmul(self.mel_matrix, power)  # (B, n_mels, n_frames)
        return 10.0 * torch.log10(torch.clamp(mel, min=AMIN))


def dft_basis(n_fft: int, taps: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Conv1d kernels ``(2 n_bins, 1, len(taps))``: windowed cos and -sin of each rfft bin at frame positions ``taps``."""
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2.0 * math.pi * torch.remainder(bins * taps.double(), n_fft) / n_fft  # (n_bins, n_taps), exact phase
    return (torch.cat([torch.cos(angle), -torch.sin(angle)]) * window.double()).float()[:, None]


class DftYamnetLogMel(nn.Module):
    """``YamnetLogMel`` as conv1d + matmul: waveform ``(B, n_samples)`` -> ``(B, 64, n_frames)``.

    Frames start at their first sample (no padding), ``|rfft(frame * hann, n_fft)|`` by a DFT
    conv, TensorFlow's mel matrix and ``log(mel + 0.001)``, reused from the ``YamnetLogMel``.
    """

    def __init__(self, logmel: YamnetLogMel, n_frames: int):
        super().__init__()
        self.hop_length, self.n_frames, self.n_bins = logmel.hop_length, n_frames, logmel.n_fft // 2 + 1
        taps = torch.arange(logmel.win_length)  # rfft(n=n_fft) zero-pads the frame at its end
        self.register_buffer("dft_basis", dft_basis(logmel.n_fft, taps, logmel.window))  # (2 n_bins, 1, win)
        self.register_buffer("mel_matrix", logmel.mel_matrix.T.contiguous())  # (n_mels, n_bins)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        span = (self.n_frames - 1) * self.hop_length + self.dft_basis.shape[-1]
        spectrum = F.conv1d(waveform[:, None, :span], self.dft_basis, stride=self.hop_length)  # (B, 2 n_bins, T)
        magnitude = torch.sqrt(spectrum[:, :self.n_bins].square() + spectrum[:, self.n_bins:].square())
        return torch.log(torch.matmul(self.mel_matrix, magnitude) + YAMNET_LOG_OFFSET)  # (B, n_mels, n_frames)


# Front-end module type -> its exportable form. A new front end (e.g. YAMNet's preset) adds its
# builder here; the export of a checkpoint whose front end is missing says so.
ONNX_FRONTENDS: dict[type, Callable[[nn.Module, FeatureParams], nn.Module]] = {
    LogMel: lambda frontend, params: DftLogMel(frontend, params.n_frames),
    YamnetLogMel: lambda frontend, params: DftYamnetLogMel(frontend, params.n_frames),
}


def onnx_frontend(params: FeatureParams) -> nn.Module:
    """The exportable form of the front end ``FeatureExtractor`` builds for ``params``."""
    frontend = FeatureExtractor(params).logmel
    builder = ONNX_FRONTENDS.get(type(frontend))
    if builder is None:
        raise OnnxExportError(f"the front end {type(frontend).__name__} has no ONNX form yet "
                              f"(audioclf/export.py ONNX_FRONTENDS knows: "
                              f"{', '.join(t.__name__ for t in ONNX_FRONTENDS)})")
    return builder(frontend, params)


# ---------------------------------------------------------------------------------------
# Waveform -> probabilities
# ---------------------------------------------------------------------------------------

class WaveformClassifier(nn.Module):
    """Waveform windows ``(B, window_samples)`` -> probabilities ``(B, n_classes)``.

    The activation is the model's own (``AudioClassifier.probabilities``: softmax, or a sigmoid
    per class for a multi-label head), as in ``runtime.iter_outputs``.
    """

    def __init__(self, frontend: nn.Module, model: nn.Module):
        super().__init__()
        self.frontend, self.model = frontend, model
        self.activation = "sigmoid" if getattr(model, "multi_label", False) else "softmax"

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.frontend(waveform)[:, None])  # (B, 1, n_mels, n_frames) -> (B, C)
        return torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=1)


def checkpoint_feature_params(checkpoint: dict) -> FeatureParams:
    """The checkpoint's feature parameters; OnnxExportError when it has none."""
    if not checkpoint.get("feature_params"):
        raise OnnxExportError("the checkpoint has no feature parameters (its lists had no feature_config.json); "
                              "re-run preprocessingBabyCrying.py, then train again")
    return FeatureParams.from_dict(checkpoint["feature_params"]).validate()


def window_params(checkpoint: dict) -> FeatureParams:
    """The feature parameters of one model window: ``n_frames`` = the checkpoint's window frames."""
    return dataclasses.replace(checkpoint_feature_params(checkpoint), n_frames=checkpoint_windows(checkpoint)[0])


def waveform_classifier(checkpoint: dict) -> WaveformClassifier:
    """The checkpoint's front end + model + activation as one eval-mode module (float32, CPU)."""
    return WaveformClassifier(onnx_frontend(window_params(checkpoint)),
                              model_from_checkpoint(checkpoint).float().cpu()).eval()


@dataclass(frozen=True)
class OnnxMetadata:
    """What ``export_onnx`` stores in the model and a caller needs to feed it."""

    class_names: list[str]
    feature_params: FeatureParams
    window_samples: int
    sample_rate: int
    model_name: str = ""
    activation: str = "softmax"
    operating_point: dict | None = None
    window_frames: int = 0  # frames of one window (0: feature_params.n_frames)
    hop_frames: int = 0  # the checkpoint's hop between windows (0: half a window)

    def __post_init__(self):
        if not self.window_frames:
            object.__setattr__(self, "window_frames", self.feature_params.n_frames)
        if not self.hop_frames:
            object.__setattr__(self, "hop_frames", default_hop(self.window_frames))

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` strings."""
        props = {META_CLASS_NAMES: json.dumps(self.class_names),
                 META_FEATURE_PARAMS: json.dumps(self.feature_params.to_dict()),
                 META_WINDOW_SAMPLES: str(self.window_samples), META_SAMPLE_RATE: str(self.sample_rate),
                 META_MODEL_NAME: self.model_name, META_ACTIVATION: self.activation,
                 META_WINDOW_FRAMES: str(self.window_frames), META_HOP_FRAMES: str(self.hop_frames)}
        if self.operating_point is not None:
            props[META_OPERATING_POINT] = json.dumps(self.operating_point)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "the model") -> "OnnxMetadata":
        """Parse ``metadata_props``; ValueError naming the missing key (not exported by this tool?)."""
        missing = [key for key in (META_CLASS_NAMES, META_FEATURE_PARAMS, META_WINDOW_SAMPLES, META_SAMPLE_RATE)
                   if key not in props]
        if missing:
            raise ValueError(f"{source} has no {', '.join(missing)} in its metadata; "
                             "export it with export.py --checkpoint C --onnx M")
        point = props.get(META_OPERATING_POINT)
        return cls(json.loads(props[META_CLASS_NAMES]), FeatureParams.from_dict(json.loads(props[META_FEATURE_PARAMS])),
                   int(props[META_WINDOW_SAMPLES]), int(props[META_SAMPLE_RATE]), props.get(META_MODEL_NAME, ""),
                   props.get(META_ACTIVATION, "softmax"), json.loads(point) if point else None,
                   int(props.get(META_WINDOW_FRAMES, 0)), int(props.get(META_HOP_FRAMES, 0)))


def export_onnx(checkpoint: dict, path: str | Path, operating_point: dict | None = None,
                check: bool = True) -> OnnxMetadata:
    """Write ``checkpoint`` as an ONNX model at ``path`` (atomically, single file); returns its metadata.

    With ``check`` the written model is run with onnxruntime on random windows and must equal
    the PyTorch module within ``EXPORT_TOLERANCE``. OnnxExportError names the model and the
    reason when the exporter or the check fails.
    """
    path = Path(path)
    module = waveform_classifier(checkpoint)
    params, (window, hop) = checkpoint_feature_params(checkpoint), checkpoint_windows(checkpoint)
    window_samples = window_params(checkpoint).n_samples
    model_name = checkpoint.get("model_args", {}).get("model_name", "")
    metadata = OnnxMetadata(list(checkpoint["class_names"]), params, window_samples, params.sample_rate,
                            model_name, module.activation, operating_point, window, hop)
    example = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (2, window_samples))
                               .astype(np.float32))  # (2, window_samples): batch 2 keeps the batch dynamic
    proto = _export(module, example, model_name, metadata)
    atomic_write(path, lambda file: file.write(proto.SerializeToString()),
                 check=(lambda written: check_onnx(written, module, example, model_name)) if check else None)
    return metadata


def _export(module: nn.Module, example: torch.Tensor, model_name: str, metadata: OnnxMetadata):
    """The ``onnx.ModelProto`` of ``module`` with ``metadata`` in its ``metadata_props``."""
    import onnx  # the export extra: onnx, onnxscript (see requirements-dev.txt)

    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(module, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=OPSET_VERSION, dynamo=True, external_data=False,
                                    dynamic_shapes=({0: batch},), verbose=False)
    except Exception as error:  # the exporter raises many types; all mean "cannot express this"
        raise OnnxExportError(f"model {model_name!r} cannot be exported to ONNX: {_first_line(error)}") from error
    proto = program.model_proto
    for key, value in metadata.to_props().items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    proto.doc_string = (f"audioclf {model_name}: {INPUT_NAME} (batch, {metadata.window_samples}) float32 at "
                        f"{metadata.sample_rate} Hz -> {OUTPUT_NAME} (batch, {len(metadata.class_names)})")
    return proto


def check_onnx(path: str | Path, module: nn.Module, example: torch.Tensor, model_name: str = "") -> float:
    """Largest difference onnxruntime vs ``module`` on ``example`` plus one more row; raise above tolerance."""
    batch = torch.cat([example, example[:1].flip(-1)])  # another batch size than the export's example
    with torch.inference_mode():
        expected = module(batch).numpy()
    try:
        got = OnnxClassifier(path).session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
    except Exception as error:
        raise OnnxExportError(f"model {model_name!r}: onnxruntime cannot run the exported graph: "
                              f"{_first_line(error)}") from error
    difference = float(np.abs(got - expected).max())
    if not difference <= EXPORT_TOLERANCE:
        raise OnnxExportError(f"model {model_name!r}: the exported graph computes other probabilities than "
                              f"PyTorch (max difference {difference:.2e} > {EXPORT_TOLERANCE})")
    return difference


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


# ---------------------------------------------------------------------------------------
# Running an exported model
# ---------------------------------------------------------------------------------------

class OnnxClassifier:
    """An exported model in onnxruntime: ``classify_waveforms`` like ``Predictor``'s, from the file alone."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model (export one with export.py)")
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self._metadata: OnnxMetadata | None = None
        self._props = props

    @property
    def metadata(self) -> OnnxMetadata:
        """The export's metadata (ValueError for a model this tool did not write)."""
        if self._metadata is None:
            self._metadata = OnnxMetadata.from_props(self._props, str(self.path))
        return self._metadata

    @property
    def class_names(self) -> list[str]:
        """Class names in output order."""
        return self.metadata.class_names

    @property
    def params(self) -> FeatureParams:
        """The front end's parameters (window length, rate)."""
        return self.metadata.feature_params

    def classify_waveforms(self, waveforms: np.ndarray) -> np.ndarray:
        """Windows ``(B, window_samples)`` float32 -> probabilities ``(B, n_classes)``."""
        batch = np.ascontiguousarray(waveforms, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.metadata.window_samples:
            raise ValueError(f"{self.path}: expected windows of shape (batch, {self.metadata.window_samples}), "
                             f"got {batch.shape}")
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


def exportable_models(names: Sequence[str] | None = None) -> dict[str, str]:
    """Registry name -> ``"ok"`` or the reason export fails, tried on tiny random checkpoints."""
    from audioclf.classifier import AudioClassifier, constructor_args
    from models import get_model_entry, list_models

    results = {}
    for name in names or list_models():
        entry = get_model_entry(name)
        height, width = entry.min_input_size
        if entry.frontend:  # the front end its pretrained weights expect (yamnet)
            params = FeatureParams.preset(entry.frontend, n_frames=max(width, 16))
        else:
            params = FeatureParams(sample_rate=8000, n_fft=256, n_mels=max(height, 16), n_frames=max(width, 16))
        args = constructor_args(name, 2, params.n_mels, {}, multi_label=entry.multi_label)
        checkpoint = {"model": AudioClassifier(**args).state_dict(), "model_args": args, "class_names": ["a", "b"],
                      "feature_params": params.to_dict(), "feature_shape": [params.n_mels, params.n_frames]}
        with tempfile.TemporaryDirectory() as folder:
            try:
                export_onnx(checkpoint, Path(folder) / f"{name}.onnx")
                results[name] = "ok"
            except OnnxExportError as error:
                results[name] = str(error)
    return results
