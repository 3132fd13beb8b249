"""tools/soundscapes.py: reproducible mixtures whose reference events and EBRs are exact."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audioclf.events import Event, read_events_csv
from audioclf.frontend import read_audio
from audioclf.listfile import ListEntry, render_list
from audioclf.tuning import TuningError, load_tuning_set
from conftest import make_signal, write_metadata, write_wav
from tools import soundscapes
from tools.soundscapes import (EDGE_MARGIN_S, EVENTS_FILE, MANIFEST_FILE, PARTS_FILE, SoundscapeError,
                               build_soundscapes, equal_power_fades, load_sources, main, measured_ebr_db,
                               parse_args, plan_soundscapes, render_mixture, rms)

RATE = 8000  # output rate of these tests (clips are written at other rates: resampled on reading)
DURATION_S = 6.0
LSB = 1.0 / 32768  # one step of the PCM-16 mixtures


@pytest.fixture
def clips(tmp_path: Path):
    """Cry clips (1-2 s) and background clips (noise, tones; 12 s in all) in a CSV; ``listed`` leaves some out."""
    data_dir = tmp_path / "audio"
    rows = []

    def add(name: str, class_id: int, class_name: str, signal: np.ndarray, rate: int) -> None:
        write_wav(data_dir / name, signal, sample_rate=rate)
        rows.append({"slice_file_name": name, "classID": str(class_id), "class": class_name, "fold": "1",
                     "start": "0", "end": "0"})

    for index, (seconds, rate) in enumerate([(1.0, 16000), (1.5, 22050), (2.0, 8000), (1.2, 16000)]):
        add(f"cry/cry_{index}.wav", 0, "babycry",
            make_signal("tone+noise", sample_rate=rate, duration=seconds, frequency=450 + 50 * index,
                        amplitude=0.3, seed=index), rate)
    for index in range(8):
        kind = "noise" if index % 2 else "tone"
        add(f"other/bg_{index}.wav", 1, "other",
            make_signal(kind, sample_rate=16000, duration=1.5, frequency=200 + 100 * index,
                        amplitude=0.05 + 0.05 * index, seed=10 + index), 16000)
    csv_file = write_metadata(tmp_path / "metadata.csv", rows)
    # the list: all but cry_3 and bg_7 (which must then never be used)
    entries = [ListEntry(str(Path(row["slice_file_name"]).with_suffix(".npy")), int(row["classID"]), row["class"])
               for row in rows if row["slice_file_name"] not in ("cry/cry_3.wav", "other/bg_7.wav")]
    list_file = tmp_path / "lists" / "evaluation.txt"
    list_file.parent.mkdir()
    list_file.write_text(render_list(entries))
    return {"csv_file": csv_file, "data_dir": data_dir, "list_file": list_file, "rows": rows}


def build(clips, out: Path, **overrides) -> dict:
    arguments = dict(csv_file=clips["csv_file"], data_dir=clips["data_dir"], list_file=clips["list_file"],
                     target_class="babycry", out=out, n_mixtures=6, seed=3, duration_s=DURATION_S,
                     sample_rate=RATE)
    arguments.update(overrides)
    return build_soundscapes(**arguments)


def test_same_seed_same_bytes_other_seed_other_mixtures(clips, tmp_path):
    build(clips, tmp_path / "a")
    build(clips, tmp_path / "b")
    names = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert names == sorted([EVENTS_FILE, PARTS_FILE, MANIFEST_FILE] + [f"mixture_{i:04d}.wav" for i in range(6)])
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    build(clips, tmp_path / "c", seed=4)
    assert (tmp_path / "c" / "mixture_0001.wav").read_bytes() != (tmp_path / "a" / "mixture_0001.wav").read_bytes()


def test_mixture_minus_background_is_the_scaled_clip_at_the_reference_times(clips, tmp_path):
    manifest = build(clips, tmp_path / "out")
    assert (manifest["sample_rate"], manifest["n_mixtures"], manifest["n_events"]) == (RATE, 6, 3)
    targets, background, _ = load_sources(clips["csv_file"], clips["data_dir"], clips["list_file"], "babycry", RATE,
                                       DURATION_S)
    plans = plan_soundscapes(background, targets, 6, 3, RATE, DURATION_S)
    reference = read_events_csv(tmp_path / "out" / EVENTS_FILE)
    assert [event.file for event in reference] == ["mixture_0000.wav", "mixture_0002.wav", "mixture_0004.wav"]
    audio = {**targets, **background}
    for plan in plans:
        written = read_audio(tmp_path / "out" / plan.file, RATE).astype(np.float64)
        assert written.shape == (round(DURATION_S * RATE),)
        mixture = render_mixture(plan, audio)
        residual = written - mixture.output_gain * mixture.background  # (n_samples,)
        if plan.event is None:
            assert np.abs(residual).max() <= 2 * LSB
            continue
        onset, offset = plan.event.onset, plan.event.onset + plan.event.n_samples
        clip = audio[plan.event.clip]
        np.testing.assert_allclose(residual[onset:offset], mixture.output_gain * mixture.event_gain * clip,
                                   rtol=0, atol=2 * LSB)
        assert np.abs(residual[:onset]).max() <= 2 * LSB and np.abs(residual[offset:]).max() <= 2 * LSB
        # the reference row holds the event's first and one-past-last sample, to the CSV's millisecond
        (event,) = [e for e in reference if e.file == plan.file]
        assert event.onset_s == pytest.approx(onset / RATE, abs=5e-4)
        assert event.offset_s == pytest.approx(offset / RATE, abs=5e-4)
        assert event.class_name == "babycry"
        assert EDGE_MARGIN_S <= event.onset_s and event.offset_s <= DURATION_S - EDGE_MARGIN_S
        # the EBR is the one asked for: by construction, and measured on the written file
        assert measured_ebr_db(mixture) == pytest.approx(plan.event.ebr_db, abs=1e-9)
        span_background = mixture.output_gain * mixture.background[onset:offset]
        measured = 20 * math.log10(rms(residual[onset:offset]) / rms(span_background))
        assert measured == pytest.approx(plan.event.ebr_db, abs=0.05)


def test_events_in_half_ebrs_cycle_and_only_listed_clips_are_used(clips, tmp_path):
    build(clips, tmp_path / "out", n_mixtures=7, ebr_db=[-6.0, 0.0, 6.0])
    parts = (tmp_path / "out" / PARTS_FILE).read_text().splitlines()
    header, rows = parts[0].split(","), [line.split(",") for line in parts[1:]]
    assert header == ["file", "part", "clip", "start_s", "end_s", "ebr_db", "event_gain", "output_gain", "class"]
    assert {(row[2].split("/")[0], row[8]) for row in rows} == {("cry", "babycry"), ("other", "other")}
    events = [row for row in rows if row[1] == "event"]
    assert [row[0] for row in events] == [f"mixture_{i:04d}.wav" for i in (0, 2, 4, 6)]
    assert sorted(float(row[5]) for row in events[:3]) == [-6.0, 0.0, 6.0]  # each EBR once per cycle
    used = {row[2] for row in rows}
    assert "cry/cry_3.wav" not in used and "other/bg_7.wav" not in used
    assert {row[2] for row in events} <= {"cry/cry_0.wav", "cry/cry_1.wav", "cry/cry_2.wav"}
    # the background covers every mixture to its end, clips overlapping only by their cross-fades
    for file in {row[0] for row in rows}:
        spans = [(float(row[3]), float(row[4])) for row in rows if row[0] == file and row[1] == "background"]
        assert spans[0][0] == 0.0 and spans[-1][1] == DURATION_S
        assert all(0 < end - start <= soundscapes.CROSSFADE_S + 1e-9
                   for (_, end), (start, _) in zip(spans, spans[1:]))


def test_a_link_inside_the_data_folder_is_followed_as_preprocessing_does(clips, tmp_path):
    """Audio on another disk linked into the data folder builds the same mixtures (a CSV path that
    leaves the folder by its spelling is refused: test_bad_inputs_are_named)."""
    build(clips, tmp_path / "plain")
    moved = tmp_path / "elsewhere" / "cry_0.wav"
    moved.parent.mkdir()
    (clips["data_dir"] / "cry" / "cry_0.wav").rename(moved)
    os.symlink(moved, clips["data_dir"] / "cry" / "cry_0.wav")
    build(clips, tmp_path / "linked")
    for mixture in sorted((tmp_path / "plain").glob("*.wav")):
        assert (tmp_path / "linked" / mixture.name).read_bytes() == mixture.read_bytes()
    assert (tmp_path / "linked" / PARTS_FILE).read_text() == (tmp_path / "plain" / PARTS_FILE).read_text()


def test_cross_fades_keep_the_power():
    fade_in, fade_out = equal_power_fades(100)
    np.testing.assert_allclose(fade_in ** 2 + fade_out ** 2, 1.0)
    assert fade_in[0] < 0.05 and fade_out[-1] < 0.05


def test_rerun_replaces_earlier_mixtures_and_refuses_foreign_audio(clips, tmp_path):
    out = tmp_path / "out"
    build(clips, out, n_mixtures=6)
    build(clips, out, n_mixtures=2)
    assert sorted(path.name for path in out.glob("*.wav")) == ["mixture_0000.wav", "mixture_0001.wav"]
    write_wav(tmp_path / "mine" / "recording.wav", duration=0.1)
    with pytest.raises(SoundscapeError, match=r"recording\.wav.*choose an empty folder"):
        build(clips, tmp_path / "mine")


def test_bad_inputs_are_named(clips, tmp_path):
    with pytest.raises(SoundscapeError, match=r"no clip of --target_class 'dog'.*babycry, other"):
        build(clips, tmp_path / "x", target_class="dog")
    with pytest.raises(SoundscapeError, match=r"hold 10\.5 s of audio, less than one 30 s mixture"):
        build(clips, tmp_path / "x", duration_s=30.0)
    # a list line naming a clip the CSV does not have
    bad_list = tmp_path / "lists" / "bad.txt"
    bad_list.write_text("cry/cry_0.npy 0 babycry\nmissing/clip.npy 1 other\n")
    with pytest.raises(SoundscapeError, match=r"bad\.txt:2: 'missing/clip\.npy' is not a clip of"):
        build(clips, tmp_path / "x", list_file=bad_list)
    # a CSV path escaping the data folder, named by the list
    rows = clips["rows"] + [{"slice_file_name": "../outside.wav", "classID": "1", "class": "other"}]
    write_metadata(clips["csv_file"], rows)
    bad_list.write_text("cry/cry_0.npy 0 babycry\n../outside.npy 1 other\n")
    with pytest.raises(SoundscapeError, match=r"bad\.txt:2: '\.\./outside\.npy' cannot be used.*escapes"):
        build(clips, tmp_path / "x", list_file=bad_list)
    with pytest.raises(SoundscapeError, match="--n_mixtures must be >= 1"):
        build(clips, tmp_path / "x", n_mixtures=0)
    for ebr in (float("nan"), float("inf")):  # no NaN gains or silent mixtures
        with pytest.raises(SoundscapeError, match=r"--ebr values must be finite numbers of dB, got \[0.0, "):
            build(clips, tmp_path / "x", ebr_db=(0.0, ebr))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name, text, line", [
    ("bad.txt", "\ncry/cry_0.npy 0 babycry\n\n  \nmissing/clip.npy 1 other\n", 5),
    ("bad.csv", "slice_file_name\n\ncry/cry_0.wav\n\nmissing/clip.wav\n", 5),
])
def test_list_errors_name_the_real_line_when_the_list_has_blank_lines(clips, tmp_path, name, text, line):
    """Blank lines are skipped when reading, but the error names the line a user sees in the file."""
    bad_list = tmp_path / "lists" / name
    bad_list.write_text(text)
    with pytest.raises(SoundscapeError, match=rf"{name.replace('.', '[.]')}:{line}: 'missing/clip\.(npy|wav)' is not"):
        build(clips, tmp_path / "x", list_file=bad_list)


def test_a_csv_list_and_the_feature_config_rate(clips, tmp_path):
    csv_list = tmp_path / "lists" / "some.csv"
    write_metadata(csv_list, [row for row in clips["rows"] if row["slice_file_name"] != "cry/cry_0.wav"])
    (tmp_path / "lists" / "feature_config.json").write_text(json.dumps({"feature_params": {"sample_rate": 4000}}))
    manifest = build(clips, tmp_path / "out", list_file=csv_list, sample_rate=None, n_mixtures=4)
    assert manifest["sample_rate"] == 4000 and manifest["n_target_clips"] == 3
    assert read_audio(tmp_path / "out" / "mixture_0000.wav", 4000).shape == (round(DURATION_S * 4000),)
    assert "cry/cry_0.wav" not in (tmp_path / "out" / PARTS_FILE).read_text()


def test_command_line(clips, tmp_path, caplog):
    def argv(out: Path, target_class: str = "babycry") -> list[str]:
        return ["--csv_file", str(clips["csv_file"]), "--data_dir", str(clips["data_dir"]), "--list",
                str(clips["list_file"]), "--target_class", target_class, "--out", str(out), "--n_mixtures", "2",
                "--seed", "0", "--duration", "4", "--ebr", "0", "--sample_rate", str(RATE)]

    assert main(parse_args(argv(tmp_path / "out"))) == 0
    assert read_events_csv(tmp_path / "out" / EVENTS_FILE)[0].file == "mixture_0000.wav"
    assert main(parse_args(argv(tmp_path / "dog", target_class="dog"))) == 1
    assert "no clip of --target_class 'dog'" in caplog.text
    # as a user runs it
    done = subprocess.run([sys.executable, "-m", "tools.soundscapes", *argv(tmp_path / "cli")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "wrote 2 mixtures" in done.stderr
    assert (tmp_path / "cli" / "mixture_0001.wav").read_bytes() == (tmp_path / "out" / "mixture_0001.wav").read_bytes()


def test_reference_events_are_library_events(clips, tmp_path):
    build(clips, tmp_path / "out", n_mixtures=1)
    (event,) = read_events_csv(tmp_path / "out" / EVENTS_FILE)
    assert isinstance(event, Event) and event.duration_s > 0.9


def test_an_interrupted_build_leaves_no_references_and_the_next_build_completes(clips, tmp_path, monkeypatch):
    out = tmp_path / "soundscapes"
    complete = build(clips, out)
    real_write, written = soundscapes.write_audio, []

    def killed_on_the_third(path, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(soundscapes, "write_audio", killed_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        build(clips, out, seed=5)  # a rebuild with another seed, killed part-way
    # no events.csv or parts.csv of the old build beside the new mixtures; the manifest says it is unfinished
    assert sorted(path.name for path in out.iterdir()) == ["manifest.json", "mixture_0000.wav", "mixture_0001.wav"]
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(TuningError, match=r"soundscapes.*: its build was interrupted; run the tools.soundscapes"):
        load_tuning_set(out, out / EVENTS_FILE, "babycry")
    monkeypatch.setattr(soundscapes, "write_audio", real_write)
    assert build(clips, out) == complete  # the re-run clears the unfinished folder (this tool wrote it)
