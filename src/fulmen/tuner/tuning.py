"""``Tuner``: the learning-rate finder and the batch-size finder, before you call ``fit``.

Each method runs one short ``trainer.fit`` with the matching callback
(:class:`~fulmen.callbacks.LearningRateFinder`, :class:`~fulmen.callbacks.BatchSizeFinder`)
that searches at ``on_fit_start`` and then ends the fit. During that call the Trainer's own
callbacks and loggers are set aside (nothing is logged, no checkpoint is written) and there is
no sanity check; the model's hooks run as in any ``fit``. Afterwards the model holds its
original weights and the Trainer is ready for the real ``fit``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument

if TYPE_CHECKING:
    from fulmen.callbacks.callback import Callback
    from fulmen.callbacks.lr_search import LRFinder


class Tuner:
    """``Tuner(trainer).lr_find(model)`` and ``Tuner(trainer).scale_batch_size(model)``."""

    def __init__(self, trainer: Any) -> None:
        if not callable(getattr(trainer, "fit", None)) or not hasattr(trainer, "callbacks"):
            raise TypeError(f"`Tuner(trainer)` needs a `fulmen.Trainer`; got {type(trainer).__name__}.")
        self._trainer = trainer

    def lr_find(
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: str = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> LRFinder | None:
        """The learning-rate range test; returns the ``LRFinder`` (None with ``fast_dev_run``).

        ``num_training`` steps from ``min_lr`` to ``max_lr`` (``mode``: "exponential" or "linear"),
        stopping early when the loss exceeds ``early_stop_threshold`` times its best (None: never).
        ``update_attr`` writes the suggestion to the model's ``lr``/``learning_rate`` (or
        ``attr_name``), attribute or ``hparams`` key.
        """
        from fulmen.callbacks.lr_finder import LearningRateFinder
        from fulmen.callbacks.lr_search import check_arguments

        _check_method(method, "lr_find")
        check_arguments(min_lr, max_lr, num_training, mode, early_stop_threshold)  # named as given here
        _check_dataloaders(dataloaders)
        self._refuse_own(LearningRateFinder)
        finder = LearningRateFinder(
            min_lr=min_lr,
            max_lr=max_lr,
            num_training_steps=num_training,
            mode=mode,
            early_stop_threshold=early_stop_threshold,
            update_attr=update_attr,
            attr_name=attr_name,
        )
        self._fit_with(finder, model, train_dataloaders, val_dataloaders, datamodule)
        return finder.optimal_lr

    def scale_batch_size(
        self,
        model: Any,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Any = None,
        method: str = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int | None = 8192,
    ) -> int | None:
        """The largest batch size that trains in memory (``mode``: "power" or "binsearch"); None with ``fast_dev_run``.

        The model's or datamodule's ``batch_arg_name`` attribute (or ``hparams`` key) is changed,
        so it must be what ``train_dataloader`` reads: a DataLoader passed in cannot be resized.
        """
        from fulmen.callbacks.batch_size_finder import BatchSizeFinder

        _check_method(method, "scale_batch_size")
        _check_dataloaders(dataloaders)
        if train_dataloaders is not None and not _is_datamodule(train_dataloaders):
            raise MisconfigurationException(
                "`scale_batch_size` cannot resize a DataLoader passed in `train_dataloaders`: build it in the module's "
                f"or datamodule's `train_dataloader`, reading `self.{batch_arg_name}`, and pass the datamodule."
            )
        self._refuse_own(BatchSizeFinder)
        finder = BatchSizeFinder(
            mode=mode,
            steps_per_trial=steps_per_trial,
            init_val=init_val,
            max_trials=max_trials,
            batch_arg_name=batch_arg_name,
            margin=margin,
            max_val=max_val,
        )
        self._fit_with(finder, model, train_dataloaders, val_dataloaders, datamodule)
        return finder.optimal_batch_size

    # --------------------------------------------------------------------------------------
    def _refuse_own(self, kind: type) -> None:
        if any(isinstance(callback, kind) for callback in self._trainer.callbacks):
            raise MisconfigurationException(
                f"The Trainer already has a `{kind.__name__}` callback, which searches at the start of every fit; "
                "remove it to use the Tuner, or keep it and call `fit` directly."
            )

    def _fit_with(
        self, finder: Callback, model: Any, train_dataloaders: Any, val_dataloaders: Any, datamodule: Any
    ) -> None:
        """One ``fit`` with only ``finder`` as callback, which ends it after its search; the Trainer is put back."""
        trainer = self._trainer
        saved = {name: getattr(trainer, name) for name in ("callbacks", "loggers", "num_sanity_val_steps",
                                                           "min_epochs", "min_steps")}  # fmt: skip
        finder._early_exit = True  # type: ignore[attr-defined]
        trainer.callbacks, trainer.loggers = [finder], []
        trainer.num_sanity_val_steps, trainer.min_epochs, trainer.min_steps = 0, None, None
        try:
            trainer.fit(model, train_dataloaders, val_dataloaders, datamodule=datamodule)
        finally:
            for name, value in saved.items():
                setattr(trainer, name, value)
            trainer.should_stop = False


def _check_method(method: Any, name: str) -> None:
    if method != "fit":
        raise invalid_argument("method", method, f"'fit': `{name}` tunes training only")


def _check_dataloaders(dataloaders: Any) -> None:
    if dataloaders is not None:
        raise MisconfigurationException(
            "`dataloaders` is for tuning validate/test/predict, which fulmen does not tune: pass `train_dataloaders` "
            "(and `val_dataloaders`) or a `datamodule`."
        )


def _is_datamodule(value: Any) -> bool:
    from fulmen.datamodule import LightningDataModule

    return isinstance(value, LightningDataModule)
