"""Train a classifier on precomputed log-mel features.

    python train.py --config_path configs/demo.json [--resume]
    torchrun --nproc_per_node=2 train.py --config_path configs/demo.json

See the README for every config key.
"""
from __future__ import annotations

import argparse
import logging
import sys

from audioclf.checkpoint import CheckpointError
from audioclf.config import ConfigError, Params
from audioclf.runtime import setup_logging
from audioclf.training import NonFiniteLossError, train
from models import PretrainedWeightsUnavailable

log = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config_path", required=True, help="JSON config (// comments allowed)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in checkpoint_dir")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars (for logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Load and validate the config, then train; non-zero exit with the reason on failure."""
    setup_logging()
    args = parse_args(argv)
    try:
        params = Params(args.config_path)
        train(params, resume=args.resume, show_progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError, NonFiniteLossError, CheckpointError,
            PretrainedWeightsUnavailable) as error:
        log.error("%s", error)  # a problem with the input: the message says what to do
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
