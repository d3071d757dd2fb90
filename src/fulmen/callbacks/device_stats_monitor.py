"""``DeviceStatsMonitor``: send the device's memory (and the host's CPU) statistics to the loggers.

It exists to answer "how close to the memory limit is this run, and when does it peak?" from
the logs, next to the loss curve. The device's numbers come from the accelerator
(``trainer.accelerator.get_device_stats``: allocated/reserved memory on CUDA, the process's
peak resident memory on the CPU); system-wide CPU, RAM and swap use come from ``psutil`` when it
is installed (``pip install 'fulmen[psutil]'``).

Values are read around every training, validation and test batch, but only on the steps the
Trainer logs (``log_every_n_steps``), so a monitor costs nothing on the other steps. Keys read
``DeviceStatsMonitor.on_train_batch_start/<stat>`` (the logger's ``group_separator`` between).
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.stages import TrainerFn

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer

_PSUTIL_HINT = "install it with `pip install 'fulmen[psutil]'` (or `pip install psutil`)"


def psutil_available() -> bool:
    return importlib.util.find_spec("psutil") is not None


def get_cpu_stats() -> dict[str, float]:
    """System-wide CPU use since the previous call, RAM and swap use, in percent (needs psutil)."""
    try:
        import psutil
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"CPU statistics need the `psutil` package: {_PSUTIL_HINT}.") from err
    return {
        "cpu_percent": psutil.cpu_percent(),
        "cpu_vm_percent": psutil.virtual_memory().percent,
        "cpu_swap_percent": psutil.swap_memory().percent,
    }


class DeviceStatsMonitor(Callback):
    """Log device statistics around training, validation and test batches; needs a logger.

    Args:
        cpu_stats: ``None`` (default): the CPU's statistics when training on the CPU (with
            psutil's system-wide ones if psutil is installed). ``True``: psutil's CPU statistics
            on any accelerator (psutil required). ``False``: none of the CPU's.
        filter_keys: log only these statistics (names without the prefix, e.g.
            ``{"cuda_memory_allocated_mb"}``); ``None`` logs all.

    Example::

        trainer = Trainer(logger=CSVLogger("logs"), callbacks=[DeviceStatsMonitor(cpu_stats=True)])
    """

    def __init__(self, cpu_stats: bool | None = None, filter_keys: set[str] | None = None) -> None:
        if cpu_stats not in (None, True, False):
            raise invalid_argument("cpu_stats", cpu_stats, (None, True, False))
        if filter_keys is not None and (
            isinstance(filter_keys, str) or not all(isinstance(k, str) for k in filter_keys)
        ):
            raise invalid_argument("filter_keys", filter_keys, "None or a set of statistic names")
        self._cpu_stats = cpu_stats
        self._filter_keys = set(filter_keys) if filter_keys is not None else None
        self._with_psutil = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING and not trainer.loggers:
            raise MisconfigurationException(
                "`DeviceStatsMonitor` sends its values to the loggers, but the Trainer has none (`logger=False`). "
                "Pass a logger, e.g. `Trainer(logger=CSVLogger('logs'))`, or remove the callback."
            )
        on_cpu = trainer.strategy.root_device.type == "cpu"
        if self._cpu_stats and not psutil_available():
            raise ModuleNotFoundError(
                f"`DeviceStatsMonitor(cpu_stats=True)` needs the `psutil` package: {_PSUTIL_HINT}."
            )
        self._with_psutil = psutil_available() and (self._cpu_stats is True or (self._cpu_stats is None and on_cpu))
        if self._cpu_stats is None and on_cpu and not self._with_psutil:
            rank_zero_warn(
                f"`DeviceStatsMonitor`: `psutil` is not installed, so only the process's peak memory is logged; "
                f"{_PSUTIL_HINT} for CPU, RAM and swap use."
            )
        if self._filter_keys is not None:
            unknown = self._filter_keys - set(self._collect(trainer))
            if unknown:
                rank_zero_warn(
                    f"`DeviceStatsMonitor(filter_keys=...)`: no statistics named {sorted(unknown)}; ignored."
                )

    def _collect(self, trainer: Trainer) -> dict[str, float]:
        device = trainer.strategy.root_device
        stats: dict[str, float] = {}
        if device.type != "cpu" or self._cpu_stats is not False:
            stats.update(trainer.accelerator.get_device_stats(device))
        if self._with_psutil:
            stats.update(get_cpu_stats())
        if self._filter_keys is not None:
            stats = {k: v for k, v in stats.items() if k in self._filter_keys}
        return stats

    def _log(self, trainer: Trainer, hook: str) -> None:
        state = trainer.state
        every = trainer.log_every_n_steps or 1
        if (state.batches_that_stepped + 1) % every != 0 and not trainer.should_stop:
            return
        stats = self._collect(trainer)
        if not stats:
            return
        prefix = f"{type(self).__qualname__}.{hook}"
        for logger in trainer.loggers:
            separator = logger.group_separator
            logger.log_metrics({prefix + separator + k: v for k, v in stats.items()}, step=state.batches_that_stepped)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._log(trainer, "on_train_batch_start")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._log(trainer, "on_train_batch_end")

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._log(trainer, "on_validation_batch_start")

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._log(trainer, "on_validation_batch_end")

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._log(trainer, "on_test_batch_start")

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._log(trainer, "on_test_batch_end")
