"""Progress bars: what the user watches while a run goes, kept off the training hot path.

A progress bar is a callback like any other, so a user can swap it for their own (subclass
:class:`ProgressBar`) or turn it off (``Trainer(enable_progress_bar=False)``). The default,
:class:`TQDMProgressBar`, draws with ``tqdm`` on global rank zero only.

The bar is throttled on purpose: the values a bar shows live on the device, and turning one into
a Python number (``.item()``) waits for the device to finish its queued work. The bar therefore
reads ``trainer.progress_bar_metrics`` only when it redraws, which is every ``refresh_rate``
batches (and no more often than every ``min_interval`` seconds) and at the last batch, never
in between. At thousands of steps per second, a redraw per batch would cost more than the step.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

from torch import Tensor

from fulmen.callbacks.callback import PROGRESS_BAR, Callback
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.stages import RunningStage, TrainerFn

if TYPE_CHECKING:
    from fulmen.module import LightningModule


def _total(value: Any) -> int | None:
    """A batch count as tqdm wants it: ``None`` when unknown or infinite."""
    if value is None:
        return None
    if isinstance(value, float) and math.isinf(value):
        return None
    return int(value)


class ProgressBar(Callback):
    """Base class of progress bars: the batch counts, the metrics to show, on/off switches.

    Subclasses draw; this class answers "how many batches", "which values" and "am I enabled".
    """

    trainer_role = PROGRESS_BAR

    def __init__(self) -> None:
        self._trainer: Any = None
        self._enabled = True
        self._current_eval_dataloader_idx: int | None = None

    # ----------------------------------------------------------------------------- switches
    @property
    def trainer(self) -> Any:
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__qualname__} is not attached to a `Trainer` yet.")
        return self._trainer

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def enable(self) -> None:
        """Draw again (the Trainer may switch the bar off around work that should not show)."""
        self._enabled = True

    def disable(self) -> None:
        """Stop drawing; every hook returns at once afterwards."""
        self._enabled = False

    def setup(self, trainer: Any, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        # One console, one bar: the other ranks would print the same bar over it.
        if not trainer.is_global_zero:
            self.disable()

    # -------------------------------------------------------------------------- batch counts
    @property
    def total_train_batches(self) -> int | None:
        """Training batches in one epoch (``None`` when the loader has no length)."""
        return _total(getattr(self.trainer, "num_training_batches", None))

    @property
    def total_val_batches(self) -> int | float:
        """Validation batches over every val dataloader in one validation run (``inf`` when unknown).

        Counted only when this epoch validates; 0 otherwise (as Lightning's progress bars count).
        """
        trainer = self.trainer
        every = trainer.check_val_every_n_epoch
        if trainer.sanity_checking:
            counts = trainer.num_sanity_val_batches
        elif not trainer.enable_validation or (every is not None and (trainer.current_epoch + 1) % every):
            return 0
        else:
            counts = trainer.num_val_batches
        return sum(counts) if counts else 0

    def _eval_counts(self) -> list[Any]:
        trainer = self.trainer
        if trainer.sanity_checking:
            counts = getattr(trainer, "num_sanity_val_batches", None)
        else:
            attribute = {RunningStage.TESTING: "num_test_batches", RunningStage.PREDICTING: "num_predict_batches"}.get(
                trainer.state.stage, "num_val_batches"
            )
            counts = getattr(trainer, attribute, None)
        if counts is None:
            return []
        return list(counts) if isinstance(counts, (list, tuple)) else [counts]

    @property
    def total_eval_batches_current_dataloader(self) -> int | None:
        """Batches of the evaluation (validation, test, predict) dataloader running now."""
        counts = self._eval_counts()
        idx = self._current_eval_dataloader_idx or 0
        return _total(counts[idx]) if idx < len(counts) else None

    @property
    def num_eval_dataloaders(self) -> int:
        return len(self._eval_counts())

    def _eval_dataloader_changed(self, dataloader_idx: int) -> bool:
        previous = self._current_eval_dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return previous != dataloader_idx

    def _reset_eval_dataloader_idx(self) -> None:
        self._current_eval_dataloader_idx = None

    # ------------------------------------------------------------------------------ metrics
    def get_metrics(self, trainer: Any, pl_module: LightningModule) -> dict[str, int | float | str]:
        """The values the bar shows: the logger's version as ``v_num`` and every ``prog_bar=True`` value.

        Override to add or hide entries. Tensors become Python numbers here, so the bar calls
        this only when it redraws.
        """
        metrics: dict[str, int | float | str] = {}
        version = _logger_version(trainer)
        if version is not None:
            metrics["v_num"] = version
        for name, value in trainer.progress_bar_metrics.items():
            metrics[name] = value.item() if isinstance(value, Tensor) else value
        return metrics

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print without breaking the bar (plain ``print`` in this base class)."""
        print(*args, **kwargs)


def _logger_version(trainer: Any) -> int | str | None:
    loggers = getattr(trainer, "loggers", None) or []
    if not loggers:
        return None
    version = getattr(loggers[0], "version", None)
    if isinstance(version, str):
        return version[-4:]  # a long run name would push the metrics off the line
    return version


def _tqdm_class() -> Any:
    """tqdm's notebook widget where it can draw (ipywidgets installed), its text bar otherwise.

    Imported here, on first use: ``import fulmen`` must not pay for tqdm.
    """
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm


def _format_value(value: Any) -> str:
    """Short, steady-width numbers, so the postfix does not jitter from one redraw to the next."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    text = f"{value:.3g}"
    if "e" in text or "n" in text:  # scientific, nan, inf
        return text
    if "." not in text:
        text += "."
    return text.ljust(5, "0")


class TQDMProgressBar(ProgressBar):
    """The default progress bar: one ``tqdm`` bar per training epoch, one per evaluation run.

    Args:
        refresh_rate: redraw every this many batches (0 turns the bar off). The values shown are
            read from the device only when the bar redraws.
        process_position: which line the bars use, to stack them with another process's bars.
        leave: keep each epoch's finished bar on screen (a new line per epoch) instead of
            redrawing one bar.
    """

    #: Seconds between two redraws at the least (the last batch of a bar is always drawn).
    min_interval: float = 0.1

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__()
        self._last_redraw = -math.inf
        self._train_seen = 0
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise invalid_argument("refresh_rate", refresh_rate, "an int >= 0 (0 turns the bar off)")
        if isinstance(process_position, bool) or not isinstance(process_position, int) or process_position < 0:
            raise invalid_argument("process_position", process_position, "an int >= 0")
        if not isinstance(leave, bool):
            raise invalid_argument("leave", leave, (True, False))
        self._refresh_rate = refresh_rate
        self._process_position = process_position
        self._leave = leave
        self._train_bar: Any = None
        self._val_bar: Any = None
        self._test_bar: Any = None
        self._predict_bar: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Open bars hold a stream; a pickled or copied callback starts without them.
        return {**self.__dict__, "_train_bar": None, "_val_bar": None, "_test_bar": None, "_predict_bar": None}

    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def process_position(self) -> int:
        return self._process_position

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    @property
    def train_progress_bar(self) -> Any:
        return self._train_bar

    @property
    def val_progress_bar(self) -> Any:
        return self._val_bar

    @property
    def test_progress_bar(self) -> Any:
        return self._test_bar

    @property
    def predict_progress_bar(self) -> Any:
        return self._predict_bar

    # --------------------------------------------------------------------------- bar factory
    def _new_bar(self, desc: str, position: int, leave: bool, total: int | None = None) -> Any:
        tqdm = _tqdm_class()
        # `file` is looked up now, not at import, so a redirected stdout (tests, notebooks) is honoured.
        return tqdm(
            desc=desc,
            total=total,
            position=position,
            leave=leave,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
        )

    def init_sanity_tqdm(self) -> Any:
        return self._new_bar("Sanity Checking", 2 * self._process_position, leave=False)

    def init_train_tqdm(self) -> Any:
        return self._new_bar("Training", 2 * self._process_position, leave=True, total=self.total_train_batches)

    def init_validation_tqdm(self) -> Any:
        # Below the training bar during fit; alone (and kept) in `trainer.validate`.
        has_main_bar = self.trainer.state.fn != TrainerFn.VALIDATING
        return self._new_bar("Validation", 2 * self._process_position + int(has_main_bar), leave=not has_main_bar)

    def init_test_tqdm(self) -> Any:
        return self._new_bar("Testing", 2 * self._process_position, leave=True)

    def init_predict_tqdm(self) -> Any:
        return self._new_bar("Predicting", 2 * self._process_position, leave=True)

    # -------------------------------------------------------------------------------- drawing
    def _should_update(self, current: int, total: int | None) -> bool:
        if not self.is_enabled:
            return False
        if current == total:
            return True
        return current % self._refresh_rate == 0 and time.monotonic() - self._last_redraw >= self.min_interval

    def _redraw(self, bar: Any, n: int, metrics: dict[str, Any] | None = None) -> None:
        """One redraw: position and (optionally) postfix together, a single write to the stream."""
        if bar is None or bar.disable:
            return
        self._last_redraw = time.monotonic()
        if metrics is not None:
            bar.set_postfix({k: _format_value(v) for k, v in metrics.items()}, refresh=False)
        bar.n = n
        bar.refresh()

    def _show_metrics(self, bar: Any, trainer: Any, pl_module: LightningModule) -> None:
        if bar is not None and not bar.disable:
            bar.set_postfix({k: _format_value(v) for k, v in self.get_metrics(trainer, pl_module).items()})

    @staticmethod
    def _close(bar: Any) -> None:
        if bar is not None:
            bar.close()

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print a line above the active bar without tearing it."""
        bar = next((b for b in (self._val_bar, self._test_bar, self._predict_bar, self._train_bar)
                    if b is not None and not b.disable), None)  # fmt: skip
        if bar is None:
            print(*args, sep=sep, **kwargs)
            return
        _tqdm_class().write(sep.join(map(str, args)), file=kwargs.get("file", sys.stdout), end=kwargs.get("end", "\n"))

    # ---------------------------------------------------------------------------- sanity check
    def on_sanity_check_start(self, trainer: Any, pl_module: LightningModule) -> None:
        if self.is_enabled:
            self._val_bar = self.init_sanity_tqdm()

    def on_sanity_check_end(self, trainer: Any, pl_module: LightningModule) -> None:
        self._close(self._val_bar)
        self._val_bar = None
        self._reset_eval_dataloader_idx()

    # -------------------------------------------------------------------------------- training
    def on_train_start(self, trainer: Any, pl_module: LightningModule) -> None:
        if self.is_enabled and not self._leave:
            self._train_bar = self.init_train_tqdm()

    def on_train_epoch_start(self, trainer: Any, pl_module: LightningModule) -> None:
        if not self.is_enabled:
            return
        if self._leave or self._train_bar is None:
            self._train_bar = self.init_train_tqdm()
        total = self.total_train_batches
        if total is None and trainer.max_steps > 0:  # no length: the step budget is the best guess
            total = trainer.max_steps
        self._train_bar.reset(total=total)
        self._train_bar.initial = 0
        self._train_bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(
        self, trainer: Any, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = self._train_seen = batch_idx + 1
        if self._train_bar is not None and self._should_update(n, self._train_bar.total):
            self._redraw(self._train_bar, n, self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Any, pl_module: LightningModule) -> None:
        if not self.is_enabled or self._train_bar is None:
            return
        # The epoch-level values exist only now (and validation's, if it ran at the epoch end);
        # the count catches up with batches a throttled redraw skipped.
        self._train_bar.n = self._train_seen
        self._show_metrics(self._train_bar, trainer, pl_module)
        if self._leave:
            self._close(self._train_bar)
            self._train_bar = None

    # The *_end hooks close their bar but keep it: `train_progress_bar.total` and `.n` stay readable
    # after the run, as in Lightning (a closed tqdm is disabled, so nothing redraws it).
    def on_train_end(self, trainer: Any, pl_module: LightningModule) -> None:
        self._close(self._train_bar)

    # ----------------------------------------------------------------- validation, test, predict
    def _start_eval_dataloader(self, bar: Any, label: str, dataloader_idx: int) -> None:
        """A new evaluation dataloader begins: the bar restarts at 0 of its length, named after it."""
        if bar is None or not self._eval_dataloader_changed(dataloader_idx):
            return
        bar.reset(total=self.total_eval_batches_current_dataloader)
        bar.initial = 0
        bar.set_description(label + (f" DataLoader {dataloader_idx}" if self.num_eval_dataloaders > 1 else ""))

    def _eval_batch_done(self, bar: Any, batch_idx: int) -> None:
        n = batch_idx + 1
        if bar is not None and self._should_update(n, bar.total):
            self._redraw(bar, n)

    # ------------------------------------------------------------------------------ validation
    def on_validation_start(self, trainer: Any, pl_module: LightningModule) -> None:
        if self.is_enabled and not trainer.sanity_checking:
            self._val_bar = self.init_validation_tqdm()

    def on_validation_batch_start(
        self, trainer: Any, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        label = "Sanity Checking" if trainer.sanity_checking else "Validation"
        self._start_eval_dataloader(self._val_bar, label, dataloader_idx)

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_done(self._val_bar, batch_idx)

    def on_validation_end(self, trainer: Any, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._close(self._val_bar)
        self._reset_eval_dataloader_idx()
        if self._train_bar is not None and trainer.state.fn == TrainerFn.FITTING:
            self._show_metrics(self._train_bar, trainer, pl_module)

    # ------------------------------------------------------------------------------------ test
    def on_test_start(self, trainer: Any, pl_module: LightningModule) -> None:
        if self.is_enabled:
            self._test_bar = self.init_test_tqdm()

    def on_test_batch_start(
        self, trainer: Any, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._start_eval_dataloader(self._test_bar, "Testing", dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Any,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_done(self._test_bar, batch_idx)

    def on_test_end(self, trainer: Any, pl_module: LightningModule) -> None:
        self._close(self._test_bar)
        self._reset_eval_dataloader_idx()

    # --------------------------------------------------------------------------------- predict
    def on_predict_start(self, trainer: Any, pl_module: LightningModule) -> None:
        if self.is_enabled:
            self._predict_bar = self.init_predict_tqdm()

    def on_predict_batch_start(
        self, trainer: Any, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._start_eval_dataloader(self._predict_bar, "Predicting", dataloader_idx)

    def on_predict_batch_end(
        self,
        trainer: Any,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_done(self._predict_bar, batch_idx)

    def on_predict_end(self, trainer: Any, pl_module: LightningModule) -> None:
        self._close(self._predict_bar)
        self._reset_eval_dataloader_idx()

    # ------------------------------------------------------------------------------- failures
    def on_exception(self, trainer: Any, pl_module: LightningModule, exception: BaseException) -> None:
        # Leave the terminal usable for the traceback that follows.
        for name in ("_train_bar", "_val_bar", "_test_bar", "_predict_bar"):
            self._close(getattr(self, name))
            setattr(self, name, None)
