"""Batch augmentations and input normalisation: values, not just shapes."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from audioclf.augment import (BackgroundMixer, SpecAugment, mix_at_snr, mix_labels, mixup, random_frequency_warp,
                              random_time_shift, random_time_stretch, time_splice)
from audioclf.classifier import InputNormalization
from audioclf.frontend import AMIN, FeatureExtractor, FeatureParams, LogScale, log_scale_for
from audioclf.training import step_options
from tools.synthetic_features import make_config, make_feature_dataset
from utils import Params


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


def test_time_stretch_moves_an_onset_by_its_factor_and_wraps_around():
    torch.manual_seed(0)
    n_frames = 40
    inputs = torch.zeros(64, 1, 3, n_frames)
    inputs[..., 20] = 1.0  # one loud frame, the same in every band
    stretched = random_time_stretch(inputs, 0.2)
    peaks = stretched[:, 0, 0].argmax(dim=1).float()  # (B,)
    assert ((peaks >= 20 * 0.8 - 1) & (peaks <= 20 * 1.2 + 1)).all()
    assert peaks.unique().numel() > 3  # factors differ per example
    assert torch.equal(stretched[:, :, 0], stretched[:, :, 2])  # one factor for all bands of an example
    assert torch.equal(random_time_stretch(inputs, 0.0), inputs)
    # seed 3 squeezes by 0.80: output frame 39 reads input frame 48.6, which wraps to 8.6 (the start again)
    ramp = torch.arange(n_frames, dtype=torch.float32).expand(1, 1, 1, n_frames).clone()
    torch.manual_seed(3)
    out = random_time_stretch(ramp, 0.2)[0, 0, 0]
    factor = 1.0 + (2.0 * 0.0042635 - 1.0) * 0.2
    source = (torch.arange(n_frames) / factor) % n_frames
    low = source.floor()
    expected = (1 - (source - low)) * low + (source - low) * ((low + 1) % n_frames)
    assert abs(float(out[39]) - 8.63) < 0.05
    assert torch.allclose(out, expected, atol=1e-3)


def test_spec_augment_masks_with_zero_and_keeps_the_rest():
    torch.manual_seed(0)
    inputs = torch.ones(4, 1, 32, 50)
    masked = SpecAugment(freq_mask=8, time_mask=10, n_masks=2)(inputs)
    assert set(masked.unique().tolist()) <= {0.0, 1.0}
    assert 0 < (masked == 0).float().mean() < 0.8


def test_spec_augment_without_normalisation_fills_with_each_examples_mean():
    """Raw YAMNet log-mels (ln(mel + 0.001), -6.9 in silence): a mask must not paint 0 (a loud level)
    into them; it takes the example's mean, so a constant input is left as it is."""
    torch.manual_seed(0)
    quiet = torch.full((2, 1, 64, 96), -5.0)
    assert torch.equal(SpecAugment(8, 20, fill_mean=True)(quiet), quiet)
    assert set(SpecAugment(8, 20)(quiet).unique().tolist()) == {-5.0, 0.0}  # what it did before
    inputs = torch.randn(3, 1, 64, 96) - 4.0
    masked = SpecAugment(8, 20, fill_mean=True)(inputs)
    changed = masked != inputs
    assert 0 < changed.float().mean() < 0.8
    means = inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs)
    assert torch.allclose(masked[changed], means[changed], atol=1e-5)


@pytest.mark.parametrize(("normalization", "fill_mean"), [("none", True), ("per_band", False), ("per_clip", False)])
def test_step_options_fill_masks_with_the_mean_only_without_normalisation(tmp_path, normalization, fill_mean):
    features = make_feature_dataset(tmp_path, per_class=(2, 1, 1), n_mels=16, n_frames=20)
    params = Params(make_config(tmp_path, features, spec_augment=True, normalization=normalization))
    assert step_options(params, torch.device("cpu")).spec_augment.fill_mean is fill_mean


def test_mixup_mixes_inputs_with_a_permutation_and_shares_the_labels():
    torch.manual_seed(0)
    inputs = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1)
    mixed, order, lam = mixup(inputs, alpha=0.4)
    assert sorted(order.tolist()) == [0, 1, 2, 3] and torch.all(lam == lam[0]) and 0 < lam[0] < 1
    assert torch.allclose(mixed.flatten(), lam * inputs.flatten() + (1 - lam) * order.float())
    soft = mix_labels(torch.tensor([0, 1, 2, 3]), 4, [(order, lam)])
    expected = lam[0] * torch.eye(4) + (1 - lam[0]) * torch.eye(4)[order]
    assert torch.allclose(soft, expected) and torch.allclose(soft.sum(1), torch.ones(4))


def test_time_splice_takes_the_partners_frames_from_the_cut_and_shares_the_label_by_length():
    torch.manual_seed(0)
    n_frames = 10
    inputs = torch.arange(6, dtype=torch.float32).reshape(6, 1, 1, 1).expand(6, 1, 3, n_frames).clone()
    spliced, order, lam = time_splice(inputs, probability=1.0)
    for i in range(6):
        cut = round(float(lam[i]) * n_frames)
        assert 1 <= cut < n_frames
        assert torch.all(spliced[i, :, :, :cut] == i) and torch.all(spliced[i, :, :, cut:] == order[i])
    soft = mix_labels(torch.arange(6), 6, [(order, lam)])
    for i in range(6):  # own share = own frames / all frames, the rest the partner's
        own, partner = soft[i, i], soft[i, order[i]]
        if order[i] != i:
            assert own == pytest.approx(float(lam[i])) and partner == pytest.approx(1 - float(lam[i]))
    untouched, _, lam_off = time_splice(inputs, probability=0.0)
    assert torch.equal(untouched, inputs) and torch.all(lam_off == 1)
    torch.manual_seed(1)
    _, _, lam_half = time_splice(torch.zeros(2000, 1, 1, n_frames), probability=0.3)
    assert (lam_half < 1).float().mean() == pytest.approx(0.3, abs=0.05)


def test_per_clip_centering_removes_a_constant_colouring():
    norm = InputNormalization(n_mels=3, center_per_clip=True)
    clip = torch.randn(1, 1, 3, 20)
    coloured = clip + torch.tensor([10.0, -5.0, 3.0]).reshape(1, 1, 3, 1)  # a microphone's fixed EQ
    assert torch.allclose(norm(clip), norm(coloured), atol=1e-5)
    assert not torch.allclose(InputNormalization(3)(clip), InputNormalization(3)(coloured))


# ---------------------------------------------------------------------------------------
# Background mixing
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [LogScale("db_power", AMIN), LogScale("log_magnitude", 0.001)])
def test_mixing_at_a_known_snr_gives_the_expected_power_ratio(scale):
    rng = np.random.default_rng(0)
    clean_energy = torch.from_numpy(rng.uniform(0.01, 5.0, size=(3, 1, 8, 20)))  # float64: exact differences
    background_energy = torch.from_numpy(rng.uniform(0.0, 50.0, size=(3, 1, 8, 20)))
    snr_db = torch.tensor([-6.0, 0.0, 12.0])
    mixed = mix_at_snr(scale.from_energy(clean_energy), scale.from_energy(background_energy), snr_db, scale)
    added = scale.to_energy(mixed) - clean_energy  # the background's share: g * E_b
    ratio_db = 10 * torch.log10(clean_energy.sum((1, 2, 3)) / added.sum((1, 2, 3)))
    np.testing.assert_allclose(ratio_db.numpy(), snr_db.numpy(), atol=1e-6)
    gain = added / background_energy  # one gain per example: the background keeps its spectrum
    for example in range(3):
        np.testing.assert_allclose(gain[example].numpy(), gain[example].mean().item(), rtol=1e-6)
    single = mix_at_snr(scale.from_energy(clean_energy).float(), scale.from_energy(background_energy).float(),
                      snr_db, scale)  # float32, as in training
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.numpy(), mixed.numpy(), atol=1e-4)


@pytest.mark.parametrize("frontend", ["default", "yamnet"])
def test_mixing_snr_is_the_waveforms_power_ratio_within_the_mel_range(frontend):
    # a 150-400 Hz rumble, a 4-7 kHz hiss and 125-7500 Hz white noise, mixed by their log-mels at 0 and
    # -6 dB: the background's waveform, scaled as the mixing scaled its energies, has that power ratio to
    # the clip's. YAMNet's magnitudes squared alone would give the hiss's wide bands ~7 dB too much weight.
    params = FeatureParams.preset(frontend, n_frames=300)  # 3 s
    extractor, scale = FeatureExtractor(params), log_scale_for(params)
    rng = np.random.default_rng(0)

    def band_noise(low: float, high: float, rms: float) -> np.ndarray:
        spectrum = np.fft.rfft(rng.standard_normal(3 * 16000))
        frequencies = np.fft.rfftfreq(3 * 16000, 1 / 16000)
        spectrum[(frequencies < low) | (frequencies > high)] = 0
        audio = np.fft.irfft(spectrum, 3 * 16000)
        return (audio * rms / np.sqrt(np.mean(audio ** 2))).astype(np.float32)

    sounds = {"rumble": band_noise(150, 400, 0.1), "hiss": band_noise(4000, 7000, 0.02),
              "white": band_noise(125, 7500, 0.05)}
    features = {name: torch.from_numpy(extractor.waveform_to_feature(audio)).double()[None, None]
                for name, audio in sounds.items()}
    for clean, background in [("rumble", "hiss"), ("hiss", "rumble"), ("rumble", "white"), ("white", "hiss")]:
        for snr_db in (0.0, -6.0):
            mixed = mix_at_snr(features[clean], features[background], torch.tensor([snr_db]), scale)
            added = scale.to_energy(mixed) - scale.to_energy(features[clean])
            gain = added.sum() / scale.to_energy(features[background]).sum()  # on energies: the power gain
            power_ratio = np.mean(sounds[clean] ** 2) / (float(gain) * np.mean(sounds[background] ** 2))
            assert 10 * np.log10(power_ratio) == pytest.approx(snr_db, abs=1.0), (frontend, clean, background)


def test_mixing_equal_energies_at_0_db_adds_3_db():
    scale = LogScale("db_power", AMIN)
    clean, background = torch.full((2, 1, 4, 5), 20.0), torch.full((2, 1, 4, 5), -30.0)
    mixed = mix_at_snr(clean, background, torch.tensor([0.0, 10.0]), scale)
    np.testing.assert_allclose(mixed[0].numpy(), 20 + 10 * np.log10(2), atol=1e-4)  # +3.01 dB
    np.testing.assert_allclose(mixed[1].numpy(), 20 + 10 * np.log10(1.1), atol=1e-4)  # background 10 dB below


def test_background_mixer_mixes_the_chosen_share_reproducibly():
    scale = LogScale("db_power", AMIN)
    clips = [np.full((4, 30), 10.0, dtype=np.float32), np.full((4, 6), 10.0, dtype=np.float32)]  # (n_mels, T)
    backgrounds = [lambda: clips[0], lambda: clips[1]]
    inputs = torch.full((400, 1, 4, 10), 10.0)
    mixer = BackgroundMixer(backgrounds, probability=0.25, snr_db=(0.0, 0.0), crop_frames=10, scale=scale)
    torch.manual_seed(3)
    mixed = mixer(inputs)
    torch.manual_seed(3)
    again = mixer(inputs)
    assert torch.equal(mixed, again)
    changed = (mixed != inputs).flatten(1).any(1)
    assert 0.18 < changed.float().mean() < 0.32  # about a quarter of the examples
    np.testing.assert_allclose(mixed[changed].numpy(), 10 + 10 * np.log10(2), atol=1e-4)  # 0 dB: +3 dB
    assert torch.equal(mixed[~changed], inputs[~changed])
    never = BackgroundMixer(backgrounds, probability=0.0, snr_db=(-6.0, 12.0), crop_frames=10, scale=scale)
    assert never(inputs) is inputs


def test_time_splice_leaves_a_one_frame_crop_whole():
    """A 1-frame crop has no cut point: nothing is spliced (it used to raise from torch.randint)."""
    inputs = torch.randn(3, 1, 4, 1)
    spliced, order, lam = time_splice(inputs, probability=1.0)
    assert torch.equal(spliced, inputs) and torch.all(lam == 1) and sorted(order.tolist()) == [0, 1, 2]


@pytest.mark.parametrize("scale", [LogScale("db_power", AMIN), LogScale("log_magnitude", 0.001)])
def test_added_noise_sits_at_the_drawn_snr_and_varies_its_spectrum(scale):
    from audioclf.augment import NOISE_TILT_DB, add_noise
    torch.manual_seed(0)
    clean_energy = torch.full((64, 1, 40, 50), 2.0)
    clean = scale.from_energy(clean_energy)
    noisy = add_noise(clean, 1.0, (10.0, 10.0), scale)
    noise_energy = scale.to_energy(noisy) - clean_energy  # energies add
    ratio_db = 10 * torch.log10(clean_energy.sum((1, 2, 3)) / noise_energy.sum((1, 2, 3)))
    assert torch.allclose(ratio_db, torch.full((64,), 10.0), atol=0.05)
    spectra = noise_energy.mean(-1)[:, 0]  # (B, n_mels): the tilt, from the lowest band to the highest
    tilt_db = 10 * torch.log10(spectra[:, -8:].mean(1) / spectra[:, :8].mean(1))
    assert tilt_db.abs().max() <= NOISE_TILT_DB and tilt_db.min() < -4 and tilt_db.max() > 4
    assert (noise_energy.std(-1) / noise_energy.mean(-1)).mean() == pytest.approx(0.5, abs=0.05)  # Gamma(4): 1/2
    torch.manual_seed(0)
    half = add_noise(clean, 0.5, (10.0, 10.0), scale)
    untouched = torch.isclose(half, clean).flatten(1).all(1)
    assert 10 < int(untouched.sum()) < 54  # about half of the examples keep their values


@pytest.mark.parametrize("scale", [LogScale("db_power", AMIN), LogScale("log_magnitude", 0.001)])
def test_random_gain_scales_each_examples_energy_by_one_gain_within_the_range(scale):
    from audioclf.augment import random_gain
    torch.manual_seed(0)
    energy = torch.rand(200, 1, 8, 5) + 0.1
    gained = random_gain(scale.from_energy(energy), 6.0, scale)
    ratio_db = 10 * torch.log10(scale.to_energy(gained) / energy)  # (B, 1, 8, 5): one value per example
    per_example = ratio_db.flatten(1)
    assert torch.allclose(per_example, per_example[:, :1].expand_as(per_example), atol=1e-3)
    assert per_example.abs().max() <= 6.0 + 1e-3 and per_example.min() < -5 and per_example.max() > 5
    assert torch.allclose(random_gain(scale.from_energy(energy), 0.0, scale), scale.from_energy(energy))


def test_random_equalization_is_a_smooth_per_example_curve_within_the_range():
    from audioclf.augment import EQ_POINTS, random_equalization
    scale = LogScale("log_magnitude", 0.001)
    torch.manual_seed(0)
    energy = torch.rand(100, 1, 41, 6) + 0.1
    filtered = random_equalization(scale.from_energy(energy), 6.0, scale)
    gain_db = 10 * torch.log10(scale.to_energy(filtered) / energy)  # (B, 1, n_mels, n_frames)
    assert torch.allclose(gain_db, gain_db[..., :1].expand_as(gain_db), atol=1e-3)  # the same for every frame
    curve = gain_db[:, 0, :, 0]  # (B, n_mels)
    assert curve.abs().max() <= 6.0 + 1e-3 and curve.max() > 5 and curve.min() < -5
    # linear between EQ_POINTS control points: 41 bands -> points every 10 bands, second differences vanish within
    segment = (41 - 1) // (EQ_POINTS - 1)
    second = curve[:, 2:] - 2 * curve[:, 1:-1] + curve[:, :-2]  # (B, n_mels - 2): band i at i - 1
    kinks = second.abs() > 1e-2
    assert not kinks[:, [i - 1 for i in range(1, 40) if i % segment]].any()  # bends only at control points
    assert kinks.float().mean() > 0.05  # and bends there: not a broadband gain


@pytest.mark.parametrize("scale", [LogScale("db_power", AMIN), LogScale("log_magnitude", 0.001)])
def test_random_lowpass_is_flat_to_a_random_cutoff_then_falls_by_a_random_slope(scale):
    from audioclf.augment import LOWPASS_CUTOFF, LOWPASS_SLOPE_DB, random_lowpass
    torch.manual_seed(0)
    n_mels = 41
    energy = 100 + 900 * torch.rand(400, 1, n_mels, 6)  # far above both scales' floors down to -40 dB
    filtered = random_lowpass(scale.from_energy(energy), 0.5, scale)
    gain_db = 10 * torch.log10(scale.to_energy(filtered) / energy)  # (B, 1, n_mels, n_frames)
    measurable = gain_db > -40  # deeper cuts reach the floor (0.001 of YAMNet's magnitudes)
    spread = (gain_db - gain_db[..., :1]).abs()
    assert spread[measurable & measurable[..., :1]].max() < 1e-2  # the same gain for every frame
    curve = gain_db[:, 0, :, 0]  # (B, n_mels)
    passed = curve.abs().max(1).values < 1e-3
    assert 150 < int(passed.sum()) < 250  # about half of the examples are left as they were
    cut = curve[~passed]
    assert cut[:, : round(LOWPASS_CUTOFF[0] * (n_mels - 1))].abs().max() < 1e-3  # the lower half is never touched
    assert (cut[:, 1:] <= cut[:, :-1] + 1e-2)[cut[:, 1:] > -40].all()  # falls monotonically towards the top band
    # straight above the cutoff: the dB lost from one band to the next is the example's slope, in range
    slopes = []
    for row in cut:
        steps = (row[:-1] - row[1:])[(row[1:] > -40) & (row[:-1] < -1e-3)]  # whole steps above the cutoff
        if len(steps) >= 2:
            assert torch.allclose(steps, steps[:1].expand_as(steps), atol=2e-2)
            slopes.append(float(steps[0]))
    assert len(slopes) > 100
    assert LOWPASS_SLOPE_DB[0] - 2e-2 <= min(slopes) < LOWPASS_SLOPE_DB[0] + 1
    assert LOWPASS_SLOPE_DB[1] - 1 < max(slopes) <= LOWPASS_SLOPE_DB[1] + 2e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("stretch", ["time", "frequency"])
def test_stretches_of_half_precision_inputs_read_the_float32_positions_and_keep_the_dtype(dtype, stretch):
    # bfloat16 holds integers exactly only up to 256: positions counted in it read the wrong frames
    n_frames = 600
    ramp = torch.arange(n_frames, dtype=torch.float32).expand(2, 1, 3, n_frames).clone()
    inputs = ramp if stretch == "time" else ramp.transpose(2, 3).contiguous()  # (2, 1, 600, 3) for the mel axis
    function = (partial(random_time_stretch, max_stretch=0.1) if stretch == "time"
                else partial(random_frequency_warp, max_warp=0.1))
    torch.manual_seed(0)
    full = function(inputs)
    torch.manual_seed(0)
    half = function(inputs.to(dtype))
    assert half.dtype == dtype
    # the half-precision result is the float32 one, rounded (relative step 2**-8 for bfloat16)
    torch.testing.assert_close(half.float(), full.to(dtype).float(), atol=0.0, rtol=2 ** -7)
