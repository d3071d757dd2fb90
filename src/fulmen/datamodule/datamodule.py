"""``LightningDataModule``: everything about the data of an experiment, in one reusable object.

The Trainer calls ``prepare_data`` once per node (on local rank 0, the other ranks wait), then
``setup(stage)`` in every process, then the ``*_dataloader`` method the stage needs, and
``teardown(stage)`` at the end.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from fulmen.checkpointing.rebuild import instantiate, read_checkpoint, restricted_classmethod
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.hparams import HyperparametersMixin
from fulmen.utilities.overrides import is_overridden

if TYPE_CHECKING:
    from fulmen.trainer import Trainer


class LightningDataModule(HyperparametersMixin):
    """Subclass it and implement the ``*_dataloader`` methods your stages need."""

    #: A short name for the data (shown by some loggers).
    name: str | None = None
    #: Run ``prepare_data`` on local rank 0 of every node (True) or only on global rank 0 (False).
    prepare_data_per_node: bool = True
    allow_zero_length_dataloader_with_multiple_devices: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Trainer | None = None

    # ---------------------------------------------------------------------------------- hooks
    def prepare_data(self) -> None:
        """Download or write data to disk. Runs once per node, so assign no state here."""

    def setup(self, stage: str) -> None:
        """Build datasets in every process; ``stage`` is "fit", "validate", "test" or "predict"."""

    def teardown(self, stage: str) -> None:
        """Clean up after ``stage``."""

    def train_dataloader(self) -> Any:
        raise MisconfigurationException(f"`train_dataloader` is not implemented in {type(self).__name__}.")

    def val_dataloader(self) -> Any:
        raise MisconfigurationException(f"`val_dataloader` is not implemented in {type(self).__name__}.")

    def test_dataloader(self) -> Any:
        raise MisconfigurationException(f"`test_dataloader` is not implemented in {type(self).__name__}.")

    def predict_dataloader(self) -> Any:
        raise MisconfigurationException(f"`predict_dataloader` is not implemented in {type(self).__name__}.")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move ``batch`` to ``device``; override for custom batch types."""
        return move_data_to_device(batch, device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def on_exception(self, exception: BaseException) -> None:
        """When fit, validate, test or predict raises; the exception is re-raised afterwards."""

    # ----------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (e.g. the position of a stateful sampler)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    # --------------------------------------------------------------------------- constructors
    @restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Any,
        map_location: Any = None,
        hparams_file: str | Any = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> LightningDataModule:
        """Rebuild the datamodule from a Trainer checkpoint: saved hyperparameters, then ``kwargs``, then its state.

        ``map_location`` places the tensors of its state like ``torch.load``'s argument (Lightning's signature).
        """
        checkpoint = read_checkpoint(checkpoint_path, map_location, weights_only)
        datamodule = instantiate(cls, checkpoint.get("datamodule_hyper_parameters"), hparams_file, kwargs)
        if checkpoint.get("datamodule"):
            datamodule.load_state_dict(checkpoint["datamodule"])
        return datamodule

    @classmethod
    def from_datasets(
        cls,
        train_dataset: Dataset | Sequence[Dataset] | Mapping[str, Dataset] | None = None,
        val_dataset: Dataset | Sequence[Dataset] | None = None,
        test_dataset: Dataset | Sequence[Dataset] | None = None,
        predict_dataset: Dataset | Sequence[Dataset] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        **datamodule_kwargs: Any,
    ) -> LightningDataModule:
        """A datamodule whose dataloaders wrap the given datasets (training data shuffled)."""

        def loader(dataset: Dataset, shuffle: bool = False) -> DataLoader:
            shuffle = shuffle and not isinstance(dataset, IterableDataset)
            return DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=shuffle,
                num_workers=num_workers,
                pin_memory=torch.cuda.is_available(),
            )

        def loaders(datasets: Any, shuffle: bool = False) -> Any:
            if isinstance(datasets, Mapping):
                return {key: loader(ds, shuffle) for key, ds in datasets.items()}
            if isinstance(datasets, Sequence) and not isinstance(datasets, Dataset):
                return [loader(ds, shuffle) for ds in datasets]
            return loader(datasets, shuffle)

        parameters = inspect.signature(cls.__init__).parameters
        candidates = {"batch_size": batch_size, "num_workers": num_workers}
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            special = candidates
        else:
            special = {k: v for k, v in candidates.items() if k in parameters}
        datamodule = cls(**datamodule_kwargs, **special)
        if train_dataset is not None:
            datamodule.train_dataloader = lambda: loaders(train_dataset, shuffle=True)  # type: ignore[method-assign]
        if val_dataset is not None:
            datamodule.val_dataloader = lambda: loaders(val_dataset)  # type: ignore[method-assign]
        if test_dataset is not None:
            datamodule.test_dataloader = lambda: loaders(test_dataset)  # type: ignore[method-assign]
        if predict_dataset is not None:
            datamodule.predict_dataloader = lambda: loaders(predict_dataset)  # type: ignore[method-assign]
        return datamodule

    def __str__(self) -> str:
        """The size of each dataloader's dataset, in Lightning's layout: ``{Train dataloader: size=64}``
        per line; ``None`` where the method is missing or fails (``setup`` has not run yet), ``NA``
        for a dataset without a length, ``1. size=16 ; 2. size=NA`` for several loaders."""
        lines = []
        for label, method in (("Train", "train_dataloader"), ("Validation", "val_dataloader"),
                              ("Test", "test_dataloader"), ("Predict", "predict_dataloader")):  # fmt: skip
            described = "None"
            if is_overridden(self, LightningDataModule, method):
                try:
                    described = _describe_loaders(getattr(self, method)())
                except Exception:  # e.g. setup() has not run yet
                    pass
            lines.append(f"{{{label} dataloader: {described}}}")
        return os.linesep.join(lines)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["trainer"] = None
        return state


def _describe_loaders(loaders: Any) -> str:
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, Sequence) and not isinstance(loaders, (str, bytes)):
        return " ; ".join(f"{i}. {_size(loader)}" for i, loader in enumerate(loaders, start=1))
    return _size(loaders)


def _size(loader: Any) -> str:
    dataset = getattr(loader, "dataset", None)
    try:
        return f"size={len(dataset if dataset is not None else loader)}"
    except TypeError:
        return "size=NA"
