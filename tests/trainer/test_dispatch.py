"""The hook dispatcher knows every hook by name: a misspelt one fails at once instead of doing nothing."""

from __future__ import annotations

import pytest

import fulmen as L
from fulmen.trainer.dispatch import Hooks
from tests.trainer.helpers import quiet


class _Recorder(L.Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        self.calls.append("on_validation_start")


def _hooks() -> tuple[Hooks, _Recorder]:
    recorder = _Recorder()
    trainer = L.Trainer(**quiet())
    return Hooks(trainer, L.LightningModule(), [recorder], None), recorder


@pytest.mark.parametrize(
    "call",
    [
        lambda hooks: hooks.call("on_validaton_start"),
        lambda hooks: hooks.any("on_train_batch_ends"),
        lambda hooks: hooks.call_module("configure_optimizer"),
        lambda hooks: hooks.call_datamodule("prepare_datas"),
    ],
)
def test_a_misspelt_hook_name_fails(call):
    hooks, recorder = _hooks()
    with pytest.raises(KeyError):
        call(hooks)
    assert recorder.calls == []


def test_known_hooks_dispatch_and_inactive_ones_cost_nothing():
    hooks, recorder = _hooks()
    assert hooks.any("on_validation_start") and not hooks.any("on_test_start")
    assert hooks.call("on_test_start") is None  # nobody implements it: nothing runs, no store is needed
