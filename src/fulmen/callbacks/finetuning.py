"""Finetuning: train with parts of the model frozen, and unfreeze them on a schedule.

It exists because a pretrained backbone is best left alone while a freshly initialised head
learns, then trained with a smaller learning rate. :class:`BaseFinetuning` freezes in
``freeze_before_training`` (at ``setup``, before ``configure_optimizers``) and calls
``finetune_function`` at the start of every training epoch, where a subclass unfreezes modules
and adds their parameters to the optimizer as a new parameter group.
:class:`BackboneFinetuning` is the common case: ``pl_module.backbone`` frozen until an epoch,
then trained with its own, growing learning rate.

Exact resume: the checkpoint records the optimizers' parameter groups (by parameter name), which
parameters were frozen, and the last epoch whose ``finetune_function`` ran. A resumed fit
rebuilds the groups before the optimizer state is loaded into them, restores ``requires_grad``,
and does not run ``finetune_function`` a second time for the epoch it resumes inside.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Union

import torch
from torch.nn import Module, ModuleDict
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from fulmen.callbacks.callback import Callback
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_info, rank_zero_warn
from fulmen.utilities.stages import TrainerFn

if TYPE_CHECKING:
    from fulmen.module import LightningModule
    from fulmen.trainer import Trainer

Modules = Union[Module, Iterable[Union[Module, Iterable]]]


def multiplicative(epoch: int) -> float:
    """The default schedule of :class:`BackboneFinetuning`: the backbone's learning rate doubles each epoch."""
    return 2.0


class BaseFinetuning(Callback):
    """Base class of finetuning callbacks: override ``freeze_before_training`` and ``finetune_function``.

    ``configure_optimizers`` should hand the optimizer only the parameters that are trainable
    then, e.g. ``Adam(filter(lambda p: p.requires_grad, self.parameters()))``.

    Example::

        class UnfreezeAt(BaseFinetuning):
            def __init__(self, epoch=10):
                super().__init__()
                self.epoch = epoch

            def freeze_before_training(self, pl_module):
                self.freeze(pl_module.feature_extractor)

            def finetune_function(self, pl_module, current_epoch, optimizer):
                if current_epoch == self.epoch:
                    self.unfreeze_and_add_param_group(pl_module.feature_extractor, optimizer)
    """

    def __init__(self) -> None:
        #: Per optimizer index, its parameter groups with parameter names instead of tensors.
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._frozen_parameters: list[str] = []
        self._frozen_norms: list[str] = []  # BatchNorm layers whose running statistics are off
        self._last_finetuned_epoch = -1

    # ---------------------------------------------------------------------- override these
    def freeze_before_training(self, pl_module: LightningModule) -> None:
        """Freeze what must not train at first; runs before ``configure_optimizers``."""
        raise NotImplementedError(f"{type(self).__name__} must implement `freeze_before_training(pl_module)`.")

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        """Unfreeze on schedule; runs at the start of every training epoch, once per optimizer."""
        raise NotImplementedError(f"{type(self).__name__} must implement `finetune_function(pl_module, epoch, opt)`.")

    # ------------------------------------------------------------------------ helpers
    @staticmethod
    def flatten_modules(modules: Modules) -> list[Module]:
        """The leaf modules (and modules holding parameters directly) of a module or nested iterable."""
        if isinstance(modules, ModuleDict):
            modules = modules.values()
        if isinstance(modules, Module):
            candidates: Iterable[Module] = modules.modules()
        elif isinstance(modules, Iterable):
            candidates = [leaf for item in modules for leaf in BaseFinetuning.flatten_modules(item)]
        else:
            raise invalid_argument("modules", modules, "an nn.Module or an iterable of nn.Modules")
        return [m for m in candidates if not list(m.children()) or m._parameters]

    @staticmethod
    def filter_params(
        modules: Modules, train_bn: bool = True, requires_grad: bool = True
    ) -> Generator[torch.nn.Parameter, None, None]:
        """The parameters of ``modules`` with this ``requires_grad`` (BatchNorm layers' only with ``train_bn``)."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and not train_bn:
                continue
            # recurse=False: a parent that holds parameters itself is listed beside its children.
            for param in module.parameters(recurse=False):
                if param.requires_grad == requires_grad:
                    yield param

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        """Unfreeze every parameter of ``modules``; BatchNorm layers track running statistics again."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in module.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        """Freeze ``module``'s own parameters; a BatchNorm layer also stops tracking running statistics."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freeze ``modules``; with ``train_bn`` their BatchNorm layers stay trainable."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(module)
            else:
                BaseFinetuning.freeze_module(module)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        """``params`` without those the optimizer already has (compared by identity)."""
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        kept, skipped = [], 0
        for param in params:
            if id(param) in present:
                skipped += 1
            else:
                kept.append(param)
        if skipped:
            rank_zero_warn(
                f"{skipped} parameter(s) to unfreeze are already in {type(optimizer).__name__}'s parameter groups and "
                "are skipped. Hand `configure_optimizers` only the trainable parameters: "
                f"`{type(optimizer).__name__}(filter(lambda p: p.requires_grad, self.parameters()), ...)`."
            )
        return kept

    @staticmethod
    def unfreeze_and_add_param_group(
        modules: Modules,
        optimizer: Optimizer,
        lr: float | None = None,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
    ) -> None:
        """Unfreeze ``modules`` and add their parameters to ``optimizer`` as one new group.

        Its learning rate is ``lr``, or the first group's divided by ``initial_denom_lr``.
        Parameters the optimizer already has are left out (so calling it twice adds nothing).
        """
        BaseFinetuning.make_trainable(modules)
        base_lr = optimizer.param_groups[0]["lr"] if lr is None else float(lr)
        denominator = initial_denom_lr if lr is None else 1.0
        params = BaseFinetuning.filter_on_optimizer(
            optimizer, BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True)
        )
        if params:
            optimizer.add_param_group({"params": params, "lr": base_lr / denominator})

    # ---------------------------------------------------------------------------- hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.freeze_before_training(pl_module)
        if stage == TrainerFn.FITTING and trainer.world_size > 1:
            # torch's DistributedDataParallel registers for gradient averaging only the parameters
            # that require grad when it wraps the model; ones unfrozen later are left out.
            rank_zero_warn(
                f"{type(self).__name__} with {trainer.world_size} processes: parameters unfrozen after the model "
                "was wrapped for distributed training may not have their gradients averaged across processes "
                "(DistributedDataParallel registers only the trainable ones at wrapping time), so the processes "
                "can drift apart. Check your strategy, or unfreeze before `fit` starts."
            )
        if stage == TrainerFn.FITTING:
            # A new fit starts its schedule anew; a resumed one gets its place back from the checkpoint.
            self._last_finetuned_epoch = -1
            self._record_trainable(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == self._last_finetuned_epoch:
            return  # resumed inside this epoch: the checkpoint already holds what it did
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
        self._last_finetuned_epoch = trainer.current_epoch
        self._store(trainer, pl_module)

    def _store(self, trainer: Trainer, pl_module: LightningModule) -> None:
        names = {id(p): name for name, p in pl_module.named_parameters()}
        metadata: dict[int, list[dict[str, Any]]] = {}
        for index, optimizer in enumerate(trainer.optimizers):
            groups = []
            for group in optimizer.param_groups:
                unknown = [p for p in group["params"] if id(p) not in names]
                if unknown:
                    raise MisconfigurationException(
                        f"{type(self).__name__} records parameter groups by parameter name, but optimizer {index} "
                        f"holds {len(unknown)} tensor(s) that are not parameters of the LightningModule."
                    )
                groups.append(
                    {
                        **{k: v for k, v in group.items() if k != "params"},
                        "params": [names[id(p)] for p in group["params"]],
                    }
                )
            metadata[index] = groups
        self._internal_optimizer_metadata = metadata
        self._record_trainable(pl_module)

    def _record_trainable(self, pl_module: LightningModule) -> None:
        self._frozen_parameters = [name for name, p in pl_module.named_parameters() if not p.requires_grad]
        self._frozen_norms = [
            name for name, m in pl_module.named_modules() if isinstance(m, _BatchNorm) and not m.track_running_stats
        ]

    # ---------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "internal_optimizer_metadata": self._internal_optimizer_metadata,
            "frozen_parameters": list(self._frozen_parameters),
            "frozen_norms": list(self._frozen_norms),
            "last_finetuned_epoch": self._last_finetuned_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Files written before these keys existed hold the metadata alone.
        self._internal_optimizer_metadata = state_dict.get("internal_optimizer_metadata", state_dict)
        self._frozen_parameters = list(state_dict.get("frozen_parameters", self._frozen_parameters))
        self._frozen_norms = list(state_dict.get("frozen_norms", self._frozen_norms))
        self._last_finetuned_epoch = int(state_dict.get("last_finetuned_epoch", -1))

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # The Trainer loads the optimizer states after this hook: their groups must exist by then.
        if trainer.state.fn != TrainerFn.FITTING:
            return
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not state:
            return
        self.load_state_dict(state)
        self._restore_trainable(pl_module)
        named = dict(pl_module.named_parameters())
        for index, optimizer in enumerate(trainer.optimizers):
            groups = self._internal_optimizer_metadata.get(index)
            if groups:
                self._restore_groups(optimizer, groups, named)

    def _restore_trainable(self, pl_module: LightningModule) -> None:
        frozen = set(self._frozen_parameters)
        for name, param in pl_module.named_parameters():
            param.requires_grad = name not in frozen
        norms = set(self._frozen_norms)
        for name, module in pl_module.named_modules():
            if isinstance(module, _BatchNorm):
                module.track_running_stats = name not in norms

    @staticmethod
    def _restore_groups(optimizer: Optimizer, groups: list[dict[str, Any]], named: dict[str, Any]) -> None:
        missing = sorted({n for g in groups for n in g["params"] if n not in named})
        if missing:
            raise MisconfigurationException(
                f"The checkpoint's optimizer groups name parameters the model does not have: {missing[:5]}. Resume "
                "with the model the checkpoint was written with."
            )
        wanted = [[named[n] for n in g["params"]] for g in groups]
        current = [list(g["params"]) for g in optimizer.param_groups]
        same_prefix = len(current) <= len(wanted) and all(
            len(a) == len(b) and all(x is y for x, y in zip(a, b)) for a, b in zip(current, wanted)
        )
        if same_prefix:
            for group, params in zip(groups[len(current) :], wanted[len(current) :]):
                optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": params})
        else:
            optimizer.param_groups = [
                {**{k: v for k, v in group.items() if k != "params"}, "params": params}
                for group, params in zip(groups, wanted)
            ]


class BackboneFinetuning(BaseFinetuning):
    """Freeze ``pl_module.backbone`` until ``unfreeze_backbone_at_epoch``, then train it with its own learning rate.

    At the unfreeze epoch the backbone joins the optimizer as a new parameter group with
    ``backbone_initial_lr`` (or the current learning rate times ``backbone_initial_ratio_lr``).
    Each later epoch multiplies it by ``lambda_func(epoch + 1)``; with ``should_align`` it never
    exceeds the first group's learning rate.

    Args:
        unfreeze_backbone_at_epoch: the epoch (from 0) at which the backbone starts training.
        lambda_func: ``epoch -> factor`` for the backbone's learning rate after the unfreeze epoch.
        backbone_initial_ratio_lr: the backbone's first learning rate as a fraction of the current one.
        backbone_initial_lr: the backbone's first learning rate (overrides the ratio).
        should_align: cap the backbone's learning rate at the first group's.
        initial_denom_lr: kept for Lightning compatibility: the divisor when no learning rate is given.
        train_bn: train the backbone's BatchNorm layers once unfrozen.
        verbose: report both learning rates at every epoch start.
        rounding: digits of the reported learning rates.

    Example::

        trainer = Trainer(callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=5)])
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        lambda_func: Callable[[int], float] = multiplicative,
        backbone_initial_ratio_lr: float = 10e-2,
        backbone_initial_lr: float | None = None,
        should_align: bool = True,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
        verbose: bool = False,
        rounding: int = 12,
    ) -> None:
        super().__init__()
        if not _is_int(unfreeze_backbone_at_epoch) or unfreeze_backbone_at_epoch < 0:
            raise invalid_argument("unfreeze_backbone_at_epoch", unfreeze_backbone_at_epoch, "an int >= 0")
        if not callable(lambda_func):
            raise invalid_argument("lambda_func", lambda_func, "a function epoch -> learning-rate factor")
        if not _is_positive(backbone_initial_ratio_lr):
            raise invalid_argument("backbone_initial_ratio_lr", backbone_initial_ratio_lr, "a positive float")
        if backbone_initial_lr is not None and not _is_positive(backbone_initial_lr):
            raise invalid_argument("backbone_initial_lr", backbone_initial_lr, "None or a positive float")
        if not _is_positive(initial_denom_lr):
            raise invalid_argument("initial_denom_lr", initial_denom_lr, "a positive float")
        for name, value in (("should_align", should_align), ("train_bn", train_bn), ("verbose", verbose)):
            if not isinstance(value, bool):
                raise invalid_argument(name, value, (True, False))
        if not _is_int(rounding) or rounding < 0:
            raise invalid_argument("rounding", rounding, "an int >= 0")
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict.get("previous_backbone_lr")
        super().load_state_dict(state_dict)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        backbone = getattr(pl_module, "backbone", None)
        if not isinstance(backbone, Module):
            raise MisconfigurationException(
                f"BackboneFinetuning needs the LightningModule to have an nn.Module attribute `backbone`; "
                f"{type(pl_module).__name__}.backbone is {type(backbone).__name__}. Set `self.backbone = ...` in "
                "`__init__`, or subclass BaseFinetuning for another layout."
            )
        if stage == TrainerFn.FITTING:
            self.previous_backbone_lr = None
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: LightningModule) -> None:
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: LightningModule, epoch: int, optimizer: Optimizer) -> None:
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            backbone_lr = (
                self.backbone_initial_lr
                if self.backbone_initial_lr is not None
                else current_lr * self.backbone_initial_ratio_lr
            )
            self.unfreeze_and_add_param_group(
                pl_module.backbone,
                optimizer,
                backbone_lr,
                train_bn=self.train_bn,
                initial_denom_lr=self.initial_denom_lr,
            )
        elif epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            backbone_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and backbone_lr > current_lr:
                backbone_lr = current_lr
            optimizer.param_groups[-1]["lr"] = backbone_lr
        else:
            return
        self.previous_backbone_lr = backbone_lr
        if self.verbose:
            rank_zero_info(
                f"Epoch {epoch}: learning rate {round(current_lr, self.rounding)}, "
                f"backbone {round(backbone_lr, self.rounding)}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
