"""``strategy="fsdp"``: fully sharded data parallel with torch's ``fully_shard`` (FSDP2).

Parameters, gradients and optimizer state are sharded over the ranks; each rank holds a
slice. ``sharding_strategy`` keeps the familiar names: ``FULL_SHARD`` (reshard after forward),
``SHARD_GRAD_OP`` (keep parameters gathered between forward and backward), ``NO_SHARD``
(plain data parallel) and ``HYBRID_SHARD`` (shard within a node, replicate across nodes).
``state_dict_type="full"`` (the default) writes checkpoints with whole tensors, gathered on rank
zero, that load anywhere; ``"sharded"`` writes a directory with one shard file per rank
(:mod:`fulmen.checkpointing.dcp_format`). Options are read in :mod:`fulmen.strategies.fsdp_options`.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from fulmen.strategies import direct_calls
from fulmen.strategies import fsdp_options as options
from fulmen.strategies.ddp import DDPStrategy
from fulmen.strategies.dtensor_state import DTensorState
from fulmen.strategies.fsdp_options import FSDPPrecision, Policy
from fulmen.strategies.optimizer_rebuild import parameter_names, rebuild_optimizer
from fulmen.strategies.precision import Precision
from fulmen.strategies.wrapped import find_wrapped, wrapper_inner
from fulmen.utilities.exceptions import MisconfigurationException


class FSDPStrategy(DTensorState, DDPStrategy):
    """Shards with FSDP2. Options beyond the DDP ones:

    - ``sharding_strategy``, ``cpu_offload`` (bool or FSDP1's ``CPUOffload``);
    - ``auto_wrap_policy``: module classes (or a predicate) sharded as their own unit;
    - ``mixed_precision``: a ``MixedPrecisionPolicy`` (or FSDP1's ``MixedPrecision``), which
      takes the place of the one ``precision=`` implies;
    - ``activation_checkpointing_policy`` (``activation_checkpointing`` is the older name):
      module classes (or a predicate) whose activations are recomputed in backward;
    - ``state_dict_type``: ``"full"`` or ``"sharded"`` checkpoints;
    - ``device_mesh``: ``(replicate, shard)`` sizes (or a 2-D ``DeviceMesh``) for hybrid sharding
      (HSDP): shards within each group of ``shard`` ranks, replicas across the groups.

    Any other keyword is refused by name. Under ``init_module()`` the model is created on the
    meta device and materialised shard by shard (``reset_parameters``) when it is set up.
    """

    supports_no_backward_sync = True

    def __init__(
        self,
        sharding_strategy: Any = "FULL_SHARD",
        cpu_offload: Any = False,
        auto_wrap_policy: Policy = None,
        mixed_precision: Any = None,
        activation_checkpointing_policy: Policy = None,
        activation_checkpointing: Policy = None,
        state_dict_type: Any = "full",
        device_mesh: Any = None,
        **kwargs: Any,
    ) -> None:
        options.check_extra_arguments(kwargs)
        super().__init__(**kwargs)
        self.sharding_strategy = options.sharding_strategy_name(sharding_strategy)
        self._hsdp_mesh = options.hybrid_mesh(device_mesh, self.sharding_strategy)
        if self._hsdp_mesh is not None and self.sharding_strategy == "FULL_SHARD":
            self.sharding_strategy = "HYBRID_SHARD"  # a (replicate, shard) mesh means hybrid sharding
        self.cpu_offload = bool(getattr(cpu_offload, "offload_params", cpu_offload))
        self.auto_wrap_policy = auto_wrap_policy
        self._wrap_matcher = options.module_matcher(auto_wrap_policy, "auto_wrap_policy")
        self.mixed_precision = options.mixed_precision_policy(mixed_precision)
        if activation_checkpointing is not None and activation_checkpointing_policy is not None:
            raise MisconfigurationException(
                "`activation_checkpointing` and `activation_checkpointing_policy` are the same option; pass one."
            )
        self.activation_checkpointing_policy = activation_checkpointing_policy or activation_checkpointing
        self._checkpoint_matcher = options.module_matcher(
            self.activation_checkpointing_policy, "activation_checkpointing_policy"
        )
        self.state_dict_type = options.state_dict_type_name(state_dict_type)
        self.sync_files = True  # fsync shards before a directory is published
        self._sharded_modules: list[nn.Module] = []
        self._mesh: Any = None

    def precision_for(self, name: str) -> Precision:
        if name in ("64-true", "16-true", "bf16-true"):
            raise MisconfigurationException(
                f"`precision={name!r}` is not supported with FSDPStrategy. "
                "Accepted: '32-true', 'bf16-mixed', '16-mixed'."
            )
        return FSDPPrecision(name)

    def module_init_context(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager:
        """Sharded (not ``NO_SHARD``) and ``empty_init`` not False: on the meta device, to be
        materialised shard by shard in ``setup_module``; otherwise as for any strategy."""
        if empty_init is False or self.sharding_strategy == "NO_SHARD":
            return super().module_init_context(empty_init)
        return self.meta_init_context()

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        names = parameter_names(module)
        sharded = self.setup_module(module)
        return sharded, [self.setup_optimizer(rebuild_optimizer(opt, names, sharded)) for opt in optimizers]

    def setup_module(self, module: nn.Module) -> nn.Module:
        if self.sharding_strategy == "NO_SHARD":
            return super().setup_module(module)
        earlier = self._sharded_root_of(module)
        if earlier is None:
            # The user's module is the root, not a front end's wrapper: called directly anywhere
            # (a callback, after fit) it gathers its parameters, and its steps gather as forward does.
            inner = wrapper_inner(module)
            self._shard(inner if inner is not None else module)
            if inner is not None:
                _gather_around(inner, "training_step", *_EVALUATION_STEPS)
            return module
        if earlier is not getattr(module, "module", None):
            return earlier  # the router an earlier fit sharded: its parameters are shards already
        # The user's module itself was sharded (by an evaluation): its training step gathers as forward does.
        _gather_around(earlier, "training_step")
        return module

    def setup_module_for_evaluation(self, module: nn.Module) -> nn.Module:
        """Evaluated sharded: through the root an earlier fit sharded, or with the module itself
        sharded now, its step methods gathering the parameters as ``forward`` does."""
        if self.sharding_strategy == "NO_SHARD":
            return module
        earlier = self._sharded_root_of(module)
        if earlier is not None:
            return earlier
        self._shard(module)
        _gather_around(module, *_EVALUATION_STEPS)
        return module

    def _shard(self, module: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        if self._checkpoint_matcher is not None:
            options.apply_activation_checkpointing(module, self._checkpoint_matcher)
        settings: dict[str, Any] = {
            "mesh": self._device_mesh(),
            "reshard_after_forward": self.sharding_strategy != "SHARD_GRAD_OP",
            "offload_policy": CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy(),
        }
        if self.mixed_precision is not None:
            settings["mp_policy"] = self.mixed_precision
        elif isinstance(self.precision, FSDPPrecision):
            settings["mp_policy"] = self.precision.mixed_precision_policy()
        matches = self._wrap_matcher
        for child in [m for m in module.modules() if m is not module and matches(m)] if matches else []:
            fully_shard(child, **settings)
        fully_shard(module, **settings)
        options.materialize(module, torch.device("cpu") if self.cpu_offload else self.root_device)
        direct_calls.allow(module)
        self._sharded_modules.append(module)
        return module

    def _sharded_root_of(self, module: nn.Module) -> nn.Module | None:
        """The sharded root (of this or an earlier strategy) that is ``module``, wraps it, or is wrapped by it;
        remembered here, so that its optimizers' state is read and loaded the sharded way."""
        from torch.distributed.fsdp import FSDPModule

        for root in (module, wrapper_inner(module)):
            if isinstance(root, FSDPModule):
                if not any(root is known for known in self._sharded_modules):
                    self._sharded_modules.append(root)
                return root
        return None

    @property
    def device_mesh(self) -> Any:
        """The mesh the module is sharded on (1-D, or ``("replicate", "shard")`` for hybrid sharding)."""
        if self._mesh is None and self.sharding_strategy != "NO_SHARD" and dist.is_initialized():
            self._mesh = self._create_mesh()
        return self._mesh

    def _device_mesh(self) -> Any:
        mesh = self.device_mesh
        return mesh if mesh is not None else self._create_mesh()

    def _create_mesh(self) -> Any:
        from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

        device_type = self.root_device.type
        given = self._hsdp_mesh
        if isinstance(given, DeviceMesh):
            return given
        if self.sharding_strategy == "HYBRID_SHARD":
            shape = given or (self.num_nodes, self.num_processes)
            if shape[0] * shape[1] != self.world_size:
                raise MisconfigurationException(
                    f"`device_mesh={shape}` (replicate x shard) must multiply to the world size ({self.world_size})."
                )
            return init_device_mesh(device_type, shape, mesh_dim_names=("replicate", "shard"))
        return init_device_mesh(device_type, (self.world_size,))

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Any:
        target = _find_fsdp(module)
        if not enabled or target is None:
            with super().no_backward_sync(module, enabled):
                yield
            return
        target.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            target.set_requires_gradient_sync(True)

    # ------------------------------------------------------------------------------ checkpoints
    # "full": whole tensors gathered on rank zero (every rank takes part). "sharded": references
    # that `save_checkpoint` turns into one DCP shard per rank (DTensorState). Either loads into either.
    @property
    def writes_shards(self) -> bool:
        return self.state_dict_type == "sharded"

    def state_target(self, module: nn.Module) -> nn.Module | None:
        return _find_fsdp(module)

    def __repr__(self) -> str:
        return (
            f"FSDPStrategy(sharding_strategy={self.sharding_strategy!r}, cpu_offload={self.cpu_offload}, "
            f"state_dict_type={self.state_dict_type!r}, "
            f"devices={self.num_processes}, num_nodes={self.num_nodes}, precision={self.precision!r})"
        )


_EVALUATION_STEPS = ("validation_step", "test_step", "predict_step")


def _gather_around(module: nn.Module, *methods: str) -> None:
    """Make each of ``module``'s ``methods`` gather and free the shards as its ``forward`` does."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    for name in methods:
        original = getattr(module, name, None)
        if not callable(original) or not hasattr(original, "__func__") or name in module.__dict__:
            continue  # not a method, or registered already (an instance attribute now)
        register_fsdp_forward_method(module, name)
        # torch's wrapper names the bound method as wrapped, which hides its first argument from
        # `inspect.signature`; give it the method's own signature (steps are called by arity).
        getattr(module, name).__func__.__signature__ = inspect.signature(original.__func__)


def _find_fsdp(module: nn.Module) -> nn.Module | None:
    from torch.distributed.fsdp import FSDPModule

    return find_wrapped(module, FSDPModule)
