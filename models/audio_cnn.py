"""A small PANNs-style CNN for log-mel spectrograms, fast enough to train on a laptop CPU.

Four blocks of [conv3x3-BN-ReLU x ``convs_per_block`` + avg-pool 2x2] with ``width`` x
(1, 2, 4, 8) channels, then PANNs' pooling: mean over frequency, max + mean over time.
With the default one conv per block it is CNN6-like (PANNs CNN6 uses one 5x5 conv per block);
``convs_per_block=2`` gives the CNN10 layout at about 3-4x the compute.
"""
from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model

N_BLOCKS = 4  # each halves n_mels and n_frames: the input must be >= 2**4 = 16 on both axes


class ConvBlock(nn.Sequential):
    """[conv3x3 -> BatchNorm -> ReLU] x n_convs, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int = 1) -> None:
        layers: list[nn.Module] = []
        for index in range(n_convs):
            layers += [
                nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.AvgPool2d(2))
        super().__init__(*layers)


class AudioCNN(nn.Module):
    """(B, in_channels, n_mels, n_frames) log-mel spectrograms -> (B, num_classes) logits."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        width: int = 32,
        convs_per_block: int = 1,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if width < 1 or convs_per_block < 1:
            raise ValueError(f"width and convs_per_block must be >= 1, got width={width}, "
                             f"convs_per_block={convs_per_block}")
        channels = [in_channels] + [width * 2**index for index in range(N_BLOCKS)]  # 1-32-64-128-256
        self.blocks = nn.Sequential(
            *(ConvBlock(channels[index], channels[index + 1], convs_per_block) for index in range(N_BLOCKS))
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming init for convs, BN at identity, as torchvision does for its CNNs."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of spectrograms."""
        x = self.blocks(x)  # (B, C, n_mels / 16, n_frames / 16)
        x = x.mean(dim=2)  # (B, C, T): average over frequency
        x = x.amax(dim=2) + x.mean(dim=2)  # (B, C): PANNs' max + mean pooling over time
        return self.fc(self.dropout(x))  # (B, num_classes)


@register_model(
    "audiocnn",
    first_conv="blocks.0.0",
    classifier="fc",
    min_input_size=(2**N_BLOCKS, 2**N_BLOCKS),
    native_in_channels=1,
)
def audio_cnn(num_classes: int, width: int = 32, convs_per_block: int = 1, dropout: float = 0.3) -> nn.Module:
    """AudioCNN for 1-channel input; no pretrained weights exist."""
    return AudioCNN(num_classes, in_channels=1, width=width, convs_per_block=convs_per_block, dropout=dropout)
