"""What every script needs at run time: the device, AMP, seeds and RNG state, logging, and the one
helper that turns batches into probabilities.

Serving (predict, export, streaming) imports this module, never ``audioclf.training`` or
``audioclf.distributed``: nothing here starts a process group, builds a sampler or augments.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


# ---------------------------------------------------------------------------------------
# Devices and AMP
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (torchrun's RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this node

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        """What torchrun set in the environment; a single process when it set nothing (or one process)."""
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        world_size = int(os.environ["WORLD_SIZE"])
        return cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))


def resolve_device(name: str = "auto", info: DistInfo = DistInfo()) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; under torchrun each process takes its LOCAL_RANK's GPU.

    Raises ValueError before any work when CUDA is asked for but missing, when a ``cuda:N`` names
    a GPU that is not visible, when ``cuda:N`` is given under torchrun (every process would share
    GPU N), or when torchrun starts more processes on this node than there are visible GPUs.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise ValueError(f'device "{name}" was asked for, but CUDA is not available; use "auto" or "cpu"')
    visible = torch.cuda.device_count()
    if info.enabled:
        if name != "cuda":
            raise ValueError(f'"device": "{name}" cannot be used under torchrun: every process would use that one '
                             'GPU; use "cuda" (or "auto"), and each process takes the GPU of its LOCAL_RANK')
        if info.local_world_size > visible:
            raise ValueError(f"torchrun started {info.local_world_size} processes on this node, but only {visible} "
                             f"GPU(s) are visible; use --nproc_per_node={visible} (one process per GPU), or set "
                             '"device": "cpu" to run every process on the CPU (gloo)')
        return torch.device("cuda", info.local_rank)
    index = 0 if name == "cuda" else int(name.split(":")[1])
    if index >= visible:
        raise ValueError(f'device "{name}" was asked for, but only {visible} GPU(s) are visible '
                         f"(cuda:0 to cuda:{visible - 1})")
    return torch.device("cuda", index)


def amp_dtype_for(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None (full precision) on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The one AMP context: autocast when ``dtype`` is set, else a no-op."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------
# Seeds and RNG state
# ---------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states, as tensors/ints (loadable with ``weights_only=True``)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    numpy_state = np.random.get_state()
    state["numpy_pos"], state["numpy_gauss"] = int(numpy_state[2]), (int(numpy_state[3]), float(numpy_state[4]))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------
# Logging and running means
# ---------------------------------------------------------------------------------------

def setup_logging(level: int = logging.INFO) -> None:
    """The scripts' one log format: time, level, logger name, message."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


class RunningAverage:
    """Weighted running mean, e.g. of a per-batch loss weighted by batch size."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        """Add ``value`` observed ``n`` times (``value`` is a mean over ``n`` items)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.total += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        """Weighted mean so far; 0.0 before any update."""
        return self.total / self.count if self.count else 0.0

    def __call__(self) -> float:
        return self.avg

    def __repr__(self) -> str:
        return f"RunningAverage(avg={self.avg:.6g}, count={self.count})"


# ---------------------------------------------------------------------------------------
# Batches -> probabilities
# ---------------------------------------------------------------------------------------

def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold each batch norm that directly follows a conv inside an ``nn.Sequential`` into the conv, in place.

    For inference only (``model`` must be in eval mode: the running statistics are what is folded):
    the conv's weight is scaled and a bias added, the batch norm becomes ``nn.Identity``, and the
    outputs stay the same up to float rounding (about 1e-6). That covers every conv of audiocnn and
    yamnet; a batch norm kept as an attribute of a custom block (torchvision's resnets,
    efficientnet_lite) is left as it is. On CPU a channels-last batch norm costs about as much as
    its conv, so folding makes audiocnn's windows ~1.4x faster (``bench/bench_predict.py --sweep``).
    """
    if model.training:
        raise ValueError("fold_batch_norms is for inference: call model.eval() first")
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for conv_name, norm_name in zip(names, names[1:]):
            conv, norm = module._modules[conv_name], module._modules[norm_name]
            if (type(norm) is nn.BatchNorm2d and norm.track_running_stats and isinstance(conv, nn.Conv2d)
                    and conv.out_channels == norm.num_features):
                module._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
                module._modules[norm_name] = nn.Identity()
    return model


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


@dataclass
class BatchOutput:
    """One batch through the model: float32 ``logits`` and ``probabilities`` ``(B, C)``, ``targets`` ``(B,)``."""

    logits: torch.Tensor
    probabilities: torch.Tensor
    targets: torch.Tensor | None  # on the model's device; None for batches without labels


@torch.inference_mode()
def iter_outputs(model: nn.Module, batches: Iterable, device: torch.device, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> Iterator[BatchOutput]:
    """Run ``model`` (in eval mode, no gradients) over ``batches`` and yield each batch's outputs.

    A batch is an input tensor ``(B, 1, n_mels, n_frames)`` or an ``(inputs, targets)`` pair, as a
    DataLoader over a labelled dataset gives. Inputs are copied to ``device`` (channels-last when
    asked), the forward pass runs under the one AMP context, and the output activation is the
    model's own ``probabilities`` (``AudioClassifier``: softmax, or sigmoid for a multi-label head;
    softmax for any other module). Validation, evaluation and prediction all go through here.
    """
    model.eval()
    to_probabilities = getattr(model, "probabilities", _softmax)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in batches:
        inputs, targets = batch if isinstance(batch, (tuple, list)) else (batch, None)
        # float32 on the device: a float16 feature cache's batches cross to the GPU at half the bytes
        inputs = inputs.to(device, non_blocking=True).to(torch.float32, memory_format=memory_format)  # (B, 1, n_mels, T)
        if targets is not None:
            targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(inputs).float()  # (B, C)
        yield BatchOutput(logits, to_probabilities(logits), targets)


def predict_probabilities(model: nn.Module, batches: Iterable, device: torch.device,
                          amp_dtype: torch.dtype | None = None, channels_last: bool = False
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities ``(N, C)`` float32 of every batch, in order, and the targets ``(N,)`` (None if unlabelled)."""
    probabilities, targets = [], []
    for output in iter_outputs(model, batches, device, amp_dtype, channels_last):
        probabilities.append(output.probabilities.cpu())
        if output.targets is not None:
            targets.append(output.targets.cpu())
    if not probabilities:
        raise ValueError("no batches to run the model on")
    labels = torch.cat(targets).numpy() if targets else None
    return torch.cat(probabilities).numpy(), labels
