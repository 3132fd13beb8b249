"""Classify audio files, or detect events in long recordings, with a trained checkpoint.

    python predict.py --checkpoint runs/x/checkpoints/model_best.pth.tar clips/ more.wav list.txt
    python predict.py --checkpoint ... --long data/demo/long.wav \
        --reference data/demo/long_events.csv --target_class babycry
    python predict.py --checkpoint audioset:yamnet clips/            # AudioSet top-k, no training
    python predict.py --checkpoint audioset:yamnet --long night.wav --target_class "Baby cry, infant cry"

Inputs are audio files (any rate, channels, length), folders (searched recursively for audio
files) and ``.txt`` files listing one path per line. Everything the features need comes from
the checkpoint; no training config is read.

Modes: ``--clip`` classifies each file's first clip window (as preprocessing did); ``--file``
scores each file by the mean of its window probabilities over the whole file; ``--long`` slides
windows over the whole file and detects events; the default (auto) uses long mode for files
longer than ``--long_factor`` windows (for a model trained on whole clips: longer than both that
and its ``max_seconds``), clip mode for the others, and file mode for a
pretrained model used as it is (``audioset:yamnet``: YAMNet's own per-file score). Detection
settings not given as flags come from ``<checkpoint dir>/scores/operating_point.json`` when
evaluation wrote one (its long-mode settings, chosen on recordings with ``detection_soundscapes``,
else its clip threshold). Unreadable files are reported and skipped; the exit status is 0 when at
least one file was processed, else 1.

Live: ``--stream -`` reads raw PCM from standard input (or a named pipe) and writes one JSON
line per event start and end as they happen, with long mode's detection rules::

    arecord -f S16_LE -r 16000 -c 1 | python predict.py --checkpoint C --stream - --rate 16000
    ... | python predict.py --onnx babycry.onnx --stream - --format f32le --rate 48000 --channels 2

``--onnx`` runs a model written by ``export.py`` with onnxruntime (no checkpoint needed).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from audioclf.checkpoint import OPERATING_POINT_FILE, SCORES_DIRNAME, CheckpointError
from audioclf.events import (DetectionParams, Event, LOW_THRESHOLD_RATIO, format_comparison, format_events_table,
                             read_events_csv, score_events, write_events_csv)
from audioclf.files import atomic_write_json, check_writable
from audioclf.inference import (LONG_FACTOR, LONG_MODE_KEY, Predictor, align_reference, collect_inputs, detect,
                                format_clip_table, format_metrics, load_operating_point, parse_operating_point,
                                write_clip_csv,
                                write_clip_json, write_events_json, write_windows_csv)
from audioclf.runtime import resolve_device
from audioclf.zeroshot import ZERO_SHOT_PREFIX, is_zero_shot
from models import PretrainedWeightsUnavailable
from audioclf.streaming import (PCM_FORMATS, PcmFormat, StreamDetector, StreamError, read_pcm, stream_summary,
                                write_json_lines)

log = logging.getLogger("predict")
ALL_CLASSES = "all"
OUTPUT_FLAGS = ("output_csv", "output_json", "windows_csv", "events_csv", "events_json", "metrics_json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv`` defaults to ``sys.argv[1:]``); detection defaults come from ``DetectionParams``."""
    defaults = DetectionParams()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files, folders or .txt lists of paths")
    parser.add_argument("--checkpoint",
                        help=f"checkpoint file (e.g. model_best.pth.tar), or {ZERO_SHOT_PREFIX}yamnet for YAMNet's "
                             "AudioSet classes without training (weights: python -m models.convert yamnet)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--long", dest="mode", action="store_const", const="long",
                      help="sliding-window detection for every file")
    mode.add_argument("--clip", dest="mode", action="store_const", const="clip",
                      help="classify every file's first clip window only")
    mode.add_argument("--file", dest="mode", action="store_const", const="file",
                      help=f"score every file by the mean over all its windows (default for {ZERO_SHOT_PREFIX}<model>)")
    parser.set_defaults(mode="auto")
    parser.add_argument("--long_factor", type=float, default=LONG_FACTOR,
                        help="auto mode: files longer than this many windows (and, for whole-clip models, than "
                             "their max_seconds) use long mode")
    parser.add_argument("--top_k", type=int, default=3, help="clip and file mode: classes shown per file")
    parser.add_argument("--output_csv", type=Path, help="clip and file mode: write the top-k classes per file here")
    parser.add_argument("--output_json", type=Path,
                        help="clip and file mode: write top-k and all probabilities here")

    long = parser.add_argument_group("long mode")
    long.add_argument("--hop_seconds", type=float, default=None,
                      help="window hop (default: the operating point's long-mode hop, else half a clip)")
    long.add_argument("--batch_size", type=int, default=32, help="windows (or clips) per model call")
    long.add_argument("--windows_csv", type=Path, help="write per-window probabilities here")
    long.add_argument("--events_csv", type=Path, help="write detected events here")
    long.add_argument("--events_json", type=Path, help="write detected events here (JSON)")
    long.add_argument("--target_class", default=None,
                      help=f"class to detect, or '{ALL_CLASSES}' (default: the operating point's class "
                           f"if <checkpoint dir>/{SCORES_DIRNAME}/{OPERATING_POINT_FILE} exists, else all)")
    from_point = "default: the operating point's long-mode setting, else"
    long.add_argument("--threshold", type=float, default=None,
                      help=f"detection threshold ({from_point} its clip threshold, else {defaults.threshold})")
    long.add_argument("--threshold_low", type=float, default=None,
                      help=f"hysteresis: an event lasts while p >= this ({from_point} {LOW_THRESHOLD_RATIO} x "
                           "threshold)")
    long.add_argument("--median_filter", type=int, default=None,
                      help=f"median filter length in windows, odd, 1 = off ({from_point} {defaults.median_filter})")
    long.add_argument("--min_duration", type=float, default=None,
                      help=f"drop events shorter than this, s, before --edge_trim ({from_point} "
                           f"{defaults.min_duration})")
    long.add_argument("--merge_gap", type=float, default=None,
                      help=f"merge events separated by at most this, s ({from_point} {defaults.merge_gap})")
    long.add_argument("--edge_trim", type=float, default=None,
                      help="move each event's onset later and offset earlier by this, s, at most a quarter of its "
                           f"length: windows hear a sound before it starts and after it ends ({from_point} "
                           f"{defaults.edge_trim})")
    long.add_argument("--reference", type=Path,
                      help="annotations CSV (file, onset[_s], offset[_s], class): print truth vs detections "
                           "and event/segment F1")
    long.add_argument("--reference_class", default=None,
                      help="with --reference and --target_class: the reference's name for the target class, when "
                           "the model calls it otherwise (e.g. babycry for audioset:yamnet's 'Baby cry, infant cry')")
    long.add_argument("--metrics_json", type=Path, help="with --reference: write the scores here")

    live = parser.add_argument_group("live streaming (the long-mode flags above apply too)")
    live.add_argument("--stream", metavar="SOURCE",
                      help="read raw interleaved PCM from SOURCE ('-' = standard input, or a named pipe / file) and "
                           "write one JSON line per event start and end to standard output")
    live.add_argument("--format", dest="sample_format", choices=tuple(PCM_FORMATS), default="s16le",
                      help="PCM sample format: signed 16-bit or 32-bit float, little-endian")
    live.add_argument("--rate", type=int, help="sample rate of the PCM input in Hz (required with --stream)")
    live.add_argument("--channels", type=int, default=1, help="interleaved channels of the PCM input")
    live.add_argument("--onnx", type=Path, help="run this exported model (export.py) with onnxruntime "
                                                "instead of the checkpoint")

    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("--top_k and --batch_size must be >= 1")
    if args.hop_seconds is not None and args.hop_seconds <= 0:
        parser.error("--hop_seconds must be positive")
    if args.reference_class is not None and (args.reference is None or args.target_class in (None, ALL_CLASSES)):
        parser.error("--reference_class needs --reference and a --target_class to rename it to")
    if args.stream is None:
        if not args.inputs:
            parser.error("give INPUT files, folders or lists, or --stream - for live audio")
        if args.onnx is not None:
            parser.error("--onnx runs with --stream only; score files with --checkpoint (the checkpoint the "
                         "ONNX model was exported from)")
        if args.checkpoint is None:
            parser.error("--checkpoint is required")
        return args
    if args.inputs:
        parser.error(f"--stream reads one stream; leave out the INPUT files ({' '.join(args.inputs)})")
    if (args.checkpoint is None) == (args.onnx is None):
        parser.error("--stream needs a model: --checkpoint C or --onnx M (one of them)")
    if args.rate is None:
        parser.error("--stream needs --rate: the sample rate of the PCM input, e.g. --rate 16000")
    try:
        PcmFormat(args.sample_format, args.rate, args.channels).validate()
    except ValueError as error:
        parser.error(str(error))
    return args


def rename_reference_class(reference: list[Event], reference_class: str | None, target_class: str) -> list[Event]:
    """Reference events of ``reference_class`` relabelled as the model's ``target_class``."""
    if reference_class is None:
        return reference
    return [dataclasses.replace(event, class_name=target_class) if event.class_name == reference_class else event
            for event in reference]


def detection_settings(args: argparse.Namespace, class_names: list[str], operating_point: dict | None
                       ) -> dict[str, DetectionParams]:
    """Class name -> detection settings: each flag given, else the operating point's, else the defaults.

    For the operating point's class, its long-mode settings (chosen on recordings) come first, then
    its clip-level threshold; other classes get the defaults.
    """
    if args.target_class in (None, ALL_CLASSES):
        targets = [operating_point["target_class"]] if operating_point and args.target_class is None else class_names
    elif args.target_class in class_names:
        targets = [args.target_class]
    else:
        raise ValueError(f"--target_class {args.target_class!r} is not a class of this model; "
                         f"its classes are: {', '.join(class_names)} (or '{ALL_CLASSES}')")
    settings = {}
    for name in targets:
        base = DetectionParams()
        if operating_point is not None and operating_point["target_class"] == name:
            long_mode = operating_point.get(LONG_MODE_KEY)  # None: no settings chosen on recordings
            base = (long_mode[1] if long_mode is not None
                    else dataclasses.replace(base, threshold=operating_point["threshold"]))
        flags = {"threshold": args.threshold, "threshold_low": args.threshold_low,
                 "median_filter": args.median_filter, "min_duration": args.min_duration, "merge_gap": args.merge_gap,
                 "edge_trim": args.edge_trim}
        given = {key: value for key, value in flags.items() if value is not None}
        settings[name] = dataclasses.replace(base, **given).validate()
    return settings


def long_mode_hop(args: argparse.Namespace, operating_point: dict | None) -> float | None:
    """``--hop_seconds``, else the operating point's long-mode hop, else None (half a clip)."""
    if args.hop_seconds is not None:
        return args.hop_seconds
    if operating_point is not None and operating_point.get(LONG_MODE_KEY) is not None:
        return operating_point[LONG_MODE_KEY][0]
    return None


def describe_settings(settings: dict[str, DetectionParams]) -> str:
    """``babycry p >= 0.800 (stays while >= 0.560)``; classes sharing thresholds are listed together."""
    groups: dict[tuple[float, float], list[str]] = {}
    for name, params in settings.items():
        groups.setdefault((params.threshold, params.low), []).append(name)
    return "; ".join(f"{', '.join(names)} p >= {high:.3f} (stays while >= {low:.3f})"
                     for (high, low), names in groups.items())


def stream(args: argparse.Namespace) -> int:
    """``--stream``: JSON lines of event starts and ends on standard output; 0, or 1 for bad input."""
    try:
        if args.onnx is not None:
            from audioclf.export import OnnxClassifier  # onnxruntime only when asked for

            classifier = OnnxClassifier(args.onnx, threads=args.threads)
            exported = classifier.metadata.operating_point  # operating_point.json's keys, as export.py stored them
            operating_point = (parse_operating_point(exported, classifier.class_names, args.onnx)
                               if exported is not None else None)
        else:
            classifier = Predictor.from_checkpoint(args.checkpoint, resolve_device(args.device))
            operating_point = load_operating_point(args.checkpoint, classifier.class_names)
        settings = detection_settings(args, classifier.class_names, operating_point)
        detector = StreamDetector(classifier, settings, long_mode_hop(args, operating_point))
    except (FileNotFoundError, CheckpointError, PretrainedWeightsUnavailable, ValueError) as error:
        log.error("%s", error)
        return 1
    pcm = PcmFormat(args.sample_format, args.rate, args.channels)
    log.info("%s", stream_summary(detector, pcm, settings))
    name = "standard input" if args.stream == "-" else args.stream
    try:
        source = sys.stdin.buffer if args.stream == "-" else open(args.stream, "rb")
    except OSError as error:
        log.error("cannot read %s: %s", name, error)
        return 1
    try:
        with source:
            n_lines = write_json_lines(detector.run(read_pcm(source, pcm, classifier.params.sample_rate)), sys.stdout)
    except StreamError as error:
        log.error("%s: %s", name, error)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (e.g. | head): nothing left to tell
        return 0
    log.info("end of %s after %.1f s of audio: %d lines", name, detector.n_seen / detector.rate, n_lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run predictions; 0 when at least one input was processed, else 1."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stream is not None:
        return stream(args)
    try:
        for flag in OUTPUT_FLAGS:  # before any work: results are not lost to an output that cannot be written
            if getattr(args, flag):
                check_writable(getattr(args, flag), f"--{flag}")
        predictor = Predictor.from_checkpoint(args.checkpoint, resolve_device(args.device))
    except (FileNotFoundError, CheckpointError, PretrainedWeightsUnavailable, ValueError) as error:
        log.error("%s", error)
        return 1
    if args.mode == "auto" and is_zero_shot(args.checkpoint):
        args.mode = "file"  # a pretrained model's per-file score, as the original gives it
    class_names = predictor.class_names
    operating_point = load_operating_point(args.checkpoint, class_names)
    try:
        settings = detection_settings(args, class_names, operating_point)
        reference = read_events_csv(args.reference) if args.reference else None
        if reference is not None:
            reference = rename_reference_class(reference, args.reference_class, args.target_class)
    except (ValueError, OSError) as error:
        log.error("%s", error)
        return 1

    paths = collect_inputs(args.inputs)
    results = predictor.run(paths, args.mode, args.long_factor, long_mode_hop(args, operating_point),
                            args.batch_size, progress=not args.no_progress)
    for skipped in results.skipped:
        log.warning("skipped %s: %s", skipped.file, skipped.reason)

    if results.clips:
        print(format_clip_table(results.clips, class_names, args.top_k))
        if args.output_csv:
            write_clip_csv(results.clips, class_names, args.top_k, args.output_csv)
        if args.output_json:
            write_clip_json(results.clips, class_names, args.top_k, args.output_json)
    if results.long:
        events = detect(results.long, class_names, settings)
        rules = describe_settings(settings)
        if reference is None:
            for prediction in results.long:
                file_events = [e for e in events if e.file == prediction.file]
                print(f"\n{prediction.file}: {prediction.duration_s:.1f} s, {len(prediction.probabilities)} windows "
                      f"of {prediction.window_s:.2f} s every {prediction.hop_s:.2f} s; {len(file_events)} events "
                      f"({rules})")
                print(format_events_table(file_events))
        else:  # the comparison table below lists every event; one line for the run
            first = results.long[0]
            print(f"\n{len(results.long)} file(s), {sum(p.duration_s for p in results.long) / 60:.1f} min: windows "
                  f"of {first.window_s:.2f} s every {first.hop_s:.2f} s; {len(events)} events ({rules})")
        if args.windows_csv:
            write_windows_csv(results.long, class_names, args.windows_csv)
        if args.events_csv:
            write_events_csv(events, args.events_csv)
        if args.events_json:
            write_events_json(events, args.events_json)
        if reference is not None:
            processed = [prediction.file for prediction in results.long]
            aligned, unmatched = align_reference(reference, processed)
            if unmatched:
                log.warning("reference files not among the long-mode inputs (ignored): %s", ", ".join(unmatched))
            aligned = [e for e in aligned if e.class_name in settings]
            scores = score_events(aligned, events, {p.file: p.duration_s for p in results.long}, list(settings))
            print("\ntrue vs detected events:\n" + format_comparison(aligned, events))
            print(format_metrics(scores))
            if args.metrics_json:
                atomic_write_json(args.metrics_json, scores)
    elif args.reference:
        log.warning("--reference is scored in long mode only; no file was analysed in long mode")

    if results.skipped:
        log.warning("%d of %d inputs skipped (see above)", len(results.skipped), len(paths))
    if results.n_processed == 0:
        log.error("no input could be processed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
