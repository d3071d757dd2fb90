"""``ModelParallelStrategy``: the module lays itself out on a 2-D device mesh (tensor parallel x data parallel).

The strategy creates the process group and a ``DeviceMesh`` with dims ``("data_parallel",
"tensor_parallel")``; the user's code parallelises the model on it, in ``configure_model()``
(Trainer: ``self.device_mesh``) or in a ``parallelize_fn(model, device_mesh)`` (Lite), typically
``parallelize_module`` on ``mesh["tensor_parallel"]`` and ``fully_shard`` on ``mesh["data_parallel"]``.
The strategy then materialises a model built on the meta device, gives every rank of one
tensor-parallel group the same batches, reduces logged values over the data-parallel group and
writes DCP checkpoints (or whole tensors in one file).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.strategies import direct_calls
from fulmen.strategies.compile_check import check_compiled_tensor_parallel
from fulmen.strategies.ddp import DDPStrategy
from fulmen.strategies.dtensor_state import DTensorState
from fulmen.strategies.fsdp import _gather_around
from fulmen.strategies.fsdp_options import BASE_ARGUMENTS, materialize
from fulmen.strategies.optimizer_rebuild import parameter_names, rebuild_optimizer
from fulmen.strategies.wrapped import wrapper_inner
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument

MESH_DIMS = ("data_parallel", "tensor_parallel")
_STEPS = ("training_step", "validation_step", "test_step", "predict_step")
_NOT_HERE = {
    "sharding_strategy": "the module shards itself in configure_model (fully_shard on mesh['data_parallel'])",
    "auto_wrap_policy": "the module chooses its FSDP units in configure_model",
    "activation_checkpointing_policy": "apply torch's checkpoint_wrapper in configure_model",
    "state_dict_type": "use save_distributed_checkpoint=True (a DCP directory) or False (one file)",
}


class ModelParallelStrategy(DTensorState, DDPStrategy):
    """Tensor and data parallelism on a 2-D mesh that the module's own code applies.

    ``data_parallel_size`` x ``tensor_parallel_size`` must equal the number of processes;
    ``"auto"`` means the number of nodes x the devices per node. ``save_distributed_checkpoint``:
    DCP directories (one shard file per rank, re-sharded on load) or, with False, one file of
    whole tensors. ``parallelize_fn(model, device_mesh) -> model`` parallelises at ``setup``
    (Lite; the Trainer calls the module's ``configure_model``).
    """

    def __init__(
        self,
        parallelize_fn: Callable[[nn.Module, Any], nn.Module] | None = None,
        data_parallel_size: int | str = "auto",
        tensor_parallel_size: int | str = "auto",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> None:
        for name in kwargs:
            if name in _NOT_HERE:
                raise MisconfigurationException(f"ModelParallelStrategy does not take `{name}`: {_NOT_HERE[name]}.")
            if name not in BASE_ARGUMENTS:
                raise invalid_argument(
                    name, kwargs[name], f"the keywords of its signature and {sorted(BASE_ARGUMENTS)}"
                )
        super().__init__(process_group_backend=process_group_backend, timeout=timeout, **kwargs)
        if parallelize_fn is not None and not callable(parallelize_fn):
            raise invalid_argument("parallelize_fn", parallelize_fn, "a function `fn(model, device_mesh) -> model`")
        self.parallelize_fn = parallelize_fn
        self._data_parallel_size = _size("data_parallel_size", data_parallel_size)
        self._tensor_parallel_size = _size("tensor_parallel_size", tensor_parallel_size)
        self.save_distributed_checkpoint = bool(save_distributed_checkpoint)
        self.sync_files = True
        self._sharded_modules: list[nn.Module] = []
        self._device_mesh: Any = None

    # ----------------------------------------------------------------------------------- mesh
    @property
    def data_parallel_size(self) -> int:
        size = self._data_parallel_size
        return self.num_nodes if size == "auto" else size

    @property
    def tensor_parallel_size(self) -> int:
        size = self._tensor_parallel_size
        return self.num_processes if size == "auto" else size

    @property
    def device_mesh(self) -> Any:
        """The ``("data_parallel", "tensor_parallel")`` mesh, once the processes have started."""
        if self._device_mesh is None:
            raise RuntimeError(
                "ModelParallelStrategy's device mesh exists once the processes have started: use it in "
                "`configure_model` (Trainer) or after `lite.launch()` (Lite)."
            )
        return self._device_mesh

    def setup_environment(self) -> None:
        super().setup_environment()
        from torch.distributed.device_mesh import init_device_mesh

        data, tensor = self.data_parallel_size, self.tensor_parallel_size
        if data * tensor != self.world_size:
            raise MisconfigurationException(
                f"The sizes `data_parallel_size={data}` and `tensor_parallel_size={tensor}` multiplied should equal "
                f"the world size ({self.world_size}): set them so that their product is the number of processes."
            )
        self._device_mesh = init_device_mesh(self.root_device.type, (data, tensor), mesh_dim_names=MESH_DIMS)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        """One share of the data per tensor-parallel group: its ranks see the same batches."""
        return {"num_replicas": self.data_parallel_size, "rank": self.global_rank // self.tensor_parallel_size}

    # --------------------------------------------------------------------------------- module
    def module_init_context(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager:
        """``empty_init=True``: on the meta device, materialised after the module parallelised itself."""
        return self.meta_init_context() if empty_init else super().module_init_context(empty_init)

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        names = parameter_names(module)
        module = self.setup_module(module)
        return module, [self.setup_optimizer(rebuild_optimizer(opt, names, module)) for opt in optimizers]

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Parallelise (``parallelize_fn``), materialise, and return ``module`` itself: its steps gather
        what FSDP sharded, and it stays callable directly (a wrapper around it is left as it is)."""
        inner = wrapper_inner(module) or module
        if self.parallelize_fn is not None and not any(inner is known for known in self._sharded_modules):
            result = self.parallelize_fn(inner, self.device_mesh)
            if result is not inner and wrapper_inner(module) is not None:
                raise MisconfigurationException("`parallelize_fn` must parallelise the module in place and return it.")
            inner = module = result if result is not None else inner
        self._check_parallelised(inner)
        check_compiled_tensor_parallel(inner, self.root_device, self.tensor_parallel_size)
        materialize(inner, self.root_device)
        if not any(inner is known for known in self._sharded_modules):
            self._sharded_modules.append(inner)
            _register_fsdp_steps(inner)
            direct_calls.allow(inner)
        return module

    def setup_module_for_evaluation(self, module: nn.Module) -> nn.Module:
        return self.setup_module(module)

    def _check_parallelised(self, module: nn.Module) -> None:
        from torch.distributed.tensor import DTensor

        if not any(isinstance(p, DTensor) for p in module.parameters()):
            raise TypeError(
                f"When using the {type(self).__name__}, you are required to override the `configure_model()` hook in "
                "the LightningModule and apply parallelization there (Lite: pass `parallelize_fn`, or parallelise "
                "the model with `lite.strategy.device_mesh` before `setup`). No parameter of the model is a DTensor."
            )

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Any:
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in self._sharded_modules if isinstance(m, FSDPModule)] if enabled else []
        for unit in units:
            unit.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            for unit in units:
                unit.set_requires_gradient_sync(True)

    # ------------------------------------------------------------------------------ collectives
    def all_reduce(self, tensor: Tensor | float, group: Any = None, reduce_op: str | Any = "mean") -> Tensor:
        """Over the data-parallel group by default: the ranks of a tensor-parallel group hold one value."""
        if group is None and self._device_mesh is not None and self.tensor_parallel_size > 1:
            group = self._device_mesh.get_group("data_parallel")
        return super().all_reduce(tensor, group=group, reduce_op=reduce_op)

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def writes_shards(self) -> bool:
        return self.save_distributed_checkpoint

    def state_target(self, module: nn.Module) -> nn.Module | None:
        inner = wrapper_inner(module) or module
        return inner if any(inner is known for known in self._sharded_modules) else None

    def __repr__(self) -> str:
        return (
            f"ModelParallelStrategy(data_parallel_size={self._data_parallel_size!r}, "
            f"tensor_parallel_size={self._tensor_parallel_size!r}, devices={self.num_processes}, "
            f"num_nodes={self.num_nodes}, precision={self.precision!r})"
        )


def _size(name: str, value: Any) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise invalid_argument(name, value, "'auto' or a positive int")


def _register_fsdp_steps(module: nn.Module) -> None:
    """A module that ``fully_shard`` made an FSDP root gathers its parameters in its steps, as in forward."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        _gather_around(module, *_STEPS)
