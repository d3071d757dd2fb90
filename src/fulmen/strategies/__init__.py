"""The shared strategy layer: accelerator, precision, cluster environment and launcher behind one object.

Both front ends (``Trainer`` and ``Lite``) call ``select_strategy`` with the user's flags and
then talk only to the returned ``Strategy``. They import this package's face only (this module,
``fulmen.strategies.environments`` and ``fulmen.strategies.precision``), never its internals:
an import-linter contract checks it.
"""

from fulmen.strategies.accelerators import Accelerator
from fulmen.strategies.dataloaders import has_len, prepare_dataloader, rebuild_dataloader, set_sampler_epoch
from fulmen.strategies.ddp import DDPStrategy
from fulmen.strategies.dp import DataParallelStrategy
from fulmen.strategies.fsdp import FSDPStrategy
from fulmen.strategies.layer_sync import LayerSync, TorchSyncBatchNorm
from fulmen.strategies.model_parallel import ModelParallelStrategy
from fulmen.strategies.optimizer_rebuild import rebind_scheduler
from fulmen.strategies.parallel import ParallelStrategy
from fulmen.strategies.resolver import select_strategy
from fulmen.strategies.resumable_sampler import ResumableSampler, make_resumable, resumable_sampler
from fulmen.strategies.sharded import DDPShardedStrategy
from fulmen.strategies.single_device import SingleDeviceStrategy
from fulmen.strategies.strategy import Strategy, warn_no_backward_sync_unsupported
from fulmen.strategies.wrapped import WrappedModule, WrappedOptimizer, unwrap_module, unwrap_optimizer

__all__ = [
    "Accelerator",
    "DDPShardedStrategy",
    "DDPStrategy",
    "DataParallelStrategy",
    "DeepSpeedStrategy",
    "FSDPStrategy",
    "LayerSync",
    "FaultTolerantStrategy",
    "ModelParallelStrategy",
    "ParallelStrategy",
    "ResumableSampler",
    "SingleDeviceStrategy",
    "Strategy",
    "TorchSyncBatchNorm",
    "WrappedModule",
    "WrappedOptimizer",
    "consolidate_checkpoint",
    "has_len",
    "make_resumable",
    "prepare_dataloader",
    "rebind_scheduler",
    "rebuild_dataloader",
    "resumable_sampler",
    "select_strategy",
    "set_sampler_epoch",
    "unwrap_module",
    "unwrap_optimizer",
    "warn_no_backward_sync_unsupported",
]

_LAZY = {
    # DeepSpeed's strategy imports the deepspeed package only when used; its module stays out of
    # `import fulmen` all the same.
    "DeepSpeedStrategy": "fulmen.strategies.deepspeed",
    "consolidate_checkpoint": "fulmen.checkpointing.consolidation",
    "FaultTolerantStrategy": "fulmen.strategies.fault_tolerant",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fulmen.strategies' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
