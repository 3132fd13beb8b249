"""Compute one log-mel ``.npy`` per clip of a metadata CSV and write the split lists.

Example::

    python preprocessingBabyCrying.py --csv_file data/demo/metadata.csv \
        --data_dir data/demo/audio --save_dir features/demo

Re-running reuses finished clips (``--overwrite`` recomputes); interrupting never leaves a
truncated file. See the README for the feature formula and the output layout.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from audioclf.frontend import DEFAULT_MAX_SECONDS, FRONTENDS, FeatureParams
from audioclf.metadata import AUTO_GROUPS, GROUP_COLUMN, NO_GROUPS, MetadataError
from audioclf.preprocess import PreprocessError, PreprocessOptions, run_preprocessing
from audioclf.runtime import setup_logging

log = logging.getLogger("preprocess")


# flag -> FeatureParams field
FEATURE_FLAGS = {"samplerate": "sample_rate", "window_size": "window_ms", "hop_size": "hop_ms", "n_fft": "n_fft",
                 "n_mels": "n_mels", "n_frames": "n_frames", "pad_mode": "pad_mode"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (the contract's names and defaults)."""
    defaults = FeatureParams()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv_file", required=True, type=Path, help="metadata CSV (slice_file_name, classID, class)")
    parser.add_argument("--data_dir", required=True, type=Path, help="folder the CSV's slice_file_name is relative to")
    parser.add_argument("--save_dir", default=Path("features"), type=Path, help="output folder (default: features)")
    parser.add_argument("--frontend", choices=FRONTENDS, default="default",
                        help="feature preset: 'yamnet' gives YAMNet's features (16 kHz, 25/10 ms, FFT 512, 64 mels "
                             "125-7500 Hz, ln(magnitude mel + 0.001), 96 frames) for a pretrained yamnet; the flags "
                             "below default to the preset's values")
    # None: the preset's value (the defaults shown are the default front end's).
    parser.add_argument("--samplerate", type=int, default=None,
                        help=f"target sample rate in Hz ({defaults.sample_rate})")
    parser.add_argument("--window_size", type=float, default=None, help=f"STFT window in ms ({defaults.window_ms})")
    parser.add_argument("--hop_size", type=float, default=None, help=f"STFT hop in ms ({defaults.hop_ms})")
    parser.add_argument("--n_fft", type=int, default=None, help=f"FFT size in samples ({defaults.n_fft})")
    parser.add_argument("--n_mels", type=int, default=None, help=f"number of mel bands ({defaults.n_mels})")
    parser.add_argument("--n_frames", type=int, default=None, help=f"frames kept per clip ({defaults.n_frames})")
    parser.add_argument("--pad_mode", choices=("repeat", "zeros"), default=None,
                        help="how clips shorter than n_frames are filled (default: repeat the clip)")
    parser.add_argument("--whole_clips", action="store_true",
                        help="keep each clip whole (up to --max_seconds) as a variable-length (n_mels, T) feature, "
                             "T >= n_frames; training draws random crops of it (default: the first n_frames)")
    parser.add_argument("--max_seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="with --whole_clips: the longest audio kept per clip, in seconds")
    parser.add_argument("--seed", type=int, default=42, help="seed of the stratified split")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--overwrite", action="store_true", help="recompute features that already exist")
    parser.add_argument("--fold_subdirs", action="store_true",
                        help="clips live in <data_dir>/fold<fold>/<slice_file_name> (UrbanSound8K's layout)")
    parser.add_argument("--val_fold", nargs="+", default=[], metavar="FOLD",
                        help="split by the CSV's fold column: these folds form the validation list")
    parser.add_argument("--eval_fold", nargs="+", default=[], metavar="FOLD",
                        help="these folds form the evaluation list (without --val_fold, validation is a "
                             "seeded tenth of the other folds)")
    parser.add_argument("--group_column", default=AUTO_GROUPS, metavar="COLUMN",
                        help=f"keep each value of this CSV column (recording, source file, speaker) in one split; "
                             f"default: the CSV's {GROUP_COLUMN!r} column when it has one (python -m tools.datasets "
                             f"writes it); {NO_GROUPS!r} splits clip by clip")
    parser.add_argument("--device", default=None,
                        help="e.g. cuda: compute the log-mels in batches of 64 there, reading files on "
                             "--num_workers threads (default: CPU worker processes)")
    parser.add_argument("--num_shards", type=int, default=1, help="split the extraction into K jobs")
    parser.add_argument("--shard_index", type=int, default=0, help="which of the K shards this job computes")
    parser.add_argument("--write_lists", action="store_true",
                        help="with --num_shards: (only) write the lists once every shard has finished")
    args = parser.parse_args(argv)
    preset = FeatureParams.preset(args.frontend)
    for flag, field in FEATURE_FLAGS.items():  # a feature flag not given takes the preset's value
        if getattr(args, flag) is None:
            setattr(args, flag, getattr(preset, field))
    return args


def feature_params_from_args(args: argparse.Namespace) -> FeatureParams:
    """The ``--frontend`` preset with the feature flags on top (``parse_args`` filled the ones not given)."""
    return FeatureParams.preset(args.frontend, **{field: getattr(args, flag) for flag, field in FEATURE_FLAGS.items()},
                                max_seconds=args.max_seconds if args.whole_clips else None)


def options_from_args(args: argparse.Namespace) -> PreprocessOptions:
    """Flags -> PreprocessOptions."""
    params = feature_params_from_args(args)
    sharded = args.num_shards > 1
    return PreprocessOptions(
        csv_file=args.csv_file, data_dir=args.data_dir, save_dir=args.save_dir, params=params, seed=args.seed,
        num_workers=max(1, args.num_workers), overwrite=args.overwrite, num_shards=args.num_shards,
        shard_index=args.shard_index, fold_subdirs=args.fold_subdirs, device=args.device,
        extract=not (sharded and args.write_lists),
        write_lists=args.write_lists or not sharded,
        validation_folds=[str(f) for f in args.val_fold], evaluation_folds=[str(f) for f in args.eval_fold],
        group_column=args.group_column)


def main(argv: list[str] | None = None) -> int:
    """Run preprocessing; exit status 1 with a one-line reason when it cannot succeed."""
    setup_logging()
    args = parse_args(argv)
    try:
        run_preprocessing(options_from_args(args))
    except (MetadataError, PreprocessError, ValueError) as error:
        log.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
