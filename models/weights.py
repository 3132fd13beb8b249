"""Offline-safe loading of pretrained weights: torchvision's, converted ones and packaged ones.

torchvision weights: the cache file is ``<torch.hub.get_dir()>/checkpoints/<basename of
weights.url>``, where ``torch.hub.get_dir()`` is ``$TORCH_HOME/hub`` (``~/.cache/torch/hub`` by default). A cached
file is read without touching the network; a missing one is downloaded once, and when that
fails (no network, a server that stops answering, a link too slow to finish in time) the error
says which file to fetch, from where, and where to put it.

``ConvertedWeights`` (YAMNet's AudioSet weights) are made offline by ``python -m models.convert``
into the same cache folder; ``PackagedWeights`` (EfficientNet-Lite0's ImageNet weights) are read
from the pip package that ships them. Neither ever downloads.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Optional, Union
from urllib.parse import urlparse

import torch

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum


# A download gives up when no byte arrives for STALL_TIMEOUT_S, or when the whole file has not
# arrived after DOWNLOAD_TIMEOUT_S (torchvision's largest weights here are ~100 MB).
STALL_TIMEOUT_S = 60.0
DOWNLOAD_TIMEOUT_S = 1800.0


def torchvision_models() -> ModuleType:
    """``torchvision.models``, imported on first use: importing torchvision takes about 2 s (its ops
    import ``torch._dynamo``), which every command that never builds a torchvision network would pay."""
    from torchvision import models

    return models


class TorchvisionWeights:
    """A torchvision weights enum by name, e.g. ``TorchvisionWeights("ResNet18_Weights.IMAGENET1K_V1")``.

    The registry names each torchvision backbone's weights with one; the enum (``enum``) is looked
    up at first use, and its attributes (``url``, ``meta``, ...) read through.
    """

    def __init__(self, qualified_name: str):
        self.qualified_name = qualified_name

    @cached_property
    def enum(self) -> WeightsEnum:
        enum_name, _, member = self.qualified_name.partition(".")
        try:
            return getattr(getattr(torchvision_models(), enum_name), member)
        except AttributeError:  # re-raised as such, __getattr__ would hide it behind "enum"
            raise LookupError(f"torchvision.models has no weights {self.qualified_name!r}; check the name "
                              "against the installed torchvision") from None

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("qualified_name", "enum"):  # unset during copy / unpickling
            raise AttributeError(name)
        return getattr(self.enum, name)

    def __repr__(self) -> str:
        return f"TorchvisionWeights({self.qualified_name!r})"


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights are not in the torch.hub cache and cannot be downloaded."""


class DownloadTimeout(TimeoutError):
    """A weights download stalled or did not finish in time."""


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


def download_file(url: str, path: str, stall_timeout_s: float = STALL_TIMEOUT_S,
                  timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Stream ``url`` into ``path`` atomically, checking torch.hub's hash prefix in the file name.

    Raises ``DownloadTimeout`` when no byte arrives for ``stall_timeout_s`` or the whole file
    takes longer than ``timeout_s``; other network failures are ``OSError``s.
    """
    deadline = time.monotonic() + timeout_s
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    digest = hashlib.sha256()
    try:
        try:
            with urllib.request.urlopen(url, timeout=stall_timeout_s) as response, open(temp, "wb") as out:
                while chunk := response.read1(1 << 16):  # what has arrived, not a full 64 KB
                    out.write(chunk)
                    digest.update(chunk)
                    if time.monotonic() > deadline:
                        raise DownloadTimeout(f"it did not finish within {timeout_s:g} s")
        except DownloadTimeout:
            raise
        except TimeoutError as error:  # a socket read that waited stall_timeout_s for nothing
            raise DownloadTimeout(f"no data arrived for {stall_timeout_s:g} s") from error
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):  # a connection that never opened
                raise DownloadTimeout(f"no answer for {stall_timeout_s:g} s") from error
            raise
        match = torch.hub.HASH_REGEX.search(os.path.basename(path))
        if match and not digest.hexdigest().startswith(match.group(1)):
            raise OSError(f"the downloaded file's SHA-256 {digest.hexdigest()[:12]}... does not start with "
                          f"{match.group(1)} (a broken or altered download)")
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def load_weights_state_dict(weights: WeightsEnum, stall_timeout_s: float = STALL_TIMEOUT_S,
                            timeout_s: float = DOWNLOAD_TIMEOUT_S) -> dict[str, torch.Tensor]:
    """State dict of ``weights`` from the torch.hub cache, downloading it once if missing."""
    path = cached_weights_path(weights)
    if not os.path.isfile(path):
        try:
            download_file(weights.url, path, stall_timeout_s, timeout_s)
        except DownloadTimeout as error:
            raise PretrainedWeightsUnavailable(
                _unavailable_message(weights, f"not cached and the download timed out ({error})")
            ) from error
        except OSError as error:  # URLError, HTTPError, DNS, SSL, a failed hash check
            raise PretrainedWeightsUnavailable(
                _unavailable_message(weights, f"not cached and the download failed ({error})")
            ) from error
    return _read_cached_state_dict(path, weights)


# ---------------------------------------------------------------------------------------
# Weights that come from an installed package rather than a URL
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvertedWeights:
    """Weights converted from another framework by ``python -m models.convert <model>`` into the cache.

    Nothing is downloaded: the converter reads them from an installed package (or a file the user
    gives it) and writes ``<torch.hub cache>/checkpoints/<file_name>``; loading reads that file.
    """

    name: str  # e.g. "yamnet_audioset"
    file_name: str  # e.g. "yamnet_audioset.pth"
    categories: Callable[[], list[str]]  # class names of the original head, in output order (read lazily)
    convert_command: str  # the command that makes the file
    license: str  # the weights' licence, stated wherever they are used

    @property
    def meta(self) -> dict:
        """torchvision-style metadata (``categories``)."""
        return {"categories": list(self.categories()), "license": self.license}

    def path(self) -> str:
        """Where the converted state dict lives."""
        return os.path.join(weights_cache_dir(), self.file_name)

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """The converted state dict; PretrainedWeightsUnavailable naming the command when it is missing."""
        path = self.path()
        if not os.path.isfile(path):
            raise PretrainedWeightsUnavailable(
                f"Pretrained weights {self.name} are not in the cache: {path} does not exist.\n"
                f"  Make them (no download; reads the installed package) with:\n"
                f"    {self.convert_command}\n"
                f'  or set "pretrained": false in the config to train from random initialisation.')
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise PretrainedWeightsUnavailable(
                f"Pretrained weights {self.name}: the cached file {path} cannot be read ({error}); delete it "
                f"and run {self.convert_command}") from error


@dataclass(frozen=True)
class PackagedWeights:
    """A PyTorch state dict shipped inside a pip package (read in place; nothing is copied or fetched)."""

    name: str
    package: str  # importable module holding the file
    relative_path: str  # the file, relative to the package folder
    categories: Callable[[], list[str]]  # class names of the original head (read lazily)
    install_command: str
    license: str
    remap: Optional[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = None

    @property
    def meta(self) -> dict:
        """torchvision-style metadata (``categories``)."""
        return {"categories": list(self.categories()), "license": self.license}

    def path(self) -> str:
        """The state-dict file inside the installed package; PretrainedWeightsUnavailable if not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise PretrainedWeightsUnavailable(
                f"Pretrained weights {self.name} come with the pip package of module '{self.package}', which is "
                f"not installed.\n  Install it with: {self.install_command}\n"
                f'  or set "pretrained": false in the config to train from random initialisation.')
        return os.path.join(list(spec.submodule_search_locations)[0], self.relative_path)

    def load_state_dict(self) -> dict[str, torch.Tensor]:
        """The packaged state dict (after ``remap``)."""
        path = self.path()
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise PretrainedWeightsUnavailable(
                f"Pretrained weights {self.name}: {path} cannot be read ({error}); reinstall with "
                f"{self.install_command}") from error
        return self.remap(state_dict) if self.remap is not None else state_dict


AnyWeights = Union[TorchvisionWeights, ConvertedWeights, PackagedWeights]


def load_any_weights(weights: AnyWeights) -> dict[str, torch.Tensor]:
    """State dict of torchvision, converted or packaged weights (each from its own offline source)."""
    if isinstance(weights, (ConvertedWeights, PackagedWeights)):
        return weights.load_state_dict()
    return load_weights_state_dict(weights.enum if isinstance(weights, TorchvisionWeights) else weights)
