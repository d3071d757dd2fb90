"""Prediction writer: save predictions to disk as they are made, instead of keeping them in memory.

It exists for prediction over data too large for the returned list (``trainer.predict(...,
return_predictions=False)``), and for distributed prediction, where each process writes its own
shard. Subclass :class:`BasePredictionWriter` and implement ``write_on_batch_end`` (called after
every batch), ``write_on_epoch_end`` (called once with everything), or both.

``batch_indices`` are the dataset indices of the samples in a batch, so that each process's
shard can be put back in dataset order. They are known where the loader's order can be
replayed (a sequential sampler, or a distributed one without shuffling, the usual setup for
prediction); otherwise they are ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


def _replayable(sampler: Any) -> bool:
    """Whether iterating ``sampler`` again yields the order the loader used."""
    if isinstance(sampler, SequentialSampler):
        return True
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle:
        inner = getattr(sampler, "sampler", None)  # fulmen's wrapper around a custom sampler
        return inner is None or _replayable(inner)
    return False


def batch_indices_of(loader: Any) -> list[list[int]] | None:
    """The dataset indices of every batch ``loader`` yields, or ``None`` when they cannot be known up front."""
    if not isinstance(loader, DataLoader):
        return None
    batch_sampler = loader.batch_sampler
    if batch_sampler is None:  # batch_size=None: every "batch" is one sample
        return [[i] for i in loader.sampler] if _replayable(loader.sampler) else None
    if type(batch_sampler) is not BatchSampler or not _replayable(batch_sampler.sampler):
        return None
    return [list(batch) for batch in batch_sampler]


class BasePredictionWriter(Callback):
    """Base class of callbacks that write predictions; override the ``write_on_*`` methods.

    Args:
        write_interval: ``"batch"`` calls ``write_on_batch_end`` after each batch, ``"epoch"``
            calls ``write_on_epoch_end`` once at the end, ``"batch_and_epoch"`` both.

    Example::

        class Writer(BasePredictionWriter):
            def __init__(self, folder):
                super().__init__(write_interval="batch")
                self.folder = folder

            def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                                   dataloader_idx):
                torch.save(prediction, f"{self.folder}/{trainer.global_rank}_{dataloader_idx}_{batch_idx}.pt")
    """

    def __init__(self, write_interval: str = "batch") -> None:
        write_interval = getattr(write_interval, "value", write_interval)
        if write_interval not in _INTERVALS:
            raise invalid_argument("write_interval", write_interval, _INTERVALS)
        self.interval = write_interval
        self._indices: list[list[list[int]] | None] = []
        self._predictions: list[list[Any]] = []
        self._batch_indices: list[list[Any]] = []
        self._warned = False

    @property
    def on_batch(self) -> bool:
        return self.interval in ("batch", "batch_and_epoch")

    @property
    def on_epoch(self) -> bool:
        return self.interval in ("epoch", "batch_and_epoch")

    # ---------------------------------------------------------------------- to override
    def write_on_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write one batch's ``prediction``; ``batch_indices`` are its samples' dataset indices."""
        raise NotImplementedError(
            f"{type(self).__qualname__} uses write_interval={self.interval!r}: implement `write_on_batch_end`."
        )

    def write_on_epoch_end(
        self, trainer: Any, pl_module: Any, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        """Write everything at once.

        ``predictions`` is the list of batch predictions (one such list per dataloader when there
        are several); ``batch_indices[dataloader_idx][batch_idx]`` the matching dataset indices.
        """
        raise NotImplementedError(
            f"{type(self).__qualname__} uses write_interval={self.interval!r}: implement `write_on_epoch_end`."
        )

    # ---------------------------------------------------------------------------- hooks
    def on_predict_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        loaders = trainer.predict_dataloaders
        if loaders is None:
            loaders = []
        elif not isinstance(loaders, (list, tuple)):
            loaders = [loaders]
        self._indices = [batch_indices_of(loader) for loader in loaders]
        self._predictions = [[] for _ in loaders]
        self._batch_indices = [[] for _ in loaders]
        if not self._warned and any(indices is None for indices in self._indices):
            self._warned = True
            rank_zero_warn(
                f"{type(self).__qualname__}: the order of a prediction dataloader cannot be replayed (it shuffles, "
                "or has a custom sampler or no length), so `batch_indices` is None for its batches. "
                "Use `shuffle=False` for prediction to get them."
            )

    def _indices_for(self, batch_idx: int, dataloader_idx: int) -> list[int] | None:
        if dataloader_idx >= len(self._indices):
            return None
        indices = self._indices[dataloader_idx]
        if indices is None or batch_idx >= len(indices):
            return None
        return indices[batch_idx]

    def on_predict_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        batch_indices = self._indices_for(batch_idx, dataloader_idx)
        if self.on_batch:
            self.write_on_batch_end(trainer, pl_module, outputs, batch_indices, batch, batch_idx, dataloader_idx)
        if self.on_epoch:
            while len(self._predictions) <= dataloader_idx:
                self._predictions.append([])
                self._batch_indices.append([])
            self._predictions[dataloader_idx].append(outputs)
            self._batch_indices[dataloader_idx].append(batch_indices)

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.on_epoch:
            return
        predictions, indices = self._predictions, self._batch_indices
        self._predictions, self._batch_indices = [], []
        # As Lightning 2.x passes them: predictions flat for one dataloader, indices always nested.
        if len(predictions) == 1:
            predictions = predictions[0]
        self.write_on_epoch_end(trainer, pl_module, predictions, indices)
