"""Fixed-size model inputs from clips of any length: random training crops and evaluation windows.

Both build on a clip accessor (``SpectrogramDataset``, or anything with ``load(index) ->
(n_mels, T_i)``, ``labels`` and ``__len__``), so a feature cache can slot in underneath.

Training draws one random crop of ``crop_frames`` per clip and epoch. The crop's start comes
from a generator seeded by ``(seed, epoch, position in the epoch, clip index)``: the same for
any worker count, different every epoch, and a resumed run (whose sampler order is restored
with the RNG state) draws exactly the crops of an uninterrupted one. Validation and evaluation
cut every window of ``audioclf.windows`` over a clip; its score is the mean of the windows'
probabilities. Clips shorter than a crop are padded as short clips are (``pad_mode``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from audioclf.frontend import FeatureParams, log_scale_for
from audioclf.windows import cut_windows, fit_frames

CropKey = tuple[int, int, int]  # (clip index, epoch, position in the epoch)


def padding_for(feature_params: dict | None) -> tuple[str, float]:
    """``(pad_mode, silence)`` with which crops and windows of these features are padded."""
    params = FeatureParams.from_dict(feature_params) if feature_params else FeatureParams()
    return params.pad_mode, log_scale_for(params).silence


def crop_start(n_frames: int, crop_frames: int, seed: int, epoch: int, position: int, index: int) -> int:
    """Seeded start of a random crop: uniform over ``0 .. n_frames - crop_frames`` (0 when it does not fit)."""
    if n_frames <= crop_frames:
        return 0
    rng = np.random.default_rng([seed % 2**32, epoch, position, index])
    return int(rng.integers(n_frames - crop_frames + 1))


def random_crop(feature: np.ndarray, crop_frames: int, start: int, pad_mode: str = "repeat",
                silence: float = 0.0) -> np.ndarray:
    """``(n_mels, T)`` -> ``(n_mels, crop_frames)`` from ``start``; shorter clips padded (``pad_mode``)."""
    return fit_frames(feature[:, start:start + crop_frames], crop_frames, pad_mode, silence)


class EpochSampler(Sampler):
    """Wraps a sampler of clip indices and yields ``(index, epoch, position)`` keys for ``RandomCrops``.

    ``set_epoch`` is called once per epoch (and passed on to a ``DistributedSampler``); the
    sampler runs in the main process, so DataLoader workers (persistent or not) see the epoch.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose crops the next iteration draws."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[CropKey]:
        for position, index in enumerate(self.sampler):
            yield int(index), self.epoch, position

    def __len__(self) -> int:
        return len(self.sampler)


class RandomCrops(Dataset):
    """Training items ``((1, n_mels, crop_frames), label)`` keyed by ``EpochSampler``'s ``(index, epoch, position)``."""

    def __init__(self, clips, crop_frames: int, seed: int, pad_mode: str = "repeat", silence: float = 0.0):
        if crop_frames < 1:
            raise ValueError(f"crop_frames must be >= 1, got {crop_frames}")
        self.clips, self.crop_frames, self.seed = clips, crop_frames, seed
        self.pad_mode, self.silence = pad_mode, silence

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: CropKey) -> tuple[torch.Tensor, int]:
        index, epoch, position = key
        feature = self.clips.load(index)  # (n_mels, T_i)
        start = crop_start(feature.shape[1], self.crop_frames, self.seed, epoch, position, index)
        crop = random_crop(feature, self.crop_frames, start, self.pad_mode, self.silence)
        return torch.from_numpy(np.ascontiguousarray(crop)).unsqueeze(0), int(self.clips.labels[index])


class ConcatCrops(Dataset):
    """Crop datasets keyed by one ``EpochSampler``: index ``i`` of the whole is index ``i - offset`` of one part."""

    def __init__(self, *parts: Dataset):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(part) for part in parts])  # (n_parts + 1,)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: CropKey) -> tuple[torch.Tensor, int]:
        index, epoch, position = key
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part][(index - int(self.offsets[part]), epoch, position)]


class ClipWindows(Dataset):
    """Evaluation items: every window of clip ``index``, ``((n_windows, 1, n_mels, window), label)``."""

    def __init__(self, clips, window: int, hop: int, pad_mode: str = "repeat", silence: float = 0.0):
        self.clips, self.window, self.hop = clips, window, hop
        self.pad_mode, self.silence = pad_mode, silence

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        windows = cut_windows(self.clips.load(index), self.window, self.hop, self.pad_mode, self.silence)
        return torch.from_numpy(windows).unsqueeze(1), int(self.clips.labels[index])  # (n_windows, 1, n_mels, W)


def collate_windows(items: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of clips -> windows ``(N, 1, n_mels, W)``, windows per clip ``(B,)``, labels ``(B,)``."""
    windows = torch.cat([clip_windows for clip_windows, _ in items])
    counts = torch.tensor([len(clip_windows) for clip_windows, _ in items], dtype=torch.long)
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return windows, counts, labels


def window_loader(clips, window: int, hop: int, batch_size: int, sampler: Sampler | None = None,
                  **loader_args) -> DataLoader:
    """Batches of ``batch_size`` clips, each cut into its windows (padded as the features say), in order.

    Yields ``collate_windows`` batches: what validation and evaluation score (``windows.iter_window_outputs``).
    """
    pad_mode, silence = padding_for(clips.info.feature_params)
    return DataLoader(ClipWindows(clips, window, hop, pad_mode, silence), batch_size=batch_size, sampler=sampler,
                      shuffle=False, collate_fn=collate_windows, **loader_args)
