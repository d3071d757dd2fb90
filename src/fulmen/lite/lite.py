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

from fulmen.lite import reporting, saving
from fulmen.lite.wrappers import LiteDataLoader, LiteModule, LiteOptimizer
from fulmen.strategies import (
    Strategy,
    prepare_dataloader,
    select_strategy,
    unwrap_module,
    warn_no_backward_sync_unsupported,
)
from fulmen.utilities.apply_func import apply_to_collection, move_data_to_device
from fulmen.utilities.exceptions import invalid_argument
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.seed import seed_everything as _seed_everything


class Lite:
    """Scale a raw PyTorch loop: devices, processes and precision from a few flags.

    Flags (shared with ``Trainer``): ``accelerator``, ``strategy``, ``devices``, ``num_nodes``,
    ``precision``, ``plugins``. Values given to ``fulmen run`` apply where the code leaves a flag
    unset or ``"auto"``. ``callbacks``: objects whose methods ``call("hook", ...)`` runs;
    ``loggers``: loggers (``fulmen.loggers``) that ``log``/``log_dict`` write to.
    """

    def __init__(
        self,
        accelerator: Any = None,
        strategy: Any = None,
        devices: Any = None,
        num_nodes: int | None = None,
        precision: Any = None,
        plugins: Any = None,
        callbacks: Any = None,
        loggers: Any = None,
    ) -> None:
        self._callbacks: list[Any] = reporting.as_list(callbacks, "callbacks")
        self._loggers: list[Any] = reporting.check_loggers(reporting.as_list(loggers, "loggers"))
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
        module: nn.Module | None = None,
        *optimizers: Optimizer,
        scheduler: Any = None,
        move_to_device: bool = True,
        sync_batchnorm: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Set up a module and its optimizers; returns ``module``, ``(module, *optimizers)``, or
        ``(module, *optimizers, scheduler)`` when a ``scheduler`` is given (Fabric's signature).

        ``scheduler``: an LR scheduler of one of the optimizers; it is handed back stepping the
        optimizer the strategy set up. ``move_to_device``: move the module to the strategy's device
        (False: you place it). ``sync_batchnorm``: with several processes, replace the module's
        BatchNorm layers with ``torch.nn.SyncBatchNorm`` (in place, before wrapping) so that their
        statistics cover every rank's batch; one process leaves them as they are.
        """
        if "model" in kwargs:  # fulmen's older keyword name
            if module is not None:
                raise TypeError("Lite.setup() got both `module` and `model`; pass the module once.")
            module = kwargs.pop("model")
        if "optimizers" in kwargs:  # the older keyword form: setup(model=m, optimizers=opt)
            extra = kwargs.pop("optimizers")
            optimizers = (*optimizers, *(extra if isinstance(extra, (list, tuple)) else [extra]))
        if kwargs:
            raise TypeError(
                f"Lite.setup() got unexpected arguments {sorted(kwargs)}. Accepted: module, *optimizers, "
                "scheduler, move_to_device, sync_batchnorm."
            )
        if not isinstance(module, nn.Module):
            raise TypeError(f"Lite.setup() needs the module to set up first; got `module={module!r}`.")
        if scheduler is not None and not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"`scheduler={scheduler!r}` has no `step()`; pass an LR scheduler or nothing.")
        self._ensure_ready()
        self._check_not_set_up(module, optimizers)
        prepared = self._prepare_module(module, move_to_device, sync_batchnorm)
        wrapped_module, opts = self._strategy.setup_module_and_optimizers(prepared, list(optimizers))
        wrapped = self._wrap_module(wrapped_module, prepared)
        wrapped_opts = [LiteOptimizer(opt, self._strategy) for opt in opts]
        if scheduler is None:
            return (wrapped, *wrapped_opts) if wrapped_opts else wrapped
        for given, used in zip(optimizers, opts):
            # A strategy that rebuilt an optimizer (over sharded parameters) must be stepped by the scheduler.
            if getattr(scheduler, "optimizer", None) is given and used is not given:
                scheduler.optimizer = used
        return (wrapped, *wrapped_opts, scheduler)

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
        if sync_batchnorm or self._strategy.layer_sync is not None:  # the flag, or plugins=[TorchSyncBatchNorm()]
            module = self._strategy.convert_sync_batchnorm(module)
        if move_to_device:
            self._strategy.module_to_device(module)
        return module

    def _wrap_module(self, forward_module: nn.Module, original: nn.Module) -> LiteModule:
        original = unwrap_module(original)
        if isinstance(getattr(type(original), "fabric", None), property):
            # a LightningModule: its self.log, loggers and clip_gradients go through this Lite
            original.fabric = self
        wrapped = LiteModule(forward_module, original, self._strategy)
        self._models.append(wrapped)
        return wrapped

    @staticmethod
    def _check_not_set_up(model: nn.Module | None, optimizers: tuple) -> None:
        if isinstance(model, LiteModule):
            raise ValueError("This model was already set up by Lite; pass the original module once.")
        if any(isinstance(opt, LiteOptimizer) for opt in optimizers):
            raise ValueError("An optimizer was already set up by Lite; pass each original optimizer once.")

    def init_module(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager:
        """Instantiate the model inside this block: its parameters are created on the device and in
        the precision's dtype at once, with no copy on the CPU first.

        ``empty_init=True`` skips the weight initialisation (the memory is left as it is), for a
        model whose weights ``load``/``load_raw`` fill next; ``None`` lets the strategy decide.
        """
        self._ensure_ready()
        return self._strategy.module_init_context(empty_init=empty_init)

    def init_tensor(self) -> contextlib.AbstractContextManager:
        """Tensors created inside this block land on the device, in the precision's dtype."""
        self._ensure_ready()
        return self._strategy.tensor_init_context()

    def sharded_model(self) -> contextlib.AbstractContextManager:
        """The older name of ``init_module()`` (deprecated, as in Fabric)."""
        rank_zero_warn("`Lite.sharded_model()` is deprecated; use `Lite.init_module()`.", DeprecationWarning)
        return self.init_module()

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
    def accelerator(self) -> Any:
        """The strategy's ``Accelerator`` (cpu, cuda or mps)."""
        return self._strategy.accelerator

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
    def seed_everything(seed: int | None = None, workers: bool = True, verbose: bool = True) -> int:
        return _seed_everything(seed, workers=workers, verbose=verbose)

    # ----------------------------------------------------------------------- loggers, callbacks
    @property
    def loggers(self) -> list[Any]:
        """The loggers given as ``Lite(loggers=...)``."""
        return self._loggers

    @property
    def logger(self) -> Any:
        """The first logger, or ``None`` when there is none."""
        return self._loggers[0] if self._loggers else None

    def log(self, name: str, value: Any, step: int | None = None) -> None:
        """Log one value (a number or a one-element tensor) to every logger, at ``step``
        (``None``: the logger counts the calls)."""
        self.log_dict({name: value}, step=step)

    def log_dict(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log several values at once; tensors are detached and turned into Python numbers."""
        metrics = reporting.to_scalars(metrics)
        for logger in self._loggers:
            logger.log_metrics(metrics=metrics, step=step)

    def call(self, hook_name: str, *args: Any, **kwargs: Any) -> None:
        """Call the method ``hook_name`` of every callback that has one, in the order given."""
        reporting.call_hook(self._callbacks, hook_name, *args, **kwargs)

    # -------------------------------------------------------------------------- collectives
    def barrier(self, name: str | None = None) -> None:
        self._ensure_ready()
        self._strategy.barrier(name)

    @contextlib.contextmanager
    def rank_zero_first(self, local: bool = False) -> Generator[None, None, None]:
        """Rank zero runs the block first (a download, a cache); the others run it once it is done.

        ``local=True``: local rank zero of every node goes first (no shared file system). The
        others wait at most the process-group timeout (``FULMEN_DIST_TIMEOUT``, 1800 s by default).
        """
        self._ensure_ready()
        rank = self.local_rank if local else self.global_rank
        if rank > 0:
            self._strategy.barrier("rank_zero_first")
        yield
        if rank == 0:
            self._strategy.barrier("rank_zero_first")

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather every tensor (or number) in ``data`` from all ranks, keeping ``data``'s structure.

        Each tensor becomes ``(world_size, *shape)``; with one process it comes back as it is
        (numbers as tensors), as Fabric documents. A list of tensors stays a list of gathered
        tensors: ``torch.stack(lite.all_gather(losses))`` makes one tensor of it.
        """
        self._ensure_ready()
        device = self.device
        data = apply_to_collection(data, (int, float), lambda x: torch.tensor(x, device=device))
        return apply_to_collection(
            data, Tensor, lambda t: self._strategy.all_gather(t.to(device), group=group, sync_grads=sync_grads)
        )

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
    def save(self, path: Any, state: Any, filter: saving.Filter | None = None) -> None:
        """Save ``state`` (models and optimizers are turned into their state dicts); rank zero writes.

        ``filter``: ``{key: fn(name, value) -> bool}`` keeps only the entries of ``state[key]``'s
        state dict for which ``fn`` is true (e.g. the trainable weights of a large model).
        """
        if not isinstance(path, (str, os.PathLike)) and isinstance(state, (str, os.PathLike)):
            path, state = state, path  # the older order: save(content, path)
        saving.check_filter(filter, state)
        self._ensure_ready()
        self._strategy.save_checkpoint(saving.apply_filter(self._to_state_dicts(state), filter), str(path))
        self._strategy.barrier()

    def load(
        self, path: Any, state: dict[str, Any] | None = None, strict: bool = True, weights_only: bool = True
    ) -> Any:
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

    def load_raw(self, path: Any, obj: nn.Module | Optimizer, strict: bool = True, weights_only: bool = True) -> None:
        """Load a plain state-dict file (``torch.save(model.state_dict(), path)``, made without Lite)
        into a model or optimizer, set up or not. ``strict`` applies to models only."""
        if isinstance(obj, LiteModule):
            obj = obj.module
        if not isinstance(obj, (nn.Module, Optimizer)):
            raise invalid_argument("obj", type(obj).__name__, "a torch.nn.Module or a torch.optim.Optimizer")
        self._ensure_ready()
        state = self._strategy.load_checkpoint(str(path), weights_only=weights_only)
        if isinstance(obj, nn.Module):
            self._strategy.load_module_state_dict(obj, state, strict=strict)
        else:
            obj.load_state_dict(state)

    def _to_state_dicts(self, state: Any) -> Any:
        if isinstance(state, nn.Module):
            return self._strategy.get_module_state_dict(state)
        if isinstance(state, Optimizer):
            return state.state_dict()
        if isinstance(state, dict):
            return {k: self._to_state_dicts(v) for k, v in state.items()}
        if callable(getattr(state, "state_dict", None)) and callable(getattr(state, "load_state_dict", None)):
            return state.state_dict()  # LR schedulers, samplers, any stateful object
        return state


LightningLite = Lite
