"""Offline-safe loading of torchvision pretrained weights from the torch.hub cache.

The cache file is ``<torch.hub.get_dir()>/checkpoints/<basename of weights.url>``, where
``torch.hub.get_dir()`` is ``$TORCH_HOME/hub`` (``~/.cache/torch/hub`` by default). A cached
file is read without touching the network; a missing one is downloaded once, and when that
fails the error says which file to fetch, from where, and where to put it.
"""
from __future__ import annotations

import os
import pickle
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights are not in the torch.hub cache and cannot be downloaded."""


def weights_file_name(weights: WeightsEnum) -> str:
    """File name torch.hub stores ``weights`` under, e.g. ``resnet18-f37072fd.pth``."""
    return os.path.basename(urlparse(weights.url).path)


def weights_cache_dir() -> str:
    """Directory torch.hub caches checkpoints in (honours TORCH_HOME)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def cached_weights_path(weights: WeightsEnum) -> str:
    """Full path of the cached checkpoint file for ``weights``."""
    return os.path.join(weights_cache_dir(), weights_file_name(weights))


def _unavailable_message(weights: WeightsEnum, reason: str) -> str:
    """Say what is missing, where it comes from, where it goes, and how to do without it."""
    return (
        f"Pretrained weights {weights} are not available: {reason}.\n"
        f"  Download {weights.url}\n"
        f"  and save it as {weights_file_name(weights)} in the directory {weights_cache_dir()}\n"
        f"  (torch.hub's cache: $TORCH_HOME/hub/checkpoints, TORCH_HOME defaults to ~/.cache/torch),\n"
        f'  or set "pretrained": false in the config to train from random initialisation.'
    )


def _read_cached_state_dict(path: str, weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """Read a cached checkpoint; a corrupt file is reported as unavailable weights."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise PretrainedWeightsUnavailable(
            _unavailable_message(weights, f"the cached file {path} cannot be read ({error}); delete it")
        ) from error


def load_weights_state_dict(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """State dict of ``weights`` from the torch.hub cache, downloading it once if missing."""
    path = cached_weights_path(weights)
    if os.path.isfile(path):
        return _read_cached_state_dict(path, weights)
    try:
        # Looked up on torch.hub at call time so tests can stub out the network.
        return torch.hub.load_state_dict_from_url(
            weights.url, progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    except OSError as error:  # URLError, HTTPError, DNS, SSL and socket timeouts are all OSErrors
        raise PretrainedWeightsUnavailable(
            _unavailable_message(weights, f"not cached and the download failed ({error})")
        ) from error
