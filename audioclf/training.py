"""Training: data, model, optimiser, one-epoch loops, checkpoints and resume.

``train(params)`` is what ``train.py`` runs; ``train_one_epoch`` and ``evaluate`` return
dicts of metrics (torchvision references style). One code path serves CPU, one CUDA device
and torchrun/DDP.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, WeightedRandomSampler
from tqdm import tqdm

from audioclf.acceleration import enable_cudnn_autotune, maybe_compile, training_step
from audioclf.augment import (BackgroundMixer, SpecAugment, add_noise, mix_labels, mixup, random_frequency_warp,
                              random_equalization, random_gain, random_lowpass, random_time_shift, random_time_stretch,
                              time_splice)
from audioclf.checkpoint import (CONFIG_FILE, checkpoint_state, latest_checkpoint, list_checkpoints, load_checkpoint,
                                 save_checkpoint, training_weights, unwrap)
from audioclf.classifier import AudioClassifier, constructor_args
from audioclf.ema import WeightAverage
from audioclf.transfer import (apply_freezing, check_features, head_rows, parameter_groups, resolve_normalization,
                               trainable_summary)
from audioclf.config import CONFIG_SCHEMA, EVALUATION_KEYS, Params
from audioclf.files import make_folder
from audioclf.frontend import FeatureParams, LogScale, log_scale_for
from audioclf.distributed import (ShardSampler, all_reduce_sum, barrier, broadcast_object, cleanup_distributed,
                                  init_distributed, sync_buffers)
from audioclf.listfile import FEATURE_CONFIG
from audioclf.runtime import (DistInfo, RunningAverage, amp_dtype_for, autocast, resolve_device, rng_state,
                              seed_everything, set_rng_state)
from audioclf.windows import default_hop, iter_window_outputs, pool_log_softmax, pool_windows
from dataloaders.crops import ConcatCrops, EpochSampler, RandomCrops, padding_for, window_loader
from dataloaders.dataloader import FeatureDataError, SpectrogramDataset, check_compatible, feature_statistics
from dataloaders.feature_cache import CachedBatchLoader, CachedClips, cache_for_dataset
from dataloaders.soundscapes import SoundscapeCrops, load_training_soundscapes
from models import check_input_size, get_model_entry

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------

# Training loaders yield (inputs (B, 1, n_mels, window), labels (B,)); validation loaders the same for
# clips of one window, else a clip's windows (collate_windows: windows (N, 1, n_mels, window), counts, labels).
Loader = CachedBatchLoader | DataLoader


@dataclass
class Data:
    """Datasets, loaders, the training sampler (its epoch is set every epoch) and the windows.

    The model sees ``window`` frames: each training clip gives one random crop of them per epoch
    (the clip whole when it has exactly ``window`` frames); validation scores a clip by the mean
    over its windows, every ``hop`` frames.
    """

    train_set: SpectrogramDataset
    val_set: SpectrogramDataset
    train_loader: Loader
    val_loader: Loader
    train_sampler: EpochSampler
    window: int
    hop: int


def _train_sampler(params: Params, dataset: SpectrogramDataset | ConcatCrops, info: DistInfo):
    if info.enabled:
        if params.balanced_sampling:
            raise ValueError('"balanced_sampling" is not supported under torchrun; use '
                             '"class_weighting": "balanced" instead')
        return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                  seed=params.seed)
    if params.balanced_sampling:
        weights = 1.0 / dataset.class_counts().float().clamp(min=1)
        return WeightedRandomSampler(weights[dataset.labels], num_samples=len(dataset), replacement=True)
    return RandomSampler(dataset)


def loader_generator(params: Params) -> torch.Generator:
    """A DataLoader's own generator. Each new DataLoader iterator draws its workers' base seed from
    it; from the global generator instead, that draw would shift every random number after it,
    and with persistent workers a resumed run makes one iterator more than an uninterrupted run
    (at the epoch it resumes), so it would not end with the same weights. Items are deterministic
    (crops are seeded per clip and epoch), so the workers' seeds themselves change nothing."""
    return torch.Generator().manual_seed(params.seed)


def make_loader(dataset: SpectrogramDataset, batches: BatchSampler, params: Params, info: DistInfo,
                pin_memory: bool) -> Loader:
    """Batches gathered from the list's feature cache (``feature_cache``), else a DataLoader over the files."""
    cache = cache_for_dataset(dataset, params.feature_cache_dtype, info) if params.feature_cache else None
    if cache is not None:
        return CachedBatchLoader(cache, dataset.labels, batches, pin_memory, params.prefetch_batches)
    return DataLoader(dataset, batch_sampler=batches, num_workers=params.num_workers, pin_memory=pin_memory,
                      persistent_workers=params.num_workers > 0, generator=loader_generator(params))


def clip_source(dataset: SpectrogramDataset, params: Params, info: DistInfo) -> SpectrogramDataset | CachedClips:
    """Where crops and windows read clips ``(n_mels, T_i)`` from: the list's feature cache, else the files."""
    cache = cache_for_dataset(dataset, params.feature_cache_dtype, info) if params.feature_cache else None
    return CachedClips(cache, dataset) if cache is not None else dataset


def build_data(params: Params, info: DistInfo, device: torch.device) -> Data:
    """Datasets from the config's lists; loaders with pinned memory on CUDA.

    Features of exactly ``window`` frames take the gathered fast path (``make_loader``); other
    lengths (whole clips, or a ``crop_frames`` that differs from ``n_frames``) are cropped and
    cut into windows from the same cache (in this process) or from the files (in workers).
    """
    train_set = SpectrogramDataset(params.trainlist, params.datapath)
    val_set = SpectrogramDataset(params.vallist, params.datapath, class_names=train_set.class_names)
    check_compatible(train_set, val_set)
    if params.target_class is not None and params.target_class not in train_set.class_names:
        raise ValueError(f'"target_class" {params.target_class!r} is not a class of {params.trainlist}; '
                         f"its classes are {train_set.class_names}")
    window = params.crop_frames or train_set.n_frames
    hop = params.crop_hop_frames or default_hop(window)
    pad_mode, silence = padding_for(train_set.info.feature_params)
    soundscapes = soundscape_crops(params, train_set, window, pad_mode, silence)
    cropped = train_set.variable_length or train_set.n_frames != window or soundscapes is not None
    if cropped:
        clips = clip_source(train_set, params, info)
        workers = params.num_workers if clips is train_set else 0  # the mapped cache is read in this process
        crops = RandomCrops(clips, window, params.seed, pad_mode, silence)
        if soundscapes is not None:
            crops = ConcatCrops(crops, soundscapes)
    sampler = EpochSampler(_train_sampler(params, crops if soundscapes is not None else train_set, info))
    per_process = len(sampler)  # under torchrun each process sees ~N / world_size clips
    # Keep every clip, except a final batch of one: BatchNorm cannot train on a single example.
    drop_last = per_process > params.batch_size and per_process % params.batch_size == 1
    pin_memory = device.type == "cuda"
    if cropped:
        train_loader = DataLoader(crops, batch_sampler=BatchSampler(sampler, params.batch_size, drop_last),
                                  num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                                  generator=loader_generator(params))
    else:  # whole fixed-length features: the epoch only matters to the sampler it wraps
        train_loader = make_loader(train_set, BatchSampler(sampler.sampler, params.batch_size, drop_last), params,
                                   info, pin_memory)
    val_shard = ShardSampler(len(val_set), info)
    if cropped:
        clips = clip_source(val_set, params, info)
        workers = params.num_workers if clips is val_set else 0
        val_loader = window_loader(clips, window, hop, params.eval_batch_size, sampler=val_shard,
                                   num_workers=workers, pin_memory=pin_memory, generator=loader_generator(params))
    else:  # one window per clip
        val_loader = make_loader(val_set, BatchSampler(val_shard, params.eval_batch_size, drop_last=False), params,
                                 info, pin_memory)
    return Data(train_set, val_set, train_loader, val_loader, sampler, window, hop)


def soundscape_crops(params: Params, train_set: SpectrogramDataset, window: int, pad_mode: str,
                     silence: float) -> SoundscapeCrops | None:
    """One crop per mixture of ``train_soundscapes`` and epoch (``dataloaders.soundscapes``), or None when unset."""
    if params.train_soundscapes is None:
        return None
    if params.balanced_sampling:
        raise ValueError('"train_soundscapes" cannot be combined with "balanced_sampling" (a mixture has no one '
                         'class); use "class_weighting": "balanced" instead')
    training_clips = {entry.feature_file for entry in train_set.entries}
    recordings = load_training_soundscapes(params.train_soundscapes, trained_features(train_set),
                                           train_set.class_names, params.target_class, training_clips)
    log.info("train_soundscapes: %d mixtures (%d with a %s event), one crop each per epoch", len(recordings),
             sum(recording.event is not None for recording in recordings), params.target_class)
    return SoundscapeCrops(recordings, window, params.seed, train_set.class_names.index(params.target_class),
                           pad_mode, silence)


def trained_features(train_set: SpectrogramDataset) -> FeatureParams:
    """The training features' parameters (the defaults for a hand-made list without its feature config)."""
    return FeatureParams.from_dict(train_set.info.feature_params or {})


def build_background(params: Params, train_set: SpectrogramDataset, window: int) -> BackgroundMixer | None:
    """The background mixer the config asks for (``background_*`` keys), or None when it is off."""
    if params.background_prob == 0:
        return None
    unknown = sorted(set(params.background_classes) - set(train_set.class_names))
    if unknown:
        raise ValueError(f'"background_classes": {unknown} are not training classes; the classes are '
                         f"{train_set.class_names}")
    backgrounds = [partial(train_set.load, index) for index, label in enumerate(train_set.labels.tolist())
                   if train_set.class_names[label] in params.background_classes]
    trained = trained_features(train_set)
    if params.background_list:
        root = Path(params.background_list).parent.parent  # the --save_dir the list was written to
        try:
            listed = SpectrogramDataset(params.background_list, root)
        except FeatureDataError as error:
            raise FeatureDataError(f'"background_list": {error}\n(its entries are read relative to {root})') from None
        theirs = listed.info.feature_params
        same_front_end = ("n_frames", "max_seconds", "pad_mode")  # may differ: how much of each clip is kept
        differing = trained.differences(FeatureParams.from_dict(theirs), ignore=same_front_end) \
            if train_set.info.feature_params and theirs else []
        if listed.n_mels != train_set.n_mels or differing:
            raise FeatureDataError(f'"background_list" {params.background_list}: its features differ from the '
                                   f"training features ({differing or 'n_mels'}); preprocess the backgrounds with "
                                   "the training settings")
        backgrounds += [partial(listed.load, index) for index in range(len(listed))]
    log.info("background mixing: p %.2f, %d clips, SNR %g..%g dB", params.background_prob, len(backgrounds),
             params.background_snr_min, params.background_snr_max)
    return BackgroundMixer(backgrounds, params.background_prob, (params.background_snr_min, params.background_snr_max),
                           window, log_scale_for(trained), trained.pad_mode)


def build_model(params: Params, train_set: SpectrogramDataset, window: int | None = None
                ) -> tuple[AudioClassifier, dict]:
    """The classifier for inputs of ``window`` frames (default the features' ``n_frames``), with
    normalisation statistics from the training features.

    A pretrained backbone's rules apply first (``audioclf.transfer``): its front end must match the
    features, and one pretrained on a fixed front end gets no normalisation (``params`` records
    ``"normalization": "none"`` then).
    """
    check_input_size(params.model, train_set.n_mels, window or train_set.n_frames)
    check_features(params, train_set.info.feature_params, train_set.info.source)
    normalization = resolve_normalization(params)
    if normalization != params.normalization:
        params.update({"normalization": normalization})  # the saved config says what was done
    center = normalization == "per_clip"
    args = constructor_args(params.model, len(train_set.class_names), train_set.n_mels, params.model_args, center,
                            multi_label=params.multi_label)
    model = AudioClassifier(**args, pretrained=params.pretrained,
                            head_from_pretrained=head_rows(params, train_set.class_names))
    apply_freezing(params, model)
    if normalization != "none":
        mean, std = feature_statistics(train_set, per_band=normalization != "global", seed=params.seed,
                                       center_per_clip=center)
        model.normalize.set_statistics(mean, std)
    return model, args


SGD_MOMENTUM = 0.9


def build_optimizer(params: Params, model: AudioClassifier) -> torch.optim.Optimizer:
    """The config's ``optimizer`` with its ``lr`` and ``weight_decay``; the backbone at ``lr * backbone_lr_scale``.

    ``adamw`` decays only weights of two or more dimensions (convs, linear layers), as timm does:
    decoupled decay pulls a batch-norm scale or a bias towards zero for no gain in generalisation.
    """
    groups = parameter_groups(params, model)
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=params.lr, momentum=SGD_MOMENTUM, weight_decay=params.weight_decay)
    if params.optimizer == "adam":
        return torch.optim.Adam(groups, lr=params.lr, weight_decay=params.weight_decay)
    split = []
    for group in groups:
        decayed = [parameter for parameter in group["params"] if parameter.ndim >= 2]
        kept = [parameter for parameter in group["params"] if parameter.ndim < 2]
        split += [{**group, "params": decayed}, {**group, "params": kept, "weight_decay": 0.0,
                                                  "name": f"{group['name']}_no_decay"}]
    return torch.optim.AdamW([group for group in split if group["params"]], lr=params.lr,
                             weight_decay=params.weight_decay)


def build_scheduler(params: Params, optimizer: torch.optim.Optimizer):
    """``scheduler``: true/"step" -> StepLR(step, gamma); "cosine"; false/"none" -> constant.

    ``warmup_epochs`` > 0 prepends a linear warm-up. Stepped once per epoch.
    """
    kind = params.scheduler  # normalised by Params: "step", "cosine" or "none"
    main_epochs = max(1, params.epochs - params.warmup_epochs)
    if kind == "step":
        main = torch.optim.lr_scheduler.StepLR(optimizer, params.scheduler_step, params.scheduler_gamma)
    elif kind == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_epochs, eta_min=params.lr * 0.01)
    else:
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if params.warmup_epochs <= 0:
        return main
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=params.warmup_epochs)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[params.warmup_epochs])


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy per class on logits ``(B, C)``: the loss of a sigmoid head (``multi_label``).

    Targets are class ids ``(B,)`` (one-hot) or probability targets ``(B, C)`` of mixed inputs; the
    loss is summed over classes and averaged over examples, so one class present costs about what
    cross-entropy does. ``weight`` ``(C,)`` weights each example by its label's class, as
    cross-entropy's does (a mixed example by the mix of its labels' weights), so ``"balanced"``
    weights rebalance each sigmoid's positives against its negatives. ``label_smoothing`` moves
    each target as cross-entropy's does: ``t * (1 - s) + s / C``.
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 1:
            targets = nn.functional.one_hot(targets, logits.shape[1])
        targets = targets.to(logits.dtype)
        example_weight = None if self.weight is None else targets @ self.weight.to(logits.dtype)  # (B,)
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / logits.shape[1]
        losses = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)
        return (losses if example_weight is None else losses * example_weight).mean()


def build_criterion(params: Params, train_set: SpectrogramDataset, device: torch.device) -> nn.Module:
    """Cross-entropy (``MultiLabelLoss`` for ``multi_label``), optionally class-weighted (inverse
    frequency) and label-smoothed.

    Mixed inputs (mixup, time splicing) get probability targets; with class weights their batch
    loss is then the plain mean of the weighted per-example losses (torch's rule for soft targets).
    """
    weight = None
    if params.class_weighting == "balanced":
        counts = train_set.class_counts().float()
        weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)
    if params.multi_label:
        return MultiLabelLoss(weight, params.label_smoothing).to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=params.label_smoothing)


def model_summary(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> str:
    """torchsummary's table for ``input_shape`` (on a copy in eval mode: no state changes)."""
    from torchsummary import summary

    buffer = io.StringIO()
    probe = copy.deepcopy(model).eval()
    state = torch.get_rng_state()
    try:
        with contextlib.redirect_stdout(buffer), torch.no_grad():
            summary(probe, input_shape, device=device.type)
    except Exception as error:  # a summary must never stop training
        return f"(model summary unavailable: {error})"
    finally:
        torch.set_rng_state(state)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------
# Loops
# ---------------------------------------------------------------------------------------

@dataclass
class StepOptions:
    """Per-step training settings derived from the config."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    spec_augment: nn.Module | None
    mixup_alpha: float
    grad_clip: float
    log_every: int = 0
    # Applied in order to each batch of log-scale features before the model normalises them
    # (``input_augmentations``): the waveform-like changes, each ``(B, 1, n_mels, T) -> same shape``.
    augmentations: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = ()
    splice_prob: float = 0.0


def is_better(val_metrics: dict, best: dict) -> bool:
    """model_best's rule: higher validation accuracy; at equal accuracy, lower validation loss.

    On a small validation set accuracy often stays level for many epochs while the model keeps
    improving (the demo's 48 clips: the same accuracy from epoch 15 to 30); the loss breaks the tie.
    """
    if val_metrics["accuracy"] != best["accuracy"]:
        return val_metrics["accuracy"] > best["accuracy"]
    return val_metrics["loss"] < best["loss"]


def resumed_best(checkpoint: dict) -> dict:
    """model_best's record ``{"accuracy", "loss", "epoch"}`` from a checkpoint to resume.

    One written before ``best_loss`` existed has the loss in its own metrics when it is the best epoch;
    otherwise it is unknown and taken as -inf, so a tie keeps that model_best (the rule it was chosen by)
    rather than handing it to the next epoch of equal accuracy whatever its loss.
    """
    loss = checkpoint.get("best_loss")
    if loss is None:
        own = checkpoint.get("metrics", {}).get("validation", {})
        loss = own["loss"] if checkpoint["best_epoch"] == checkpoint["epoch"] and "loss" in own else -math.inf
    return {"accuracy": checkpoint["best_accuracy"], "loss": loss, "epoch": checkpoint["best_epoch"]}


def step_options(params: Params, device: torch.device, background: BackgroundMixer | None = None,
                 scale: LogScale = LogScale()) -> StepOptions:
    """Config -> StepOptions; ``scale`` is the features' log scale.

    ``params.normalization`` is the one ``build_model`` resolved (``none`` for a pretrained YAMNet).
    """
    spec = (SpecAugment(params.freq_mask, params.time_mask, params.n_masks,
                        fill_mean=params.normalization == "none") if params.spec_augment else None)
    return StepOptions(device, amp_dtype_for(device, params.amp), params.channels_last, spec, params.mixup_alpha,
                       params.grad_clip, params.log_every, input_augmentations(params, background, scale),
                       params.splice_prob)


def input_augmentations(params: Params, background: BackgroundMixer | None, scale: LogScale
                        ) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
    """The config's per-example input augmentations, in the order they apply: what is added to the
    recording (background, noise), how it was picked up (gain, equalisation, low-pass), then where and how
    fast it happens (time shift, frequency warp, time stretch). Mixing examples (splicing, mixup)
    and masking come after, in ``train_one_epoch`` and the model's forward."""
    steps = [
        (background is not None, background),
        (params.noise_prob > 0, partial(add_noise, probability=params.noise_prob,
                                        snr_db=(params.noise_snr_min, params.noise_snr_max), scale=scale)),
        (params.gain_db > 0, partial(random_gain, max_db=params.gain_db, scale=scale)),
        (params.eq_db > 0, partial(random_equalization, max_db=params.eq_db, scale=scale)),
        (params.lowpass_prob > 0, partial(random_lowpass, probability=params.lowpass_prob, scale=scale)),
        (params.random_shift, random_time_shift),
        (params.freq_warp > 0, partial(random_frequency_warp, max_warp=params.freq_warp)),
        (params.time_stretch > 0, partial(random_time_stretch, max_stretch=params.time_stretch)),
    ]
    return tuple(step for enabled, step in steps if enabled)


def to_device(inputs: torch.Tensor, targets: torch.Tensor, options: StepOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-blocking copies (from pinned memory on CUDA), float32 (a float16 cache's batches are
    widened after the copy, on the device), channels_last when enabled."""
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    inputs = inputs.to(options.device, non_blocking=True).to(torch.float32, memory_format=memory_format)
    return inputs, targets.to(options.device, non_blocking=True)


def train_one_epoch(model: nn.Module, loader: Loader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, options: StepOptions, epoch: int, show_progress: bool = True,
                    info: DistInfo = DistInfo(), averaged: WeightAverage | None = None) -> dict:
    """One pass over ``loader``; returns ``{"loss", "accuracy", "samples_per_s", "n"}`` over every
    process's examples (summed across processes; the progress bar shows this process's).
    ``averaged`` (``ema_decay``) follows the weights after every optimizer step."""
    model.train()
    loss_avg, acc_avg = RunningAverage(), RunningAverage()
    start = time.perf_counter()
    progress = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not show_progress, unit="batch")
    for step, (inputs, targets) in enumerate(progress, start=1):
        inputs, targets = to_device(inputs, targets, options)  # (B, 1, n_mels, n_frames), (B,)
        for augment in options.augmentations:  # on the log-mel, before the model normalises it
            inputs = augment(inputs)
        mixes = []  # (order, lam) of each input mix, for the labels
        if options.splice_prob > 0:
            inputs, *mix = time_splice(inputs, options.splice_prob)
            mixes.append(mix)
        if options.mixup_alpha > 0:
            inputs, *mix = mixup(inputs, options.mixup_alpha)
            mixes.append(mix)
        soft = None

        def forward_backward() -> tuple[torch.Tensor, float]:
            nonlocal soft
            with autocast(options.device, options.amp_dtype):
                logits = model(inputs, options.spec_augment)
                if mixes:  # mixed inputs: labels shared the same way (probability targets)
                    soft = mix_labels(targets, logits.shape[1], mixes)
                loss = criterion(logits, targets if soft is None else soft)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(f"loss became {loss_value} in epoch {epoch}; lower 'lr', enable "
                                         "'grad_clip', or check the features for NaN/inf")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            return logits, loss_value

        # torch.compile compiles the backward pass at the first backward(): the fallback covers both
        logits, loss_value = training_step(model, forward_backward, reraise=(NonFiniteLossError,))
        if options.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if averaged is not None:
            averaged.update()
        predicted = logits.argmax(1)
        if soft is None:
            hits = (predicted == targets).sum().item()
        else:  # mixed labels: credit each prediction by the share of the label it matches
            hits = soft.gather(1, predicted[:, None]).sum().item()
        loss_avg.update(loss_value, len(targets))
        acc_avg.update(float(hits) / len(targets), len(targets))
        progress.set_postfix(loss=f"{loss_avg.avg:.3f}", acc=f"{acc_avg.avg:.3f}", refresh=False)
        if options.log_every and step % options.log_every == 0:
            log.info("epoch %d step %d/%d  loss %.4f  acc %.4f", epoch, step, len(loader), loss_avg.avg, acc_avg.avg)
    seconds = time.perf_counter() - start
    totals = torch.tensor([loss_avg.total, acc_avg.total, loss_avg.count], dtype=torch.float64, device=options.device)
    loss_sum, hits, count = all_reduce_sum(totals, info).tolist()  # loss sum, correct, examples
    return {"loss": loss_sum / max(count, 1), "accuracy": hits / max(count, 1), "n": int(count),
            "samples_per_s": count / seconds if seconds > 0 else 0.0}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Loader, options: StepOptions, info: DistInfo = DistInfo(),
             max_windows: int | None = None) -> dict:
    """Loss and accuracy over ``loader`` summed across processes: ``{"loss", "accuracy", "n"}``.

    A clip's prediction is the mean of its windows' probabilities and its loss the negative log
    of that mean for the true class: the cross-entropy, for a clip of one window (for a multi-label
    head, the binary cross-entropy of the mean sigmoid per class, summed over classes). Each process
    sees a disjoint shard (no padding), so the result equals one process evaluating the whole list.
    The model runs on at most ``max_windows`` windows at a time (all of a batch's when None).
    """
    totals = torch.zeros(3, dtype=torch.float64, device=options.device)  # loss sum, correct, count
    for output, counts in iter_window_outputs(model, loader, options.device, options.amp_dtype, options.channels_last,
                                              max_windows):
        if getattr(unwrap(model), "multi_label", False):
            pooled = pool_windows(output.probabilities, counts).clamp(1e-7, 1 - 1e-7)  # (B, C): mean sigmoid
            one_hot = nn.functional.one_hot(output.targets, pooled.shape[1]).to(pooled.dtype)
            totals[0] += nn.functional.binary_cross_entropy(pooled, one_hot, reduction="sum").double()
        else:
            pooled = pool_log_softmax(output.logits, counts)  # (B, C) log probabilities
            totals[0] += nn.functional.nll_loss(pooled, output.targets, reduction="sum").double()
        totals[1] += (pooled.argmax(1) == output.targets).sum()
        totals[2] += len(output.targets)
    loss_sum, correct, count = all_reduce_sum(totals, info).tolist()
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1), "n": int(count)}


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------

def training_checkpoint(model: nn.Module, optimizer, scheduler, scaler, epoch: int, best: dict, params: Params,
                        model_args: dict, data: Data, metrics: dict, averaged: WeightAverage | None = None) -> dict:
    """This epoch's checkpoint in the format of ``audioclf.checkpoint.checkpoint_state``."""
    train_set = data.train_set
    return checkpoint_state(unwrap(model), optimizer, scheduler, scaler, epoch=epoch, best=best,
                            config=params.to_dict(), model_args=model_args, class_names=train_set.class_names,
                            feature_params=train_set.info.feature_params, feature_shape=(train_set.n_mels, data.window),
                            rng_state=rng_state(), metrics=metrics, windows={"frames": data.window, "hop": data.hop},
                            averaged=averaged)


def refuse_to_overwrite(checkpoint_dir: Path, resume: bool) -> None:
    """A fresh run must not mix its checkpoints with an earlier run's (nothing is deleted)."""
    existing = list_checkpoints(checkpoint_dir)
    if existing and not resume:
        raise ValueError(f"{checkpoint_dir} already holds checkpoints of an earlier run (newest: {existing[-1].name}); "
                         "pass --resume to continue it, or set another checkpoint_dir (or delete the old one)")


def load_latest_for_resume(checkpoint_dir: Path, info: DistInfo) -> tuple[dict | None, Path | None]:
    """Rank 0's newest checkpoint (on CPU), sent to every process: resume works across machines
    even when ``checkpoint_dir`` is not on shared storage."""
    latest = latest_checkpoint(checkpoint_dir) if info.is_main else None
    checkpoint = load_checkpoint(latest, map_location="cpu") if latest is not None else None
    checkpoint, latest = broadcast_object((checkpoint, latest), info)
    if latest is None:
        log.info("resume: no checkpoint in %s, starting from scratch", checkpoint_dir)
    return checkpoint, latest


# What a resumed run may change: where the files are (every path key: a moved folder), how fast it runs,
# what evaluation does after it, and (but for a cosine schedule, whose length the saved scheduler holds)
# how many epochs it lasts.
RESUME_FREE_KEYS = frozenset({key for key, spec in CONFIG_SCHEMA.items() if spec.is_path} | EVALUATION_KEYS | {
    "dataset_name", "eval_batch_size", "num_workers", "feature_cache", "feature_cache_dtype", "prefetch_batches",
    "device", "amp", "channels_last", "compile", "resume", "keep_checkpoints", "log_every", "epochs",
})


# Optional training inputs: their folder may move, but one may not be added or dropped on resume.
TRAINING_INPUTS = ("background_list", "train_soundscapes")


def check_resume_compatible(checkpoint: dict, model_args: dict, class_names: list[str], path: Path,
                            config: dict) -> None:
    """A checkpoint from another model or class set, or trained with other settings, cannot be resumed.

    A resumed run continues the saved optimizer, schedule and RNG state, so a changed learning
    rate, schedule, augmentation or seed would not apply as written (and would break the
    bit-identical resume); each such key is named. A path may change (a moved folder), but a
    ``TRAINING_INPUTS`` path may not appear or vanish.
    """
    if checkpoint["model_args"] != model_args:
        raise ValueError(f"cannot resume from {path}: it was trained with {checkpoint['model_args']}, "
                         f"the config now gives {model_args}; use a new checkpoint_dir or restore the config")
    if list(checkpoint["class_names"]) != list(class_names):
        raise ValueError(f"cannot resume from {path}: it was trained on the classes {list(checkpoint['class_names'])}, "
                         f"the training list now has {list(class_names)}; use a new checkpoint_dir")
    saved = checkpoint.get("config") or {}
    free = set(RESUME_FREE_KEYS) - ({"epochs"} if config.get("scheduler") == "cosine" else set())
    if saved.get("train_soundscapes") is None and config.get("train_soundscapes") is None:
        free.add("target_class")  # then only evaluation reads it
    changed = [f"{key} ({saved[key]!r} -> {value!r})" for key, value in config.items()
               if key in saved and saved[key] != value
               and (key not in free or (key in TRAINING_INPUTS and (saved[key] is None) != (value is None)))]
    if changed:
        raise ValueError(f"cannot resume from {path}: the config changed {', '.join(changed)}; a resumed run "
                         "continues the saved optimizer, schedule and random state, so restore these (the run's "
                         f"{CONFIG_FILE} has them) or start a new checkpoint_dir")


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------

def epoch_line(epoch: int, epochs: int, train_metrics: dict, val_metrics: dict, lr: float, seconds: float,
               is_best: bool) -> str:
    """The one log line per epoch."""
    return (f"epoch {epoch:3d}/{epochs}  train loss {train_metrics['loss']:.4f} acc {train_metrics['accuracy']:.4f}"
            f"  val loss {val_metrics['loss']:.4f} acc {val_metrics['accuracy']:.4f}  lr {lr:.2e}"
            f"  {train_metrics['samples_per_s']:.0f} samples/s  {seconds:.1f} s{'  *best*' if is_best else ''}")


def log_scalars(writer, epoch: int, train_metrics: dict, val_metrics: dict, lr: float) -> None:
    """TensorBoard scalars for one epoch."""
    for name, value in (("loss/train", train_metrics["loss"]), ("loss/validation", val_metrics["loss"]),
                        ("accuracy/train", train_metrics["accuracy"]),
                        ("accuracy/validation", val_metrics["accuracy"]), ("lr", lr),
                        ("throughput/train_samples_per_s", train_metrics["samples_per_s"])):
        writer.add_scalar(name, value, epoch)
    writer.flush()


def train(params: Params, resume: bool = False, show_progress: bool = True) -> dict:
    """Train as the config says; returns ``{"history": [...], "best_accuracy", "best_epoch"}``."""
    get_model_entry(params.model)  # an unknown model name fails now, before any data is read
    info = DistInfo.from_env()
    device = resolve_device(params.device, info)  # a device that does not fit fails before the group forms
    init_distributed(info, device)
    try:
        return _train(params, info, device, resume or params.resume, show_progress and info.is_main)
    finally:
        cleanup_distributed(info)


def _train(params: Params, info: DistInfo, device: torch.device, resume: bool, show_progress: bool) -> dict:
    seed_everything(params.seed + info.rank)
    enable_cudnn_autotune(device)
    checkpoint_dir = Path(params.checkpoint_dir)
    data = build_data(params, info, device)
    model, model_args = build_model(params, data.train_set, data.window)
    if data.train_set.info.feature_params is None:
        log.warning("no %s beside %s: the checkpoints will not know the feature parameters, so "
                    "predict.py cannot use them (re-run preprocessingBabyCrying.py to write it)", FEATURE_CONFIG,
                    params.trainlist)
    model.to(device)
    options = step_options(params, device, build_background(params, data.train_set, data.window),
                           log_scale_for(trained_features(data.train_set)))
    if options.channels_last:
        model.to(memory_format=torch.channels_last)
    refuse_to_overwrite(checkpoint_dir, resume)
    checkpoint, latest = load_latest_for_resume(checkpoint_dir, info) if resume else (None, None)
    if checkpoint is not None:  # before config.json is written: a refused resume leaves the run as it was
        check_resume_compatible(checkpoint, model_args, data.train_set.class_names, latest, params.to_dict())
    if info.is_main:
        make_folder(checkpoint_dir, "checkpoint folder")
        params.save(checkpoint_dir / CONFIG_FILE)
        shape = (1, data.train_set.n_mels, data.window)
        log.info("model %s, %d classes %s, input %s, %s\n%s", params.model, len(data.train_set.class_names),
                 data.train_set.class_names, shape, trainable_summary(model), model_summary(model, shape, device))
    optimizer = build_optimizer(params, model)
    scheduler = build_scheduler(params, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=options.amp_dtype == torch.float16)
    criterion = build_criterion(params, data.train_set, device)
    start_epoch, best = 1, {"accuracy": -1.0, "loss": math.inf, "epoch": 0}
    if checkpoint is not None:
        model.load_state_dict(training_weights(checkpoint))
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if checkpoint["scaler"]:  # empty when the saved run had no fp16 scaler (CPU, bf16)
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = checkpoint["epoch"] + 1
        best = resumed_best(checkpoint)
        if info.is_main:
            set_rng_state(checkpoint["rng_state"])
        else:
            seed_everything(params.seed + info.rank + 1000 * start_epoch)
        log.info("resumed from %s: continuing at epoch %d (best val acc %.4f at epoch %d)",
                 latest, start_epoch, best["accuracy"], best["epoch"])
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.enabled else model
    # The moving average of the weights (ema_decay): made once the model has its device, memory format, resumed
    # weights and (DDP) rank 0's weights on every process; validation, model_best and the served checkpoint use it.
    averaged = WeightAverage(model, params.ema_decay) if params.ema_decay > 0 else None
    if averaged is not None and checkpoint is not None:
        averaged.load(checkpoint["model"], checkpoint.get("ema_updates", 0))
    # Checkpoints keep saving `model`; only the steps run through the compiled wrappers.
    train_runner = maybe_compile(wrapped, params.compile)
    if averaged is not None:
        eval_runner = maybe_compile(averaged.module, params.compile)
    else:
        eval_runner = train_runner if wrapped is model else maybe_compile(model, params.compile)
    writer = None
    if info.is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(params.summaries_dir)
    history = []
    saved_epoch = start_epoch - 1  # the newest epoch on disk, for the message if interrupted
    if start_epoch > params.epochs and info.is_main:
        log.info("all %d epochs are done; raise 'epochs' in the config to train further", params.epochs)
    try:
        for epoch in range(start_epoch, params.epochs + 1):
            data.train_sampler.set_epoch(epoch)  # new crops (and a new DistributedSampler order) per epoch
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_metrics = train_one_epoch(train_runner, data.train_loader, criterion, optimizer, scaler, options,
                                            epoch, show_progress, info, averaged)
            sync_buffers(model, info)
            if averaged is not None:
                sync_buffers(averaged.module, info)
            val_metrics = evaluate(eval_runner, data.val_loader, options, info, params.eval_batch_size)
            scheduler.step()
            is_best = params.best_by == "last_epoch" or is_better(val_metrics, best)
            if is_best:
                best = {"accuracy": val_metrics["accuracy"], "loss": val_metrics["loss"], "epoch": epoch}
            metrics = {"train": train_metrics, "validation": val_metrics, "lr": lr}
            history.append({"epoch": epoch, **metrics})
            if info.is_main:
                state = training_checkpoint(model, optimizer, scheduler, scaler, epoch, best, params, model_args,
                                            data, metrics, averaged)
                save_checkpoint(state, checkpoint_dir, epoch, is_best, keep=params.keep_checkpoints)
                saved_epoch = epoch
                log_scalars(writer, epoch, train_metrics, val_metrics, lr)
                log.info(epoch_line(epoch, params.epochs, train_metrics, val_metrics, lr,
                                    time.perf_counter() - started, is_best))
            barrier(info)
            saved_epoch = epoch  # the other processes: rank 0 saved it before the barrier
    except KeyboardInterrupt:
        log.warning("interrupted: epochs up to %d are saved in %s; run again with --resume to continue",
                    saved_epoch, checkpoint_dir)
        raise
    finally:
        if writer is not None:
            writer.close()
    if info.is_main and history:
        log.info("model_best: epoch %d (%s), validation accuracy %.4f; checkpoints in %s", best["epoch"],
                 "the last" if params.best_by == "last_epoch" else "best on validation", best["accuracy"],
                 checkpoint_dir)
    return {"history": history, "best_accuracy": best["accuracy"], "best_epoch": best["epoch"]}
