"""``OnExceptionCheckpoint``: save the training state when fit fails, so the run can resume from there.

A crash (an error in user code, a node lost, Ctrl-C) otherwise loses everything since the last
scheduled checkpoint. The Trainer calls ``on_exception`` before it re-raises; this callback
writes ``<dirpath>/<filename>.ckpt`` through ``trainer.save_checkpoint`` (atomic, rank zero
writes). A failure to save is reported as a warning, never raised: the user must see the
original error, not one from the rescue attempt.

A later fit that finishes normally deletes the file at ``teardown``, so a stale rescue
checkpoint is not mistaken for the newest state of the run.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fulmen.callbacks.checkpoint import Checkpoint, _join, _normalize_dirpath
from fulmen.checkpointing import remote
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.stages import TrainerFn

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer


class OnExceptionCheckpoint(Checkpoint):
    """Save a checkpoint when fit, validate, test or predict raises.

    Args:
        dirpath: folder (local path or fsspec URL) for the file.
        filename: the file name without extension.

    Example::

        trainer = Trainer(callbacks=[OnExceptionCheckpoint(dirpath="ckpts")])
        # after a crash:
        trainer.fit(model, ckpt_path="ckpts/on_exception.ckpt")
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike, filename: str = "on_exception") -> None:
        super().__init__()
        if not isinstance(filename, str) or not filename:
            raise invalid_argument("filename", filename, "a non-empty file name without extension")
        self.dirpath = _normalize_dirpath(dirpath)
        self.filename = filename
        self._saved = False

    @property
    def ckpt_path(self) -> str:
        """Where the checkpoint is written."""
        return _join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._saved = False

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        try:
            trainer.save_checkpoint(self.ckpt_path)
        except Exception as err:  # the original exception is what the user must see
            rank_zero_warn(f"OnExceptionCheckpoint could not save {self.ckpt_path!r}: {type(err).__name__}: {err}")
            return
        self._saved = True

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Only a fit that ended normally makes the rescue file stale; evaluation never does.
        if stage == TrainerFn.FITTING and not self._saved and trainer.is_global_zero:
            remote.remove_file(self.ckpt_path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dirpath={self.dirpath!r}, filename={self.filename!r})"
