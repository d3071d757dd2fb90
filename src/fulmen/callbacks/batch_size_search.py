"""The largest batch size that trains without running out of memory.

Each trial sets the batch size attribute (on the model, the datamodule, or their ``hparams``),
loads the train dataloader anew and trains ``steps_per_trial`` steps. ``power`` doubles the
size until a trial runs out of memory, then keeps the last size that fitted; ``binsearch`` then
bisects between the last fit and the first failure. Neither goes past the dataset's length
(a bigger batch would only be the whole dataset again). The weights, optimizer and scheduler
states and random generators are restored afterwards, and the attribute keeps the size found.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import torch
from torch.utils.data import DataLoader

from fulmen.callbacks.callback import Callback
from fulmen.callbacks.trial_link import trial_runner
from fulmen.callbacks.trial_snapshot import Snapshot, free_memory
from fulmen.callbacks.tuned_attributes import attribute_holders, get_attribute, set_attribute
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

MODES = ("power", "binsearch")

#: Messages of the out-of-memory errors that a smaller batch can avoid (CPU, CUDA, cuDNN, MPS).
_OOM_MESSAGES = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUDNN_STATUS_NOT_SUPPORTED",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "DefaultCPUAllocator: can't allocate memory",
    "MPS backend out of memory",
)


def is_oom_error(error: BaseException) -> bool:
    """Whether ``error`` says the device ran out of memory."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and any(message in str(error) for message in _OOM_MESSAGES)


def check_arguments(
    mode: Any,
    steps_per_trial: Any,
    init_val: Any,
    max_trials: Any,
    batch_arg_name: Any,
    margin: Any = 0.05,
    max_val: Any = None,
) -> None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise invalid_argument("margin", margin, "a float in [0, 1): the share taken off the size binsearch finds")
    if max_val is not None and (isinstance(max_val, bool) or not isinstance(max_val, int) or max_val < 1):
        raise invalid_argument("max_val", max_val, "None or an int >= 1: the largest batch size to try")
    if mode not in MODES:
        raise invalid_argument("mode", mode, MODES)
    for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid_argument(name, value, "an int >= 1")
    if not isinstance(batch_arg_name, str) or not batch_arg_name:
        raise invalid_argument("batch_arg_name", batch_arg_name, "the name of the batch size attribute, a string")


def check_batch_attribute(module: Any, batch_arg_name: str, datamodule: Any) -> None:
    if not attribute_holders(module, batch_arg_name, datamodule):
        raise MisconfigurationException(
            f"The batch size finder changes `{batch_arg_name}`, but neither the model, nor the datamodule, nor their "
            f"`hparams` has it: define `self.{batch_arg_name}` and read it in `train_dataloader`, or name your "
            "attribute with `batch_arg_name=...`."
        )


class _TrialWatch(Callback):
    """Checks that the train dataloader of a trial has the size being tried, and notes the dataset's length."""

    def __init__(self, size: int, batch_arg_name: str) -> None:
        self.size = size
        self.batch_arg_name = batch_arg_name
        self.dataset_length: int | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            return
        if loader.batch_size is not None and loader.batch_size != self.size:
            raise MisconfigurationException(
                f"The batch size finder set `{self.batch_arg_name}={self.size}`, but the train DataLoader still has "
                f"batch_size={loader.batch_size}. It cannot change a DataLoader passed to `fit`: build it in the "
                f"module's or datamodule's `train_dataloader`, reading `self.{self.batch_arg_name}`."
            )
        if isinstance(loader.dataset, Sized):
            self.dataset_length = len(loader.dataset)


class _Search:
    """One trial per batch size tried; remembers the dataset's length."""

    def fits(self, size: int) -> bool:
        """Train a few steps with batch size ``size``: True when it did, False when memory ran out."""
        set_attribute(self.module, self.batch_arg_name, size, self.datamodule)
        watch = _TrialWatch(size, self.batch_arg_name)
        out_of_memory = False
        try:
            trial_runner(self.trainer).trial([watch], self.steps_per_trial)
        except RuntimeError as error:
            if not is_oom_error(error):
                raise
            out_of_memory = True
        if watch.dataset_length is not None:
            self.dataset_length = watch.dataset_length
        if out_of_memory:
            free_memory()  # outside the except block: the traceback no longer holds the failed step's tensors
        return not out_of_memory

    def __init__(self, trainer: Any, module: Any, batch_arg_name: str, steps_per_trial: int, max_val: int | None):
        self.trainer = trainer
        self.module = module
        self.datamodule = trainer.datamodule
        self.batch_arg_name = batch_arg_name
        self.steps_per_trial = steps_per_trial
        self.max_val = max_val
        self.dataset_length: int | None = None

    def capped(self, size: int) -> int:
        """No size above the dataset's length or ``max_val``."""
        if self.dataset_length:
            size = min(size, self.dataset_length)
        return min(size, self.max_val) if self.max_val is not None else size


def _power(search: _Search, size: int, max_trials: int) -> int | None:
    fitted: int | None = None
    for _ in range(max_trials):
        if search.fits(size):
            fitted = size
            bigger = search.capped(size * 2)
            if bigger <= size:
                rank_zero_info(f"Batch size {size} succeeded and is the largest allowed (dataset length or max_val).")
                break
            rank_zero_info(f"Batch size {size} succeeded, trying batch size {bigger}")
            size = bigger
        else:
            if fitted is not None:
                rank_zero_info(f"Batch size {size} failed, keeping batch size {fitted}")
                break
            if size == 1:
                break
            rank_zero_info(f"Batch size {size} failed, trying batch size {size // 2}")
            size //= 2
    return fitted


def _binsearch(search: _Search, size: int, max_trials: int) -> int | None:
    fitted: int | None = None
    failed: int | None = None
    for _ in range(max_trials):
        if search.fits(size):
            fitted = size
            if failed is None:
                following = search.capped(size * 2)
            else:
                following = (size + failed) // 2
            verdict = "succeeded"
        else:
            failed = size
            following = ((fitted or 0) + size) // 2
            verdict = "failed"
        if following in (size, fitted, failed) or following < 1:
            break
        rank_zero_info(f"Batch size {size} {verdict}, trying batch size {following}")
        size = following
    return fitted


def scale_batch_size(
    trainer: Any,
    module: Any,
    mode: str = "power",
    steps_per_trial: int = 3,
    init_val: int = 2,
    max_trials: int = 25,
    batch_arg_name: str = "batch_size",
    margin: float = 0.05,
    max_val: int | None = 8192,
) -> int | None:
    """Search the batch size on ``trainer``'s running fit (at ``on_fit_start``); returns the size found.

    No size above ``max_val`` is tried; ``binsearch`` keeps ``margin`` (a share) below the largest
    size that fitted, as headroom. The attribute keeps that size, so the fit that follows (and the
    next one) uses it.
    """
    check_arguments(mode, steps_per_trial, init_val, max_trials, batch_arg_name, margin, max_val)
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping batch size scaler since `fast_dev_run` is enabled.")
        return None
    if trainer.world_size > 1:
        raise MisconfigurationException(
            f"The batch size finder runs in one process; this Trainer runs {trainer.world_size}. Find the batch size "
            "on one device, then pass it to the distributed run."
        )
    datamodule = trainer.datamodule
    check_batch_attribute(module, batch_arg_name, datamodule)
    initial = get_attribute(module, batch_arg_name, datamodule)
    search = _Search(trainer, module, batch_arg_name, steps_per_trial, max_val)
    init_val = search.capped(init_val)
    snapshot = Snapshot(trainer, module)
    try:
        run = _power if mode == "power" else _binsearch
        found = run(search, init_val, max_trials)
    finally:
        snapshot.restore()
    if found is None:
        set_attribute(module, batch_arg_name, initial, datamodule)
        raise MisconfigurationException(
            f"No batch size fitted in memory: every trial from `init_val={init_val}` down ran out of memory "
            f"({max_trials} trials at most). Use a smaller model or a device with more memory."
        )
    if mode == "binsearch" and margin:
        found = max(1, int(found * (1 - margin)))
    set_attribute(module, batch_arg_name, found, datamodule)
    rank_zero_info(f"The batch size finder chose batch size {found}.")
    return found
