"""Automatic optimization trains inside ``optimizer.step(closure)`` wherever the user could see the difference.

An optimizer of the user's whose ``step`` does something before running the closure (or a step
pre-hook) sees ``step`` first, then ``training_step``, ``zero_grad`` and ``backward`` inside it, as
in Lightning. torch's own optimizers run the closure first thing, so fulmen calls it directly there.
"""

from __future__ import annotations

import torch
from torch.optim import SGD

import fulmen as L
from fulmen.module.optimizer import steps_around_closure
from tests.trainer.helpers import BoringModel, loader, quiet


def _recording_model(calls: list[str], optimizer_factory):
    class Recording(BoringModel):
        def configure_optimizers(self):
            return optimizer_factory(self.parameters())

        def training_step(self, batch, batch_idx):
            calls.append("training_step")
            return super().training_step(batch, batch_idx)

        def backward(self, loss, *args, **kwargs):
            calls.append("backward")
            return super().backward(loss, *args, **kwargs)

    return Recording()


def test_a_user_optimizer_sees_step_before_the_training_step():
    calls: list[str] = []

    class Stepping(SGD):
        def step(self, closure=None):
            calls.append("step")
            return super().step(closure)

        def zero_grad(self, set_to_none: bool = True):
            calls.append("zero_grad")
            return super().zero_grad(set_to_none)

    model = _recording_model(calls, lambda params: Stepping(params, lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = L.Trainer(**quiet(max_epochs=1, limit_train_batches=3))
    trainer.fit(model, loader())
    assert calls == ["step", "training_step", "zero_grad", "backward"] * 3
    assert trainer.global_step == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    calls.clear()
    trainer = L.Trainer(**quiet(max_epochs=1, limit_train_batches=4, accumulate_grad_batches=2))
    trainer.fit(model, loader())
    window = ["training_step", "zero_grad", "backward", "step", "training_step", "backward"]
    assert calls == window * 2 and trainer.global_step == 2


def test_a_step_pre_hook_runs_before_the_training_step():
    calls: list[str] = []

    def optimizer(params):
        sgd = SGD(params, lr=0.1)
        sgd.register_step_pre_hook(lambda *args: calls.append("pre_hook"))
        return sgd

    L.Trainer(**quiet(max_epochs=1, limit_train_batches=2)).fit(_recording_model(calls, optimizer), loader())
    assert calls == ["pre_hook", "training_step", "backward"] * 2


def test_torch_optimizers_take_the_direct_path():
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert not steps_around_closure(SGD(params, lr=0.1))
    assert not steps_around_closure(torch.optim.AdamW(params))

    class Own(SGD):
        def step(self, closure=None):
            return super().step(closure)

    assert steps_around_closure(Own(params, lr=0.1))
