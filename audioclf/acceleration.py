"""Speed-ups for GPU training: cuDNN autotuning and ``torch.compile`` with an eager fallback."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

log = logging.getLogger(__name__)

T = TypeVar("T")


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
    The backward pass is compiled at the first ``loss.backward()``; ``training_step`` covers it:
    a failure anywhere in the first training step (forward or backward) falls back alike and
    runs that step again eagerly.
    Parameters, buffers and ``train()``/``eval()`` are ``module``'s own; save ``module``, not this.
    """

    def __init__(self, module: nn.Module, backend: str | object = "inductor", **compile_options):
        super().__init__()
        self.module = module
        self.proven_modes: set[bool] = set()  # values of self.training that have run compiled
        self.step_proven = False  # a whole training step (forward and backward) has run compiled
        try:
            compiled = torch.compile(module, backend=backend, **compile_options)
            object.__setattr__(self, "compiled", compiled)  # not a submodule: no second copy of the weights
        except Exception as error:  # e.g. a platform torch.compile does not support at all
            self._fall_back(error)

    def _fall_back(self, error: Exception, when: str = "") -> None:
        cause = getattr(error, "inner_exception", None) or error  # what the back end itself raised
        lines = str(cause).strip().splitlines() or [""]
        log.warning("torch.compile could not compile %s%s; running it without compiling (set \"compile\": false "
                    "to skip the attempt): %s: %s", type(self.module).__name__, when, type(cause).__name__, lines[0])
        object.__setattr__(self, "compiled", None)

    def training_step(self, step: Callable[[], T], reraise: tuple[type[BaseException], ...] = ()) -> T:
        """Run ``step()`` (forward, loss and ``backward()``); until one step has run compiled, a failure
        in it (not one of ``reraise``) falls back to eager and runs ``step`` again from the same
        random-number state and buffers, so that step is the one an eager run would take."""
        if self.compiled is None or self.step_proven:
            return step()
        buffers = [buffer.detach().clone() for buffer in self.module.buffers()]  # e.g. batch-norm statistics
        rng_state = _rng_state()
        try:
            result = step()
        except reraise:
            raise
        except Exception as error:
            if self.compiled is None:  # the forward already fell back: the eager step's own error
                raise
            self._fall_back(error, " at its first training step (forward and backward)")
            _set_rng_state(rng_state)
            with torch.no_grad():
                for buffer, saved in zip(self.module.buffers(), buffers):
                    buffer.copy_(saved)
            return step()
        self.step_proven = True
        return result

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


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """torch's CPU and (when in use) CUDA random-number states."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def training_step(model: nn.Module, step: Callable[[], T], reraise: tuple[type[BaseException], ...] = ()) -> T:
    """``step()`` (forward, loss and backward of one batch), guarded by ``model``'s compile fallback
    when it is a ``CompiledModule``; else simply ``step()``."""
    if isinstance(model, CompiledModule):
        return model.training_step(step, reraise)
    return step()


def maybe_compile(module: nn.Module, enabled: bool, backend: str | object = "inductor") -> nn.Module:
    """``CompiledModule(module)`` when ``enabled`` (the ``compile`` config key), else ``module``."""
    return CompiledModule(module, backend=backend) if enabled else module
