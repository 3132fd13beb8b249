"""Layers shared by the ports of TensorFlow-trained networks (YAMNet, EfficientNet-Lite)."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``"same"`` padding (before, after) of one axis: the odd extra sample goes at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``"same"`` padding, computed from each input's size.

    A stride-2 3x3 conv over an even size pads one sample at the end only (PyTorch's symmetric
    ``padding=1`` would shift every output by one), so weights trained in TensorFlow see the
    neighbourhoods they were trained on. It computes its padding itself: constructing one with a
    ``padding`` or a ``padding_mode`` other than zeros is an error.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(self.padding, str) or any(self.padding) or self.padding_mode != "zeros":
            raise ValueError(f"SameConv2d pads as TensorFlow's 'same' itself; got padding={self.padding!r}, "
                             f"padding_mode={self.padding_mode!r}")

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:  # symmetric (stride 1, odd kernel): the conv pads, without a copy
            padding = (top, left)
        else:
            x, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
