"""DeepSpeedStrategy's checkpoints: a ZeRO checkpoint directory written by every rank and published whole.

With a training engine, the module's and the optimizer's states stay in the engine's shards
(``ShardedStateRef`` stands for them in fulmen's state), every rank writes its shard in parallel
(:mod:`fulmen.checkpointing.sharded_dir`) and rank zero publishes the directory; without one
(evaluation, ZeRO-3 weights gathered) a checkpoint is one ordinary file. What the files of a
ZeRO directory hold, and how they are checked and merged, is :mod:`fulmen.checkpointing.zero_format`;
here are the engine's calls.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from torch import nn
from torch.optim import Optimizer

from fulmen.checkpointing import async_writer, sharded_dir, zero_format
from fulmen.checkpointing.sharded_dir import ShardedStateRef
from fulmen.strategies.wrapped import unwrap_module, unwrap_optimizer
from fulmen.utilities.exceptions import CheckpointError


class DeepSpeedCheckpointing:
    """The checkpoint methods of :class:`~fulmen.strategies.deepspeed.DeepSpeedStrategy` (a mixin before
    ``DDPStrategy`` in its bases, so ``super()`` here is the ordinary one-file checkpoint)."""

    _engine: Any
    sync_files: bool
    exclude_frozen_parameters: bool

    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """A training engine's weights stay in its shards (stage 1-2: the dict also holds them, as the
        model is replicated); a partitioned model without one is gathered whole."""
        if self._training_engine(module) is not None:
            user = unwrap_module(module)
            return ShardedStateRef("module", {} if self.zero_stage_3 else user.state_dict())
        user = unwrap_module(module)
        if not _is_partitioned(user):
            return user.state_dict()
        deepspeed = self._deepspeed()
        with deepspeed.zero.GatheredParameters(list(user.parameters())):
            return {k: v.detach().clone() for k, v in user.state_dict().items()}

    def load_module_state_dict(self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True) -> Any:
        if isinstance(state_dict, ShardedStateRef):
            return None  # the engine restored it from the shards
        user = unwrap_module(module)
        context: contextlib.AbstractContextManager = contextlib.nullcontext()
        if _is_partitioned(user):
            context = self._deepspeed().zero.GatheredParameters(list(user.parameters()), modifier_rank=0)
        with context:
            result = user.load_state_dict(state_dict, strict=strict)
        engine = self._training_engine(module) if self._engine is not None else None
        if engine is not None and hasattr(engine.optimizer, "refresh_fp32_params"):
            engine.optimizer.refresh_fp32_params()  # the fp32 master copy follows the new weights
        return result

    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        if self._engine is not None and self._owns_optimizer(optimizer):
            return ShardedStateRef("optimizer")
        return super().get_optimizer_state(optimizer)

    def load_optimizer_state(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        if isinstance(state, ShardedStateRef):
            return
        if self._engine is not None and self._owns_optimizer(optimizer):
            raise CheckpointError(
                "This checkpoint holds a whole optimizer state (one file, from another strategy or consolidated); "
                "a DeepSpeed optimizer resumes from a DeepSpeed checkpoint directory only. Load the weights alone "
                "(`Model.load_from_checkpoint`) and start a new fit."
            )
        super().load_optimizer_state(optimizer, state)

    def _owns_optimizer(self, optimizer: Optimizer) -> bool:
        inner = unwrap_optimizer(optimizer)
        ds_optimizer = self._engine.optimizer
        return inner is ds_optimizer or inner is getattr(ds_optimizer, "optimizer", None)

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        filepath: str,
        storage_options: dict | None = None,
        *,
        async_save: bool = False,
    ) -> None:
        """With a training engine: a checkpoint directory, every rank writing its shard in parallel and
        rank zero publishing it at once. Otherwise (evaluation, weights gathered) one file.

        ``async_save``: DeepSpeed's engine builds its files' states in the loop, and fulmen's
        checkpoint engine copies each into CPU memory instead of writing it; the writes, fsync
        and publish then run on the checkpoint writer thread (collectives on a group of their own).
        """
        engine = self._engine
        if engine is None or not _holds_refs(checkpoint):
            return super().save_checkpoint(checkpoint, filepath, storage_options, async_save=async_save)
        self.wait_for_checkpoint_saves()  # an earlier save is published first
        token = self.broadcast(sharded_dir.new_token() if self.is_global_zero else None)
        staging = sharded_dir.staging_path(filepath, token)
        if self.is_global_zero:
            sharded_dir.remove_stale_staging(filepath)
        files = engine.checkpoint_engine.deferred = [] if async_save else None
        try:
            engine.save_checkpoint(
                staging,
                tag=zero_format.TAG,
                client_state={},
                save_latest=False,
                exclude_frozen_parameters=self.exclude_frozen_parameters,
            )
        finally:
            engine.checkpoint_engine.deferred = None
        state = None
        if self.is_global_zero:
            state = sharded_dir.to_placeholders(checkpoint)
            state[sharded_dir.SHARDED_KEY] = zero_format.sharded_entry(
                self.zero_stage, self.world_size, _module_prefix(engine.module)
            )
        if not async_save:
            self._finish_save(staging, filepath, state, group=None)
            return
        group, state = self.checkpoint_process_group(), async_writer.snapshot(state)
        write, deferred = engine.checkpoint_engine.write_deferred, files

        def job() -> None:
            write(deferred)
            self._finish_save(staging, filepath, state, group)

        async_writer.writer().submit(job, f"Asynchronous DeepSpeed save to {filepath!r} failed")

    def _finish_save(self, staging: str, filepath: str, state: dict[str, Any] | None, group: Any) -> None:
        """fulmen's state beside the shards, every rank's share fsynced, then rank zero publishes."""
        if state is not None:  # while the other ranks still write: the folder is not published yet
            sharded_dir.write_state(staging, state)
        if self.sync_files:
            sharded_dir.fsync_share(staging, self.global_rank, self.world_size)
        self.publish_checkpoint_dir(staging, filepath, group)

    def load_checkpoint(
        self, filepath: str, map_location: Any = None, weights_only: bool = True, storage_options: dict | None = None
    ) -> dict[str, Any]:
        """A directory: the training engine restores its shards (same number of ranks) and fulmen's
        state comes back with references in their place; without one, the weights are merged."""
        local = sharded_dir.local_path(filepath) if not storage_options else None
        if local is None or not os.path.isdir(local):
            return super().load_checkpoint(filepath, map_location, weights_only, storage_options)
        from fulmen.checkpointing.consolidation import load_consolidated, read_sharded_state

        local, state = read_sharded_state(local, weights_only)
        meta = state.pop(sharded_dir.SHARDED_KEY)
        engine = self._engine
        if engine is None or meta.get("format") != zero_format.FORMAT:
            return load_consolidated(local, weights_only)
        zero_format.check_shards(local, meta.get("tag"), meta.get("world_size"), meta.get("zero_stage"), real=True)
        if meta["world_size"] != self.world_size or meta["zero_stage"] != self.zero_stage:
            raise CheckpointError(
                f"{local!r} was written by ZeRO stage {meta['zero_stage']} on {meta['world_size']} processes; this run "
                f"is stage {self.zero_stage} on {self.world_size}. Resume with the same stage and number of "
                "processes, or consolidate it (`fulmen checkpoint consolidate`) and load the weights alone."
            )
        load_path, _ = engine.load_checkpoint(
            local,
            tag=meta["tag"],
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
            load_module_strict=True,
        )
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the shards in {local!r}.")
        return sharded_dir.from_placeholders(state)


def _is_partitioned(module: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


def _holds_refs(checkpoint: dict[str, Any]) -> bool:
    return any(
        isinstance(v, ShardedStateRef) or (isinstance(v, list) and any(isinstance(i, ShardedStateRef) for i in v))
        for v in checkpoint.values()
    )


def _module_prefix(module: nn.Module) -> str:
    """How the engine's parameter names start before the user's module's own (the Trainer's router: 'module.')."""
    user = unwrap_module(module)
    for name, sub in module.named_modules():
        if sub is user:
            return f"{name}." if name else ""
    return ""


def make_checkpoint_engine(config: Any) -> Any:
    """DeepSpeed's torch checkpoint engine, loading with the weights-only unpickler instead of full pickle."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        #: A list while a save is deferred: ``save`` copies each file's state into it instead of writing.
        deferred: list[tuple[Any, str]] | None = None

        def save(self, state_dict: Any, path: str) -> None:
            if self.deferred is None:
                return super().save(state_dict, path)
            self.deferred.append((async_writer.snapshot(state_dict), path))
            return None

        def write_deferred(self, files: list[tuple[Any, str]]) -> None:
            """Write what deferred saves copied aside, as ``save`` would have written it."""
            for state_dict, path in files:
                super().save(state_dict, path)

        def load(self, path: str, map_location: Any = None) -> Any:
            return zero_format.load_file(path, real=True, map_location=map_location)

    return WeightsOnlyCheckpointEngine(config)
