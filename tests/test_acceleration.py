"""torch.compile with an eager fallback, and cuDNN autotuning only on CUDA."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from audioclf.acceleration import CompiledModule, enable_cudnn_autotune, maybe_compile


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))


def broken_backend(graph_module, example_inputs):
    """A compiler back end that cannot compile anything (forces the failure path)."""
    raise RuntimeError("no C++ compiler on this machine")


def test_a_compiler_failure_at_the_first_call_falls_back_to_eager_with_one_warning(caplog):
    net = small_net()
    inputs = torch.randn(4, 1, 6, 6)
    expected = net.eval()(inputs)
    model = CompiledModule(net, backend=broken_backend).eval()
    with caplog.at_level(logging.WARNING, logger="audioclf.acceleration"):
        first, second = model(inputs), model(inputs)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "could not compile Sequential" in warnings[0]
    assert "no C++ compiler on this machine" in warnings[0] and model.compiled is None
    assert list(model.parameters()) == list(net.parameters())  # the same weights, not a copy


def test_torch_compile_unavailable_falls_back_at_construction(monkeypatch, caplog):
    def unavailable(*args, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    net = small_net()
    with caplog.at_level(logging.WARNING, logger="audioclf.acceleration"):
        model = maybe_compile(net, enabled=True)
    assert "not supported on this Python" in caplog.text
    inputs = torch.randn(2, 1, 6, 6)
    assert torch.equal(model.eval()(inputs), net.eval()(inputs))


def test_a_working_compile_runs_compiled_and_train_eval_reach_the_module():
    net = small_net()
    inputs = torch.randn(4, 1, 6, 6)
    net(inputs)  # materialise the lazy layer
    model = CompiledModule(net, backend="eager")  # dynamo tracing without a code generator: fast
    model.train()
    assert net.training
    loss = model(inputs).sum()
    loss.backward()
    assert model.compiled is not None and model.proven_modes == {True}
    model.eval()
    assert not net.training and torch.allclose(model(inputs), net(inputs))
    assert maybe_compile(net, enabled=False) is net


def test_a_genuine_error_after_compiled_runs_is_raised_not_hidden():
    net = small_net()
    model = CompiledModule(net, backend="eager").eval()
    model(torch.randn(2, 1, 6, 6))
    with pytest.raises(Exception):
        model(torch.randn(2, 5, 6, 6))  # wrong channel count: the input's fault
    assert model.compiled is not None


def test_cudnn_autotune_only_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    enable_cudnn_autotune(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    enable_cudnn_autotune(torch.device("cuda"))  # only sets a flag; needs no GPU
    assert torch.backends.cudnn.benchmark is True


def test_the_wrapper_answers_for_the_module_such_as_its_output_activation():
    class WithActivation(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)

        def probabilities(self, logits):
            return torch.sigmoid(logits)

    net = WithActivation()
    model = CompiledModule(net, backend="eager")
    logits = torch.tensor([[0.0, 2.0]])
    assert torch.equal(model.probabilities(logits), torch.sigmoid(logits))  # multi-label heads stay sigmoid
    assert model.linear is net.linear
    with pytest.raises(AttributeError):
        model.no_such_attribute


def backward_broken_backend():
    """A back end whose forward compiles but whose backward compiler fails (at the first backward())."""
    from torch._dynamo.backends.common import aot_autograd

    def broken(graph_module, example_inputs):
        raise RuntimeError("cannot compile the backward graph")

    return aot_autograd(fw_compiler=lambda graph_module, example_inputs: graph_module.forward, bw_compiler=broken)


def dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                         nn.Linear(32, 3))


def one_step(model: nn.Module, inputs: torch.Tensor) -> float:
    """Forward, loss and backward of one batch; the loss."""
    for parameter in model.parameters():
        parameter.grad = None
    loss = model(inputs).square().mean()
    loss.backward()
    return loss.item()


def test_a_compiler_failure_in_the_first_backward_falls_back_and_redoes_the_step_eagerly(caplog):
    inputs = torch.randn(4, 1, 6, 6)
    eager = dropout_net().train()
    torch.manual_seed(1)
    eager_losses = [one_step(eager, inputs) for _ in range(2)]
    net = dropout_net().train()
    model = CompiledModule(net, backend=backward_broken_backend()).train()
    torch.manual_seed(1)
    with caplog.at_level(logging.WARNING, logger="audioclf.acceleration"):
        losses = [model.training_step(lambda: one_step(model, inputs)) for _ in range(2)]
    warnings = [record.getMessage() for record in caplog.records if record.name == "audioclf.acceleration"]
    assert len(warnings) == 1 and "could not compile Sequential at its first training step" in warnings[0]
    assert "cannot compile the backward graph" in warnings[0] and model.compiled is None
    # the step was run again from the same random numbers (dropout) and batch-norm statistics
    assert losses == eager_losses
    for (name, got), expected in zip(net.named_parameters(), eager.parameters()):
        assert torch.equal(got.grad, expected.grad), name
    for (name, got), expected in zip(net.named_buffers(), eager.buffers()):
        assert torch.equal(got, expected), name


def test_errors_the_caller_names_and_errors_after_a_compiled_step_are_raised():
    class Refused(Exception):
        pass

    model = CompiledModule(small_net(), backend="eager").train()
    inputs = torch.randn(2, 1, 6, 6)

    def refused():
        raise Refused("loss is nan")

    with pytest.raises(Refused):
        model.training_step(refused, reraise=(Refused,))
    assert model.compiled is not None  # no fallback for the caller's own error
    model.training_step(lambda: model(inputs).sum().backward())
    assert model.step_proven

    def failing_backward():
        model(inputs).sum().backward()
        raise RuntimeError("a genuine error after steps that ran compiled")

    with pytest.raises(RuntimeError, match="genuine error"):
        model.training_step(failing_backward)
    assert model.compiled is not None
