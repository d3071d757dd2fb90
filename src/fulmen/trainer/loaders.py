"""Which dataloaders a run uses, loaded at the documented points, and how many batches each gives.

``train`` after the sanity check (and on reloads), ``val`` at the first validation run, ``test``
and ``predict`` when their loop starts. A loader comes from the entry point's arguments, else
the datamodule's method, else the module's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fulmen.datamodule import LightningDataModule
from fulmen.module import LightningModule
from fulmen.trainer import data
from fulmen.utilities.exceptions import MisconfigurationException, PossibleUserWarning, invalid_argument
from fulmen.utilities.overrides import is_overridden
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.stages import RunningStage

if TYPE_CHECKING:
    from fulmen.trainer.run import Run


def load_train_dataloader(run: Run) -> None:
    config = run.config
    source = loader_source(run, "train", "train_dataloader")
    if source is None:
        raise MisconfigurationException(
            "`Trainer.fit` has no training data: pass `train_dataloaders`, a datamodule with "
            "`train_dataloader`, or implement `train_dataloader` in the module."
        )
    loader = data.train_loader_from(source)
    if config.overfit_batches:
        loader = data.without_shuffle(loader)
    loader = data.prepare_train(loader, run.strategy.distributed_sampler_kwargs, config.use_distributed_sampler)
    run.train_dataloader = loader
    run.num_training_batches = data.count_batches(loader, config.limit_train_batches, "limit_train_batches")
    run.last_reload["train"] = run.state.current_epoch
    run.val_check_batch = _val_check_batch(run)
    batches = run.num_training_batches
    if batches == 0 and config.limit_train_batches != 0:
        rank_zero_warn(
            "`train_dataloaders` gives no batches (an empty dataset, or fewer samples than one batch with "
            "`drop_last=True`): `fit` trains nothing. Check the training data.",
            category=PossibleUserWarning,
        )
    elif 0 < batches < config.log_every_n_steps and run.trainer.loggers and not config.fast_dev_run:
        rank_zero_warn(
            f"The training data has {batches} batches, fewer than `log_every_n_steps={config.log_every_n_steps}`: "
            "step-level values are logged less often than every epoch. Lower `log_every_n_steps` to log them more "
            "often."
        )


def _val_check_batch(run: Run) -> int | float:
    interval, batches = run.config.val_check_interval, run.num_training_batches
    if run.config.val_check_seconds is not None:
        return math.inf  # validation by time (see loops.fit._val_check_fn)
    if isinstance(interval, int):
        checked = run.config.check_val_every_n_epoch is not None and run.config.limit_val_batches != 0
        if checked and batches != math.inf and interval > batches:
            raise invalid_argument(
                "val_check_interval",
                interval,
                f"at most the number of training batches ({batches}); or set `check_val_every_n_epoch=None` "
                "to count batches across epochs, or `limit_val_batches=0` to turn validation off",
                said=f"`val_check_interval` ({interval}) must be less than or equal to the number of the training "
                f"batches ({batches})",
            )
        return interval
    if batches == math.inf:
        if interval != 1.0:
            raise invalid_argument(
                "val_check_interval", interval, "1.0 or an int, since the training data has no length"
            )
        return math.inf
    return max(1, int(batches * interval))


_EVAL_SOURCES = {
    RunningStage.VALIDATING: ("val", "val_dataloader", "limit_val_batches"),
    RunningStage.TESTING: ("test", "test_dataloader", "limit_test_batches"),
    RunningStage.PREDICTING: ("predict", "predict_dataloader", "limit_predict_batches"),
}


def load_eval_dataloaders(run: Run, stage: RunningStage) -> list[Any]:
    key, method, flag = _EVAL_SOURCES[stage]
    config = run.config
    loaders = data.as_loader_list(loader_source(run, key, method), f"{key}_dataloaders")
    if stage == RunningStage.VALIDATING and config.overfit_batches:
        loaders = [data.without_shuffle(loader) for loader in loaders]
    sampler_kwargs = run.strategy.distributed_sampler_kwargs
    loaders = [data.prepare(loader, sampler_kwargs, config.use_distributed_sampler) for loader in loaders]
    counts = [data.count_batches(loader, getattr(config, flag), flag) for loader in loaders]
    if stage == RunningStage.VALIDATING:
        run.val_dataloaders, run.num_val_batches = loaders, counts
        run.last_reload["val"] = run.state.current_epoch
    elif stage == RunningStage.TESTING:
        run.test_dataloaders, run.num_test_batches = loaders, counts
    else:
        run.predict_dataloaders, run.num_predict_batches = loaders, counts
    return loaders


def loader_source(run: Run, key: str, method: str) -> Any:
    """The loader(s) passed in, else the datamodule's method, else the module's (when implemented)."""
    if key in run.sources:
        return run.sources[key]
    owner: Any = None
    if run.datamodule is not None:
        owner = run.datamodule if is_overridden(run.datamodule, LightningDataModule, method) else None
    elif is_overridden(run.module, LightningModule, method):
        owner = run.module
    if owner is None:
        if key == "predict" and run.datamodule is None:
            return getattr(run.module, method)()  # raises the module's own clear error
        return None
    if run.results is None:
        return getattr(owner, method)()
    with run.results.hook(method):
        return getattr(owner, method)()


def validation_enabled(run: Run) -> bool:
    if run.config.limit_val_batches == 0 or not is_overridden(run.module, LightningModule, "validation_step"):
        return False
    if run.val_dataloaders is not None or "val" in run.sources:
        return True
    if run.datamodule is not None:
        return is_overridden(run.datamodule, LightningDataModule, "val_dataloader")
    return is_overridden(run.module, LightningModule, "val_dataloader")


def with_epoch_length(run: Run, batches: Iterator[Any], length: int) -> Iterator[Any]:
    """A resumed epoch on another number of processes has another length: ``trainer.num_training_batches``
    is that length while it runs, the loader's after."""
    full, run.num_training_batches = run.num_training_batches, length
    try:
        yield from batches
    finally:
        run.num_training_batches = full


def reload_due(run: Run, which: str) -> bool:
    n = run.config.reload_dataloaders_every_n_epochs
    return bool(n) and run.state.current_epoch - run.last_reload[which] >= n
