"""Loader-only throughput: how many training samples per second can the data path hand over?

    python -m bench.bench_loader [--clips 2048] [--n_mels 128] [--n_frames 250] [--batch_size 128]
                                 [--repeats 3] [--json out.json]

No model runs: each method iterates one shuffled epoch of ``(inputs, labels)`` batches, in
this process, round-robin, best of ``--repeats`` (so drifting load on a shared machine hits
every method alike). Methods:
  files, N workers  -- today's per-file path: SpectrogramDataset (one np.load per clip) +
                       DataLoader, with N worker processes;
  cache DTYPE       -- the feature cache: one memory-mapped file, one gather per batch,
                       a prefetch thread (what training uses with "feature_cache": true).
Features are generated (noise) and sit in the page cache, as on a machine whose RAM holds
them; the cache build time (first use) and the open time of an up-to-date cache are reported.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from bench.common import best_timings, format_table, machine_info, write_json
from dataloaders.dataloader import SpectrogramDataset
from dataloaders.feature_cache import CachedBatchLoader, open_or_build
from tools.synthetic_features import make_feature_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2048, help="training clips (one epoch)")
    parser.add_argument("--n_mels", type=int, default=128)
    parser.add_argument("--n_frames", type=int, default=250)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="DataLoader workers of the files path")
    parser.add_argument("--prefetch", type=int, default=2, help="batches the cache loader's thread prepares ahead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", type=Path, default=None, help="where the features go (temp)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def epoch(loader) -> int:
    """Iterate one epoch; the number of samples seen."""
    count = 0
    for inputs, labels in loader:
        count += len(labels)
    return count


def run(args: argparse.Namespace) -> dict:
    """Make the features, build the caches, then time every method on the same epoch size."""
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    per_class = -(-args.clips // 3)
    features = make_feature_dataset(root, per_class=(per_class, 1, 1), n_mels=args.n_mels, n_frames=args.n_frames)
    dataset = SpectrogramDataset(features / "filenames/train.txt", features)
    build_seconds, open_seconds, caches = {}, {}, {}
    for dtype in ("float32", "float16"):
        started = time.perf_counter()
        open_or_build(dataset.list_file, dataset.datapath, dataset.paths, dtype)
        build_seconds[dtype] = time.perf_counter() - started
        started = time.perf_counter()
        caches[dtype] = open_or_build(dataset.list_file, dataset.datapath, dataset.paths, dtype)  # up to date: fingerprint + open
        open_seconds[dtype] = time.perf_counter() - started
    batches = lambda: BatchSampler(RandomSampler(dataset), args.batch_size, drop_last=False)  # noqa: E731
    methods = {}
    for workers in args.workers:
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0)
        methods[f"files, {workers} workers"] = loader
    for dtype, cache in caches.items():
        methods[f"cache {dtype}"] = CachedBatchLoader(cache, dataset.labels, batches(), prefetch=args.prefetch)
    for loader in methods.values():  # warm-up: worker start-up, first page mappings
        epoch(loader)
    load_before = os.getloadavg()
    timings = best_timings({name: (lambda loader=loader: epoch(loader)) for name, loader in methods.items()},
                           args.repeats)
    rates = {name: len(dataset) / timing.wall_s for name, timing in timings.items()}
    baseline = rates[f"files, {args.workers[0]} workers"] if args.workers else None
    return {"clips": len(dataset), "input": [1, args.n_mels, args.n_frames], "batch_size": args.batch_size,
            "prefetch": args.prefetch, "samples_per_s": rates,
            "cpu_s_per_epoch": {name: timing.cpu_s for name, timing in timings.items()},
            "vs_files": {name: rate / baseline for name, rate in rates.items()} if baseline else {},
            "cache_build_s": build_seconds, "cache_open_s": open_seconds,
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
            "machine": machine_info()}


def main(argv: list[str] | None = None) -> int:
    """Run and print one row per method."""
    args = parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    result = run(args)
    print(f"{result['clips']} clips of {result['input']}, batch {result['batch_size']}, best of {args.repeats}; "
          f"load average before {result['load_average_before'][0]:.2f}, after {result['load_average_after'][0]:.2f} "
          f"on {result['machine']['cpu_count']} CPUs")
    rows = []
    for name, rate in result["samples_per_s"].items():
        cpu_s = result["cpu_s_per_epoch"][name]
        # worker processes are not reaped while timing, so their CPU time is not seen: n/a
        in_process = not name.startswith("files") or name.endswith(" 0 workers")
        rows.append((name, f"{rate:,.0f}", f"{result['vs_files'].get(name, float('nan')):.1f}",
                     f"{cpu_s:.3f}" if in_process else "n/a",
                     f"{result['clips'] / cpu_s:,.0f}" if in_process and cpu_s > 0 else "n/a"))
    print(format_table(["method", "samples/s", "x files", "CPU s/epoch", "samples per CPU s"], rows))
    for dtype in result["cache_build_s"]:
        print(f"cache {dtype}: built in {result['cache_build_s'][dtype]:.2f} s on first use, "
              f"opened in {result['cache_open_s'][dtype]:.3f} s when up to date")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
