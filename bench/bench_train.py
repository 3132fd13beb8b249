"""Is the data path a bottleneck? Real training loop vs the same steps on in-memory tensors.

    python -m bench.bench_train [--model audiocnn] [--n_mels 64] [--n_frames 100] [--batch_size 32]
                                [--num_workers 1] [--clips 640] [--repeats 3]

Both measurements run ``audioclf.training.train_one_epoch`` with the same model, batch and
augmentation settings, in this process, alternately (best of ``--repeats``):
  real  -- SpectrogramDataset over ``.npy`` files + DataLoader (workers, as training uses them);
  pure  -- the same number of batches, already in memory: forward + backward + step only.
The ratio real / pure is the share of compute speed the data path lets through (goal >= 0.9).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from audioclf.config import Params
from audioclf.runtime import DistInfo
from audioclf.training import build_data, build_model, build_optimizer, step_options, train_one_epoch
from bench.common import machine_info
from tools.synthetic_features import make_config, make_feature_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="audiocnn")
    parser.add_argument("--model_args", default='{"width": 16}', help="JSON")
    parser.add_argument("--n_mels", type=int, default=64)
    parser.add_argument("--n_frames", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--clips", type=int, default=640, help="training clips (one epoch = clips / batch steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def measure(model: nn.Module, loader, params: Params, device: torch.device) -> float:
    """Samples/s of one ``train_one_epoch`` over ``loader``."""
    optimizer = build_optimizer(params, model)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    metrics = train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, scaler,
                              step_options(params, device), epoch=1, show_progress=False)
    return metrics["samples_per_s"]


def run(args: argparse.Namespace) -> dict:
    """Build the data and model once, then alternate real and pure epochs."""
    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    per_class = args.clips // 3
    features = make_feature_dataset(root, per_class=(per_class, 4, 4), n_mels=args.n_mels, n_frames=args.n_frames)
    config = make_config(root, features, model=args.model, model_args=json.loads(args.model_args),
                         batch_size=args.batch_size, num_workers=args.num_workers, device="auto",
                         spec_augment=True, random_shift=True)
    params = Params(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = build_data(params, DistInfo(), device)
    model, _ = build_model(params, data.train_set)
    model.to(device)
    if params.channels_last:
        model.to(memory_format=torch.channels_last)
    batches = [batch for batch in data.train_loader]  # the same number of full batches, in memory
    results = {"real": [], "pure": []}
    measure(model, batches[:2], params, device)  # warm-up: kernels, allocator
    for _ in range(args.repeats):
        results["real"].append(measure(model, data.train_loader, params, device))
        results["pure"].append(measure(model, batches, params, device))
    best = {name: max(values) for name, values in results.items()}
    return {"model": args.model, "input": [1, args.n_mels, args.n_frames], "batch_size": args.batch_size,
            "num_workers": args.num_workers, "device": str(device), "threads": torch.get_num_threads(),
            "steps_per_epoch": len(batches), "real_samples_per_s": best["real"],
            "pure_samples_per_s": best["pure"], "ratio": best["real"] / best["pure"], "all": results,
            "machine": machine_info()}


def main(argv: list[str] | None = None) -> int:
    """Run and print the two throughputs and their ratio."""
    args = parse_args(argv)
    result = run(args)
    print(f"{result['model']} input {result['input']} batch {result['batch_size']} on {result['device']} "
          f"({result['threads']} threads), DataLoader workers {result['num_workers']}, "
          f"{result['steps_per_epoch']} steps/epoch, best of {args.repeats}")
    print(f"real loop (.npy + DataLoader): {result['real_samples_per_s']:8.1f} samples/s")
    print(f"pure (in-memory tensors):      {result['pure_samples_per_s']:8.1f} samples/s")
    print(f"ratio real / pure:             {result['ratio']:8.3f}   (goal >= 0.9)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
