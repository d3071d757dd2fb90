"""Stop a fit at a chosen point with a checkpoint, resume it in the same process, compare with an uninterrupted fit.

A real crash is replaced by an exception raised right after ``trainer.save_checkpoint`` in the
same hook, after every other callback has run there (the stopper is last in the list, as
checkpoint callbacks are). The resumed fit gets fresh module, callbacks and dataloaders built by
the same factories, so only the checkpoint carries state across.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import fulmen as L
from fulmen.callbacks import Callback


class Stop(Exception):
    """The stand-in for a crash."""


class StopAt(Callback):
    """Save ``path`` then raise :class:`Stop`: at ``on_train_batch_end`` of global step ``at`` ("batch"),
    at ``on_validation_end`` of the validation run at step ``at`` ("validation"), or at
    ``on_train_epoch_end`` of epoch ``at`` ("epoch")."""

    def __init__(self, path: Path, where: str, at: int) -> None:
        assert where in ("batch", "validation", "epoch")
        self.path, self.where, self.at = path, where, at

    def _stop(self, trainer: Any) -> None:
        trainer.save_checkpoint(self.path)
        raise Stop(f"stopped at {self.where} {self.at}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.where == "batch" and trainer.global_step == self.at:
            self._stop(trainer)

    def on_validation_end(self, trainer, pl_module):
        if self.where == "validation" and not trainer.sanity_checking and trainer.global_step == self.at:
            self._stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.where == "epoch" and trainer.current_epoch == self.at:
            self._stop(trainer)


class NoisyDataset(Dataset):
    """Draws from torch's generator in ``__getitem__``, as augmentations do."""

    def __init__(self, n: int = 32, features: int = 6, seed: int = 0, noise: float = 0.01) -> None:
        g = torch.Generator().manual_seed(seed)
        self.noise = noise
        self.x = torch.randn(n, features, generator=g)
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.noise:
            return self.x[index], self.y[index]
        return self.x[index] + self.noise * torch.randn(self.x.shape[1]), self.y[index]


def loaders(n: int = 32, batch_size: int = 4, val_noise: float = 0.01) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(NoisyDataset(n), batch_size=batch_size, shuffle=True)
    val = DataLoader(NoisyDataset(8, seed=1, noise=val_noise), batch_size=4)
    return train, val


def quiet_trainer(root: Path, callbacks: list[Callback], **overrides: Any) -> L.Trainer:
    flags: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    flags.update(overrides)
    return L.Trainer(callbacks=callbacks, **flags)


def assert_same_tensors(expected: Any, actual: Any, where: str = "") -> None:
    """``torch.equal`` through nested dicts, lists and tuples."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and torch.equal(expected, actual), f"{where} differs"
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), f"{where}: keys {sorted(map(str, expected))} != {sorted(map(str, actual))}"
        for key in expected:
            assert_same_tensors(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), f"{where}: lengths differ"
        for i, (a, b) in enumerate(zip(expected, actual)):
            assert_same_tensors(a, b, f"{where}[{i}]")
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


class Result:
    def __init__(self, trainer: L.Trainer, module: L.LightningModule, callbacks: list[Callback]) -> None:
        self.trainer, self.module, self.callbacks = trainer, module, callbacks

    @property
    def optimizer_state(self) -> dict[str, Any]:
        return self.trainer.optimizers[0].state_dict()


def run(
    root: Path,
    make_module: Callable[[], L.LightningModule],
    make_callbacks: Callable[[], list[Callback]],
    extra: list[Callback] = (),
    ckpt_path: Path | None = None,
    seed: int = 0,
    val_noise: float = 0.01,
    **trainer_flags: Any,
) -> Result:
    torch.manual_seed(seed)  # initial weights and data order
    make_logger = trainer_flags.pop("make_logger", None)
    if make_logger is not None:  # one logger per run, in the run's folder
        trainer_flags["logger"] = make_logger(root)
    module, callbacks = make_module(), make_callbacks()
    trainer = quiet_trainer(root, [*callbacks, *extra], **trainer_flags)
    trainer.fit(module, *loaders(val_noise=val_noise), ckpt_path=ckpt_path)
    return Result(trainer, module, callbacks)


def stop_and_resume(
    root: Path,
    make_module: Callable[[], L.LightningModule],
    make_callbacks: Callable[[], list[Callback]],
    stops: list[tuple[str, int]],
    compare: Callable[[Result, Result], None] | None = None,
    **trainer_flags: Any,
) -> Result:
    """Fit once uninterrupted, then for each (where, at) stop there, resume, and compare; returns the reference."""
    reference = run(root / "full", make_module, make_callbacks, **trainer_flags)
    for where, at in stops:
        path = root / f"{where}-{at}.ckpt"
        with pytest.raises(Stop):
            run(root / f"{where}-{at}", make_module, make_callbacks, extra=[StopAt(path, where, at)], **trainer_flags)
        # Other initial weights: whatever the resumed run needs must come from the checkpoint.
        resumed = run(root / f"{where}-{at}", make_module, make_callbacks, ckpt_path=path, seed=1, **trainer_flags)
        context = f"stopped at {where} {at}"
        assert_same_tensors(reference.module.state_dict(), resumed.module.state_dict(), f"weights ({context})")
        assert_same_tensors(reference.optimizer_state, resumed.optimizer_state, f"optimizer ({context})")
        assert resumed.trainer.global_step == reference.trainer.global_step
        if compare is not None:
            compare(reference, resumed)
    return reference
