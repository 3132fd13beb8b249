"""Helpers shared by the bench scripts: synthetic clips, fair timing, peak memory, tables.

Nothing here is measured itself; it prepares inputs and reports results.
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import platform
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import torch

from audioclf.classifier import AudioClassifier, constructor_args
from audioclf.files import atomic_write_text
from audioclf.frontend import FeatureParams, write_audio
from audioclf.metadata import refusal_reason
from tools.demo_data import CLASS_NAMES


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipSet:
    """A folder of clips plus the metadata CSV that lists them."""

    name: str
    csv_file: Path
    data_dir: Path
    files: list[Path]  # one per CSV row, in CSV order
    audio_seconds: float


def key_values(items: Sequence[str], flag: str) -> dict:
    """``KEY=JSON`` items as a dict; a clear error for a malformed one."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError("no '='")
            values[key] = json.loads(value)
        except ValueError as error:
            raise SystemExit(f"{flag} {item!r}: expected KEY=JSON ({error})") from None
    return values


def write_synthetic_clips(out_dir: Path, name: str, n_clips: int, sample_rate: int, channels: int,
                          seconds: tuple[float, float], subtype: str = "PCM_16", seed: int = 0) -> ClipSet:
    """Write ``n_clips`` noise+tone WAVs (durations uniform in ``seconds``) and a 2-class CSV."""
    rng = np.random.default_rng(seed)
    data_dir = out_dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    rows, files, total_seconds = [], [], 0.0
    for index in range(n_clips):
        n_samples = int(rng.uniform(*seconds) * sample_rate)
        time_axis = np.arange(n_samples) / sample_rate
        class_id = index % 2  # 0: tone in noise, 1: noise only
        audio = 0.1 * rng.standard_normal((n_samples, channels))
        if class_id == 0:
            frequency = rng.uniform(200.0, 0.4 * sample_rate)
            audio += 0.5 * np.sin(2 * np.pi * frequency * time_axis)[:, None]
        file_name = f"clip_{index:05d}.wav"
        write_audio(data_dir / file_name, np.clip(audio, -1.0, 1.0).astype(np.float32), sample_rate, subtype)
        rows.append((file_name, class_id, ("tone", "noise")[class_id]))
        files.append(data_dir / file_name)
        total_seconds += n_samples / sample_rate
    csv_file = out_dir / f"{name}.csv"
    write_metadata_csv(csv_file, rows)
    return ClipSet(name, csv_file, data_dir, files, total_seconds)


def write_metadata_csv(path: Path, rows: Sequence[tuple[str, int, str]]) -> None:
    """Write a minimal metadata CSV (``slice_file_name, classID, class``)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slice_file_name", "classID", "class"])
        writer.writerows(rows)


def clip_set_from_csv(csv_file: Path, data_dir: Path, limit: int | None, out_dir: Path) -> ClipSet:
    """The first ``limit`` rows of an existing CSV, rewritten to ``out_dir`` so every method sees them."""
    rows = _read_rows(csv_file, limit)
    if not rows:
        raise SystemExit(f"{csv_file} lists no clips")
    for line, row in enumerate(rows, start=2):  # the same path rule as preprocessing
        reason = refusal_reason(row["slice_file_name"])
        if reason:
            raise SystemExit(f"{csv_file} line {line}: {reason} ({row['slice_file_name']})")
    limited_csv = _write_rows(out_dir / f"{csv_file.stem}-first{len(rows)}.csv", rows)
    files = [data_dir / row["slice_file_name"] for row in rows]
    seconds = sum(sf.info(str(path)).duration for path in files)
    return ClipSet(csv_file.parent.name, limited_csv, data_dir, files, seconds)


def subset_csv(clip_set: ClipSet, n_clips: int, out_path: Path) -> Path:
    """A CSV with the first ``n_clips`` rows of ``clip_set``'s CSV."""
    return _write_rows(out_path, _read_rows(clip_set.csv_file, n_clips))


def _read_rows(csv_file: Path, limit: int | None) -> list[dict[str, str]]:
    with open(csv_file, newline="") as handle:
        return list(itertools.islice(csv.DictReader(handle), limit))


def _write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    # A prefix of a CSV may lack some classIDs; renumber them 0..K-1 (contiguous, as the
    # metadata check requires) keeping their order. Labels do not affect the timing.
    new_ids = {old: str(new) for new, old in enumerate(sorted({int(r["classID"]) for r in rows}))}
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "classID": new_ids[int(row["classID"])]} for row in rows)
    return path


@dataclass(frozen=True)
class ModelSpec:
    """A model and the feature parameters it is timed with."""

    label: str
    model_name: str
    params: FeatureParams
    model_args: dict


def untrained_checkpoint(spec: ModelSpec) -> dict:
    """What a checkpoint holds for inference, with random weights (timing only)."""
    torch.manual_seed(0)
    args = constructor_args(spec.model_name, len(CLASS_NAMES), spec.params.n_mels, spec.model_args)
    return {"model": AudioClassifier(**args).state_dict(), "model_args": args, "class_names": list(CLASS_NAMES),
            "feature_params": spec.params.to_dict(),
            "feature_shape": [spec.params.n_mels, spec.params.n_frames]}


def warm_page_cache(paths: Sequence[Path]) -> int:
    """Read every file once so no method pays for cold disk reads; returns bytes read."""
    total = 0
    for path in paths:
        total += len(Path(path).read_bytes())
    return total


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """Wall time and CPU time (this process + children it reaped, e.g. pool workers), seconds."""

    wall_s: float
    cpu_s: float


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_once(run: Callable[[], object]) -> Timing:
    """Wall and CPU time of one call of ``run``."""
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    run()
    return Timing(time.perf_counter() - wall_start, cpu_seconds() - cpu_start)


def best_timings(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    """Fastest (by wall time) of ``repeats`` calls of each run, calling them round-robin.

    Round-robin rather than one method after the other, so slow drifts in other load on the
    machine hit every method alike.
    """
    best = {name: Timing(float("inf"), float("inf")) for name in runs}
    for _ in range(max(1, repeats)):
        for name, run in runs.items():
            best[name] = min(best[name], time_once(run), key=lambda timing: timing.wall_s)
    return best


class PeakRSS:
    """Context manager sampling the RSS of this process and of all its descendants, in MiB.

    ``peak_total_mib`` sums parent + descendants (copy-on-write pages shared after a fork are
    counted once per process, so it overstates real use); ``peak_parent_mib`` is this process,
    ``peak_child_mib`` the largest single descendant (a pool worker).
    """

    def __init__(self, interval_s: float = 0.01):
        self.interval_s = interval_s
        self.peak_total_mib = self.peak_parent_mib = self.peak_child_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            parent = me.memory_info().rss / 2**20
            children = []
            for child in me.children(recursive=True):
                try:
                    children.append(child.memory_info().rss / 2**20)
                except psutil.Error:  # a worker exited between listing and reading
                    pass
            self.peak_total_mib = max(self.peak_total_mib, parent + sum(children))
            self.peak_parent_mib = max(self.peak_parent_mib, parent)
            self.peak_child_mib = max(self.peak_child_mib, max(children, default=0.0))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def machine_info() -> dict:
    """What the numbers depend on: CPUs, torch threads, versions."""
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain-text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(value.ljust(widths[0]) if i == 0 else value.rjust(widths[i]) for i, value in enumerate(row))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(row) for row in cells[1:]])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_json(path: Path, results: dict | list) -> None:
    """Write ``results`` as indented JSON, atomically (parent folders created): an interrupted bench
    leaves the previous file or none, never half a JSON."""
    atomic_write_text(path, json.dumps(results, indent=2, default=str) + "\n")


def finish(results: dict, json_path: Path | None) -> int:
    """End a bench: record and print the load average, write ``results`` to ``json_path`` if given; exit status 0."""
    results["load_average_end"] = os.getloadavg()
    print(f"load average at the end {results['load_average_end'][0]:.1f}")
    if json_path:
        write_json(json_path, results)
    return 0


def feature_folder_name(params: FeatureParams) -> str:
    """``features_<front end>_<hash of every parameter>``: one folder per feature setting, so a reused
    ``--work_dir`` with other feature flags makes new features instead of refusing to mix them."""
    digest = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"features_{params.frontend}_{digest}"
