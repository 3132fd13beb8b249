"""ONNX export: one window of raw audio -> class probabilities, front end and normalisation inside.

The exported graph is the whole serving pipeline after resampling::

    waveform       (batch, input_samples) float32 at the checkpoint's sample rate: the samples the
                   window's frames read, ``context_samples`` before its first sample on
    log-mel        STFT as a strided conv1d whose kernels are the windowed DFT basis, power,
                   mel matrix, 10 log10(max(., 1e-10)): the front end of audioclf/frontend.py
    padding        fewer samples give fewer frames, filled up to the window like long mode's
                   padded last window (pad_mode: the frames repeated, or silence)
    normalisation  the model's stored statistics (per band, per clip, ...)
    backbone       the registry model
    probabilities  (batch, n_classes): the model's activation (softmax / sigmoid)

The batch is dynamic. The graph computes frames without padding anything, so a window's first and
last frames see the audio around it, as in long mode's continuous log-mel of the recording
(``frontend.PaddedRecording``: the recording padded at its end with ``pad_mode``, then reflected by
``n_fft // 2`` samples at both ends; yamnet's frames are not centred: no context). Window ``i``
(hop ``h`` frames) is the ``input_samples`` samples of that signal from sample ``i * h * hop_length``,
i.e. ``context_samples`` before the window's first recording sample; ``window_input`` pads one
window alone (a clip) by reflection instead. The model's metadata (``metadata_props``) holds the
class names, the feature parameters, the window length in frames and samples, ``input_samples``,
``context_samples`` and the sample rate, so a caller needs nothing but the ``.onnx`` file.

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
from audioclf.frontend import (AMIN, YAMNET_LOG_OFFSET, FeatureExtractor, FeatureParams, LogMel, YamnetLogMel,
                               log_scale_for)
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
META_INPUT_SAMPLES = "input_samples"  # the graph's input length: the samples a window's frames read
META_CONTEXT_SAMPLES = "context_samples"  # of them, those before the window's first recording sample


class OnnxExportError(Exception):
    """A checkpoint that cannot be written as ONNX; the message says which part and why."""


# ---------------------------------------------------------------------------------------
# The front end in ONNX-friendly operations
# ---------------------------------------------------------------------------------------

class DftLogMel(nn.Module):
    """``LogMel`` without centring as conv1d + matmul: signal ``(B, n)`` -> log-mel ``(B, n_mels, T)``.

    Frame ``t`` reads the signal's ``n_fft`` samples from ``t * hop_length`` (``T = 1 + (n - n_fft) //
    hop_length``): ``LogMel(center=True)`` of a waveform is this of the waveform reflected by
    ``n_fft // 2`` at both ends (``frontend.PaddedRecording``). Built from a ``LogMel`` (its window and
    mel matrix are reused, not re-derived), so the two cannot drift apart; they agree to float
    rounding (a few 1e-6 dB, tested).
    """

    def __init__(self, logmel: LogMel):
        super().__init__()
        spectrogram = logmel.spectrogram
        n_fft, hop, window = spectrogram.n_fft, spectrogram.hop_length, spectrogram.window
        win_length = window.numel()
        self.n_fft, self.hop_length = n_fft, hop
        self.n_bins = n_fft // 2 + 1
        # torch.stft centres a shorter window inside the n_fft frame; the taps outside are zero.
        self.left = (n_fft - win_length) // 2
        self.right = n_fft - win_length - self.left
        taps = torch.arange(win_length) + self.left  # positions in the n_fft frame
        self.register_buffer("dft_basis", dft_basis(n_fft, taps, window))  # (2 n_bins, 1, win_length)
        self.register_buffer("mel_matrix", logmel.mel_scale.fb.T.contiguous())  # (n_mels, n_bins)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        taps = signal[:, None, self.left:signal.shape[-1] - self.right]  # (B, 1, n - n_fft + win_length)
        spectrum = F.conv1d(taps, self.dft_basis, stride=self.hop_length)  # (B, 2 n_bins, T)
        power = spectrum[:, :self.n_bins].square() + spectrum[:, self.n_bins:].square()
        mel = torch.matmul(self.mel_matrix, power)  # (B, n_mels, n_frames)
        return 10.0 * torch.log10(torch.clamp(mel, min=AMIN))


def dft_basis(n_fft: int, taps: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Conv1d kernels ``(2 n_bins, 1, len(taps))``: windowed cos and -sin of each rfft bin at frame positions ``taps``."""
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2.0 * math.pi * torch.remainder(bins * taps.double(), n_fft) / n_fft  # (n_bins, n_taps), exact phase
    return (torch.cat([torch.cos(angle), -torch.sin(angle)]) * window.double()).float()[:, None]


class DftYamnetLogMel(nn.Module):
    """``YamnetLogMel`` as conv1d + matmul: waveform ``(B, n)`` -> ``(B, 64, 1 + (n - win_length) // hop)``.

    Frames start at their first sample (no padding), ``|rfft(frame * hann, n_fft)|`` by a DFT
    conv, TensorFlow's mel matrix and ``log(mel + 0.001)``, reused from the ``YamnetLogMel``.
    """

    def __init__(self, logmel: YamnetLogMel):
        super().__init__()
        self.hop_length, self.n_bins = logmel.hop_length, logmel.n_fft // 2 + 1
        taps = torch.arange(logmel.win_length)  # rfft(n=n_fft) zero-pads the frame at its end
        self.register_buffer("dft_basis", dft_basis(logmel.n_fft, taps, logmel.window))  # (2 n_bins, 1, win)
        self.register_buffer("mel_matrix", logmel.mel_matrix.T.contiguous())  # (n_mels, n_bins)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spectrum = F.conv1d(waveform[:, None], self.dft_basis, stride=self.hop_length)  # (B, 2 n_bins, T)
        magnitude = torch.sqrt(spectrum[:, :self.n_bins].square() + spectrum[:, self.n_bins:].square())
        return torch.log(torch.matmul(self.mel_matrix, magnitude) + YAMNET_LOG_OFFSET)  # (B, n_mels, n_frames)


# Front-end module type -> its exportable form. A new front end (e.g. YAMNet's preset) adds its
# builder here; the export of a checkpoint whose front end is missing says so.
ONNX_FRONTENDS: dict[type, Callable[[nn.Module, FeatureParams], nn.Module]] = {
    LogMel: lambda frontend, params: DftLogMel(frontend),
    YamnetLogMel: lambda frontend, params: DftYamnetLogMel(frontend),
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

class FitFrames(nn.Module):
    """Frames ``(B, n_mels, T)``, ``1 <= T``, -> the window's ``(B, n_mels, window)``: ``windows.fit_frames``
    (``repeat``: the frames tiled; ``zeros``: ``silence`` after them), as long mode pads its last window."""

    def __init__(self, window: int, pad_mode: str, silence: float):
        super().__init__()
        self.window, self.pad_mode, self.silence = window, pad_mode, silence

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # the frame count as a tensor: the ONNX converter cannot take a symbolic size as remainder's scalar
        n_frames = torch.full((), frames.shape[-1], dtype=torch.long, device=frames.device)
        positions = torch.arange(self.window, device=frames.device)
        tiled = frames.index_select(-1, torch.remainder(positions, n_frames))  # (B, n_mels, window)
        if self.pad_mode == "repeat":
            return tiled
        return torch.where(positions < n_frames, tiled, torch.full_like(tiled, self.silence))


class WaveformClassifier(nn.Module):
    """Signal windows ``(B, input_samples)`` -> probabilities ``(B, n_classes)``.

    A shorter input (at least one frame's samples) gives fewer frames, filled up to the window as long
    mode fills its padded last window (``FitFrames``). The activation is the model's own
    (``AudioClassifier.probabilities``: softmax, or a sigmoid per class for a multi-label head), as in
    ``runtime.iter_outputs``.
    """

    def __init__(self, frontend: nn.Module, model: nn.Module, fit: FitFrames):
        super().__init__()
        self.frontend, self.model, self.fit = frontend, model, fit
        self.activation = "sigmoid" if getattr(model, "multi_label", False) else "softmax"

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        features = self.fit(self.frontend(waveform)[..., :self.fit.window])  # (B, n_mels, window)
        logits = self.model(features[:, None])  # (B, 1, n_mels, window) -> (B, C)
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
    params = window_params(checkpoint)
    fit = FitFrames(params.n_frames, params.pad_mode, log_scale_for(params).silence)
    return WaveformClassifier(onnx_frontend(params), model_from_checkpoint(checkpoint).float().cpu(), fit).eval()


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
    input_samples: int = 0  # the graph's input: samples the window's frames read (0: from the above)
    context_samples: int = -1  # of them, before the window's first sample (-1: the front end's centring)

    def __post_init__(self):
        if not self.window_frames:
            object.__setattr__(self, "window_frames", self.feature_params.n_frames)
        if not self.hop_frames:
            object.__setattr__(self, "hop_frames", default_hop(self.window_frames))
        if not self.input_samples:
            object.__setattr__(self, "input_samples", self.feature_params.signal_samples(self.window_frames))
        if self.context_samples < 0:
            object.__setattr__(self, "context_samples", self.feature_params.frame_context)

    @property
    def frame_samples(self) -> int:
        """The shortest graph input: one frame's samples (a padded last window of one frame)."""
        return self.input_samples - (self.window_frames - 1) * self.feature_params.hop_length

    def window_input(self, windows: np.ndarray) -> np.ndarray:
        """Windows ``(B, window_samples)`` each alone (a clip) -> graph inputs ``(B, input_samples)``: the
        window reflected by ``context_samples`` at both ends, as the front end centres a clip's frames
        (``LogMel``'s stft), and cut to the samples its frames read (the last one is read by none)."""
        padding = ((0, 0), (self.context_samples, self.context_samples))
        return np.pad(windows, padding, mode="reflect")[:, :self.input_samples]

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` strings."""
        props = {META_CLASS_NAMES: json.dumps(self.class_names),
                 META_FEATURE_PARAMS: json.dumps(self.feature_params.to_dict()),
                 META_WINDOW_SAMPLES: str(self.window_samples), META_SAMPLE_RATE: str(self.sample_rate),
                 META_MODEL_NAME: self.model_name, META_ACTIVATION: self.activation,
                 META_WINDOW_FRAMES: str(self.window_frames), META_HOP_FRAMES: str(self.hop_frames),
                 META_INPUT_SAMPLES: str(self.input_samples), META_CONTEXT_SAMPLES: str(self.context_samples)}
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
        if META_INPUT_SAMPLES not in props:  # written before the graph took the STFT context
            raise ValueError(f"{source} was exported by an older version that scores each window from its own "
                             "samples only (not long mode's windows); export it again: "
                             f"python export.py --checkpoint C --onnx {source}")
        point = props.get(META_OPERATING_POINT)
        return cls(json.loads(props[META_CLASS_NAMES]), FeatureParams.from_dict(json.loads(props[META_FEATURE_PARAMS])),
                   int(props[META_WINDOW_SAMPLES]), int(props[META_SAMPLE_RATE]), props.get(META_MODEL_NAME, ""),
                   props.get(META_ACTIVATION, "softmax"), json.loads(point) if point else None,
                   int(props.get(META_WINDOW_FRAMES, 0)), int(props.get(META_HOP_FRAMES, 0)),
                   int(props[META_INPUT_SAMPLES]), int(props[META_CONTEXT_SAMPLES]))


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
    example = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (2, metadata.input_samples))
                               .astype(np.float32))  # (2, input_samples): batch 2 keeps the batch dynamic
    proto = _export(module, example, model_name, metadata)
    atomic_write(path, lambda file: file.write(proto.SerializeToString()),
                 check=(lambda written: check_onnx(written, module, example, model_name)) if check else None)
    return metadata


def _export(module: nn.Module, example: torch.Tensor, model_name: str, metadata: OnnxMetadata):
    """The ``onnx.ModelProto`` of ``module`` with ``metadata`` in its ``metadata_props``."""
    import onnx  # the export extra: onnx, onnxscript (see requirements-dev.txt)

    batch = torch.export.Dim("batch", min=1)
    # A padded last window has fewer frames: from one frame (one hop's samples more each) up to the window's.
    hop = metadata.feature_params.hop_length
    frames = torch.export.Dim("frames", min=1, max=metadata.window_frames)
    try:
        program = torch.onnx.export(module, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=OPSET_VERSION, dynamo=True, external_data=False,
                                    dynamic_shapes=({0: batch, 1: (frames - 1) * hop + metadata.frame_samples},),
                                    verbose=False)
    except Exception as error:  # the exporter raises many types; all mean "cannot express this"
        raise OnnxExportError(f"model {model_name!r} cannot be exported to ONNX: {_first_line(error)}") from error
    proto = program.model_proto
    for key, value in metadata.to_props().items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    proto.doc_string = (f"audioclf {model_name}: {INPUT_NAME} (batch, {metadata.input_samples}) float32 at "
                        f"{metadata.sample_rate} Hz, {metadata.context_samples} of them before the window -> "
                        f"{OUTPUT_NAME} (batch, {len(metadata.class_names)})")
    return proto


def check_onnx(path: str | Path, module: nn.Module, example: torch.Tensor, model_name: str = "") -> float:
    """Largest difference onnxruntime vs ``module`` on ``example`` plus one more row, and on a padded last
    window (its first frames only); raise above tolerance."""
    batch = torch.cat([example, example[:1].flip(-1)])  # another batch size than the export's example
    hop = module.frontend.hop_length
    short = example[:1, :example.shape[1] - max(1, module.fit.window // 3) * hop]  # (1, fewer samples)
    difference = 0.0
    for inputs in (batch, short):
        with torch.inference_mode():
            expected = module(inputs).numpy()
        try:
            got = OnnxClassifier(path).session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
        except Exception as error:
            raise OnnxExportError(f"model {model_name!r}: onnxruntime cannot run the exported graph: "
                                  f"{_first_line(error)}") from error
        difference = max(difference, float(np.abs(got - expected).max()))
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
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
            reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise ValueError(f"{self.path}: not an ONNX model onnxruntime can load ({reason}); export one with "
                             "export.py") from None
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
        """Windows ``(B, window_samples)`` float32, each alone (clips) -> probabilities ``(B, n_classes)``."""
        batch = np.asarray(waveforms, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.metadata.window_samples:
            raise ValueError(f"{self.path}: expected windows of shape (batch, {self.metadata.window_samples}), "
                             f"got {batch.shape}")
        return self.classify_inputs(self.metadata.window_input(batch))

    def classify_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Graph inputs ``(B, input_samples)`` (or fewer samples: a padded last window) -> ``(B, n_classes)``."""
        batch = np.ascontiguousarray(inputs, dtype=np.float32)
        metadata = self.metadata
        if batch.ndim != 2 or not metadata.frame_samples <= batch.shape[1] <= metadata.input_samples:
            raise ValueError(f"{self.path}: expected inputs of shape (batch, {metadata.input_samples}) "
                             f"(or at least {metadata.frame_samples} samples), got {batch.shape}")
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
