"""Tests for audioclf/listfile.py: the split-list format and its error messages."""
from __future__ import annotations

import pytest

from audioclf.listfile import ListEntry, ListFileError, format_line, parse_line, read_list, render_list

AWKWARD_ENTRIES = [
    ListEntry("fold1/clip.npy", 0, "baby_cry"),
    ListEntry("my folder/my clip.npy", 1, "baby cry"),
    ListEntry("it's/a \"quoted\" name.npy", 2, "dog's bark"),
    ListEntry("tab\there.npy", 3, "x"),
    ListEntry("ünïcødé/名前.npy", 4, "class  with  double  spaces"),
    ListEntry("$HOME/*.npy", 5, "glob;chars&"),
]


def test_plain_names_are_written_bare_as_in_the_original_format():
    assert format_line(ListEntry("fold1/a.npy", 3, "baby_cry")) == "fold1/a.npy 3 baby_cry"


def test_names_with_spaces_are_quoted():
    assert format_line(ListEntry("my clip.npy", 0, "baby cry")) == "'my clip.npy' 0 'baby cry'"


@pytest.mark.parametrize("entry", AWKWARD_ENTRIES, ids=lambda entry: entry.feature_file)
def test_one_line_round_trips_exactly(entry):
    assert parse_line(format_line(entry)) == entry


def test_list_file_round_trips_every_entry_in_order(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(render_list(AWKWARD_ENTRIES), encoding="utf-8")

    assert read_list(path) == AWKWARD_ENTRIES
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(AWKWARD_ENTRIES)


def test_blank_lines_are_ignored_but_counted_in_line_numbers(tmp_path):
    path = tmp_path / "validation.txt"
    path.write_text("a.npy 0 cry\n\n   \nb.npy 1 laugh\nbroken line\n", encoding="utf-8")

    with pytest.raises(ListFileError, match=rf"{path}:5: expected '<feature-file.npy> <classID> <class-name>'"):
        read_list(path)
    path.write_text("a.npy 0 cry\n\n   \nb.npy 1 laugh\n", encoding="utf-8")
    assert read_list(path) == [ListEntry("a.npy", 0, "cry"), ListEntry("b.npy", 1, "laugh")]


@pytest.mark.parametrize("line, detail", [
    ("a.npy 0", "expected '<feature-file.npy> <classID> <class-name>'"),
    ("my clip.npy 0 cry", "quote names with spaces"),  # unquoted space: 4 fields
    ("a.npy zero cry", "expected '<feature-file.npy> <classID> <class-name>'"),
    ("a.npy 1.5 cry", "expected"),
    ("'a.npy 0 cry", "cannot parse"),  # unterminated quote
])
def test_malformed_lines_name_file_and_line(tmp_path, line, detail):
    path = tmp_path / "evaluation.txt"
    path.write_text(f"ok.npy 0 cry\n{line}\n", encoding="utf-8")

    with pytest.raises(ListFileError) as error:
        read_list(path)

    message = str(error.value)
    assert message.startswith(f"{path}:2: ")
    assert detail in message and repr(line) in message


def test_missing_list_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessingBabyCrying.py"):
        read_list(tmp_path / "train.txt")


def test_entries_remember_their_line_in_the_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\na.npy 0 cry\n\n  \nb.npy 1 laugh\n")
    assert [entry.line_number for entry in read_list(path)] == [2, 5]
    # The line number is where an entry was read, not part of what it is.
    assert read_list(path) == [ListEntry("a.npy", 0, "cry"), ListEntry("b.npy", 1, "laugh")]
