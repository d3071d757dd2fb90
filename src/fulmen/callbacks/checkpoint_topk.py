"""``ModelCheckpoint``'s top-k bookkeeping: which monitored values earn a file, and which file drops out.

The bookkeeping (``best_k_models``, ``kth_best_model_path``, ``best_model_path``, ...) is updated
*before* the file is written, so every checkpoint carries the callback state that names itself;
a run resumed from it continues pruning exactly where the first run stopped. Every rank takes
the same decision (``reduce_boolean_decision``). A mixin of :class:`ModelCheckpoint`, whose
attributes it reads; subclasses may override each method, as in Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer import Trainer


class TopKBookkeeping:
    """Ranks checkpoints by ``monitor`` and keeps the best ``save_top_k`` (see :class:`ModelCheckpoint`)."""

    monitor: str | None
    mode: str
    save_top_k: int
    verbose: bool
    best_k_models: dict[str, Tensor]
    kth_best_model_path: str
    kth_value: Tensor
    best_model_path: str
    best_model_score: Tensor | None
    current_score: Tensor | None
    _validation_has_run: bool
    _checking_epoch_end: bool
    _warned: set[str]

    def check_monitor_top_k(self, trainer: Trainer, current: Tensor | None = None) -> bool:
        """Whether a checkpoint with monitored value ``current`` belongs in the top ``save_top_k``."""
        if current is None:
            return False
        if self.save_top_k == -1:
            return True
        if len(self.best_k_models) < self.save_top_k:
            return True
        kth = self.best_k_models[self.kth_best_model_path]
        better = torch.lt(current, kth) if self.mode == "min" else torch.gt(current, kth)
        # Every rank must take the same decision, or only some of them would enter save_checkpoint.
        return trainer.strategy.reduce_boolean_decision(bool(better))

    def _save_topk_checkpoint(self, trainer: Trainer, candidates: dict[str, Any]) -> tuple[str, list[str]]:
        """Save a top-k checkpoint if due; returns (the file written or "", the files now stale)."""
        if self.save_top_k == 0:
            return "", []
        if self.monitor is None:
            return self._save_none_monitor_checkpoint(trainer, candidates)
        if self.monitor not in candidates:
            message = (
                f"`ModelCheckpoint(monitor={self.monitor!r})` could not find the monitored key in the returned metrics:"
                f" {sorted(candidates)}. HINT: Did you call `log({self.monitor!r}, value)` in the `LightningModule`?"
                " Otherwise set `monitor` to one of these keys."
            )
            # After a validation, or at an epoch's end in a fit without validation, everything the
            # module logs is in: a key missing then is never logged. Earlier checks only warn (as
            # Lightning's): an epoch-level or a validation metric cannot exist yet.
            if self._validation_has_run or (self._checking_epoch_end and not trainer.enable_validation):
                raise MisconfigurationException(message)
            if message not in self._warned:
                self._warned.add(message)
                rank_zero_warn(message)
            return "", []
        current = _as_tensor(candidates[self.monitor])
        if self.check_monitor_top_k(trainer, current):
            return self._update_best_and_save(current, trainer, candidates)
        if self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch'])}, global step {int(candidates['step'])}:"
                f" {self.monitor!r} was not in top {self.save_top_k}"
            )
        return "", []

    def _save_none_monitor_checkpoint(self, trainer: Trainer, candidates: dict[str, Any]) -> tuple[str, list[str]]:
        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, reusable=self.best_model_path)
        # Part of the state written into the file, so set before saving.
        previous, self.best_model_path = self.best_model_path, filepath
        self._save_checkpoint(trainer, filepath)
        if self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch'])}, global step {int(candidates['step'])}:"
                f" saving checkpoint to {filepath!r}"
            )
        stale = [previous] if self.save_top_k == 1 and previous and previous != filepath else []
        return filepath, stale

    def _update_best_and_save(
        self, current: Tensor, trainer: Trainer, candidates: dict[str, Any]
    ) -> tuple[str, list[str]]:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        dropped = ""
        if len(self.best_k_models) == k and k > 0:
            dropped = self.kth_best_model_path
            self.best_k_models.pop(dropped)

        # A NaN would compare false against everything and never leave the top k: rank it worst.
        if torch.isnan(current):
            current = torch.tensor(float("inf") if self.mode == "min" else float("-inf"))

        filepath = self._get_metric_interpolated_filepath_name(candidates, trainer, reusable=dropped)
        self.current_score = current
        self.best_k_models[filepath] = current
        if len(self.best_k_models) == k:
            worst = max if self.mode == "min" else min
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.__getitem__)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        best = min if self.mode == "min" else max
        self.best_model_path = best(self.best_k_models, key=self.best_k_models.__getitem__)
        self.best_model_score = self.best_k_models[self.best_model_path]

        if self.verbose:
            rank_zero_info(
                f"Epoch {int(candidates['epoch'])}, global step {int(candidates['step'])}: {self.monitor!r} reached"
                f" {float(current):0.5f} (best {float(self.best_model_score):0.5f}), saving model to {filepath!r}"
                f" as top {k}"
            )
        self._save_checkpoint(trainer, filepath)
        return filepath, [dropped] if dropped and dropped != filepath else []


def _as_tensor(value: Any) -> Tensor:
    # Kept on the CPU and detached: scores live in checkpoints and must load on any machine.
    if isinstance(value, Tensor):
        return value.detach().cpu()
    return torch.tensor(value)
