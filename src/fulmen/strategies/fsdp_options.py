"""What ``FSDPStrategy`` accepts, turned into what torch's ``fully_shard`` (FSDP2) takes.

Users arrive with FSDP1 vocabulary (``ShardingStrategy`` enums, ``MixedPrecision``,
``StateDictType``, ``use_orig_params`` ...). Each option either maps onto FSDP2 here or is
refused by name with what to pass instead, so that nothing is silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.strategies.precision import Precision
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument

SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
STATE_DICT_TYPES = ("full", "sharded")
_STATE_DICT_ALIASES = {"FULL_STATE_DICT": "full", "SHARDED_STATE_DICT": "sharded"}
_PARAM_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
#: The keyword arguments a DDP-family strategy takes besides the FSDP options.
BASE_ARGUMENTS = (
    "accelerator",
    "parallel_devices",
    "cluster_environment",
    "precision",
    "checkpoint_io",
    "process_group_backend",
    "timeout",
    "start_method",
    "num_nodes",
)
# FSDP1 constructor options with no FSDP2 counterpart, and what to do instead.
_FSDP1_ONLY = {
    "sync_module_states": "FSDP2 shards the parameters each rank already holds; seed the model the same on "
    "every rank (`seed_everything`) or load a checkpoint after setup",
    "use_orig_params": "FSDP2 always keeps the original parameters (as DTensors)",
    "limit_all_gathers": "FSDP2 bounds its all-gathers itself",
    "forward_prefetch": "FSDP2 prefetches one module ahead by default",
    "backward_prefetch": "FSDP2 prefetches one module ahead by default",
    "device_id": "the device comes from `devices=` / the process's local rank",
    "ignored_modules": "leave the module out of `auto_wrap_policy` instead",
}

Policy = Iterable[type[nn.Module]] | Callable[[nn.Module], bool] | None


def sharding_strategy_name(value: Any) -> str:
    name = getattr(value, "name", value)
    if name not in SHARDING_STRATEGIES:
        raise invalid_argument("sharding_strategy", value, SHARDING_STRATEGIES)
    return name


def state_dict_type_name(value: Any) -> str:
    name = getattr(value, "name", value)
    name = _STATE_DICT_ALIASES.get(name, name)
    if name not in STATE_DICT_TYPES:
        raise invalid_argument("state_dict_type", value, STATE_DICT_TYPES)
    return name


def hybrid_mesh(value: Any, sharding_strategy: str) -> Any:
    """``device_mesh=``: None, a ``(replicate, shard)`` pair of positive ints, or a 2-D ``DeviceMesh``."""
    if value is None:
        return None
    if sharding_strategy == "NO_SHARD":
        raise MisconfigurationException("`device_mesh` sets up hybrid sharding; it does not go with `NO_SHARD`.")
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return value
    if getattr(value, "ndim", None) == 2 and hasattr(value, "mesh_dim_names"):
        return value
    raise invalid_argument("device_mesh", value, "a (replicate, shard) tuple of positive ints, or a 2-D DeviceMesh")


def check_extra_arguments(kwargs: dict[str, Any]) -> None:
    """Refuse every keyword that is neither a DDP-family argument nor an FSDPStrategy option."""
    for name in kwargs:
        if name in BASE_ARGUMENTS:
            continue
        reason = _FSDP1_ONLY.get(name)
        if reason is not None:
            raise MisconfigurationException(
                f"`FSDPStrategy({name}=...)` is an FSDP1 option that fulmen (on FSDP2) does not take: {reason}."
            )
        accepted = (
            "sharding_strategy, cpu_offload, auto_wrap_policy, mixed_precision, activation_checkpointing_policy, "
            "state_dict_type, device_mesh, " + ", ".join(BASE_ARGUMENTS)
        )
        raise MisconfigurationException(f"`FSDPStrategy({name}=...)` is not an option. Accepted: {accepted}.")


def mixed_precision_policy(value: Any) -> Any:
    """A ``MixedPrecisionPolicy`` from one, or from FSDP1's ``MixedPrecision`` (``None``: none given)."""
    if value is None:
        return None
    from torch.distributed.fsdp import MixedPrecision, MixedPrecisionPolicy

    if isinstance(value, MixedPrecisionPolicy):
        return value
    if isinstance(value, MixedPrecision):
        if value.buffer_dtype is not None and value.buffer_dtype != value.param_dtype:
            raise MisconfigurationException(
                f"`MixedPrecision(buffer_dtype={value.buffer_dtype})`: FSDP2 does not cast buffers. Leave "
                "`buffer_dtype` unset, or create the buffers in that dtype."
            )
        return MixedPrecisionPolicy(
            param_dtype=value.param_dtype,
            reduce_dtype=value.reduce_dtype,
            cast_forward_inputs=value.cast_forward_inputs,
        )
    raise invalid_argument(
        "mixed_precision", value, "a torch.distributed.fsdp.MixedPrecisionPolicy (or FSDP1's MixedPrecision)"
    )


def module_matcher(policy: Policy, name: str) -> Callable[[nn.Module], bool] | None:
    """``policy`` (module classes or a predicate) as a predicate; ``None`` when none is given."""
    if policy is None:
        return None
    if isinstance(policy, type) and issubclass(policy, nn.Module):
        policy = {policy}
    if callable(policy) and not isinstance(policy, (set, list, tuple, frozenset)):
        return policy
    classes = tuple(policy)
    if not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
        raise invalid_argument(name, policy, "a set of nn.Module classes or a callable(module) -> bool")
    return lambda module: isinstance(module, classes)


def apply_activation_checkpointing(module: nn.Module, matches: Callable[[nn.Module], bool]) -> int:
    """Recompute the activations of every matching submodule in backward instead of keeping them.

    torch's composable ``checkpoint`` keeps the module and its parameter names as they are, so
    the optimizer and checkpoints see the same names with or without it. Returns how many
    submodules it applies to.
    """
    from torch.distributed._composable import checkpoint

    targets = [m for m in module.modules() if m is not module and matches(m)]
    for target in targets:
        checkpoint(target)
    return len(targets)


def materialize(module: nn.Module, device: torch.device) -> None:
    """Allocate a sharded model built on the meta device and initialise it by its layers' ``reset_parameters``."""
    if not any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        return  # built on a real device: its weights are initialised already
    uninitialised = [
        name
        for name, sub in module.named_modules()
        if callable(getattr(sub, "reset_parameters", None)) is False
        and any(t.is_meta for t in (*sub.parameters(recurse=False), *sub.buffers(recurse=False)))
    ]
    if uninitialised:
        raise MisconfigurationException(
            f"The model was created on the meta device (`init_module()` under FSDP), but {uninitialised} hold "
            "parameters or buffers directly and have no `reset_parameters()` to initialise them. Add one, or "
            "create the model with `init_module(empty_init=False)`."
        )
    module.to_empty(device=device)
    with torch.no_grad():
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()


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
