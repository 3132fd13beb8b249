"""Batch-level training augmentation: SpecAugment masking and mixup (both off by default)."""
from __future__ import annotations

import torch
import torchaudio
from torch import nn


class SpecAugment(nn.Module):
    """``n_masks`` frequency and time masks per example, on ``(B, 1, n_mels, n_frames)``.

    Applied after normalisation, so masked cells take the value 0 (the band's training mean).
    """

    def __init__(self, freq_mask: int, time_mask: int, n_masks: int = 2):
        super().__init__()
        self.masks = nn.ModuleList()
        for _ in range(n_masks):
            if freq_mask > 0:
                self.masks.append(torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True))
            if time_mask > 0:
                self.masks.append(torchaudio.transforms.TimeMasking(time_mask, iid_masks=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for mask in self.masks:
            x = mask(x)
        return x


def mixup(inputs: torch.Tensor, targets: torch.Tensor, alpha: float
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix each example with a shuffled partner: returns (inputs, targets, partner_targets, lam)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(inputs.shape[0], device=inputs.device)
    mixed = lam * inputs + (1.0 - lam) * inputs[order]
    return mixed, targets, targets[order], lam


def random_time_shift(inputs: torch.Tensor) -> torch.Tensor:
    """Roll each example of ``(B, C, n_mels, n_frames)`` by its own random number of frames.

    Circular, so a repeat-padded clip stays a plausible clip; teaches the model that where an
    event starts in the window does not matter.
    """
    n_frames = inputs.shape[-1]
    shifts = torch.randint(n_frames, (inputs.shape[0], 1), device=inputs.device)  # (B, 1)
    index = (torch.arange(n_frames, device=inputs.device) - shifts) % n_frames  # (B, n_frames)
    return inputs.gather(-1, index[:, None, None, :].expand_as(inputs))


def random_frequency_warp(inputs: torch.Tensor, max_warp: float) -> torch.Tensor:
    """Stretch or squeeze each example's mel axis by a random factor in ``1 +- max_warp``.

    Like vocal-tract-length perturbation: the same sound from a larger or smaller source. Bins
    are linearly interpolated; positions past the top band repeat the top band.
    """
    batch, _, n_mels, _ = inputs.shape  # (B, C, n_mels, n_frames)
    factors = 1.0 + (2.0 * torch.rand(batch, 1, device=inputs.device) - 1.0) * max_warp  # (B, 1)
    source = (torch.arange(n_mels, device=inputs.device, dtype=inputs.dtype) / factors).clamp(max=n_mels - 1)
    low = source.floor().long()  # (B, n_mels)
    high = (low + 1).clamp(max=n_mels - 1)
    weight = (source - low)[:, None, :, None]  # (B, 1, n_mels, 1)

    def pick(index: torch.Tensor) -> torch.Tensor:
        return inputs.gather(2, index[:, None, :, None].expand_as(inputs))

    return (1.0 - weight) * pick(low) + weight * pick(high)
