"""torchvision ImageNet backbones, registered with their weights, first conv and classifier.

Each builder makes the original architecture (3 input channels, ``num_classes`` outputs) with
random weights; ``get_model`` loads the pretrained state dict and adapts input and head.
Builder keywords (``dropout``) are the config's ``model_args``; ResNets take none.
Minimum input sizes are the smallest (n_mels, n_frames) for which a forward pass in train
mode works, rounded up to the network's total stride so the last feature map is >= 1x1.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from .registry import register_model
from .weights import TorchvisionWeights, torchvision_models

# Legacy DenseNet checkpoints name layers 'norm.1', 'conv.2', ...; torchvision's
# densenet._load_state_dict renames them to 'norm1', 'conv2' before loading. Same here.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def remap_legacy_densenet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old-style DenseNet keys ('...conv.1.weight' -> '...conv1.weight')."""
    remapped = {}
    for key, value in state_dict.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        remapped[match.group(1) + match.group(2) if match else key] = value
    return remapped


@register_model(
    "resnet18",
    weights=TorchvisionWeights("ResNet18_Weights.IMAGENET1K_V1"),
    first_conv="conv1",
    classifier="fc",
    min_input_size=(32, 32),
)
def resnet18(num_classes: int) -> nn.Module:
    """ResNet-18."""
    return torchvision_models().resnet18(weights=None, num_classes=num_classes)


@register_model(
    "resnet34",
    weights=TorchvisionWeights("ResNet34_Weights.IMAGENET1K_V1"),
    first_conv="conv1",
    classifier="fc",
    min_input_size=(32, 32),
)
def resnet34(num_classes: int) -> nn.Module:
    """ResNet-34."""
    return torchvision_models().resnet34(weights=None, num_classes=num_classes)


_RESNET50_ENTRY = dict(
    weights=TorchvisionWeights("ResNet50_Weights.IMAGENET1K_V2"),
    first_conv="conv1",
    classifier="fc",
    min_input_size=(32, 32),
)


@register_model("resnet", **_RESNET50_ENTRY)
@register_model("resnet50", **_RESNET50_ENTRY)
def resnet50(num_classes: int) -> nn.Module:
    """ResNet-50 (registered as both 'resnet50' and 'resnet')."""
    return torchvision_models().resnet50(weights=None, num_classes=num_classes)


@register_model(
    "densenet",
    weights=TorchvisionWeights("DenseNet201_Weights.IMAGENET1K_V1"),
    first_conv="features.conv0",
    layers="features",
    classifier="classifier",
    min_input_size=(32, 32),
    remap_state_dict=remap_legacy_densenet_keys,
)
def densenet201(num_classes: int, dropout: float = 0.0) -> nn.Module:
    """DenseNet-201; ``dropout`` is torchvision's ``drop_rate`` after each dense layer."""
    return torchvision_models().densenet201(weights=None, num_classes=num_classes, drop_rate=dropout)


def drop_inception_aux_head(model: nn.Module) -> None:
    """Remove Inception v3's auxiliary classifier so it returns plain logits in train mode too."""
    model.AuxLogits = None
    model.aux_logits = False


@register_model(
    "inception",
    weights=TorchvisionWeights("Inception_V3_Weights.IMAGENET1K_V1"),
    first_conv="Conv2d_1a_3x3.conv",
    classifier="fc",
    min_input_size=(75, 75),
    finalize=drop_inception_aux_head,
)
def inception_v3(num_classes: int, dropout: float = 0.5) -> nn.Module:
    """Inception v3 with ``transform_input=False``; its auxiliary head is dropped after loading.

    ``transform_input`` re-normalises 3 RGB channels from ImageNet to [-1, 1] statistics, which
    means nothing for spectrograms. The ImageNet weights include the auxiliary classifier, so it
    is built here (``aux_logits=True``) and removed by ``drop_inception_aux_head`` once the
    weights are in: ``get_model('inception', ...)`` returns a (B, num_classes) tensor in both
    train and eval mode, never ``InceptionOutputs``.
    """
    return torchvision_models().Inception3(
        num_classes=num_classes, aux_logits=True, transform_input=False, init_weights=True, dropout=dropout
    )


@register_model(
    "efficientnetv2_s",
    weights=TorchvisionWeights("EfficientNet_V2_S_Weights.IMAGENET1K_V1"),
    first_conv="features.0.0",
    layers="features",
    classifier="classifier.1",
    min_input_size=(32, 32),
)
def efficientnet_v2_s(num_classes: int, dropout: float = 0.2) -> nn.Module:
    """EfficientNetV2-S; ``dropout`` before the classifier."""
    return torchvision_models().efficientnet_v2_s(weights=None, num_classes=num_classes, dropout=dropout)


@register_model(
    "mobilenetv3_small",
    weights=TorchvisionWeights("MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
    first_conv="features.0.0",
    layers="features",
    classifier="classifier.3",
    min_input_size=(32, 32),
)
def mobilenet_v3_small(num_classes: int, dropout: float = 0.2) -> nn.Module:
    """MobileNetV3-Small, a CPU/edge-friendly ImageNet backbone; ``dropout`` before the last Linear."""
    return torchvision_models().mobilenet_v3_small(weights=None, num_classes=num_classes, dropout=dropout)
