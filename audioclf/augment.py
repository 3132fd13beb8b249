"""Batch-level training augmentation: SpecAugment masking, mixup, time splicing, time shift,
time stretch, frequency warp, background mixing, added noise, random gain and equalisation (all off by default)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torchaudio
from torch import nn

from audioclf.frontend import LogScale
from audioclf.windows import fit_frames

EQ_POINTS = 5  # random_equalization's gains across the mel axis: lowest band, highest and three between
NOISE_TILT_DB = 12.0  # added noise's spectrum rises or falls by up to this much from the lowest band to the highest
NOISE_BINS_PER_BAND = 4  # its band energies fluctuate like the mean of this many FFT bins' (Gamma shape)
LOWPASS_CUTOFF = (0.5, 1.0)  # random_lowpass's cutoff band, as a fraction of the mel bands (uniform)
LOWPASS_SLOPE_DB = (1.0, 8.0)  # its roll-off above the cutoff, dB per mel band (uniform)


class SpecAugment(nn.Module):
    """``n_masks`` frequency and time masks per example, on ``(B, 1, n_mels, n_frames)``.

    Applied after normalisation, so masked cells take the value 0: the band's training mean.
    Without normalisation (``fill_mean``: pretrained YAMNet, ``"normalization": "none"``) 0 is a
    level of the raw log scale (in ln(mel + 0.001), broadband sound at about -35 dBFS, louder than a
    quiet recording), so the masks would paint stripes no test input has; there masked cells take
    each example's mean over bands and frames instead, which hides what they cover.
    """

    def __init__(self, freq_mask: int, time_mask: int, n_masks: int = 2, fill_mean: bool = False):
        super().__init__()
        self.fill_mean = fill_mean
        self.masks = nn.ModuleList()
        for _ in range(n_masks):
            if freq_mask > 0:
                self.masks.append(torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True))
            if time_mask > 0:
                self.masks.append(torchaudio.transforms.TimeMasking(time_mask, iid_masks=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True) if self.fill_mean else None  # (B, 1, 1, 1)
        if mean is not None:
            x = x - mean
        for mask in self.masks:
            x = mask(x)
        return x if mean is None else x + mean


def mixup(inputs: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blend each example with a shuffled partner, one Beta(alpha, alpha) weight for the batch.

    Returns ``(mixed, order, lam)``: example ``i`` is ``lam[i] * x[i] + (1 - lam[i]) * x[order[i]]``
    and its label is shared the same way (``mix_labels``).
    """
    lam = torch.distributions.Beta(alpha, alpha).sample().to(inputs.device).expand(inputs.shape[0])  # (B,)
    order = torch.randperm(inputs.shape[0], device=inputs.device)
    weight = lam.to(inputs.dtype)[:, None, None, None]
    return weight * inputs + (1.0 - weight) * inputs[order], order, lam


def time_splice(inputs: torch.Tensor, probability: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """With ``probability``, replace each example's frames from a random cut on by a shuffled partner's.

    CutMix along time on ``(B, C, n_mels, n_frames)``: the window then holds the end of one sound
    and the start of another, as a sliding window does where one sound gives way to the next (and
    at a cry's onset and offset). Returns ``(spliced, order, lam)``; ``lam[i]`` is the share of
    example ``i``'s own frames (1 when it is not spliced), and its label is shared the same way
    (``mix_labels``). A 1-frame crop has no cut point and is left whole.
    """
    batch, n_frames = inputs.shape[0], inputs.shape[-1]
    order = torch.randperm(batch, device=inputs.device)
    cut = torch.randint(1, max(n_frames, 2), (batch,), device=inputs.device)  # (B,) first partner frame
    cut = torch.where(torch.rand(batch, device=inputs.device) < probability, cut, n_frames)
    partner = torch.arange(n_frames, device=inputs.device)[None, :] >= cut[:, None]  # (B, n_frames)
    spliced = torch.where(partner[:, None, None, :], inputs[order], inputs)
    return spliced, order, cut.float() / n_frames


def mix_labels(targets: torch.Tensor, n_classes: int, mixes: Sequence[tuple[torch.Tensor, torch.Tensor]]
               ) -> torch.Tensor:
    """Soft labels ``(B, n_classes)`` after the input mixes ``(order, lam)``, applied in order."""
    soft = nn.functional.one_hot(targets, n_classes).float()
    for order, lam in mixes:
        weight = lam.float()[:, None]
        soft = weight * soft + (1.0 - weight) * soft[order]
    return soft


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
    return _random_stretch(inputs, max_warp, dim=2, circular=False)


def random_time_stretch(inputs: torch.Tensor, max_stretch: float) -> torch.Tensor:
    """Stretch or squeeze each example's time axis by a random factor in ``1 +- max_stretch``.

    Like speed perturbation's change of tempo: the same word said faster or slower. Frames are
    linearly interpolated and read circularly (as ``random_time_shift``), so a squeezed
    repeat-padded clip goes on repeating.
    """
    return _random_stretch(inputs, max_stretch, dim=3, circular=True)


def _random_stretch(inputs: torch.Tensor, max_fraction: float, dim: int, circular: bool) -> torch.Tensor:
    """Axis ``dim`` of ``(B, C, n_mels, n_frames)`` resampled by a random factor in ``1 +- max_fraction``
    per example: output position ``i`` reads input position ``i / factor``, linearly interpolated;
    positions past the end wrap around (``circular``) or repeat the last one. Positions and weights are
    float32 at least (bfloat16 counts frames exactly only up to 256); the result has ``inputs``' dtype."""
    batch, size = inputs.shape[0], inputs.shape[dim]
    dtype = torch.promote_types(inputs.dtype, torch.float32)
    factors = 1.0 + (2.0 * torch.rand(batch, 1, device=inputs.device) - 1.0) * max_fraction  # (B, 1)
    source = torch.arange(size, device=inputs.device, dtype=dtype) / factors.to(dtype)  # (B, size)
    source = source % size if circular else source.clamp(max=size - 1)
    low = source.floor().long()
    high = (low + 1) % size if circular else (low + 1).clamp(max=size - 1)
    shape = [batch, 1, 1, 1]
    shape[dim] = size

    def pick(index: torch.Tensor) -> torch.Tensor:
        return inputs.gather(dim, index.reshape(shape).expand_as(inputs))

    weight = (source - low).reshape(shape)
    return ((1.0 - weight) * pick(low) + weight * pick(high)).to(inputs.dtype)


def random_gain(inputs: torch.Tensor, max_db: float, scale: LogScale) -> torch.Tensor:
    """Scale each example's mel energies by its own random gain, uniform in ``+- max_db`` dB.

    ``inputs``: ``(B, 1, n_mels, n_frames)`` log-scale features (``frontend.LogScale``). A recording
    is louder or quieter with the source's distance and the recorder's gain: a model that sees one
    level per speaker or class can learn the level instead of the sound. On dB features the gain is
    an offset: per-clip normalisation (``per_clip``) removes it again, except where bands sit at the
    floor; the training set's mean and std (``per_band``, ``global``) do not.
    """
    gain_db = (2.0 * torch.rand(inputs.shape[0], 1, device=inputs.device) - 1.0) * max_db  # (B, 1)
    return _apply_band_gains(inputs, gain_db.expand(-1, inputs.shape[2]), scale)


def random_equalization(inputs: torch.Tensor, max_db: float, scale: LogScale) -> torch.Tensor:
    """Filter each example by its own random smooth equaliser: a gain curve across the mel bands.

    The curve interpolates linearly between ``EQ_POINTS`` gains, uniform in ``+- max_db`` dB, at
    evenly spaced bands (as FilterAugment, Nam et al. 2022): the colouring of another microphone,
    room or voice, which per-clip mean removal takes out of dB features but a pretrained model's
    unnormalised input keeps.
    """
    batch, n_mels = inputs.shape[0], inputs.shape[2]
    points = (2.0 * torch.rand(batch, 1, EQ_POINTS, device=inputs.device) - 1.0) * max_db  # (B, 1, EQ_POINTS)
    curve = nn.functional.interpolate(points, size=n_mels, mode="linear", align_corners=True)[:, 0]  # (B, n_mels)
    return _apply_band_gains(inputs, curve, scale)


def random_lowpass(inputs: torch.Tensor, probability: float, scale: LogScale) -> torch.Tensor:
    """Low-pass each example, with ``probability``, at its own random cutoff and roll-off.

    The gain is 0 dB up to the cutoff band (uniform in ``LOWPASS_CUTOFF`` of the bands) and falls
    by a slope uniform in ``LOWPASS_SLOPE_DB`` dB per band above it: the top of the spectrum as a
    microphone, a codec or a lower sample rate's anti-aliasing filter leaves it (FSDD's speakers
    roll off differently below their 4 kHz limit), which a smooth equaliser (``eq_db``) is too
    coarse to make.
    """
    batch, n_mels = inputs.shape[0], inputs.shape[2]
    low, high = LOWPASS_CUTOFF
    cutoff = (low + (high - low) * torch.rand(batch, 1, device=inputs.device)) * (n_mels - 1)  # (B, 1)
    low, high = LOWPASS_SLOPE_DB
    slope = low + (high - low) * torch.rand(batch, 1, device=inputs.device)
    applied = torch.rand(batch, 1, device=inputs.device) < probability
    bands = torch.arange(n_mels, device=inputs.device)
    gain_db = -slope * (bands - cutoff).clamp(min=0.0) * applied  # (B, n_mels)
    return _apply_band_gains(inputs, gain_db, scale)


def _apply_band_gains(inputs: torch.Tensor, gain_db: torch.Tensor, scale: LogScale) -> torch.Tensor:
    """``(B, 1, n_mels, n_frames)`` log-scale features with band ``m`` of example ``b`` scaled by
    ``gain_db[b, m]`` dB in energy."""
    dtype = torch.promote_types(inputs.dtype, torch.float32)
    gain = torch.pow(10.0, gain_db.to(dtype) / 10.0)[:, None, :, None]  # (B, 1, n_mels, 1)
    return scale.from_energy(scale.to_energy(inputs.to(dtype)) * gain).to(inputs.dtype)


def mix_at_snr(clean: torch.Tensor, background: torch.Tensor, snr_db: torch.Tensor, scale: LogScale
               ) -> torch.Tensor:
    """Add ``background`` to ``clean`` so that their power ratio is ``snr_db``; both log-scale features.

    ``clean``, ``background``: ``(B, ..., n_mels, frames)`` in the features' log scale
    (``frontend.LogScale``); ``snr_db``: ``(B,)``. Mel energies are added (uncorrelated sounds:
    the phase cross term is zero on average), the background's scaled by one gain ``g`` per example
    so that ``sum(P_clean) / sum(g * P_background)`` is ``10 ** (snr_db / 10)``, with ``P`` the bands'
    powers (``LogScale.band_power``: the waveforms' power ratio within the mel range); the result
    is converted back to the log scale.
    """
    dtype = torch.promote_types(clean.dtype, torch.float32)  # half-precision inputs are mixed in float32
    clean_energy = scale.to_energy(clean.to(dtype))
    background_energy = scale.to_energy(background.to(dtype))
    dims = tuple(range(1, clean.ndim))
    ratio = torch.pow(10.0, snr_db.to(clean_energy) / 10.0)  # (B,)
    clean_power = scale.band_power(clean_energy).sum(dims)
    background_power = scale.band_power(background_energy).sum(dims)
    gain = clean_power / (background_power * ratio).clamp(min=torch.finfo(dtype).tiny)
    gain = gain.reshape((-1,) + (1,) * len(dims))
    return scale.from_energy(clean_energy + gain * background_energy).to(clean.dtype)


class BackgroundMixer:
    """Mixes each training example, with probability ``probability``, with a random background crop.

    ``backgrounds`` are the background clips, each a function returning its ``(n_mels, T)``
    feature (a background list, or the training clips of named classes). Per batch the choices
    (which examples, which clip, where in it, the SNR, uniform in ``snr_db``) come from torch's
    CPU generator, which checkpoints save, so a resumed run mixes as an uninterrupted one. The
    chosen crops are loaded and the mixing runs on the whole batch on its device.
    """

    def __init__(self, backgrounds: Sequence[Callable[[], np.ndarray]], probability: float,
                 snr_db: tuple[float, float], crop_frames: int, scale: LogScale, pad_mode: str = "repeat"):
        if not len(backgrounds):
            raise ValueError("background mixing needs at least one background clip")
        self.backgrounds = list(backgrounds)
        self.probability, self.snr_db, self.crop_frames = probability, snr_db, crop_frames
        self.scale, self.pad_mode = scale, pad_mode

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 1, n_mels, crop_frames)`` log-scale features (before normalisation) -> mixed, same shape."""
        batch = inputs.shape[0]
        chosen = torch.nonzero(torch.rand(batch) < self.probability).flatten()
        if len(chosen) == 0:
            return inputs
        which = torch.randint(len(self.backgrounds), (len(chosen),))
        where = torch.rand(len(chosen))
        low, high = self.snr_db
        snr = low + (high - low) * torch.rand(len(chosen))
        crops = []
        for clip, fraction in zip(which.tolist(), where.tolist()):
            feature = self.backgrounds[clip]()  # (n_mels, T)
            start = int(fraction * (max(feature.shape[1] - self.crop_frames, 0) + 1))
            crops.append(fit_frames(feature[:, start:start + self.crop_frames], self.crop_frames, self.pad_mode,
                                    self.scale.silence))
        background = torch.from_numpy(np.stack(crops))[:, None].to(inputs.device, non_blocking=True)
        chosen = chosen.to(inputs.device)
        mixed = inputs.clone()
        mixed[chosen] = mix_at_snr(inputs[chosen], background.to(inputs.dtype), snr.to(inputs.device), self.scale)
        return mixed


def add_noise(inputs: torch.Tensor, probability: float, snr_db: tuple[float, float], scale: LogScale
              ) -> torch.Tensor:
    """Add stationary noise to each example of ``inputs`` with probability ``probability``.

    The noise has a random spectral tilt (up to ``NOISE_TILT_DB`` either way across the mel axis)
    and band energies that fluctuate from frame to frame like a noise periodogram averaged over
    ``NOISE_BINS_PER_BAND`` bins; it is mixed in at an SNR uniform in ``snr_db`` (``mix_at_snr``).
    Recordings differ in their noise floor (microphone, room, gain): a floor that varies in
    training keeps a model from telling classes, or speakers, apart by it. Random choices come
    from torch's generator on the batch's device; inputs are log-scale features before
    normalisation, ``(B, 1, n_mels, n_frames)``.
    """
    chosen = torch.nonzero(torch.rand(inputs.shape[0], device=inputs.device) < probability).flatten()
    if len(chosen) == 0:
        return inputs
    batch, (n_mels, n_frames) = len(chosen), inputs.shape[2:]
    dtype = torch.promote_types(inputs.dtype, torch.float32)
    tilt = (2.0 * torch.rand(batch, 1, device=inputs.device, dtype=dtype) - 1.0) * NOISE_TILT_DB  # (b, 1)
    position = torch.linspace(0.0, 1.0, n_mels, device=inputs.device, dtype=dtype)  # (n_mels,)
    spectrum = torch.pow(10.0, tilt * position / 10.0)[:, None, :, None]  # (b, 1, n_mels, 1) energy
    shape = torch.full((batch, 1, n_mels, n_frames), float(NOISE_BINS_PER_BAND), device=inputs.device, dtype=dtype)
    fluctuation = torch.distributions.Gamma(shape, shape).sample()  # mean 1
    noise = scale.from_energy(spectrum * fluctuation)
    low, high = snr_db
    snr = low + (high - low) * torch.rand(batch, device=inputs.device, dtype=dtype)
    noisy = inputs.clone()
    noisy[chosen] = mix_at_snr(inputs[chosen], noise.to(inputs.dtype), snr, scale)
    return noisy
