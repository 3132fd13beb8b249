"""The backbone registry: ``@register_model`` fills it, ``get_model`` builds from it.

Each entry knows where its first conv and its classifier live (dotted module paths, as in
timm's ``pretrained_cfg``), so adapting a backbone to spectrograms is one generic path:

    pretrained=True : build with the weights' original head -> load weights
                      -> sum the RGB first-conv kernels to ``in_channels`` -> new classifier
    pretrained=False: build with ``num_classes`` -> fresh first conv with ``in_channels``
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from .weights import AnyWeights, load_any_weights

# builder(num_classes, **model_kwargs) -> model with its native input channels
ModelBuilder = Callable[..., nn.Module]
StateDictRemap = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class ModelEntry:
    """How to build one backbone and where its first conv and classifier are."""

    name: str
    builder: ModelBuilder
    first_conv: str  # dotted path of the nn.Conv2d that sees the input
    classifier: str  # dotted path of the final nn.Linear
    min_input_size: tuple[int, int]  # (height, width) = (n_mels, n_frames)
    weights: Optional[AnyWeights] = None  # None: no pretrained weights exist
    native_in_channels: int = 3  # input channels the builder (and the weights) use
    remap_state_dict: Optional[StateDictRemap] = None  # fix legacy checkpoint keys
    finalize: Optional[Callable[[nn.Module], None]] = None  # last touch after weights load
    # A multi-label head (independent classes, e.g. AudioSet's 527 labels) turns logits into
    # probabilities with a sigmoid per class; a single-label head (one class per clip) with a softmax.
    multi_label: bool = False
    # Feature preset (audioclf.frontend.PRESETS) the pretrained weights were trained on; None: any.
    frontend: Optional[str] = None
    # Dotted path of the nn.Sequential of the backbone's layers in input order, the first of them
    # holding the first conv (config "freeze_layers" keeps a prefix of it); None: no such list.
    layers: Optional[str] = None

    def builder_arguments(self) -> list[str]:
        """Keyword arguments the builder accepts besides ``num_classes`` (``model_args``)."""
        parameters = inspect.signature(self.builder).parameters
        return [name for name in parameters if name != "num_classes"]

    def get_first_conv(self, model: nn.Module) -> nn.Conv2d:
        """The conv layer that sees the input spectrogram."""
        return model.get_submodule(self.first_conv)

    def set_first_conv(self, model: nn.Module, conv: nn.Conv2d) -> None:
        """Replace the input conv layer."""
        model.set_submodule(self.first_conv, conv)

    def get_layers(self, model: nn.Module) -> nn.Sequential:
        """The backbone's layers in input order (``layers``); ValueError naming the models that have them."""
        if self.layers is None:
            have = [name for name, entry in sorted(_MODEL_REGISTRY.items()) if entry.layers is not None]
            raise ValueError(f"model '{self.name}' has no list of layers to freeze (models with one: "
                             f"{', '.join(have)}); set it to 0 or use one of those")
        return model.get_submodule(self.layers)

    def get_classifier(self, model: nn.Module) -> nn.Linear:
        """The final linear layer producing the logits."""
        return model.get_submodule(self.classifier)

    def set_classifier(self, model: nn.Module, linear: nn.Linear) -> None:
        """Replace the final linear layer."""
        model.set_submodule(self.classifier, linear)


_MODEL_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    first_conv: str,
    classifier: str,
    min_input_size: tuple[int, int],
    weights: Optional[AnyWeights] = None,
    native_in_channels: int = 3,
    remap_state_dict: Optional[StateDictRemap] = None,
    finalize: Optional[Callable[[nn.Module], None]] = None,
    multi_label: bool = False,
    frontend: Optional[str] = None,
    layers: Optional[str] = None,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a ``builder(num_classes, **model_kwargs) -> nn.Module`` under ``name``.

    ``multi_label=True`` marks a pretrained head whose classes are independent (sigmoid, not
    softmax); ``frontend`` names the feature preset the pretrained weights expect; ``layers`` is
    the dotted path of the layer sequence ``freeze_layers`` freezes a prefix of.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODEL_REGISTRY:
            raise ValueError(f"Model '{name}' is already registered")
        _MODEL_REGISTRY[name] = ModelEntry(
            name=name,
            builder=builder,
            first_conv=first_conv,
            classifier=classifier,
            min_input_size=min_input_size,
            weights=weights,
            native_in_channels=native_in_channels,
            remap_state_dict=remap_state_dict,
            finalize=finalize,
            multi_label=multi_label,
            frontend=frontend,
            layers=layers,
        )
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_MODEL_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    """Registry entry for ``name``; unknown names list the known ones and the closest match."""
    if name in _MODEL_REGISTRY:
        return _MODEL_REGISTRY[name]
    close = difflib.get_close_matches(name, list_models(), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"Unknown model '{name}'.{hint} Known models: {', '.join(list_models())}")


def model_min_input_size(name: str) -> tuple[int, int]:
    """Minimum (height, width) = (n_mels, n_frames) the backbone accepts."""
    return get_model_entry(name).min_input_size


def check_input_size(name: str, n_mels: int, n_frames: int) -> None:
    """Raise ValueError, naming the model and its minimum, if (n_mels, n_frames) is too small."""
    min_height, min_width = model_min_input_size(name)
    if n_mels < min_height or n_frames < min_width:
        raise ValueError(
            f"Input of {n_mels}x{n_frames} (n_mels x n_frames) is too small for model '{name}': "
            f"it needs at least {min_height}x{min_width} "
            f"(n_mels >= {min_height}, n_frames >= {min_width})"
        )


def _check_model_kwargs(entry: ModelEntry, model_kwargs: dict[str, Any]) -> None:
    """ValueError naming any keyword the builder does not take (with the closest accepted one), or
    a value whose type is not its default's (an int where the default is a float is fine)."""
    accepted = entry.builder_arguments()
    parameters = inspect.signature(entry.builder).parameters
    for key, value in model_kwargs.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"Model '{entry.name}' has no argument '{key}'.{hint} "
                f"Accepted model_args: {', '.join(accepted) or 'none'}"
            )
        default = parameters[key].default
        if not _same_kind(value, default):
            raise ValueError(f"model_args '{key}' of model '{entry.name}' must be of type {type(default).__name__} "
                             f"(default {default!r}), got {value!r}")


def _same_kind(value: Any, default: Any) -> bool:
    """Whether ``value`` may stand where the builder's ``default`` does (JSON types: bool, int, float, str)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):  # an int stands for a float; True is not a number here
        return isinstance(value, (int, float) if isinstance(default, float) else int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True  # no default, or one of another kind: the builder checks it


def _call_builder(entry: ModelEntry, num_classes: int, model_kwargs: dict[str, Any]) -> nn.Module:
    """The entry's builder; a value it cannot build with (a negative width, dropout 2) is a ValueError
    that names the model_args, not a traceback from deep inside torch."""
    try:
        return entry.builder(num_classes, **model_kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"model_args {model_kwargs} are not valid for model '{entry.name}': {error}") from None


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt RGB conv kernels (out, 3, kh, kw) to ``in_channels`` inputs, as timm does.

    1 channel: sum over the RGB axis (a gray image = R = G = B gives the same response).
    Other counts: repeat the RGB kernels and scale by 3 / in_channels. Computed in float32.
    """
    original_dtype = weight.dtype
    weight = weight.float()
    source_channels = weight.shape[1]
    if in_channels == source_channels:
        return weight.to(original_dtype)
    if source_channels != 3:
        raise ValueError(f"Cannot adapt a first conv with {source_channels} input channels (expected 3)")
    if in_channels == 1:
        weight = weight.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_channels / 3)
        weight = weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3 / in_channels)
    return weight.to(original_dtype)


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A new conv of ``conv``'s class and hyper-parameters but ``in_channels`` inputs."""
    if conv.groups != 1:
        raise ValueError("Cannot change the input channels of a grouped first conv")
    return type(conv)(  # the same class: e.g. a TensorFlow-"same"-padding conv stays one
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


def _fresh_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Randomly initialised replacement for ``conv`` taking ``in_channels`` inputs."""
    new_conv = _conv_like(conv, in_channels)
    # torchvision's own init for ResNet / EfficientNet / MobileNet convs; a BatchNorm follows
    # every first conv here, so the scale of the init matters little.
    nn.init.kaiming_normal_(new_conv.weight, mode="fan_out", nonlinearity="relu")
    if new_conv.bias is not None:
        nn.init.zeros_(new_conv.bias)
    return new_conv


def _pretrained_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Replacement for a pretrained ``conv`` with its RGB kernels adapted to ``in_channels``."""
    new_conv = _conv_like(conv, in_channels)
    with torch.no_grad():
        new_conv.weight.copy_(adapt_input_conv(conv.weight, in_channels))
        if conv.bias is not None:
            new_conv.bias.copy_(conv.bias)
    return new_conv


def _new_classifier(linear: nn.Linear, num_classes: int) -> nn.Linear:
    """A freshly initialised Linear(in_features, num_classes) on ``linear``'s device and dtype."""
    return nn.Linear(
        linear.in_features,
        num_classes,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )


def _pretrained_head(linear: nn.Linear, num_classes: int, rows: Sequence[Optional[int]]) -> nn.Linear:
    """A Linear(in_features, num_classes) whose row ``i`` is the pretrained row ``rows[i]`` (zeros for None).

    With every row mapped this is (a selection of) the original head; unmapped classes start at
    zero, so a softmax over one mapped class and unmapped ones starts as the mapped class's sigmoid.
    """
    head = _new_classifier(linear, num_classes)
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()
        for index, row in enumerate(rows):
            if row is not None:
                head.weight[index] = linear.weight[row]
                if head.bias is not None:
                    head.bias[index] = linear.bias[row]
    return head


def _check_head_rows(entry: ModelEntry, num_classes: int, rows: Sequence[Optional[int]], n_pretrained: int) -> None:
    if len(rows) != num_classes:
        raise ValueError(f"head_from_pretrained has {len(rows)} entries for {num_classes} classes; give one per class")
    for row in rows:
        if row is not None and not 0 <= row < n_pretrained:
            raise ValueError(f"head_from_pretrained: {row} is not a class of '{entry.name}''s pretrained head "
                             f"(0 .. {n_pretrained - 1})")


def _build_pretrained(
    entry: ModelEntry, num_classes: int, in_channels: int, model_kwargs: dict[str, Any],
    head_rows: Optional[Sequence[Optional[int]]] = None,
) -> nn.Module:
    """Build with the original head, load the weights, then adapt the input and the head."""
    if entry.weights is None:
        raise ValueError(
            f"Model '{entry.name}' has no pretrained weights; use pretrained=False "
            f'(set "pretrained": false in the config)'
        )
    state_dict = load_any_weights(entry.weights)  # before building: fail fast offline
    if entry.remap_state_dict is not None:
        state_dict = entry.remap_state_dict(state_dict)
    n_pretrained = len(entry.weights.meta["categories"])
    if head_rows is not None:
        _check_head_rows(entry, num_classes, head_rows, n_pretrained)
    model = _call_builder(entry, n_pretrained, model_kwargs)
    model.load_state_dict(state_dict)
    if in_channels != entry.native_in_channels:
        entry.set_first_conv(model, _pretrained_first_conv(entry.get_first_conv(model), in_channels))
    original = entry.get_classifier(model)
    head = _new_classifier(original, num_classes) if head_rows is None else _pretrained_head(original, num_classes,
                                                                                             head_rows)
    entry.set_classifier(model, head)
    return model


def _build_random(
    entry: ModelEntry, num_classes: int, in_channels: int, model_kwargs: dict[str, Any]
) -> nn.Module:
    """Build with ``num_classes`` outputs and a fresh first conv taking ``in_channels``."""
    model = _call_builder(entry, num_classes, model_kwargs)
    if in_channels != entry.native_in_channels:
        entry.set_first_conv(model, _fresh_first_conv(entry.get_first_conv(model), in_channels))
    return model


def get_model(
    name: str, num_classes: int, pretrained: bool = False, in_channels: int = 1, *,
    head_from_pretrained: Optional[Sequence[Optional[int]]] = None, **model_kwargs: Any
) -> nn.Module:
    """Backbone ``name`` mapping (B, in_channels, n_mels, n_frames) to (B, num_classes) logits.

    ``model_kwargs`` (the config's ``model_args``) go to the builder, e.g. ``width`` for
    ``audiocnn`` or ``dropout``; ``get_model_entry(name).builder_arguments()`` lists them.
    ``head_from_pretrained`` (pretrained only) keeps pretrained classifier rows instead of a fresh
    head: entry ``i`` is the pretrained class that output ``i`` starts from, or None for a new
    class (zero row). ``range(len(categories))`` gives the original head unchanged.
    """
    entry = get_model_entry(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    _check_model_kwargs(entry, model_kwargs)
    if pretrained:
        model = _build_pretrained(entry, num_classes, in_channels, model_kwargs, head_from_pretrained)
    elif head_from_pretrained is not None:
        raise ValueError("head_from_pretrained needs pretrained=True (it copies rows of the pretrained head)")
    else:
        model = _build_random(entry, num_classes, in_channels, model_kwargs)
    if entry.finalize is not None:
        entry.finalize(model)
    return model
