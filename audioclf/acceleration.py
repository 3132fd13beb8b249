"""Speed-ups for GPU training: cuDNN autotuning and ``torch.compile`` with an eager fallback."""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def enable_cudnn_autotune(device: torch.device) -> None:
    """On CUDA let cuDNN time its convolution algorithms once per input shape and keep the fastest.

    Training batches have one shape (plus a shorter last batch), so the search pays for itself
    within the first epoch. Elsewhere this does nothing.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


class CompiledModule(nn.Module):
    """``module`` run through ``torch.compile``, or eagerly (after one warning) where that fails.

    ``torch.compile`` is lazy: a missing C++ compiler, an unsupported Python or operator shows
    up at the first call, not here. So each mode (training, evaluation) is first tried compiled;
    a failure before that mode has ever run compiled logs a warning and runs ``module`` eagerly
    from then on (the eager call then raises if the error was the input's, not the compiler's).
    Failures while compiling the backward pass, at the first ``loss.backward()``, are not caught.
    Parameters, buffers and ``train()``/``eval()`` are ``module``'s own; save ``module``, not this.
    """

    def __init__(self, module: nn.Module, backend: str | object = "inductor", **compile_options):
        super().__init__()
        self.module = module
        self.proven_modes: set[bool] = set()  # values of self.training that have run compiled
        try:
            compiled = torch.compile(module, backend=backend, **compile_options)
            object.__setattr__(self, "compiled", compiled)  # not a submodule: no second copy of the weights
        except Exception as error:  # e.g. a platform torch.compile does not support at all
            self._fall_back(error)

    def _fall_back(self, error: Exception) -> None:
        cause = getattr(error, "inner_exception", None) or error  # what the back end itself raised
        lines = str(cause).strip().splitlines() or [""]
        log.warning("torch.compile could not compile %s; running it without compiling (set \"compile\": false "
                    "to skip the attempt): %s: %s", type(self.module).__name__, type(cause).__name__, lines[0])
        object.__setattr__(self, "compiled", None)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (including `module`)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)  # e.g. AudioClassifier.probabilities for evaluation

    def forward(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                output = self.compiled(*args, **kwargs)
            except Exception as error:
                if self.training in self.proven_modes:
                    raise
                self._fall_back(error)
            else:
                self.proven_modes.add(self.training)
                return output
        return self.module(*args, **kwargs)


def maybe_compile(module: nn.Module, enabled: bool, backend: str | object = "inductor") -> nn.Module:
    """``CompiledModule(module)`` when ``enabled`` (the ``compile`` config key), else ``module``."""
    return CompiledModule(module, backend=backend) if enabled else module
