"""``prepare_trainer``: check a Trainer for Ray Train, and resume it from Ray's checkpoint."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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
    """Check that ``trainer`` is set up for a Ray Train worker, and let ``fit`` resume Ray's checkpoint.

    The strategy must be one of ``RayDDPStrategy``, ``RayFSDPStrategy``, ``RayDeepSpeedStrategy``
    and the cluster environment ``RayLightningEnvironment``. Afterwards ``trainer.fit`` called
    without ``ckpt_path`` resumes from ``ray.train.get_checkpoint()`` when Ray has one (the worker
    group was restarted after a failure, or the run was restored): the ``checkpoint.ckpt`` that
    ``RayTrainReportCallback`` put in it, continued exactly. Only the first fit of a worker
    process resumes, from the checkpoint Ray held when it started; a later fit in the same
    ``train_func`` starts afresh. An explicit ``ckpt_path`` wins. Returns the same trainer.
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
    if not getattr(trainer.fit, "_fulmen_ray_resumes", False):
        trainer.fit = _resuming_fit(trainer.fit)
    return trainer


#: Whether a fit of this worker process already had its chance to resume.
_resume_offered = False


def _resuming_fit(fit: Any) -> Any:
    @functools.wraps(fit)
    def fit_from_ray_checkpoint(*args: Any, **kwargs: Any) -> Any:
        global _resume_offered
        explicit = kwargs.get("ckpt_path") is not None or len(args) >= 5  # fit(model, train, val, dm, ckpt_path)
        first, _resume_offered = not _resume_offered, True
        if explicit or not first:
            return fit(*args, **kwargs)
        # Ray's latest checkpoint moves on with this worker's own reports: it is the restart
        # point only before the first fit.
        with ray_checkpoint_file() as path:
            if path is not None:
                rank_zero_info(f"Resuming from Ray Train's latest checkpoint: {path}")
            return fit(*args, **kwargs, ckpt_path=path)

    fit_from_ray_checkpoint._fulmen_ray_resumes = True  # type: ignore[attr-defined]
    return fit_from_ray_checkpoint


@contextlib.contextmanager
def ray_checkpoint_file() -> Iterator[str | None]:
    """The fulmen checkpoint inside ``ray.train.get_checkpoint()``, local while the block runs; else None."""
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
        yield path
