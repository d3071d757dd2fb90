"""Comet (comet.com): parameters, metrics with their steps and epochs in one Comet experiment.

comet_ml is optional (``pip install fulmen[comet]``) and imported only when the experiment is
first needed. The signature is Lightning's (2.5+): ``api_key``, ``workspace``, ``project``,
``experiment_key``, ``mode`` and ``online`` go to ``comet_ml.start``; other keyword arguments
(``offline_directory``, ``name``, ``tags``, ``log_code``, ...) build its ``ExperimentConfig``.
``online=False`` logs offline, into an archive under ``offline_directory`` (default: the working
directory), that ``comet upload`` sends later.
"""

from __future__ import annotations

import importlib.util
import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

import torch

from fulmen.loggers.logger import (
    Logger,
    _add_prefix,
    _check_prefix,
    _convert_params,
    _flatten_dict,
    _metric_value,
    rank_zero_experiment,
)
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_only

_INSTALL_HINT = "CometLogger needs comet_ml: `pip install fulmen[comet]` (or `pip install comet_ml`)."
_MODES = ("get_or_create", "get", "create")


class CometLogger(Logger):
    """Log to a Comet experiment, created on first use (rank zero only)."""

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        api_key: str | None = None,
        workspace: str | None = None,
        project: str | None = None,
        experiment_key: str | None = None,
        mode: str | None = None,
        online: bool | None = None,
        prefix: str | None = None,
        **kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("comet_ml") is None:
            raise ModuleNotFoundError(_INSTALL_HINT)
        if mode is not None and mode not in _MODES:
            raise invalid_argument("mode", mode, (*_MODES, None))
        if online is not None and not isinstance(online, bool):
            raise invalid_argument("online", online, "True, False or None (comet_ml's configuration decides)")
        super().__init__()
        self._api_key = api_key
        self._workspace = workspace
        self._project = project
        self._experiment_key = experiment_key
        self._mode = mode
        self._online = online
        self._prefix = _check_prefix(prefix or "")
        self._config_kwargs = dict(kwargs)
        self._experiment: Any = None

    # ------------------------------------------------------------------------------ the run
    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``comet_ml`` experiment (``Experiment`` online, ``OfflineExperiment`` offline)."""
        if self._experiment is not None:
            return self._experiment
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")  # fulmen logs; Comet need not hook torch
        import comet_ml

        config_kwargs = dict(self._config_kwargs)
        if self._online is False:
            config_kwargs.setdefault("offline_directory", os.getcwd())
        self._experiment = comet_ml.start(
            api_key=self._api_key,
            workspace=self._workspace,
            project=self._project,
            experiment_key=self._experiment_key,
            mode=self._mode,
            online=self._online,
            experiment_config=comet_ml.ExperimentConfig(**config_kwargs),
        )
        self._experiment_key = self._experiment.get_key()
        self._experiment.log_other("Created from", "fulmen")
        return self._experiment

    # ------------------------------------------------------------------------------ logging
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
        self.experiment.log_parameters(_flatten_dict(_convert_params(params)))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = {name: _metric_value(name, value) for name, value in metrics.items()}
        epoch = values.pop("epoch", None)
        values = _add_prefix(values, self._prefix, self.LOGGER_JOIN_CHAR)
        self.experiment.log_metrics(values, step=step, epoch=None if epoch is None else int(epoch))

    @rank_zero_only
    def log_graph(self, model: torch.nn.Module, input_array: Any = None) -> None:
        if self._experiment is not None:
            self._experiment.set_model_graph(model)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """End the experiment (an offline one writes its archive now); a later log starts a new one."""
        if self._experiment is None:
            return
        self._experiment.end()
        self._experiment = None

    # ----------------------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        """The project's name (``"comet-default"`` when none was given)."""
        if self._experiment is not None and getattr(self._experiment, "project_name", None):
            return self._experiment.project_name
        return self._project or "comet-default"

    @property
    def version(self) -> str | None:
        """The experiment's key (known once the experiment exists, or when given)."""
        return self._experiment_key

    @property
    def save_dir(self) -> str | None:
        """Where an offline experiment's archive goes; None online."""
        if self._online is False:
            return self._config_kwargs.get("offline_directory") or os.getcwd()
        return None

    def __getstate__(self) -> dict[str, Any]:
        # The experiment holds threads and connections; a copy reconnects by key when it logs.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state
