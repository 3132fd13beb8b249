"""Evaluate a trained checkpoint on the config's evaluation list.

    python evaluation.py --config_path configs/demo.json
    python evaluation.py --config_path configs/demo.json --checkpoint PATH --target_class babycry

Loads ``<checkpoint_dir>/model_best.pth.tar`` (or ``--checkpoint``), rebuilds the model from the
checkpoint, and writes ``<checkpoint_dir>/scores/``: score.txt, probabilities.csv, report.txt,
metrics.json, confusion_matrix.png and, for detection (a binary task or a target class),
roc_curve.png, pr_curve.png and operating_point.json. File formats: ``audioclf/evaluation.py``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from audioclf.checkpoint import CheckpointError
from audioclf.config import ConfigError, Params
from audioclf.evaluation import run_evaluation, summary_text
from audioclf.runtime import setup_logging

log = logging.getLogger("evaluation")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", required=True, help="JSON config (the one used for training)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to evaluate (default: <checkpoint_dir>/model_best.pth.tar)")
    parser.add_argument("--target_class", default=None,
                        help="class to report detection metrics and a threshold for (default: config's "
                             "target_class; class 1 of a binary task)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars (for logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Evaluate and print accuracy, macro-F1 and where the report is; non-zero exit with the reason on failure."""
    setup_logging()
    args = parse_args(argv)
    try:
        params = Params(args.config_path)
        metrics = run_evaluation(params, checkpoint_path=args.checkpoint, target_class=args.target_class,
                                 show_progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError, CheckpointError) as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        return 130
    print(summary_text(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
