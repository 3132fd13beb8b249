"""Cry detection in DCASE 2017 task 2-style soundscapes: what each piece of the recipe buys on the demo.

    python -m bench.bench_detection                               # every variant, seed 0
    python -m bench.bench_detection --variants fixed tuned --seeds 0 1 2 --json results.json

Runs the demo pipeline once per variant and seed, through the library's own functions:

    demo data (tools.demo_data) -> preprocessing (per feature setting) -> soundscapes from the
    validation clips (tuning) and the evaluation clips (testing; tools.soundscapes, as make demo
    builds them) -> train -> evaluation (with detection_soundscapes: settings tuned there) ->
    long mode on the evaluation soundscapes with the settings predict.py --long would use

and prints, per variant, the DCASE 2017 task 2 metric on the evaluation soundscapes (event
error rate, F1, onset only, 500 ms collar; false alarms per hour), event-based F1 (onset and
offset collars), recall per event-to-background ratio and the wall time, as the mean and spread
(min..max) over the seeds: no seed is picked. ``--json`` also writes each run, with every
reference event (its clip, EBR, found or not).

Variants (``VARIANTS``) are cumulative, each the previous one plus one piece, on the small CNN of
``--config`` (default configs/demo_cnn.json, what ``make demo`` trained until it fine-tuned YAMNet);
``recipe`` is ``--config`` itself with its own features block (for configs/demo_cnn.json today
``soundscapes``: mixing plus crops of the bench's own soundscapes of the training clips;
``--variants recipe --config configs/demo.json`` is ``make demo``'s YAMNet recipe); ``low_snr``
and ``splice`` are measured dead ends (each is ``mixing`` plus one change), kept to be repeated.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from audioclf.checkpoint import BEST_CHECKPOINT_NAME
from audioclf.config import EVALUATION_KEYS
from audioclf.evaluation import run_evaluation
from audioclf.events import (DCASE2017_ONSET_COLLAR_S, DETECTION_GRID, DetectionGrid, Event, detection_grid, match_events,
                             read_events_csv, score_events)
from audioclf.feature_flags import block_problems, feature_params_from_flags
from audioclf.files import atomic_write_json
from audioclf.inference import (Predictor, WindowPredictions, align_reference, collect_inputs, detect,
                                load_operating_point)
from audioclf.listfile import LISTS_DIR, list_path, read_list
from audioclf.preprocess import PreprocessOptions, run_preprocessing
from audioclf.training import train
from audioclf.tuning import select_detection_params
from bench.common import feature_folder_name, format_table, key_values, machine_info, write_json
from tools.demo_data import TARGET_CLASS, generate_demo_dataset
from tools.soundscapes import EVENTS_FILE, MIXTURE_SECONDS, PARTS_FILE, build_soundscapes
from utils import Params, setup_logging
import predict

REPO = Path(__file__).resolve().parents[1]
RUN_CONFIG, RUN_HISTORY = "bench_config.json", "bench_history.json"  # beside the checkpoints: what --reuse checks
log = logging.getLogger("bench_detection")

# The demo's soundscapes (Makefile): 80 validation mixtures (40 min) tune, 60 evaluation mixtures (30 min) test.
SOUNDSCAPES = {"validation": (80, 1), "evaluation": (60, 2)}  # split -> (mixtures, seed)
TRAIN_SOUNDSCAPES = (240, 3)  # make demo's training soundscapes (train_soundscapes): mixtures, seed
DEMO_CLIPS_PER_CLASS = 80
DEMO_SEED = 0
# Feature settings by name: a config's features block (preprocessing flags without dashes).
FEATURES = {
    "fixed": {"n_mels": 64, "n_frames": 100},
    "whole": {"n_mels": 64, "n_frames": 100, "whole_clips": True, "max_seconds": 10.0},
}
# The issue-11 pieces turned off: the demo recipe before them.
PIECES_OFF = {"crop_frames": None, "background_prob": 0.0, "background_classes": [], "splice_prob": 0.0,
              "detection_soundscapes": None, "detection_reference": None, "train_soundscapes": None,
              "multi_label": False}


@dataclass(frozen=True)
class Variant:
    """One line of the ablation: feature setting, config keys over ``--config``, and what it adds."""

    name: str
    adds: str
    features: str = "fixed"
    config: dict = field(default_factory=dict)
    tune: bool = False  # detection settings tuned on the validation soundscapes (else the clip threshold)
    train_soundscapes: bool = False  # crops of soundscapes of the training clips (else as --config says)


RECIPE = "recipe"  # the variant (and feature setting) that is --config itself
MIXING = {"background_prob": 0.5, "background_classes": ["speech", "dog_bark", "siren", "hum", "noise"],
          "background_snr_min": -6.0, "background_snr_max": 12.0}
LOW_SNR = {"background_prob": 0.8, "background_snr_min": -12.0, "background_snr_max": 6.0}
VARIANTS = (
    Variant("fixed", "demo recipe before issue 11: first 1 s of each clip, clip-level threshold",
            config=PIECES_OFF),
    Variant("tuned", "+ detection settings tuned on validation soundscapes", config=PIECES_OFF, tune=True),
    Variant("whole", "+ whole clips, random 1 s crops", "whole", PIECES_OFF, tune=True),
    Variant("mixing", "+ background mixing (p 0.5, other classes, -6..12 dB)", "whole",
            {**PIECES_OFF, **MIXING}, tune=True),
    Variant("soundscapes", "+ training crops of soundscapes built from the training clips (train_soundscapes)",
            "whole", {**PIECES_OFF, **MIXING}, tune=True, train_soundscapes=True),
    Variant(RECIPE, "--config itself, with its features block", RECIPE, tune=True),
    Variant("low_snr", "+ mixing more often and lower (p 0.8, -12..6 dB: the soundscapes' -6 dB with margin)",
            "whole", {**PIECES_OFF, **MIXING, **LOW_SNR}, tune=True),
    Variant("splice", "+ time splicing (p 0.5): windows where one sound gives way to another", "whole",
            {**PIECES_OFF, **MIXING, "splice_prob": 0.5}, tune=True),
)
VARIANT_NAMES = tuple(variant.name for variant in VARIANTS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo_cnn.json",
                        help="training config the variants start from; its paths are replaced per run")
    parser.add_argument("--variants", nargs="+", choices=VARIANT_NAMES, default=list(VARIANT_NAMES[:4]),
                        help=f"variants to run (default: {' '.join(VARIANT_NAMES[:4])})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (one run each)")
    parser.add_argument("--clips_per_class", type=int, default=DEMO_CLIPS_PER_CLASS, help="demo data size")
    parser.add_argument("--data_dir", type=Path, default=None,
                        help="demo data folder (default: <work_dir>/data; generated when missing or different)")
    parser.add_argument("--n_mixtures", type=int, nargs=2, default=None, metavar=("VALIDATION", "EVALUATION"),
                        help="soundscapes per split (default: make demo's 40 and 60)")
    parser.add_argument("--n_train_mixtures", type=int, default=TRAIN_SOUNDSCAPES[0],
                        help="training soundscapes, for variants with train_soundscapes (default: make demo's)")
    parser.add_argument("--duration", type=float, default=MIXTURE_SECONDS, help="soundscape length (s)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                        help='config keys for every variant, e.g. --set model_args={"width":8}')
    parser.add_argument("--features", nargs="*", default=[], metavar="KEY=JSON",
                        help="preprocessing settings for every variant, e.g. --features n_mels=32")
    parser.add_argument("--num_workers", type=int, default=2, help="preprocessing worker processes")
    parser.add_argument("--work_dir", type=Path, default=REPO / "runs" / "bench_detection",
                        help="data, features, soundscapes and runs (reused when up to date)")
    parser.add_argument("--reuse", action="store_true",
                        help="skip training a run whose checkpoint was trained with this config, but for the keys "
                             "only evaluation reads (evaluation, tuning and detection still run)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


@dataclass
class Bench:
    """The shared inputs of every run: demo data, features per setting, soundscapes."""

    args: argparse.Namespace
    work_dir: Path
    csv_file: Path = None
    audio_dir: Path = None
    features: dict[str, Path] = field(default_factory=dict)
    soundscapes: dict[str, Path] = field(default_factory=dict)

    def prepare_data(self) -> None:
        """Generate (or reuse) the demo data set."""
        data_dir = self.args.data_dir or self.work_dir / "data"
        self.csv_file = generate_demo_dataset(data_dir, self.args.clips_per_class, DEMO_SEED)
        self.audio_dir = data_dir / "audio"

    def feature_dir(self, name: str) -> Path:
        """Features of setting ``name`` (preprocessed on first use; preprocessing reuses finished clips)."""
        if name not in self.features:
            params = feature_params_from_flags(self.feature_block(name))
            save_dir = self.work_dir / feature_folder_name(params)  # a kept --work_dir: one folder per setting
            run_preprocessing(PreprocessOptions(csv_file=self.csv_file, data_dir=self.audio_dir, save_dir=save_dir,
                                                params=params,
                                                num_workers=self.args.num_workers))
            self.features[name] = save_dir
            self.check_same_split(save_dir)
        return self.features[name]

    def feature_block(self, name: str) -> dict:
        """The ``features`` block of setting ``name`` with ``--features`` on top (checked as a config's block)."""
        base = Params(self.args.config).features if name == RECIPE else FEATURES[name]
        block, problems = block_problems({**base, **key_values(self.args.features, "--features")})
        if problems:
            raise SystemExit("; ".join(problems))
        return block

    def check_same_split(self, save_dir: Path) -> None:
        """Every feature setting must split the clips alike, or the soundscapes would hold training clips."""
        first = next(iter(self.features.values()))
        for split in ("train", "validation", "evaluation"):
            names = [entry.feature_file for entry in read_list(list_path(save_dir / LISTS_DIR, split))]
            if names != [entry.feature_file for entry in read_list(list_path(first / LISTS_DIR, split))]:
                raise SystemExit(f"{save_dir}: its {split} split differs from {first}'s; the soundscapes "
                                 "are built from one split")

    def soundscape_dir(self, split: str) -> Path:
        """The soundscapes of ``split``'s clips (built once, from the first feature setting's lists)."""
        if split not in self.soundscapes:
            n_mixtures, seed = SOUNDSCAPES[split] if split in SOUNDSCAPES else (self.args.n_train_mixtures,
                                                                                 TRAIN_SOUNDSCAPES[1])
            if self.args.n_mixtures is not None and split in SOUNDSCAPES:
                n_mixtures = self.args.n_mixtures[list(SOUNDSCAPES).index(split)]
            lists = next(iter(self.features.values())) / LISTS_DIR
            out = self.work_dir / "soundscapes" / split
            build_soundscapes(self.csv_file, self.audio_dir, list_path(lists, split), TARGET_CLASS, out,
                              n_mixtures, seed, self.args.duration)
            self.soundscapes[split] = out
        return self.soundscapes[split]


def run_config(bench: Bench, variant: Variant, seed: int, features: Path) -> Params:
    """The variant's training config for ``seed``, its paths in the work folder."""
    config = Params(bench.args.config).to_dict()
    run_dir = bench.work_dir / "runs" / f"{variant.name}_seed{seed}"
    lists = features / LISTS_DIR
    config.update(variant.config)
    config.update(features=bench.feature_block(variant.features), datapath=str(features), trainlist=str(list_path(lists, "train")),
                  vallist=str(list_path(lists, "validation")), evallist=str(list_path(lists, "evaluation")),
                  checkpoint_dir=str(run_dir / "checkpoints"), summaries_dir=str(run_dir / "tensorboard"),
                  seed=seed, target_class=TARGET_CLASS, resume=False)
    overrides = key_values(bench.args.set, "--set")
    wanted = variant.train_soundscapes or config.get("train_soundscapes")
    if wanted and overrides.get("train_soundscapes", wanted) is not None:  # the bench's own, of its training clips
        config["train_soundscapes"] = str(bench.soundscape_dir("train"))
    if variant.tune:
        validation = bench.soundscape_dir("validation")
        config.update(detection_soundscapes=str(validation), detection_reference=str(validation / EVENTS_FILE))
    config.update(overrides)
    if bench.args.epochs is not None:
        config["epochs"] = bench.args.epochs
    return Params.from_dict(config, source=f"{bench.args.config} ({variant.name}, seed {seed})")


def event_clips(soundscapes: Path) -> dict[str, tuple[str, float]]:
    """Mixture file name -> (target clip, EBR in dB) of its event, from ``parts.csv``."""
    with open(soundscapes / PARTS_FILE, newline="", encoding="utf-8") as handle:
        return {row["file"]: (row["clip"], float(row["ebr_db"]))
                for row in csv.DictReader(handle) if row["part"] == "event"}


def peak_probability(windows: WindowPredictions, class_id: int, start_s: float, end_s: float) -> float:
    """Highest ``class_id`` probability of the windows overlapping ``[start_s, end_s)`` (0 for none)."""
    starts, ends = windows.bounds
    inside = (starts < end_s) & (ends > start_s)
    return float(windows.probabilities[inside, class_id].max()) if inside.any() else 0.0


def background_peak(windows: WindowPredictions, class_id: int, events: Sequence[Event]) -> float:
    """Highest ``class_id`` probability of the windows that overlap no event (what a false alarm would need)."""
    starts, ends = windows.bounds
    free = np.ones(len(starts), dtype=bool)
    for event in events:
        free &= ~((starts < event.offset_s) & (ends > event.onset_s))
    return float(windows.probabilities[free, class_id].max()) if free.any() else 0.0


def detect_on_soundscapes(checkpoint: Path, soundscapes: Path, grid: DetectionGrid = DETECTION_GRID
                          ) -> tuple[dict, list[dict]]:
    """Long mode over ``soundscapes`` with predict.py's settings for this checkpoint: scores and each reference event.

    The settings are what ``predict.py --long`` uses without flags (the operating point's
    long-mode settings, else its clip threshold), taken from predict itself. ``oracle``: the
    best settings of the tuning grid chosen on these very soundscapes, an upper bound that
    separates what the model sees from what the tuned settings make of it (never a result).
    """
    predictor = Predictor.from_checkpoint(checkpoint)
    operating_point = load_operating_point(checkpoint, predictor.class_names)
    args = predict.parse_args(["--checkpoint", str(checkpoint), "--long", str(soundscapes)])
    settings = predict.detection_settings(args, predictor.class_names, operating_point)
    paths = collect_inputs([soundscapes])
    windows = [predictor.predict_long(path, predict.long_mode_hop(args, operating_point)) for path in paths]
    events = detect(windows, predictor.class_names, settings)
    reference, _ = align_reference(read_events_csv(soundscapes / EVENTS_FILE), paths)
    scores = score_events(reference, events, {w.file: w.duration_s for w in windows}, [TARGET_CLASS])
    oracle_params, oracle = select_detection_params(windows, predictor.class_names, TARGET_CLASS, reference,
                                                    grid.candidates())
    scores["oracle"] = {"settings": asdict(oracle_params), "error_rate": oracle["error_rate"], "f1": oracle["f1"]}
    scores["settings"] = {name: asdict(params) for name, params in settings.items()}
    class_id = predictor.class_names.index(TARGET_CLASS)
    found = {r for r, _ in match_events(reference, events, DCASE2017_ONSET_COLLAR_S, evaluate_offset=False)}
    clips = event_clips(soundscapes)
    by_file = {w.file: w for w in windows}
    per_event = [{"file": Path(event.file).name, "clip": clips[Path(event.file).name][0],
                  "ebr_db": clips[Path(event.file).name][1], "onset_s": event.onset_s, "found": index in found,
                  "peak_probability": peak_probability(by_file[event.file], class_id, event.onset_s, event.offset_s)}
                 for index, event in enumerate(reference)]
    scores["background_peaks"] = sorted((background_peak(w, class_id, [e for e in reference if e.file == w.file])
                                         for w in windows), reverse=True)
    return scores, per_event


def recall_by_ebr(per_event: Sequence[dict]) -> dict[str, float]:
    """Fraction of reference events found, per EBR (``"-6"``, ``"0"``, ``"6"``)."""
    by_ebr: dict[str, list[bool]] = {}
    for event in per_event:
        by_ebr.setdefault(f"{event['ebr_db']:g}", []).append(event["found"])
    return {ebr: sum(found) / len(found) for ebr, found in sorted(by_ebr.items(), key=lambda item: float(item[0]))}


def training_keys(config: dict) -> dict:
    """A run config without the keys only evaluation reads: what ``--reuse`` compares."""
    return {key: value for key, value in config.items() if key not in EVALUATION_KEYS}


def run_once(bench: Bench, variant: Variant, seed: int) -> dict:
    """Train, evaluate and detect one variant with one seed; its figures."""
    features = bench.feature_dir(variant.features)
    evaluation = bench.soundscape_dir("evaluation")
    params = run_config(bench, variant, seed, features)
    started = time.perf_counter()
    run_file = Path(params.checkpoint_dir) / RUN_CONFIG
    best = Path(params.checkpoint_dir) / BEST_CHECKPOINT_NAME
    if bench.args.reuse and best.is_file() and run_file.is_file() and \
            training_keys(json.loads(run_file.read_text())) == training_keys(json.loads(json.dumps(params.to_dict()))):
        history = json.loads(run_file.with_name(RUN_HISTORY).read_text())
        log.warning("%s seed %d: reusing %s (trained with this config)", variant.name, seed, best)
    else:
        shutil.rmtree(Path(params.checkpoint_dir).parent, ignore_errors=True)  # the bench owns its run folders
        history = train(params, show_progress=False)
        history = {"best_epoch": history["best_epoch"], "train_s": round(time.perf_counter() - started, 1)}
        atomic_write_json(run_file.with_name(RUN_HISTORY), history)
        atomic_write_json(run_file, params.to_dict())
    trained = time.perf_counter()
    report = run_evaluation(params)
    evaluated = time.perf_counter()
    scores, per_event = detect_on_soundscapes(Path(params.checkpoint_dir) / BEST_CHECKPOINT_NAME, evaluation,
                                              detection_grid(params.detection_grid))
    dcase = scores["dcase2017"]
    result = {
        "variant": variant.name, "seed": seed, "error_rate": dcase["error_rate"], "f1": dcase["f1"],
        "false_alarms_per_hour": dcase["false_alarms_per_hour"], "event_f1": scores["event_based"]["f1"],
        "deletions": dcase["deletions"], "insertions": dcase["insertions"], "n_reference": dcase["n_reference"],
        "recall_by_ebr": recall_by_ebr(per_event), "clip_accuracy": report["accuracy"],
        "best_epoch": history["best_epoch"], "settings": scores["settings"], "oracle": scores["oracle"],
        "background_peaks": scores["background_peaks"][:5],
        "tuned_on_validation": (report["detection"] or {}).get("long_mode", {}).get("measured", {}).get("dcase2017"),
        "train_s": history["train_s"], "evaluate_s": round(evaluated - trained, 1),
        "detect_s": round(time.perf_counter() - evaluated, 1),
        "seconds": round(history["train_s"] + time.perf_counter() - trained, 1),
        "events": per_event,
    }
    missed = [f"{Path(e['clip']).stem}@{e['ebr_db']:g}dB p{e['peak_probability']:.2f}"
              for e in per_event if not e["found"]]
    log.warning("%s seed %d: ER %.3f F1 %.3f FA/h %.1f (%.0f s; oracle ER %.3f); missed: %s", variant.name, seed,
                result["error_rate"], result["f1"], result["false_alarms_per_hour"], result["seconds"],
                result["oracle"]["error_rate"], ", ".join(missed) or "none")
    return result


METRICS = ("error_rate", "f1", "false_alarms_per_hour", "event_f1", "seconds")


def summarise(variant: Variant, runs: Sequence[dict]) -> dict:
    """Mean, min and max of each metric over the variant's runs (seeds)."""
    summary = {"variant": variant.name, "adds": variant.adds, "seeds": [run["seed"] for run in runs]}
    for metric in METRICS:
        values = [run[metric] for run in runs]
        summary[metric] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
    ebrs = sorted({ebr for run in runs for ebr in run["recall_by_ebr"]}, key=float)
    summary["recall_by_ebr"] = {ebr: statistics.fmean(run["recall_by_ebr"][ebr] for run in runs) for ebr in ebrs}
    return summary


def cell(stats: dict, digits: int) -> str:
    """``mean`` or ``mean (min..max)`` when the runs differ."""
    if stats["min"] == stats["max"]:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ({stats['min']:.{digits}f}..{stats['max']:.{digits}f})"


def format_results(summaries: Sequence[dict]) -> str:
    """The ablation table: one line per variant."""
    rows = [[s["variant"], cell(s["error_rate"], 3), cell(s["f1"], 3), cell(s["false_alarms_per_hour"], 1),
             cell(s["event_f1"], 3), " / ".join(f"{r:.2f}" for r in s["recall_by_ebr"].values()),
             cell(s["seconds"], 0), s["adds"]] for s in summaries]
    headers = ["variant", "ER", "F1", "FA/h", "event F1", "recall -6/0/6 dB", "s", "adds"]
    return format_table(headers, rows)


def run_bench(args: argparse.Namespace) -> dict:
    """Every requested variant and seed; the summaries, runs and machine."""
    args.work_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, args.work_dir)
    bench.prepare_data()
    summaries, runs = [], []
    for variant in (v for v in VARIANTS if v.name in args.variants):
        variant_runs = [run_once(bench, variant, seed) for seed in args.seeds]
        runs.extend(variant_runs)
        summaries.append(summarise(variant, variant_runs))
    return {"machine": machine_info(), "config": str(args.config), "clips_per_class": args.clips_per_class,
            "summaries": summaries, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    """Run the bench, print the table and write the JSON."""
    setup_logging(logging.WARNING)
    logging.getLogger("bench_detection").setLevel(logging.WARNING)
    args = parse_args(argv)
    started = time.perf_counter()
    results = run_bench(args)
    results["total_s"] = round(time.perf_counter() - started, 1)
    print(f"\nDCASE 2017 task 2 metric on {results['runs'][0]['n_reference']} events' evaluation soundscapes; "
          f"mean (min..max) over seeds {args.seeds}; machine: {results['machine']}")
    print(format_results(results["summaries"]))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
