"""``ModelCheckpoint``: save checkpoints while training, keep the best ``k`` by a monitored value.

Why it is shaped the way it is:

- **When** it saves follows Lightning 2.x: every ``every_n_train_steps`` optimizer steps or every
  ``train_time_interval`` (checked at ``on_train_batch_end``), every ``every_n_epochs`` epochs
  (checked at ``on_train_epoch_end`` when the epoch's validation, if any, has already run there,
  otherwise at ``on_validation_end``). Never during the sanity check, ``fast_dev_run``, or twice
  for one global step.
- **Which files stay** is decided from the monitored value in ``trainer.callback_metrics``
  (:mod:`fulmen.callbacks.checkpoint_topk`); the bookkeeping is updated before the file is
  written, so every checkpoint names itself in its callback state.
- **Durability**: a file is removed only on global rank zero, only after every new file of that
  step (top-k and ``last``) has been written, and never when it is the file just written, a file
  still listed in the state, the checkpoint the run resumed from (or what that links to), or
  outside this callback's folder (local paths). ``last`` therefore always exists once written.
- **Distributed**: every rank takes the same decisions (the file name is chosen on rank zero and
  broadcast; top-k decisions are agreed with ``reduce_boolean_decision``); the Trainer's
  ``save_checkpoint`` makes rank zero write, atomically.
- **Asynchronous** (``async_save=True``): the loop waits only while the state is copied to CPU
  memory; the strategy writes it in the background. Deleting stale files and pointing ``last`` at
  a new file are handed to the strategy to run after the new files are published
  (``Strategy.after_checkpoint_saves``), and each check starts by waiting for the previous one's
  files, so names, versions and deletions come out exactly as with synchronous saves. Loggers
  hear of a save (``after_save_checkpoint``) once its file exists: at the next check or at the
  end of the run.
- ``dirpath`` may be any fsspec URL; all file access goes through :mod:`fulmen.checkpointing`.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import torch
from fsspec.core import url_to_fs
from torch import Tensor

from fulmen.callbacks.checkpoint import Checkpoint, _join, _normalize_dirpath
from fulmen.callbacks.checkpoint_files import StaleFileRemoval, find_last, format_name, resume_paths
from fulmen.callbacks.checkpoint_options import check_arguments
from fulmen.callbacks.checkpoint_topk import TopKBookkeeping
from fulmen.checkpointing import remote
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn
from fulmen.utilities.stages import TrainerFn

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer


class ModelCheckpoint(TopKBookkeeping, StaleFileRemoval, Checkpoint):
    r"""Save the model periodically, keeping the best ``save_top_k`` checkpoints by ``monitor``.

    Args:
        dirpath: folder (local path or fsspec URL such as ``s3://bucket/run``) for the files.
            By default ``<save_dir>/<name>/<version>/checkpoints`` of the first logger, or
            ``<default_root_dir>/checkpoints`` without a logger; decided at ``setup``.
        filename: file name template without extension; ``{name}`` or ``{name:fmt}`` is replaced
            by the value of ``name`` in the logged metrics, ``epoch`` or ``step``. Default:
            ``"{epoch}-{step}"``, which gives ``epoch=0-step=10.ckpt``.
        monitor: the ``trainer.callback_metrics`` key that ranks checkpoints; ``None`` keeps
            the latest ones.
        verbose: report each decision at INFO level.
        save_last: also save ``last.ckpt`` (``CHECKPOINT_NAME_LAST``) every time the callback
            checks, so a run can always resume from its newest state; ``"link"`` makes it a link
            to the top-k file written at the same step (a copy on filesystems without links), and
            a full file when no top-k file was written at that step.
        save_top_k: how many checkpoints to keep: ``-1`` all, ``0`` none (only ``last``), ``k``
            the best ``k`` by ``monitor`` (with ``monitor=None``, ``1`` keeps the latest).
        save_on_exception: when fit raises, save the state of that moment to
            ``<dirpath>/<filename>.ckpt``, named as a regular checkpoint of that step (and ``last``
            with ``save_last``) so that the run can resume from it; never during the sanity check
            or on the step a checkpoint was just saved. A failure to save is a warning: the
            original error is what is raised.
            Resuming is exact when the failure came between batches (in ``on_train_batch_end``,
            say); after a failure inside a batch or a validation run, the run continues after the
            last finished batch (an interrupted validation is not run again) with the random
            state of the moment of failure.
        save_weights_only: save only the model's weights (no optimizer, scheduler or loop state).
        mode: ``"min"`` or ``"max"``: whether a lower or higher ``monitor`` value is better.
        auto_insert_metric_name: ``{val_loss:.2f}`` becomes ``val_loss=0.12``; turn off for metric
            names with ``/``, which would otherwise become sub-folders.
        every_n_train_steps: check every this many optimizer steps (``None``/``0``: never).
        train_time_interval: check when at least this much wall time passed since the last check.
        every_n_epochs: check every this many epochs (the default, ``1``, when none of
            ``every_n_train_steps``, ``train_time_interval`` and ``every_n_epochs`` is given).
        save_on_train_epoch_end: check at the end of the training epoch (``True``) or at the end of
            validation (``False``); ``None`` decides from how validation is scheduled.
        enable_version_counter: when a file name is taken, append ``-v1``, ``-v2``, ... instead of
            overwriting.
        async_save: write checkpoints in the background: the loop waits only for a copy of the
            state in CPU memory. A save first waits for the previous one; the end of the run (and
            an error or a signal that ends it) waits for the last. Strategies that write sharded
            directories through their own engine (DeepSpeed) save synchronously, with a warning.
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        filename: str | None = None,
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = None,
        save_top_k: int = 1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = True,
        async_save: bool = False,
    ) -> None:
        super().__init__()
        every_n_train_steps, every_n_epochs = check_arguments(
            monitor=monitor,
            filename=filename,
            save_last=save_last,
            save_top_k=save_top_k,
            mode=mode,
            save_on_exception=save_on_exception,
            async_save=async_save,
            save_on_train_epoch_end=save_on_train_epoch_end,
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
            train_time_interval=train_time_interval,
        )

        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_on_exception = save_on_exception
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self.async_save = async_save
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        if every_n_train_steps is None and every_n_epochs is None and train_time_interval is None:
            every_n_epochs = 1  # Lightning's default schedule: once per epoch
        self._every_n_train_steps = every_n_train_steps or 0
        self._every_n_epochs = every_n_epochs or 0
        self._train_time_interval = train_time_interval

        self.dirpath: str | None = _normalize_dirpath(dirpath) if dirpath is not None else None
        self.filename = filename

        self.current_score: Tensor | None = None
        self.best_k_models: dict[str, Tensor] = {}
        self.kth_best_model_path = ""
        self.best_model_score: Tensor | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self.kth_value: Tensor = torch.tensor(float("inf") if mode == "min" else float("-inf"))

        # No checkpoint at global step 0: nothing has been trained yet.
        self._last_global_step_saved = 0
        self._last_checkpoint_saved = ""
        self._last_time_checked: float | None = None
        self._validation_has_run = False
        self._checking_epoch_end = False  # a missing monitor is an error then, not a warning
        self._dirpath_from_state = False
        self._resume_paths: set[str] = set()
        self._warned: set[str] = set()
        self._loggers_behind = False  # an asynchronous save the loggers have not heard of yet

    # ------------------------------------------------------------------------------- identity
    @property
    def state_key(self) -> str:
        # Two ModelCheckpoints with different schedules keep separate state in one checkpoint.
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_train_steps(self) -> int:
        return self._every_n_train_steps

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    @property
    def train_time_interval(self) -> timedelta | None:
        return self._train_time_interval

    @property
    def save_on_train_epoch_end(self) -> bool | None:
        return self._save_on_train_epoch_end

    # ---------------------------------------------------------------------------------- hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from_state = self._dirpath_from_state
        self._dirpath_from_state = False
        dirpath = self.dirpath if self.dirpath is not None and not from_state else self._default_dirpath(trainer)
        # Loggers number versions per process; rank zero's folder is the one that gets the files.
        dirpath = trainer.strategy.broadcast(dirpath)
        if from_state and dirpath != self.dirpath:
            self._warn_folder_changed(self.dirpath, dirpath)
            self._reset_tracking()
        self.dirpath = dirpath
        if stage == TrainerFn.FITTING:
            self._validation_has_run = False
            if trainer.is_global_zero:
                self._warn_if_dir_not_empty(self.dirpath)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_time_checked = time.monotonic()
        # Resolved now, before any save: `last` may be a link that this run will point elsewhere,
        # and the file it pointed to when the run resumed must survive the run.
        self._resume_paths = resume_paths(getattr(trainer, "ckpt_path", None))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        n = self._every_n_train_steps
        skip_batch = n < 1 or trainer.global_step % n != 0

        skip_time = True
        now = time.monotonic()
        if self._train_time_interval is not None:
            previous = self._last_time_checked
            skip_time = previous is None or (now - previous) < self._train_time_interval.total_seconds()
            # Clocks differ between processes: rank zero decides, so that every rank saves or none.
            skip_time = trainer.strategy.broadcast(skip_time)
        if skip_batch and skip_time:
            return
        if not skip_time:
            self._last_time_checked = now
        self._save_checkpoints(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        if self._should_save_on_train_epoch_end(trainer):
            self._save_at_epoch_end(trainer)
        elif self.save_last and not trainer.enable_validation:  # no validation end will come to save it
            self._save_checkpoints(trainer, self._monitor_candidates(trainer), top_k=False)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if _sanity_checking(trainer) or not _fitting(trainer):
            return
        self._validation_has_run = True
        if not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self._save_at_epoch_end(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not self._should_save_on_exception(trainer):
            return
        try:
            self._settle(trainer)
            candidates = self._monitor_candidates(trainer)
            # Named on this process alone: another rank may never reach this hook, so no broadcast.
            name = self._format_checkpoint_name(self.filename, dict(candidates), self.auto_insert_metric_name)
            filepath = _join(self.dirpath, name + self.FILE_EXTENSION)
            self._save_checkpoint(trainer, filepath)
            self._remove_stale(trainer, self._save_last_checkpoint(trainer, candidates, filepath))
            self._settle(trainer)  # the run ends: the file must exist before the error is raised
        except Exception as err:  # the user must see the original error, not the rescue's
            rank_zero_warn(f"ModelCheckpoint(save_on_exception=True) could not save: {type(err).__name__}: {err}")
            return
        rank_zero_info(
            f"{type(exception).__name__} raised during fit ({exception}); saved the state of that moment to {filepath}"
        )

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._settle(trainer)

    def _should_save_on_exception(self, trainer: Trainer) -> bool:
        return (
            self.save_on_exception
            and self.dirpath is not None
            and getattr(trainer, "lightning_module", None) is not None
            and not bool(getattr(trainer, "fast_dev_run", False))
            and trainer.state.fn == TrainerFn.FITTING
            and not _sanity_checking(trainer)
            and self._last_global_step_saved != trainer.global_step
        )

    # ---------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
            # Not in Lightning's state: a resumed run must not save the step it resumed at again.
            "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.dirpath is None and state_dict.get("dirpath") is not None:
            # No folder chosen yet: restored before `setup`, or in the main process after
            # `ddp_spawn` (setup ran in the children). Take the state's folder; `setup` compares it
            # with the folder it chooses and drops what belongs elsewhere.
            self.dirpath = state_dict["dirpath"]
            self._dirpath_from_state = True
        dirpath_from_ckpt = state_dict.get("dirpath", self.dirpath)
        if dirpath_from_ckpt == self.dirpath:
            self.best_model_score = state_dict.get("best_model_score", self.best_model_score)
            self.current_score = state_dict.get("current_score", self.current_score)
            self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.best_k_models = dict(state_dict.get("best_k_models", self.best_k_models))
            self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
        else:
            # The files listed belong to another folder: managing (deleting) them from here would be wrong.
            self._warn_folder_changed(dirpath_from_ckpt, self.dirpath)
        self.best_model_path = state_dict.get("best_model_path", self.best_model_path)
        self._last_global_step_saved = int(state_dict.get("last_global_step_saved", self._last_global_step_saved))

    def _warn_folder_changed(self, old: Any, new: Any) -> None:
        rank_zero_warn(
            f"The dirpath has changed from {old!r} to {new!r}, therefore `best_model_score`, `kth_best_model_path`,"
            " `kth_value`, `last_model_path` and `best_k_models` won't be reloaded. Only `best_model_path` will be"
            " reloaded."
        )

    def _reset_tracking(self) -> None:
        """Forget the files of another folder (``best_model_path`` stays, as in Lightning)."""
        self.current_score = None
        self.best_k_models = {}
        self.kth_best_model_path = ""
        self.best_model_score = None
        self.last_model_path = ""
        self.kth_value = torch.tensor(float("inf") if self.mode == "min" else float("-inf"))

    # ------------------------------------------------------------------------------ file names
    def format_checkpoint_name(
        self,
        metrics: Mapping[str, Any],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        """The path a checkpoint with these ``metrics`` gets (``ver``: the ``-vN`` suffix; ``prefix``:
        put in front, joined by ``CHECKPOINT_JOIN_CHAR``, as in Lightning).

        >>> ckpt = ModelCheckpoint(dirpath=None, filename="{epoch}")
        >>> ckpt.format_checkpoint_name({"epoch": 0})
        'epoch=0.ckpt'
        >>> ckpt.format_checkpoint_name({"epoch": 3}, filename="{epoch:03d}")
        'epoch=003.ckpt'
        >>> ckpt.format_checkpoint_name({"epoch": 3}, ver=2)
        'epoch=3-v2.ckpt'
        >>> ckpt.format_checkpoint_name({"epoch": 3}, prefix="run")
        'run-epoch=3.ckpt'
        """
        name = self._format_checkpoint_name(
            filename or self.filename, dict(metrics), auto_insert_metric_name=self.auto_insert_metric_name
        )
        if prefix:
            name = self.CHECKPOINT_JOIN_CHAR.join((prefix, name))
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        name = f"{name}{self.FILE_EXTENSION}"
        return _join(self.dirpath, name) if self.dirpath else name

    @classmethod
    def _format_checkpoint_name(
        cls, filename: str | None, metrics: dict[str, Any], auto_insert_metric_name: bool = True
    ) -> str:
        join, equals = cls.CHECKPOINT_JOIN_CHAR, cls.CHECKPOINT_EQUALS_CHAR
        return format_name(filename, metrics, auto_insert_metric_name, join, equals)

    def file_exists(self, filepath: str | os.PathLike, trainer: Trainer) -> bool:
        """Whether ``filepath`` exists, as rank zero sees it (every rank gets the same answer)."""
        exists = remote.file_exists(filepath) if trainer.is_global_zero else False
        return trainer.strategy.broadcast(exists)

    def to_yaml(self, filepath: str | os.PathLike | None = None) -> None:
        """Write ``best_k_models`` (path: score) as YAML, by default to ``<dirpath>/best_k_models.yaml``."""
        import yaml

        best_k = {path: float(score) for path, score in self.best_k_models.items()}
        if filepath is None:
            if self.dirpath is None:
                raise MisconfigurationException(
                    "`ModelCheckpoint.to_yaml()` needs a `filepath` or a `dirpath` (known once the Trainer has set up)."
                )
            filepath = _join(self.dirpath, "best_k_models.yaml")
        fs, rpath = url_to_fs(os.fsdecode(os.fspath(filepath)))
        parent = posixpath.dirname(rpath) if "/" in rpath else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(rpath, "w") as f:
            yaml.safe_dump(best_k, f)

    def resume_candidates(self, trainer: Trainer) -> set[str]:
        """The ``last`` files in this callback's folder and ``last_model_path`` where it exists."""
        found = self._find_last_checkpoints(trainer)
        if self.last_model_path and remote.file_exists(self.last_model_path):
            found.add(self.last_model_path)
        return found

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        """The ``last`` checkpoints (``last.ckpt``, ``last-v1.ckpt``, ...) in this callback's folder."""
        dirpath = self.dirpath if self.dirpath is not None else self._default_dirpath(trainer)
        return find_last(dirpath, self.CHECKPOINT_NAME_LAST, self.CHECKPOINT_JOIN_CHAR, self.FILE_EXTENSION)

    # ------------------------------------------------------------------------------- decisions
    def _should_skip_saving_checkpoint(self, trainer: Trainer) -> bool:
        return (
            bool(getattr(trainer, "fast_dev_run", False))
            or not _fitting(trainer)
            or _sanity_checking(trainer)
            or self._last_global_step_saved == trainer.global_step
        )

    def _should_save_on_train_epoch_end(self, trainer: Trainer) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        # Validation every few epochs (or by steps only): it decides when checks happen.
        if getattr(trainer, "check_val_every_n_epoch", 1) != 1:
            return False
        num_val_batches = getattr(trainer, "num_val_batches", 0)
        if isinstance(num_val_batches, (list, tuple)):
            num_val_batches = sum(num_val_batches)
        if not num_val_batches:
            return True
        # Validation at the end of each epoch has run before on_train_epoch_end, and the module's
        # own on_train_epoch_end logs are there too; validation within the epoch checks itself.
        # (An int val_check_interval counts batches: 1 means every batch, not every epoch.)
        interval = getattr(trainer, "val_check_interval", 1.0)
        return isinstance(interval, float) and interval == 1.0

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, Any]:
        candidates = dict(trainer.callback_metrics)
        epoch = candidates.get("epoch")
        candidates["epoch"] = epoch.int() if isinstance(epoch, Tensor) else torch.tensor(trainer.current_epoch)
        step = candidates.get("step")
        candidates["step"] = step.int() if isinstance(step, Tensor) else torch.tensor(trainer.global_step)
        return candidates

    # ---------------------------------------------------------------------------------- saving
    def _save_at_epoch_end(self, trainer: Trainer) -> None:
        candidates = self._monitor_candidates(trainer)
        if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            self._checking_epoch_end = True
            try:
                self._save_checkpoints(trainer, candidates)
            finally:
                self._checking_epoch_end = False
        else:
            self._save_checkpoints(trainer, candidates, top_k=False)

    def _save_checkpoints(self, trainer: Trainer, candidates: dict[str, Any], top_k: bool = True) -> None:
        # The previous check's files are published first: file names and versions below are
        # chosen from what is on disk, as they would be after a synchronous save.
        self._settle(trainer)
        # Files that become stale are collected and removed only once every new file of this step
        # exists, so a crash in between leaves one file too many, never one too few.
        stale: list[str] = []
        written_top_k = ""
        if top_k:
            written_top_k, stale_top_k = self._save_topk_checkpoint(trainer, candidates)
            stale += stale_top_k
        stale += self._save_last_checkpoint(trainer, candidates, written_top_k)
        self._remove_stale(trainer, stale)

    def _save_last_checkpoint(self, trainer: Trainer, candidates: dict[str, Any], written_top_k: str) -> list[str]:
        if not self.save_last:
            return []
        filepath = self._get_metric_interpolated_filepath_name(
            candidates, trainer, filename=self.CHECKPOINT_NAME_LAST, reusable=self.last_model_path
        )
        previous, self.last_model_path = self.last_model_path, filepath
        # A link only to a file of this very step: `last` always holds the newest state.
        if self.save_last == "link" and written_top_k:
            self._link_checkpoint(trainer, written_top_k, filepath)
        else:
            self._save_checkpoint(trainer, filepath)
        return [previous] if previous and previous != filepath else []

    def _get_metric_interpolated_filepath_name(
        self, candidates: dict[str, Any], trainer: Trainer, filename: str | None = None, reusable: str = ""
    ) -> str:
        """The file name for this save: formatted from the metrics, with ``-vN`` if the name is taken.

        ``reusable`` is a file this save replaces (the one dropped from the top k, the previous
        ``last``): writing over it needs no new version.
        """
        # Formatting runs on every rank, so a bad template fails everywhere instead of hanging the others.
        filepath = self.format_checkpoint_name(candidates, filename)
        if trainer.is_global_zero and self._enable_version_counter:
            version = self.STARTING_VERSION
            while filepath != reusable and remote.file_exists(filepath):
                filepath = self.format_checkpoint_name(candidates, filename, ver=version)
                version += 1
        # Rank zero sees the folder and its metrics decide the name: every rank uses that one.
        return trainer.strategy.broadcast(filepath)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        # Set before writing, so that the file records that its own step is saved.
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if self.async_save:
            trainer.save_checkpoint(filepath, self.save_weights_only, async_save=True)
            self._loggers_behind = True  # told once the file exists (`_settle`)
            return
        trainer.save_checkpoint(filepath, self.save_weights_only)
        self._notify_loggers(trainer)

    def _notify_loggers(self, trainer: Trainer) -> None:
        if trainer.is_global_zero:
            for logger in getattr(trainer, "loggers", ()):
                logger.after_save_checkpoint(self)

    def _settle(self, trainer: Trainer) -> None:
        """Wait until the asynchronous saves handed over are published, then tell the loggers."""
        if not self.async_save:
            return
        trainer.strategy.wait_for_checkpoint_saves()
        if self._loggers_behind:
            self._loggers_behind = False
            self._notify_loggers(trainer)

    # ----------------------------------------------------------------------------------- paths
    def _default_dirpath(self, trainer: Trainer) -> str:
        loggers = getattr(trainer, "loggers", None) or []
        if loggers:
            logger = loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            base = _normalize_dirpath(save_dir, "save_dir")
            for part in (str(logger.name or ""), version):
                if part:
                    base = _join(base, part)
            return _join(base, "checkpoints")
        return _join(_normalize_dirpath(trainer.default_root_dir, "default_root_dir"), "checkpoints")

    def _warn_if_dir_not_empty(self, dirpath: str) -> None:
        if self.save_top_k == 0:
            return
        fs = remote.get_filesystem(dirpath)
        if fs.isdir(dirpath) and fs.ls(dirpath):
            rank_zero_warn(f"Checkpoint directory {dirpath} exists and is not empty.")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dirpath={self.dirpath!r}, filename={self.filename!r}, monitor={self.monitor!r},"
            f" mode={self.mode!r}, save_top_k={self.save_top_k}, save_last={self.save_last!r})"
        )


def _fitting(trainer: Trainer) -> bool:
    fn = trainer.state.fn
    return fn is None or fn == TrainerFn.FITTING


def _sanity_checking(trainer: Trainer) -> bool:
    return bool(getattr(trainer, "sanity_checking", False))
