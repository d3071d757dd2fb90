"""A LightningModule set up by Lite: self.log, loggers and clip_gradients go through Lite (Lightning's Fabric)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from fulmen import LightningModule
from fulmen.lite import Lite
from tests.trainer.helpers import BoringModel


class ListLogger:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], int | None]] = []

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.calls.append((dict(metrics), step))


def test_setup_attaches_lite_to_the_module_and_its_inner_modules():
    outer = BoringModel()
    outer.inner = BoringModel()
    lite = Lite(accelerator="cpu", devices=1)
    lite.setup(outer)
    assert outer.fabric is not None and outer.inner.fabric is not None
    copied = copy.deepcopy(outer)  # the weak reference to Lite is not copied
    assert copied.fabric is None


def test_log_and_log_dict_go_to_lites_loggers():
    first, second = ListLogger(), ListLogger()
    wrapped = Lite(accelerator="cpu", devices=1, loggers=[first, second]).setup(BoringModel())
    wrapped.log("loss", torch.tensor(0.5))
    wrapped.log_dict({"a": 1, "b": 2.0})
    wrapped.log("ignored", 1.0, logger=False)
    assert first.calls == second.calls == [({"loss": 0.5}, None), ({"a": 1, "b": 2.0}, None)]
    assert wrapped.loggers == [first, second] and wrapped.logger is first


def test_values_lite_cannot_log_are_refused_in_lightnings_words():
    wrapped = Lite(accelerator="cpu", devices=1, loggers=[ListLogger()]).setup(BoringModel())
    with pytest.raises(ValueError, match="`list` values cannot be logged"):
        wrapped.log("x", [1, 2])
    with pytest.raises(ValueError, match="nested dictionaries cannot be logged"):
        wrapped.log_dict({"x": {"y": 1}})
    without = Lite(accelerator="cpu", devices=1).setup(BoringModel())
    assert without.loggers == []
    with pytest.raises(IndexError):
        _ = without.logger


@pytest.mark.parametrize("algorithm", ["value", "norm"])
def test_clip_gradients_clips_through_lite(algorithm):
    model = BoringModel()
    lite = Lite(accelerator="cpu", devices=1)
    wrapped, optimizer = lite.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    lite.backward(1000 * wrapped(torch.randn(4, 32)).sum())
    model.clip_gradients(optimizer, gradient_clip_val=0.01, gradient_clip_algorithm=algorithm)
    grads = [p.grad for p in model.parameters()]
    if algorithm == "value":
        assert max(g.abs().max().item() for g in grads) <= 0.01 + 1e-7
    else:
        assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() == pytest.approx(0.01, rel=1e-4)


def test_setting_the_trainer_reaches_inner_lightning_modules():
    outer, inner = LightningModule(), LightningModule()
    outer.inner = inner
    outer.plain = nn.Linear(1, 1)
    marker = object()
    outer.trainer = marker
    assert inner.trainer is marker
