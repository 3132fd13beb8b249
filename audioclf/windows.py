"""Windows: the one definition of the frame ranges a model scores.

A **window** is a range of ``window`` frames of one continuous log-mel of a recording (the
front end's recording log-mel, ``frontend.LogMelStream``, computed in blocks for long files).
Windows start every ``hop`` frames, ``[i * hop, i * hop + window)`` for every window that fits;
when frames remain after the last full window (or the recording is shorter than one window),
one more window starts at the next hop and is padded like a short clip (``pad_mode``: its frames
repeated, or silence). A recording longer than one window scores the **mean of its windows'
probabilities**.

Evaluation crops of whole clips, ``predict.py``'s clip and long modes, streaming and patch
models (e.g. YAMNet's 96-frame patches) all cut windows here, so a clip scores the same in each.
Serving code imports this module: it needs only numpy and torch.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from audioclf.runtime import BatchOutput, iter_outputs


def default_hop(window: int) -> int:
    """The hop between windows when none is given: half a window (at least one frame)."""
    return max(1, window // 2)


def hop_from_seconds(hop_seconds: float, frame_s: float) -> int:
    """A hop given in seconds as whole frames of ``frame_s`` seconds (at least one)."""
    return max(1, round(hop_seconds / frame_s))


def window_starts(n_frames: int, window: int, hop: int) -> np.ndarray:
    """First frame of each window over ``n_frames`` frames (int64, ``(n_windows,)``)."""
    if n_frames < 1 or window < 1 or hop < 1:
        raise ValueError(f"n_frames, window and hop must be >= 1, got {n_frames}, {window} and {hop}")
    n_full = 0 if n_frames < window else 1 + (n_frames - window) // hop
    starts = list(range(0, n_full * hop, hop))
    last_end = (n_full - 1) * hop + window if n_full else 0
    if last_end < n_frames and n_full * hop < n_frames:  # a partial last window (padded)
        starts.append(n_full * hop)
    return np.asarray(starts, dtype=np.int64)


def fit_frames(frames: np.ndarray, window: int, pad_mode: str = "repeat", silence: float = 0.0) -> np.ndarray:
    """Cut or pad the last axis of ``frames`` to ``window``: ``repeat`` tiles them, ``zeros`` adds ``silence``."""
    length = frames.shape[-1]
    if length >= window:
        return frames[..., :window]
    if length == 0:
        raise ValueError("cannot pad an empty window")
    if pad_mode == "repeat":
        reps = [1] * (frames.ndim - 1) + [-(-window // length)]
        return np.tile(frames, reps)[..., :window]
    padding = [(0, 0)] * (frames.ndim - 1) + [(0, window - length)]
    return np.pad(frames, padding, constant_values=silence)


def cut_windows(feature: np.ndarray, window: int, hop: int, pad_mode: str = "repeat",
                silence: float = 0.0) -> np.ndarray:
    """Every window of a ``(n_mels, T)`` feature: ``(n_windows, n_mels, window)``."""
    starts = window_starts(feature.shape[-1], window, hop)
    return np.stack([fit_frames(feature[..., start:start + window], window, pad_mode, silence) for start in starts])


class WindowSlicer:
    """Cuts a stream of blocks ``(..., k)`` into the windows of ``window_starts`` along the last axis.

    Holds one window (shifted by ``hop`` after each). ``feed`` yields views into that buffer,
    valid until the next iteration; ``finish`` yields the padded last window when one is due.
    The windows equal ``cut_windows`` on the concatenated blocks, whatever the block sizes.
    """

    def __init__(self, window: int, hop: int, pad_mode: str = "repeat", silence: float = 0.0):
        if window < 1 or hop < 1:
            raise ValueError(f"window and hop must be >= 1, got {window} and {hop}")
        self.window, self.hop, self.pad_mode, self.silence = window, hop, pad_mode, silence
        self.buffer: np.ndarray | None = None
        self.filled = 0  # frames in the buffer, from the next window's start
        self.skip = 0  # frames to drop before the next window starts (hop > window)
        self.n_seen = 0
        self.n_windows = 0

    def feed(self, block: np.ndarray) -> Iterator[np.ndarray]:
        """Yield every window completed by ``block`` (last axis: time)."""
        if self.buffer is None:
            self.buffer = np.zeros(block.shape[:-1] + (self.window,), dtype=block.dtype)
        position, size = 0, block.shape[-1]
        self.n_seen += size
        while position < size:
            if self.skip:
                dropped = min(self.skip, size - position)
                position += dropped
                self.skip -= dropped
                continue
            take = min(size - position, self.window - self.filled)
            self.buffer[..., self.filled:self.filled + take] = block[..., position:position + take]
            self.filled += take
            position += take
            if self.filled == self.window:
                self.n_windows += 1
                yield self.buffer
                if self.hop < self.window:
                    self.buffer[..., :self.window - self.hop] = self.buffer[..., self.hop:]
                    self.filled = self.window - self.hop
                else:
                    self.filled, self.skip = 0, self.hop - self.window

    def finish(self) -> Iterator[np.ndarray]:
        """Yield the padded last window, if frames past the last full window remain."""
        last_end = (self.n_windows - 1) * self.hop + self.window if self.n_windows else 0
        if self.filled and self.n_seen > last_end:
            self.n_windows += 1
            yield fit_frames(self.buffer[..., :self.filled].copy(), self.window, self.pad_mode, self.silence)
        self.filled = 0


def pool_windows(probabilities: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean probability per clip: windows ``(N, C)`` in clip order, ``counts`` ``(B,)`` summing to N -> ``(B, C)``."""
    counts = counts.to(probabilities.device)
    clip_of_window = torch.repeat_interleave(torch.arange(len(counts), device=probabilities.device), counts)
    sums = torch.zeros(len(counts), probabilities.shape[1], dtype=probabilities.dtype, device=probabilities.device)
    sums.index_add_(0, clip_of_window, probabilities)
    return sums / counts[:, None].to(probabilities.dtype)


def pool_log_softmax(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Log of the mean softmax probability per clip, computed stably: ``(N, C)``, ``(B,)`` -> ``(B, C)``.

    For a clip of one window it is exactly ``log_softmax`` of that window's logits.
    """
    log_probabilities = torch.log_softmax(logits.float(), dim=1)  # (N, C)
    counts = counts.to(logits.device)
    clip_of_window = torch.repeat_interleave(torch.arange(len(counts), device=logits.device), counts)
    peak = torch.full((len(counts), logits.shape[1]), -torch.inf, device=logits.device)
    index = clip_of_window[:, None].expand_as(log_probabilities)
    peak = peak.scatter_reduce(0, index, log_probabilities, reduce="amax")  # (B, C): each clip's largest
    sums = torch.zeros_like(peak).index_add_(0, clip_of_window, torch.exp(log_probabilities - peak[clip_of_window]))
    return torch.log(sums) + peak - torch.log(counts.to(peak.dtype))[:, None]


def iter_window_outputs(model: nn.Module, batches: Iterable, device: torch.device,
                        amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                        max_windows: int | None = None) -> Iterator[tuple[BatchOutput, torch.Tensor]]:
    """Run ``model`` over batches of clips' windows; yield each batch's window outputs and its counts.

    A batch is ``(windows (N, 1, n_mels, W), counts (B,), targets (B,))`` (``collate_windows``), or
    ``(inputs (B, 1, n_mels, W), targets (B,))``: clips of one window each. The windows go through
    the model (``runtime.iter_outputs``) at most ``max_windows`` at a time (None: all at once). The
    output's ``targets`` are the clips' (``(B,)``), its ``logits`` and ``probabilities`` the
    windows' (``(N, C)``): ``pool_windows`` gives the clips' scores.
    """
    for batch in batches:
        if len(batch) == 2:  # one window per clip
            windows, targets = batch
            counts = torch.ones(len(windows), dtype=torch.long)
        else:
            windows, counts, targets = batch
        targets = targets.to(device, non_blocking=True)
        chunks = torch.split(windows, max_windows) if max_windows else (windows,)
        outputs = list(iter_outputs(model, chunks, device, amp_dtype, channels_last))
        yield BatchOutput(torch.cat([o.logits for o in outputs]), torch.cat([o.probabilities for o in outputs]),
                          targets), counts
