"""Each precision plugin on the CPU: the dtypes it produces, its autocast, its loss scaling.

The plugins are built by the resolver from the names users pass (``precision="bf16-mixed"``),
so these tests check what a user gets, without a Trainer.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fulmen.strategies import select_strategy
from fulmen.strategies.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from fulmen.utilities.exceptions import MisconfigurationException

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16

# name: (plugin type, parameters after convert_module, inputs after convert_input, output in forward_context)
CASES = {
    "64-true": (DoublePrecision, F64, F64, F64),
    "32-true": (Precision, F32, F32, F32),
    "16-true": (HalfPrecision, F16, F16, F16),
    "bf16-true": (HalfPrecision, BF16, BF16, BF16),
    "bf16-mixed": (MixedPrecision, F32, F32, BF16),
    "16-mixed": (MixedPrecision, F32, F32, F16),
}


def _plugin(name: str) -> Precision:
    return select_strategy(accelerator="cpu", devices=1, precision=name).precision


@pytest.mark.parametrize("name", list(CASES))
def test_dtypes_through_convert_module_convert_input_forward_and_convert_output(name):
    plugin_type, param_dtype, input_dtype, output_dtype = CASES[name]
    precision = _plugin(name)
    assert type(precision) is plugin_type and precision.precision == name

    torch.manual_seed(0)
    model = precision.convert_module(nn.Linear(4, 3))
    assert {p.dtype for p in model.parameters()} == {param_dtype}

    x, ids = torch.randn(2, 4), torch.tensor([1, 2])
    converted, converted_ids = precision.convert_input((x, ids))
    assert converted.dtype == input_dtype
    assert converted_ids.dtype == torch.int64  # only floating tensors change dtype

    with precision.forward_context():
        output = model(converted)
    assert output.dtype == output_dtype
    assert precision.convert_output(output).dtype == torch.float32  # back in the default dtype
    assert torch.get_default_dtype() == torch.float32  # the context restored it


@pytest.mark.parametrize("name", ["64-true", "16-true", "bf16-true"])
def test_true_modes_create_tensors_in_their_dtype(name):
    precision = _plugin(name)
    with precision.forward_context():
        assert torch.get_default_dtype() == precision.param_dtype
        assert torch.zeros(1).dtype == precision.param_dtype
    strategy = select_strategy(accelerator="cpu", devices=1, precision=name)
    with strategy.module_init_context():
        layer = nn.Linear(2, 2)
    assert layer.weight.dtype == precision.param_dtype
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize(("name", "dtype"), [("bf16-mixed", BF16), ("16-mixed", F16)])
def test_mixed_modes_run_forward_under_cpu_autocast(name, dtype):
    precision = _plugin(name)
    assert not torch.is_autocast_enabled("cpu")
    with precision.forward_context():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == dtype
        # Autocast casts per op: float32 weights stay float32, a matmul runs in the low dtype.
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("name", ["64-true", "32-true", "16-true", "bf16-true"])
def test_modes_without_mixed_precision_open_no_autocast(name):
    with _plugin(name).forward_context():
        assert not torch.is_autocast_enabled("cpu")


def test_only_16_mixed_has_a_grad_scaler():
    assert isinstance(_plugin("16-mixed").scaler, torch.amp.GradScaler)
    assert _plugin("bf16-mixed").scaler is None
    with pytest.raises(MisconfigurationException, match="scaler=None"):
        MixedPrecision("bf16-mixed", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(MisconfigurationException, match="Accepted"):
        MixedPrecision("32-true")


# ------------------------------------------------------------------------------ 16-mixed scaling
def _fp16_setup():
    strategy = select_strategy(accelerator="cpu", devices=1, precision="16-mixed")
    model = nn.Linear(3, 1)
    with torch.no_grad():  # small outputs, so that gradients times the scale (2**16) stay within float16
        model.weight.copy_(torch.tensor([[0.2, -0.1, 0.3]]))
        model.bias.fill_(0.05)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    x = torch.tensor([[0.1, 0.2, 0.3], [0.05, -0.1, 0.2]])
    return strategy, model, optimizer, reference, reference_optimizer, x


def _scaled_backward(strategy, model, x):
    with strategy.forward_context():
        loss = model(x).float().pow(2).mean()
    strategy.backward(loss, model)
    return loss


def test_16_mixed_scales_the_loss_then_steps_on_the_true_gradients():
    strategy, model, optimizer, reference, reference_optimizer, x = _fp16_setup()
    scale = strategy.precision.scaler.get_scale()
    assert scale == 2.0**16

    _scaled_backward(strategy, model, x)
    with torch.autocast("cpu", dtype=F16):
        reference_loss = reference(x).float().pow(2).mean()
    reference_loss.backward()
    # Gradients hold the scaled loss's gradient until the step unscales them (a power of two: exact).
    assert torch.equal(model.weight.grad, reference.weight.grad * scale)

    strategy.optimizer_step(optimizer)
    reference_optimizer.step()
    assert torch.equal(model.weight, reference.weight) and torch.equal(model.bias, reference.bias)
    assert strategy.precision.scaler.get_scale() == scale  # a finite step keeps the scale


def test_16_mixed_skips_the_step_when_a_gradient_is_inf_and_halves_the_scale():
    strategy, model, optimizer, *_, x = _fp16_setup()
    before = [p.detach().clone() for p in model.parameters()]
    _scaled_backward(strategy, model, x)
    model.weight.grad[0, 1] = float("inf")

    strategy.optimizer_step(optimizer)

    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert strategy.precision.scaler.get_scale() == 2.0**15

    optimizer.zero_grad()
    _scaled_backward(strategy, model, x)
    strategy.optimizer_step(optimizer)  # the next finite step goes through
    assert not torch.equal(model.weight, before[0])


def test_16_mixed_clips_unscaled_gradients():
    strategy, model, optimizer, reference, _, x = _fp16_setup()
    _scaled_backward(strategy, model, x)
    with torch.autocast("cpu", dtype=F16):
        reference(x).float().pow(2).mean().backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm=0.1)

    norm = strategy.clip_gradients_norm(model, optimizer, max_norm=0.1)

    assert norm.item() == pytest.approx(expected.item())
    assert torch.allclose(model.weight.grad, reference.weight.grad)
    strategy.clip_gradients_norm(model, optimizer, max_norm=0.1)  # a second unscale in one step is refused by
    strategy.optimizer_step(optimizer)  # GradScaler; the plugin remembers it unscaled already


def test_half_precision_default_is_float16_as_in_lightning():
    precision = HalfPrecision()
    assert precision.precision == "16-true" and precision.param_dtype == torch.float16
    assert HalfPrecision("bf16-true").param_dtype == torch.bfloat16
    module = precision.convert_module(torch.nn.Linear(2, 2))
    assert module.weight.dtype == torch.float16
    with pytest.raises(ValueError, match="Accepted"):
        HalfPrecision("16-mixed")
