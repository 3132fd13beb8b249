"""Preprocessing throughput: the seed's serial approach vs ``run_preprocessing`` vs the per-clip floor.

Run as a module from the repo root (so ``audioclf`` imports without any ``sys.path`` edits)::

    .venv/bin/python -m bench.bench_preprocess                  # two generated sets (default)
    .venv/bin/python -m bench.bench_preprocess --csv_file ../shared/data/fsdd10/metadata.csv \\
        --data_dir ../shared/data/fsdd10/wav --limit 1000 --json runs/bench/fsdd10.json

The methods run on the same clips, after one untimed warm-up pass each over a few clips and
after every file has been read once (page cache warm for all methods alike):

* ``reference``: the seed's approach, serial in one process with torch's default threads:
  ``librosa.load(path, sr=...)`` of the whole clip, a ``MelSpectrogram`` built per clip,
  ``AmplitudeToDB``, then cut / zero-pad to ``n_frames``, ``np.save``. It is timed a second
  time with one torch thread, as a diagnostic: on a busy machine torch's threads spin-wait.
* ``ours``: ``run_preprocessing`` with ``--workers`` processes into a fresh folder, list
  writing included (its progress bar goes to a buffer, not the terminal).
* ``floor``: the work no implementation can skip, one thread, one process: read only the needed
  frames (soundfile), resample (soxr), log-mel (one prebuilt transform); nothing written.

Goals (from the issue): ours >= 0.8 x workers x floor; ours >= 3x reference on the short 8 kHz
set and >= 2.5x on the 5-s 44.1 kHz set. Wall-clock ratios assume idle CPUs, so diagnostics
follow: the floor run on a pool of ``workers`` processes (how far the machine scales at all),
CPU time per clip, and the share of a core the single-threaded floor got (other load shows
there). Peak RSS of ``ours`` is measured on N and 4N clips, in separate untimed runs, to show
memory does not grow with the number of clips.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path

if not __package__:  # run as a file: the repo root is not importable, say how to run it instead
    sys.exit("run from the repo root as: python -m bench.bench_preprocess [flags]")

import librosa
import numpy as np
import torch
import torchaudio

from audioclf.frontend import FeatureExtractor, FeatureParams, read_audio
from audioclf.preprocess import PreprocessOptions, run_preprocessing
from bench.common import (ClipSet, PeakRSS, Timing, best_timings, clip_set_from_csv, format_table, machine_info,
                          subset_csv, warm_page_cache, write_json, write_synthetic_clips)

log = logging.getLogger("bench.preprocess")

WARMUP_CLIPS = 8
FLOOR_GOAL = 0.8  # ours >= FLOOR_GOAL x workers x floor


@dataclass(frozen=True)
class SetSpec:
    """A generated clip set and the ours/reference speed-up the issue asks for on it."""

    name: str
    n_clips: int
    sample_rate: int
    channels: int
    seconds: tuple[float, float]
    reference_goal: float


DEFAULT_SETS = (
    SetSpec("short-8k-mono", 400, 8000, 1, (0.3, 1.5), reference_goal=3.0),
    SetSpec("5s-44k-stereo", 120, 44100, 2, (5.0, 5.0), reference_goal=2.5),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv_file", type=Path, help="bench this metadata CSV instead of the generated sets")
    parser.add_argument("--data_dir", type=Path, help="with --csv_file: folder its slice_file_name is relative to")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N clips of each set")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes for ours")
    parser.add_argument("--repeats", type=int, default=1, help="best of R timed runs per method")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--scratch_dir", type=Path, default=None,
                        help="where generated clips and every method's outputs go (default: the system temp "
                             "dir); e.g. /dev/shm to take the disk out of the comparison")
    args = parser.parse_args(argv)
    if (args.csv_file is None) != (args.data_dir is None):
        parser.error("--csv_file and --data_dir go together")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


# ---------------------------------------------------------------------------------------
# The three methods
# ---------------------------------------------------------------------------------------

def run_reference(files: list[Path], params: FeatureParams, out_dir: Path) -> None:
    """The seed's per-clip loop: whole-clip librosa load, fresh MelSpectrogram, dB, cut/pad, save."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(files):
        y, sr = librosa.load(path, sr=params.sample_rate)  # librosa's default resampler (soxr_hq)
        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sr, n_fft=params.n_fft, win_length=int(sr * params.window_ms / 1000),
            hop_length=int(sr * params.hop_ms / 1000), n_mels=params.n_mels)
        spectrogram = torchaudio.transforms.AmplitudeToDB()(mel(torch.from_numpy(y))).numpy()  # (n_mels, T)
        if spectrogram.shape[1] >= params.n_frames:
            spectrogram = spectrogram[:, : params.n_frames]
        else:
            spectrogram = np.pad(spectrogram, ((0, 0), (0, params.n_frames - spectrogram.shape[1])))
        np.save(out_dir / f"{index:06d}.npy", spectrogram)


def run_ours(csv_file: Path, data_dir: Path, params: FeatureParams, workers: int, save_dir: Path) -> int:
    """``run_preprocessing`` into ``save_dir``; returns how many features were written."""
    options = PreprocessOptions(csv_file=csv_file, data_dir=data_dir, save_dir=save_dir, params=params,
                                num_workers=workers)
    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar; same cost, no terminal noise
        outcome = run_preprocessing(options)
    return sum(result.status == "written" for result in outcome["results"])


def run_floor(files: list[Path], extractor: FeatureExtractor) -> None:
    """Read only the needed frames, resample, log-mel; nothing else (caller sets 1 thread)."""
    for path in files:
        audio = read_audio(path, extractor.params.sample_rate, max_samples=extractor.params.n_samples)
        extractor.waveform_to_feature(audio)


_pool_extractor: FeatureExtractor | None = None


def _init_floor_worker(params: FeatureParams) -> None:
    global _pool_extractor
    torch.set_num_threads(1)
    _pool_extractor = FeatureExtractor(params)


def _floor_share(files: list[Path]) -> None:
    run_floor(files, _pool_extractor)


def run_parallel_floor(pool: Pool, files: list[Path], workers: int) -> None:
    """The floor on an already started pool, one equal share of the clips per worker.

    Nothing but the floor's work runs in parallel, so ``parallel floor / (workers x floor)`` is
    how well this machine scales to ``workers`` processes at all (shared cores, other load).
    """
    pool.map(_floor_share, [files[i::workers] for i in range(workers)], chunksize=1)


@contextlib.contextmanager
def torch_threads(n_threads: int):
    """Temporarily set torch's intra-op thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------
# One set
# ---------------------------------------------------------------------------------------

def time_methods(clip_set: ClipSet, params: FeatureParams, workers: int, repeats: int,
                 fresh_dir: Callable[[str], Path]) -> tuple[dict[str, Timing], int]:
    """Warm up, then time every method on all of ``clip_set``; also returns how many ours wrote."""
    files = clip_set.files
    warmup_csv = subset_csv(clip_set, WARMUP_CLIPS, fresh_dir("warmup").with_suffix(".csv"))
    extractor = FeatureExtractor(params)
    written = []

    def reference_1thread() -> None:  # diagnostic: the seed's loop without intra-op threading
        with torch_threads(1):
            run_reference(files, params, fresh_dir("reference"))

    def floor() -> None:
        with torch_threads(1):
            run_floor(files, extractor)

    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with context.Pool(workers, initializer=_init_floor_worker, initargs=(params,)) as floor_pool:
        # Untimed warm-up of each method (imports, lazy init, allocator, page cache of the outputs).
        run_reference(files[:WARMUP_CLIPS], params, fresh_dir("reference"))
        run_ours(warmup_csv, clip_set.data_dir, params, workers, fresh_dir("ours"))
        with torch_threads(1):
            run_floor(files[:WARMUP_CLIPS], extractor)
        run_parallel_floor(floor_pool, files[:WARMUP_CLIPS], workers)

        timings = best_timings({
            "reference": lambda: run_reference(files, params, fresh_dir("reference")),
            "reference_1thread": reference_1thread,
            "ours": lambda: written.append(run_ours(clip_set.csv_file, clip_set.data_dir, params, workers,
                                                    fresh_dir("ours"))),
            "floor": floor,
            "parallel_floor": lambda: run_parallel_floor(floor_pool, files, workers),
        }, repeats)
    return timings, min(written)


def peak_rss_n_and_4n(clip_set: ClipSet, params: FeatureParams, workers: int,
                      fresh_dir: Callable[[str], Path]) -> dict:
    """Peak RSS of untimed ours runs on the first N and 4N clips (N = a quarter of the set)."""
    memory = {}
    quarter = max(1, len(clip_set.files) // 4)
    for label, count in (("N", quarter), ("4N", min(4 * quarter, len(clip_set.files)))):
        csv_file = subset_csv(clip_set, count, fresh_dir("memory").with_suffix(".csv"))
        with PeakRSS() as peak:
            run_ours(csv_file, clip_set.data_dir, params, workers, fresh_dir("memory"))
        memory[label] = {"clips": count, "peak_rss_total_mib": peak.peak_total_mib,
                         "peak_rss_parent_mib": peak.peak_parent_mib, "peak_rss_worker_mib": peak.peak_child_mib}
    return memory


def _method_result(timing: Timing, n_clips: int, **extra) -> dict:
    return {"wall_s": timing.wall_s, "cpu_s": timing.cpu_s, "clips_per_s": n_clips / timing.wall_s,
            "cpu_ms_per_clip": 1000 * timing.cpu_s / n_clips, **extra}


def bench_set(clip_set: ClipSet, params: FeatureParams, workers: int, repeats: int, scratch: Path,
              reference_goal: float | None) -> dict:
    """Time the methods on ``clip_set``, measure ours' peak RSS on N and 4N clips; a results dict."""
    n_clips = len(clip_set.files)
    warm_page_cache(clip_set.files)
    counter = itertools.count()

    def fresh_dir(kind: str) -> Path:
        return scratch / f"{clip_set.name}-{kind}-{next(counter)}"

    default_threads = torch.get_num_threads()
    timings, written = time_methods(clip_set, params, workers, repeats, fresh_dir)
    if written != n_clips:
        log.warning("%s: ours wrote %d of %d features (the rest were skipped)", clip_set.name, written, n_clips)
    reference, ours, floor = timings["reference"], timings["ours"], timings["floor"]
    reference_1thread, parallel_floor = timings["reference_1thread"], timings["parallel_floor"]
    return {
        "set": clip_set.name,
        "clips": n_clips,
        "audio_seconds": clip_set.audio_seconds,
        "reference": _method_result(reference, n_clips, torch_threads=default_threads),
        "reference_1thread": _method_result(reference_1thread, n_clips, torch_threads=1),
        "ours": _method_result(ours, n_clips, workers=workers, written=written),
        "floor": _method_result(floor, n_clips, torch_threads=1),
        # Its workers' CPU time is not reaped until the pool closes: wall time only.
        "parallel_floor": {"wall_s": parallel_floor.wall_s, "clips_per_s": n_clips / parallel_floor.wall_s,
                           "workers": workers},
        "ours_over_reference": reference.wall_s / ours.wall_s,
        "ours_over_reference_1thread": reference_1thread.wall_s / ours.wall_s,
        "ours_over_workers_floor": floor.wall_s / (workers * ours.wall_s),
        "parallel_floor_over_workers_floor": floor.wall_s / (workers * parallel_floor.wall_s),
        "ours_over_parallel_floor": parallel_floor.wall_s / ours.wall_s,
        # Contention-proof view: CPU the floor spends per clip / CPU ours spends (parent + workers).
        "floor_cpu_over_ours_cpu": floor.cpu_s / ours.cpu_s,
        # Share of one core the single-threaded floor got; well below 1 means other processes competed.
        "floor_core_share": floor.cpu_s / floor.wall_s,
        "goals": {"ours_over_reference": reference_goal, "ours_over_workers_floor": FLOOR_GOAL},
        "memory": peak_rss_n_and_4n(clip_set, params, workers, fresh_dir),
    }


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def _verdict(value: float, goal: float | None) -> str:
    if goal is None:
        return f"{value:.2f}"
    return f"{value:.2f} ({'ok' if value >= goal else 'MISS'} >= {goal:g})"


def render_report(results: list[dict], workers: int, load_before: float, load_after: float) -> str:
    """The printed tables: throughput and goals, CPU-time diagnostics, peak RSS on N and 4N clips."""
    threads = results[0]["reference"]["torch_threads"]
    speed = format_table(
        ("set", "clips", "audio s", "reference/s", "ours/s", "floor/s", "ours/ref", f"ours/({workers}x floor)"),
        [(r["set"], r["clips"], f"{r['audio_seconds']:.1f}",
          r["reference"]["clips_per_s"], r["ours"]["clips_per_s"], r["floor"]["clips_per_s"],
          _verdict(r["ours_over_reference"], r["goals"]["ours_over_reference"]),
          _verdict(r["ours_over_workers_floor"], r["goals"]["ours_over_workers_floor"])) for r in results])
    why = format_table(
        ("set", "ref 1-thread/s", "ours/ref 1-thread", "parallel floor/s", f"par. floor/({workers}x floor)",
         "ours/par. floor", "floor core share"),
        [(r["set"], r["reference_1thread"]["clips_per_s"], r["ours_over_reference_1thread"],
          r["parallel_floor"]["clips_per_s"], r["parallel_floor_over_workers_floor"], r["ours_over_parallel_floor"],
          r["floor_core_share"]) for r in results])
    cpu = format_table(
        ("set", "ref", "ref 1-thread", "ours", "floor", "floor/ours"),
        [(r["set"], r["reference"]["cpu_ms_per_clip"], r["reference_1thread"]["cpu_ms_per_clip"],
          r["ours"]["cpu_ms_per_clip"], r["floor"]["cpu_ms_per_clip"], r["floor_cpu_over_ours_cpu"])
         for r in results])
    memory = format_table(
        ("set", "N clips: total / parent / worker MiB", "4N clips: total / parent / worker MiB"),
        [(r["set"], *(f"{m['clips']}: {m['peak_rss_total_mib']:.0f} / {m['peak_rss_parent_mib']:.0f} / "
                      f"{m['peak_rss_worker_mib']:.0f}" for m in (r["memory"]["N"], r["memory"]["4N"])))
         for r in results])
    return "\n".join([
        f"reference: 1 process, torch default {threads} threads | ours: {workers} worker processes x 1 thread "
        f"| floor: 1 process x 1 thread | {os.cpu_count()} CPUs, load average {load_before:.1f} before, "
        f"{load_after:.1f} after",
        "throughput in clips/s (wall clock, best of the timed runs):",
        speed,
        "",
        "diagnostics: reference with 1 torch thread; the floor run on a pool of the same workers (how far "
        "this machine scales); share of a core the floor got (below ~0.9: other load, wall ratios unreliable):",
        why,
        "",
        "CPU ms per clip (process + reaped workers; robust to other load):",
        cpu,
        "",
        "peak RSS of ours (parent + workers summed / parent / largest worker; shared pages count "
        "in each process); memory is flat when it does not grow from N to 4N clips:",
        memory,
    ])


def main(args: argparse.Namespace) -> dict:
    """Prepare the sets, bench each, print the tables; returns the results."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("audioclf").setLevel(logging.ERROR)  # tiny warm-up sets warn about empty splits
    log.setLevel(logging.INFO)  # one progress line per set
    params = FeatureParams()
    info = machine_info()
    scratch = Path(tempfile.mkdtemp(prefix="bench_preprocess-", dir=args.scratch_dir))
    try:
        if args.csv_file is not None:
            sets = [(clip_set_from_csv(args.csv_file, args.data_dir, args.limit, scratch), None)]
        else:
            sets = [(write_synthetic_clips(scratch / "audio", spec.name, min(spec.n_clips, args.limit or spec.n_clips),
                                           spec.sample_rate, spec.channels, spec.seconds, seed=i),
                     spec.reference_goal) for i, spec in enumerate(DEFAULT_SETS)]
        results = []
        for clip_set, goal in sets:
            log.info("benchmarking %s (%d clips)", clip_set.name, len(clip_set.files))
            results.append(bench_set(clip_set, params, args.workers, args.repeats, scratch, goal))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()[0]
    print(render_report(results, args.workers, info["load_average_1min"], load_after))
    report = {"machine": {**info, "load_average_1min_after": load_after}, "feature_params": params.to_dict(),
              "workers": args.workers, "repeats": args.repeats, "sets": results}
    if args.json is not None:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main(parse_args())
