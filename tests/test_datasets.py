"""tools/datasets.py: tiny fake trees in each corpus's real layout and file names -> metadata CSVs.

Layouts mirrored: UrbanSound8K (metadata/UrbanSound8K.csv, audio/fold<N>/<fsID>-<classID>-<occ>-<slice>.wav),
ESC-50 (meta/esc50.csv, audio/<fold>-<src_file>-<take>-<target>.wav), AudioSet (class_labels_indices.csv,
*_segments.csv with three '#' lines, downloaded clips), donateacry-corpus
(donateacry_corpus_cleaned_and_updated_data/<reason>/<uuid>-<time>-<version>-<gender>-<age>-<reason>.wav)
and a folder-per-class tree.
"""
from __future__ import annotations

import csv
import logging
import re
import shlex
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from audioclf.config import Params
from audioclf.frontend import FeatureParams
from audioclf.listfile import SPLITS, read_list
from audioclf.preprocess import PreprocessOptions, run_preprocessing
from conftest import write_wav
from tools.datasets import (ESC50_COLUMNS, US8K_COLUMNS, AdapterOptions, DatasetError, build, dropped_path, main,
                            parse_args)

US8K_CLASSES = ((0, "air_conditioner"), (3, "dog_bark"), (8, "siren"))
ESC50_CLASSES = (("dog", 0), ("rooster", 1), ("crying_baby", 20))  # category, target (ESC-50's own IDs)
ESC10 = {"dog", "crying_baby"}
AUDIOSET_LABELS = ((0, "/m/09x0r", "Speech"), (1, "/m/0bt9lr", "Dog"), (2, "/t/dd00002", "Baby cry, infant cry"),
                   (3, "/m/04rlf", "Music"))
SEGMENTS_HEADER = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                   "# num_ytids=6, num_segs=6, num_unique_labels=4, num_positive_labels=8\n"
                   "# YTID, start_seconds, end_seconds, positive_labels\n")
DONATEACRY = {  # reason folder -> file names (two app instances cry twice; iOS upper-case, Android lower-case)
    "belly_pain": ["549a46d8-9c84-430e-ade8-97eae2bef787-1430130772174-1.7-m-48-bp.wav",
                   "643D64AD-B711-469A-AF69-55C0D5D3E30F-1430138495-1.0-m-72-bp.wav"],
    "hungry": ["643D64AD-B711-469A-AF69-55C0D5D3E30F-1430138506-1.0-m-72-hu.wav",
               "02c3b725-26e4-4a2c-9336-04ddc58836d9-1430726196216-1.7-m-04-hu.wav",
               "549a46d8-9c84-430e-ade8-97eae2bef787-1430130799999-1.7-m-48-hu.wav"],
    "tired": ["06c4cfa2-7fa6-4fda-91a1-ea186a4acc64-1430029221058-1.7-f-26-ti.wav"],
}


def tiny_wav(path: Path) -> Path:
    return write_wav(path, sample_rate=8000, duration=0.05)


def write_csv(path: Path, columns, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_urbansound8k(root: Path, recordings: int = 3, slices: int = 2) -> Path:
    """``root/UrbanSound8K``: ``recordings`` fsIDs per class, ``slices`` slices each, fold = recording."""
    corpus, rows = root / "UrbanSound8K", []
    for class_id, name in US8K_CLASSES:
        for recording in range(recordings):
            fs_id, fold = 1000 * (class_id + 1) + recording, recording % 10 + 1
            for slice_index in range(slices):
                file_name = f"{fs_id}-{class_id}-0-{slice_index}.wav"
                tiny_wav(corpus / "audio" / f"fold{fold}" / file_name)
                rows.append({"slice_file_name": file_name, "fsID": fs_id, "start": 4.0 * slice_index,
                             "end": 4.0 * slice_index + 4, "salience": 1, "fold": fold, "classID": class_id,
                             "class": name})
    write_csv(corpus / "metadata" / "UrbanSound8K.csv", US8K_COLUMNS, rows)
    return corpus


def make_esc50(root: Path, sources: int = 3, takes: str = "AB") -> Path:
    """``root/ESC-50-master``: ``sources`` src_files per category, ``takes`` clips of each."""
    corpus, rows = root / "ESC-50-master", []
    for category, target in ESC50_CLASSES:
        for source in range(sources):
            src_file, fold = 100000 + 1000 * target + source, source % 5 + 1
            for take in takes:
                file_name = f"{fold}-{src_file}-{take}-{target}.wav"
                tiny_wav(corpus / "audio" / file_name)
                rows.append({"filename": file_name, "fold": fold, "target": target, "category": category,
                             "esc10": str(category in ESC10), "src_file": src_file, "take": take})
    write_csv(corpus / "meta" / "esc50.csv", ESC50_COLUMNS, rows)
    return corpus


def segment_line(ytid: str, start: float, labels: str) -> str:
    return f'{ytid}, {start:.3f}, {start + 10:.3f}, "{labels}"\n'


def make_audioset(root: Path) -> Path:
    """Label index, balanced + eval segment CSVs and clips named in four downloaders' patterns."""
    corpus = root / "audioset"
    write_csv(corpus / "class_labels_indices.csv", ("index", "mid", "display_name"),
              [{"index": i, "mid": mid, "display_name": name} for i, mid, name in AUDIOSET_LABELS])
    (corpus / "balanced_train_segments.csv").write_text(SEGMENTS_HEADER + "".join([
        segment_line("--PJHxphWEs", 30, "/m/09x0r,/t/dd00002"),  # speech + baby cry
        segment_line("-0RWZT-miFs", 0, "/m/0bt9lr"),             # dog
        segment_line("_aB3dE5gH7i", 60, "/m/04rlf,/m/09x0r"),    # music + speech
        segment_line("Yx1234567_9", 10, "/t/dd00002"),           # a YTID that starts with Y
    ]))
    (corpus / "eval_segments.csv").write_text(SEGMENTS_HEADER + "".join([
        segment_line("abcdefghijk", 20, "/m/0bt9lr,/m/04rlf"),   # dog + music
        segment_line("zyxwvutsrqp", 5, "/m/09x0r"),              # speech
    ]))
    clips = corpus / "audio"
    tiny_wav(clips / "--PJHxphWEs_30.000.wav")                  # <YTID>_<start>
    tiny_wav(clips / "Y-0RWZT-miFs.wav")                        # PANNs: Y<YTID>
    tiny_wav(clips / "eval" / "_aB3dE5gH7i_60000_70000.wav")    # milliseconds, in a subfolder
    tiny_wav(clips / "YYx1234567_9.flac")                       # Y + a YTID starting with Y
    tiny_wav(clips / "abcdefghijk_20_30.wav")                   # <YTID>_<start>_<end>
    tiny_wav(clips / "zyxwvutsrqp.wav")                         # bare <YTID>
    return corpus


def make_donateacry(root: Path) -> Path:
    corpus = root / "donateacry-corpus"
    for reason, names in DONATEACRY.items():
        for name in names:
            tiny_wav(corpus / "donateacry_corpus_cleaned_and_updated_data" / reason / name)
    (corpus / "donateacry_corpus_cleaned_and_updated_data" / "README.md").write_text("cleaned data\n")
    (corpus / "donateacry-android-upload-bucket").mkdir()
    (corpus / "donateacry-android-upload-bucket" / "x-1.7-m-04-hu.3gp").write_bytes(b"3gp")
    return corpus


def make_folders(root: Path) -> Path:
    corpus = root / "mysounds"
    for name in ("kettle/a.wav", "kettle/b.wav", "doorbell/front/1.wav", "doorbell/front/2.wav",
                 "doorbell/back/1.wav"):
        tiny_wav(corpus / name)
    return corpus


def read_out(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def dropped(out: Path) -> list[dict]:
    with open(dropped_path(out), newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def assert_valid(frame: pd.DataFrame, data_dir: Path) -> None:
    """What preprocessing needs: contiguous IDs, one name per ID, every clip under data_dir."""
    ids = sorted({int(i) for i in frame["classID"]})
    assert ids == list(range(len(ids)))
    assert (frame.groupby("classID")["class"].nunique() == 1).all()
    assert all((data_dir / name).is_file() and ".." not in name and not name.startswith("/")
               for name in frame["slice_file_name"])


# ---------------------------------------------------------------------------------------
# One corpus at a time
# ---------------------------------------------------------------------------------------

def test_urbansound8k_keeps_folds_and_fsid_groups_with_contiguous_ids(tmp_path):
    root = make_urbansound8k(tmp_path)
    out = tmp_path / "us8k.csv"

    outcome = build(["urbansound8k"], [root], out)

    frame = read_out(out)
    assert list(frame.columns) == ["slice_file_name", "classID", "class", "fold", "group", "source", "label",
                                   "fsID", "start", "end", "salience"]
    assert outcome.data_dir == root / "audio"
    assert_valid(frame, outcome.data_dir)
    assert frame.iloc[0]["slice_file_name"] == "fold1/1000-0-0-0.wav"
    # US8K's IDs 0, 3, 8 become 0, 1, 2 in the corpus's own order
    assert dict(zip(frame["class"], frame["classID"])) == {"air_conditioner": "0", "dog_bark": "1", "siren": "2"}
    assert (frame["fold"] == frame["slice_file_name"].str.extract(r"fold(\d+)/")[0]).all()
    assert sorted(set(frame["group"]))[:2] == ["urbansound8k:1000", "urbansound8k:1001"]
    assert frame.groupby("group").size().eq(2).all()  # both slices of a recording share its group
    assert set(frame["source"]) == {"urbansound8k"} and dropped(out) == []


def test_esc50_keeps_folds_src_file_groups_and_the_esc10_switch(tmp_path):
    root = make_esc50(tmp_path)
    out = tmp_path / "esc50.csv"

    build(["esc50"], [root], out)
    frame = read_out(out)
    assert list(frame.columns) == ["slice_file_name", "classID", "class", "fold", "group", "source", "label",
                                   "target", "esc10", "src_file", "take"]
    assert dict(zip(frame["class"], frame["classID"])) == {"dog": "0", "rooster": "1", "crying_baby": "2"}
    assert frame.iloc[0][["slice_file_name", "fold", "group"]].tolist() == ["1-100000-A-0.wav", "1", "esc50:100000"]
    assert all(takes == ["A", "B"] for takes in frame.groupby("group")["take"].apply(list))

    build(["esc50"], [root], out, options=AdapterOptions(esc10=True))
    frame = read_out(out)
    assert sorted(set(frame["class"])) == ["crying_baby", "dog"] and (frame["esc10"] == "True").all()
    assert dict(zip(frame["class"], frame["classID"])) == {"dog": "0", "crying_baby": "1"}


def test_esc50_target_babycry_is_its_crying_baby_category(tmp_path):
    root = make_esc50(tmp_path)
    out = tmp_path / "cry.csv"

    build(["esc50"], [root], out, target=["babycry"])

    frame = read_out(out)
    assert dict(zip(frame["class"], frame["classID"])) == {"other": "0", "babycry": "1"}
    assert (frame.loc[frame["class"] == "babycry", "label"] == "crying_baby").all()
    assert (frame["class"] == "babycry").sum() == 6 and (frame["class"] == "other").sum() == 12


def test_audioset_finds_clips_by_every_documented_name_pattern(tmp_path):
    root = make_audioset(tmp_path)
    out = tmp_path / "audioset.csv"

    outcome = build(["audioset"], [root], out)

    frame = read_out(out).set_index("ytid")
    assert outcome.data_dir == root
    assert frame.loc["--PJHxphWEs", "slice_file_name"] == "audio/--PJHxphWEs_30.000.wav"
    assert frame.loc["-0RWZT-miFs", "slice_file_name"] == "audio/Y-0RWZT-miFs.wav"
    assert frame.loc["_aB3dE5gH7i", "slice_file_name"] == "audio/eval/_aB3dE5gH7i_60000_70000.wav"
    assert frame.loc["Yx1234567_9", "slice_file_name"] == "audio/YYx1234567_9.flac"
    assert frame.loc["abcdefghijk", "slice_file_name"] == "audio/abcdefghijk_20_30.wav"
    assert frame.loc["zyxwvutsrqp", "slice_file_name"] == "audio/zyxwvutsrqp.wav"
    # several labels: the first in class_labels_indices.csv order; all of them in `labels`
    assert frame.loc["--PJHxphWEs", ["class", "labels"]].tolist() == ["Speech", "Speech; Baby cry, infant cry"]
    assert frame.loc["_aB3dE5gH7i", "class"] == "Speech" and frame.loc["abcdefghijk", "class"] == "Dog"
    assert frame.loc["zyxwvutsrqp", ["group", "segments", "start_seconds"]].tolist() == \
        ["audioset:zyxwvutsrqp", "eval", "5.000"]
    assert "fold" not in frame.columns
    assert_valid(read_out(out), outcome.data_dir)
    assert dict(zip(frame["class"], frame["classID"])) == {"Speech": "0", "Dog": "1", "Baby cry, infant cry": "2"}


def test_audioset_target_is_positive_when_any_label_is_the_target(tmp_path):
    root = make_audioset(tmp_path)
    out = tmp_path / "cry.csv"

    build(["audioset"], [root], out, target=["babycry"])

    frame = read_out(out).set_index("ytid")
    assert sorted(frame.index[frame["class"] == "babycry"]) == ["--PJHxphWEs", "Yx1234567_9"]
    assert frame.loc["--PJHxphWEs", "label"] == "Baby cry, infant cry"  # the label that decided
    assert (frame.loc[frame["class"] == "other", "classID"] == "0").all()


def test_audioset_classes_order_is_the_priority_for_several_labels(tmp_path):
    root = make_audioset(tmp_path)
    out = tmp_path / "music_dog.csv"

    build(["audioset"], [root], out, classes=["Music", "dog"])

    frame = read_out(out).set_index("ytid")
    assert dict(zip(frame["class"], frame["classID"])) == {"Music": "0", "dog": "1"}
    assert frame.loc["abcdefghijk", "class"] == "Music"  # Dog + Music: Music comes first in --classes
    assert frame.loc["-0RWZT-miFs", "class"] == "dog"
    assert sorted(frame.index) == ["-0RWZT-miFs", "_aB3dE5gH7i", "abcdefghijk"]  # no Music or Dog: left out


def test_donateacry_reasons_are_classes_and_app_instances_are_groups(tmp_path):
    root = make_donateacry(tmp_path)
    out = tmp_path / "reasons.csv"

    outcome = build(["donateacry"], [root], out)

    frame = read_out(out)
    assert outcome.data_dir == root / "donateacry_corpus_cleaned_and_updated_data"
    assert dict(zip(frame["class"], frame["classID"])) == {"belly_pain": "0", "hungry": "1", "tired": "2"}
    groups = frame.groupby("group")["slice_file_name"].apply(len).to_dict()
    assert groups == {"donateacry:549a46d8-9c84-430e-ade8-97eae2bef787": 2,
                      "donateacry:643d64ad-b711-469a-af69-55c0d5d3e30f": 2,  # iOS upper case, same instance
                      "donateacry:02c3b725-26e4-4a2c-9336-04ddc58836d9": 1,
                      "donateacry:06c4cfa2-7fa6-4fda-91a1-ea186a4acc64": 1}
    row = frame.set_index("slice_file_name").loc[f"tired/{DONATEACRY['tired'][0]}"]
    assert row[["gender", "age", "reason"]].tolist() == ["f", "26", "ti"]


def test_folder_tree_classes_and_subfolder_groups(tmp_path):
    root = make_folders(tmp_path)
    out = tmp_path / "mine.csv"

    build(["folders"], [root], out)

    frame = read_out(out)
    assert list(frame.columns) == ["slice_file_name", "classID", "class", "group", "source", "label"]
    assert frame[["slice_file_name", "class", "group"]].values.tolist() == [
        ["doorbell/back/1.wav", "doorbell", "folders:doorbell/back"],
        ["doorbell/front/1.wav", "doorbell", "folders:doorbell/front"],
        ["doorbell/front/2.wav", "doorbell", "folders:doorbell/front"],
        ["kettle/a.wav", "kettle", "folders:kettle/a.wav"],
        ["kettle/b.wav", "kettle", "folders:kettle/b.wav"]]


def test_classes_spelt_two_ways_are_named_in_a_warning(tmp_path, caplog):
    root = make_folders(tmp_path)
    for name in ("Door_Bell/x.wav", "door-bell/y.wav"):
        tiny_wav(root / name)
    build(["folders"], [root], tmp_path / "mine.csv")
    assert "classes 'Door_Bell' and 'door-bell' differ only in case, '_', '-' or spacing" in caplog.text
    assert "with --classes" in caplog.text and "'kettle'" not in caplog.text
    assert set(read_out(tmp_path / "mine.csv")["class"]) == {"doorbell", "Door_Bell", "door-bell", "kettle"}


# ---------------------------------------------------------------------------------------
# Several corpora in one CSV
# ---------------------------------------------------------------------------------------

def test_merged_corpora_cry_vs_rest_maps_each_corpus_name(tmp_path):
    roots = [make_esc50(tmp_path), make_audioset(tmp_path), make_donateacry(tmp_path), make_urbansound8k(tmp_path)]
    out = tmp_path / "babycry.csv"

    outcome = build(["esc50", "audioset", "donateacry", "urbansound8k"], roots, out, target=["babycry"])

    frame = read_out(out)
    assert outcome.data_dir == tmp_path
    assert_valid(frame, tmp_path)
    positives = frame[frame["class"] == "babycry"]
    assert positives.groupby("source")["label"].unique().apply(sorted).to_dict() == {
        "audioset": ["Baby cry, infant cry"], "donateacry": ["belly_pain", "hungry", "tired"],
        "esc50": ["crying_baby"]}
    assert (frame.loc[frame["source"] == "urbansound8k", "class"] == "other").all()
    assert frame["source"].value_counts().to_dict() == {"urbansound8k": 18, "esc50": 18, "audioset": 6,
                                                        "donateacry": 6}
    assert all(group.startswith(f"{source}:") for group, source in zip(frame["group"], frame["source"]))
    assert frame.groupby("group")["source"].nunique().eq(1).all()
    assert frame.loc[frame["source"] == "audioset", "fold"].eq("").all()  # only US8K and ESC-50 have folds
    assert frame["slice_file_name"].iloc[0].startswith("ESC-50-master/audio/")


def test_classes_unify_corpus_names_through_aliases(tmp_path):
    roots = [make_esc50(tmp_path), make_urbansound8k(tmp_path)]
    out = tmp_path / "dogs.csv"

    build(["esc50", "urbansound8k"], roots, out, classes=["siren", "dog"])

    frame = read_out(out)
    assert dict(zip(frame["class"], frame["classID"])) == {"siren": "0", "dog": "1"}
    assert frame.groupby("class")["label"].unique().apply(sorted).to_dict() == {
        "dog": ["dog", "dog_bark"], "siren": ["siren"]}


def test_the_same_corpus_twice_is_dropped_as_duplicates_naming_the_first(tmp_path):
    root = make_folders(tmp_path)
    out = tmp_path / "twice.csv"

    build(["folders", "folders"], [root, root], out)

    assert len(read_out(out)) == 5
    rows = dropped(out)
    assert len(rows) == 5 and {row["source"] for row in rows} == {"folders2"}
    assert rows[0]["kind"] == "duplicate"
    assert rows[0]["reason"] == f"duplicate: the same clip as {root / 'doorbell/back/1.wav'} (folders)"


# ---------------------------------------------------------------------------------------
# Bad input: a clear message naming file and row; what is usable is still written
# ---------------------------------------------------------------------------------------

def test_missing_metadata_file_is_named_and_the_other_corpora_are_written(tmp_path, caplog):
    broken = make_urbansound8k(tmp_path)
    (broken / "metadata" / "UrbanSound8K.csv").unlink()
    esc50 = make_esc50(tmp_path)
    out = tmp_path / "both.csv"

    status = main(["urbansound8k", "--root", str(broken), "esc50", "--root", str(esc50), "--out", str(out)])

    assert status == 1
    assert f"urbansound8k: metadata file not found: {broken / 'metadata' / 'UrbanSound8K.csv'}" in caplog.text
    assert "written without urbansound8k" in caplog.text
    assert set(read_out(out)["source"]) == {"esc50"}


def test_a_metadata_file_that_is_not_utf8_is_named_and_the_other_corpora_are_written(tmp_path, caplog):
    latin = make_esc50(tmp_path)
    metadata = latin / "meta" / "esc50.csv"
    metadata.write_bytes(metadata.read_bytes().replace(b"dog", b"d\xf6g", 1))  # Latin-1, not UTF-8
    other = make_urbansound8k(tmp_path)
    out = tmp_path / "both.csv"
    assert main(["esc50", "--root", str(latin), "urbansound8k", "--root", str(other), "--out", str(out)]) == 1
    line = next(n for n, text in enumerate(metadata.read_bytes().split(b"\n"), start=1) if b"\xf6" in text)
    assert f"esc50: {metadata} is not UTF-8 text (line {line} cannot be decoded: " in caplog.text
    assert "save it as UTF-8" in caplog.text
    assert set(read_out(out)["source"]) == {"urbansound8k"}


def test_only_corpus_missing_writes_nothing(tmp_path, caplog):
    out = tmp_path / "none.csv"
    assert main(["esc50", "--root", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    assert f"esc50: metadata file not found: {tmp_path / 'nowhere' / 'meta' / 'esc50.csv'}" in caplog.text
    assert not out.exists()


def test_unknown_target_name_suggests_close_matches_and_writes_nothing(tmp_path, caplog):
    root = make_esc50(tmp_path)
    out = tmp_path / "cry.csv"
    out.write_text("an older CSV\n")

    with pytest.raises(DatasetError, match="no --target name"):
        build(["esc50"], [root], out, target=["cryingbaby"])

    assert f"--target 'cryingbaby' is no class of the corpora read (esc50: {root / 'meta' / 'esc50.csv'})" \
        in caplog.text
    assert "close matches: 'crying_baby'" in caplog.text
    assert out.read_text() == "an older CSV\n" and not list(tmp_path.glob(".*.tmp"))


def test_unknown_class_name_is_left_out_and_the_rest_written(tmp_path, caplog):
    root = make_esc50(tmp_path)
    out = tmp_path / "some.csv"

    build(["esc50"], [root], out, classes=["dog", "roster"])

    assert "--classes 'roster' is no class" in caplog.text and "close matches: 'rooster'" in caplog.text
    assert set(read_out(out)["class"]) == {"dog"}


def test_clips_listed_but_absent_are_dropped_with_file_and_line(tmp_path, caplog):
    root = make_esc50(tmp_path)
    (root / "audio" / "1-100000-A-0.wav").unlink()  # CSV line 2
    out = tmp_path / "esc50.csv"

    build(["esc50"], [root], out)

    assert len(read_out(out)) == 17
    assert dropped(out) == [{"source": "esc50", "where": f"{root / 'meta' / 'esc50.csv'}:2", "kind": "absent",
                             "reason": f"clip listed but absent: {root / 'audio' / '1-100000-A-0.wav'} not found"}]
    assert "esc50: 1 dropped (absent)" in caplog.text and str(dropped_path(out)) in caplog.text


def test_duplicate_metadata_rows_keep_the_first(tmp_path):
    root = make_urbansound8k(tmp_path)
    meta = root / "metadata" / "UrbanSound8K.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines + [lines[3]]) + "\n")  # line 20 repeats line 4
    out = tmp_path / "us8k.csv"

    build(["urbansound8k"], [root], out)

    assert len(read_out(out)) == 18
    assert dropped(out) == [{"source": "urbansound8k", "where": f"{meta}:20", "kind": "duplicate",
                             "reason": f"duplicate: the same clip as {meta}:4"}]


def test_metadata_columns_that_reach_a_path_cannot_leave_the_corpus(tmp_path):
    root = make_urbansound8k(tmp_path)
    tiny_wav(tmp_path / "secret.wav")
    tiny_wav(root / "audio" / "fold1" / "sub" / "x.wav")
    meta = root / "metadata" / "UrbanSound8K.csv"
    rows = list(csv.DictReader(meta.open()))
    escaping = [("secret.wav", "1/../../.."), ("../../secret.wav", "1"), ("sub/x.wav", "1"), ("/etc/passwd", "1")]
    for name, fold in escaping:  # CSV lines 20-23
        rows.append({**rows[0], "slice_file_name": name, "fold": fold})
    write_csv(meta, US8K_COLUMNS, rows)
    esc50 = make_esc50(tmp_path)
    esc_meta = esc50 / "meta" / "esc50.csv"
    esc_rows = list(csv.DictReader(esc_meta.open()))
    write_csv(esc_meta, ESC50_COLUMNS, esc_rows + [{**esc_rows[0], "filename": "../../secret.wav"}])
    out = tmp_path / "both.csv"

    build(["urbansound8k", "esc50"], [root, esc50], out)

    assert not read_out(out)["slice_file_name"].str.contains("secret|sub/x|passwd").any()
    reasons = {row["where"]: row["reason"] for row in dropped(out)}
    assert reasons == {
        f"{meta}:20": "fold '1/../../..' is not a whole number",
        f"{meta}:21": "slice_file_name '../../secret.wav' is not a bare file name (the corpus keeps its clips "
                      "directly in audio/fold<N>/)",
        f"{meta}:22": "slice_file_name 'sub/x.wav' is not a bare file name (the corpus keeps its clips directly "
                      "in audio/fold<N>/)",
        f"{meta}:23": "slice_file_name '/etc/passwd' is not a bare file name (the corpus keeps its clips directly "
                      "in audio/fold<N>/)",
        f"{esc_meta}:20": "filename '../../secret.wav' is not a bare file name (the corpus keeps its clips "
                          "directly in audio/)"}


def test_audioset_bad_input_unknown_label_duplicate_segment_absent_clip_and_stray_file(tmp_path, caplog):
    root = make_audioset(tmp_path)
    balanced = root / "balanced_train_segments.csv"
    evaluation = root / "eval_segments.csv"
    with open(balanced, "a") as handle:
        handle.write(segment_line("missingclip", 0, "/m/09x0r"))          # line 8: not downloaded
        handle.write(segment_line("unknownlab1", 0, "/m/nosuch"))         # line 9: no known label
        handle.write('badrow, 1.0\n')                                     # line 10: 2 fields
    with open(evaluation, "a") as handle:
        handle.write(segment_line("--PJHxphWEs", 30, "/m/09x0r,/m/x"))    # line 6: duplicate of balanced line 4
    tiny_wav(root / "audio" / "notes_from_me.wav")                        # stray file, matches no segment
    tiny_wav(root / "audio" / "--PJHxphWEs_30.flac")                      # a second file for one segment
    out = tmp_path / "audioset.csv"

    build(["audioset"], [root], out)

    assert len(read_out(out)) == 6
    by_where = {row["where"]: (row["kind"], row["reason"]) for row in dropped(out)}
    assert by_where[f"{balanced}:8"] == ("absent", "clip listed but absent: no file for missingclip at 0 s under "
                                                   f"{root}")
    assert by_where[f"{balanced}:9"] == ("unknown label", "no known label id in '/m/nosuch'")
    assert by_where[f"{balanced}:10"] == ("bad row", "expected 4 fields (YTID, start_seconds, end_seconds, "
                                                     "positive_labels), found 2")
    assert by_where[f"{evaluation}:6"] == ("duplicate", f"duplicate segment: --PJHxphWEs at 30 s is also "
                                                        f"{balanced}:4")
    assert by_where[str(root / "audio" / "notes_from_me.wav")][0] == "no segment"
    assert by_where[str(root / "audio" / "--PJHxphWEs_30.flac")] == (
        "duplicate", f"a second file of segment {balanced}:4; using --PJHxphWEs_30.000.wav")
    assert f"{balanced}:9: unknown label id '/m/nosuch' (not in class_labels_indices.csv); ignored" in caplog.text


def test_audioset_missing_label_index_or_segments_is_named(tmp_path):
    root = make_audioset(tmp_path)
    (root / "class_labels_indices.csv").unlink()
    with pytest.raises(DatasetError, match=f"audioset: metadata file not found: {root / 'class_labels_indices.csv'}"):
        build(["audioset"], [root], tmp_path / "x.csv")
    other = make_audioset(tmp_path / "second")
    for path in other.glob("*_segments.csv"):
        path.unlink()
    with pytest.raises(DatasetError, match=r"audioset: no segment CSV \(\*segments\*\.csv"):
        build(["audioset"], [other], tmp_path / "x.csv")


def test_target_without_negatives_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="without any 'other' clip"):
        build(["donateacry"], [make_donateacry(tmp_path)], tmp_path / "x.csv", target=["babycry"])


def test_command_line_pairs_names_and_roots(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["esc50", "donateacry", "--root", "a", "--out", "x.csv"])
    with pytest.raises(SystemExit):
        parse_args(["folders", "--root", "a", "--out", "x.csv", "--esc10"])
    args = parse_args(["esc50", "--root", "a", "donateacry", "--root", "b", "--out", "x.csv", "--target", "babycry"])
    assert (args.names, args.root, args.target) == (["esc50", "donateacry"], [Path("a"), Path("b")], ["babycry"])


# ---------------------------------------------------------------------------------------
# From the CSV to leak-free split lists
# ---------------------------------------------------------------------------------------

def test_written_csv_preprocesses_into_a_grouped_split_without_leaks(tmp_path, caplog):
    roots = [make_esc50(tmp_path, sources=10), make_donateacry(tmp_path)]
    out = tmp_path / "babycry.csv"
    caplog.set_level(logging.INFO)
    assert main(["esc50", "donateacry", "--root", str(roots[0]), "--root", str(roots[1]), "--out", str(out),
                 "--target", "babycry"]) == 0
    assert f"--data_dir {tmp_path}" in caplog.text
    save_dir = tmp_path / "features"

    outcome = run_preprocessing(PreprocessOptions(csv_file=out, data_dir=tmp_path, save_dir=save_dir,
                                                  params=FeatureParams(n_fft=512, n_mels=32, n_frames=50)))

    assert outcome["config"]["split"]["group_column"] == "group"
    assert outcome["config"]["split"]["groups_in_several_splits"] == 0
    frame = read_out(out)
    group_of = {str(Path(name).with_suffix(".npy")): group for name, group in zip(frame["slice_file_name"],
                                                                                 frame["group"])}
    splits_of = defaultdict(set)
    for split in SPLITS:
        for entry in read_list(save_dir / "filenames" / f"{split}.txt"):
            splits_of[group_of[entry.feature_file]].add(split)
    assert len(splits_of) == 34 and all(len(splits) == 1 for splits in splits_of.values())
    assert sum(len(read_list(save_dir / "filenames" / f"{s}.txt")) for s in SPLITS) == len(frame) == 66



def test_audioset_segments_of_classes_left_out_are_not_reported_absent(tmp_path):
    root = make_audioset(tmp_path)
    with open(root / "balanced_train_segments.csv", "a") as handle:
        handle.write(segment_line("musicnofile", 0, "/m/04rlf"))  # line 8: not downloaded, Music only
        handle.write(segment_line("dognofile00", 0, "/m/0bt9lr"))  # line 9: not downloaded, Dog
    out = tmp_path / "dog.csv"

    build(["audioset"], [root], out, classes=["dog"])

    assert [row["where"] for row in dropped(out)] == [f"{root / 'balanced_train_segments.csv'}:9"]
    assert sorted(read_out(out)["ytid"]) == ["-0RWZT-miFs", "abcdefghijk"]


# ---------------------------------------------------------------------------------------
# The README's corpus recipes stay runnable: every command parses, and the files chain up
# ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def readme_recipes() -> list[list[list[str]]]:
    """The bash blocks of the README's "Public corpora" section, as lists of argv."""
    section = (REPO / "README.md").read_text().split("## Public corpora", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [[shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
             if shlex.split(line, comments=True)] for block in blocks[1:]]  # blocks[0] is the synopsis


def apply_sed(script: str, text: str) -> str:
    for old, new in re.findall(r"s#([^#]*)#([^#]*)#g", script):
        text = text.replace(old, new)
    return text


def test_readme_corpus_recipes_parse_and_chain(tmp_path, monkeypatch):
    """Each recipe's commands parse, and each reads what an earlier one wrote: the CSV, the lists,
    and the soundscape folders its config names (built from that recipe's own lists)."""
    import evaluation
    import predict
    import preprocessingBabyCrying
    import train
    from tools import soundscapes

    monkeypatch.chdir(tmp_path)
    recipes = readme_recipes()
    assert len(recipes) == 5
    scripts = {"preprocessingBabyCrying.py": preprocessingBabyCrying.parse_args, "train.py": train.parse_args,
               "evaluation.py": evaluation.parse_args, "predict.py": predict.parse_args}
    for recipe in recipes:
        made_configs, csv_out, save_dir, trained, built = {}, None, None, [], set()
        for argv in recipe:
            if argv[0] == "sed":
                source = (REPO / argv[2]).read_text()
                made_configs[argv[4]] = tmp_path / Path(argv[4]).name
                made_configs[argv[4]].write_text(apply_sed(argv[1], source))
            if argv[0] != ".venv/bin/python":
                continue
            if argv[1:3] == ["-m", "tools.datasets"]:
                csv_out = parse_args(argv[3:]).out
            elif argv[1:3] == ["-m", "tools.soundscapes"]:
                args = soundscapes.parse_args(argv[3:])
                assert Path(args.csv_file) == csv_out and Path(args.list).parent == save_dir / "filenames", recipe
                built.add(tmp_path / args.out)
            elif argv[1] in scripts:
                if argv[1] == "preprocessingBabyCrying.py":  # its --config_path: the recipe (or the sed's copy)
                    at = argv.index("--config_path") + 1
                    argv[at] = str(made_configs.get(argv[at]) or REPO / argv[at])
                args = scripts[argv[1]](argv[2:])
                if argv[1] == "preprocessingBabyCrying.py":
                    assert args.csv_file == csv_out, recipe
                    # the recipe's features block gave the flags: YAMNet's front end, whole clips
                    assert (args.frontend, args.whole_clips) == ("yamnet", True), recipe
                    save_dir = args.save_dir
                elif argv[1] in ("train.py", "evaluation.py"):
                    path = made_configs.get(args.config_path) or REPO / args.config_path
                    params = Params(path)
                    assert Path(params.datapath) == tmp_path / save_dir, (path, params.datapath)
                    assert Path(params.trainlist) == tmp_path / save_dir / "filenames" / "train.txt"
                    for key in ("train_soundscapes", "detection_soundscapes"):
                        folder = getattr(params, key)
                        assert folder is None or Path(folder) in built, f"{path}: {key} {folder} is not built first"
                    trained.append(argv[1])
            else:
                raise AssertionError(f"unexpected command in the README: {argv}")
        assert trained == ["train.py", "evaluation.py"], recipe


def test_audioset_clips_elsewhere_and_an_explicit_data_dir(tmp_path):
    root = make_audioset(tmp_path)
    clips = tmp_path / "big_disk" / "clips"
    clips.parent.mkdir()
    (root / "audio").rename(clips)
    out = tmp_path / "as.csv"

    outcome = build(["audioset"], [root], out, options=AdapterOptions(clips=clips))
    assert outcome.data_dir == clips and len(outcome.rows) == 6
    assert outcome.rows[0]["slice_file_name"] == "--PJHxphWEs_30.000.wav"

    outcome = build(["audioset"], [root], out, options=AdapterOptions(clips=clips), data_dir=tmp_path)
    assert outcome.rows[0]["slice_file_name"] == "big_disk/clips/--PJHxphWEs_30.000.wav"
    with pytest.raises(DatasetError, match=f"--data_dir {root} does not hold {clips}"):
        build(["audioset"], [root], out, options=AdapterOptions(clips=clips), data_dir=root)


def test_a_freesound_recording_in_both_esc50_and_urbansound8k_is_warned_about(tmp_path, caplog):
    us8k, esc50 = make_urbansound8k(tmp_path), make_esc50(tmp_path)
    meta = esc50 / "meta" / "esc50.csv"
    rows = list(csv.DictReader(meta.open()))
    rows[0]["src_file"] = rows[1]["src_file"] = "1000"  # UrbanSound8K's fsID 1000 too
    write_csv(meta, ESC50_COLUMNS, rows)

    build(["esc50", "urbansound8k"], [esc50, us8k], tmp_path / "both.csv")

    assert "1 Freesound recording(s) appear in both ESC-50 and UrbanSound8K (e.g. 1000)" in caplog.text


# ---------------------------------------------------------------------------------------
# The next command: the corpus's recipe when there is one
# ---------------------------------------------------------------------------------------

def next_command(caplog) -> list[str]:
    """The preprocessing command the tool logged after writing, as argv."""
    return shlex.split(caplog.text.split("next:\n  ", 1)[1].splitlines()[0])


@pytest.mark.parametrize("corpora, flags, recipe, split", [
    (("esc50",), [], "configs/esc50.json", ["--val_fold", "4", "--eval_fold", "5"]),
    (("urbansound8k",), [], "configs/urbansound8k.json", ["--val_fold", "9", "--eval_fold", "10"]),
    (("donateacry", "esc50"), ["--target", "babycry"], "configs/babycry.json", []),
])
def test_the_next_command_preprocesses_with_the_corpus_recipe(tmp_path, monkeypatch, caplog, corpora, flags, recipe,
                                                              split):
    """The logged command names the recipe (--config_path), saves into its datapath and holds out the folds its
    README command does; it parses, and its features are the recipe's block."""
    import preprocessingBabyCrying

    makers = {"esc50": make_esc50, "urbansound8k": make_urbansound8k, "donateacry": make_donateacry}
    argv = [item for name in corpora for item in (name, "--root", str(makers[name](tmp_path)))]
    out = tmp_path / "out.csv"
    monkeypatch.chdir(REPO)  # the recipes' paths are relative to the repository, where the README runs them
    caplog.set_level(logging.INFO)
    assert main(argv + ["--out", str(out), *flags]) == 0

    command = next_command(caplog)
    assert command[:2] == ["python", "preprocessingBabyCrying.py"]
    assert command[command.index("--config_path") + 1] == recipe
    assert command[len(command) - len(split):] == split
    args = preprocessingBabyCrying.parse_args(command[2:])
    assert (args.csv_file, args.data_dir) == (out, read_data_dir(caplog))
    assert REPO / args.save_dir == Path(Params(REPO / recipe).datapath)  # where train.py with the recipe reads
    assert (args.frontend, args.whole_clips) == ("yamnet", True)  # the recipe's features block
    assert "is not the datapath" not in caplog.text


def test_the_next_command_without_a_recipe_names_the_features_folder_after_the_csv(tmp_path, caplog):
    """A CSV no recipe is made for (here ESC-50's dogs vs the rest): no --config_path."""
    out = tmp_path / "dogs.csv"
    caplog.set_level(logging.INFO)
    assert main(["esc50", "--root", str(make_esc50(tmp_path)), "--out", str(out), "--target", "dog"]) == 0
    assert next_command(caplog) == ["python", "preprocessingBabyCrying.py", "--csv_file", str(out), "--data_dir",
                                    str(read_data_dir(caplog)), "--save_dir", "features/dogs"]


def read_data_dir(caplog) -> Path:
    """The data folder the tool logged the clip paths relative to."""
    return Path(re.search(r"slice_file_name is relative to (.*); next:", caplog.text).group(1))


@pytest.mark.parametrize("flags", [["--classes", "dog"], ["--esc10"]], ids=["classes", "esc10"])
def test_a_subset_of_a_corpus_gets_no_whole_corpus_recipe(tmp_path, caplog, flags):
    """A subset of ESC-50 is not what configs/esc50.json trains (50 classes): the command must not save it into
    that recipe's datapath (features/esc50), where it would replace the whole corpus's features."""
    out = tmp_path / "subset.csv"
    caplog.set_level(logging.INFO)
    assert main(["esc50", "--root", str(make_esc50(tmp_path)), "--out", str(out), *flags]) == 0
    assert next_command(caplog) == ["python", "preprocessingBabyCrying.py", "--csv_file", str(out), "--data_dir",
                                    str(read_data_dir(caplog)), "--save_dir", "features/subset"]
