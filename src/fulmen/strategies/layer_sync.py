"""Lightning's layer-sync plugins: ``LayerSync`` and ``TorchSyncBatchNorm``.

``plugins=[TorchSyncBatchNorm()]`` is ``sync_batchnorm=True`` spelled as a plugin: with several
processes, the module's BatchNorm layers become ``torch.nn.SyncBatchNorm`` before it is wrapped,
so their statistics cover every rank's batch. A subclass of ``LayerSync`` may convert other layers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

__all__ = ["LayerSync", "TorchSyncBatchNorm"]


class LayerSync(ABC):
    """Converts layers of a module so that they synchronise across processes, and back."""

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        """The module with its layers converted (it may be converted in place and returned)."""

    @abstractmethod
    def revert(self, model: nn.Module) -> nn.Module:
        """The module with the converted layers back to their plain form."""


class TorchSyncBatchNorm(LayerSync):
    """BatchNorm layers to ``torch.nn.SyncBatchNorm`` (torch's own conversion) and back."""

    def apply(self, model: nn.Module) -> nn.Module:
        if isinstance(model, nn.modules.batchnorm._BatchNorm):
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # Children in place: a LightningModule keeps its identity, hooks and attributes.
        for name, child in list(model.named_children()):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        converted = _to_batch_norm(model)
        if converted is not model:
            return converted
        for name, child in list(model.named_children()):
            setattr(model, name, self.revert(child))
        return model


class _BatchNormXd(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm for any input rank, as SyncBatchNorm is (it does not record 1d, 2d or 3d)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


def _to_batch_norm(module: nn.Module) -> nn.Module:
    if not isinstance(module, nn.SyncBatchNorm):
        return module
    plain = _BatchNormXd(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    if module.affine:
        with torch.no_grad():
            plain.weight = module.weight
            plain.bias = module.bias
    plain.running_mean = module.running_mean
    plain.running_var = module.running_var
    plain.num_batches_tracked = module.num_batches_tracked
    plain.training = module.training
    return plain
