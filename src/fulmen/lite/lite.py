"""Lite: the strategy layer for people who keep their own PyTorch loop.

Two styles:

- direct: ``lite = Lite(...)``; ``model, opt = lite.setup(model, opt)``; ... (``lite.launch()``
  starts the other processes; with ``strategy="ddp"`` the first ``setup`` does it if needed);
- subclass: ``class MyLite(Lite): def run(self, ...)``; ``MyLite(...).run(...)`` launches the
  processes around ``run``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Generator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from fulmen.lite.wrappers import LiteDataLoader, LiteModule, LiteOptimizer
from fulmen.strategies import (
    Strategy,
    prepare_dataloader,
    select_strategy,
    unwrap_module,
    warn_no_backward_sync_unsupported,
)
from fulmen.utilities.apply_func import apply_to_collection, move_data_to_device
from fulmen.utilities.seed import seed_everything as _seed_everything


class Lite:
    """Scale a raw PyTorch loop: devices, processes and precision from a few flags.

    Flags (shared with ``Trainer``): ``accelerator``, ``strategy``, ``devices``, ``num_nodes``,
    ``precision``, ``plugins``. Values given to ``fulmen run`` apply where the code leaves a flag
    unset or ``"auto"``.
    """

    def __init__(
        self,
        accelerator: Any = None,
        strategy: Any = None,
        devices: Any = None,
        num_nodes: int | None = None,
        precision: Any = None,
        plugins: Any = None,
    ) -> None:
        self._strategy: Strategy = select_strategy(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            num_nodes=num_nodes,
            plugins=plugins,
        )
        self._launched = False
        self._environment_ready = False
        self._models: list[LiteModule] = []
        # Subclass style: processes are launched around the user's ``run``.
        if type(self).run is not Lite.run:
            user_run = self.run
            self.run = functools.wraps(user_run)(functools.partial(self._launch_and_run, user_run))

    # ------------------------------------------------------------------------ launch and run
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Override in a subclass with the body of your training; call it to launch and run."""
        raise NotImplementedError("Subclass Lite and override `run`, or use Lite directly without `run`.")

    def launch(self, function: Callable[..., Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        """Start the processes the strategy needs.

        With a ``function`` (required for ``ddp_spawn`` and notebooks) every rank calls
        ``function(lite, *args, **kwargs)`` and rank zero's result is returned. Without one,
        ``strategy="ddp"`` re-runs the script for the other ranks and this call returns in each.
        """
        if self._launched:
            raise RuntimeError("`Lite.launch()` was already called; processes are running.")
        if function is not None and not callable(function):
            raise TypeError(f"`function={function!r}` is not callable. Pass a function `fn(lite, ...)`, or nothing.")
        launcher = self._strategy.launcher
        if function is None:
            if launcher is not None:
                launcher.launch_in_background()  # raises for launchers that need a function
            self._launched = True
            self._prepare_environment()
            return None
        self._launched = True
        target = functools.partial(self._run_on_rank, function, True)
        if launcher is None:
            return target(*args, **kwargs)
        return launcher.launch(target, *args, **kwargs)

    def _launch_and_run(self, user_run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._launched = True
        target = functools.partial(self._run_on_rank, user_run, False)
        launcher = self._strategy.launcher
        return target(*args, **kwargs) if launcher is None else launcher.launch(target, *args, **kwargs)

    def _run_on_rank(self, function: Callable[..., Any], pass_self: bool, *args: Any, **kwargs: Any) -> Any:
        self._prepare_environment()
        return function(self, *args, **kwargs) if pass_self else function(*args, **kwargs)

    def _prepare_environment(self) -> None:
        if not self._environment_ready:
            self._strategy.setup_environment()
            self._environment_ready = True

    def _ensure_ready(self) -> None:
        """Direct style: join the job lazily at the first call that needs it."""
        if self._environment_ready:
            return
        if self._strategy.launcher is not None and not self._launched:
            self.launch()
        else:
            self._prepare_environment()

    # ------------------------------------------------------------------------------- set up
    def setup(
        self,
        model: nn.Module,
        *optimizers: Optimizer,
        move_to_device: bool = True,
        sync_batchnorm: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Set up a model and its optimizers; returns ``model`` or ``(model, *optimizers)``.

        ``move_to_device``: move the model to the strategy's device (False: you place it).
        ``sync_batchnorm``: with several processes, replace the model's BatchNorm layers with
        ``torch.nn.SyncBatchNorm`` (in place, before wrapping) so that their statistics cover
        every rank's batch; one process leaves them as they are.
        """
        if "optimizers" in kwargs:  # the older keyword form: setup(model=m, optimizers=opt)
            extra = kwargs.pop("optimizers")
            optimizers = (*optimizers, *(extra if isinstance(extra, (list, tuple)) else [extra]))
        if kwargs:
            raise TypeError(f"Lite.setup() got unexpected arguments {sorted(kwargs)}. Accepted: model, *optimizers, "
                            "move_to_device, sync_batchnorm.")
        self._ensure_ready()
        self._check_not_set_up(model, optimizers)
        prepared = self._prepare_module(model, move_to_device, sync_batchnorm)
        module, opts = self._strategy.setup_module_and_optimizers(prepared, list(optimizers))
        wrapped = self._wrap_module(module, prepared)
        wrapped_opts = [LiteOptimizer(opt, self._strategy) for opt in opts]
        return (wrapped, *wrapped_opts) if wrapped_opts else wrapped

    def setup_module(self, module: nn.Module, move_to_device: bool = True, sync_batchnorm: bool = False) -> LiteModule:
        """Set up a model alone (its optimizers later with ``setup_optimizers``).

        ``move_to_device`` and ``sync_batchnorm`` work as in ``setup``.
        """
        self._ensure_ready()
        self._check_not_set_up(module, ())
        prepared = self._prepare_module(module, move_to_device, sync_batchnorm)
        return self._wrap_module(self._strategy.setup_module(prepared), prepared)

    def setup_optimizers(self, *optimizers: Optimizer) -> Any:
        self._ensure_ready()
        self._check_not_set_up(None, optimizers)
        wrapped = [LiteOptimizer(self._strategy.setup_optimizer(opt), self._strategy) for opt in optimizers]
        return wrapped[0] if len(wrapped) == 1 else tuple(wrapped)

    def setup_dataloaders(
        self,
        *dataloaders: DataLoader,
        move_to_device: bool = True,
        use_distributed_sampler: bool = True,
        replace_sampler: bool | None = None,
    ) -> Any:
        """Shard dataloaders between processes and move their batches to the device."""
        if not dataloaders:
            raise TypeError("Lite.setup_dataloaders() needs at least one DataLoader.")
        if replace_sampler is not None:  # the older name
            use_distributed_sampler = replace_sampler
        self._ensure_ready()
        loaders = []
        for index, loader in enumerate(dataloaders):
            if not isinstance(loader, DataLoader):
                raise TypeError(f"`dataloaders[{index}]` is a {type(loader).__name__}; Accepted: a torch DataLoader.")
            prepared = prepare_dataloader(loader, self._strategy.distributed_sampler_kwargs, use_distributed_sampler)
            loaders.append(LiteDataLoader(prepared, self._strategy, move_to_device=move_to_device))
        return loaders[0] if len(loaders) == 1 else loaders

    def _prepare_module(self, module: nn.Module, move_to_device: bool, sync_batchnorm: bool) -> nn.Module:
        module = self._strategy.convert_module(module)
        if sync_batchnorm:
            module = self._strategy.convert_sync_batchnorm(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        return module

    def _wrap_module(self, forward_module: nn.Module, original: nn.Module) -> LiteModule:
        wrapped = LiteModule(forward_module, unwrap_module(original), self._strategy)
        self._models.append(wrapped)
        return wrapped

    @staticmethod
    def _check_not_set_up(model: nn.Module | None, optimizers: tuple) -> None:
        if isinstance(model, LiteModule):
            raise ValueError("This model was already set up by Lite; pass the original module once.")
        if any(isinstance(opt, LiteOptimizer) for opt in optimizers):
            raise ValueError("An optimizer was already set up by Lite; pass each original optimizer once.")

    # ------------------------------------------------------------------------------- train
    def backward(self, tensor: Tensor, *args: Any, model: LiteModule | None = None, **kwargs: Any) -> None:
        """Replaces ``loss.backward()``: precision scaling and engine-specific backward."""
        module = model if model is not None else (self._models[0] if len(self._models) == 1 else None)
        forward_module = module._forward if module is not None else None
        self._strategy.backward(tensor, forward_module, *args, **kwargs)

    def clip_gradients(
        self,
        module: nn.Module,
        optimizer: Optimizer,
        clip_val: float | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = True,
    ) -> Tensor | None:
        """Clip by value (``clip_val``) or by total norm (``max_norm``, returns the norm)."""
        if (clip_val is None) == (max_norm is None):
            raise ValueError("Lite.clip_gradients() needs exactly one of `clip_val` and `max_norm`.")
        if max_norm is not None:
            return self._strategy.clip_gradients_norm(module, optimizer, max_norm, norm_type, error_if_nonfinite)
        self._strategy.clip_gradients_value(module, optimizer, clip_val)
        return None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision's forward context, for computations outside the model's forward."""
        return self._strategy.forward_context()

    @contextlib.contextmanager
    def no_backward_sync(self, module: nn.Module, enabled: bool = True) -> Generator[None, None, None]:
        """Skip gradient synchronisation inside the block (gradient accumulation)."""
        if not isinstance(module, LiteModule):
            raise TypeError("`no_backward_sync` needs the model returned by `Lite.setup()`.")
        if not enabled or self._strategy.world_size == 1 and not self._strategy.supports_no_backward_sync:
            yield
            return
        if not self._strategy.supports_no_backward_sync:
            warn_no_backward_sync_unsupported(self._strategy)
            yield
            return
        with self._strategy.no_backward_sync(module._forward_module, enabled=True):
            yield

    # ------------------------------------------------------------------------------ devices
    def to_device(self, obj: Any) -> Any:
        if isinstance(obj, nn.Module):
            self._strategy.module_to_device(obj)
            return obj
        return move_data_to_device(obj, self.device)

    @property
    def device(self) -> torch.device:
        return self._strategy.root_device

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def world_size(self) -> int:
        return self._strategy.world_size

    @property
    def global_rank(self) -> int:
        return self._strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self._strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self._strategy.node_rank

    @property
    def is_global_zero(self) -> bool:
        return self._strategy.is_global_zero

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank zero only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    @staticmethod
    def seed_everything(seed: int | None = None, workers: bool = True) -> int:
        return _seed_everything(seed, workers=workers)

    # -------------------------------------------------------------------------- collectives
    def barrier(self, name: str | None = None) -> None:
        self._ensure_ready()
        self._strategy.barrier(name)

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather tensors from every rank: shape ``(world_size, *shape)`` per tensor.

        A list of same-shape tensors (e.g. per-batch losses) is gathered as one stacked
        tensor of shape ``(world_size, len(list), *shape)``; other collections keep their
        structure with each tensor gathered.
        """
        self._ensure_ready()
        data = _stack_tensor_list(data, detach=not sync_grads)
        return apply_to_collection(
            data, (Tensor, int, float), self._gather_one, group=group, sync_grads=sync_grads
        )

    def _gather_one(self, value: Any, group: Any, sync_grads: bool) -> Any:
        tensor = value if isinstance(value, Tensor) else torch.tensor(value, device=self.device)
        return self._strategy.all_gather(tensor, group=group, sync_grads=sync_grads)

    def all_reduce(self, data: Any, group: Any = None, reduce_op: str = "mean") -> Any:
        """Reduce every tensor (or number) in ``data`` over all ranks: mean, sum, max or min."""
        self._ensure_ready()
        return apply_to_collection(
            data, (Tensor, int, float), lambda t: self._strategy.all_reduce(t, group=group, reduce_op=reduce_op)
        )

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        self._ensure_ready()
        return self._strategy.broadcast(obj, src=src)

    # ---------------------------------------------------------------------------- save/load
    def save(self, path: Any, state: Any) -> None:
        """Save ``state`` (models and optimizers are turned into their state dicts); rank zero writes."""
        if not isinstance(path, (str, os.PathLike)) and isinstance(state, (str, os.PathLike)):
            path, state = state, path  # the older order: save(content, path)
        self._ensure_ready()
        self._strategy.save_checkpoint(self._to_state_dicts(state), str(path))
        self._strategy.barrier()

    def load(self, path: Any, state: dict[str, Any] | None = None, strict: bool = True,
             weights_only: bool = True) -> Any:
        """Load a file saved by ``save``. With ``state``, models and optimizers in it are restored
        in place and what the file holds beyond them is returned."""
        self._ensure_ready()
        loaded = self._strategy.load_checkpoint(str(path), weights_only=weights_only)
        if state is None:
            return loaded
        remainder = dict(loaded)
        for key, target in list(state.items()):
            if key not in loaded:
                if strict:
                    raise KeyError(f"`{key}` is in `state` but not in the file {path!s}. Present: {sorted(loaded)}.")
                continue
            value = remainder.pop(key)
            if isinstance(target, nn.Module):
                self._strategy.load_module_state_dict(target, value, strict=strict)
            elif isinstance(target, Optimizer) or hasattr(target, "load_state_dict") and isinstance(value, dict):
                target.load_state_dict(value)
            else:
                state[key] = value
        return remainder

    def _to_state_dicts(self, state: Any) -> Any:
        if isinstance(state, nn.Module):
            return self._strategy.get_module_state_dict(state)
        if isinstance(state, Optimizer):
            return state.state_dict()
        if isinstance(state, dict):
            return {k: self._to_state_dicts(v) for k, v in state.items()}
        return state


LightningLite = Lite


def _stack_tensor_list(data: Any, detach: bool) -> Any:
    if (
        type(data) is list
        and data
        and all(isinstance(t, Tensor) for t in data)
        and all(t.shape == data[0].shape for t in data)
    ):
        return torch.stack([t.detach() if detach else t for t in data])
    return data

