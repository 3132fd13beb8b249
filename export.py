"""Export a trained checkpoint as an ONNX model from raw waveform windows to class probabilities.

    python export.py --checkpoint runs/demo/checkpoints/model_best.pth.tar --onnx babycry.onnx

The model takes ``waveform`` float32 ``(batch, input_samples)`` (mono, at the checkpoint's
sample rate): the samples a window's frames read, with the STFT context around the window
(``context_samples`` before it; both are in the model's metadata, see audioclf/export.py), and
returns ``probabilities`` ``(batch, n_classes)``; the log-mel front end and the normalisation are
inside. The written model is checked against PyTorch with onnxruntime before it replaces ``--onnx``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from audioclf.checkpoint import CheckpointError, check_required_keys, load_checkpoint
from audioclf.export import OnnxExportError, export_onnx
from audioclf.files import check_writable
from audioclf.inference import LONG_MODE_KEY, exported_operating_point, load_operating_point
from audioclf.runtime import setup_logging
from audioclf.zeroshot import ZERO_SHOT_PREFIX, is_zero_shot, zero_shot_checkpoint
from models import PretrainedWeightsUnavailable

log = logging.getLogger("export")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help=f"checkpoint file (e.g. model_best.pth.tar), or {ZERO_SHOT_PREFIX}yamnet for YAMNet with "
                             "its AudioSet head (weights: python -m models.convert yamnet)")
    parser.add_argument("--onnx", required=True, type=Path, help="ONNX file to write")
    parser.add_argument("--no_check", action="store_true", help="skip the onnxruntime vs PyTorch check")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export; non-zero exit with the reason on failure."""
    setup_logging()
    args = parse_args(argv)
    try:
        check_writable(args.onnx, "--onnx model")  # before the export and its check run
        if is_zero_shot(args.checkpoint):  # audioset:yamnet: the pretrained model with its AudioSet head
            checkpoint = zero_shot_checkpoint(args.checkpoint)
        else:
            checkpoint = check_required_keys(load_checkpoint(args.checkpoint), args.checkpoint)
        point = load_operating_point(args.checkpoint, list(checkpoint["class_names"]))
        operating_point = exported_operating_point(point) if point else None
        metadata = export_onnx(checkpoint, args.onnx, operating_point, check=not args.no_check)
    except (FileNotFoundError, CheckpointError, OnnxExportError, PretrainedWeightsUnavailable, ValueError) as error:
        log.error("%s", error)
        return 1
    log.info("wrote %s: %s, waveform (batch, %d: %d of context before the window) at %d Hz -> probabilities of "
             "%s%s%s", args.onnx, metadata.model_name, metadata.input_samples, metadata.context_samples,
             metadata.sample_rate, ", ".join(metadata.class_names),
             f"; operating point {operating_point['target_class']} >= {operating_point['threshold']:.3f}"
             if operating_point else "",
             " and its long-mode settings" if operating_point and LONG_MODE_KEY in operating_point else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
