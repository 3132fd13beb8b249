"""dataloaders/crops.py and whole-clip datasets: random training crops, evaluation windows."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader, SequentialSampler

from audioclf.frontend import FeatureParams
from audioclf.listfile import ListEntry, render_list
from dataloaders.crops import ClipWindows, EpochSampler, RandomCrops, collate_windows, crop_start
from dataloaders.dataloader import FeatureDataError, SpectrogramDataset, feature_statistics

LENGTHS = (12, 40, 97, 250)  # frames per clip; n_frames (the shortest a clip may be) is 12


def make_whole_clips(root: Path, lengths=LENGTHS, n_mels: int = 4) -> Path:
    """Whole-clip features: clip ``i`` holds ``lengths[i]`` frames whose value is the frame index."""
    lists = root / "filenames"
    lists.mkdir(parents=True)
    entries = []
    for index, length in enumerate(lengths):
        feature = np.tile(np.arange(length, dtype=np.float32), (n_mels, 1))  # (n_mels, T)
        np.save(root / f"clip{index}.npy", feature)
        entries.append(ListEntry(f"clip{index}.npy", index % 2, ("a", "b")[index % 2]))
    (lists / "train.txt").write_text(render_list(entries))
    params = FeatureParams(n_mels=n_mels, n_frames=12, n_fft=512, max_seconds=2.5)
    (lists / "feature_config.json").write_text(json.dumps(
        {"feature_params": params.to_dict(), "class_names": ["a", "b"], "n_classes": 2}))
    return lists / "train.txt"


@pytest.fixture
def clips(tmp_path) -> SpectrogramDataset:
    return SpectrogramDataset(make_whole_clips(tmp_path), tmp_path)


def test_whole_clip_dataset_has_variable_lengths(clips, tmp_path):
    assert clips.variable_length and clips.feature_shape == (4, None) and clips.n_frames == 12
    assert [clips.load(i).shape[1] for i in range(len(clips))] == list(LENGTHS)
    mean, std = feature_statistics(clips, per_band=False)
    frames = np.concatenate([np.arange(length) for length in LENGTHS]).astype(np.float64)
    assert float(mean) == pytest.approx(frames.mean(), rel=1e-5)  # weighted by each clip's frames
    assert float(std) == pytest.approx(frames.std(), rel=1e-5)
    np.save(tmp_path / "clip1.npy", np.zeros((5, 40), dtype=np.float32))
    with pytest.raises(FeatureDataError, match=r"clip1.npy: shape \(5, 40\) is not \(4, T\)"):
        clips.load(1)


def crops_of(dataset: RandomCrops, epoch: int, sampler=None) -> list[np.ndarray]:
    keys = EpochSampler(sampler or SequentialSampler(range(len(dataset))))
    keys.set_epoch(epoch)
    return [dataset[key][0].numpy() for key in keys]


def test_crops_have_the_crop_shape_and_come_from_the_clip(clips):
    crops = crops_of(RandomCrops(clips, crop_frames=20, seed=0), epoch=1)
    assert [crop.shape for crop in crops] == [(1, 4, 20)] * 4
    for crop, length in zip(crops[1:], LENGTHS[1:]):  # frame values are frame indices: a contiguous range
        start = int(crop[0, 0, 0])
        np.testing.assert_array_equal(crop[0, 0], np.arange(start, start + 20))
        assert 0 <= start <= length - 20
    np.testing.assert_array_equal(crops[0][0, 0], np.tile(np.arange(12), 2)[:20])  # shorter clip: repeated


def test_crops_differ_per_epoch_and_repeat_for_the_same_seed(clips):
    dataset = RandomCrops(clips, crop_frames=20, seed=5)
    starts = {epoch: [int(c[0, 0, 0]) for c in crops_of(dataset, epoch)] for epoch in (1, 2, 3)}
    assert starts[1] != starts[2] != starts[3]
    assert starts[1] == [int(c[0, 0, 0]) for c in crops_of(RandomCrops(clips, 20, seed=5), 1)]
    assert starts[1] != [int(c[0, 0, 0]) for c in crops_of(RandomCrops(clips, 20, seed=6), 1)]
    # uniform over every start: the longest clip's 231 possible starts are all reachable
    draws = [crop_start(250, 20, seed=0, epoch=e, position=0, index=3) for e in range(2000)]
    assert min(draws) == 0 and max(draws) == 230 and abs(np.mean(draws) - 115) < 6


def test_crops_through_a_loader_with_a_persistent_worker_equal_the_main_process(clips):
    dataset = RandomCrops(clips, crop_frames=20, seed=0)
    sampler = EpochSampler(SequentialSampler(range(len(clips))))
    loader = DataLoader(dataset, sampler=sampler, batch_size=4, num_workers=1, persistent_workers=True)
    for epoch in (1, 2):  # the epoch reaches the persistent worker through the sampler's keys
        sampler.set_epoch(epoch)
        (batch, _), = list(loader)
        np.testing.assert_array_equal(batch.numpy(), np.stack(crops_of(dataset, epoch)))


def test_clip_windows_cover_each_clip_and_collate_with_counts(clips):
    windows = ClipWindows(clips, window=20, hop=10)
    batch, counts, labels = collate_windows([windows[i] for i in range(len(clips))])
    # 12 frames: 1 padded window; 40: starts 0, 10, 20; 97: 0..70 full + 80 padded; 250: 0..230
    assert counts.tolist() == [1, 3, 9, 24] and labels.tolist() == [0, 1, 0, 1]
    assert batch.shape == (37, 1, 4, 20)
    np.testing.assert_array_equal(batch[1 + 3 + 8, 0, 0].numpy(), np.tile(np.arange(80, 97), 2)[:20])


@pytest.mark.parametrize("name", ["../outside.npy", "sub/../../outside.npy", "/tmp/outside.npy", "C:\\outside.npy"])
def test_a_list_entry_outside_the_data_folder_is_refused_naming_the_list_and_line(tmp_path, name):
    list_file = make_whole_clips(tmp_path / "data")
    np.save(tmp_path / "outside.npy", np.zeros((4, 12), dtype=np.float32))
    lines = list_file.read_text().splitlines()
    lines[1] = render_list([ListEntry(name, 1, "b")]).strip()
    list_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(FeatureDataError, match=rf"train\.txt:2: feature file .* is not inside the data folder"):
        SpectrogramDataset(list_file, tmp_path / "data")


@pytest.mark.parametrize("check", ["outside", "label"])
def test_list_errors_name_the_real_line_when_the_list_has_blank_lines(tmp_path, check):
    """Blank lines are skipped when reading, but an error still names the line a user sees."""
    list_file = make_whole_clips(tmp_path / "data")
    lines = list_file.read_text().splitlines()
    bad = ListEntry("../outside.npy", 1, "b") if check == "outside" else ListEntry("clip1.npy", 1, "cat")
    lines[1] = render_list([bad]).strip()
    list_file.write_text("\n\n" + lines[0] + "\n   \n\n" + "\n".join(lines[1:]) + "\n")  # bad entry on line 6
    expected = (r"feature file '\.\./outside\.npy' is not inside the data folder" if check == "outside"
                else r"label 1 \('cat'\) is not one of the 2 training classes")
    with pytest.raises(FeatureDataError, match=re.escape(f"{list_file}:6: ") + expected):
        SpectrogramDataset(list_file, tmp_path / "data")
