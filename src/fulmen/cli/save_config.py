"""``SaveConfigCallback``: the config of a run written beside its logs, so the run can be repeated."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fulmen.callbacks import Callback
from fulmen.checkpointing.remote import get_filesystem

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer


class SaveConfigCallback(Callback):
    """Write the parsed config to ``trainer.log_dir/config_filename`` when the Trainer sets up.

    An existing file is never overwritten silently: a second run into the same folder fails
    before training, unless ``overwrite=True`` (``LightningCLI(save_config_kwargs={"overwrite": True})``).
    Override :meth:`save_config` to also send the config elsewhere (an experiment tracker);
    ``save_to_log_dir=False`` skips the file.
    """

    def __init__(
        self,
        parser: Any,
        config: Any,
        config_filename: str = "config.yaml",
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = True,
    ) -> None:
        self.parser = parser
        self.config = config
        self.config_filename = config_filename
        self.overwrite = overwrite
        self.multifile = multifile
        self.save_to_log_dir = save_to_log_dir
        self.already_saved = False
        if not save_to_log_dir and type(self).save_config is SaveConfigCallback.save_config:
            raise ValueError(
                "`save_to_log_dir=False` saves nothing unless `save_config` is overridden: subclass "
                "SaveConfigCallback and implement `save_config`, or keep `save_to_log_dir=True`."
            )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if self.save_to_log_dir:
            self._write(trainer)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        # Every rank agrees, so a later setup (fit then test) skips on all of them.
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Override to save the config somewhere else as well (called on rank zero)."""

    def _write(self, trainer: Trainer) -> None:
        log_dir = trainer.log_dir
        if log_dir is None:
            raise RuntimeError("SaveConfigCallback needs `trainer.log_dir`; this Trainer has none.")
        path = os.path.join(log_dir, self.config_filename)
        fs = get_filesystem(log_dir)
        if not self.overwrite:
            exists = fs.isfile(path) if trainer.is_global_zero else False
            if trainer.strategy.broadcast(exists):
                raise RuntimeError(
                    f"{type(self).__name__} expected {path} to NOT exist: it would overwrite the config of a previous "
                    "run. Delete that file, log to another folder, set `LightningCLI(save_config_callback=None)` "
                    'to save no config, or `LightningCLI(save_config_kwargs={"overwrite": True})` to overwrite it.'
                )
        if trainer.is_global_zero:
            fs.makedirs(log_dir, exist_ok=True)
            self.parser.save(self.config, path, skip_unset=False, overwrite=self.overwrite, multifile=self.multifile)
