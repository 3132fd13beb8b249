"""An exponential moving average of a model's weights (the ``ema_decay`` config key).

After every optimizer step the average moves towards the trained weights:
``average = rate * average + (1 - rate) * weights``, for every floating-point parameter and buffer
(batch-norm running statistics too); integer buffers (batch counts) are copied. The rate warms up
as TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` does, ``min(decay, (1 + n) / (10 + n))``
after n updates, so the first steps' random-ish weights fade fast and a short run is not an
average of mostly its start. Validation, ``model_best`` and every consumer of a checkpoint use the
average (checkpoint key ``model``); the trained weights travel beside it (``training_model``), for
resuming. The model EMA of timm and of the torchvision references (``--model-ema``), with TensorFlow's
warm-up.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

# The warm-up of the rate: min(decay, (1 + n) / (WARMUP + n)) after n updates.
WARMUP = 10


class WeightAverage:
    """The moving average of ``model``'s weights, in ``self.module`` (a copy, always in eval mode)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._pair(model)

    def _pair(self, model: nn.Module) -> None:
        """The tensors the average follows, matched by name (state dicts share the modules' storage)."""
        source, target = model.state_dict(), self.module.state_dict()
        pairs = [(target[name], value) for name, value in source.items()]
        self._mine = [mine for mine, _ in pairs if mine.is_floating_point()]  # averaged
        self._theirs = [theirs for mine, theirs in pairs if mine.is_floating_point()]
        self._others = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]  # copied

    def rate(self) -> float:
        """The weight the average keeps at the next update."""
        return min(self.decay, (1 + self.updates) / (WARMUP + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """One step towards the model's current weights."""
        if self._mine:
            torch._foreach_lerp_(self._mine, self._theirs, 1.0 - self.rate())
        for mine, theirs in self._others:
            mine.copy_(theirs)
        self.updates += 1

    def load(self, averaged: dict, updates: int) -> None:
        """Continue a saved average (a resumed run): its weights and how many updates it has had."""
        self.module.load_state_dict(averaged)
        self.updates = int(updates)
