"""``RichProgressBar``: the progress bar drawn with ``rich`` (colours, speed, time left, metrics).

An optional alternative to the default ``TQDMProgressBar`` (``pip install 'fulmen[rich]'``):
``Trainer(callbacks=[RichProgressBar()])``. ``rich`` is imported when the bar is created, never
by ``import fulmen``.

Like the tqdm bar it is throttled: the metrics shown live on the device and are read (one
``.item()`` each) only when the bar redraws, every ``refresh_rate`` batches, no more often than
every ``min_interval`` seconds, and at the last batch of a loop. The display never refreshes on
its own (no background thread), so nothing reads the metrics between two redraws.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.progress import ProgressBar
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.stages import TrainerFn

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer

RICH_HINT = "install it with `pip install 'fulmen[rich]'` (or `pip install rich`)"


def import_rich(what: str) -> Any:
    """The ``rich`` package, or an error that says how to install it."""
    try:
        import rich
        import rich.console
        import rich.progress
        import rich.table
        import rich.text
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"`{what}` needs the `rich` package: {RICH_HINT}.") from err
    return rich


@dataclass
class RichProgressBarTheme:
    """Styles (rich style strings or ``rich.style.Style``) of the parts of the bar.

    Args:
        description: "Epoch 3", "Validation", ...
        progress_bar: the bar while it fills.
        progress_bar_finished: the bar once full.
        progress_bar_pulse: the bar when the length is unknown (an iterable dataset).
        batch_progress: "12/50".
        time: elapsed and remaining time.
        processing_speed: batches per second.
        metrics: the values logged with ``prog_bar=True``.
        metrics_text_delimiter: between two metrics.
        metrics_format: format spec of float metrics.
    """

    description: Any = ""
    progress_bar: Any = "#6206E0"
    progress_bar_finished: Any = "#6206E0"
    progress_bar_pulse: Any = "#6206E0"
    batch_progress: Any = ""
    time: Any = "dim"
    processing_speed: Any = "dim underline"
    metrics: Any = "italic"
    metrics_text_delimiter: str = " "
    metrics_format: str = ".3f"


def _columns(bar: RichProgressBar, theme: RichProgressBarTheme) -> list[Any]:
    """The columns of every row: description, bar, "n/total", time, speed, metrics (training row only)."""
    from rich.progress import BarColumn, ProgressColumn, TextColumn
    from rich.text import Text

    class Batches(ProgressColumn):
        def render(self, task: Any) -> Text:
            total = "--" if task.total is None else int(task.total)
            return Text(f"{int(task.completed)}/{total}", style=theme.batch_progress)

    class Times(ProgressColumn):
        max_refresh = 0.5  # steadier than a clock that jumps every redraw

        def render(self, task: Any) -> Text:
            elapsed = task.finished_time if task.finished else task.elapsed
            remaining = task.time_remaining
            shown = ("-:--:--" if t is None else str(timedelta(seconds=int(t))) for t in (elapsed, remaining))
            return Text(" • ".join(shown), style=theme.time)

    class Speed(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0:.2f}it/s", style=theme.processing_speed)

    class Metrics(ProgressColumn):
        def render(self, task: Any) -> Text:
            if task.id != bar._train_task:
                return Text()
            parts = []
            for name, value in bar._shown_metrics.items():
                if isinstance(value, float):
                    try:
                        value = format(value, theme.metrics_format)
                    except ValueError:
                        value = str(value)
                parts.append(f"{name}: {value}")
            return Text(theme.metrics_text_delimiter.join(parts), justify="left", style=theme.metrics)

    return [
        TextColumn("[progress.description]{task.description}", style=theme.description),
        BarColumn(
            complete_style=theme.progress_bar,
            finished_style=theme.progress_bar_finished,
            pulse_style=theme.progress_bar_pulse,
        ),
        Batches(),
        Times(),
        Speed(),
        Metrics(),
    ]


class RichProgressBar(ProgressBar):
    """A progress bar drawn with ``rich``: one row per training epoch, one per evaluation run.

    Args:
        refresh_rate: redraw every this many batches (0 turns the bar off).
        leave: keep each finished epoch's row on screen instead of reusing one row.
        theme: the styles (:class:`RichProgressBarTheme`).
        console_kwargs: arguments of the ``rich.console.Console`` the bar draws on (``file``,
            ``force_terminal``, ``width``, ...).

    Example::

        trainer = Trainer(callbacks=[RichProgressBar(leave=True)])
    """

    #: Seconds between two redraws at the least (the last batch of a loop is always drawn). A
    #: rich redraw takes about 3 ms, so this bounds the bar to about 1.5% of the wall time.
    min_interval: float = 0.2

    def __init__(
        self,
        refresh_rate: int = 1,
        leave: bool = False,
        theme: RichProgressBarTheme | None = None,
        console_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import_rich(type(self).__name__)
        super().__init__()
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise invalid_argument("refresh_rate", refresh_rate, "an int >= 0 (0 turns the bar off)")
        if not isinstance(leave, bool):
            raise invalid_argument("leave", leave, (True, False))
        if theme is not None and not isinstance(theme, RichProgressBarTheme):
            raise invalid_argument("theme", theme, "None or a RichProgressBarTheme")
        if console_kwargs is not None and not isinstance(console_kwargs, dict):
            raise invalid_argument("console_kwargs", console_kwargs, "None or a dict of rich.console.Console arguments")
        self._refresh_rate = refresh_rate
        self._leave = leave
        self.theme = theme if theme is not None else RichProgressBarTheme()
        self._console_kwargs = dict(console_kwargs or {})
        self._console: Any = None
        self.progress: Any = None
        self._train_task: Any = None
        self._val_task: Any = None
        self._sanity_task: Any = None
        self._test_task: Any = None
        self._predict_task: Any = None
        self._shown_metrics: dict[str, Any] = {}
        self._last_redraw = -math.inf
        self._train_seen = 0

    def __getstate__(self) -> dict[str, Any]:
        # A live display holds a terminal; a pickled or copied bar starts without one.
        return {**self.__dict__, "_console": None, "progress": None}

    # ------------------------------------------------------------------------- properties
    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0

    @property
    def console(self) -> Any:
        """The ``rich`` console the bar draws on (created with ``console_kwargs`` on first use)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._console_kwargs)
        return self._console

    def _task(self, task_id: Any) -> Any:
        if self.progress is None or task_id is None:
            return None
        return next((task for task in self.progress.tasks if task.id == task_id), None)

    @property
    def train_progress_bar(self) -> Any:
        """The ``rich.progress.Task`` of the current training epoch (``None`` when not drawing)."""
        return self._task(self._train_task)

    @property
    def val_progress_bar(self) -> Any:
        return self._task(self._val_task)

    @property
    def val_sanity_check_bar(self) -> Any:
        return self._task(self._sanity_task)

    @property
    def test_progress_bar(self) -> Any:
        return self._task(self._test_task)

    @property
    def predict_progress_bar(self) -> Any:
        return self._task(self._predict_task)

    # ----------------------------------------------------------------------------- display
    def _start(self) -> bool:
        """Open the live display if the bar draws; returns whether it does."""
        if not self.is_enabled:
            return False
        if self.progress is None:
            from rich.progress import Progress

            self.progress = Progress(*_columns(self, self.theme), console=self.console, auto_refresh=False)
            self.progress.start()
        return True

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.refresh()
            self.progress.stop()
        self.progress = None
        self._train_task = self._val_task = self._sanity_task = self._test_task = self._predict_task = None

    def _due(self, current: int, total: float | None) -> bool:
        if current == total:
            return True
        return current % self._refresh_rate == 0 and time.monotonic() - self._last_redraw >= self.min_interval

    def _redraw(self) -> None:
        self._last_redraw = time.monotonic()
        self.progress.refresh()

    def _add(self, description: str, total: int | None) -> Any:
        return self.progress.add_task(description, total=total)

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print above the bar without tearing it."""
        if self.progress is not None:
            self.progress.console.print(*args, sep=sep, **kwargs)
        else:
            print(*args, sep=sep, **kwargs)

    # ------------------------------------------------------------------------ sanity check
    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._start():
            self._sanity_task = self._add("Sanity Checking", None)

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.progress is not None and self._sanity_task is not None:
            self.progress.update(self._sanity_task, visible=False)
            self._redraw()
        self._sanity_task = None
        self._reset_eval_dataloader_idx()

    # ---------------------------------------------------------------------------- training
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._leave and self._train_task is not None:
            # The finished epoch's row stays printed; a new display keeps each redraw one row long.
            self._stop()
        if not self._start():
            return
        description = f"Epoch {trainer.current_epoch}"
        total = self.total_train_batches
        if self._train_task is None:
            self._train_task = self._add(description, total)
        else:
            self.progress.reset(self._train_task, total=total, description=description, visible=True)
        self._train_seen = 0
        self._redraw()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._train_seen = n = batch_idx + 1
        task = self.train_progress_bar
        if task is None or not self._due(n, task.total):
            return
        self.progress.update(self._train_task, completed=n)
        self._shown_metrics = self.get_metrics(trainer, pl_module)
        self._redraw()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.train_progress_bar is None:
            return
        # Epoch-level values (and validation's) exist only now; the count catches up with skipped redraws.
        self.progress.update(self._train_task, completed=self._train_seen)
        self._shown_metrics = self.get_metrics(trainer, pl_module)
        self._redraw()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop()

    # ------------------------------------------------------------- validation, test, predict
    def _eval_task_start(self, attribute: str, label: str) -> None:
        if self._start():
            setattr(self, attribute, self._add(label, None))

    def _eval_batch_start(self, attribute: str, label: str, dataloader_idx: int) -> None:
        task_id = getattr(self, attribute)
        if self.progress is None or task_id is None or not self._eval_dataloader_changed(dataloader_idx):
            return
        suffix = f" DataLoader {dataloader_idx}" if self.num_eval_dataloaders > 1 else ""
        self.progress.reset(task_id, total=self.total_eval_batches_current_dataloader, description=label + suffix)

    def _eval_batch_end(self, attribute: str, batch_idx: int) -> None:
        task_id = getattr(self, attribute)
        task = self._task(task_id)
        if task is None or not self._due(batch_idx + 1, task.total):
            return
        self.progress.update(task_id, completed=batch_idx + 1)
        self._redraw()

    def _validation_attribute(self, trainer: Trainer) -> str:
        return "_sanity_task" if trainer.sanity_checking else "_val_task"

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._eval_task_start("_val_task", "Validation")

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        label = "Sanity Checking" if trainer.sanity_checking else "Validation"
        self._eval_batch_start(self._validation_attribute(trainer), label, dataloader_idx)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end(self._validation_attribute(trainer), batch_idx)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_eval_dataloader_idx()
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            # During fit the validation row goes away; the training row shows its results.
            if self.progress is not None and self._val_task is not None:
                self.progress.remove_task(self._val_task)
            self._val_task = None
            if self.train_progress_bar is not None:
                self._shown_metrics = self.get_metrics(trainer, pl_module)
                self._redraw()
        else:
            self._stop()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_task_start("_test_task", "Testing")

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start("_test_task", "Testing", dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end("_test_task", batch_idx)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_eval_dataloader_idx()
        self._stop()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_task_start("_predict_task", "Predicting")

    def on_predict_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch_start("_predict_task", "Predicting", dataloader_idx)

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch_end("_predict_task", batch_idx)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset_eval_dataloader_idx()
        self._stop()

    # ------------------------------------------------------------------------------ ending
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Give the terminal back (cursor, line) before the traceback prints.
        self._stop()
