"""Ray Train for fulmen: run a Trainer or Lite on the workers of ``ray.train.torch.TorchTrainer``.

``RayDDPStrategy``, ``RayFSDPStrategy``, ``RayDeepSpeedStrategy`` and ``RayLightningEnvironment``
take ranks, world size and device from Ray; ``RayTrainReportCallback`` reports each epoch's
metrics and a checkpoint; ``prepare_trainer`` checks the Trainer (and changes nothing of it);
``ray_checkpoint_file()`` gives the checkpoint to pass as ``fit(..., ckpt_path=...)`` after a
restart (None on the first run). Importing this module imports Ray (``pip install
fulmen[ray]``); ``import fulmen`` never does.

A script written for Lightning's Ray integration runs with its import lines changed: this
module also answers to the name ``ray``, so that ``from fulmen.integrations import ray`` in place
of ``import ray.train.lightning`` makes ``ray.train.lightning.RayDDPStrategy`` fulmen's, while
every other ``ray.…`` name is Ray's own.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from fulmen.integrations.ray._require import require_ray_train

require_ray_train()

from fulmen.integrations.ray.environment import RayLightningEnvironment  # noqa: E402
from fulmen.integrations.ray.prepare import prepare_trainer, ray_checkpoint_file  # noqa: E402
from fulmen.integrations.ray.report_callback import RayTrainReportCallback  # noqa: E402
from fulmen.integrations.ray.strategies import RayDDPStrategy, RayDeepSpeedStrategy, RayFSDPStrategy  # noqa: E402

__all__ = [
    "RayDDPStrategy",
    "RayDeepSpeedStrategy",
    "RayFSDPStrategy",
    "RayLightningEnvironment",
    "RayTrainReportCallback",
    "prepare_trainer",
    "ray_checkpoint_file",
]


class _RayTrainView:
    """``ray.train`` as a converted script sees it: ``.lightning`` is fulmen's, the rest is Ray's."""

    lightning = sys.modules[__name__]

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("ray.train"), name)

    def __repr__(self) -> str:
        return "<ray.train, with .lightning from fulmen.integrations.ray>"


train = _RayTrainView()


def __getattr__(name: str) -> Any:
    # Every other `ray.<name>` of a converted script (ray.init, ray.tune, ...) is Ray's own.
    try:
        return getattr(importlib.import_module("ray"), name)
    except AttributeError:
        message = f"module 'fulmen.integrations.ray' (standing in for 'ray') has no attribute {name!r}"
        raise AttributeError(message) from None
