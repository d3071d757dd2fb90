"""Depth: at most 8 fulmen frames between ``Trainer.fit`` and the user's ``training_step``.

An exception raised inside ``training_step`` carries the whole call chain in its traceback; the
frames whose code lies in the fulmen package, from the one that ``trainer.fit(...)`` entered
(inclusive) to ``training_step`` (exclusive), are the depth a user reads through in every traceback
and debugger. Frames of other packages in between (torch's ``Module.__call__``) are listed in the
failure message but not counted.
"""

from __future__ import annotations

import os
import traceback

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen
from fulmen import LightningModule, Trainer

PACKAGE_DIR = os.path.dirname(os.path.abspath(fulmen.__file__))
MAX_DEPTH = 8


class StepFailure(Exception):
    """Raised by the model below, so nothing else can be mistaken for it."""


class FailingModel(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        raise StepFailure("raised inside training_step")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _in_fulmen(frame) -> bool:
    return os.path.abspath(frame.f_code.co_filename).startswith(PACKAGE_DIR + os.sep)


def _describe(frame, lineno: int) -> str:
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    path = os.path.abspath(code.co_filename)
    where = os.path.relpath(path, PACKAGE_DIR) if _in_fulmen(frame) else path
    return f"{name} ({where}:{lineno})"


def _fit_to_step_frames(trainer: Trainer) -> tuple[list[str], list[str]]:
    """(fulmen frames, every frame) from the frame ``trainer.fit`` entered to ``training_step``, exclusive."""
    model = FailingModel()
    data = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    with pytest.raises(StepFailure) as caught:
        trainer.fit(model, DataLoader(data, batch_size=4))
    frames = list(traceback.walk_tb(caught.value.__traceback__))
    step_code = FailingModel.training_step.__code__
    step_at = [i for i, (frame, _) in enumerate(frames) if frame.f_code is step_code]
    assert step_at, "training_step is not in the traceback:\n" + "\n".join(_describe(*f) for f in frames)
    # The first fulmen frame is the one the test's `trainer.fit(...)` call entered: Trainer.fit itself,
    # or a wrapper of it, which a user reads through all the same.
    fit_at = next(i for i, (frame, _) in enumerate(frames) if _in_fulmen(frame))
    between = frames[fit_at : step_at[0]]
    ours = [_describe(frame, lineno) for frame, lineno in between if _in_fulmen(frame)]
    every = [("  " if _in_fulmen(frame) else "  (not fulmen) ") + _describe(frame, lineno) for frame, lineno in between]
    return ours, every


def _assert_shallow(trainer: Trainer) -> None:
    ours, every = _fit_to_step_frames(trainer)
    depth = len(ours)
    assert depth <= MAX_DEPTH, (
        f"{depth} fulmen frames from Trainer.fit to training_step, at most {MAX_DEPTH} allowed:\n" + "\n".join(every)
    )


def test_depth_quiet_flags():
    _assert_shallow(
        Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    )


def test_depth_default_flags(tmp_path):
    _assert_shallow(Trainer(accelerator="cpu", devices=1, max_steps=1, default_root_dir=tmp_path))


def test_depth_barebones():
    _assert_shallow(Trainer(accelerator="cpu", devices=1, max_steps=1, barebones=True))
