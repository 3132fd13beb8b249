"""Leak-free splits: whole groups (recording, source file, speaker) into one split; the default
split without groups unchanged; no CSV column reaches outside ``--data_dir`` (``--fold_subdirs``'s
fold, the bench's clip sets)."""
from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import preprocessingBabyCrying
from audioclf.frontend import FeatureParams
from audioclf.listfile import SPLITS, read_list
from audioclf.metadata import Clip, MetadataError, deal_groups, split_by_fold, split_random, straddling_groups
from audioclf.preprocess import PreprocessOptions, run_preprocessing
from conftest import CSV_COLUMNS, write_wav

PARAMS = FeatureParams(n_fft=512, n_mels=32, n_frames=50)
GROUPED_COLUMNS = CSV_COLUMNS + ("group",)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_clips(counts: list[int], group_size: int | None = None) -> list[Clip]:
    """``counts[i]`` clips of class i; with ``group_size``, consecutive clips of a class share a group."""
    clips, line = [], 2
    for class_id, count in enumerate(counts):
        for index in range(count):
            group = f"c{class_id}-g{index // group_size}" if group_size else None
            clips.append(Clip(line, f"c{class_id}/{index}.wav", class_id, f"class{class_id}",
                              str(index % 10 + 1), group))
            line += 1
    return clips


def lines(splits: dict[str, list[Clip]]) -> dict[str, list[int]]:
    return {split: [clip.line for clip in members] for split, members in splits.items()}


def options(dataset, **changes) -> PreprocessOptions:
    values = dict(csv_file=dataset.csv_file, data_dir=dataset.data_dir, save_dir=dataset.save_dir,
                  params=PARAMS, num_workers=1)
    values.update(changes)
    return PreprocessOptions(**values)


def listed(save_dir: Path) -> dict[str, list[str]]:
    return {split: [entry.feature_file for entry in read_list(save_dir / "filenames" / f"{split}.txt")]
            for split in SPLITS}


def with_groups(dataset, group_of) -> None:
    """Add a ``group`` column: ``group_of(row_index, row)``."""
    for index, row in enumerate(dataset.rows):
        row["group"] = group_of(index, row)
    dataset.rewrite_csv(columns=GROUPED_COLUMNS)


# ---------------------------------------------------------------------------------------
# The default split is pinned: adding groups changed nothing for CSVs without them
# ---------------------------------------------------------------------------------------

def test_default_split_without_groups_is_unchanged():
    clips = make_clips([13, 7, 25])
    random = lines(split_random(clips, 3, seed=42))
    assert (random["validation"], random["evaluation"]) == ([4, 27, 35], [6, 39, 44])
    assert len(random["train"]) == 45 - 6
    held_out = lines(split_by_fold(clips, [], ["3"], 3, seed=42))
    assert (held_out["validation"], held_out["evaluation"]) == ([3, 25, 35], [4, 14, 17, 24, 34, 44])


def test_group_column_none_gives_the_default_split_and_config(dataset_factory):
    plain = dataset_factory(clips_per_class=12, root="plain")
    run_preprocessing(options(plain))
    grouped = dataset_factory(clips_per_class=12, root="grouped")
    with_groups(grouped, lambda index, row: f"rec{index // 4}")

    run_preprocessing(options(grouped, group_column="none"))

    assert listed(grouped.save_dir) == listed(plain.save_dir)
    split = json.loads((grouped.save_dir / "filenames" / "feature_config.json").read_text())["split"]
    assert split == {"method": "random_stratified", "seed": 42, "n_folds": 10}


# ---------------------------------------------------------------------------------------
# Grouped split
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 42])
def test_grouped_split_keeps_every_group_in_one_split_and_stays_stratified(seed):
    clips = make_clips([60, 30, 90], group_size=3)  # 20, 10 and 30 groups of 3

    splits = split_random(clips, 3, seed, by_group=True)

    assert straddling_groups(splits) == {}
    assert sorted(clip.line for members in splits.values() for clip in members) == [c.line for c in clips]
    for class_id, total in enumerate([60, 30, 90]):
        counts = {split: sum(clip.class_id == class_id for clip in members) for split, members in splits.items()}
        for split, share in zip(SPLITS, (0.8, 0.1, 0.1)):
            assert abs(counts[split] - share * total) <= 3, (class_id, counts)  # one group of 3 at most


def test_grouped_split_with_uneven_groups_is_deterministic_and_whole():
    clips = []
    line = 2
    sizes = [9, 7, 5, 5, 4, 3, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    for class_id in range(2):
        for group, size in enumerate(sizes):
            for _ in range(size):
                clips.append(Clip(line, f"{line}.wav", class_id, f"class{class_id}", None, f"{class_id}:{group}"))
                line += 1

    folds = deal_groups(clips, 2, seed=7)

    assert lines(dict(enumerate(folds))) == lines(dict(enumerate(deal_groups(clips, 2, seed=7))))
    fold_of = {clip.group: fold for fold, members in enumerate(folds) for clip in members}
    assert all(fold_of[clip.group] == fold for fold, members in enumerate(folds) for clip in members)
    per_class = [Counter(clip.class_id for clip in members) for members in folds]
    for class_id in range(2):  # 50 clips per class: 5 per fold, except around the groups of 9 and 7
        counts = sorted(fold[class_id] for fold in per_class)
        assert counts[0] >= 4 and counts[-1] <= 9 and counts.count(5) >= 7, per_class


def test_mixed_class_groups_are_never_split():
    clips = [Clip(2 + i, f"{i}.wav", i % 2, f"class{i % 2}", None, f"g{i // 4}") for i in range(80)]
    splits = split_random(clips, 2, seed=3, by_group=True)
    assert straddling_groups(splits) == {}
    assert {len(members) % 4 for members in splits.values()} == {0}


def test_eval_fold_alone_validates_on_whole_groups_of_the_other_folds():
    clips = make_clips([40, 40], group_size=4)
    clips = [Clip(c.line, c.slice_file_name, c.class_id, c.class_name, str(c.line % 2 + 1), c.group)
             for c in clips]  # folds 1 and 2 alternate: each group has 2 clips in either fold

    splits = split_by_fold(clips, [], ["1"], 2, seed=0, by_group=True)

    assert {clip.fold for clip in splits["evaluation"]} == {"1"}
    assert not {c.group for c in splits["validation"]} & {c.group for c in splits["train"]}
    assert len(splits["validation"]) >= 2


# ---------------------------------------------------------------------------------------
# Preprocessing with a group column
# ---------------------------------------------------------------------------------------

def test_group_column_is_used_automatically_and_reported(dataset_factory, caplog):
    dataset = dataset_factory(clips_per_class=20)
    with_groups(dataset, lambda index, row: f"rec{index // 5}")  # 4 recordings of 5 clips per class
    caplog.set_level(logging.INFO)

    outcome = run_preprocessing(options(dataset))

    group_of = {str(Path(row["slice_file_name"]).with_suffix(".npy")): row["group"] for row in dataset.rows}
    splits_of = defaultdict(set)
    for split, names in listed(dataset.save_dir).items():
        for name in names:
            splits_of[group_of[name]].add(split)
    assert len(splits_of) == 12 and all(len(splits) == 1 for splits in splits_of.values())
    split = json.loads((dataset.save_dir / "filenames" / "feature_config.json").read_text())["split"]
    assert split == {"method": "random_stratified", "seed": 42, "n_folds": 10, "group_column": "group",
                     "n_groups": 12, "groups_in_several_splits": 0}
    assert "grouped split: whole groups dealt into the folds, stratified by class; 12 groups of the CSV's " \
        "'group' column (used automatically; --group_column none turns it off)" in caplog.text
    # 4 groups per class cannot fill 10 folds: the warning speaks of groups, not clips
    assert any("10 or more groups" in message for message in outcome["warnings"])


def test_group_column_flag_names_any_column_and_an_unknown_one_is_an_error(dataset_factory, caplog):
    dataset = dataset_factory(clips_per_class=10)  # CSV columns include `fold`
    assert preprocessingBabyCrying.main(
        ["--csv_file", str(dataset.csv_file), "--data_dir", str(dataset.data_dir), "--save_dir",
         str(dataset.save_dir), "--n_fft", "512", "--n_mels", "32", "--n_frames", "50", "--num_workers", "1",
         "--group_column", "fold"]) == 0
    split = json.loads((dataset.save_dir / "filenames" / "feature_config.json").read_text())["split"]
    assert (split["group_column"], split["n_groups"], split["groups_in_several_splits"]) == ("fold", 10, 0)

    with pytest.raises(MetadataError, match=r"--group_column 'fsID' is not a column of the CSV \(found "
                                            r"slice_file_name, fold, start, end, classID, class\)"):
        run_preprocessing(options(dataset, group_column="fsID"))


def test_a_fold_split_that_separates_a_group_is_reported(dataset_factory, caplog):
    dataset = dataset_factory(clips_per_class=10)
    with_groups(dataset, lambda index, row: "shared" if index in (0, 8) else f"own{index}")  # folds 1 and 9

    run_preprocessing(options(dataset, validation_folds=["9"], evaluation_folds=["10"]))

    split = json.loads((dataset.save_dir / "filenames" / "feature_config.json").read_text())["split"]
    assert split["groups_in_several_splits"] == 1
    assert "1 group(s) of column 'group' have clips in more than one split" in caplog.text


# ---------------------------------------------------------------------------------------
# CSV columns that reach a path: --fold_subdirs's fold must be a whole number
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fold", ["1/../..", "../..", "1/..", "-1", "", "1x"])
def test_fold_subdirs_refuses_a_fold_that_is_not_a_whole_number(dataset_factory, fold):
    dataset = dataset_factory(clips_per_class=10, subfolder=lambda class_id, index: f"fold{index % 10 + 1}")
    for row in dataset.rows:
        row["slice_file_name"] = row["slice_file_name"].split("/", 1)[1]
    outside = write_wav(dataset.root / "x.wav", duration=0.6)  # data_dir/fold1/../../x.wav is this file
    write_wav(dataset.data_dir / "fold1" / "x.wav", duration=0.6)  # and "1/.." would find this one
    dataset.rows.append({"slice_file_name": "x.wav", "fold": fold, "classID": "0", "class": "baby cry"})
    dataset.rewrite_csv()  # the escaping row is CSV line 32

    outcome = run_preprocessing(options(dataset, fold_subdirs=True))

    assert {result.line for result in outcome["results"]} == set(range(2, 32))
    skipped = (dataset.save_dir / "filenames" / "skipped.txt").read_text().splitlines()
    assert skipped[1:] == [f"32\tx.wav\trefused: fold {fold!r} is not a whole number; with --fold_subdirs "
                           "clips are read from --data_dir/fold<N>/"]
    assert "x.npy" not in [name for names in listed(dataset.save_dir).values() for name in names]
    assert not (dataset.save_dir / "x.npy").exists() and outside.is_file()


def test_bench_clip_sets_refuse_paths_outside_data_dir(tmp_path):
    from bench.common import clip_set_from_csv

    write_wav(tmp_path / "outside.wav", duration=0.1)
    (tmp_path / "data").mkdir()
    csv_file = tmp_path / "data" / "meta.csv"
    csv_file.write_text("slice_file_name,classID,class\n../outside.wav,0,a\n")
    with pytest.raises(SystemExit, match=r"meta.csv line 2: refused: '\.\.' in path escapes --data_dir"):
        clip_set_from_csv(csv_file, tmp_path / "data", None, tmp_path)
