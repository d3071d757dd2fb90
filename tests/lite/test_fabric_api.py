"""Fabric's spellings of Lite's API: setup(module=, scheduler=), is_wrapped, wrapped modules' device, dtype
and mark_forward_method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fulmen.lite import Lite, is_wrapped
from fulmen.lite.wrappers import _unwrap_objects


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, x):
        return self.layer(x)

    def generate(self, x):
        return self.layer(x) * 2


def test_setup_takes_module_keyword_and_hands_back_the_scheduler():
    lite = Lite(accelerator="cpu", devices=1)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    wrapped, wrapped_optimizer, same_scheduler = lite.setup(model, optimizer, scheduler=scheduler)
    assert is_wrapped(wrapped) and same_scheduler is scheduler
    assert is_wrapped(Lite(accelerator="cpu", devices=1).setup(module=nn.Linear(2, 1)))
    lite2 = Lite(accelerator="cpu", devices=1)
    model2 = nn.Linear(2, 1)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=1.0)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    out = lite2.setup(model2, optimizer2, scheduler=scheduler2)
    assert len(out) == 3 and out[2] is scheduler2 and is_wrapped(out[1])
    out[1].step()
    scheduler2.step()
    assert out[1].param_groups[0]["lr"] == 0.5  # the scheduler steps the optimizer Lite uses


def test_setup_argument_errors():
    lite = Lite(accelerator="cpu", devices=1)
    with pytest.raises(TypeError, match="module"):
        lite.setup()
    with pytest.raises(TypeError, match="scheduler="):
        lite.setup(nn.Linear(1, 1), scheduler=object())
    with pytest.raises(TypeError, match="both `module` and `model`"):
        lite.setup(nn.Linear(1, 1), model=nn.Linear(1, 1))
    assert is_wrapped(lite.setup(model=nn.Linear(1, 1)))  # the older keyword still works


def test_is_wrapped_and_unwrap_objects():
    lite = Lite(accelerator="cpu", devices=1)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(torch.zeros(4, 2))
    wrapped, wrapped_optimizer = lite.setup(model, optimizer)
    wrapped_loader = lite.setup_dataloaders(loader)
    assert all(is_wrapped(obj) for obj in (wrapped, wrapped_optimizer, wrapped_loader))
    assert not any(is_wrapped(obj) for obj in (model, optimizer, loader, 3))
    assert is_wrapped(torch.compile(wrapped))
    unwrapped = _unwrap_objects({"m": wrapped, "o": [wrapped_optimizer], "d": wrapped_loader, "n": 1})
    assert unwrapped["m"] is model and unwrapped["o"][0] is optimizer and unwrapped["d"] is loader
    assert unwrapped["n"] == 1


def test_wrapped_module_device_and_dtype():
    lite = Lite(accelerator="cpu", devices=1, precision="bf16-true")
    wrapped = lite.setup(nn.Linear(2, 1))
    assert wrapped.device == torch.device("cpu") and wrapped.dtype == torch.bfloat16
    empty = Lite(accelerator="cpu", devices=1).setup(nn.ReLU())
    assert empty.device == torch.device("cpu") and empty.dtype == torch.get_default_dtype()


def test_mark_forward_method_runs_through_precision():
    lite = Lite(accelerator="cpu", devices=1, precision="bf16-mixed")
    wrapped = lite.setup(Generator())
    x = torch.ones(1, 4)
    # Unmarked: the module's method as is (float32 matmul); marked: under autocast, output converted back.
    assert wrapped.generate(x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = wrapped.module.generate(x).float()
    wrapped.mark_forward_method("generate")
    out = wrapped.generate(x)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert "forward" not in wrapped.module.__dict__  # the swap is undone
    wrapped.mark_forward_method(wrapped.module.generate)  # a bound method works too
    with pytest.raises(ValueError, match="no method"):
        wrapped.mark_forward_method("missing")
    with pytest.raises(ValueError, match="forward"):
        wrapped.mark_forward_method("forward")
