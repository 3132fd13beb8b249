"""audioclf/windows.py: the one definition of windows (starts, padding, streaming cut, pooling)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audioclf.windows import (WindowSlicer, cut_windows, default_hop, fit_frames, hop_from_seconds, pool_windows,
                              window_starts)


@pytest.mark.parametrize("n_frames, window, hop, starts", [
    (100, 100, 50, [0]),            # exactly one window
    (101, 100, 50, [0, 50]),        # one frame more: a padded window at the next hop
    (150, 100, 50, [0, 50]),        # ends on a window boundary: no padded window
    (40, 100, 50, [0]),             # shorter than a window: one padded window
    (29, 7, 3, [0, 3, 6, 9, 12, 15, 18, 21, 24]),  # 22 + 7 = 29: the last full window ends at the end
    (29, 4, 6, [0, 6, 12, 18, 24]),  # hop > window: gaps between windows
    (27, 4, 6, [0, 6, 12, 18, 24]),  # a partial window at 24 (3 frames)
    (25, 4, 6, [0, 6, 12, 18, 24]),
    (24, 4, 6, [0, 6, 12, 18]),      # frames 22-23 fall in the gap: no window for them
])
def test_window_starts(n_frames, window, hop, starts):
    assert window_starts(n_frames, window, hop).tolist() == starts


def test_default_hop_is_half_a_window():
    assert default_hop(100) == 50 and default_hop(96) == 48 and default_hop(1) == 1


def test_hop_from_seconds_rounds_to_whole_frames_and_is_at_least_one():
    assert hop_from_seconds(0.1, 0.01) == 10
    assert hop_from_seconds(0.104, 0.01) == 10 and hop_from_seconds(0.106, 0.01) == 11
    assert hop_from_seconds(0.001, 0.01) == 1


def test_fit_frames_repeats_or_pads_with_silence_along_time():
    frames = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    np.testing.assert_array_equal(fit_frames(frames, 7, "repeat"), [[1, 2, 3, 1, 2, 3, 1], [4, 5, 6, 4, 5, 6, 4]])
    np.testing.assert_array_equal(fit_frames(frames, 5, "zeros", silence=-100.0),
                                  [[1, 2, 3, -100, -100], [4, 5, 6, -100, -100]])
    np.testing.assert_array_equal(fit_frames(frames, 2), frames[:, :2])


def test_cut_windows_are_frame_ranges_and_the_last_one_is_padded():
    feature = np.arange(2 * 11, dtype=np.float32).reshape(2, 11)  # (n_mels, T)
    windows = cut_windows(feature, window=4, hop=3, pad_mode="repeat")
    assert windows.shape == (4, 2, 4)  # starts 0, 3, 6 full; 9 holds frames 9-10, tiled
    np.testing.assert_array_equal(windows[1], feature[:, 3:7])
    np.testing.assert_array_equal(windows[3], feature[:, [9, 10, 9, 10]])


@pytest.mark.parametrize("window, hop", [(7, 3), (5, 5), (4, 6)])
def test_window_slicer_equals_cutting_the_whole_signal(window, hop):
    signal = np.arange(1, 30, dtype=np.float32)  # 29 samples (or frames)
    expected = cut_windows(signal[None], window, hop, pad_mode="zeros")[:, 0]
    rng = np.random.default_rng(0)
    for _ in range(5):  # blocks of random sizes (1..10) give the same windows
        slicer, windows, position = WindowSlicer(window, hop, pad_mode="zeros"), [], 0
        while position < len(signal):
            size = int(rng.integers(1, 11))
            windows += [w.copy() for w in slicer.feed(signal[position:position + size])]
            position += size
        windows += list(slicer.finish())
        np.testing.assert_array_equal(np.stack(windows), expected)


def test_window_slicer_cuts_blocks_of_frames_and_pads_a_short_recording_like_a_short_clip():
    feature = np.random.default_rng(1).normal(size=(3, 23)).astype(np.float32)
    slicer = WindowSlicer(8, 5, pad_mode="repeat")
    windows = [w.copy() for block in np.array_split(feature, 4, axis=1) for w in slicer.feed(block)]
    windows += list(slicer.finish())
    np.testing.assert_array_equal(np.stack(windows), cut_windows(feature, 8, 5, "repeat"))
    short = WindowSlicer(8, 4, pad_mode="repeat")
    assert list(short.feed(np.array([1, 2, 3], dtype=np.float32))) == []
    (window,) = list(short.finish())
    np.testing.assert_array_equal(window, [1, 2, 3, 1, 2, 3, 1, 2])


def test_pool_windows_is_the_mean_per_clip():
    probabilities = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [1.0, 0.0]])
    pooled = pool_windows(probabilities, torch.tensor([1, 2, 3]))
    np.testing.assert_allclose(pooled.numpy(), [[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]], atol=1e-6)
