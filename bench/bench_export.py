"""Which registry backbones export to ONNX (waveform -> probabilities), and how long each takes.

Run as a module from the repo root::

    .venv/bin/python -m bench.bench_export                 # every backbone in the registry
    .venv/bin/python -m bench.bench_export resnet18 audiocnn

Each backbone is built with random weights at its minimum input size (tiny, 8 kHz front end),
exported with ``audioclf.export.export_onnx`` and checked against PyTorch with onnxruntime
(max difference <= 1e-4); a failure prints the exporter's reason, as ``export.py`` would.
"""
from __future__ import annotations

import argparse
import sys
import time

if not __package__:  # run as a file: the repo root is not importable, say how to run it instead
    sys.exit("run from the repo root as: python -m bench.bench_export [models]")

import torch

from audioclf.export import exportable_models
from bench.common import format_table, machine_info
from models import list_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help=f"registry names (default: all: {', '.join(list_models())})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"machine: {machine_info()}")
    rows, failed = [], 0
    for name in args.models or list_models():
        started = time.perf_counter()
        result = exportable_models([name])[name]
        failed += result != "ok"
        rows.append([name, f"{time.perf_counter() - started:.1f}", result])
    print(format_table(["model", "export + check s", "result"], rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
