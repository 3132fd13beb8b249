"""Live streaming cost and latency on one core, and ONNX vs PyTorch speed.

Run as a module from the repo root::

    .venv/bin/python -m bench.bench_stream                 # both models, 10 min + 60 s live each
    .venv/bin/python -m bench.bench_stream --live_seconds 0 --minutes 2   # quick: cost only

For each model (random weights: speed does not depend on them) on the demo-style recording
(``make_long_recording``, 16 kHz mono, s16le):

* **cost**: ``predict.py --stream -`` in a subprocess pinned to one core (``--threads 1``), fed
  the whole recording through a pipe as fast as it reads; CPU seconds per second of audio
  (= the share of one core a live stream uses), after subtracting the same command's start-up
  on 1 s of audio. Goal: <= 5 % of one core with audiocnn.
* **latency**: the same command fed in real time (paced writes of 50 ms) for ``--live_seconds``;
  each JSON line's latency is the wall time from the moment the event's onset (start line) or
  offset (end line) was written to the pipe until the line was read, split into the detector's
  wait in audio time (``stream_s - time_s``, bounded by ``streaming.latency_bound_s``) and the
  processing delay (the rest). The threshold is set to the 90th percentile
  of the model's probability for babycry on the recording, so a random model has events too.
* **ONNX vs PyTorch**: milliseconds per window of ``Predictor.classify_waveforms`` (PyTorch
  front end + model) and the exported model in onnxruntime, one thread, batches of 1 and 32;
  and the streaming cost with ``--onnx``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if not __package__:  # run as a file: the repo root is not importable, say how to run it instead
    sys.exit("run from the repo root as: python -m bench.bench_stream [flags]")

import numpy as np
import soundfile as sf
import torch

from tools.demo_data import CLASS_NAMES, make_long_recording
from audioclf.events import DetectionParams
from audioclf.export import OnnxClassifier, export_onnx
from audioclf.frontend import FeatureParams
from audioclf.inference import Predictor
from audioclf.streaming import latency_bound_s
from bench.common import ModelSpec, finish, format_table, machine_info, untrained_checkpoint

REPO = Path(__file__).resolve().parents[1]
CORE_GOAL = 0.05  # one live stream with audiocnn: <= 5 % of one core
TARGET = "babycry"
# The demo's detection settings (Makefile): 0.1 s hop, 9-window median, merge 0.5 s, min 0.5 s.
HOP_SECONDS = 0.1
DETECTION = DetectionParams(threshold=0.5, median_filter=9, min_duration=0.5, merge_gap=0.5)
CHUNK_SECONDS = 0.05  # live writes


MODELS = (
    ModelSpec("audiocnn (demo, 64x100)", "audiocnn", FeatureParams(n_mels=64, n_frames=100), {}),
    ModelSpec("resnet18 (128x250)", "resnet18", FeatureParams(), {}),
)


def cpu_model() -> str:
    """The CPU's model name (Linux), for the README's figures."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def pin_to_one_core() -> None:
    """preexec_fn: the child runs on one CPU."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def stream_command(checkpoint: Path, threshold: float, onnx: Path | None = None) -> list[str]:
    """``predict.py --stream -`` with the demo's detection settings, one thread, no hysteresis.

    ``--threshold_low`` = ``--threshold``: a random model's probabilities move in a narrow band,
    which the default low threshold (0.7 x) would never leave; and without hysteresis the stated
    latency bound holds for every line, which this bench checks.
    """
    model = ["--onnx", str(onnx)] if onnx else ["--checkpoint", str(checkpoint)]
    command = [sys.executable, "predict.py", *model, "--stream", "-", "--format", "s16le",
               "--rate", "16000", "--channels", "1", "--threads", "1", "--target_class", TARGET,
               "--hop_seconds", str(HOP_SECONDS), "--threshold", f"{threshold:.6f}",
               "--threshold_low", f"{threshold:.6f}",
               "--median_filter", str(DETECTION.median_filter), "--min_duration", str(DETECTION.min_duration),
               "--merge_gap", str(DETECTION.merge_gap), "--edge_trim", str(DETECTION.edge_trim)]
    return command


def cpu_of(command: list[str], pcm: bytes) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, JSON lines) of one run fed ``pcm`` as fast as it reads."""
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(command, input=pcm, capture_output=True, cwd=REPO, preexec_fn=pin_to_one_core,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    after = os.times()
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode()[-2000:])
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return cpu, wall, len(done.stdout.splitlines())


def live_latencies(command: list[str], pcm: bytes, rate: int = 16000) -> list[dict]:
    """Feed ``pcm`` (s16le mono) in real time; every line with its wall-clock latency parts."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=REPO, preexec_fn=pin_to_one_core, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in process.stderr:  # start-up (imports, model) before the clock starts: a monitor starts once
        if b"listening:" in line:
            break
    threading.Thread(target=process.stderr.read, daemon=True).start()
    lines: list[tuple[float, dict]] = []

    def reader() -> None:
        for raw in process.stdout:
            lines.append((time.perf_counter(), json.loads(raw)))

    thread = threading.Thread(target=reader)
    thread.start()
    chunk = int(CHUNK_SECONDS * rate) * 2
    t0 = time.perf_counter()
    for position in range(0, len(pcm), chunk):  # each chunk once a microphone would have captured all of it
        delay = t0 + (position + chunk) / 2 / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        process.stdin.write(pcm[position:position + chunk])
        process.stdin.flush()
    process.stdin.close()
    process.wait()
    thread.join()
    results = []
    end_of_audio = len(pcm) / 2 / rate
    for arrived, record in lines:
        if record["stream_s"] >= end_of_audio - 1e-6:
            continue  # closed by the end of input, not by the detector
        results.append({"event": record["event"], "latency_s": arrived - t0 - record["time_s"],
                        "detector_s": record["stream_s"] - record["time_s"],
                        "processing_s": arrived - t0 - record["stream_s"]})
    return results


def time_per_window(classify, windows: np.ndarray, batch: int, repeats: int = 3) -> float:
    """Best milliseconds per window of ``classify`` over ``windows`` in batches of ``batch``."""
    classify(windows[:batch])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for index in range(0, len(windows), batch):
            classify(windows[index:index + batch])
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(windows)


def summarise(values: list[float]) -> str:
    """``median / max`` in seconds, or ``-``."""
    return f"{np.median(values):.2f} / {max(values):.2f}" if values else "-"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="recording for the cost runs (default 10)")
    parser.add_argument("--live_seconds", type=float, default=60.0, help="real-time run per model (0: skip)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    info = {**machine_info(), "cpu": cpu_model()}
    print(f"machine: {info['cpu_count']} CPUs ({info['cpu']}), torch {info['torch']}; load average "
          f"{os.getloadavg()[0]:.1f} (other jobs on these CPUs slow every number)")
    results: dict = {"machine": info, "load_average_start": os.getloadavg(), "models": []}
    cost_rows, latency_rows, speed_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as scratch:
        scratch = Path(scratch)
        seconds = args.minutes * 60
        recording = scratch / "long.wav"
        make_long_recording(recording, duration_s=seconds, sample_rate=16000, n_events=max(1, int(seconds // 20)))
        pcm = sf.read(str(recording), dtype="int16")[0].astype("<i2").tobytes()
        one_second = pcm[:32000]
        for spec in MODELS:
            checkpoint = untrained_checkpoint(spec)
            checkpoint_path = scratch / f"{spec.model_name}.pth.tar"
            torch.save(checkpoint, checkpoint_path)
            onnx_path = scratch / f"{spec.model_name}.onnx"
            export_onnx(checkpoint, onnx_path)
            predictor = Predictor(checkpoint, "cpu")
            probabilities = predictor.predict_long(recording, hop_seconds=HOP_SECONDS).probabilities
            threshold = float(np.quantile(probabilities[:, CLASS_NAMES.index(TARGET)], 0.9))
            row = {"model": spec.label, "threshold": threshold}
            for backend, onnx in (("PyTorch", None), ("ONNX", onnx_path)):
                command = stream_command(checkpoint_path, threshold, onnx)
                startup_cpu, _, _ = cpu_of(command, one_second)
                cpu, wall, n_lines = cpu_of(command, pcm)
                share = (cpu - startup_cpu) / seconds
                row[backend] = {"cpu_s": cpu, "startup_cpu_s": startup_cpu, "wall_s": wall, "lines": n_lines,
                                "core_share": share, "rtf_wall": wall / seconds}
                cost_rows.append([spec.label, backend, f"{seconds:.0f}", f"{cpu:.1f}", f"{startup_cpu:.1f}",
                                  f"{100 * share:.2f} %", f"{wall / seconds:.4f}", n_lines])
                print("cost so far:", cost_rows[-1], flush=True)
            if args.live_seconds > 0:
                live = live_latencies(stream_command(checkpoint_path, threshold), pcm[:int(args.live_seconds * 32000)])
                start_bound, end_bound = latency_bound_s(spec.params.n_samples / 16000, HOP_SECONDS, DETECTION)
                row["live"] = live
                for kind, bound in (("start", start_bound), ("end", end_bound)):
                    chosen = [r for r in live if r["event"] == kind]
                    latency_rows.append([spec.label, kind, len(chosen), f"{bound:.2f}",
                                         summarise([r["detector_s"] for r in chosen]),
                                         summarise([r["processing_s"] for r in chosen]),
                                         summarise([r["latency_s"] for r in chosen])])
                    print("latency so far:", latency_rows[-1], flush=True)
            onnx_classifier = OnnxClassifier(onnx_path, threads=1)
            windows = np.random.default_rng(0).uniform(-0.3, 0.3, (64, onnx_classifier.metadata.window_samples)
                                                       ).astype(np.float32)

            def pytorch(batch: np.ndarray) -> np.ndarray:  # the same work as the ONNX graph: front end + model
                return predictor.classify_features(predictor.extractor.waveforms_to_features(batch))

            for batch in (1, 32):
                torch_ms = time_per_window(pytorch, windows, batch)
                onnx_ms = time_per_window(onnx_classifier.classify_waveforms, windows, batch)
                row[f"ms_per_window_batch{batch}"] = {"PyTorch": torch_ms, "ONNX": onnx_ms}
                speed_rows.append([spec.label, batch, f"{torch_ms:.2f}", f"{onnx_ms:.2f}", f"{torch_ms / onnx_ms:.2f}"])
            results["models"].append(row)

    print(f"\nstreaming cost, one core, {args.minutes:g} min of 16 kHz s16le through a pipe "
          f"(hop {HOP_SECONDS} s, median {DETECTION.median_filter}):")
    print(format_table(["model", "backend", "audio s", "CPU s", "start-up CPU s", "share of one core",
                        "wall RTF", "lines"], cost_rows))
    audiocnn_share = results["models"][0]["PyTorch"]["core_share"]
    print(f"audiocnn: {100 * audiocnn_share:.2f} % of one core vs goal <= {100 * CORE_GOAL:.0f} %: "
          f"{'met' if audiocnn_share <= CORE_GOAL else 'MISSED'}")
    if latency_rows:
        print(f"\nlatency, live (real-time) input, {args.live_seconds:g} s per model; median / max seconds:")
        print(format_table(["model", "line", "n", "bound (audio)", "detector wait (audio)", "processing",
                            "total (wall)"], latency_rows))
    print("\nmilliseconds per window, one thread (front end + model):")
    print(format_table(["model", "batch", "PyTorch", "ONNX Runtime", "PyTorch / ONNX"], speed_rows))
    return finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
