"""``prepare_trainer``: check a Trainer for Ray Train; ``ray_checkpoint_file``: Ray's checkpoint to resume from."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from fulmen.checkpointing import confinement
from fulmen.integrations.ray._require import require_ray_train, train_context
from fulmen.integrations.ray.environment import RayLightningEnvironment
from fulmen.integrations.ray.report_callback import CHECKPOINT_NAME
from fulmen.integrations.ray.strategies import RayDDPStrategy, RayDeepSpeedStrategy, RayFSDPStrategy
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen import Trainer

RAY_STRATEGIES = (RayDDPStrategy, RayFSDPStrategy, RayDeepSpeedStrategy)


def prepare_trainer(trainer: Trainer) -> Trainer:
    """Check that ``trainer`` is set up for a Ray Train worker; returns the same trainer, unchanged.

    The strategy must be one of ``RayDDPStrategy``, ``RayFSDPStrategy``, ``RayDeepSpeedStrategy``
    and the cluster environment ``RayLightningEnvironment``. As in Ray's own ``prepare_trainer``,
    nothing of the trainer is replaced: ``trainer.fit`` stays the Trainer's method, and resuming
    after a restart is the script's explicit choice, e.g.::

        with ray_checkpoint_file() as ckpt_path:  # None on the first run
            trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path)
    """
    train_context()  # a clear error outside a Ray Train worker
    strategy = trainer.strategy
    if not isinstance(strategy, RAY_STRATEGIES):
        raise MisconfigurationException(
            f"`prepare_trainer` got a Trainer with strategy {type(strategy).__name__}. Under Ray Train pass "
            "`strategy=RayDDPStrategy()` (or RayFSDPStrategy(), RayDeepSpeedStrategy()) from "
            "fulmen.integrations.ray: Ray, not fulmen, starts the workers and sets up their process group."
        )
    environment = strategy.cluster_environment
    if not isinstance(environment, RayLightningEnvironment):
        raise MisconfigurationException(
            f"`prepare_trainer` got a Trainer with cluster environment {environment!r}. Under Ray Train pass "
            "`plugins=[RayLightningEnvironment()]` from fulmen.integrations.ray, which reads ranks from Ray."
        )
    return trainer


@contextlib.contextmanager
def ray_checkpoint_file() -> Iterator[str | None]:
    """The ``checkpoint.ckpt`` that ``RayTrainReportCallback`` put in ``ray.train.get_checkpoint()``,
    local while the block runs; None when Ray holds no checkpoint (the first run) or one without it.

    Pass it to ``trainer.fit(..., ckpt_path=...)`` inside the block: after Ray restarts the worker
    group, the fit resumes where the last reported checkpoint left off.
    """
    checkpoint = require_ray_train().get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        # A checkpoint.ckpt that is a symlink out of Ray's directory is refused before it is read.
        path = confinement.inside(directory, CHECKPOINT_NAME, "checkpoint file")
        if not os.path.exists(path):
            rank_zero_warn(
                f"Ray Train's latest checkpoint ({checkpoint.path}) holds no {CHECKPOINT_NAME} (it was not written "
                "by RayTrainReportCallback): training starts from the beginning. Pass `ckpt_path` to fit to "
                "resume from a file of your own."
            )
            path = None
        else:
            rank_zero_info(f"Ray Train holds a checkpoint to resume from: {path}")
        yield path
