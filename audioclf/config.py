"""The config schema and ``Params``, the validated JSON config.

The schema lives in one table, ``CONFIG_SCHEMA``; defaults, type checks, the error messages and
the README's config reference (``config_reference_markdown``) all come from it.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import json5

from audioclf.events import GRID_SETTINGS, check_grid
from audioclf.feature_flags import block_problems
from audioclf.files import atomic_write_json

__all__ = ["REQUIRED", "ConfigError", "ConfigKey", "CONFIG_SCHEMA", "EVALUATION_KEYS", "Params",
           "config_reference_markdown"]


class _Required:
    """Sentinel type for a config key that has no default."""

    _instance: _Required | None = None

    def __new__(cls) -> _Required:
        # A singleton, so `default is REQUIRED` also holds after copy/pickle.
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


class ConfigError(ValueError):
    """A config file that cannot be parsed or does not match ``CONFIG_SCHEMA``.

    ``problems`` lists every problem found (one line each); ``source`` is the file (or label).
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {problem}" for problem in self.problems))


@dataclass(frozen=True)
class ConfigKey:
    """One config key: accepted types, default (or ``REQUIRED``), one-line help and constraints."""

    type: tuple[type, ...]
    default: Any = REQUIRED
    help: str = ""
    choices: tuple[str, ...] | None = None  # allowed string values
    pattern: tuple[str, str] | None = None  # (regex, human form) also allowed, e.g. cuda:N
    minimum: float | None = None  # inclusive lower bound for numbers
    maximum: float | None = None  # inclusive upper bound for numbers
    positive: bool = False  # number must be > 0
    is_path: bool = False  # relative paths are made absolute against the cwd at load time
    items: type | None = None  # the type of a list's elements
    # Checks the contents of a value of the right type: (normalised value, problems).
    check: Callable[[Any], tuple[Any, list[str]]] | None = None
    evaluation_only: bool = False  # read by evaluation alone (reports, detection tuning): free on resume

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


CONFIG_SCHEMA: dict[str, ConfigKey] = {
    # Data and run folders.
    "datapath": ConfigKey((str,), help="Folder with the .npy features.", is_path=True),
    "trainlist": ConfigKey(
        (str,), help="File listing the training clips and labels.", is_path=True,
    ),
    "vallist": ConfigKey(
        (str,), help="File listing the validation clips and labels.", is_path=True,
    ),
    "evallist": ConfigKey(
        (str,), help="File listing the evaluation clips and labels.", is_path=True,
    ),
    "checkpoint_dir": ConfigKey(
        (str,), help="Folder for checkpoints and the resolved config.", is_path=True,
    ),
    "summaries_dir": ConfigKey(
        (str,), None, "TensorBoard log folder; null means `<checkpoint_dir>/runs`.", is_path=True
    ),
    "dataset_name": ConfigKey((str,), "", "Free-form dataset name recorded with the run."),
    "features": ConfigKey(
        (dict,), {}, "The preprocessing this recipe expects: `preprocessingBabyCrying.py`'s feature flags by their "
        "names without dashes, e.g. `{\"frontend\": \"yamnet\", \"whole_clips\": true, \"max_seconds\": 5}` "
        "(flags left out take the preset's value). `preprocessingBabyCrying.py --config_path` makes the features "
        "from it; training and evaluation refuse features in `datapath` made otherwise; `{}` checks nothing.",
        check=block_problems,
    ),
    # Model.
    "model": ConfigKey((str,), help="Backbone name in the model registry."),
    "pretrained": ConfigKey((bool,), False, "Start from pretrained weights (with a new head, unless `head_classes`)."),
    "model_args": ConfigKey((dict,), {}, "Extra keyword arguments for the backbone constructor."),
    "freeze_backbone": ConfigKey(
        (bool,), False, "Train only the classifier (linear probe); the backbone's weights and batch-norm "
        "statistics stay as loaded.",
    ),
    "freeze_bn": ConfigKey(
        (bool,), False, "Keep the pretrained batch-norm statistics while fine-tuning: the backbone's batch-norm "
        "layers normalise with the loaded running statistics and do not update them (their scale and shift "
        "still train). Needs `pretrained`.",
    ),
    "freeze_layers": ConfigKey(
        (int,), 0, "Keep the backbone's first N layers as loaded while the rest fine-tunes: no gradients, and "
        "their batch-norm statistics stay the pretrained ones. A layer is an entry of the backbone's "
        "`features`: `yamnet` 14 (its first conv, then 13 separable blocks), `mobilenetv3_small` 13, `densenet` "
        "12 (conv0, norm0, relu0 and pool0 each count), `efficientnetv2_s` 8; other models have none. Early "
        "layers hold generic features, and not back-propagating through them saves time: 6 cut the demo "
        "recipe's training by a fifth on one thread, a tenth on two. Needs `pretrained`, not with "
        "`freeze_backbone`; 0 freezes none.", minimum=0,
    ),
    "backbone_lr_scale": ConfigKey(
        (float,), 1.0, "Backbone learning rate as a fraction of `lr` (the classifier gets `lr`), e.g. 0.1 to "
        "fine-tune pretrained layers gently.", positive=True, maximum=1,
    ),
    "head_classes": ConfigKey(
        (dict,), {}, "Keep and extend the pretrained head: `{\"dataset class\": \"pretrained class\"}` starts each "
        "listed class from that class's pretrained classifier row (e.g. `{\"babycry\": \"Baby cry, infant cry\"}` "
        "for yamnet), the others from zero; `{}` gives a new head.",
    ),
    # Optimisation.
    "epochs": ConfigKey((int,), help="Number of training epochs.", positive=True),
    "batch_size": ConfigKey((int,), help="Clips per batch.", positive=True),
    "eval_batch_size": ConfigKey(
        (int,), None, "Clips per validation and evaluation batch; null means 4 x `batch_size` (no gradients are "
        "kept, so larger batches fit and keep a GPU busy).", positive=True,
    ),
    "lr": ConfigKey((float,), help="Peak learning rate.", positive=True),
    "weight_decay": ConfigKey(
        (float,), 0.0, "Optimizer weight decay: an L2 term in the gradient for `adam` and `sgd`; decoupled (AdamW) "
        "and only on conv and linear weights (not biases or norm layers) for `adamw`.", minimum=0,
    ),
    "optimizer": ConfigKey(
        (str,), "adam", "`adam`, `adamw` (decoupled weight decay; a `weight_decay` of 0.01-0.1 is usual) or `sgd` (momentum "
        "0.9, as torchvision's references).",
        choices=("adam", "adamw", "sgd"),
    ),
    "scheduler": ConfigKey(
        (bool, str),
        False,
        "Learning-rate schedule; true means `step`, false means `none`.",
        choices=("step", "cosine", "none"),
    ),
    "scheduler_step": ConfigKey(
        (int,), 30, "Epochs between decays of the `step` schedule.", positive=True,
    ),
    "scheduler_gamma": ConfigKey(
        (float,), 0.1, "Decay factor of the `step` schedule.", positive=True,
    ),
    "warmup_epochs": ConfigKey((int,), 0, "Epochs of linear learning-rate warm-up.", minimum=0),
    "multi_label": ConfigKey(
        (bool,), False,
        "A sigmoid per class (binary cross-entropy) instead of a softmax over classes: each class's probability "
        "says whether it is present, whatever else sounds with it, as a detector over mixtures needs "
        "(`background_*`, `train_soundscapes`).",
    ),
    "label_smoothing": ConfigKey(
        (float,), 0.0, "Label smoothing of the loss (each target t becomes t * (1 - s) + s / n_classes).",
        minimum=0, maximum=1,
    ),
    "grad_clip": ConfigKey((float,), 0.0, "Max gradient norm; 0 turns clipping off.", minimum=0),
    "ema_decay": ConfigKey(
        (float,), 0.0, "Keep an exponential moving average of the weights, updated after every step with this "
        "decay (its rate warms up as min(decay, (1 + n) / (10 + n)) after n steps); validation, `model_best` and "
        "every checkpoint's served weights are the average. 0 turns it off; 0.99-0.999 are usual (closer to 1 "
        "for runs of many steps).", minimum=0, maximum=0.9999,
    ),
    # Runtime.
    "num_workers": ConfigKey(
        (int,), 2, "DataLoader worker processes when reading one .npy per clip (`feature_cache`: false); the "
        "feature cache needs none.", minimum=0,
    ),
    "feature_cache": ConfigKey(
        (bool,), True, "Gather each batch from one memory-mapped file per split list (a copy of its features, built "
        "in `cache/` beside the list on first use and rebuilt when the list or a feature file changes); false "
        "reads one .npy per clip.",
    ),
    "feature_cache_dtype": ConfigKey(
        (str,), "float32", "Precision of the feature cache: `float16` halves its size and the host-to-GPU copies "
        "(batches become float32 again on the device).", choices=("float32", "float16"),
    ),
    "prefetch_batches": ConfigKey(
        (int,), 2, "Batches a background thread gathers from the feature cache ahead of the training step; 0 "
        "gathers in the step's thread.", minimum=0,
    ),
    "device": ConfigKey(
        (str,), "auto", "Device; `auto` picks CUDA when available.",
        choices=("auto", "cpu", "cuda"), pattern=(r"cuda:\d+", "cuda:N"),
    ),
    "seed": ConfigKey((int,), 42, "Random seed."),
    "amp": ConfigKey((bool,), True, "Mixed precision on CUDA (ignored on CPU)."),
    "channels_last": ConfigKey((bool,), True, "Channels-last memory format for conv nets (faster on CPU and CUDA)."),
    "compile": ConfigKey(
        (bool,), False, "torch.compile the model: a minute or more of compiling, then faster steps on recent GPUs; "
        "where it cannot compile, training warns once and runs without it.",
    ),
    "resume": ConfigKey((bool,), False, "Resume from the latest checkpoint in `checkpoint_dir`."),
    "best_by": ConfigKey(
        (str,), "validation", "Which epoch `model_best.pth.tar` (what evaluation and prediction use) holds: "
        "`validation` (the highest validation accuracy, then the lowest validation loss) or `last_epoch` (the "
        "final one: for a validation list drawn from the training recordings' sources, which saturates while the "
        "schedule still improves the model on new ones, e.g. FSDD's unseen speakers).",
        choices=("validation", "last_epoch"),
    ),
    "keep_checkpoints": ConfigKey(
        (int,), 5, "Epoch checkpoints to keep (0 keeps all); model_best is kept.", minimum=0,
    ),
    "log_every": ConfigKey((int,), 0, "Log every N steps; 0 logs once per epoch only.", minimum=0),
    # Features and augmentation.
    "normalization": ConfigKey(
        (str,), "per_band",
        "Feature normalisation: training-set mean/std per mel band or global; `per_clip` first removes "
        "each clip's own per-band mean (robust to microphones and speakers).",
        choices=("per_band", "per_clip", "global", "none"),
    ),
    "class_weighting": ConfigKey(
        (str,), "none", "Loss weights per class: `balanced` weighs each inversely to its training clips (the "
        "crops of `train_soundscapes` are not counted).", choices=("none", "balanced"),
    ),
    "balanced_sampling": ConfigKey((bool,), False, "Sample training clips class-balanced."),
    "spec_augment": ConfigKey((bool,), False, "Apply SpecAugment frequency/time masks."),
    "freq_mask": ConfigKey(
        (int,), 16, "Max width of a SpecAugment frequency mask (bins).", minimum=0,
    ),
    "time_mask": ConfigKey((int,), 40, "Max width of a SpecAugment time mask (frames).", minimum=0),
    "n_masks": ConfigKey((int,), 2, "SpecAugment masks of each kind.", minimum=0),
    "mixup_alpha": ConfigKey(
        (float,), 0.0, "Mixup Beta(alpha, alpha); 0 turns mixup off.", minimum=0,
    ),
    "splice_prob": ConfigKey(
        (float,), 0.0,
        "Time splicing (CutMix along time): with this probability a training crop's frames from a random "
        "point on are replaced by another crop's, and the label is shared by their lengths; teaches a "
        "detector what a window looks like where one sound gives way to another. 0 turns it off.",
        minimum=0, maximum=1,
    ),
    "random_shift": ConfigKey((bool,), False, "Random circular time shift of each training clip."),
    "freq_warp": ConfigKey(
        (float,), 0.0, "Random stretch of the mel axis by up to this fraction (0 turns it off).",
        minimum=0, maximum=0.5,
    ),
    "time_stretch": ConfigKey(
        (float,), 0.0,
        "Random stretch of the time axis by up to this fraction, as speed perturbation's change of tempo "
        "(circular, like `random_shift`; 0 turns it off).",
        minimum=0, maximum=0.5,
    ),
    # Whole clips: training crops and the windows that score a clip.
    "crop_frames": ConfigKey(
        (int,), None,
        "Frames of a training crop and of each window that scores a clip (validation, evaluation, "
        "predict.py); null means the features' `n_frames`. Clips longer than a crop (whole clips, "
        "`--whole_clips`) get a new random crop per clip and epoch; shorter ones are padded (`pad_mode`).",
        positive=True,
    ),
    "crop_hop_frames": ConfigKey(
        (int,), None,
        "Hop between the windows that cover a clip in validation, evaluation and predict.py (frames; also "
        "long mode's default hop); a clip scores the mean of its windows' probabilities. null means half a window.",
        positive=True,
    ),
    # Background mixing.
    "background_prob": ConfigKey(
        (float,), 0.0, "Probability that a training clip is mixed with a background clip (0 turns mixing off).",
        minimum=0, maximum=1,
    ),
    "background_list": ConfigKey(
        (str,), None,
        "List file of background clips (entries relative to the folder above the list's, i.e. the "
        "`--save_dir` it was written to); null for none.",
        is_path=True,
    ),
    "background_classes": ConfigKey(
        (list,), [], "Training classes whose clips also serve as backgrounds, e.g. `[\"other\"]`.", items=str,
    ),
    "background_snr_min": ConfigKey(
        (float,), -6.0, "Lowest clip-to-background power ratio of a mix (dB, over the crop).",
    ),
    "background_snr_max": ConfigKey(
        (float,), 12.0, "Highest clip-to-background power ratio of a mix (dB, over the crop).",
    ),
    "train_soundscapes": ConfigKey(
        (str,), None,
        "Folder of soundscapes built from the training list (`tools.soundscapes`); each mixture adds one "
        "training crop per epoch, labelled `target_class` where it holds the event, else by the background clip "
        "that covers most of it, so a detector learns the windows it scores in long mode; null for none.",
        is_path=True,
    ),
    # Added noise.
    "noise_prob": ConfigKey(
        (float,), 0.0,
        "Probability that a training clip gets stationary noise of random spectral tilt added (mel energies), "
        "so that a recording's noise floor cannot stand in for its class; 0 turns it off.",
        minimum=0, maximum=1,
    ),
    "noise_snr_min": ConfigKey((float,), 10.0, "Lowest clip-to-noise power ratio of added noise (dB, over the crop)."),
    "noise_snr_max": ConfigKey((float,), 40.0, "Highest clip-to-noise power ratio of added noise (dB, over the crop)."),
    "gain_db": ConfigKey(
        (float,), 0.0,
        "Random gain of each training clip, uniform in +- this many dB (mel energies, the features' log scale), so "
        "that a recording's level cannot stand in for its class; 0 turns it off.",
        minimum=0, maximum=40,
    ),
    "eq_db": ConfigKey(
        (float,), 0.0,
        "Random equalisation of each training clip: a smooth gain curve across the mel bands of up to +- this "
        "many dB (FilterAugment), as another microphone, room or voice colours a sound; 0 turns it off.",
        minimum=0, maximum=40,
    ),
    "lowpass_prob": ConfigKey(
        (float,), 0.0,
        "Probability that a training clip is low-passed at a random cutoff in the upper half of the mel bands, "
        "rolling off by 1-8 dB per band above it, as a microphone, codec or lower sample rate cuts the top of the "
        "spectrum; 0 turns it off.",
        minimum=0, maximum=1,
    ),
    # Reporting.
    "target_class": ConfigKey(
        (str,), None, "Class name for binary-detection reports; null for none.",
    ),
    "max_false_alarm_rate": ConfigKey(
        (float,),
        0.05,
        "False-alarm rate at which detection reports pick a threshold.",
        minimum=0,
        maximum=1, evaluation_only=True,
    ),
    "detection_soundscapes": ConfigKey(
        (str,), None,
        "Folder of recordings (e.g. validation soundscapes from `tools.soundscapes`) on which evaluation "
        "picks the long-mode detection settings that `predict.py --long` uses; null for none.",
        is_path=True, evaluation_only=True,
    ),
    "detection_reference": ConfigKey(
        (str,), None, "Reference events CSV of `detection_soundscapes` (file, onset[_s], offset[_s], class).",
        is_path=True, evaluation_only=True,
    ),
    "detection_hop_seconds": ConfigKey(
        (float,), 0.25, "Window hop of long-mode detection tuned on `detection_soundscapes` (seconds).",
        positive=True, evaluation_only=True,
    ),
    "detection_grid": ConfigKey(
        (dict,), {}, "Settings tried when tuning detection on `detection_soundscapes`, replacing the default "
        "grid's lists by field, e.g. `{\"edge_trims\": [0], \"thresholds\": [0.5, 0.7]}`; fields "
        + ", ".join(f"`{field}`" for field in GRID_SETTINGS) + " (median filters in windows, odd; the other "
        "durations in s); `{}` is the default grid (`DETECTION_GRID`, `audioclf/events.py`).", check=check_grid,
        evaluation_only=True,
    ),
}

# Keys only evaluation reads: changing them needs no new model (a resume or the benches' --reuse allow it).
EVALUATION_KEYS = frozenset(key for key, spec in CONFIG_SCHEMA.items() if spec.evaluation_only)

# Names people commonly write instead of ours; used only to suggest the right key.
_KEY_ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "max_epochs": "epochs",
    "bs": "batch_size",
    "wd": "weight_decay",
    "workers": "num_workers",
    "arch": "model",
    "model_name": "model",
    "data_dir": "datapath",
    "log_dir": "summaries_dir",
    "lr_scheduler": "scheduler",
    "mixup": "mixup_alpha",
    "clip_grad_norm": "grad_clip",
}

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _suggest_key(name: str) -> str | None:
    """Closest valid key for a misspelt or aliased one, or None."""
    lowered = name.lower()
    if lowered in CONFIG_SCHEMA:
        return lowered
    if lowered in _KEY_ALIASES:
        return _KEY_ALIASES[lowered]
    candidates = list(CONFIG_SCHEMA) + list(_KEY_ALIASES)
    matches = difflib.get_close_matches(lowered, candidates, n=1, cutoff=0.6)
    if not matches:
        return None
    return _KEY_ALIASES.get(matches[0], matches[0])


def _type_name(spec: ConfigKey) -> str:
    names = {bool: "bool", int: "int", float: "float", str: "str", dict: "dict"}
    name = " or ".join(names.get(t, t.__name__) for t in spec.type)
    if spec.items is not None:
        name += f" of {names.get(spec.items, spec.items.__name__)}"
    if spec.default is None:
        name += " or null"
    return name


def _show(value: Any) -> str:
    """A value as the user wrote it in JSON, with its Python type."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return f"{text} ({type(value).__name__})"


def _check_value(key: str, value: Any) -> tuple[Any, str | None]:
    """Validate one value against its schema entry; return (normalised value, problem or None)."""
    spec = CONFIG_SCHEMA[key]
    if value is None:
        if spec.default is None:
            return None, None
        return value, f'"{key}" must be {_type_name(spec)}, got null'
    # bool is a subclass of int in Python but never a number in a config.
    if isinstance(value, bool) and bool not in spec.type:
        return value, f'"{key}" must be {_type_name(spec)}, got {_show(value)}'
    if float in spec.type and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # "lr": 1 means 1.0
    if not isinstance(value, spec.type):
        return value, f'"{key}" must be {_type_name(spec)}, got {_show(value)}'
    if isinstance(value, list) and spec.items is not None:
        wrong = [item for item in value if not isinstance(item, spec.items)]
        if wrong:
            return value, f'"{key}" must be a list of {_type_name(ConfigKey((spec.items,)))}, got {_show(wrong[0])}'

    if isinstance(value, str) and (spec.choices or spec.pattern):
        allowed = value in (spec.choices or ()) or (
            spec.pattern is not None and re.fullmatch(spec.pattern[0], value) is not None
        )
        if not allowed:
            options = [f'"{c}"' for c in spec.choices or ()]
            if spec.pattern is not None:
                options.append(f'"{spec.pattern[1]}"')
            return value, f'"{key}" must be one of {", ".join(options)}; got "{value}"'

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return value, f'"{key}" must be a finite number, got {value}'
        if spec.positive and not value > 0:
            return value, f'"{key}" must be > 0, got {value}'
        if spec.minimum is not None and value < spec.minimum:
            return value, f'"{key}" must be >= {spec.minimum:g}, got {value}'
        if spec.maximum is not None and value > spec.maximum:
            return value, f'"{key}" must be <= {spec.maximum:g}, got {value}'
    return value, None


def _resolve(given: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults and derived values into validated, explicitly given keys (schema order)."""
    values: dict[str, Any] = {}
    for key, spec in CONFIG_SCHEMA.items():
        values[key] = copy.deepcopy(given[key] if key in given else spec.default)
    if values["summaries_dir"] is None:
        values["summaries_dir"] = os.path.join(values["checkpoint_dir"], "runs")
    if values["eval_batch_size"] is None:
        values["eval_batch_size"] = 4 * values["batch_size"]
    # One spelling for the schedule, so consumers compare against a string only.
    if values["scheduler"] is True:
        values["scheduler"] = "step"
    elif values["scheduler"] is False:
        values["scheduler"] = "none"
    return values


def _combination_problems(values: Mapping[str, Any]) -> list[str]:
    """Problems that involve several keys (each key alone being valid)."""
    problems = []
    for low, high in (("background_snr_min", "background_snr_max"), ("noise_snr_min", "noise_snr_max")):
        if values[low] > values[high]:
            problems.append(f'"{low}" ({values[low]}) must not exceed "{high}" ({values[high]})')
    if values["background_prob"] > 0 and not (values["background_list"] or values["background_classes"]):
        problems.append('"background_prob" > 0 needs background clips: set "background_list" or '
                        '"background_classes" (or set "background_prob" to 0)')
    if values["train_soundscapes"] is not None and values["target_class"] is None:
        problems.append('"train_soundscapes" labels windows with their event: set "target_class" (the class '
                        "of the soundscapes' events)")
    if values["freeze_bn"] and not values["pretrained"]:
        problems.append('"freeze_bn": true keeps pretrained batch-norm statistics, so it needs "pretrained": true '
                        "(from scratch the statistics are never learned)")
    if values["freeze_layers"] and not values["pretrained"]:
        problems.append('"freeze_layers" keeps pretrained layers as loaded, so it needs "pretrained": true '
                        "(from scratch they would stay random)")
    if values["freeze_layers"] and values["freeze_backbone"]:
        problems.append('"freeze_backbone": true already freezes every layer, so "freeze_layers" has no effect; '
                        "remove one of the two")
    if values["balanced_sampling"] and values["class_weighting"] == "balanced":
        problems.append('"balanced_sampling" and "class_weighting": "balanced" each even out the classes; together '
                        "they weight a class by 1 / count squared, so rare classes dominate: keep one")
    return problems


def _absolute(path: str) -> str:
    """Absolute form of a local path (relative to the cwd); URLs such as s3://... kept as given."""
    if _URL_RE.match(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


class Params:
    """Training configuration loaded from a JSON file and validated against ``CONFIG_SCHEMA``.

    The file may use ``//`` and ``/* */`` comments and trailing commas (it is read with
    ``json5``). Unknown keys, missing required keys, wrong types and out-of-range values are
    all reported together in one ``ConfigError``. Defaults come from ``CONFIG_SCHEMA``;
    ``summaries_dir`` defaults to ``<checkpoint_dir>/runs``, ``eval_batch_size`` to
    4 x ``batch_size``, and ``scheduler`` is normalised to one of ``"step"``, ``"cosine"``, ``"none"``.

    Relative paths (``datapath``, ``trainlist``, ``vallist``, ``evallist``, ``checkpoint_dir``,
    ``summaries_dir``) are resolved against the current working directory at load (or
    ``update``) time, not against the config file's folder, and stored as absolute strings;
    ``~`` is expanded and URL-like values (``s3://...``) are kept as written.

    Values are read as attributes (``params.lr``) or keys (``params["lr"]``). Assigning a
    known key validates it; assigning an unknown one raises ``ConfigError``.
    """

    def __init__(self, path: str | os.PathLike[str]):
        source = str(path)
        try:
            with open(path, encoding="utf-8") as file:
                data = json5.load(file, allow_duplicate_keys=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {source}") from None
        except OSError as error:  # a folder, no permission: name the path, no traceback
            raise ConfigError(source, [f"cannot read the config file: {error.strerror or error}"]) from None
        except ValueError as error:  # json5 reports syntax errors as "<string>:LINE message"
            message = str(error)
            match = re.match(r"^<string>:(\d+)\s+(.*)$", message, re.DOTALL)
            if match:
                line, message = match.groups()
                raise ConfigError(source, [f"line {line}: invalid JSON: {message}"]) from error
            raise ConfigError(source, [f"invalid JSON: {message}"]) from error
        self._load(data, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Params:
        """Build validated params from an already parsed mapping (``source`` labels errors)."""
        params = cls.__new__(cls)
        params._load(data, source)
        return params

    def _load(self, data: Any, source: str) -> None:
        object.__setattr__(self, "_source", source)
        if not isinstance(data, Mapping):
            problem = f"top level must be a JSON object, got {type(data).__name__}"
            raise ConfigError(source, [problem])
        given = self._validate(dict(data), source, check_required=True)
        values = _resolve(given)
        if problems := _combination_problems(values):
            raise ConfigError(source, problems)
        object.__setattr__(self, "_given", given)
        object.__setattr__(self, "_values", values)

    @staticmethod
    def _validate(data: dict[str, Any], source: str, check_required: bool) -> dict[str, Any]:
        """Check every key; return normalised values with absolute paths, or raise all problems."""
        problems: list[str] = []
        checked: dict[str, Any] = {}
        for key, value in data.items():
            if key not in CONFIG_SCHEMA:
                suggestion = _suggest_key(str(key))
                hint = f' (did you mean "{suggestion}"?)' if suggestion else ""
                problems.append(f'unknown key "{key}"{hint}')
                continue
            value, problem = _check_value(key, value)
            if problem:
                problems.append(problem)
                continue
            if CONFIG_SCHEMA[key].check is not None:
                value, more = CONFIG_SCHEMA[key].check(value)
                if more:
                    problems.extend(more)
                    continue
            if CONFIG_SCHEMA[key].is_path and isinstance(value, str):
                value = _absolute(value)
            checked[key] = value
        if check_required:
            for key, spec in CONFIG_SCHEMA.items():
                if spec.required and key not in data:
                    meaning = spec.help.rstrip(".").lower()
                    problems.append(f'missing required key "{key}" ({meaning})')
        if problems:
            raise ConfigError(source, problems)
        return checked

    # ---- access --------------------------------------------------------------------------

    @property
    def source(self) -> str:
        """The file (or label) this config was loaded from."""
        return self._source

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Private names must not recurse into _values
        # (copy and pickle probe for __setstate__ etc. before __dict__ is filled).
        if name.startswith("_"):
            raise AttributeError(name)
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        suggestion = _suggest_key(name)
        hint = f'; did you mean "{suggestion}"?' if suggestion else ""
        raise AttributeError(f'no config key "{name}"{hint}')

    def __setattr__(self, name: str, value: Any) -> None:
        if name in CONFIG_SCHEMA:
            self.update({name: value})
            return
        suggestion = _suggest_key(name)
        hint = f' (did you mean "{suggestion}"?)' if suggestion else ""
        raise ConfigError(self._source, [f'cannot set unknown key "{name}"{hint}'])

    def __getitem__(self, key: str) -> Any:
        if key not in CONFIG_SCHEMA:
            raise KeyError(key)
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Params):
            return NotImplemented
        return self._values == other._values

    def __repr__(self) -> str:
        return f"Params({self._source!r}, {self._values!r})"

    def get(self, key: str, default: Any = None) -> Any:
        """Value of ``key``, or ``default`` if it is not a config key."""
        return self._values.get(key, default)

    def keys(self) -> list[str]:
        """All config keys, in schema order."""
        return list(self._values)

    def is_set(self, key: str) -> bool:
        """Whether the config gave ``key`` itself (rather than taking its default)."""
        return key in self._given

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable copy of the resolved config (defaults filled)."""
        return copy.deepcopy(self._values)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as indented JSON, atomically."""
        atomic_write_json(path, self.to_dict())

    def update(self, data: Mapping[str, Any]) -> None:
        """Set several keys at once; validated, and nothing changes if any value is invalid."""
        checked = self._validate(dict(data), self._source, check_required=False)
        given = {**self._given, **checked}
        values = _resolve(given)
        if problems := _combination_problems(values):
            raise ConfigError(self._source, problems)
        object.__setattr__(self, "_given", given)
        object.__setattr__(self, "_values", values)


def config_reference_markdown() -> str:
    """Markdown table of every config key (key, type, default, meaning) for the README."""
    lines = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
    for key, spec in CONFIG_SCHEMA.items():
        default = "*required*" if spec.required else f"`{json.dumps(spec.default)}`"
        meaning = spec.help
        options = [f"`{c}`" for c in spec.choices or ()]
        if spec.pattern is not None:
            options.append(f"`{spec.pattern[1]}`")
        if options:
            meaning += f" One of {', '.join(options)}."
        bounds = []
        if spec.positive:
            bounds.append("> 0")
        if spec.minimum is not None:
            bounds.append(f">= {spec.minimum:g}")
        if spec.maximum is not None:
            bounds.append(f"<= {spec.maximum:g}")
        if bounds:
            meaning += f" Must be {' and '.join(bounds)}."
        lines.append(f"| `{key}` | {_type_name(spec)} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"
