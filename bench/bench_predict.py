"""Long-recording inference speed on CPU: real-time factor (processing time / audio duration).

Run as a module from the repo root::

    .venv/bin/python -m bench.bench_predict                    # 10-min recording, both models
    .venv/bin/python -m bench.bench_predict --sweep            # + resnet18 threads/batch/layout sweep,
                                                               #   batch norms folded or kept

The recording is the demo's kind (``make_long_recording``: background, confusers, cries),
10 minutes, written once as 16 kHz mono and once as 44.1 kHz stereo (to include resampling).
Two untrained models are timed with ``Predictor.predict_long`` (weights do not change speed):

* ``demo``: ``audiocnn`` (width 32) on 64 mels x 200 frames (2 s windows), the small CNN the
  demo trained before it fine-tuned YAMNet (``configs/demo_cnn.json`` is that CNN at width 16, 1 s);
* ``resnet18`` on the default features, 128 mels x 250 frames (2.5 s windows) at 16 kHz.

Hop = half a window. Goal (from the issue): resnet18 RTF <= 0.05 on 2 cores. The split is
decode (read + mono + resample), features (log-mel) and model; "other" is what is left of the
wall time (slicing windows into batches). Each configuration runs once after an untimed warm-up
on 20 s of audio; the machine's load average is printed, since other jobs on the same CPUs
inflate every number. When the CPUs are shared, OpenMP threads that spin while waiting for
each other slow two-thread runs several-fold; ``OMP_WAIT_POLICY=PASSIVE`` (set in the
environment before Python starts) or ``--threads 1`` avoids that.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: the repo root is not importable, say how to run it instead
    sys.exit("run from the repo root as: python -m bench.bench_predict [flags]")

import numpy as np
import soundfile as sf
import torch

from audioclf.frontend import FeatureParams, write_audio
from audioclf.inference import Predictor
from bench.common import ModelSpec, finish, format_table, machine_info, untrained_checkpoint
from tools.demo_data import make_long_recording

log = logging.getLogger("bench.predict")

RTF_GOAL = 0.05  # resnet18, 2 cores
WARMUP_SECONDS = 20.0


MODELS = (
    ModelSpec("demo (audiocnn 64x200)", "audiocnn", FeatureParams(n_mels=64, n_frames=200), {}),
    ModelSpec("resnet18 (128x250)", "resnet18", FeatureParams(), {}),
)


def write_recordings(folder: Path, seconds: float) -> dict[str, Path]:
    """The demo-style recording as 16 kHz mono, and as 44.1 kHz stereo (written block-wise)."""
    mono16 = folder / "long_16k_mono.wav"
    make_long_recording(mono16, duration_s=seconds, sample_rate=16000, n_events=max(1, int(seconds // 20)), seed=0)
    mono44 = folder / "long_44k_mono.wav"
    make_long_recording(mono44, duration_s=seconds, sample_rate=44100, n_events=max(1, int(seconds // 20)), seed=0)
    stereo44 = folder / "long_44k_stereo.wav"
    with sf.SoundFile(stereo44, "w", samplerate=44100, channels=2, subtype="PCM_16") as out:
        for block in sf.blocks(str(mono44), blocksize=44100 * 10, dtype="float32"):
            out.write(np.stack([block, 0.8 * block], axis=1))
    mono44.unlink()
    excerpt = folder / "warmup.wav"
    audio, rate = sf.read(str(mono16), frames=int(WARMUP_SECONDS * 16000), dtype="float32")
    write_audio(excerpt, audio, rate)
    return {"16k mono": mono16, "44.1k stereo": stereo44, "warmup": excerpt}


def time_one(predictor: Predictor, path: Path, batch_size: int, warmup: Path) -> dict:
    """One timed long-mode pass (after an untimed warm-up); seconds per stage and the RTF."""
    predictor.predict_long(warmup, batch_size=batch_size)
    predictor.timings.__init__()  # reset
    started = time.perf_counter()
    result = predictor.predict_long(path, batch_size=batch_size)
    wall = time.perf_counter() - started
    t = predictor.timings
    return {"audio_s": result.duration_s, "windows": len(result.probabilities), "wall_s": wall,
            "decode_s": t.decode_s, "features_s": t.features_s, "model_s": t.model_s,
            "other_s": wall - t.total_s, "rtf": wall / result.duration_s,
            "ms_per_window_model": 1000 * t.model_s / len(result.probabilities)}


def row(label: str, input_name: str, threads: int, batch: int, channels_last: bool, r: dict) -> list:
    """One table row for a timed run."""
    return [label, input_name, threads, batch, "on" if channels_last else "off", f"{r['audio_s']:.0f}",
            r["windows"], r["decode_s"], r["features_s"], r["model_s"], r["other_s"], r["wall_s"],
            f"{r['rtf']:.4f}", f"{r['ms_per_window_model']:.1f}"]


HEADERS = ["model", "input", "threads", "batch", "ch_last", "audio s", "windows", "decode s", "features s",
           "model s", "other s", "total s", "RTF", "model ms/win"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="recording length (default 10)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all CPUs)")
    parser.add_argument("--batch_size", type=int, default=32, help="windows per model call (default 32)")
    parser.add_argument("--channels_last", choices=("on", "off"), default="on",
                        help="channels-last model/input layout (default on)")
    parser.add_argument("--sweep", action="store_true",
                        help="also sweep resnet18 over threads, batch size and layout (on 2 minutes of audio)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    channels_last = args.channels_last == "on"
    info = machine_info()
    print(f"machine: {info['cpu_count']} CPUs, torch {info['torch']} with {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f} (other jobs on these CPUs slow every number)")
    results: dict = {"machine": info, "load_average_start": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as scratch:
        recordings = write_recordings(Path(scratch), args.minutes * 60)
        rows = []
        for spec in MODELS:
            predictor = Predictor(untrained_checkpoint(spec), "cpu", channels_last=channels_last)
            for input_name in ("16k mono", "44.1k stereo"):
                r = time_one(predictor, recordings[input_name], args.batch_size, recordings["warmup"])
                rows.append(row(spec.label, input_name, args.threads, args.batch_size, channels_last, r))
                results["runs"].append({"model": spec.label, "input": input_name, "threads": args.threads,
                                        "batch_size": args.batch_size, "channels_last": channels_last, **r})
        print(format_table(HEADERS, rows))
        resnet = [r for r in results["runs"] if r["model"].startswith("resnet18")]
        worst = max(r["rtf"] for r in resnet)
        print(f"\nresnet18 RTF {worst:.4f} (worst input) vs goal <= {RTF_GOAL}: "
              f"{'met' if worst <= RTF_GOAL else 'MISSED'}")

        if args.sweep:
            excerpt = Path(scratch) / "two_minutes.wav"
            audio, rate = sf.read(str(recordings["16k mono"]), frames=120 * 16000, dtype="float32")
            write_audio(excerpt, audio, rate)
            spec = MODELS[1]
            sweep_rows = []
            for threads in sorted({1, args.threads}):
                torch.set_num_threads(threads)
                for layout in (False, True):
                    predictor = Predictor(untrained_checkpoint(spec), "cpu", channels_last=layout)
                    for batch in (8, 32, 64):
                        r = time_one(predictor, excerpt, batch, recordings["warmup"])
                        sweep_rows.append(row(spec.label, "16k mono 2 min", threads, batch, layout, r))
                        results.setdefault("sweep", []).append(
                            {"threads": threads, "batch_size": batch, "channels_last": layout, **r})
            torch.set_num_threads(args.threads)
            print("\nresnet18 sweep:\n" + format_table(HEADERS, sweep_rows))
            print("\nbatch norms folded into the convs (Predictor's default) against kept, model seconds:")
            for spec in MODELS:
                seconds = {}
                for fold in (False, True):
                    predictor = Predictor(untrained_checkpoint(spec), "cpu", channels_last=channels_last,
                                          fold_batch_norm=fold)
                    seconds[fold] = time_one(predictor, excerpt, args.batch_size, recordings["warmup"])["model_s"]
                results.setdefault("fold_batch_norm", []).append(
                    {"model": spec.label, "kept_model_s": seconds[False], "folded_model_s": seconds[True]})
                print(f"  {spec.label}: kept {seconds[False]:.2f} s, folded {seconds[True]:.2f} s, "
                      f"{seconds[False] / seconds[True]:.2f}x")
    return finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
