r"""Accuracy of the whole pipeline (preprocessing -> train -> evaluation) on a real data set.

    python -m bench.bench_accuracy                      # ../shared/data/fsdd10 when present
    python -m bench.bench_accuracy --csv_file X.csv --data_dir wav/ --protocol speaker --heldout 1 2

Two protocols:
  random   the seed's stratified 80/10/10 split (``--split_seed``, per class);
  speaker  folds from the CSV's ``fold`` column (FSDD: one speaker per fold): for each held-out
           fold the evaluation list is that fold; the other folds train, less a tenth of them
           (``--split_seed``) for validation, so the evaluation speaker is never heard in training.
Prints accuracy, macro-F1 and wall time per run and per protocol, and writes them as JSON.
Training settings come from ``--config`` (default configs/fsdd.json: 8 kHz speech, 1 s windows
of 40 mels), feature settings from its ``features`` block; feature flags given here override the
block's (a ``--frontend`` other than the block's replaces the whole block). So a recipe runs end
to end on any CSV with a ``fold`` column, e.g. ESC-50's five folds::

    python -m bench.bench_accuracy --config configs/esc50.json --csv_file data/esc50.csv \
        --data_dir ESC-50/audio --protocol speaker --heldout 1 2 3 4 5

``--baseline`` fits the floor instead of the CNN, on the same features and lists: 40 MFCCs per
frame (DCT-II of the log-mels), their mean and std over the clip (80 numbers), standardised,
then multinomial logistic regression trained on the training list and scored on the
evaluation list.

Bad input (a missing CSV or data folder, a CSV without a ``fold`` column for the speaker protocol,
a ``--heldout`` fold the CSV lacks, a config that is missing or invalid, a ``--set`` item that is
malformed or not the schema's) is refused before any work
with one line naming the file, column or key, and exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from audioclf.config import ConfigError
from audioclf.evaluation import run_evaluation
from audioclf.feature_flags import (add_feature_arguments, block_problems, feature_params_from_flags,
                                    given_feature_flags)
from audioclf.frontend import FeatureParams
from audioclf.listfile import FEATURE_CONFIG, LISTS_DIR, SPLITS, list_path
from audioclf.metadata import MetadataError, read_metadata
from audioclf.preprocess import SPLIT_SEED, PreprocessOptions, run_preprocessing
from audioclf.training import train
from bench.common import feature_folder_name, key_values, write_json
from dataloaders.dataloader import SpectrogramDataset
from utils import Params, setup_logging

REPO = Path(__file__).resolve().parents[1]
FSDD = REPO.parent / "shared" / "data" / "fsdd10"
N_MFCC = 40
USAGE_ERROR = 2  # exit status of a refused input, as argparse's for a bad flag
log = logging.getLogger("bench_accuracy")


class BenchInputError(ValueError):
    """Input the bench cannot run on (a file, a column, a fold); the message says what to pass instead."""


def refuse(message: str) -> int:
    """Print ``message`` as one error line on stderr; the usage-error exit status."""
    print(f"bench_accuracy: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def config_problem(config: Path) -> str | None:
    """Why ``--config`` cannot be used (missing, unreadable, invalid), in one line; None when it loads."""
    try:
        Params(config)
    except FileNotFoundError:
        recipes = ", ".join(sorted(path.name for path in (REPO / "configs").glob("*.json")))
        return f"--config {config}: no such file; pass a training config, e.g. one of configs/ ({recipes})"
    except ConfigError as error:
        return f"--config {config}: " + "; ".join(error.problems) + " (fix the config or pass another --config)"
    except OSError as error:
        return f"--config {config}: cannot read it ({error.strerror}); pass a training config file"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv_file", type=Path, default=FSDD / "metadata.csv")
    parser.add_argument("--data_dir", type=Path, default=FSDD / "wav")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fsdd.json",
                        help="training config; its paths are replaced per run")
    parser.add_argument("--protocol", choices=("random", "speaker", "both"), default="both")
    parser.add_argument("--heldout", nargs="+", default=["1", "2"], help="folds held out in the speaker protocol")
    parser.add_argument("--validate_on_next_fold", action="store_true",
                        help="speaker protocol: validate on the next fold (default: a tenth of the training folds)")
    add_feature_arguments(parser)  # preprocessing's feature flags; not given: the config's "features" block
    parser.add_argument("--split_seed", type=int, default=SPLIT_SEED,
                        help="seed of the random split and of the speaker protocol's validation tenth "
                             "(--set seed=N draws training's random choices only)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                        help='override config keys, e.g. --set model_args={"width":16} mixup_alpha=0.2')
    parser.add_argument("--num_workers", type=int, default=2, help="preprocessing worker processes")
    parser.add_argument("--work_dir", type=Path, default=None, help="where features and checkpoints go (temp)")
    parser.add_argument("--baseline", action="store_true",
                        help="fit the floor (MFCC-40 mean+std, logistic regression) instead of training the CNN")
    parser.add_argument("--verbose", action="store_true", help="log every training epoch")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    problem = config_problem(args.config) or overrides_problem(args)
    if problem:
        raise SystemExit(refuse(problem))
    # refused now, not after preprocessing when a run's config is built from them
    _, problems = block_problems(feature_flags(args))
    if problems:
        parser.error(f'the feature flags (the "features" block of {args.config} with the flags given here): '
                     + "; ".join(problems))
    return args


def overrides_problem(args: argparse.Namespace) -> str | None:
    """Why ``--set`` / ``--epochs`` cannot be applied to the (loadable) ``--config``, in one line; None when they can."""
    try:
        overrides = config_overrides(args)
    except SystemExit as error:  # key_values' message for a malformed KEY=JSON item
        return str(error.code)
    try:
        Params.from_dict({**Params(args.config).to_dict(), **overrides}, source="--set")
    except ConfigError as error:
        return "--set: " + "; ".join(error.problems) + f" (keys and types of {args.config}'s schema: README)"
    return None


def config_overrides(args: argparse.Namespace) -> dict:
    """``--epochs`` and ``--set KEY=JSON`` as a dict."""
    overrides = key_values(args.set, "--set")
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    return overrides


def feature_flags(args: argparse.Namespace) -> dict:
    """The run's feature flags: the config's ``features`` block with the flags given here on top.

    A ``--frontend`` other than the block's replaces the block (its values belong to the other front end).
    """
    block, given = Params(args.config).features, given_feature_flags(args)
    if given.get("frontend", block.get("frontend", "default")) != block.get("frontend", "default"):
        log.info("--frontend %s: the features block of %s (%s) is not used", given["frontend"], args.config, block)
        block = {}
    return {**block, **given}


def run_once(name: str, args: argparse.Namespace, work_dir: Path, validation_folds: list[str],
             evaluation_folds: list[str]) -> dict:
    """Preprocess (cached per feature setting), train and evaluate one split; metrics + seconds."""
    started = time.perf_counter()
    flags = feature_flags(args)
    params = feature_params_from_flags(flags)
    features = work_dir / feature_folder_name(params)  # runs of one feature setting share it; each writes its lists
    lists = work_dir / name / "lists"
    run_preprocessing(PreprocessOptions(
        csv_file=args.csv_file, data_dir=args.data_dir, save_dir=features, params=params, seed=args.split_seed,
        num_workers=args.num_workers, validation_folds=validation_folds, evaluation_folds=evaluation_folds))
    shutil.rmtree(work_dir / name, ignore_errors=True)  # the bench owns its run folders: start clean
    lists.mkdir(parents=True, exist_ok=True)
    for file in [list_path(lists, split).name for split in SPLITS] + [FEATURE_CONFIG]:
        (lists / file).write_bytes((features / LISTS_DIR / file).read_bytes())
    preprocess_seconds = time.perf_counter() - started
    if args.baseline:
        report = baseline_report(lists, features)
        return {"run": name, "validation_folds": validation_folds, "evaluation_folds": evaluation_folds,
                "split_seed": args.split_seed,
                "features": flags, "model": "baseline: MFCC-40 mean+std, logistic regression", **report,
                "preprocess_s": round(preprocess_seconds, 1), "seconds": round(time.perf_counter() - started, 1)}
    config = Params(args.config).to_dict()
    config.update(datapath=str(features), trainlist=str(list_path(lists, "train")),
                  vallist=str(list_path(lists, "validation")), evallist=str(list_path(lists, "evaluation")),
                  checkpoint_dir=str(work_dir / name / "checkpoints"),
                  summaries_dir=str(work_dir / name / "runs"), features=flags,
                  detection_soundscapes=None, detection_reference=None)  # the bench scores clips only
    config.update(config_overrides(args))
    params_config = Params.from_dict(config, source=f"{args.config} ({name})")
    train(params_config, show_progress=False)
    report = run_evaluation(params_config)
    return {"run": name, "validation_folds": validation_folds, "evaluation_folds": evaluation_folds,
            "split_seed": args.split_seed, "features": flags, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "preprocess_s": round(preprocess_seconds, 1), "seconds": round(time.perf_counter() - started, 1)}


def mfcc_statistics(dataset: SpectrogramDataset) -> np.ndarray:
    """Per clip: mean and std over frames of up to 40 MFCCs (DCT-II of the log-mels), ``(N, 2 * n_mfcc)``."""
    rows = []
    for index in range(len(dataset)):
        log_mel = dataset.load(index).astype(np.float64)  # (n_mels, n_frames), dB
        mfcc = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=0)[:N_MFCC]  # (n_mfcc, n_frames)
        rows.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]))
    return np.stack(rows)


def baseline_report(lists: Path, features: Path) -> dict:
    """Logistic regression on MFCC statistics: fit on the training list, score the evaluation list."""
    train_set = SpectrogramDataset(list_path(lists, "train"), features)
    eval_set = SpectrogramDataset(list_path(lists, "evaluation"), features, class_names=train_set.class_names)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    classifier.fit(mfcc_statistics(train_set), train_set.labels.numpy())
    predicted = classifier.predict(mfcc_statistics(eval_set))
    truth = eval_set.labels.numpy()
    return {"accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro"))}


def csv_folds(args: argparse.Namespace) -> list[str]:
    """The CSV's folds in order (``"2"`` before ``"10"``), checking the inputs first; empty when the
    speaker protocol is not run. BenchInputError for a missing CSV or data folder, an invalid CSV, no
    ``fold`` column for the speaker protocol or a ``--heldout`` fold that is not in it."""
    if not args.csv_file.is_file():
        raise BenchInputError(f"--csv_file {args.csv_file}: no such file; pass the metadata CSV of your clips "
                              "(slice_file_name, classID, class[, fold]) with --csv_file and their folder with "
                              "--data_dir")
    if not args.data_dir.is_dir():
        raise BenchInputError(f"--data_dir {args.data_dir}: no such folder; pass the folder the clips of "
                              f"{args.csv_file} are in")
    try:
        clips, _, _ = read_metadata(args.csv_file)
    except MetadataError as error:
        raise BenchInputError(str(error)) from None
    if args.protocol == "random":
        return []
    if clips and clips[0].fold is None:
        raise BenchInputError(f"{args.csv_file} has no 'fold' column, which --protocol {args.protocol} holds out "
                              "(e.g. one speaker per fold); add one, or pass --protocol random")
    folds = sorted({clip.fold for clip in clips}, key=lambda fold: (len(fold), fold))
    unknown = [fold for fold in args.heldout if fold not in folds]
    if unknown:
        raise BenchInputError(f"--heldout {' '.join(unknown)}: no such fold in the 'fold' column of {args.csv_file} "
                              f"(its folds: {' '.join(folds)}); hold out some of those")
    return folds


def speaker_runs(args: argparse.Namespace, folds: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """(name, validation folds, evaluation folds) per held-out fold, ``folds`` the CSV's (``csv_folds``).

    Validation is a seeded tenth of the other folds (``--val_fold`` left empty), so every other
    speaker trains; ``--validate_on_next_fold`` validates on the next fold instead.
    """
    runs = []
    for held_out in args.heldout:
        validation = [folds[(folds.index(held_out) + 1) % len(folds)]] if args.validate_on_next_fold else []
        runs.append((f"speaker_heldout_{held_out}", validation, [held_out]))
    return runs


def summarise(protocol: str, runs: list[dict]) -> dict:
    """Mean accuracy / macro-F1 and total time of a protocol's runs."""
    return {"protocol": protocol, "runs": runs,
            "accuracy": sum(r["accuracy"] for r in runs) / len(runs),
            "macro_f1": sum(r["macro_f1"] for r in runs) / len(runs),
            "seconds": round(sum(r["seconds"] for r in runs), 1)}


def run_bench(args: argparse.Namespace) -> list[dict]:
    """Every requested protocol; returns their summaries. BenchInputError (before any work) for bad input."""
    folds = csv_folds(args)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_accuracy_"))
    results = []
    if args.protocol in ("random", "both"):
        results.append(summarise("random", [run_once("random", args, work_dir, [], [])]))
    if args.protocol in ("speaker", "both"):
        results.append(summarise("speaker", [run_once(name, args, work_dir, validation, evaluation)
                                             for name, validation, evaluation in speaker_runs(args, folds)]))
    return results


def print_results(results: list[dict]) -> None:
    """One line per run and per protocol."""
    print(f"\n{'run':<24}{'accuracy':>10}{'macro-F1':>10}{'seconds':>10}")
    for summary in results:
        for run in summary["runs"]:
            print(f"{run['run']:<24}{run['accuracy']:>10.4f}{run['macro_f1']:>10.4f}{run['seconds']:>10.1f}")
        print(f"{'= ' + summary['protocol'] + ' (mean)':<24}{summary['accuracy']:>10.4f}"
              f"{summary['macro_f1']:>10.4f}{summary['seconds']:>10.1f}")


def main(argv: list[str] | None = None) -> int:
    """Run the bench and print/write the results."""
    setup_logging(logging.WARNING)
    args = parse_args(argv)
    if args.verbose:
        logging.getLogger("audioclf.training").setLevel(logging.INFO)
    try:
        results = run_bench(args)
    except BenchInputError as error:
        return refuse(str(error))
    if args.baseline:
        print("\nfloor: MFCC-40 mean+std + logistic regression on the same features and lists (no CNN trained)")
    print_results(results)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
