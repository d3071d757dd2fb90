"""TensorBoard logging, the default logger whenever tensorboard is installed.

tensorboard and ``torch.utils.tensorboard`` are imported only when something is first written:
they take long to import, and ``import fulmen`` must stay fast. Paths go through fsspec, so
``save_dir`` may be a URL. TensorBoard's own writer only knows local files (and what its gfile
layer supports), so for any other protocol the event files are written to a local staging folder
and copied to the URL on ``save()`` and ``finalize()``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from argparse import Namespace
from typing import TYPE_CHECKING, Any

import torch

from fulmen.loggers.logger import (
    Logger,
    _add_prefix,
    _convert_params,
    _flatten_dict,
    _join,
    _metric_value,
    _VersionedFolder,
    _write_hparams_yaml,
    rank_zero_experiment,
)
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# SummaryWriter's own keyword arguments, checked here so a typo fails when the logger is built
# rather than at the first logged value, possibly hours later (``log_dir`` is ours to set).
_SUMMARY_WRITER_KWARGS = ("comment", "purge_step", "max_queue", "flush_secs", "filename_suffix")


class TensorBoardLogger(_VersionedFolder, Logger):
    """Write scalars, hyperparameters and the model graph as TensorBoard event files.

    Files go to ``save_dir/name/version/sub_dir``; ``version`` defaults to the next free
    ``version_N``. Extra keyword arguments go to ``torch.utils.tensorboard.SummaryWriter``.
    """

    LOGGER_JOIN_CHAR = "-"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ModuleNotFoundError(
                "TensorBoardLogger needs the `tensorboard` package: `pip install tensorboard`, "
                "or use `CSVLogger` instead."
            )
        unknown = sorted(set(kwargs) - set(_SUMMARY_WRITER_KWARGS))
        if unknown:
            raise invalid_argument(unknown[0], kwargs[unknown[0]], _SUMMARY_WRITER_KWARGS)
        if sub_dir is not None and not isinstance(sub_dir, (str, os.PathLike)):
            raise invalid_argument("sub_dir", sub_dir, "a folder name or None")
        from fsspec.core import url_to_fs
        from fsspec.implementations.local import LocalFileSystem

        self._set_folder(save_dir, name, version, prefix)
        self._log_graph = bool(log_graph)
        self._default_hp_metric = bool(default_hp_metric)
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._fs = url_to_fs(self._save_dir)[0]
        self._is_local = isinstance(self._fs, LocalFileSystem)
        self._experiment: SummaryWriter | None = None
        self._staging_dir: str | None = None
        self.hparams: dict[str, Any] = {}
        self._session_written = False

    @property
    def log_dir(self) -> str:
        log_dir = self._version_dir
        return _join(log_dir, self._sub_dir) if self._sub_dir else log_dir

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> SummaryWriter:
        """The ``SummaryWriter``, created (with its folder) on first use, on rank zero only."""
        if self._experiment is not None:
            return self._experiment
        from torch.utils.tensorboard import SummaryWriter

        self._fs.makedirs(self.log_dir, exist_ok=True)
        if self._is_local:
            writer_dir = self.log_dir
        else:
            self._staging_dir = tempfile.mkdtemp(prefix="fulmen-tensorboard-")
            writer_dir = self._staging_dir
        self._experiment = SummaryWriter(log_dir=writer_dir, **self._kwargs)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = _flatten_dict(_add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR), self.group_separator)
        values = {name: _metric_value(name, value) for name, value in metrics.items()}
        writer = self.experiment
        for name, value in values.items():
            writer.add_scalar(name, value, step)

    @rank_zero_only
    def log_hyperparams(
        self,
        params: dict[str, Any] | Namespace | None,
        metrics: dict[str, float] | None = None,
        step: int | None = None,
    ) -> None:
        """Save ``params`` to ``hparams.yaml`` and to TensorBoard's HPARAMS tab.

        The tab pairs hyperparameters with metrics; with ``default_hp_metric`` a placeholder
        ``hp_metric`` of -1 is logged so the tab shows up before any real metric exists. With
        ``default_hp_metric=False``, call this once with ``metrics`` to fill the tab; ``step`` is
        the step those metrics are logged at.
        """
        params = _convert_params(params)
        self.hparams.update(params)
        self._fs.makedirs(self.log_dir, exist_ok=True)
        _write_hparams_yaml(self._fs, self._hparams_file, self.hparams)

        if metrics is None:
            metrics = {"hp_metric": -1} if self._default_hp_metric and not self._session_written else {}
        if metrics:
            self.log_metrics(metrics, step)
        if not metrics or self._session_written:
            return

        from torch.utils.tensorboard.summary import hparams

        # TensorBoard keeps the first session it reads for a run, so it is written once, with
        # every hyperparameter known so far; later calls only update hparams.yaml.
        flat = _flatten_dict(self.hparams, self.group_separator)
        plugin_params = {k: _plugin_value(v) for k, v in flat.items()}
        metric_names = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        file_writer = self.experiment.file_writer
        for summary in hparams(plugin_params, metric_names):
            file_writer.add_summary(summary)
        self._session_written = True

    @rank_zero_only
    def log_graph(self, model: torch.nn.Module, input_array: Any = None) -> None:
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            rank_zero_warn(
                "Could not log the computational graph to TensorBoard: pass `input_array` to "
                "`log_graph` or set `model.example_input_array`."
            )
            return
        parameter = next(iter(model.parameters()), None)
        if parameter is not None:
            input_array = move_data_to_device(input_array, parameter.device)
        with warnings.catch_warnings():
            # add_graph traces with torch.jit, whose deprecation notice the user cannot act on.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=DeprecationWarning)
            self.experiment.add_graph(model, input_array)

    @rank_zero_only
    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.flush()
            self._upload()
        # A run that never logged hyperparameters still gets a (empty) record of them.
        if self._fs.isdir(self.log_dir) and not self._fs.isfile(self._hparams_file):
            _write_hparams_yaml(self._fs, self._hparams_file, self.hparams)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
            self._upload()
            # A later write starts a fresh writer (and event file) rather than reusing a closed one.
            self._experiment = None
            if self._staging_dir is not None:
                shutil.rmtree(self._staging_dir, ignore_errors=True)
                self._staging_dir = None
        self.save()

    @property
    def _hparams_file(self) -> str:
        return _join(self.log_dir, self.NAME_HPARAMS_FILE)

    def _upload(self) -> None:
        if self._staging_dir is None:
            return
        # Event files only grow, so copying them whole each time leaves the remote copy complete.
        for folder, _, files in os.walk(self._staging_dir):
            for file in files:
                local = os.path.join(folder, file)
                relative = os.path.relpath(local, self._staging_dir).replace(os.sep, "/")
                remote = _join(self.log_dir, relative)
                self._fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
                self._fs.put_file(local, remote)

    def __getstate__(self) -> dict[str, Any]:
        # A SummaryWriter holds threads and open files; each process opens its own.
        state = self.__dict__.copy()
        state["_experiment"] = None
        state["_staging_dir"] = None
        return state


def _plugin_value(value: Any) -> bool | int | float | str:
    """TensorBoard's HPARAMS tab stores only numbers, booleans and strings."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, torch.Tensor):
        return str(value.tolist())
    return str(value)
