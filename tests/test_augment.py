"""Batch augmentations and input normalisation: values, not just shapes."""
from __future__ import annotations

import torch

from audioclf.augment import SpecAugment, mixup, random_frequency_warp, random_time_shift
from audioclf.classifier import InputNormalization


def test_time_shift_rolls_each_example_circularly():
    torch.manual_seed(0)
    inputs = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 1, 3, 10)
    shifted = random_time_shift(inputs)
    for example in range(2):
        matches = [shift for shift in range(10)
                   if torch.equal(shifted[example], torch.roll(inputs[example], shift, dims=-1))]
        assert len(matches) == 1  # exactly one circular shift, the same for every band


def test_frequency_warp_moves_a_band_by_at_most_the_warp():
    torch.manual_seed(0)
    inputs = torch.zeros(64, 1, 40, 5)
    inputs[:, :, 20] = 1.0
    warped = random_frequency_warp(inputs, 0.2)
    peaks = warped[:, 0, :, 0].argmax(dim=1).float()  # (B,)
    assert ((peaks >= 20 * 0.8 - 1) & (peaks <= 20 * 1.2 + 1)).all()
    assert peaks.unique().numel() > 3  # factors differ per example
    assert torch.equal(random_frequency_warp(inputs, 0.0), inputs)


def test_spec_augment_masks_with_zero_and_keeps_the_rest():
    torch.manual_seed(0)
    inputs = torch.ones(4, 1, 32, 50)
    masked = SpecAugment(freq_mask=8, time_mask=10, n_masks=2)(inputs)
    assert set(masked.unique().tolist()) <= {0.0, 1.0}
    assert 0 < (masked == 0).float().mean() < 0.8


def test_mixup_mixes_inputs_with_a_permutation_and_returns_both_labels():
    torch.manual_seed(0)
    inputs = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1)
    targets = torch.tensor([0, 1, 2, 3])
    mixed, first, second, lam = mixup(inputs, targets, alpha=0.4)
    assert torch.equal(first, targets) and sorted(second.tolist()) == [0, 1, 2, 3]
    expected = lam * inputs.flatten() + (1 - lam) * second.float()
    assert torch.allclose(mixed.flatten(), expected)


def test_per_clip_centering_removes_a_constant_colouring():
    norm = InputNormalization(n_mels=3, center_per_clip=True)
    clip = torch.randn(1, 1, 3, 20)
    coloured = clip + torch.tensor([10.0, -5.0, 3.0]).reshape(1, 1, 3, 1)  # a microphone's fixed EQ
    assert torch.allclose(norm(clip), norm(coloured), atol=1e-5)
    assert not torch.allclose(InputNormalization(3)(clip), InputNormalization(3)(coloured))
