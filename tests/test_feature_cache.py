"""The feature cache (one memory-mapped file per split list) and the batch loader over it."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from audioclf.listfile import ListEntry, render_list
from dataloaders.dataloader import FeatureDataError, SpectrogramDataset
from dataloaders.feature_cache import (BufferPool, CachedBatchLoader, FeatureCache, cache_files, cache_name,
                                     gather_batch, open_or_build)
from tools.synthetic_features import make_feature_dataset


@pytest.fixture
def train_set(tmp_path) -> SpectrogramDataset:
    """12 clips of (8, 6) features over three classes."""
    features = make_feature_dataset(tmp_path, per_class=(4, 1, 1), n_mels=8, n_frames=6)
    return SpectrogramDataset(features / "filenames/train.txt", features)


def cache_folder_names(dataset: SpectrogramDataset) -> list[str]:
    return sorted(path.name for path in (dataset.list_file.parent / "cache").iterdir())


def test_built_next_to_the_list_and_equal_to_the_npy_files(train_set):
    cache = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    assert cache.built and len(cache) == 12 and cache.fixed_n_frames == 6 and cache.dtype == torch.float32
    names = cache_folder_names(train_set)
    key = cache.files.frames.name.split(".")[2]
    assert names == [f"{cache_name(train_set.list_file, train_set.datapath)}.float32.{key}.{suffix}"
                     for suffix in ("frames.npy", "index.json", "lock")]
    for i in range(len(train_set)):
        np.testing.assert_array_equal(cache.clip(i), train_set.load(i))
    batch = cache.gather([5, 0, 11])  # (3, 8, 6)
    np.testing.assert_array_equal(batch.numpy(), np.stack([train_set.load(i) for i in (5, 0, 11)]))
    again = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    assert not again.built and cache_folder_names(train_set) == names  # found, not rebuilt


def test_float16_cache_holds_the_rounded_features(train_set):
    cache = open_or_build(train_set.list_file, train_set.datapath, train_set.paths, dtype="float16")
    assert cache.dtype == torch.float16
    np.testing.assert_array_equal(cache.clip(3), train_set.load(3).astype(np.float16))
    with pytest.raises(ValueError, match="float32"):
        open_or_build(train_set.list_file, train_set.datapath, train_set.paths, dtype="int8")


def test_rebuilt_when_a_feature_file_or_the_list_changes(train_set):
    first = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    changed = train_set.load(2) + 1.0
    np.save(train_set.paths[2], changed)
    stat = os.stat(train_set.paths[2])  # same size; a later edit has a later mtime (made explicit here)
    os.utime(train_set.paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    assert second.built and second.files.frames != first.files.frames
    np.testing.assert_array_equal(second.clip(2), changed)
    assert not first.files.frames.exists() and not first.files.index.exists()  # the stale cache is gone

    entries = train_set.entries[:5]
    train_set.list_file.write_text(render_list(entries))
    third = open_or_build(train_set.list_file, train_set.datapath, train_set.paths[:5])
    assert third.built and len(third) == 5
    assert len([name for name in cache_folder_names(train_set) if name.endswith(".frames.npy")]) == 1


def test_lists_that_share_a_stem_keep_caches_of_their_own(train_set):
    """train.txt and train.lst in one folder (one datapath): each cache holds its own list's clips, and
    building one leaves the other in place (it used to remove it as a stale cache of 'train')."""
    other_list = train_set.list_file.with_suffix(".lst")
    other_list.write_text(render_list(train_set.entries[6:] + train_set.entries[:2]))
    other_set = SpectrogramDataset(other_list, train_set.datapath)
    assert cache_name(other_list, other_set.datapath).startswith("train-")
    assert cache_name(other_list, other_set.datapath) != cache_name(train_set.list_file, train_set.datapath)
    first = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    second = open_or_build(other_list, other_set.datapath, other_set.paths)
    assert first.built and second.built and first.files.frames != second.files.frames
    assert first.files.frames.is_file() and first.files.index.is_file()
    again = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    assert not again.built and again.files == first.files  # found, not rebuilt
    for dataset, cache in ((train_set, again), (other_set, open_or_build(other_list, other_set.datapath, other_set.paths))):
        assert len(cache) == len(dataset)
        for i in range(len(dataset)):
            np.testing.assert_array_equal(cache.clip(i), dataset.load(i))


def test_lists_of_one_stem_in_two_folders_get_the_right_data(tmp_path):
    """a/train.txt and b/train.txt over one datapath: different clips, each cache its own."""
    features = make_feature_dataset(tmp_path / "features", per_class=(4, 1, 1), n_mels=8, n_frames=6)
    entries = SpectrogramDataset(features / "filenames/train.txt", features).entries
    datasets = []
    for folder, chosen in (("a", entries[:4]), ("b", entries[4:])):
        list_file = tmp_path / folder / "train.txt"
        list_file.parent.mkdir()
        list_file.write_text(render_list(chosen))
        (list_file.parent / "feature_config.json").write_text((features / "filenames/feature_config.json").read_text())
        datasets.append(SpectrogramDataset(list_file, features))
    assert [open_or_build(dataset.list_file, dataset.datapath, dataset.paths).built for dataset in datasets] == [True, True]
    caches = [open_or_build(dataset.list_file, dataset.datapath, dataset.paths) for dataset in datasets]
    assert [cache.built for cache in caches] == [False, False]  # both still there
    for dataset, cache in zip(datasets, caches):
        np.testing.assert_array_equal(cache.gather(range(len(dataset))).numpy(),
                                      np.stack([dataset.load(i) for i in range(len(dataset))]))


def test_caches_under_the_names_of_earlier_versions_are_removed_when_the_new_one_is_built(train_set):
    """Caches written before names carried the list's path hash (the stem alone), or before they carried
    the datapath (the stem and the list's path hash), do not linger as orphans."""
    folder = train_set.list_file.parent / "cache"
    folder.mkdir()
    list_hash = hashlib.sha256(str(train_set.list_file.resolve()).encode()).hexdigest()[:8]
    for name in ("train", f"train-{list_hash}"):
        for suffix in ("frames.npy", "index.json", "lock"):
            (folder / f"{name}.float32.0123456789abcdef0123.{suffix}").write_bytes(b"old")
    (folder / "train-0badcafe.float32.0123456789abcdef0123.frames.npy").write_bytes(b"another list's")
    cache = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    assert cache_folder_names(train_set) == sorted(["train-0badcafe.float32.0123456789abcdef0123.frames.npy"] + [
        path.name for path in (cache.files.frames, cache.files.index, cache.files.lock)])


def test_one_list_read_from_two_datapaths_keeps_a_cache_per_datapath(train_set, tmp_path):
    """The same train.txt over two feature folders (e.g. features made with other flags): each gets its own
    cache holding its own folder's features, and switching back and forth rebuilds neither (building one
    used to remove the other as a stale cache of the list)."""
    other = tmp_path / "other_features"
    for path in train_set.paths:
        target = other / path.relative_to(train_set.datapath)
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.load(path) + 100.0)
    other_set = SpectrogramDataset(train_set.list_file, other)
    assert cache_name(train_set.list_file, other) != cache_name(train_set.list_file, train_set.datapath)
    first = [open_or_build(dataset.list_file, dataset.datapath, dataset.paths) for dataset in (train_set, other_set)]
    assert [cache.built for cache in first] == [True, True]
    again = [open_or_build(dataset.list_file, dataset.datapath, dataset.paths) for dataset in (train_set, other_set)]
    assert [cache.built for cache in again] == [False, False]
    assert [cache.files for cache in again] == [cache.files for cache in first]
    for dataset, cache in zip((train_set, other_set), again):
        np.testing.assert_array_equal(cache.gather(range(len(dataset))).numpy(),
                                      np.stack([dataset.load(i) for i in range(len(dataset))]))
    np.testing.assert_array_equal(again[1].clip(0), train_set.load(0) + 100.0)  # the other folder's, not the first's


def test_clips_of_different_lengths_are_views_and_cannot_be_gathered_whole(tmp_path):
    lengths = [7, 3, 12, 5]
    entries, arrays = [], []
    for i, n_frames in enumerate(lengths):
        array = np.random.default_rng(i).normal(size=(4, n_frames)).astype(np.float32)
        np.save(tmp_path / f"clip{i}.npy", array)
        entries.append(ListEntry(f"clip{i}.npy", i % 2, ("a", "b")[i % 2]))
        arrays.append(array)
    list_file = tmp_path / "lists" / "train.txt"
    list_file.parent.mkdir()
    list_file.write_text(render_list(entries))
    cache = open_or_build(list_file, tmp_path, [tmp_path / entry.feature_file for entry in entries])
    assert cache.fixed_n_frames is None and cache.n_frames.tolist() == lengths
    for i, array in enumerate(arrays):
        assert cache.clip(i).shape == (4, lengths[i])
        np.testing.assert_array_equal(cache.clip(i), array)
    crop = cache.clip(2)[:, 4:9]  # what a random-crop collate does on top
    np.testing.assert_array_equal(crop, arrays[2][:, 4:9])
    with pytest.raises(FeatureDataError, match="different lengths"):
        cache.gather([0, 1])


def test_a_bad_feature_file_is_named_and_leaves_no_cache(train_set):
    train_set.paths[4].write_bytes(b"not a numpy file")
    with pytest.raises(FeatureDataError, match=str(train_set.paths[4])):
        open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    assert [name for name in cache_folder_names(train_set) if not name.endswith(".lock")] == []


@pytest.mark.parametrize("damage", ["cut", "not_npy"])
def test_a_bad_first_feature_file_is_named_when_the_dataset_opens(tmp_path, damage):
    """The first list entry gives the dataset its shape; reading its header is where a damaged file
    shows first, so that error names it too."""
    features = make_feature_dataset(tmp_path, per_class=(2, 1, 1), n_mels=8, n_frames=6)
    first = SpectrogramDataset(features / "filenames/train.txt", features).paths[0]
    first.write_bytes(first.read_bytes()[:40] if damage == "cut" else b"not a numpy file")
    with pytest.raises(FeatureDataError, match=rf"^{first}: cannot read feature file \(.*\); re-run preprocessing$"):
        SpectrogramDataset(features / "filenames/train.txt", features)


def _build_in_child(list_file: str, datapath: str, paths: list[str], start: multiprocessing.Barrier,
                    results) -> None:
    start.wait()  # all builders start together
    cache = open_or_build(list_file, datapath, [Path(p) for p in paths])
    results.put((cache.built, float(cache.frames.astype(np.float64).sum())))


def test_concurrent_builders_build_once_and_all_read_the_same_cache(train_set):
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(3), context.Queue()
    children = [context.Process(target=_build_in_child,
                                args=(str(train_set.list_file), str(train_set.datapath), [str(p) for p in train_set.paths],
                                      start, results))
                for _ in range(3)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert sorted(built for built, _ in outcomes) == [False, False, True]
    expected = sum(train_set.load(i).astype(np.float64).sum() for i in range(len(train_set)))
    assert all(total == pytest.approx(expected) for _, total in outcomes)
    assert not [name for name in cache_folder_names(train_set) if name.startswith(".")]  # no temp files left


def test_index_that_does_not_match_its_frames_is_an_error(train_set):
    cache = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    index = json.loads(cache.files.index.read_text())
    index["n_frames"][0] += 1
    cache.files.index.write_text(json.dumps(index))
    with pytest.raises(FeatureDataError, match="delete both"):
        FeatureCache(cache_files(train_set.list_file, train_set.datapath, train_set.paths))


# ---------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefetch", [0, 2])
def test_an_epoch_gives_every_clip_once_with_its_label(train_set, prefetch):
    cache = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    loader = CachedBatchLoader(cache, train_set.labels, BatchSampler(RandomSampler(train_set), 5, False),
                               prefetch=prefetch)
    assert len(loader) == 3
    seen = []
    for inputs, labels in loader:
        assert inputs.shape[1:] == (1, 8, 6) and inputs.dtype == torch.float32
        for feature, label in zip(inputs, labels):
            index = next(i for i in range(len(train_set)) if torch.equal(train_set[i][0], feature))
            assert int(label) == int(train_set.labels[index])
            seen.append(index)
    assert [len(batch) for batch, _ in loader] == [5, 5, 2]
    assert sorted(seen) == list(range(12))


def test_prefetch_does_not_change_the_batches_for_a_seed(train_set):
    cache = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)

    def epoch(prefetch: int) -> list[torch.Tensor]:
        torch.manual_seed(3)
        loader = CachedBatchLoader(cache, train_set.labels, BatchSampler(RandomSampler(train_set), 4, False),
                                   prefetch=prefetch)
        return [inputs for inputs, _ in loader]

    assert all(torch.equal(a, b) for a, b in zip(epoch(0), epoch(3), strict=True))


def test_errors_in_the_prefetch_thread_reach_the_training_loop_and_leaving_early_stops_it(train_set):
    cache = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)

    def failing(cache, indices, pin_memory):
        if 0 in indices:
            raise FeatureDataError("clip 0 is broken")
        return gather_batch(cache, indices, pin_memory)

    loader = CachedBatchLoader(cache, train_set.labels, BatchSampler(SequentialSampler(train_set), 4, False),
                               prefetch=2, collate=failing)
    with pytest.raises(FeatureDataError, match="clip 0 is broken"):
        list(loader)
    threads_before = threading.active_count()
    loader = CachedBatchLoader(cache, train_set.labels, BatchSampler(SequentialSampler(train_set), 1, False),
                               prefetch=2)
    iterator = iter(loader)
    next(iterator)
    iterator.close()  # a loop that breaks early
    assert threading.active_count() == threads_before


def test_batch_buffers_are_reused_only_once_no_tensor_holds_them(train_set):
    cache = open_or_build(train_set.list_file, train_set.datapath, train_set.paths)
    pool = BufferPool(size=2)
    first = gather_batch(cache, [0, 1], pool=pool)
    view = first[:, :, :2]  # a view keeps the buffer in use after the batch itself is dropped
    del first
    second = gather_batch(cache, [2, 3], pool=pool)
    assert second.data_ptr() != view.data_ptr()
    np.testing.assert_array_equal(view.numpy()[:, 0], np.stack([train_set.load(i)[:2] for i in (0, 1)]))
    address = second.data_ptr()
    del second
    third = gather_batch(cache, [4, 5], pool=pool)
    assert third.data_ptr() == address  # the dropped batch's buffer, warm
    np.testing.assert_array_equal(third.numpy()[:, 0], np.stack([train_set.load(i) for i in (4, 5)]))
    kept = list(CachedBatchLoader(cache, train_set.labels, BatchSampler(SequentialSampler(train_set), 3, False)))
    assert len({inputs.data_ptr() for inputs, _ in kept}) == 4  # a caller keeping every batch gets new ones
    for number, (inputs, _) in enumerate(kept):
        np.testing.assert_array_equal(inputs.numpy()[:, 0], np.stack([train_set.load(i)
                                                                       for i in range(3 * number, 3 * number + 3)]))
