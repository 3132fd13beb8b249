"""Tests for audioclf/preprocess.py, audioclf/metadata.py and preprocessingBabyCrying.py.

One test per row of the preprocessing acceptance table (bad CSVs, bad files, bad parameters,
small classes, awkward names, interrupted runs), plus splits, resuming, sharding and the CLI.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import preprocessingBabyCrying
from audioclf.frontend import FeatureExtractor, FeatureParams
from audioclf.listfile import SPLITS, read_list
from audioclf.metadata import Clip, MetadataError, split_by_fold, split_random
from audioclf.preprocess import FEATURE_FORMAT, PreprocessError, PreprocessOptions, run_preprocessing
from conftest import CSV_COLUMNS, Dataset, write_wav

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS = FeatureParams(n_fft=512, n_mels=32, n_frames=50)
PARAM_FLAGS = ["--n_fft", "512", "--n_mels", "32", "--n_frames", "50"]

# Tiny tensors: torch's thread pool only adds overhead (and stalls on a busy 2-core box).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def options(dataset: Dataset, **changes) -> PreprocessOptions:
    """In-process, single-worker options for ``dataset`` with the small test parameters."""
    values = dict(csv_file=dataset.csv_file, data_dir=dataset.data_dir, save_dir=dataset.save_dir,
                  params=PARAMS, num_workers=1)
    values.update(changes)
    return PreprocessOptions(**values)


def cli(dataset: Dataset, *flags: str, workers: int = 1) -> list[str]:
    """Command-line arguments for ``dataset`` with the small test parameters."""
    return ["--csv_file", str(dataset.csv_file), "--data_dir", str(dataset.data_dir),
            "--save_dir", str(dataset.save_dir), *PARAM_FLAGS, "--num_workers", str(workers), *flags]


def statuses(outcome: dict) -> dict[int, str]:
    """CSV line -> written / reused / skipped."""
    return {result.line: result.status for result in outcome["results"]}


def skipped_rows(save_dir: Path) -> dict[str, tuple[int, str]]:
    """``filenames/skipped.txt`` as slice_file_name -> (CSV line, reason)."""
    lines = (save_dir / "filenames" / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "line\tslice_file_name\treason"
    rows = [line.split("\t") for line in lines[1:]]
    return {name: (int(line), reason) for line, name, reason in rows}


def listed_files(save_dir: Path) -> dict[str, list[str]]:
    """Split -> feature files named in ``filenames/<split>.txt``."""
    return {split: [entry.feature_file for entry in read_list(save_dir / "filenames" / f"{split}.txt")]
            for split in SPLITS}


def feature_files(save_dir: Path) -> list[Path]:
    """Every ``.npy`` under ``save_dir``."""
    return sorted(save_dir.rglob("*.npy"))


def leftover_temp_files(save_dir: Path) -> list[Path]:
    """Temp files of interrupted atomic writes."""
    return sorted(save_dir.rglob("*.tmp"))


def assert_nothing_written(save_dir: Path) -> None:
    assert not save_dir.exists() or (not feature_files(save_dir) and not (save_dir / "filenames").exists())


def damage(path: Path, kind: str) -> None:
    """Make ``path`` unusable: missing, empty, truncated (data or header), or not audio."""
    if kind == "missing":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:3000])  # header still declares the whole clip
    elif kind == "cut_in_header":
        path.write_bytes(path.read_bytes()[:30])
    elif kind == "text":
        path.write_text("this is not audio\n" * 20)
    else:
        raise ValueError(kind)


def make_clips(counts: list[int]) -> list[Clip]:
    """Clips without audio, for the split functions: ``counts[i]`` clips of class i."""
    clips, line = [], 2
    for class_id, count in enumerate(counts):
        for index in range(count):
            clips.append(Clip(line, f"c{class_id}/{index}.wav", class_id, f"class{class_id}", str(index % 10 + 1)))
            line += 1
    return clips


# ---------------------------------------------------------------------------------------
# Acceptance table: the metadata CSV
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", [("classID",), ("slice_file_name", "class")])
def test_missing_required_column_is_named_and_nothing_is_written(dataset_factory, caplog, missing):
    dataset = dataset_factory(clips_per_class=2)
    dataset.rewrite_csv(columns=tuple(column for column in CSV_COLUMNS if column not in missing))

    with pytest.raises(MetadataError, match=f"missing required column\\(s\\) {', '.join(missing)}"):
        run_preprocessing(options(dataset))
    assert preprocessingBabyCrying.main(cli(dataset)) == 1

    assert str(dataset.csv_file) in caplog.text and ", ".join(missing) in caplog.text
    assert_nothing_written(dataset.save_dir)


def test_a_semicolon_separated_csv_is_named_as_such(dataset_factory):
    dataset = dataset_factory(clips_per_class=2)
    text = dataset.csv_file.read_text()
    dataset.csv_file.write_text(text.replace(",", ";"))
    with pytest.raises(MetadataError, match=r"missing required column.* It looks ';'-separated: the metadata CSV "
                                            r"must be comma-separated\."):
        run_preprocessing(options(dataset))
    assert_nothing_written(dataset.save_dir)


def test_class_ids_not_contiguous_from_zero_name_the_rows(dataset_factory):
    dataset = dataset_factory(clips_per_class=2)  # lines 2-3 class 0, 4-5 class 1, 6-7 class 2
    for row in dataset.rows[4:]:
        row["classID"] = "3"
    dataset.rewrite_csv()

    with pytest.raises(MetadataError) as error:
        run_preprocessing(options(dataset))

    message = str(error.value)
    assert "contiguous from 0" in message and "missing [2]" in message
    assert "CSV lines 6, 7" in message
    assert_nothing_written(dataset.save_dir)


def test_one_class_id_with_two_names_names_the_rows(dataset_factory):
    dataset = dataset_factory(clips_per_class=2)
    dataset.rows[1]["class"] = "crying baby"  # line 3: classID 0 was 'baby cry' on line 2
    dataset.rewrite_csv()

    with pytest.raises(MetadataError, match=r"classID 0 has several class names \['baby cry', 'crying baby'\] "
                                            r"\(CSV lines 2, 3\)"):
        run_preprocessing(options(dataset))
    assert_nothing_written(dataset.save_dir)


def test_duplicate_slice_file_name_names_the_rows(dataset_factory):
    dataset = dataset_factory(clips_per_class=2)
    dataset.rows[3]["slice_file_name"] = dataset.rows[0]["slice_file_name"]  # line 5 repeats line 2
    dataset.rows[3]["classID"], dataset.rows[3]["class"] = "0", "baby cry"
    dataset.rewrite_csv()

    with pytest.raises(MetadataError) as error:
        run_preprocessing(options(dataset))

    assert f"duplicate slice_file_name ['{dataset.rows[0]['slice_file_name']}']" in str(error.value)
    assert "CSV lines 2, 5" in str(error.value)
    assert_nothing_written(dataset.save_dir)


def test_absolute_paths_and_dot_dot_are_refused_and_the_rest_processed(dataset_factory):
    dataset = dataset_factory(clips_per_class=10)
    outside = write_wav(dataset.root / "outside.wav", duration=0.6)  # real audio, outside data_dir
    escaping = [str(outside), "../outside.wav", "baby_cry/../../outside.wav"]
    dataset.rows += [{"slice_file_name": name, "classID": "0", "class": "baby cry", "fold": "1"}
                     for name in escaping]  # CSV lines 32, 33, 34
    dataset.rewrite_csv()

    outcome = run_preprocessing(options(dataset))

    assert sorted(statuses(outcome).values()) == ["written"] * 30
    skipped = skipped_rows(dataset.save_dir)
    assert skipped[str(outside)] == (32, "refused: absolute path; slice_file_name must be relative to --data_dir")
    assert skipped["../outside.wav"] == (33, "refused: '..' in path escapes --data_dir")
    assert skipped["baby_cry/../../outside.wav"] == (34, "refused: '..' in path escapes --data_dir")
    assert not (dataset.root / "outside.npy").exists()
    assert len(feature_files(dataset.save_dir)) == 30
    assert sum(len(files) for files in listed_files(dataset.save_dir).values()) == 30


def test_a_path_naming_no_file_or_holding_a_line_break_is_refused_and_the_rest_processed(dataset_factory):
    """'.' would stop the run with a message naming nothing; a line break would split a list line in two."""
    dataset = dataset_factory(clips_per_class=10)
    write_wav(dataset.data_dir / "baby_cry" / "two\nlines.wav", duration=0.6)
    dataset.rows += [{"slice_file_name": name, "classID": "0", "class": "baby cry", "fold": "1"}
                     for name in (".", "./", "baby_cry/two\nlines.wav")]  # CSV records 32, 33, 34
    dataset.rewrite_csv()

    outcome = run_preprocessing(options(dataset))

    assert sorted(statuses(outcome).values()) == ["written"] * 30
    skipped = skipped_rows(dataset.save_dir)
    assert skipped["."] == (32, "refused: slice_file_name names a folder ('.'), not a file")
    assert skipped["./"] == (33, "refused: slice_file_name names a folder ('./'), not a file")
    assert skipped["'baby_cry/two\\nlines.wav'"] == (
        34, "refused: line break in slice_file_name (the split lists hold one clip per line)")
    assert sum(len(files) for files in listed_files(dataset.save_dir).values()) == 30


@pytest.mark.parametrize("name, problem", [
    ("  ", "empty class name at CSV line 32; every class needs a name"),
    ("baby\ncry", "line break inside a class name at CSV line 32"),
])
def test_a_class_name_that_is_blank_or_breaks_a_line_is_refused_before_any_work(dataset_factory, name, problem):
    dataset = dataset_factory(clips_per_class=10)
    dataset.rows.append({"slice_file_name": "baby_cry/extra.wav", "classID": "3", "class": name, "fold": "1"})
    dataset.rewrite_csv()

    with pytest.raises(MetadataError, match=re.escape(problem)):
        run_preprocessing(options(dataset))
    assert_nothing_written(dataset.save_dir)


def test_unusable_files_are_skipped_with_their_reason_and_the_run_goes_on(dataset_factory):
    dataset = dataset_factory(clips_per_class=10)
    reasons = {"missing": "missing: file not found",
               "empty": "empty: file has 0 bytes",
               "truncated": "truncated: header declares 19200 bytes of audio, file holds 2956",
               "cut_in_header": "truncated: WAV file has no data chunk",
               "text": "unreadable: not a supported audio file"}
    damaged = {}
    for row, kind in zip(dataset.rows[::6], reasons):  # spread over the classes
        damage(dataset.audio_path(row), kind)
        damaged[row["slice_file_name"]] = kind

    assert preprocessingBabyCrying.main(cli(dataset)) == 0

    skipped = skipped_rows(dataset.save_dir)
    assert sorted(skipped) == sorted(damaged)
    for row in dataset.rows:
        name = row["slice_file_name"]
        if name in damaged:
            line, reason = skipped[name]
            assert line == dataset.rows.index(row) + 2
            assert reason.startswith(reasons[damaged[name]]), (name, reason)
            assert not dataset.feature_path(row).exists()
        else:
            assert np.load(dataset.feature_path(row)).shape == (32, 50)
    listed = [name for names in listed_files(dataset.save_dir).values() for name in names]
    assert len(listed) == 25 and not {Path(name).with_suffix(".wav").as_posix() for name in listed} & set(damaged)


# ---------------------------------------------------------------------------------------
# Acceptance table: parameters, small classes, names with spaces
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [
    (["--n_fft", "256"], "--n_fft 256 is smaller than the window (--window_size 25 ms = 400 samples"),
    (["--n_mels", "0"], "--n_mels must be positive, got 0"),
    (["--n_frames", "-5"], "--n_frames must be positive, got -5"),
    (["--hop_size", "0"], "--hop_size must be positive, got 0.0"),
    (["--window_size", "-25"], "--window_size must be positive, got -25.0"),
    (["--window_size", "0.025"], "--window_size 0.025 ms / --hop_size 10 ms give 0 / 160 samples at --samplerate "
                                 "16000 Hz; both must be at least 1 sample (the sizes are milliseconds"),
    (["--samplerate", "0"], "--samplerate must be positive, got 0"),
    (["--whole_clips", "--max_seconds", "inf"], "--max_seconds must be a positive finite number, got inf"),
])
def test_invalid_feature_parameters_fail_before_any_work(dataset_factory, caplog, flags, named):
    dataset = dataset_factory(clips_per_class=2)

    assert preprocessingBabyCrying.main(cli(dataset, *flags)) == 1

    assert named in caplog.text
    assert not dataset.save_dir.exists()


@pytest.mark.parametrize("n_small, empty_splits", [(3, "validation and evaluation"), (9, "evaluation")])
def test_class_with_fewer_than_ten_clips_warns_which_splits_get_none(dataset_factory, n_small, empty_splits):
    dataset = dataset_factory(class_names=("baby cry", "laugh", "rare"), clips_per_class=[10, 10, n_small])

    outcome = run_preprocessing(options(dataset))

    assert outcome["warnings"] == [
        f"class 'rare' (classID 2) has {n_small} usable clip(s): the {empty_splits} split(s) get none of it "
        "(10 or more clips give every split some)"]
    counts = json.loads((dataset.save_dir / "filenames" / "feature_config.json").read_text())["counts"]
    assert sum(counts[split]["rare"] for split in SPLITS) == n_small
    assert all(counts[split]["rare"] == 0 for split in empty_splits.split(" and "))


def test_spaces_in_file_and_class_names_survive_the_list_round_trip(dataset_factory):
    dataset = dataset_factory(class_names=("baby cry", "dog's bark"), clips_per_class=10,
                              subfolder=lambda class_id, index: f"fold {index % 2}/my class {class_id}",
                              name=lambda class_id, index: f"clip no {index}.wav")

    run_preprocessing(options(dataset))

    entries = [entry for split in SPLITS for entry in read_list(dataset.save_dir / "filenames" / f"{split}.txt")]
    expected = {(str(Path(row["slice_file_name"]).with_suffix(".npy")), int(row["classID"]), row["class"])
                for row in dataset.rows}
    assert {(entry.feature_file, entry.class_id, entry.class_name) for entry in entries} == expected
    assert all((dataset.save_dir / entry.feature_file).is_file() for entry in entries)
    assert "'fold 0/my class 0/clip no 0.npy' 0 'baby cry'" in \
        "".join((dataset.save_dir / "filenames" / f"{split}.txt").read_text() for split in SPLITS)


# ---------------------------------------------------------------------------------------
# Acceptance table: interrupted runs
# ---------------------------------------------------------------------------------------

class SaveSpy:
    """Wraps ``np.save``: counts calls; optionally writes half the file then raises on call N."""

    def __init__(self, monkeypatch, interrupt_at: int | None = None):
        self.calls = 0
        self.interrupt_at = interrupt_at
        self.real_save = np.save
        monkeypatch.setattr(np, "save", self)

    def __call__(self, stream, array, *args, **kwargs):
        self.calls += 1
        if self.calls == self.interrupt_at:
            stream.write(b"\x93NUMPY partial")  # Ctrl-C lands in the middle of the write
            raise KeyboardInterrupt
        return self.real_save(stream, array, *args, **kwargs)


def test_interrupted_run_leaves_no_partial_npy_and_the_rerun_reuses_finished_clips(dataset_factory, monkeypatch):
    dataset = dataset_factory(clips_per_class=4)  # 12 clips, processed in CSV order
    spy = SaveSpy(monkeypatch, interrupt_at=6)

    with pytest.raises(KeyboardInterrupt):
        run_preprocessing(options(dataset))

    finished = [dataset.feature_path(row) for row in dataset.rows[:5]]
    assert feature_files(dataset.save_dir) == sorted(finished)
    assert all(np.load(path).shape == (32, 50) for path in finished)
    assert leftover_temp_files(dataset.save_dir) == []
    mtimes = {path: path.stat().st_mtime_ns for path in finished}

    spy = SaveSpy(monkeypatch)
    outcome = run_preprocessing(options(dataset))

    assert statuses(outcome) == {line: "reused" if line < 7 else "written" for line in range(2, 14)}
    assert spy.calls == 7
    assert {path: path.stat().st_mtime_ns for path in finished} == mtimes
    assert len(feature_files(dataset.save_dir)) == 12

    spy = SaveSpy(monkeypatch)
    outcome = run_preprocessing(options(dataset, overwrite=True))

    assert set(statuses(outcome).values()) == {"written"} and spy.calls == 12
    assert all(np.load(path).shape == (32, 50) for path in feature_files(dataset.save_dir))


@pytest.mark.parametrize("device", [None, "cpu"])  # worker processes; the batched (device) path
def test_a_rerun_recomputes_the_clips_whose_audio_changed_since(dataset_factory, device):
    dataset = dataset_factory(clips_per_class=2)  # 6 clips, CSV lines 2-7
    run_preprocessing(options(dataset, device=device))
    changed = dataset.rows[1]
    before = np.load(dataset.feature_path(changed))
    write_wav(dataset.audio_path(changed), duration=0.6, kind="noise", seed=99)  # new audio, same name
    feature_time = dataset.feature_path(changed).stat().st_mtime_ns
    os.utime(dataset.audio_path(changed), ns=(feature_time + 10**9, feature_time + 10**9))  # written after it
    outcome = run_preprocessing(options(dataset, device=device))
    assert statuses(outcome) == {line: "written" if line == 3 else "reused" for line in range(2, 8)}
    after = np.load(dataset.feature_path(changed))
    assert np.abs(after - before).max() > 1.0
    np.testing.assert_allclose(after, FeatureExtractor(PARAMS).file_to_feature(dataset.audio_path(changed)),
                               atol=1e-4)
    dataset.audio_path(dataset.rows[0]).unlink()  # audio gone: its feature is kept, as before
    assert statuses(run_preprocessing(options(dataset, device=device)))[2] == "reused"


def test_killed_script_leaves_only_complete_npy_and_a_rerun_reuses_them(dataset_factory):
    dataset = dataset_factory(clips_per_class=20)  # 60 clips
    command = [sys.executable, str(REPO_ROOT / "preprocessingBabyCrying.py"), *cli(dataset, workers=2)]
    log_file = dataset.root / "preprocess.log"
    with open(log_file, "wb") as log_stream:
        # Own session: the kill reaches the pool's workers too, as killing the terminal's job would.
        process = subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True,
                                   stdout=log_stream, stderr=subprocess.STDOUT)
        try:  # kill as soon as the first feature lands: the other ~59 clips are still in flight
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                if dataset.save_dir.is_dir() and any(dataset.save_dir.rglob("*.npy")):
                    break
                time.sleep(0.002)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode in (0, -signal.SIGKILL), log_file.read_text(errors="replace")[-2000:]

    survivors = feature_files(dataset.save_dir)
    assert survivors, "the script was killed before it wrote any feature"
    for path in survivors:  # every .npy that exists is complete: loads with the right shape
        assert np.load(path).shape == (32, 50), path
    # (SIGKILL may leave a `.<name>.npy.*.tmp`; it never matches *.npy, so nothing reads it.)

    outcome = run_preprocessing(options(dataset))

    counts = {status: list(statuses(outcome).values()).count(status) for status in ("reused", "written", "skipped")}
    assert counts["reused"] == len(survivors) > 0
    assert counts["reused"] + counts["written"] == 60 and counts["skipped"] == 0
    assert sum(len(files) for files in listed_files(dataset.save_dir).values()) == 60


# ---------------------------------------------------------------------------------------
# Exit status
# ---------------------------------------------------------------------------------------

def test_exit_status_is_one_when_no_usable_clip_remains(dataset_factory, caplog):
    dataset = dataset_factory(clips_per_class=2)
    for row in dataset.rows:
        damage(dataset.audio_path(row), "text")

    assert preprocessingBabyCrying.main(cli(dataset)) == 1

    assert "no usable clip remains" in caplog.text
    assert len(skipped_rows(dataset.save_dir)) == 6


def test_exit_status_is_one_when_a_class_is_left_with_no_clip(dataset_factory, caplog):
    dataset = dataset_factory(clips_per_class=10)
    for row in dataset.rows[20:]:  # every clip of class 2, 'noise'
        damage(dataset.audio_path(row), "empty")

    assert preprocessingBabyCrying.main(cli(dataset)) == 1

    assert "'noise' (classID 2) have no usable clip" in caplog.text


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_per_class", [30, 25, 10])
def test_random_split_is_80_10_10_within_each_class(n_per_class):
    clips = make_clips([n_per_class] * 3)

    splits = split_random(clips, n_classes=3, seed=0)

    for class_id in range(3):
        counts = {split: sum(clip.class_id == class_id for clip in members) for split, members in splits.items()}
        for split, share in zip(SPLITS, (0.8, 0.1, 0.1)):
            assert abs(counts[split] - share * n_per_class) <= 1, (class_id, counts)
    if n_per_class == 30:
        assert [len(splits[split]) for split in SPLITS] == [72, 9, 9]  # 24/3/3 per class
    lines = [clip.line for members in splits.values() for clip in members]
    assert sorted(lines) == [clip.line for clip in clips]  # disjoint and covering


def test_random_split_is_deterministic_for_a_seed_and_differs_for_another():
    clips = make_clips([30, 30, 30])
    def membership(splits):
        return {split: [clip.line for clip in members] for split, members in splits.items()}

    first = membership(split_random(clips, 3, seed=42))

    assert membership(split_random(clips, 3, seed=42)) == first
    assert membership(split_random(clips, 3, seed=43)) != first


def test_lists_follow_the_seed_and_cover_every_usable_clip(dataset_factory):
    dataset = dataset_factory(clips_per_class=10)
    run_preprocessing(options(dataset, seed=1))
    first = listed_files(dataset.save_dir)

    run_preprocessing(options(dataset, seed=1, extract=False))
    assert listed_files(dataset.save_dir) == first
    run_preprocessing(options(dataset, seed=2, extract=False))
    second = listed_files(dataset.save_dir)

    assert second != first
    for lists in (first, second):
        names = [name for split in SPLITS for name in lists[split]]
        assert len(names) == len(set(names)) == 30
        assert [len(lists[split]) for split in SPLITS] == [24, 3, 3]


def test_fold_column_split_uses_the_named_folds(dataset_factory):
    dataset = dataset_factory(clips_per_class=10)  # fold = index % 10 + 1

    assert preprocessingBabyCrying.main(cli(dataset, "--val_fold", "9", "--eval_fold", "10", "1")) == 0

    lists = listed_files(dataset.save_dir)
    def by_fold(folds):
        return sorted(str(Path(row["slice_file_name"]).with_suffix(".npy"))
                      for row in dataset.rows if row["fold"] in folds)

    assert sorted(lists["validation"]) == by_fold({"9"})
    assert sorted(lists["evaluation"]) == by_fold({"10", "1"})
    assert sorted(lists["train"]) == by_fold({str(fold) for fold in range(2, 9)})
    config = json.loads((dataset.save_dir / "filenames" / "feature_config.json").read_text())
    assert config["split"] == {"method": "fold", "validation_folds": ["9"], "evaluation_folds": ["10", "1"]}


def test_fold_split_errors_name_unknown_or_shared_folds():
    clips = make_clips([10, 10])
    with pytest.raises(MetadataError, match=r"fold\(s\) \['11'\] not found"):
        split_by_fold(clips, ["11"], ["10"])
    with pytest.raises(MetadataError, match=r"fold\(s\) \['9'\] named for both"):
        split_by_fold(clips, ["9"], ["9"])


@pytest.mark.parametrize("flags, columns, message", [
    (["--val_fold", "11"], None, r"fold\(s\) \['11'\] not found in the CSV's fold column"),
    (["--eval_fold", "1"], ("slice_file_name", "classID", "class"), r"--val_fold/--eval_fold need a 'fold' column"),
])
def test_fold_flags_the_csv_cannot_meet_are_refused_before_any_feature_is_made(dataset_factory, flags, columns,
                                                                              message, caplog):
    dataset = dataset_factory(clips_per_class=10)
    if columns:
        dataset.rewrite_csv(columns=columns)
    assert preprocessingBabyCrying.main(cli(dataset, *flags)) == 1
    assert re.search(message, caplog.text)
    assert feature_files(dataset.save_dir) == []


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------

def test_lists_contain_only_clips_whose_features_exist(dataset_factory):
    dataset = dataset_factory(clips_per_class=10)
    run_preprocessing(options(dataset))
    removed = dataset.feature_path(dataset.rows[0])
    removed.unlink()  # e.g. deleted by hand, or a shard that never ran

    with pytest.raises(PreprocessError, match="1 clip.* no feature yet"):
        run_preprocessing(options(dataset, extract=False))

    listed = [name for names in listed_files(dataset.save_dir).values() for name in names]
    assert len(listed) == 29
    assert all((dataset.save_dir / name).is_file() for name in listed)
    assert skipped_rows(dataset.save_dir)[dataset.rows[0]["slice_file_name"]] == \
        (2, "not processed: no feature file (run every shard)")


def test_feature_config_records_params_class_names_and_counts(dataset_factory):
    dataset = dataset_factory(clips_per_class=[10, 12, 11])
    damage(dataset.audio_path(dataset.rows[0]), "empty")

    run_preprocessing(options(dataset, seed=7))

    lists_dir = dataset.save_dir / "filenames"
    config = json.loads((lists_dir / "feature_config.json").read_text())
    assert config["feature_params"] == PARAMS.to_dict()
    assert FeatureParams.from_dict(config["feature_params"]) == PARAMS
    assert config["class_names"] == ["baby cry", "laugh", "noise"] and config["n_classes"] == 3
    assert config["split"] == {"method": "random_stratified", "seed": 7, "n_folds": 10}
    assert {name: sum(config["counts"][split][name] for split in SPLITS) for name in config["class_names"]} == \
        {"baby cry": 9, "laugh": 12, "noise": 11}
    assert config["counts"]["train"]["laugh"] == len([1 for entry in read_list(lists_dir / "train.txt")
                                                       if entry.class_name == "laugh"])
    assert config["n_skipped"] == 1
    assert json.loads((lists_dir / "feature_params.json").read_text()) == {**PARAMS.to_dict(),
                                                                           "feature_format": FEATURE_FORMAT}
    assert (lists_dir / "metadata.csv").read_bytes() == dataset.csv_file.read_bytes()


def test_whole_yamnet_clips_of_the_first_feature_format_need_overwrite(dataset_factory):
    # before FEATURE_FORMAT 2 whole yamnet clips of 2 % of lengths lacked YAMNet's last patch
    dataset = dataset_factory(clips_per_class=2, duration=0.98)  # 15680 samples: 144 frames now, 96 before
    whole = FeatureParams.preset("yamnet", max_seconds=2.0)
    run_preprocessing(options(dataset, params=whole))
    assert {np.load(path).shape for path in feature_files(dataset.save_dir)} == {(64, 144)}
    record = dataset.save_dir / "filenames" / "feature_params.json"
    record.write_text(json.dumps(whole.to_dict()))  # as the first format wrote it: no feature_format
    with pytest.raises(PreprocessError, match="made before they got YAMNet's own patch count.*--overwrite"):
        run_preprocessing(options(dataset, params=whole))
    assert set(statuses(run_preprocessing(options(dataset, params=whole, overwrite=True))).values()) == {"written"}
    fixed = FeatureParams.preset("yamnet")  # fixed-length features never changed: the old record stands
    run_preprocessing(options(dataset, params=fixed, save_dir=dataset.root / "fixed"))
    (dataset.root / "fixed" / "filenames" / "feature_params.json").write_text(json.dumps(fixed.to_dict()))
    assert set(statuses(run_preprocessing(options(dataset, params=fixed, save_dir=dataset.root / "fixed"))
                        ).values()) == {"reused"}


def test_an_unreadable_audio_path_beside_its_feature_is_skipped_not_fatal(dataset_factory):
    dataset = dataset_factory(clips_per_class=2)
    run_preprocessing(options(dataset))
    looped = dataset.audio_path(dataset.rows[0])
    looped.unlink()
    looped.symlink_to(looped.name)  # a symlink to itself: stat() fails with ELOOP
    outcome = run_preprocessing(options(dataset))
    assert statuses(outcome)[2] == "skipped" and list(statuses(outcome).values()).count("reused") == 5


def test_rerun_with_other_feature_params_needs_overwrite(dataset_factory, caplog):
    dataset = dataset_factory(clips_per_class=10)
    assert preprocessingBabyCrying.main(cli(dataset)) == 0

    assert preprocessingBabyCrying.main(cli(dataset, "--n_mels", "40")) == 1

    assert "'n_mels': (32, 40)" in caplog.text and "--overwrite" in caplog.text
    assert {np.load(path).shape for path in feature_files(dataset.save_dir)} == {(32, 50)}

    assert preprocessingBabyCrying.main(cli(dataset, "--n_mels", "40", "--overwrite")) == 0
    assert {np.load(path).shape for path in feature_files(dataset.save_dir)} == {(40, 50)}
    config = json.loads((dataset.save_dir / "filenames" / "feature_config.json").read_text())
    assert config["feature_params"]["n_mels"] == 40


def test_outputs_mirror_subfolders_so_equal_file_names_do_not_collide(dataset_factory):
    dataset = dataset_factory(class_names=("baby cry", "laugh"), clips_per_class=10,
                              subfolder=lambda class_id, index: f"fold{class_id}/speaker{index}",
                              name=lambda class_id, index: "a.wav")

    run_preprocessing(options(dataset))

    first, second = dataset.feature_path(dataset.rows[0]), dataset.feature_path(dataset.rows[10])
    assert first == dataset.save_dir / "fold0" / "speaker0" / "a.npy"
    assert second == dataset.save_dir / "fold1" / "speaker0" / "a.npy"
    assert len(feature_files(dataset.save_dir)) == 20
    assert not np.allclose(np.load(first), np.load(second))  # 300 Hz vs 600 Hz tone


# ---------------------------------------------------------------------------------------
# Sharding and the script
# ---------------------------------------------------------------------------------------

def test_three_shards_reproduce_single_run(dataset_factory):
    dataset = dataset_factory(clips_per_class=[11, 10, 12])
    damage(dataset.audio_path(dataset.rows[4]), "truncated")
    damage(dataset.audio_path(dataset.rows[20]), "text")
    dataset.rows.append({"slice_file_name": "../escape.wav", "classID": "1", "class": "laugh", "fold": "1"})
    dataset.rewrite_csv()
    single_dir, sharded_dir = dataset.root / "single", dataset.root / "sharded"

    run_preprocessing(options(dataset, save_dir=single_dir))
    shard_results = []
    for shard_index in range(3):
        outcome = run_preprocessing(options(dataset, save_dir=sharded_dir, num_shards=3, shard_index=shard_index,
                                            write_lists=False))
        shard_results += outcome["results"]
        assert not (sharded_dir / "filenames" / "train.txt").exists()
    run_preprocessing(options(dataset, save_dir=sharded_dir, num_shards=3, extract=False, write_lists=True))

    assert sorted(result.line for result in shard_results) == list(range(2, 35))  # each clip in one shard
    single_features = [path.relative_to(single_dir) for path in feature_files(single_dir)]
    assert len(single_features) == 31
    assert single_features == [path.relative_to(sharded_dir) for path in feature_files(sharded_dir)]
    for relative in single_features:
        assert (single_dir / relative).read_bytes() == (sharded_dir / relative).read_bytes(), relative
    list_files = sorted(path.relative_to(single_dir) for path in (single_dir / "filenames").glob("*") if path.is_file())
    assert [str(path) for path in list_files] == [
        f"filenames/{name}" for name in ("evaluation.txt", "feature_config.json", "feature_params.json",
                                         "metadata.csv", "skipped.txt", "train.txt", "validation.txt")]
    for relative in list_files:
        assert (single_dir / relative).read_bytes() == (sharded_dir / relative).read_bytes(), relative
    assert len(skipped_rows(sharded_dir)) == 3


def test_lists_before_every_shard_finished_name_the_missing_clips(dataset_factory):
    dataset = dataset_factory(clips_per_class=10)
    for shard_index in (0, 1):
        run_preprocessing(options(dataset, num_shards=3, shard_index=shard_index, write_lists=False))

    with pytest.raises(PreprocessError, match="10 clip.* no feature yet.*run every shard"):
        run_preprocessing(options(dataset, num_shards=3, extract=False, write_lists=True))

    missing = {row["slice_file_name"] for row in dataset.rows[2::3]}
    assert {name for name, (_, reason) in skipped_rows(dataset.save_dir).items()
            if reason == "not processed: no feature file (run every shard)"} == missing
    assert sum(len(names) for names in listed_files(dataset.save_dir).values()) == 20


def test_shard_flags_map_to_options():
    base = ["--csv_file", "m.csv", "--data_dir", "audio"]

    def parse(*flags):
        return preprocessingBabyCrying.options_from_args(preprocessingBabyCrying.parse_args(base + list(flags)))

    single = parse()
    assert (single.num_shards, single.extract, single.write_lists) == (1, True, True)
    shard = parse("--num_shards", "3", "--shard_index", "2")
    assert (shard.num_shards, shard.shard_index, shard.extract, shard.write_lists) == (3, 2, True, False)
    lists_only = parse("--num_shards", "3", "--write_lists")
    assert (lists_only.extract, lists_only.write_lists) == (False, True)
    with pytest.raises(PreprocessError, match=r"--shard_index must be in \[0, 3\), got 3"):
        run_preprocessing(PreprocessOptions(Path("m.csv"), Path("audio"), Path("out"), num_shards=3, shard_index=3))


def test_main_end_to_end_with_two_workers(dataset_factory):
    dataset = dataset_factory(clips_per_class=10)

    assert preprocessingBabyCrying.main(cli(dataset, "--seed", "3", workers=2)) == 0

    lists = listed_files(dataset.save_dir)
    assert [len(lists[split]) for split in SPLITS] == [24, 3, 3]
    for row in dataset.rows:
        assert np.load(dataset.feature_path(row)).dtype == np.float32
        assert np.load(dataset.feature_path(row)).shape == (32, 50)
    shard_status = (dataset.save_dir / "filenames" / "shards" / "shard-0-of-1.tsv").read_text().splitlines()
    assert len(shard_status) == 31 and all(line.split("\t")[1] == "written" for line in shard_status[1:])
    # The same clips computed in this process (one worker) give the same features.
    serial = dataclasses.replace(dataset, save_dir=dataset.root / "serial")
    run_preprocessing(options(serial, seed=3))
    for row in dataset.rows:
        np.testing.assert_array_equal(np.load(dataset.feature_path(row)), np.load(serial.feature_path(row)))


def test_interrupted_overwrite_run_must_be_finished_with_overwrite(dataset_factory, monkeypatch):
    dataset = dataset_factory()
    run_preprocessing(options(dataset))
    new_params = dataclasses.replace(PARAMS, n_mels=24)
    calls = {"n": 0}
    original_save = np.save

    def interrupt_after_two(stream, array, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return original_save(stream, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_preprocessing(options(dataset, params=new_params, overwrite=True))
    monkeypatch.setattr(np, "save", original_save)
    # Old (32-mel) and new (24-mel) features now sit side by side: reusing them would mix them.
    with pytest.raises(PreprocessError, match="did not finish.*run again with --overwrite"):
        run_preprocessing(options(dataset, params=new_params))
    outcome = run_preprocessing(options(dataset, params=new_params, overwrite=True))
    assert set(statuses(outcome).values()) == {"written"}
    assert {np.load(path).shape for path in feature_files(dataset.save_dir)} == {(24, 50)}
    run_preprocessing(options(dataset, params=new_params))  # finished: plain re-runs work again


def test_fold_subdirs_reads_the_urbansound8k_layout(dataset_factory):
    # UrbanSound8K: audio/fold<N>/<slice_file_name>, the CSV holds bare file names and the fold.
    dataset = dataset_factory(clips_per_class=10, subfolder=lambda class_id, index: f"fold{index % 10 + 1}")
    for row in dataset.rows:
        row["slice_file_name"] = row["slice_file_name"].split("/", 1)[1]
    dataset.rewrite_csv()
    outcome = run_preprocessing(options(dataset, fold_subdirs=True, validation_folds=["9"], evaluation_folds=["10"]))
    assert set(statuses(outcome).values()) == {"written"}
    assert {len(members) for members in outcome["splits"].values()} == {3, 24}
    assert (dataset.save_dir / "c0_000.npy").is_file()
    with pytest.raises(PreprocessError, match="fold"):  # without the flag the files are not found
        run_preprocessing(options(dataset, save_dir=dataset.root / "other"))


def test_split_of_a_clip_does_not_depend_on_other_clips_failing(dataset_factory):
    dataset = dataset_factory(clips_per_class=20)
    run_preprocessing(options(dataset))
    before = {name: split for split, names in listed_files(dataset.save_dir).items() for name in names}
    damage(dataset.audio_path(dataset.rows[0]), "empty")
    run_preprocessing(options(dataset, overwrite=True))
    after = {name: split for split, names in listed_files(dataset.save_dir).items() for name in names}
    lost = dataset.feature_path(dataset.rows[0]).relative_to(dataset.save_dir).as_posix()
    assert lost not in after and not dataset.feature_path(dataset.rows[0]).exists()  # stale feature removed
    assert after == {name: split for name, split in before.items() if name != lost}


def test_eval_fold_alone_trains_on_every_other_fold_and_validates_on_a_tenth_of_them(dataset_factory):
    dataset = dataset_factory(clips_per_class=20)  # fold = index % 10 + 1: 2 clips per class and fold
    assert preprocessingBabyCrying.main(cli(dataset, "--eval_fold", "3")) == 0
    lists = listed_files(dataset.save_dir)
    fold_of = {str(Path(row["slice_file_name"]).with_suffix(".npy")): row["fold"] for row in dataset.rows}
    assert {fold_of[name] for name in lists["evaluation"]} == {"3"} and len(lists["evaluation"]) == 6
    assert len(lists["validation"]) == 3 and len(lists["train"]) == 51  # 18 per class: 1 validation, 17 train
    assert "3" not in {fold_of[name] for name in lists["train"] + lists["validation"]}
    assert len({fold_of[name] for name in lists["train"]}) == 9  # every other fold trains


def test_batched_device_path_matches_the_worker_path(dataset_factory):
    # --device cuda batches the transform on the GPU; on this CPU-only machine the same code
    # path runs with device "cpu" and must give the worker path's features.
    dataset = dataset_factory(clips_per_class=10, duration=0.4)
    damage(dataset.audio_path(dataset.rows[1]), "text")
    reference = run_preprocessing(options(dataset, num_workers=2))
    batched_dir = dataset.root / "batched"
    batched = run_preprocessing(options(dataset, save_dir=batched_dir, device="cpu", num_workers=2))
    assert statuses(batched) == statuses(reference)
    assert skipped_rows(batched_dir) == skipped_rows(dataset.save_dir)
    for path in feature_files(dataset.save_dir):
        np.testing.assert_allclose(np.load(batched_dir / path.relative_to(dataset.save_dir)), np.load(path),
                                   atol=1e-3)
    assert listed_files(batched_dir) == listed_files(dataset.save_dir)
    assert set(statuses(run_preprocessing(options(dataset, save_dir=batched_dir, device="cpu"))).values()) \
        == {"reused", "skipped"}


def test_yamnet_front_end_flag_writes_its_parameters_and_features(dataset_factory):
    """--frontend yamnet: (64, 96) log-mels, and every parameter (frontend included) in feature_config.json."""
    dataset = dataset_factory(clips_per_class=4, duration=0.6)
    argv = ["--csv_file", str(dataset.csv_file), "--data_dir", str(dataset.data_dir),
            "--save_dir", str(dataset.save_dir), "--num_workers", "1", "--frontend", "yamnet"]
    assert preprocessingBabyCrying.main(argv) == 0
    config = json.loads((dataset.save_dir / "filenames" / "feature_config.json").read_text())
    assert FeatureParams.from_dict(config["feature_params"]) == FeatureParams.preset("yamnet")
    assert config["feature_params"]["frontend"] == "yamnet"
    feature = np.load(feature_files(dataset.save_dir)[0])
    assert feature.shape == (64, 96) and feature.min() >= np.log(0.001) - 1e-6


def test_explicit_flags_override_the_preset():
    """--frontend yamnet --n_frames 480: the preset with a longer clip; other flags keep the preset's values."""
    args = preprocessingBabyCrying.parse_args(["--csv_file", "x.csv", "--data_dir", "d", "--frontend", "yamnet",
                                               "--n_frames", "480"])
    assert preprocessingBabyCrying.feature_params_from_args(args) == FeatureParams.preset("yamnet", n_frames=480)
    args = preprocessingBabyCrying.parse_args(["--csv_file", "x.csv", "--data_dir", "d"])
    assert preprocessingBabyCrying.feature_params_from_args(args) == FeatureParams()


# ---------------------------------------------------------------------------------------
# Whole clips
# ---------------------------------------------------------------------------------------

def test_whole_clips_keep_each_clip_up_to_max_seconds(dataset_factory, caplog):
    dataset = dataset_factory(clips_per_class=10, duration=0.3)  # 0.3 s: shorter than n_frames (0.5 s)
    durations = {0: 0.73, 1: 2.5, 2: 1.0}  # rows 0-2: 73 frames (75 on the grid), cut at 1 s = 100, exactly 100
    for row, seconds in durations.items():
        write_wav(dataset.audio_path(dataset.rows[row]), sample_rate=22050, duration=seconds, kind="tone+noise",
                  seed=row)
    fixed = run_preprocessing(options(dataset))
    whole_dir = dataset.root / "whole"
    assert preprocessingBabyCrying.main(cli(dataclasses.replace(dataset, save_dir=whole_dir), "--whole_clips",
                                            "--max_seconds", "1")) == 0

    whole = dataclasses.replace(dataset, save_dir=whole_dir)
    lengths = [np.load(whole.feature_path(row)).shape for row in dataset.rows]
    assert lengths[:3] == [(32, 75), (32, 100), (32, 100)] and set(lengths[3:]) == {(32, 50)}
    for row in dataset.rows[3:]:  # short clips: padded as in fixed mode, the same feature
        np.testing.assert_allclose(np.load(whole.feature_path(row)), np.load(dataset.feature_path(row)), atol=1e-4)
    for row in dataset.rows[:3]:  # the fixed feature is the whole clip's first n_frames
        np.testing.assert_allclose(np.load(whole.feature_path(row))[:, :50], np.load(dataset.feature_path(row)),
                                   atol=1e-3)
    config = json.loads((whole_dir / "filenames" / "feature_config.json").read_text())
    assert config["feature_params"] == {**PARAMS.to_dict(), "max_seconds": 1.0}
    assert config["whole_clips"] == {"max_seconds": 1.0, "min_frames": 50, "max_frames": 100, "shortest": 50,
                                     "longest": 100, "total_frames": 75 + 100 + 100 + 27 * 50, "n_at_max_frames": 2}
    assert listed_files(whole_dir) == listed_files(dataset.save_dir)
    assert "whole_clips" not in fixed["config"]  # the default's feature_config.json is unchanged
    # the same save_dir cannot mix fixed and whole-clip features
    assert preprocessingBabyCrying.main(cli(whole, "--num_workers", "1")) == 1
    assert "'max_seconds': (1.0, None)" in caplog.text


def test_whole_clips_on_the_batched_device_path_match_the_worker_path(dataset_factory):
    dataset = dataset_factory(clips_per_class=4, duration=0.3)
    write_wav(dataset.audio_path(dataset.rows[0]), duration=1.7, kind="tone+noise", seed=9)
    params = dataclasses.replace(PARAMS, max_seconds=1.2)  # 120 frames, rounded up to the grid: 125
    run_preprocessing(options(dataset, params=params))
    batched = dataclasses.replace(dataset, save_dir=dataset.root / "batched")
    run_preprocessing(options(batched, params=params, device="cpu"))
    for row in dataset.rows:
        np.testing.assert_allclose(np.load(batched.feature_path(row)), np.load(dataset.feature_path(row)), atol=1e-3)
    assert np.load(dataset.feature_path(dataset.rows[0])).shape == (32, 125)


def test_whole_clip_flags_map_to_params():
    base = ["--csv_file", "m.csv", "--data_dir", "audio"]

    def parse(*flags):
        return preprocessingBabyCrying.options_from_args(preprocessingBabyCrying.parse_args(base + list(flags))).params

    assert parse().max_seconds is None and parse("--max_seconds", "4").max_seconds is None  # needs --whole_clips
    assert parse("--whole_clips").max_seconds == 10.0 and parse("--whole_clips").max_frames == 1000
    assert parse("--whole_clips", "--max_seconds", "4").max_frames == 500  # 400, rounded up to 250 + 2 x 125


# ---------------------------------------------------------------------------------------
# Trimmed clips
# ---------------------------------------------------------------------------------------

def test_trim_silence_cuts_quiet_lead_and_tail_frames_and_keeps_the_rest_exactly():
    from audioclf.frontend import trim_silence
    rate, frame, hop = 16000, 400, 160
    rng = np.random.default_rng(0)
    word = np.sin(2 * np.pi * 440 * np.arange(3200) / rate).astype(np.float32)  # 0.2 s, RMS -3 dBFS
    hiss = (10 ** (-60 / 20) * rng.standard_normal(4800)).astype(np.float32)  # 0.3 s, about 57 dB below the word
    audio = np.concatenate([hiss, word, hiss[:3200]])
    trimmed = trim_silence(audio, 40.0, frame, hop)
    start = int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(audio, len(trimmed)) == trimmed,
                                      axis=1))[0])  # a slice of the clip, sample for sample
    assert start % hop == 0 and 4800 - frame <= start <= 4800  # the first frame that reaches into the word
    assert 3200 <= len(trimmed) <= 3200 + 2 * frame  # the word, and at most a frame either side
    assert len(trim_silence(audio, 70.0, frame, hop)) == len(audio)  # the hiss is within 70 dB: kept
    silent = np.zeros(8000, np.float32)
    assert trim_silence(silent, 40.0, frame, hop) is silent and trim_silence(word[:100], 40.0, frame, hop).size == 100


def test_trim_silence_of_a_long_recording_needs_little_more_memory_than_the_recording():
    # --trim_db reads whole files (predict.py's clip mode too): squaring every overlapping frame at once
    # took 5 times the recording's bytes (float64, 2.5 frames per sample), over 1 GB for an hour at 16 kHz
    import tracemalloc
    from audioclf.frontend import trim_silence
    rate, frame, hop = 16000, 400, 160
    audio = (0.1 * np.random.default_rng(0).standard_normal(rate * 300)).astype(np.float32)  # 5 minutes
    audio[:rate] = 0.0
    tracemalloc.start()
    try:
        trimmed = trim_silence(audio, 40.0, frame, hop)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * audio.nbytes
    assert len(audio) - rate <= len(trimmed) <= len(audio) - rate + frame  # the silent first second is cut


@pytest.mark.parametrize("frontend", ["default", "yamnet"])
def test_a_trimmed_whole_clip_is_cut_to_the_samples_its_longest_feature_reads(frontend):
    # --trim_db reads whole files: a long recording's feature keeps its first max_frames frames, and
    # what lies past their samples is cut before the transform instead of computed and dropped
    from audioclf.frontend import FeatureExtractor, clip_waveform
    plain = FeatureParams.preset(frontend, n_mels=16, n_frames=20, max_seconds=1.0)
    trimmed = dataclasses.replace(plain, trim_db=60.0)
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000 * 4)).astype(np.float32)  # nothing to trim
    kept = clip_waveform(audio, trimmed)
    assert len(kept) == plain.read_samples < len(audio)  # the samples an untrimmed clip reads
    feature = FeatureExtractor(trimmed).clip_feature(audio)
    assert feature.shape == (16, plain.max_frames)
    np.testing.assert_array_equal(feature, FeatureExtractor(plain).clip_feature(audio[:plain.read_samples]))
    np.testing.assert_allclose(feature, FeatureExtractor(plain).recording_frames(audio)[:, :plain.max_frames],
                               atol=1e-4)  # the frames of the whole recording

def test_trim_db_flag_trims_before_padding_records_itself_and_predict_makes_the_same_feature(dataset_factory):
    from audioclf.frontend import FeatureExtractor, read_audio, trim_silence
    dataset = dataset_factory(clips_per_class=10, duration=0.3)
    row = dataset.rows[0]
    tone = np.sin(2 * np.pi * 600 * np.arange(4000) / 16000).astype(np.float32) * 0.5
    write_wav(dataset.audio_path(row), np.concatenate([np.zeros(6000, np.float32), tone, np.zeros(2000, np.float32)]))
    trimmed_dir = dataset.root / "trimmed"
    assert preprocessingBabyCrying.main(cli(dataclasses.replace(dataset, save_dir=trimmed_dir), "--trim_db", "40")) == 0
    config = json.loads((trimmed_dir / "filenames" / "feature_config.json").read_text())
    params = FeatureParams.from_dict(config["feature_params"])
    assert config["feature_params"]["trim_db"] == 40.0 and params == dataclasses.replace(PARAMS, trim_db=40.0)
    feature = np.load(dataclasses.replace(dataset, save_dir=trimmed_dir).feature_path(row))
    audio = read_audio(dataset.audio_path(row), PARAMS.sample_rate)
    kept = trim_silence(audio, 40.0, PARAMS.win_length, PARAMS.hop_length)
    assert 4000 <= len(kept) <= 4000 + 2 * PARAMS.win_length  # the tone and at most a frame either side
    np.testing.assert_allclose(feature, FeatureExtractor(PARAMS).waveform_to_feature(kept), atol=1e-4)
    untrimmed = FeatureExtractor(PARAMS).file_to_feature(dataset.audio_path(row))
    assert (feature.mean(0) > -60).mean() > 0.9 and (untrimmed.mean(0) > -60).mean() < 0.4  # tone, not silence
    # predict.py's clip mode (FeatureExtractor.file_to_feature with the checkpoint's parameters): the same feature
    np.testing.assert_allclose(FeatureExtractor(params).file_to_feature(dataset.audio_path(row)), feature, atol=1e-4)
    assert "trim_db" not in FeatureParams().to_dict()  # features made without it keep their feature_config.json
    with pytest.raises(ValueError, match="--trim_db must be a positive number"):
        FeatureParams(trim_db=-3.0).validate()


def test_normalize_level_sets_the_active_level_whatever_the_silence_around_it():
    from audioclf.frontend import frame_rms, normalize_level
    frame, hop = 400, 160
    tone = (0.02 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)).astype(np.float32)  # RMS -37 dBFS
    padded = np.concatenate([np.full(16000, 1e-5, np.float32), tone, np.zeros(8000, np.float32)])
    scaled = normalize_level(tone, -20.0, frame, hop)
    assert scaled.dtype == np.float32
    assert 20 * np.log10(np.sqrt(np.mean(np.square(scaled, dtype=np.float64)))) == pytest.approx(-20.0, abs=0.01)
    # the silence (60+ dB below the tone) is left out of the level, which over the whole clip would be 6 dB
    # lower: the tone gets the same gain, but for the frames that straddle its edges (0.2 dB)
    gain_db = 20 * np.log10(np.max(np.abs(normalize_level(padded, -20.0, frame, hop))) / np.max(np.abs(scaled)))
    assert abs(gain_db) < 0.3
    assert normalize_level(0.1 * tone, -20.0, frame, hop) == pytest.approx(scaled, abs=1e-6)  # level-free
    silent = np.zeros(4000, np.float32)
    assert normalize_level(silent, -20.0, frame, hop) is silent
    short = tone[:100]  # shorter than one frame: one frame, its RMS
    assert 20 * np.log10(np.sqrt(np.mean(np.square(normalize_level(short, -20.0, frame, hop))))) == pytest.approx(-20.0,
                                                                                                                 abs=0.01)
    assert frame_rms(short, frame, hop).shape == (1,)


def test_level_db_flag_makes_a_clip_and_its_quieter_copy_the_same_feature_and_predict_follows(dataset_factory):
    from audioclf.frontend import FeatureExtractor
    dataset = dataset_factory(clips_per_class=10, duration=0.3)
    loud, quiet = dataset.rows[0], dataset.rows[1]
    noise = np.random.default_rng(0).uniform(-1, 1, 4800).astype(np.float32)  # every band, far above 16-bit steps
    write_wav(dataset.audio_path(loud), 0.5 * noise)
    write_wav(dataset.audio_path(quiet), 0.005 * noise)  # 40 dB quieter
    levelled = dataclasses.replace(dataset, save_dir=dataset.root / "levelled")
    assert preprocessingBabyCrying.main(cli(levelled, "--level_db", "-25")) == 0
    config = json.loads((levelled.save_dir / "filenames" / "feature_config.json").read_text())
    params = FeatureParams.from_dict(config["feature_params"])
    assert config["feature_params"]["level_db"] == -25.0 and params == dataclasses.replace(PARAMS, level_db=-25.0)
    features = [np.load(levelled.feature_path(row)) for row in (loud, quiet)]
    # dB power; the quiet 16-bit clip holds 50 dB of signal over its rounding steps
    assert np.max(np.abs(features[0] - features[1])) < 0.5 and np.mean(np.abs(features[0] - features[1])) < 0.05
    as_recorded = [FeatureExtractor(PARAMS).file_to_feature(dataset.audio_path(row)) for row in (loud, quiet)]
    assert np.max(as_recorded[0] - as_recorded[1]) > 30  # 40 dB apart as recorded (dB power features)
    # predict.py's clip mode (FeatureExtractor.file_to_feature with the checkpoint's parameters): the same feature
    np.testing.assert_allclose(FeatureExtractor(params).file_to_feature(dataset.audio_path(quiet)), features[1],
                               atol=1e-4)
    assert "level_db" not in FeatureParams().to_dict()  # features made without it keep their feature_config.json
    with pytest.raises(ValueError, match=r"--level_db must be a level in dB re full scale, 0 or below \(e.g. -25\)"):
        FeatureParams(level_db=25.0).validate()
