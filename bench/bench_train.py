"""Is the data path a bottleneck? Real training loop vs the same steps on in-memory tensors.

    python -m bench.bench_train [--model audiocnn] [--model_args JSON] [--n_mels 64] [--n_frames 100]
                                [--batch_sizes 32] [--device auto|cpu|cuda] [--compile off|on|both]
                                [--loader cache|files] [--feature_cache_dtype float32|float16]
                                [--num_workers 0] [--steps 20] [--repeats 3] [--json out.json]

    # on a GPU machine (issue 14's table):
    python -m bench.bench_train --device cuda --model resnet18 --model_args '{}' --n_mels 128 \
        --n_frames 250 --batch_sizes 64 256 --compile both --json gpu.json

For each batch size and compile setting, both measurements run ``audioclf.training.train_one_epoch``
with the same model, batch and augmentation settings, in this process, alternately (best of
``--repeats``), with the device, AMP, channels_last, cuDNN autotuning and torch.compile as
training sets them up:
  real  -- the training data path: the feature cache (``--loader cache``, what training uses
           by default) or one ``.npy`` per clip through a DataLoader (``--loader files``);
  pure  -- the same number of batches, already on the device: forward + backward + step only.
The ratio real / pure is the share of compute speed the data path lets through (goal >= 0.9).
An epoch is ``--steps`` batches of the largest batch size (the same clips for every size).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from audioclf.acceleration import enable_cudnn_autotune, maybe_compile
from audioclf.config import Params
from audioclf.runtime import DistInfo, resolve_device
from audioclf.training import build_data, build_model, build_optimizer, step_options, to_device, train_one_epoch
from bench.common import format_table, machine_info, write_json
from tools.synthetic_features import make_config, make_feature_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="audiocnn")
    parser.add_argument("--model_args", default='{"width": 16}', help="JSON")
    parser.add_argument("--n_mels", type=int, default=64)
    parser.add_argument("--n_frames", type=int, default=100)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (as the config key)")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off", help="torch.compile the model")
    parser.add_argument("--loader", choices=("cache", "files"), default="cache", help="the real loop's data path")
    parser.add_argument("--feature_cache_dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (--loader files)")
    parser.add_argument("--steps", type=int, default=20, help="batches per epoch at the largest batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work_dir", type=Path, default=None, help="where the features go (temp)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def measure(model: nn.Module, loader, params: Params, device: torch.device) -> float:
    """Samples/s of one ``train_one_epoch`` over ``loader``."""
    options = step_options(params, device)
    optimizer = build_optimizer(params, model)
    scaler = torch.amp.GradScaler(device.type, enabled=options.amp_dtype == torch.float16)
    metrics = train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, scaler, options, epoch=1,
                              show_progress=False)
    return metrics["samples_per_s"]


def measure_setting(config: Path, batch_size: int, compiled: bool, args: argparse.Namespace) -> dict:
    """Real and pure throughput at one batch size, compiled or not."""
    params = Params(config)
    params.update({"batch_size": batch_size, "compile": compiled})
    device = resolve_device(params.device)
    enable_cudnn_autotune(device)
    data = build_data(params, DistInfo(), device)
    model, _ = build_model(params, data.train_set, data.window)
    model.to(device)
    if params.channels_last:
        model.to(memory_format=torch.channels_last)
    runner = maybe_compile(model, params.compile)
    options = step_options(params, device)
    pure = [to_device(inputs, targets, options) for inputs, targets in data.train_loader]  # on the device
    measure(runner, pure[:3], params, device)  # warm-up: compilation, cuDNN autotuning, allocator
    measure(runner, data.train_loader, params, device)
    results = {"real": [], "pure": []}
    for _ in range(args.repeats):
        results["real"].append(measure(runner, data.train_loader, params, device))
        results["pure"].append(measure(runner, pure, params, device))
    best = {name: max(values) for name, values in results.items()}
    return {"batch_size": batch_size, "compile": compiled, "device": str(device),
            "amp": str(options.amp_dtype).replace("torch.", "") if options.amp_dtype else "off",
            "steps_per_epoch": len(pure), "loader": type(data.train_loader).__name__,
            "real_samples_per_s": best["real"], "pure_samples_per_s": best["pure"],
            "ratio": best["real"] / best["pure"], "all": results}


def run(args: argparse.Namespace) -> dict:
    """Make the features once (the same clips for every setting), then measure every setting."""
    resolve_device(args.device)  # a device that is not there fails before any feature is written
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_train_"))
    per_class = -(-args.steps * max(args.batch_sizes) // 3)
    features = make_feature_dataset(root, per_class=(per_class, 4, 4), n_mels=args.n_mels, n_frames=args.n_frames)
    config = make_config(root, features, model=args.model, model_args=json.loads(args.model_args),
                         batch_size=max(args.batch_sizes), num_workers=args.num_workers, device=args.device,
                         feature_cache=args.loader == "cache", feature_cache_dtype=args.feature_cache_dtype,
                         spec_augment=True, random_shift=True)
    compile_settings = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    settings = [measure_setting(config, batch_size, compiled, args)
                for batch_size in args.batch_sizes for compiled in compile_settings]
    return {"model": args.model, "model_args": json.loads(args.model_args), "input": [1, args.n_mels, args.n_frames],
            "loader": args.loader, "feature_cache_dtype": args.feature_cache_dtype, "num_workers": args.num_workers,
            "threads": torch.get_num_threads(), "settings": settings, "machine": machine_info()}


def main(argv: list[str] | None = None) -> int:
    """Run and print one row per batch size and compile setting."""
    args = parse_args(argv)
    try:
        result = run(args)
    except ValueError as error:  # e.g. --device cuda on a machine without one
        raise SystemExit(f"bench_train: {error}") from None
    first = result["settings"][0]
    print(f"{result['model']} input {result['input']} on {first['device']} (AMP {first['amp']}, "
          f"{result['threads']} threads), real loop: {first['loader']}, best of {args.repeats}; "
          f"load average {result['machine']['load_average_1min']:.2f}")
    rows = [(setting["batch_size"], "on" if setting["compile"] else "off", setting["steps_per_epoch"],
             f"{setting['real_samples_per_s']:.1f}", f"{setting['pure_samples_per_s']:.1f}", f"{setting['ratio']:.3f}")
            for setting in result["settings"]]
    print(format_table(["batch", "compile", "steps", "real samples/s", "pure samples/s", "real / pure"], rows))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
