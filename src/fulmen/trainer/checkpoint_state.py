"""The Trainer's side of a checkpoint: fill the schema's dict from a run, restore a run from it, find ``ckpt_path``.

The dict itself is documented once, in :mod:`fulmen.checkpointing.schema`; reading and writing
files is :mod:`fulmen.checkpointing`'s job (the strategy calls it).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fulmen.checkpointing import remote, schema
from fulmen.checkpointing.migration import match_module_keys, migrate
from fulmen.checkpointing.schema import LIGHTNING_COMPATIBLE_VERSION, SCHEMA_VERSION
from fulmen.strategies import resumable_sampler
from fulmen.trainer.loops.resume import ResumePoint
from fulmen.trainer.rng import capture_rng
from fulmen.trainer.signals import latest_hpc_checkpoint
from fulmen.trainer.state import TrainerFn
from fulmen.utilities.exceptions import CheckpointError, MisconfigurationException
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn

if TYPE_CHECKING:
    from fulmen.trainer.run import Run
    from fulmen.trainer.trainer import Trainer


def dump_checkpoint(trainer: Trainer, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint dict of the run as it stands. Every rank must call it (it gathers RNG states)."""
    from fulmen import __version__

    module, strategy, run = trainer.lightning_module, trainer.strategy, trainer.current_run
    loops = trainer.state.state_dict()
    checkpoint: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "fulmen_version": __version__,
        # Lightning reads a checkpoint only when it names a Lightning version; fulmen's layout
        # needs no migration there, so Lightning loads its weights and hyperparameters
        # (``load_from_checkpoint``). Resuming a fit across the two is not supported.
        "pytorch-lightning_version": LIGHTNING_COMPATIBLE_VERSION,
        "epoch": trainer.state.current_epoch,
        "global_step": trainer.state.global_step,
        "state_dict": strategy.get_module_state_dict(run.model),
        "loops": loops,
    }
    if not weights_only:
        checkpoint["rng"] = {
            "ranks": strategy.all_gather_object(capture_rng()),
            "epoch_start": strategy.all_gather_object(run.epoch_start_rng) if run.epoch_start_rng is not None else None,
        }
        sampler = resumable_sampler(run.train_dataloader)
        # Gathered whether or not this rank's loader is resumable: every rank takes part alike.
        loader_states = strategy.all_gather_object(sampler.state_dict() if sampler is not None else None)
        if any(state is not None for state in loader_states):
            checkpoint["loader"] = loader_states
        checkpoint["callbacks"] = {}
        for callback in trainer.callbacks:
            state = callback.state_dict()
            if state:
                checkpoint["callbacks"][callback.state_key] = state
        checkpoint["optimizer_states"] = [strategy.get_optimizer_state(opt) for opt in run.real_optimizers()]
        checkpoint["lr_schedulers"] = [config.scheduler.state_dict() for config in run.lr_scheduler_configs]
        precision_state = strategy.precision.state_dict()
        if precision_state:
            checkpoint["precision"] = precision_state
        progress = strategy.progress_state_dict()
        if progress:
            checkpoint["strategy_progress"] = progress
    if module.__dict__.get("_hparams_name") is not None or module.hparams:
        checkpoint["hparams_name"] = module.__dict__.get("_hparams_name")
        checkpoint["hyper_parameters"] = dict(module.hparams)
    datamodule = trainer.datamodule
    if datamodule is not None:
        if datamodule.hparams:
            checkpoint["datamodule_hparams_name"] = datamodule.__dict__.get("_hparams_name")
            checkpoint["datamodule_hyper_parameters"] = dict(datamodule.hparams)
        state = datamodule.state_dict()
        if state:
            checkpoint["datamodule"] = state
    if not weights_only:
        for callback in trainer.callbacks:
            callback.on_save_checkpoint(trainer, module, checkpoint)
        module.on_save_checkpoint(checkpoint)
    return checkpoint


def load_checkpoint_file(trainer: Trainer, path: str, weights_only: bool = True) -> dict[str, Any]:
    """Read ``path`` on this rank and bring it to the current schema."""
    checkpoint = trainer.strategy.load_checkpoint(path, weights_only=weights_only)
    return migrate(checkpoint, path)


def restore_checkpoint(run: Run, checkpoint: dict[str, Any], fn: TrainerFn) -> None:
    """Load weights and, for fit, everything a resumed run needs to continue as if never stopped."""
    trainer, strategy, module = run.trainer, run.strategy, run.module
    for callback in trainer.callbacks:
        callback.on_load_checkpoint(trainer, module, checkpoint)
    module.on_load_checkpoint(checkpoint)
    state_dict = match_module_keys(checkpoint["state_dict"], module)
    strategy.load_module_state_dict(run.model, state_dict, strict=module.strict_loading)
    if run.datamodule is not None and "datamodule" in checkpoint:
        run.datamodule.load_state_dict(checkpoint["datamodule"])
    if fn != TrainerFn.FITTING:
        rank_zero_info(f"Loaded model weights from the checkpoint at {run.ckpt_path}")
        return
    rank_zero_info(f"Restoring states from the checkpoint path at {run.ckpt_path}")
    optimizers = run.real_optimizers()
    saved = checkpoint.get("optimizer_states")
    if saved is None or (not saved and optimizers):
        raise CheckpointError(
            f"`fit` cannot resume from {run.ckpt_path!r}: it holds {schema.contents(checkpoint)}. Resuming needs "
            "a checkpoint saved during `fit` (ModelCheckpoint's files, `last.ckpt`, `trainer.save_checkpoint` "
            f"inside fit). To train on from these weights, load them with `{type(module).__name__}."
            "load_from_checkpoint(path)` and call `fit` without `ckpt_path`."
        )
    if len(saved) != len(optimizers):
        raise CheckpointError(
            f"The checkpoint holds {len(saved)} optimizer state(s), but `configure_optimizers` returned "
            f"{len(optimizers)}. Resume with the same optimizers the checkpoint was written with."
        )
    for optimizer, state in zip(optimizers, saved):
        strategy.load_optimizer_state(optimizer, state)
    for config, state in zip(run.lr_scheduler_configs, checkpoint.get("lr_schedulers", [])):
        config.scheduler.load_state_dict(state)
    states = checkpoint.get("callbacks", {})
    missing = sorted(set(states) - {callback.state_key for callback in trainer.callbacks})
    if missing:
        rank_zero_warn(
            "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided "
            f"during `Trainer` instantiation. Please add the following callbacks: {missing}; their state is not "
            "restored."
        )
    for callback in trainer.callbacks:
        if callback.state_key in states:
            callback.load_state_dict(states[callback.state_key])
    if checkpoint.get("precision"):
        strategy.precision.load_state_dict(checkpoint["precision"])
    if checkpoint.get("strategy_progress"):
        strategy.load_progress_state_dict(checkpoint["strategy_progress"])
    trainer.state.load_state_dict(checkpoint["loops"])
    max_epochs = run.config.max_epochs
    if max_epochs is not None and max_epochs != -1 and trainer.current_epoch > max_epochs:
        raise MisconfigurationException(
            f"You restored a checkpoint with current_epoch={trainer.current_epoch}, but you have set "
            f"Trainer(max_epochs={max_epochs}). Raise `max_epochs` to train on from it."
        )
    rng = checkpoint.get("rng")
    resume_rng = epoch_start_rng = None
    if rng:
        rank = strategy.global_rank
        ranks = rng["ranks"]
        if len(ranks) != strategy.world_size:
            rank_zero_warn(
                f"The checkpoint was written by {len(ranks)} process(es) and is resumed on {strategy.world_size}: "
                "random streams restart from rank 0's, so the run is not bit-identical to an uninterrupted one."
            )
        # On another number of processes every rank takes rank 0's: they draw one epoch order alike.
        same_world = len(ranks) == strategy.world_size
        resume_rng = ranks[rank] if same_world else ranks[0]
        epoch_start = rng.get("epoch_start")
        epoch_start_rng = (epoch_start[rank] if same_world else epoch_start[0]) if epoch_start else None
    run.resume_point = ResumePoint(rng=resume_rng, epoch_start_rng=epoch_start_rng, loader=checkpoint.get("loader"))


def resolve_checkpoint_path(trainer: Trainer, ckpt_path: str | os.PathLike | None, fn: TrainerFn) -> str | None:
    """``"last"``, ``"best"``, ``"hpc"`` or a path, to the file to load (``None``: start fresh)."""
    if ckpt_path is None:
        # A requeued SLURM job resumes from the checkpoint its predecessor saved on the signal.
        if fn == TrainerFn.FITTING and _under_slurm_requeue(trainer):
            return latest_hpc_checkpoint(trainer.default_root_dir)
        return None
    if not isinstance(ckpt_path, (str, os.PathLike)):
        raise MisconfigurationException(
            f"`ckpt_path={ckpt_path!r}` is not valid. Accepted: a path, 'last', 'best', 'hpc' or None."
        )
    ckpt_path = os.fspath(ckpt_path)
    if ckpt_path == "best":
        return _best_path(trainer, fn)
    if ckpt_path == "last":
        return _last_path(trainer, fn)
    if ckpt_path == "hpc":
        path = latest_hpc_checkpoint(trainer.default_root_dir)
        if path is None:
            raise MisconfigurationException(f"`ckpt_path='hpc'`: no hpc_ckpt_N.ckpt in {trainer.default_root_dir!r}.")
        return path
    if trainer.strategy.checkpoint_io.paths_are_files and not remote.file_exists(ckpt_path):
        raise remote.CheckpointNotFoundError(
            f"`ckpt_path={ckpt_path!r}` does not exist. Accepted: an existing checkpoint file, 'last', 'best', "
            "'hpc' or None."
        )
    return ckpt_path


def default_evaluation_ckpt_path(trainer: Trainer, fn: TrainerFn, model_given: bool, ckpt_path: Any) -> Any:
    """validate/test/predict without a model or a ``ckpt_path`` after a fit: the best checkpoint of
    that fit (``"best"``), with Lightning's warning; otherwise ``ckpt_path`` as given."""
    if model_given or ckpt_path is not None or trainer.lightning_module is None:
        return ckpt_path
    name = fn.value
    rank_zero_warn(
        f"`.{name}(ckpt_path=None)` was called without a model. The best model of the previous `fit` call will be "
        f"used. You can pass `.{name}(ckpt_path='best')` to use the best model or `.{name}(ckpt_path='last')` to "
        "use the last model. If you pass a value, this warning will be silenced."
    )
    return "best"


def _best_path(trainer: Trainer, fn: TrainerFn) -> str:
    name = fn.value
    if fn == TrainerFn.FITTING:
        raise MisconfigurationException("`ckpt_path='best'` is for validate/test/predict; fit resumes with 'last'.")
    callback = trainer.checkpoint_callback
    if len(trainer.checkpoint_callbacks) > 1:
        rank_zero_warn(
            f'`.{name}(ckpt_path="best")` is called with Trainer configured with multiple `ModelCheckpoint` '
            "callbacks. It will use the best checkpoint path from first checkpoint callback."
        )
    if callback is None:
        raise MisconfigurationException(
            f'`.{name}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured. Add a ModelCheckpoint to '
            "the fit, or pass a checkpoint path."
        )
    best = getattr(callback, "best_model_path", "")
    if not best:
        if trainer.fast_dev_run:
            raise MisconfigurationException(
                f'You cannot execute `.{name}(ckpt_path="best")` with `fast_dev_run=True`. Please pass an exact '
                f"checkpoint path to `.{name}(ckpt_path=...)`"
            )
        raise MisconfigurationException(
            f'`.{name}(ckpt_path="best")` is set but `ModelCheckpoint` is not configured to save the best model: '
            "no best model was saved during fit. Pass a path, or fit with a ModelCheckpoint that saves "
            "(save_top_k != 0)."
        )
    return best


def _last_path(trainer: Trainer, fn: TrainerFn) -> str | None:
    candidates: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        candidates |= callback.resume_candidates(trainer)
    hpc = latest_hpc_checkpoint(trainer.default_root_dir)
    if hpc is not None:
        candidates.add(hpc)
    if not candidates:
        rank_zero_warn(
            f'.{fn.value}(ckpt_path="last") is set, but there is no last checkpoint available. No checkpoint will be '
            "loaded. HINT: Set `ModelCheckpoint(..., save_last=True)`."
        )
        return None
    return max(candidates, key=_modified_time)


def _modified_time(path: str) -> float:
    fs = remote.get_filesystem(path)
    try:
        modified = fs.modified(path)
        return modified.timestamp()
    except (NotImplementedError, OSError, AttributeError):
        return 0.0


def _under_slurm_requeue(trainer: Trainer) -> bool:
    environment = trainer.strategy.cluster_environment
    return environment is not None and environment.auto_requeue
