"""``strategy="fsdp"``: fully sharded data parallel with torch's ``fully_shard`` (FSDP2).

Parameters, gradients and optimizer state are sharded over the ranks; each rank holds a
slice. ``sharding_strategy`` keeps the familiar names: ``FULL_SHARD`` (reshard after forward),
``SHARD_GRAD_OP`` (keep parameters gathered between forward and backward), ``NO_SHARD``
(plain data parallel) and ``HYBRID_SHARD`` (shard within a node, replicate across nodes).
Checkpoints hold full, unsharded tensors so that they load anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.strategies.ddp import DDPStrategy
from fulmen.strategies.optimizer_rebuild import parameter_names, rebuild_optimizer
from fulmen.strategies.precision import Precision
from fulmen.strategies.strategy import _unwrap_optimizer
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument

SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
_PARAM_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class FSDPPrecision(Precision):
    """Mixed precision the FSDP way: sharded parameters are cast per forward, gradients reduced in fp32."""

    def __init__(self, precision: str) -> None:
        if precision not in ("32-true", "bf16-mixed", "16-mixed"):
            raise invalid_argument("precision", precision, ("32-true", "bf16-mixed", "16-mixed"))
        self.precision = precision
        self.scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None

    def mixed_precision_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        dtype = _PARAM_DTYPES.get(self.precision)
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)

    def pre_backward(self, tensor: Tensor, module: nn.Module | None) -> Tensor:
        return self.scaler.scale(tensor) if self.scaler is not None else tensor

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        if self.scaler is None:
            return super().optimizer_step(optimizer, closure=closure, **kwargs)
        result = closure() if closure is not None else None
        self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return result


class FSDPStrategy(DDPStrategy):
    supports_no_backward_sync = True

    def __init__(
        self,
        sharding_strategy: str = "FULL_SHARD",
        cpu_offload: bool = False,
        auto_wrap_policy: Iterable[type[nn.Module]] | Callable[[nn.Module], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        name = getattr(sharding_strategy, "name", sharding_strategy)
        if name not in SHARDING_STRATEGIES:
            raise invalid_argument("sharding_strategy", sharding_strategy, SHARDING_STRATEGIES)
        self.sharding_strategy = name
        self.cpu_offload = bool(getattr(cpu_offload, "offload_params", cpu_offload))
        self.auto_wrap_policy = auto_wrap_policy
        self._sharded_modules: list[nn.Module] = []

    def precision_for(self, name: str) -> Precision:
        if name in ("64-true", "16-true", "bf16-true"):
            raise MisconfigurationException(
                f"`precision={name!r}` is not supported with FSDPStrategy. "
                "Accepted: '32-true', 'bf16-mixed', '16-mixed'."
            )
        return FSDPPrecision(name)

    def setup_module_and_optimizers(
        self, module: nn.Module, optimizers: list[Optimizer]
    ) -> tuple[nn.Module, list[Optimizer]]:
        names = parameter_names(module)
        sharded = self.setup_module(module)
        return sharded, [self.setup_optimizer(rebuild_optimizer(opt, names, sharded)) for opt in optimizers]

    def setup_module(self, module: nn.Module) -> nn.Module:
        if self.sharding_strategy == "NO_SHARD":
            return super().setup_module(module)
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        options: dict[str, Any] = {
            "mesh": self._device_mesh(),
            "reshard_after_forward": self.sharding_strategy != "SHARD_GRAD_OP",
            "offload_policy": CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy(),
        }
        if isinstance(self.precision, FSDPPrecision):
            options["mp_policy"] = self.precision.mixed_precision_policy()
        for child in self._modules_to_wrap(module):
            fully_shard(child, **options)
        fully_shard(module, **options)
        self._sharded_modules.append(module)
        return module

    def _modules_to_wrap(self, module: nn.Module) -> list[nn.Module]:
        policy = self.auto_wrap_policy
        if policy is None:
            return []
        if callable(policy) and not isinstance(policy, (set, list, tuple, frozenset)):
            matches = policy
        else:
            classes = tuple(policy)
            matches = lambda m: isinstance(m, classes)  # noqa: E731
        return [m for m in module.modules() if m is not module and matches(m)]

    def _device_mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        device_type = self.root_device.type
        if self.sharding_strategy == "HYBRID_SHARD":
            shape = (self.num_nodes, self.num_processes)
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

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
    ) -> Tensor:
        norm = super().clip_gradients_norm(module, optimizer, max_norm, norm_type, error_if_nonfinite)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    # Checkpoints hold full tensors: every rank takes part in gathering them.
    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        target = _find_fsdp(module)
        if target is None:
            return super().get_module_state_dict(module)
        state = get_model_state_dict(target, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        prefix = _wrapper_prefix(target)
        return {name[len(prefix) :]: value for name, value in state.items()} if prefix else state

    def load_module_state_dict(self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        target = _find_fsdp(module)
        if target is None:
            return super().load_module_state_dict(module, state_dict, strict)
        prefix = _wrapper_prefix(target)
        if prefix:
            state_dict = {prefix + name: value for name, value in state_dict.items()}
        return set_model_state_dict(target, state_dict, options=StateDictOptions(full_state_dict=True, strict=strict))

    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        module = self._module_of(optimizer)
        if module is None:
            return super().get_optimizer_state(optimizer)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(module, _unwrap_optimizer(optimizer), options=options)

    def load_optimizer_state(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        module = self._module_of(optimizer)
        if module is None:
            return super().load_optimizer_state(optimizer, state)
        optimizer = _unwrap_optimizer(optimizer)
        if not state.get("state"):
            # A stateless optimizer (SGD without momentum): torch's loader finds no tensor to place
            # the state by and fails, yet only the hyperparameters are there to restore.
            for group, saved in zip(optimizer.param_groups, state["param_groups"]):
                group.update({key: value for key, value in saved.items() if key != "params"})
            return None
        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def _module_of(self, optimizer: Optimizer) -> nn.Module | None:
        params = {id(p) for group in _unwrap_optimizer(optimizer).param_groups for p in group["params"]}
        for module in self._sharded_modules:
            if any(id(p) in params for p in module.parameters()):
                return module
        return None

    def __repr__(self) -> str:
        return (
            f"FSDPStrategy(sharding_strategy={self.sharding_strategy!r}, cpu_offload={self.cpu_offload}, "
            f"devices={self.num_processes}, num_nodes={self.num_nodes}, precision={self.precision!r})"
        )


def _wrapper_prefix(target: nn.Module) -> str:
    """``"module."`` when the sharded root is a fulmen wrapper around the user's module (the Trainer's step
    router): checkpoints hold the module's own names, loadable without the wrapper."""
    return "module." if getattr(target, "_fulmen_wrapper", False) and hasattr(target, "module") else ""


def _find_fsdp(module: nn.Module) -> nn.Module | None:
    from torch.distributed.fsdp import FSDPModule

    while module is not None:
        if isinstance(module, FSDPModule):
            return module
        module = getattr(module, "_forward_module", None) if getattr(module, "_fulmen_wrapper", False) else None
    return None
