"""Weights & Biases logging: metrics against the trainer's step, the config, checkpoints as artifacts.

wandb is an optional extra (``pip install fulmen[wandb]``) imported only when the logger is
built, never by ``import fulmen``. ``offline=True`` (or ``WANDB_MODE=offline``) keeps everything
in the local run folder, artifacts included, for a later ``wandb sync``. The run is not finished
by the logger, so ``trainer.test`` after ``trainer.fit`` logs to the same run; call
``wandb.finish()`` when done (or let the process end).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from argparse import Namespace
from typing import TYPE_CHECKING, Any

import torch

from fulmen.loggers.checkpoint_artifacts import (
    check_log_model,
    checkpoint_aliases,
    checkpoint_metadata,
    new_checkpoints,
    uploads_each_save,
)
from fulmen.loggers.logger import Logger, _add_prefix, _check_prefix, _convert_params, _yaml_safe, rank_zero_experiment
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_only, rank_zero_warn

if TYPE_CHECKING:
    from wandb import Artifact
    from wandb.sdk.wandb_run import Run

_INSTALL_HINT = "WandbLogger needs the `wandb` package: `pip install fulmen[wandb]` (or `pip install wandb`)."
# The x-axis every metric is plotted against: the trainer's global step, which (unlike wandb's
# own step) may repeat, e.g. when validation logs at the step training just logged.
_STEP_METRIC = "trainer/global_step"


class WandbLogger(Logger):
    """Log to a Weights & Biases run, created on first use (rank zero only).

    ``name`` is the run's display name, ``project`` its project (``WANDB_PROJECT`` or
    ``"lightning_logs"``), ``version``/``id`` its id: pass an earlier run's id to resume it.
    ``save_dir`` (default ``"."``, as in Lightning; ``dir`` or ``WANDB_DIR`` where it is left at
    the default) holds the local ``wandb/`` folder.
    ``log_model=True`` logs the checkpoint callback's best/last files as ``model`` artifacts when
    training succeeds, ``"all"`` logs each checkpoint as it is written. Other keyword arguments
    go to ``wandb.init`` (``tags``, ``group``, ``entity``, ``config``, ``notes``, ...).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | os.PathLike | None = ".",
        version: str | None = None,
        offline: bool = False,
        dir: str | os.PathLike | None = None,
        id: str | None = None,
        anonymous: bool | None = None,
        project: str | None = None,
        log_model: bool | str = False,
        experiment: Run | None = None,
        prefix: str = "",
        checkpoint_name: str | None = None,
        add_file_policy: str = "mutable",
        **kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise ModuleNotFoundError(_INSTALL_HINT)
        for arg, value in (("name", name), ("version", version), ("id", id), ("project", project),
                           ("checkpoint_name", checkpoint_name)):  # fmt: skip
            if value is not None and (not isinstance(value, str) or not value):
                raise invalid_argument(arg, value, "a non-empty string or None")
        if version is not None and id is not None and version != id:
            raise invalid_argument("id", id, f"the same run id as `version={version!r}`, or only one of them")
        if save_dir is not None and os.fspath(save_dir) == ".":
            save_dir = None  # the default: `dir` or WANDB_DIR may still choose the folder
        for arg, value in (("save_dir", save_dir), ("dir", dir)):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise invalid_argument(arg, value, "a folder path or None")
        if save_dir is not None and dir is not None and os.fspath(save_dir) != os.fspath(dir):
            raise invalid_argument("dir", dir, f"the same folder as `save_dir={os.fspath(save_dir)!r}`, or only one")
        if add_file_policy not in ("mutable", "immutable"):
            raise invalid_argument("add_file_policy", add_file_policy, ("mutable", "immutable"))
        if offline and kwargs.get("mode", "offline") != "offline":
            raise invalid_argument("mode", kwargs["mode"], "'offline' (or leave it out) with `offline=True`")
        _check_init_kwargs(kwargs)

        folder = save_dir if save_dir is not None else dir
        self._save_dir = os.fspath(folder) if folder is not None else os.environ.get("WANDB_DIR") or "."
        self._project = project or os.environ.get("WANDB_PROJECT") or "lightning_logs"
        self._name = name
        self._id = version or id
        self._offline = bool(offline)
        self._log_model = check_log_model(log_model)
        self._prefix = _check_prefix(prefix)
        self._checkpoint_name = checkpoint_name
        self.add_file_policy = add_file_policy
        self._experiment = experiment
        self._attach_id: str | None = None
        self._wandb_init: dict[str, Any] = {
            "name": name,
            "project": self._project,
            "dir": self._save_dir,
            "id": self._id,
            "resume": "allow",
            **({"anonymous": "allow"} if anonymous else {}),
            **({"mode": "offline"} if offline else {}),
            **kwargs,
        }
        self._checkpoint_callbacks: dict[int, Any] = {}
        self._uploaded: dict[str, float] = {}

    # ------------------------------------------------------------------------------ the run
    @property
    @rank_zero_experiment
    def experiment(self) -> Run:
        """The wandb ``Run``: created here, attached to (spawned ranks) or the one already active."""
        if self._experiment is not None:
            return self._experiment
        import wandb

        if self._attach_id is not None:
            self._experiment = wandb._attach(self._attach_id)
        elif wandb.run is not None:
            rank_zero_warn(
                "A wandb run is already active and this WandbLogger logs to it; call `wandb.finish()` "
                "before creating the logger to start a new run."
            )
            self._experiment = wandb.run
        else:
            self._experiment = wandb.init(**self._wandb_init)
            if getattr(self._experiment, "define_metric", None) is not None:
                if self._wandb_init.get("sync_tensorboard"):
                    self._experiment.define_metric("*", step_metric="global_step")
                else:
                    self._experiment.define_metric(_STEP_METRIC)
                    self._experiment.define_metric("*", step_metric=_STEP_METRIC, step_sync=True)
        return self._experiment

    @property
    def name(self) -> str:
        """The project (runs' checkpoints default to ``save_dir/project/run_id/checkpoints``)."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run id: the active run's, or the one passed as ``version``/``id``."""
        return self._experiment.id if self._experiment is not None else self._id

    @property
    def save_dir(self) -> str:
        return self._save_dir

    # ----------------------------------------------------------------------------- logging
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None) -> None:
        # Values become JSON types (classes and functions by their dotted name), as a config must be.
        config = {str(k): _yaml_safe(v) for k, v in _convert_params(params).items()}
        self.experiment.config.update(config, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {k: _plain(v) for k, v in _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items()}
        if step is not None and not self._wandb_init.get("sync_tensorboard"):
            values[_STEP_METRIC] = step
        self.experiment.log(values)

    @rank_zero_only
    def log_table(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[Any]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log a ``wandb.Table`` from ``columns`` + ``data`` (rows) or a pandas ``dataframe``."""
        import wandb

        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @rank_zero_only
    def log_text(
        self,
        key: str,
        columns: list[str] | None = None,
        data: list[list[str]] | None = None,
        dataframe: Any = None,
        step: int | None = None,
    ) -> None:
        """Log text samples as a table (one row per sample)."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(self, key: str, images: list[Any], step: int | None = None, **kwargs: list[Any]) -> None:
        """Log images (tensors, arrays, PIL images or paths); each keyword (``caption=[...]``) has one
        entry per image."""
        self._log_media(key, images, "Image", step, kwargs)

    @rank_zero_only
    def log_audio(self, key: str, audios: list[Any], step: int | None = None, **kwargs: list[Any]) -> None:
        """Log audio clips; keywords such as ``sample_rate=[...]`` have one entry per clip."""
        self._log_media(key, audios, "Audio", step, kwargs)

    @rank_zero_only
    def log_video(self, key: str, videos: list[Any], step: int | None = None, **kwargs: list[Any]) -> None:
        """Log videos; keywords such as ``fps=[...]`` have one entry per video."""
        self._log_media(key, videos, "Video", step, kwargs)

    def _log_media(self, key: str, items: Any, kind: str, step: int | None, kwargs: dict[str, Any]) -> None:
        if not isinstance(items, list):
            raise invalid_argument(f"{kind.lower()}s", items, "a list")
        for arg, values in kwargs.items():
            if not isinstance(values, list) or len(values) != len(items):
                raise invalid_argument(arg, values, f"a list with one entry per item ({len(items)})")
        import wandb

        media_class = getattr(wandb, kind)
        media = [media_class(item, **{arg: v[i] for arg, v in kwargs.items()}) for i, item in enumerate(items)]
        self.log_metrics({key: media}, step)

    def watch(self, model: torch.nn.Module, log: str | None = "gradients", log_freq: int = 100,
              log_graph: bool = True) -> None:  # fmt: skip
        """Log ``model``'s gradients and/or parameters as histograms every ``log_freq`` steps."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    # ------------------------------------------------------------------------- checkpoints
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if uploads_each_save(self._log_model, checkpoint_callback):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Log the checkpoints still due (``log_model=True``); only a successful run's are kept."""
        if status != "success" or self._experiment is None:
            return
        for checkpoint_callback in self._checkpoint_callbacks.values():
            self._log_checkpoints(checkpoint_callback)

    def _log_checkpoints(self, checkpoint_callback: Any) -> None:
        import wandb

        run = self.experiment
        for checkpoint in new_checkpoints(checkpoint_callback, self._uploaded):
            metadata = checkpoint_metadata(checkpoint_callback, checkpoint, type(checkpoint_callback).__name__)
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{run.id}"
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
            # "mutable" copies the file now: the callback may overwrite or delete it before upload.
            artifact.add_file(checkpoint.path, name="model.ckpt", policy=self.add_file_policy)
            run.log_artifact(artifact, aliases=checkpoint_aliases(checkpoint_callback, checkpoint))
            self._uploaded[checkpoint.path] = checkpoint.mtime

    def use_artifact(self, artifact: str, artifact_type: str | None = None) -> Artifact:
        """Declare that this run uses ``artifact`` (``"entity/project/name:alias"``) and return it."""
        return self.experiment.use_artifact(artifact, type=artifact_type)

    @staticmethod
    @rank_zero_only
    def download_artifact(
        artifact: str,
        save_dir: str | os.PathLike | None = None,
        artifact_type: str | None = None,
        use_artifact: bool = True,
    ) -> str:
        """Download ``artifact`` to ``save_dir``; through the active run (recorded as used) when
        there is one and ``use_artifact``, else through the public API (needs a connection)."""
        import wandb

        if wandb.run is not None and use_artifact:
            found = wandb.run.use_artifact(artifact)
        else:
            found = wandb.Api().artifact(artifact, type=artifact_type)
        return found.download(root=None if save_dir is None else os.fspath(save_dir))

    def __getstate__(self) -> dict[str, Any]:
        # Spawned ranks attach to the run this process owns, instead of each starting a new one.
        if rank_zero_only.rank == 0:
            _ = self.experiment
        state = self.__dict__.copy()
        run = self._experiment
        if run is not None:
            state["_id"] = run.id
            state["_attach_id"] = getattr(run, "_attach_id", None)
            state["_name"] = run.name
        state["_experiment"] = None
        state["_checkpoint_callbacks"] = {}
        return state


def _check_init_kwargs(kwargs: dict[str, Any]) -> None:
    """A misspelt ``wandb.init`` argument fails now, not when the run starts."""
    if not kwargs:
        return
    import wandb

    accepted = set(inspect.signature(wandb.init).parameters) - {"name", "project", "dir", "id"}
    for key in kwargs:
        if key not in accepted:
            raise invalid_argument(key, kwargs[key], f"a keyword argument of wandb.init: {', '.join(sorted(accepted))}")


def _plain(value: Any) -> Any:
    """One-element tensors become numbers; wandb's own objects (tables, images) pass through."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value
