"""The deployed model: input normalisation (buffers) + a registry backbone.

Normalisation statistics live inside the model's ``state_dict``, so every script that loads a
checkpoint normalises exactly as training did.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from models import get_model, get_model_entry


class InputNormalization(nn.Module):
    """``(x - mean) / std`` with per-mel-band (or global) statistics stored as buffers.

    With ``center_per_clip`` each clip's own per-band mean over time is removed first (cepstral
    mean normalisation), which cancels a microphone's or speaker's fixed spectral colouring.
    """

    def __init__(self, n_mels: int, center_per_clip: bool = False):
        super().__init__()
        self.center_per_clip = center_per_clip
        self.register_buffer("mean", torch.zeros(1, 1, n_mels, 1))
        self.register_buffer("std", torch.ones(1, 1, n_mels, 1))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """``mean``/``std``: ``(n_mels,)`` per band or ``(1,)`` global (broadcast to every band)."""
        self.mean.copy_(mean.reshape(1, 1, -1, 1).expand_as(self.mean))
        self.std.copy_(std.reshape(1, 1, -1, 1).expand_as(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.center_per_clip:
            x = x - x.mean(dim=-1, keepdim=True)  # (B, 1, n_mels, 1) per-clip band means
        return (x - self.mean) / self.std


class AudioClassifier(nn.Module):
    """Log-mel ``(B, 1, n_mels, n_frames)`` -> logits ``(B, num_classes)``.

    ``probabilities(logits)`` is the head's output activation: softmax over classes for a
    single-label head (every model this pipeline trains: cross-entropy), a sigmoid per class for a
    multi-label one (``multi_label=True``, e.g. YAMNet's AudioSet head used as it is).
    ``head_from_pretrained`` keeps rows of the pretrained head (see ``models.get_model``).
    """

    def __init__(self, model_name: str, num_classes: int, n_mels: int, pretrained: bool = False,
                 model_args: dict | None = None, center_per_clip: bool = False, multi_label: bool = False,
                 head_from_pretrained: Sequence[int | None] | None = None):
        super().__init__()
        self.model_name = model_name
        self.multi_label = multi_label
        self.backbone_frozen = False
        self.batch_norm_frozen = False
        self.n_frozen_layers = 0
        self.normalize = InputNormalization(n_mels, center_per_clip)
        self.backbone = get_model(model_name, num_classes, pretrained=pretrained, in_channels=1,
                                  head_from_pretrained=head_from_pretrained, **(model_args or {}))
        if hasattr(self.backbone, "multi_label"):  # patch models (YAMNet) pool patches with the head's activation
            self.backbone.multi_label = multi_label

    def forward(self, x: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> torch.Tensor:
        x = self.normalize(x)
        if augment is not None:  # training-time masking acts on normalised input (SpecAugment: what it fills)
            x = augment(x)
        return self.backbone(x)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` -> probabilities ``(B, C)``: sigmoid per class if multi-label, else softmax."""
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)

    def head(self) -> nn.Linear:
        """The classifier layer (the registry entry knows where it is)."""
        return get_model_entry(self.model_name).get_classifier(self.backbone)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the classifier's."""
        head = {id(parameter) for parameter in self.head().parameters()}
        return [parameter for parameter in self.parameters() if id(parameter) not in head]

    def freeze_backbone(self) -> None:
        """Train the classifier only (a linear probe): no gradients for the backbone, and its batch-norm
        layers stay in eval mode, so their statistics remain the pretrained ones."""
        for parameter in self.backbone_parameters():
            parameter.requires_grad_(False)
        self.backbone_frozen = True
        self.freeze_batch_norm()

    def freeze_batch_norm(self) -> None:
        """Keep the backbone's batch-norm layers in eval mode when training: each normalises with its
        loaded running statistics, which stay as they are; its scale and shift still train."""
        self.batch_norm_frozen = True
        self.train(self.training)

    def frozen_layers(self) -> nn.Sequential:
        """The backbone's first ``n_frozen_layers`` layers (its registry entry's ``layers``; empty if none)."""
        if not self.n_frozen_layers:
            return nn.Sequential()
        return get_model_entry(self.model_name).get_layers(self.backbone)[:self.n_frozen_layers]

    def freeze_layers(self, n_layers: int) -> None:
        """Keep the backbone's first ``n_layers`` layers as loaded: no gradients, and in eval mode when
        training (batch-norm statistics stay the loaded ones, no dropout); ValueError for a model without a
        list of layers (``ModelEntry.layers``) or a count beyond it."""
        layers = get_model_entry(self.model_name).get_layers(self.backbone)
        if not 0 < n_layers <= len(layers):
            raise ValueError(f"model '{self.model_name}' has {len(layers)} layers to freeze, not {n_layers}: "
                             f"set it to 1-{len(layers)} (0 freezes none)")
        self.n_frozen_layers = n_layers
        for parameter in layers[:n_layers].parameters():
            parameter.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "AudioClassifier":
        super().train(mode)
        self.frozen_layers().eval()
        if self.batch_norm_frozen:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def constructor_args(model_name: str, num_classes: int, n_mels: int, model_args: dict | None,
                     center_per_clip: bool = False, multi_label: bool = False) -> dict:
    """The arguments that rebuild the model (stored in checkpoints; pretrained is not needed).

    ``multi_label`` is recorded only when set, so checkpoints from before it still match.
    """
    args = {"model_name": model_name, "num_classes": num_classes, "n_mels": n_mels,
            "model_args": dict(model_args or {}), "center_per_clip": center_per_clip}
    if multi_label:
        args["multi_label"] = True
    return args
