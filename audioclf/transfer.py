"""Transfer learning from pretrained backbones: the rules a pretrained model brings with it.

- **Front end.** A backbone pretrained on a fixed front end (YAMNet: ``frontend="yamnet"`` in its
  registry entry) only works on those features; training it on others is an error that says
  which preprocessing flags make the right ones (``check_features``, which also checks the
  features against the config's ``features`` block).
- **Normalisation.** Such a backbone saw raw log-mels, so dataset normalisation would shift its
  inputs: ``normalization`` is forced to ``none``, and asking for another one is an error.
- **Head.** ``head_classes`` maps dataset classes to pretrained classes whose classifier rows
  they start from (the rest start at zero); ``{}`` gives a fresh head (``head_rows``).
- **Fine-tuning.** ``freeze_backbone`` trains the classifier only, with frozen batch-norm
  statistics (a linear probe); ``freeze_layers`` keeps the backbone's first layers as loaded and
  ``freeze_bn`` its batch-norm statistics (``apply_freezing``); ``backbone_lr_scale`` gives the
  backbone a fraction of the head's learning rate (``parameter_groups``).
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

from torch import nn

from audioclf.classifier import AudioClassifier
from audioclf.config import Params
from audioclf.feature_flags import feature_params_from_flags, flag_name, preprocessing_command
from audioclf.frontend import FeatureParams
from models import get_model_entry

log = logging.getLogger(__name__)


class TransferError(ValueError):
    """A config or feature set that does not fit the pretrained model; the message says what to change."""


def check_features(params: Params, feature_params: dict | None, source: str) -> None:
    """TransferError when the features in ``source`` are not the ones the config expects: those of its
    ``features`` block, and those of a pretrained model's front end.

    The one place training and evaluation check the features against the config; the message names
    every parameter that differs and the preprocessing command that makes the right features.
    """
    if params.features:
        expected = feature_params_from_flags(params.features)
        rerun = preprocessing_command(params.datapath, config_path=params.source)
        if feature_params is None:
            raise TransferError(
                f'the "features" block of {params.source} cannot be checked: {source} has no feature parameters; '
                f"preprocess with:\n  {rerun}")
        found = FeatureParams.from_dict(feature_params)
        differing = [f"{flag_name(name)} {getattr(found, name)!r} (config: {getattr(expected, name)!r})"
                     for name in found.differences(expected)]
        if differing:
            raise TransferError(
                f'the features of {source} differ from the "features" block of {params.source}: '
                f"{', '.join(differing)}. Re-run preprocessing with the config:\n  {rerun}")
    frontend = get_model_entry(params.model).frontend
    if not params.pretrained or frontend is None:
        return
    if params.features:  # the block's features are on disk: the block itself is what to change
        command = (f'set "frontend": "{frontend}" in the "features" block of {params.source}, then run\n  '
                   f"{preprocessing_command(params.datapath, config_path=params.source)}")
    else:
        command = f"preprocess with:\n  {preprocessing_command(params.datapath, frontend=frontend)}"
    if feature_params is None:
        raise TransferError(
            f'pretrained "{params.model}" needs features made with its "{frontend}" front end, but {source} has no '
            f"feature parameters to check; {command}")
    differences = FeatureParams.from_dict(feature_params).preset_differences(frontend)
    if differences:
        raise TransferError(
            f'pretrained "{params.model}" was trained on the "{frontend}" front end, but the features of {source} '
            f"differ: {', '.join(differences)}. To match, {command}\n"
            'or set "pretrained": false to train it from scratch on these features.')


def resolve_normalization(params: Params) -> str:
    """``normalization`` to train with: ``none`` for a backbone pretrained on a fixed front end."""
    if not params.pretrained or get_model_entry(params.model).frontend is None:
        return params.normalization
    if params.is_set("normalization") and params.normalization != "none":
        raise TransferError(
            f'"normalization": "{params.normalization}" cannot be used with pretrained "{params.model}": its '
            'weights expect the raw features of its front end; remove the key or set "normalization": "none"')
    if params.normalization != "none":
        log.info('pretrained %s: "normalization" is "none" (its weights expect raw features)', params.model)
    return "none"


def head_rows(params: Params, class_names: Sequence[str]) -> list[int | None] | None:
    """For ``head_classes``: per dataset class, the pretrained class index it starts from (or None)."""
    mapping = params.head_classes
    if not mapping:
        return None
    if not params.pretrained:
        raise TransferError('"head_classes" starts classes from the pretrained head; it needs "pretrained": true')
    entry = get_model_entry(params.model)
    pretrained_names = list(entry.weights.meta["categories"])
    problems = []
    for dataset_class, pretrained_class in mapping.items():
        if dataset_class not in class_names:
            problems.append(f"{dataset_class!r} is not a class of the dataset ({', '.join(class_names)})")
        if pretrained_class not in pretrained_names:
            close = difflib.get_close_matches(str(pretrained_class), pretrained_names, n=3, cutoff=0.5)
            hint = f"; close: {', '.join(repr(name) for name in close)}" if close else ""
            problems.append(f"{pretrained_class!r} is not a class of {params.model}'s pretrained head{hint}")
    if problems:
        raise TransferError('"head_classes": ' + "; ".join(problems))
    return [pretrained_names.index(mapping[name]) if name in mapping else None for name in class_names]


def apply_freezing(params: Params, model: AudioClassifier) -> None:
    """What the config keeps as loaded: ``freeze_backbone``, ``freeze_layers`` and ``freeze_bn``."""
    if params.freeze_backbone:
        model.freeze_backbone()
    elif params.freeze_bn:
        model.freeze_batch_norm()
    if params.freeze_layers:
        try:
            model.freeze_layers(params.freeze_layers)
        except ValueError as error:
            raise TransferError(f'"freeze_layers": {error}') from None


def parameter_groups(params: Params, model: AudioClassifier) -> list[dict]:
    """Optimizer groups: the head at ``lr`` first, then the backbone at ``lr * backbone_lr_scale``.

    A frozen backbone has no group (its parameters get no gradient).
    """
    if params.freeze_backbone and params.backbone_lr_scale != 1.0:
        raise TransferError('"freeze_backbone": true trains no backbone weights, so "backbone_lr_scale" has no '
                            "effect; remove one of the two")
    head = [parameter for parameter in model.head().parameters() if parameter.requires_grad]
    groups = [{"params": head, "lr": params.lr, "name": "head"}]
    backbone = [parameter for parameter in model.backbone_parameters() if parameter.requires_grad]
    if backbone:
        groups.append({"params": backbone, "lr": params.lr * params.backbone_lr_scale, "name": "backbone"})
    return groups


def trainable_summary(model: nn.Module) -> str:
    """``"2,050 of 3,731,721 parameters trained"``."""
    total = sum(parameter.numel() for parameter in model.parameters())
    trained = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return f"{trained:,} of {total:,} parameters trained"
