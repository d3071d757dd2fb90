"""Which dataloaders a run uses, loaded at the documented points, and how many batches each gives.

This module is the one that prepares loaders (sharding, resumable sampling, ``overfit_batches``),
counts their batches under the ``limit_*`` flags, and writes them and their counts on the run.

``train`` after the sanity check (and on reloads), ``val`` at the first validation run, ``test``
and ``predict`` when their loop starts. A loader comes from the entry point's arguments, else
the datamodule's method, else the module's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler

from fulmen.datamodule import LightningDataModule
from fulmen.module import LightningModule
from fulmen.strategies import has_len, make_resumable, prepare_dataloader, rebuild_dataloader
from fulmen.utilities.combined_loader import CombinedLoader
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
    loader = train_loader_from(source)
    if config.overfit_batches:
        loader = without_shuffle(loader)
    loader = run.strategy.process_train_dataloader(loader)  # fault_tolerant: each step's samples by quorum
    loader = prepare_train(loader, run.strategy.distributed_sampler_kwargs, config.use_distributed_sampler)
    run.train_dataloader = loader
    run.num_training_batches = count_batches(loader, config.limit_train_batches, "limit_train_batches")
    run.last_reload["train"] = run.state.current_epoch
    run.val_check_batch = _val_check_batch(run)
    batches = run.num_training_batches
    if batches == 0 and config.limit_train_batches != 0:
        rank_zero_warn(
            "`train_dataloaders` gives no batches (an empty dataset, or fewer samples than one batch with "
            "`drop_last=True`): `fit` trains nothing. Check the training ",
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
    loaders = as_loader_list(loader_source(run, key, method), f"{key}_dataloaders")
    if stage == RunningStage.VALIDATING and config.overfit_batches:
        loaders = [without_shuffle(loader) for loader in loaders]
    sampler_kwargs = run.strategy.distributed_sampler_kwargs
    loaders = [prepare(loader, sampler_kwargs, config.use_distributed_sampler) for loader in loaders]
    counts = [count_batches(loader, getattr(config, flag), flag) for loader in loaders]
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


def as_loader_list(loaders: Any, name: str) -> list[Any]:
    """A loader, a list/tuple of loaders or a dict of them, as a list (dict order)."""
    if loaders is None:
        return []
    several = isinstance(loaders, (Mapping, list, tuple))
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    elif isinstance(loaders, (list, tuple)):
        loaders = list(loaders)
    else:
        loaders = [loaders]
    for index, loader in enumerate(loaders):
        _check_loader(loader, name, index if several else None)
    return loaders


def _check_loader(loader: Any, name: str, index: int | None) -> None:
    """A loader must be an iterable of batches; a dataset sample in its place fails now, named."""
    if isinstance(loader, (DataLoader, CombinedLoader)):
        return
    where = name if index is None else f"{name}[{index}]"
    if _is_sample(loader):
        raise MisconfigurationException(
            f"`{where}` is {_describe(loader)}: a sample of data, not a loader of batches. A list passed as "
            f"`{name}` is a list of loaders; wrap your samples in one: "
            f"`{name}=DataLoader(samples, batch_size=...)`."
        )
    if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
        raise invalid_argument(where, loader, "a DataLoader (or any iterable of batches), or a list of them")


def _is_sample(value: Any) -> bool:
    """A tensor, a number, or a tuple/dict of them: what a dataset yields, not what yields batches."""
    if isinstance(value, (Tensor, int, float, bool)) or value is None:
        return True
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, tuple) else None
    return items is not None and all(isinstance(item, (Tensor, int, float, bool, str)) for item in items)


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, Mapping)):
        kinds = ", ".join(type(item).__name__ for item in (value.values() if isinstance(value, Mapping) else value))
        return f"a {type(value).__name__} of ({kinds})"
    return repr(value)


def prepare(loader: Any, sampler_kwargs: dict[str, int] | None, use_distributed_sampler: bool) -> Any:
    """Shard a torch DataLoader between processes (and seed its workers); other iterables pass as they are."""
    if isinstance(loader, DataLoader):
        return prepare_dataloader(loader, sampler_kwargs, use_distributed_sampler)
    if isinstance(loader, CombinedLoader):
        prepared = CombinedLoader(loader.iterables, loader.mode)  # a copy: the user's object stays as it was
        prepared.flattened = [prepare(inner, sampler_kwargs, use_distributed_sampler) for inner in loader.flattened]
        return prepared
    return loader


def prepare_train(loader: Any, sampler_kwargs: dict[str, int] | None, use_distributed_sampler: bool) -> Any:
    """``prepare``, then make a DataLoader resumable by sample index (see ``strategies.resumable_sampler``)."""
    prepared = prepare(loader, sampler_kwargs, use_distributed_sampler)
    if isinstance(prepared, DataLoader):
        return make_resumable(prepared, origin=loader.sampler if isinstance(loader, DataLoader) else None)
    return prepared


def without_shuffle(loader: Any) -> Any:
    """``overfit_batches``: the same first batches every epoch."""
    if (
        isinstance(loader, DataLoader)
        and not isinstance(loader.sampler, SequentialSampler)
        and (loader.batch_sampler is None or type(loader.batch_sampler).__name__ == "BatchSampler")
    ):
        rank_zero_warn(
            "You requested to overfit but enabled train dataloader shuffling: `overfit_batches` turns off the "
            "shuffling of this dataloader, so the same batches come every epoch."
        )
        return rebuild_dataloader(loader, sampler=SequentialSampler(loader.dataset))
    return loader


def count_batches(loader: Any, limit: int | float, flag: str) -> int | float:
    """How many batches the loop takes from ``loader`` under ``limit`` (``inf`` when unknown)."""
    length = len(loader) if has_len(loader) else math.inf
    if isinstance(limit, int):
        return min(length, limit)
    if length == math.inf:
        if limit not in (0.0, 1.0):
            raise MisconfigurationException(
                f"`{flag}={limit}` is a fraction, but the dataloader has no length to take it of. "
                f"Pass an int (a number of batches) or 1.0."
            )
        return 0 if limit == 0.0 else math.inf
    batches = int(length * limit)
    if limit > 0 and batches == 0 and length > 0:
        minimum = 1.0 / length
        raise MisconfigurationException(
            f"`{flag}={limit}` of {length} batches is less than one batch. Pass at least `{flag}={minimum:.4g}` "
            "or an int."
        )
    return batches


def train_loader_from(value: Any) -> Any:
    """One training loader from what ``train_dataloader`` returned (several become a ``CombinedLoader``)."""
    if isinstance(value, (Mapping, list, tuple)):
        as_loader_list(value, "train_dataloaders")  # each one an iterable of batches, not a sample
        return CombinedLoader(value, "max_size_cycle")  # Lightning's default for training
    if isinstance(value, CombinedLoader) and value.mode == "sequential":
        raise invalid_argument(
            "train_dataloaders",
            value,
            "a CombinedLoader in mode 'min_size', 'max_size_cycle' or 'max_size' (training "
            "steps see one batch of every loader at once; 'sequential' is for evaluation)",
        )
    if value is None or isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise invalid_argument("train_dataloaders", value, "a DataLoader, a list or a dict of DataLoaders")
    return value
