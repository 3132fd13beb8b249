r"""Compute one log-mel ``.npy`` per clip of a metadata CSV and write the split lists.

Example::

    python preprocessingBabyCrying.py --csv_file data/demo/metadata.csv \
        --data_dir data/demo/audio --save_dir features/demo

    python preprocessingBabyCrying.py --csv_file data/esc50.csv --data_dir ESC-50/audio \
        --save_dir features/esc50 --config_path configs/esc50.json --val_fold 4 --eval_fold 5

With ``--config_path`` the feature flags come from the config's ``features`` block (the recipe's
preprocessing, which training checks the features against). Re-running reuses finished clips
(``--overwrite`` recomputes); interrupting never leaves a truncated file. See the README for
the feature formula and the output layout.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from audioclf.config import ConfigError, Params
from audioclf.feature_flags import (FEATURE_FLAGS, FIELDS, FeatureFlagConflict, add_feature_arguments,
                                    feature_params_from_flags, given_feature_flags, merge_feature_flags)
from audioclf.frontend import DEFAULT_MAX_SECONDS, FeatureParams
from audioclf.metadata import AUTO_GROUPS, GROUP_COLUMN, NO_GROUPS, MetadataError
from audioclf.preprocess import SPLIT_SEED, PreprocessError, PreprocessOptions, run_preprocessing
from audioclf.runtime import setup_logging

log = logging.getLogger("preprocess")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (the contract's names and defaults), the feature flags resolved.

    Every feature flag comes back filled: as given, else from ``--config_path``'s ``features``
    block, else the ``--frontend`` preset's value.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv_file", required=True, type=Path, help="metadata CSV (slice_file_name, classID, class)")
    parser.add_argument("--data_dir", required=True, type=Path, help="folder the CSV's slice_file_name is relative to")
    parser.add_argument("--save_dir", default=Path("features"), type=Path, help="output folder (default: features)")
    parser.add_argument("--config_path", default=None, type=Path,
                        help="a recipe config: its \"features\" block gives the feature flags (a flag also given "
                             "here must have the block's value, or the preset's for one the block leaves out); paths stay flags")
    add_feature_arguments(parser)
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of the stratified split")
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
    flags = given_feature_flags(args)
    if args.config_path is not None:
        try:
            flags = merge_feature_flags(config_features(args), flags, str(args.config_path))
        except (ConfigError, FileNotFoundError, FeatureFlagConflict) as error:
            parser.error(str(error))
    params = feature_params_from_flags(flags)
    for flag, field in FIELDS.items():  # a feature flag not given takes the block's or the preset's value
        setattr(args, flag, getattr(params, field))
    args.frontend = params.frontend
    args.whole_clips = params.whole_clips
    args.max_seconds = flags.get("max_seconds", DEFAULT_MAX_SECONDS)
    return args


def config_features(args: argparse.Namespace) -> dict:
    """The ``features`` block of ``--config_path`` (validated with the whole config); a warning when
    ``--save_dir`` is not the config's ``datapath``."""
    params = Params(args.config_path)
    if not params.features:
        raise ConfigError(str(args.config_path), ['no "features" block: add one (the feature flags without dashes, '
                                                  'e.g. "features": {"n_mels": 64}) or drop --config_path'])
    if args.save_dir.resolve() != Path(params.datapath).resolve():
        log.warning("--save_dir %s is not the datapath of %s (%s): train.py with that config will not read these "
                    "features", args.save_dir, args.config_path, params.datapath)
    return params.features


def feature_params_from_args(args: argparse.Namespace) -> FeatureParams:
    """The feature parameters of resolved flags (``parse_args`` filled every feature flag)."""
    return feature_params_from_flags({flag: getattr(args, flag) for flag in FEATURE_FLAGS})


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
    except KeyboardInterrupt:  # the features written so far are kept
        log.error("interrupted; %s", "run the same command again to start the overwrite over" if args.overwrite
                  else "run the same command again to continue (finished clips are reused)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
