"""YAMNet (Google, AudioSet, Apache-2.0) in PyTorch: MobileNetV1 on 96-frame x 64-band log-mel patches.

The network of ``tensorflow/models`` ``research/audioset/yamnet/yamnet.py``, layer for layer: a
3x3 stride-2 conv, 13 depthwise-separable blocks (3x3 depthwise + 1x1 pointwise), each conv
followed by batch norm (epsilon 1e-4, centre but no scale) and ReLU, global average pooling to a
1024-d embedding and a 521-way logistic layer (sigmoid: AudioSet is multi-label). Convolutions pad
like TensorFlow's ``"same"``: a stride-2 conv over an even size pads one sample at the end only.

Inputs follow this pipeline's layout ``(B, 1, n_mels=64, n_frames)`` and are transposed to YAMNet's
``(frames, bands)`` image before the first conv, so the AudioSet weights see what they were
trained on. A clip of exactly 96 frames is one patch. **Longer clips** are cut into 96-frame
patches every 48 frames (YAMNet's 0.96 s / 0.48 s; trailing frames that do not fill a patch are
dropped, as in YAMNet) and scored by the **mean of the patch probabilities**; the model returns
logits whose activation is that mean (``pool_patch_logits``), so losses and ``softmax``/``sigmoid``
work unchanged. The AudioSet weights come from ``python -m models.convert yamnet``.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# YAMNet's params.py (patches, STFT, mel bands) is spelt once, beside the front end it defines.
from audioclf.frontend import YAMNET_PATCH_FRAMES as PATCH_FRAMES  # 0.96 s of 10 ms frames: one example
from audioclf.frontend import YAMNET_PATCH_HOP_FRAMES as PATCH_HOP_FRAMES  # patches overlap by half
from audioclf.frontend import YAMNET_PRESET, FeatureParams, YamnetLogMel

from .layers import SameConv2d
from .registry import register_model
from .weights import ConvertedWeights

N_BANDS = YAMNET_PRESET["n_mels"]
N_AUDIOSET_CLASSES = 521
EMBEDDING_SIZE = 1024
BATCHNORM_EPSILON = 1e-4  # YAMNet's params.py (Keras' default would be 1e-3)

# (kernel, stride, output channels) of YAMNet's 14 layers; the first is a full conv, the rest
# depthwise-separable (YAMNet's _YAMNET_LAYER_DEFS).
LAYER_DEFS = (
    (3, 2, 32), (3, 1, 64), (3, 2, 128), (3, 1, 128), (3, 2, 256), (3, 1, 256), (3, 2, 512),
    (3, 1, 512), (3, 1, 512), (3, 1, 512), (3, 1, 512), (3, 1, 512), (3, 2, 1024), (3, 1, 1024),
)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """YAMNet's batch norm: epsilon 1e-4, a shift (beta) but no learned scale (gamma fixed at 1)."""
    norm = nn.BatchNorm2d(channels, eps=BATCHNORM_EPSILON)
    norm.weight.requires_grad_(False)  # Keras' scale=False: gamma is 1 and never trained
    return norm


class ConvBnRelu(nn.Sequential):
    """conv (full or depthwise) -> batch norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1):
        super().__init__()
        self.conv = SameConv2d(in_channels, out_channels, kernel, stride=stride, groups=groups, bias=False)
        self.bn = batch_norm(out_channels)
        self.relu = nn.ReLU(inplace=True)


class SeparableBlock(nn.Sequential):
    """Depthwise 3x3 (with the stride) then pointwise 1x1, each with batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.depthwise = ConvBnRelu(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.pointwise = ConvBnRelu(in_channels, out_channels, 1, 1)


def pool_patch_logits(logits: Tensor, multi_label: bool) -> Tensor:
    """Patch logits ``(B, P, C)`` -> clip logits ``(B, C)`` whose activation is the mean patch probability.

    Multi-label (sigmoid): ``logit(mean_p sigmoid(z))``; single-label (softmax):
    ``log(mean_p softmax(z))``. Both use log-sum-exp, so they stay finite for confident patches;
    one patch returns its logits unchanged.
    """
    if logits.shape[1] == 1:
        return logits[:, 0]
    log_count = math.log(logits.shape[1])
    if multi_label:
        log_p = torch.logsumexp(F.logsigmoid(logits), dim=1) - log_count  # log mean p
        log_not_p = torch.logsumexp(F.logsigmoid(-logits), dim=1) - log_count  # log mean (1 - p)
        return log_p - log_not_p
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=1) - log_count


def patch_starts(n_frames: int) -> list[int]:
    """First frame of every complete 96-frame patch of a clip, every 48 frames."""
    if n_frames < PATCH_FRAMES:
        raise ValueError(f"YAMNet needs at least {PATCH_FRAMES} frames (0.96 s), got {n_frames}")
    return list(range(0, n_frames - PATCH_FRAMES + 1, PATCH_HOP_FRAMES))


class YAMNet(nn.Module):
    """``(B, in_channels, 64, n_frames >= 96)`` log-mels -> ``(B, num_classes)`` logits.

    ``multi_label`` says how the head's logits are read (sigmoid per class, as AudioSet's head, or
    softmax); it decides how patches are pooled. ``AudioClassifier`` sets it to its own.
    """

    def __init__(self, num_classes: int = N_AUDIOSET_CLASSES, in_channels: int = 1, dropout: float = 0.0,
                 multi_label: bool = True):
        super().__init__()
        self.multi_label = multi_label
        layers: list[nn.Module] = []
        channels = in_channels
        for index, (kernel, stride, out_channels) in enumerate(LAYER_DEFS):
            block = ConvBnRelu if index == 0 else SeparableBlock
            layers.append(block(channels, out_channels, kernel, stride))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(EMBEDDING_SIZE, num_classes)

    def patches(self, x: Tensor) -> Tensor:
        """``(B, C, 64, n_frames)`` -> ``(B * P, C, 96, 64)`` patches in YAMNet's (frames, bands) order."""
        starts = patch_starts(x.shape[-1])
        patches = torch.stack([x[..., start:start + PATCH_FRAMES] for start in starts], dim=1)  # (B, P, C, 64, 96)
        return patches.flatten(0, 1).transpose(-1, -2)

    def embed_patches(self, patches: Tensor) -> Tensor:
        """``(N, C, 96, 64)`` patches -> ``(N, 1024)`` embeddings (mean over the final 3 x 2 map)."""
        return self.features(patches).mean(dim=(-2, -1))

    def embeddings(self, x: Tensor) -> Tensor:
        """Per-patch embeddings ``(B, P, 1024)`` of a clip batch."""
        return self.embed_patches(self.patches(x)).unflatten(0, (x.shape[0], -1))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.dropout(self.embeddings(x)))  # (B, P, num_classes)
        return pool_patch_logits(logits, self.multi_label)


def yamnet_padded_length(n_samples: int, sample_rate: int = YAMNET_PRESET["sample_rate"]) -> int:
    """Samples YAMNet pads a waveform to (its ``features.pad_waveform``): one whole patch at least,
    then a whole number of patch hops, so every sample lies in a complete patch."""
    params = FeatureParams.preset("yamnet", sample_rate=sample_rate)
    first_patch = params.samples_for(PATCH_FRAMES)  # 0.975 s: 96 frames of 25 ms, every 10 ms
    patch_hop = PATCH_HOP_FRAMES * params.hop_length
    extra = max(n_samples, first_patch) - first_patch
    return first_patch + math.ceil(extra / patch_hop) * patch_hop


@torch.inference_mode()
def yamnet_frames(model: YAMNet, waveform: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The original's ``yamnet_frames_model``: 16 kHz waveform ``(n,)`` -> (scores ``(P, C)``,
    embeddings ``(P, 1024)``, log-mel ``(frames, 64)``), zero-padding as YAMNet does.

    ``model`` must hold the original head (``get_model("yamnet", 521, pretrained=True,
    head_from_pretrained=range(521))``) for the scores to be AudioSet's.
    """
    logmel = YamnetLogMel(FeatureParams.preset("yamnet")).to(waveform.device)
    padded = F.pad(waveform, (0, yamnet_padded_length(waveform.shape[-1]) - waveform.shape[-1]))
    log_mel = logmel(padded)  # (64, frames)
    model.eval()
    embeddings = model.embeddings(log_mel[None, None])[0]  # (P, 1024)
    scores = torch.sigmoid(model.classifier(embeddings))
    return scores, embeddings, log_mel.T


def class_map_path() -> Path:
    """The AudioSet class map shipped with this package (``models/yamnet_class_map.csv``)."""
    return Path(__file__).with_name("yamnet_class_map.csv")


def audioset_class_names(path: str | Path | None = None) -> list[str]:
    """The 521 AudioSet display names in YAMNet's output order (``index,mid,display_name`` CSV)."""
    path = Path(path) if path is not None else class_map_path()
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = [row["display_name"] for row in sorted(rows, key=lambda row: int(row["index"]))]
    if len(names) != N_AUDIOSET_CLASSES:
        raise ValueError(f"{path}: expected {N_AUDIOSET_CLASSES} classes, found {len(names)}")
    return names


YAMNET_AUDIOSET = ConvertedWeights(
    name="yamnet_audioset",
    file_name="yamnet_audioset.pth",
    categories=audioset_class_names,
    convert_command="python -m models.convert yamnet",
    license="Apache-2.0 (YAMNet, Google; tensorflow/models research/audioset/yamnet)",
)


@register_model(
    "yamnet",
    weights=YAMNET_AUDIOSET,
    first_conv="features.0.conv",
    classifier="classifier",
    layers="features",
    min_input_size=(16, PATCH_FRAMES),
    native_in_channels=1,
    multi_label=True,
    frontend="yamnet",
)
def yamnet(num_classes: int, dropout: float = 0.0) -> nn.Module:
    """YAMNet; ``dropout`` before the classifier (0 in the original)."""
    return YAMNet(num_classes, in_channels=1, dropout=dropout)
