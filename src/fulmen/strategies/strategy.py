"""``Strategy``: the one object the Trainer and Lite ask every device, distributed and precision question.

A strategy owns an accelerator (which devices), a precision (which numbers), a cluster
environment (which rank am I) and a launcher (who starts the other processes). Its methods
take plain torch objects (modules, optimizers, tensors, dataloaders), never a Trainer.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.checkpointing.checkpoint_io import AsyncCheckpointIO, CheckpointIO, TorchCheckpointIO
from fulmen.strategies import collectives
from fulmen.strategies.accelerators import Accelerator
from fulmen.strategies.environments import ClusterEnvironment
from fulmen.strategies.launchers import Launcher
from fulmen.strategies.layer_sync import LayerSync, TorchSyncBatchNorm
from fulmen.strategies.precision import Precision
from fulmen.strategies.wrapped import WrappedOptimizer, unwrap_module, unwrap_optimizer
from fulmen.utilities.annotations import resolve_init_annotations
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.init import skip_parameter_init
from fulmen.utilities.rank_zero import rank_zero_warn

log = logging.getLogger("fulmen")


class Strategy(ABC):
    #: Whether ``no_backward_sync`` can really skip gradient synchronisation.
    supports_no_backward_sync: bool = False
    #: How many nodes the job spans; distributed strategies take it from the flags.
    num_nodes: int = 1
    #: The torch.distributed backend ("gloo", "nccl") the user asked for; None: none asked for
    #: (one process, or the strategy picks one for its device when it joins the group).
    process_group_backend: str | None = None
    #: This node's devices as set by the strategy or the resolver; empty: only ``root_device``.
    _parallel_devices: tuple[torch.device, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        resolve_init_annotations(cls)  # real types in the signature, as Lightning's have

    def __init__(
        self,
        accelerator: Accelerator | None = None,
        precision: Precision | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.precision = precision if precision is not None else Precision()
        self.cluster_environment = cluster_environment
        self.launcher: Launcher | None = None
        if checkpoint_io is not None:
            self.checkpoint_io = checkpoint_io

    # ----------------------------------------------------------------------------------- where
    @property
    @abstractmethod
    def root_device(self) -> torch.device:
        """The device this process computes on."""

    @property
    def parallel_devices(self) -> list[torch.device]:
        """The devices of this node's processes, one per local rank; one process: ``[root_device]``."""
        return list(self._parallel_devices) or [self.root_device]

    @parallel_devices.setter
    def parallel_devices(self, devices: list[torch.device] | None) -> None:
        self._parallel_devices = tuple(devices or ())

    @property
    def global_rank(self) -> int:
        return self.cluster_environment.global_rank() if self.cluster_environment else 0

    @property
    def local_rank(self) -> int:
        return self.cluster_environment.local_rank() if self.cluster_environment else 0

    @property
    def node_rank(self) -> int:
        return self.cluster_environment.node_rank() if self.cluster_environment else 0

    @property
    def world_size(self) -> int:
        return self.cluster_environment.world_size() if self.cluster_environment else 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def device_mesh(self) -> Any:
        """The ``DeviceMesh`` that a module lays itself out on; None where the strategy has none."""
        return None

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """``num_replicas``/``rank`` for a DistributedSampler, or None when one process sees all data."""
        return None

    # ----------------------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        """Prepare this process: select the device; distributed strategies join the process group."""
        if self.accelerator is not None:
            self.accelerator.setup_device(self.root_device)

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        """Set up a model with its optimizers; engines that need both at once (DeepSpeed) override this."""
        module = self.setup_module(module)
        return module, [self.setup_optimizer(opt) for opt in optimizers]

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Wrap the module for this strategy (DDP, ...). Conversion and placement happen before."""
        return module

    def module_to_device(self, module: nn.Module) -> None:
        module.to(self.root_device)

    def convert_module(self, module: nn.Module) -> nn.Module:
        return self.precision.convert_module(module)

    #: A ``LayerSync`` plugin (``plugins=[TorchSyncBatchNorm()]``): the front ends convert the module
    #: with it, as with ``sync_batchnorm=True``; None: only that flag converts, with TorchSyncBatchNorm.
    layer_sync: LayerSync | None = None

    def convert_sync_batchnorm(self, module: nn.Module) -> nn.Module:
        """Replace the BatchNorm layers in ``module`` with SyncBatchNorm when several processes train
        (or convert it with the ``layer_sync`` plugin given).

        Batch statistics are then computed over the global batch, not each rank's slice. The
        children are replaced in place, so the returned object is ``module`` itself (a
        LightningModule keeps its identity, hooks and attributes); a module that is itself a
        BatchNorm layer is returned converted. One process has nothing to synchronise: the
        module comes back unchanged. Call it before ``setup_module`` wraps the module.
        """
        if self.world_size <= 1:
            return module
        return (self.layer_sync or TorchSyncBatchNorm()).apply(module)

    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        return optimizer

    def setup_module_for_evaluation(self, module: nn.Module) -> nn.Module:
        """The module as validate/test/predict run it; engines whose parameters are partitioned
        (ZeRO-3) wrap it so that forward can gather them. Others run it as it is."""
        return module

    def configure_training(
        self,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: Any = None,
    ) -> None:
        """The front end's accumulation and clipping, told before ``setup_module_and_optimizers``.

        Engines that accumulate and clip inside their own step (DeepSpeed) write them into their
        config; every other strategy lets the front end do it and ignores this.
        """

    def tensor_init_context(self) -> contextlib.AbstractContextManager:
        """Where to create tensors: on this process's device, in the precision's dtype."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.root_device)
        stack.enter_context(self.precision.tensor_init_context())
        return stack

    def module_init_context(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager:
        """Where to instantiate a model: on the right device and in the right dtype.

        ``empty_init=True`` skips the ``torch.nn.init`` calls of the layers' constructors (the
        weights are left as uninitialised memory), for a model whose weights a checkpoint fills
        next. ``None`` lets the strategy decide; one process initialises as usual.
        """
        stack = contextlib.ExitStack()
        if empty_init:
            stack.enter_context(skip_parameter_init())
        stack.enter_context(self.root_device)
        stack.enter_context(self.precision.module_init_context())
        return stack

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        return move_data_to_device(batch, device or self.root_device)

    # ----------------------------------------------------------------------------------- train
    def forward_context(self) -> contextlib.AbstractContextManager:
        return self.precision.forward_context()

    def backward(
        self,
        tensor: Tensor,
        module: nn.Module | None = None,
        *args: Any,
        backward_fn: Callable[..., None] | None = None,
        **kwargs: Any,
    ) -> None:
        """Backward through precision scaling; ``backward_fn(tensor, *args, **kwargs)`` replaces
        ``tensor.backward`` (a module's own ``backward`` hook), inside the same scaling and engine work."""
        tensor = self.precision.pre_backward(tensor, module)
        self.precision.backward(tensor, module, *args, backward_fn=backward_fn, **kwargs)
        self.precision.post_backward(tensor, module)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        if isinstance(optimizer, WrappedOptimizer):
            optimizer = optimizer.inner
        return self.precision.optimizer_step(optimizer, closure=closure, **kwargs)

    #: Whether the latest ``optimizer_step`` changed the weights. Always True, except where replica
    #: groups vote on each step (``FaultTolerantStrategy`` sets it per step): a step that did not
    #: commit left the weights and optimizer untouched, and the loops do not count it. A plain
    #: attribute, not a property: the loops read it on every step.
    last_step_committed: bool = True

    def register_replica_state(
        self, key: str, state_dict: Callable[[], Any], load_state_dict: Callable[[Any], None]
    ) -> None:
        """State that a restarted replica group receives from a live peer (loop counters, LR schedulers).

        Only fault-tolerant strategies have peers to heal from; the others ignore it.
        """

    def sync_replicas(self) -> None:
        """Before the training loop: join the live replica groups (a restarted group is healed here).

        Only fault-tolerant strategies have replica groups; the others have nothing to do.
        """

    def progress_state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the strategy's own progress, for a resumed fit; empty for most
        (``FaultTolerantStrategy``: where the epoch's exactly-once order stands)."""
        return {}

    def load_progress_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what ``progress_state_dict`` saved: a fit resumed from a checkpoint, before its loop."""

    def process_train_dataloader(self, dataloader: Any) -> Any:
        """The training loader as this strategy feeds it; the same object except where replica groups
        assign each step's samples (``FaultTolerantStrategy``: every sample once per epoch across failures)."""
        return dataloader

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
    ) -> Tensor:
        self.precision.unscale_gradients(unwrap_optimizer(optimizer))
        parameters = _optimizer_parameters(optimizer)
        return torch.nn.utils.clip_grad_norm_(
            parameters, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
        )

    def clip_gradients_value(self, module: nn.Module, optimizer: Optimizer, clip_val: float) -> None:
        self.precision.unscale_gradients(unwrap_optimizer(optimizer))
        torch.nn.utils.clip_grad_value_(_optimizer_parameters(optimizer), clip_val)

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Any:
        """Skip gradient synchronisation inside the block (gradient accumulation).

        One process has nothing to synchronise, so the base is a no-op.
        """
        yield

    # ----------------------------------------------------------------------------- collectives
    def all_gather(self, tensor: Tensor, group: Any = None, sync_grads: bool = False) -> Tensor | list[Tensor]:
        """``(world_size, *shape)`` from every rank; one process returns ``tensor`` as it is."""
        return collectives.all_gather(tensor, group=group, sync_grads=sync_grads)

    def all_reduce(self, tensor: Tensor | float, group: Any = None, reduce_op: str | Any = "mean") -> Tensor:
        if not isinstance(tensor, Tensor):
            tensor = torch.tensor(tensor, device=self.root_device)
        return collectives.all_reduce(tensor, group=group, reduce_op=reduce_op)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return collectives.broadcast(obj, src=src)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj`` (a list indexed by global rank) on every rank."""
        return collectives.all_gather_object(obj)

    def barrier(self, name: str | None = None) -> None:
        collectives.barrier()

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """Agree on a flag: ``all=True`` needs every rank to say yes, ``all=False`` any rank."""
        if self.world_size == 1:
            return decision
        # Every rank votes, whatever group a subclass reduces logged values over by default.
        votes = collectives.all_reduce(torch.tensor(int(decision), device=self.root_device), reduce_op="sum")
        return bool(votes == self.world_size) if all else bool(votes > 0)

    # ------------------------------------------------------------------------------ checkpoint
    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        return unwrap_module(module).state_dict()

    def load_module_state_dict(self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True) -> Any:
        return unwrap_module(module).load_state_dict(state_dict, strict=strict)

    def precision_for(self, name: str) -> Precision | None:
        """The precision plugin for the flag's ``name`` (``"bf16-mixed"``, ...), when this strategy's engine
        handles precision itself (DeepSpeed, FSDP); None lets the resolver pick the plain plugin."""
        return None

    def parameter_numel(self, parameter: Tensor) -> int:
        """How many elements ``parameter`` has in the whole model (``ModelSummary`` counts with it); an
        engine that keeps only a slice of it in each process says the whole size."""
        return parameter.numel()

    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        return unwrap_optimizer(optimizer).state_dict()

    def load_optimizer_state(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        unwrap_optimizer(optimizer).load_state_dict(state)

    # The plugin that writes, reads and removes whole-file checkpoints; None: TorchCheckpointIO.
    _checkpoint_io: CheckpointIO | None = None

    @property
    def checkpoint_io(self) -> CheckpointIO:
        """How whole-file checkpoints are written, read and removed (Lightning's ``CheckpointIO``
        plugin); by default ``TorchCheckpointIO``: atomic writes, weights-only reads."""
        if self._checkpoint_io is None:
            self._checkpoint_io = TorchCheckpointIO()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: CheckpointIO) -> None:
        if not isinstance(io, CheckpointIO):
            raise TypeError(
                f"`checkpoint_io={io!r}` is not a CheckpointIO. Accepted: TorchCheckpointIO(), AsyncCheckpointIO() "
                "or a subclass of CheckpointIO (fulmen.plugins)."
            )
        self._checkpoint_io = io

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        filepath: str,
        storage_options: dict | None = None,
        *,
        async_save: bool = False,
    ) -> None:
        """Rank zero writes ``checkpoint`` through ``checkpoint_io`` (atomically by default); the other
        ranks return at once.

        With ``async_save`` (or an ``AsyncCheckpointIO``), rank zero waits for its pending save,
        copies the tensors into CPU memory and returns; the write runs in the background
        (:mod:`fulmen.checkpointing.async_writer`). A synchronous save waits for the pending one first.
        """
        if not self.is_global_zero:
            return
        from fulmen.checkpointing import async_writer

        io = self.checkpoint_io
        if async_save and not io.asynchronous:
            io = AsyncCheckpointIO(io)
        if not io.asynchronous:
            async_writer.writer().wait()
        io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def remove_checkpoint(self, filepath: str) -> None:
        """Rank zero deletes the checkpoint at ``filepath`` through ``checkpoint_io``."""
        if self.is_global_zero:
            self.checkpoint_io.remove_checkpoint(filepath)

    def after_checkpoint_saves(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (on this process) once every checkpoint handed to :meth:`save_checkpoint` is published.

        At once when nothing is pending; otherwise in the background, right after the pending
        write, and not at all if that write failed (its error is raised by the next save or wait).
        """
        from fulmen.checkpointing import async_writer

        async_writer.writer().then(fn)

    def wait_for_checkpoint_saves(self) -> None:
        """Block until this process's pending checkpoint saves are published; raise a failed one's error."""
        from fulmen.checkpointing import async_writer

        async_writer.writer().wait()

    def load_checkpoint(
        self, filepath: str, map_location: Any = None, weights_only: bool = True, storage_options: dict | None = None
    ) -> dict[str, Any]:
        """Every rank reads the file itself through ``checkpoint_io``, mapped onto the CPU unless told otherwise."""
        io = self.checkpoint_io
        if storage_options:  # fsspec options: fulmen's CheckpointIO takes them, Lightning's signature has none
            return io.load_checkpoint(filepath, map_location, weights_only, storage_options=storage_options)
        return io.load_checkpoint(filepath, map_location=map_location, weights_only=weights_only)

    # -------------------------------------------------------------------------------- teardown
    def teardown(self) -> None:
        from fulmen.checkpointing import async_writer

        async_writer.writer().release()  # the CPU copy kept for the next asynchronous save
        if self._checkpoint_io is not None:
            self._checkpoint_io.teardown()
        self.precision.teardown()
        if self.accelerator is not None:
            self.accelerator.teardown()
        if self.cluster_environment is not None:
            self.cluster_environment.teardown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(accelerator={self.accelerator!r}, precision={self.precision!r})"


def _optimizer_parameters(optimizer: Optimizer) -> Iterable[Tensor]:
    return [p for group in unwrap_optimizer(optimizer).param_groups for p in group["params"]]


def warn_no_backward_sync_unsupported(strategy: Strategy) -> None:
    rank_zero_warn(
        f"`no_backward_sync` has no effect with {type(strategy).__name__}: gradients are synchronised "
        "on every backward. The block runs normally."
    )
