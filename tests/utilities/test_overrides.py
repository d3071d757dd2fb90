"""is_overridden: which hooks an object implements itself."""

from __future__ import annotations

import functools

from fulmen import LightningDataModule, LightningModule
from fulmen.utilities.overrides import is_overridden


class Own(LightningModule):
    def on_fit_start(self) -> None:
        pass


def _recording(method):
    def record(*args, **kwargs):
        return method(*args, **kwargs)

    return functools.update_wrapper(functools.partial(record), method)


def test_class_and_instance_overrides():
    module = Own()
    assert is_overridden(module, LightningModule, "on_fit_start")
    assert not is_overridden(module, LightningModule, "on_train_start")
    module.on_train_start = lambda: None
    assert is_overridden(module, LightningModule, "on_train_start")
    module.validation_step = None  # turns the hook off
    assert not is_overridden(module, LightningModule, "validation_step")


def test_a_recording_wrapper_counts_as_what_it_wraps_only_when_asked():
    dm = LightningDataModule()
    dm.on_before_batch_transfer = _recording(dm.on_before_batch_transfer)
    assert is_overridden(dm, LightningDataModule, "on_before_batch_transfer")
    assert not is_overridden(dm, LightningDataModule, "on_before_batch_transfer", see_through_wrappers=True)
    module = Own()
    module.on_fit_start = _recording(module.on_fit_start)  # wraps the class's own override
    assert is_overridden(module, LightningModule, "on_fit_start", see_through_wrappers=True)
