"""Loss-spike detection: stop training at a loss far above its recent mean, and record which batches to skip.

``SpikeDetection`` here is the Lite/Fabric callback (``lite.call("on_train_batch_end", loss, batch,
batch_idx)``); ``fulmen.callbacks.SpikeDetection`` is the same check for the Trainer. Each rank
checks its own loss; if any rank sees a spike, every rank raises ``TrainingSpikeException`` after
rank zero wrote the batch and the one before it to a JSON list, so a resumed run can skip them
(the previous batch may have corrupted the weights that made this one spike).
"""

from __future__ import annotations

import json
import os
from collections import deque
from typing import Any, Literal

import torch
from torch import Tensor

from fulmen.utilities.exceptions import invalid_argument

__all__ = ["SpikeDetection", "TrainingSpikeException"]


class TrainingSpikeException(RuntimeError):
    """Training stopped because the loss spiked at ``batch_idx``."""

    def __init__(self, batch_idx: int, *args: Any) -> None:
        super().__init__(f"Training spike detected in batch {batch_idx}", *args)
        self.batch_idx = batch_idx


class SpikeDetection:
    """Raise ``TrainingSpikeException`` when the loss spikes.

    Args:
        mode: ``"min"`` (a loss) or ``"max"``: which direction is an improvement, never a spike.
        window: how many recent finite values the reference mean covers.
        warmup: batches (by index) before checking starts.
        atol: a spike differs from the mean by at least this much (None: no absolute condition).
        rtol: ... and by at least ``rtol * mean`` (None: no relative condition).
        exclude_batches_path: the JSON file (or its folder; the file is ``skip_batches.json``)
            the bad batch indices go to; default: the working directory.
        finite_only: a non-finite loss (NaN, inf) counts as a spike; with False it is only left
            out of the mean.
    """

    def __init__(
        self,
        mode: Literal["min", "max"] = "min",
        window: int = 10,
        warmup: int = 1,
        atol: float | None = None,
        rtol: float | None = 2.0,
        exclude_batches_path: str | os.PathLike | None = None,
        finite_only: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise invalid_argument("mode", mode, ("min", "max"))
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise invalid_argument("window", window, "a positive int")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise invalid_argument("warmup", warmup, "an int >= 0")
        super().__init__()
        self.mode = mode
        self.window = window
        self.warmup = warmup
        self.atol = atol
        self.rtol = rtol
        self.exclude_batches_path = exclude_batches_path
        self.finite_only = finite_only
        self.last_val: float = 0.0
        self.bad_batches: list[int] = []
        self._recent: deque[float] = deque(maxlen=window)

    @torch.no_grad()
    def on_train_batch_end(self, fabric: Any, loss: Tensor, batch: Any, batch_idx: int) -> None:
        """Check ``loss`` of batch ``batch_idx``; ``fabric`` is the Lite (or Trainer) that runs the loop."""
        value = float(loss.detach().float().mean()) if isinstance(loss, Tensor) else float(loss)
        is_spike = batch_idx >= self.warmup and self._is_spike(value)
        strategy = fabric.strategy
        strategy.barrier()
        # Each rank decides on its own loss; one rank's spike stops them all.
        if strategy.reduce_boolean_decision(bool(is_spike), all=False):
            self._handle_spike(fabric, batch_idx)
        finite = bool(torch.isfinite(torch.tensor(value)))
        # Without finite_only, a step any rank found non-finite is left out of every rank's mean.
        # The vote runs on every rank (a collective), before this rank's own answer is used.
        if (self.finite_only or strategy.reduce_boolean_decision(finite, all=True)) and finite:
            self._recent.append(value)
            self.last_val = value

    def _is_spike(self, value: float) -> bool:
        if not torch.isfinite(torch.tensor(value)):
            return self.finite_only
        if not self._recent:
            return False
        improvement = value - self.last_val
        if (improvement <= 0) if self.mode == "min" else (improvement >= 0):
            return False
        mean = sum(self._recent) / len(self._recent)
        far = abs(value - mean)
        return (self.atol is None or far >= abs(self.atol)) and (self.rtol is None or far >= abs(self.rtol * mean))

    def _json_path(self) -> str:
        path = os.fspath(self.exclude_batches_path) if self.exclude_batches_path is not None else os.getcwd()
        return path if path.endswith(".json") else os.path.join(path, "skip_batches.json")

    def _handle_spike(self, fabric: Any, batch_idx: int) -> None:
        self.bad_batches.extend([batch_idx - 1, batch_idx])
        path = self.exclude_batches_path = self._json_path()
        if fabric.global_rank == 0:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w") as handle:
                json.dump(self.bad_batches, handle, indent=4)
        raise TrainingSpikeException(batch_idx=batch_idx)

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_val": self.last_val,
            "mode": self.mode,
            "warmup": self.warmup,
            "atol": self.atol,
            "rtol": self.rtol,
            "bad_batches": list(self.bad_batches),
            "bad_batches_path": None if self.exclude_batches_path is None else os.fspath(self.exclude_batches_path),
            "recent": list(self._recent),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_val = state_dict["last_val"]
        self.mode = state_dict["mode"]
        self.warmup = state_dict["warmup"]
        self.atol = state_dict["atol"]
        self.rtol = state_dict["rtol"]
        self.bad_batches = list(state_dict["bad_batches"])
        self.exclude_batches_path = state_dict["bad_batches_path"]
        self._recent = deque(state_dict["recent"], maxlen=self.window)
