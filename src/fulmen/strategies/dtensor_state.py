"""Checkpoints of modules whose parameters are DTensors (FSDP2 shards, tensor-parallel layers).

Shared by ``FSDPStrategy`` and ``ModelParallelStrategy``: the state is either gathered into whole
tensors (one file, loadable anywhere) or left in shards that ``save_checkpoint`` writes as a
DCP directory, one file per rank (:mod:`fulmen.checkpointing.dcp_format`). DCP re-shards on
load, so either kind loads into any layout of the same model.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from fulmen.checkpointing import dcp_format, sharded_dir
from fulmen.strategies.strategy import _optimizer_parameters
from fulmen.strategies.wrapped import unwrap_module as unwrap
from fulmen.strategies.wrapped import unwrap_optimizer
from fulmen.utilities.exceptions import MisconfigurationException


class DTensorState:
    """Mixed in before a process-group strategy; the strategy says where its DTensor modules are."""

    _sharded_modules: list[nn.Module]

    @property
    def writes_shards(self) -> bool:
        """Whether checkpoints are DCP directories (else whole tensors in one file)."""
        raise NotImplementedError

    def state_target(self, module: nn.Module) -> nn.Module | None:
        """The module holding DTensors behind ``module`` (and its wrappers), or None."""
        raise NotImplementedError

    def meta_init_context(self) -> contextlib.AbstractContextManager:
        """Build on the meta device (no memory): ``setup_module`` materialises each rank's part."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.device("meta"))
        stack.enter_context(self.precision.module_init_context())  # type: ignore[attr-defined]
        return stack

    def module_to_device(self, module: nn.Module) -> None:
        if not any(t.is_meta for t in (*module.parameters(), *module.buffers())):  # else materialised at setup
            super().module_to_device(module)  # type: ignore[misc]

    def teardown(self) -> None:
        sharded_dir.wait_for_removals()  # the run ends with no replaced checkpoint left behind
        super().teardown()  # type: ignore[misc]

    def clip_gradients_norm(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        max_norm: float,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
    ) -> Tensor:
        """The total norm over DTensor gradients, as a plain tensor (every rank takes part).

        torch's ``clip_grad_norm_`` stacks the per-gradient norms, which fails when they live on
        different meshes (tensor-parallel layers on the 2-D mesh, norms' weights on the data-parallel
        one): each norm is reduced to a plain tensor on its own mesh first.
        """
        from torch.distributed.tensor import DTensor

        self.precision.unscale_gradients(unwrap_optimizer(optimizer))  # type: ignore[attr-defined]
        grads = [p.grad for p in _optimizer_parameters(optimizer) if p.grad is not None]
        if not grads:
            return torch.tensor(0.0)
        norms = []
        for grad in grads:
            norm = torch.linalg.vector_norm(grad, norm_type)
            norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
        total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
        if error_if_nonfinite and not torch.isfinite(total):
            raise RuntimeError(f"The total norm of order {norm_type} of the gradients is non-finite: {total.item()}.")
        scale = min(float(max_norm) / (float(total) + 1e-6), 1.0)
        if scale < 1.0:
            for grad in grads:
                grad.mul_(scale)
        return total

    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        target = self.state_target(module)
        if target is None:
            return super().get_module_state_dict(module)  # type: ignore[misc]
        _reshard(target)
        if self.writes_shards:
            return dcp_format.ModuleShards(target)
        return get_model_state_dict(target, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_module_state_dict(self, module: nn.Module, state_dict: dict[str, Any], strict: bool = True) -> Any:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            set_model_state_dict,
        )

        target = self.state_target(module)
        if target is not None:
            _reshard(target)
        if isinstance(state_dict, sharded_dir.ShardedStateRef):
            if target is None:  # a module that is not sharded reads whole tensors from the shards
                plain = unwrap(module)
                return plain.load_state_dict(dcp_format.load_into(state_dict, plain.state_dict()), strict=strict)
            loaded = dcp_format.load_into(state_dict, get_model_state_dict(target))
            return set_model_state_dict(target, loaded, options=StateDictOptions(strict=strict))
        if target is None:
            return super().load_module_state_dict(module, state_dict, strict)  # type: ignore[misc]
        return set_model_state_dict(target, state_dict, options=StateDictOptions(full_state_dict=True, strict=strict))

    def get_optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        module = self._module_of(optimizer)
        if module is None:
            return super().get_optimizer_state(optimizer)  # type: ignore[misc]
        if self.writes_shards:
            return dcp_format.OptimizerShards(module, unwrap_optimizer(optimizer))
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(module, unwrap_optimizer(optimizer), options=options)

    def load_optimizer_state(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        module = self._module_of(optimizer)
        if module is None:
            return super().load_optimizer_state(optimizer, state)  # type: ignore[misc]
        optimizer = unwrap_optimizer(optimizer)
        if isinstance(state, sharded_dir.ShardedStateRef):
            loaded = dcp_format.load_into(state, get_optimizer_state_dict(module, optimizer))
            set_optimizer_state_dict(module, optimizer, loaded)
            return None
        if not state.get("state"):
            # A stateless optimizer (SGD without momentum): torch's loader finds no tensor to place
            # the state by and fails, yet only the hyperparameters are there to restore.
            for group, saved in zip(optimizer.param_groups, state["param_groups"]):
                group.update({key: value for key, value in saved.items() if key != "params"})
            return None
        set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        filepath: str,
        storage_options: dict | None = None,
        *,
        async_save: bool = False,
    ) -> None:
        """Whole tensors: one file from rank zero; shards: a directory of DCP files, one per rank.
        Either is written in the background with ``async_save``."""
        if not dcp_format.has_refs(checkpoint):
            return super().save_checkpoint(checkpoint, filepath, storage_options, async_save=async_save)  # type: ignore[misc]
        if storage_options:
            raise MisconfigurationException(
                "Sharded checkpoints are written to a local or mounted filesystem; `storage_options` do not apply."
            )
        self.wait_for_checkpoint_saves()  # type: ignore[attr-defined]
        dcp_format.save(self, checkpoint, filepath, asynchronous=async_save)

    def load_checkpoint(
        self, filepath: str, map_location: Any = None, weights_only: bool = True, storage_options: dict | None = None
    ) -> dict[str, Any]:
        """A DCP directory comes back with references that the module and optimizers load their
        shards from (re-sharded to this run's layout); anything else as usual."""
        local = None if storage_options else sharded_dir.local_path(filepath)
        if local is not None and os.path.isdir(local):
            loaded = dcp_format.load_state(local, weights_only)
            if loaded is not None:
                return loaded
        return super().load_checkpoint(filepath, map_location, weights_only, storage_options)  # type: ignore[misc]

    def _module_of(self, optimizer: Optimizer) -> nn.Module | None:
        params = {id(p) for group in unwrap_optimizer(optimizer).param_groups for p in group["params"]}
        for module in self._sharded_modules:
            _reshard(module)
            if any(id(p) in params for p in module.parameters()):
                return module
        return None


def _reshard(module: nn.Module) -> None:
    """Put FSDP's sharded parameters back in place: a root keeps its gathered ones after a forward
    without backward (validation), and the state dicts (and the optimizer's parameters) are the shards."""
    from torch.distributed.fsdp import FSDPModule

    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.reshard()
