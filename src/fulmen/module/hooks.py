"""``ModelHooks``: the ``on_*`` hooks a LightningModule may override, each with one docstring.

The Trainer calls only the hooks a module overrides (see ``fulmen.trainer.dispatch``); these
stubs exist so that ``super().on_...()`` works and each hook has one docstring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor
    from torch.optim import Optimizer


class ModelHooks:
    def on_fit_start(self) -> None:
        """When fit begins."""

    def on_fit_end(self) -> None:
        """When fit ends."""

    def on_train_start(self) -> None:
        """When the training loop begins (after the sanity check)."""

    def on_train_end(self) -> None:
        """When the training loop ends."""

    def on_validation_start(self) -> None:
        """When a validation run begins."""

    def on_validation_end(self) -> None:
        """When a validation run ends."""

    def on_test_start(self) -> None:
        """When testing begins."""

    def on_test_end(self) -> None:
        """When testing ends."""

    def on_predict_start(self) -> None:
        """When prediction begins."""

    def on_predict_end(self) -> None:
        """When prediction ends."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Before ``training_step``; return -1 to skip the rest of this epoch."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the step (and the optimizer step)."""

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Before ``validation_step``."""

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """After ``validation_step``."""

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Before ``test_step``."""

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """After ``test_step``."""

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Before ``predict_step``."""

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """After ``predict_step``."""

    def on_validation_model_zero_grad(self) -> None:
        """Before validation during fit: free the gradients' memory."""
        self.zero_grad(set_to_none=True)

    def on_validation_model_eval(self) -> None:
        """Before validation: eval mode."""
        self.trainer.model.eval()

    def on_validation_model_train(self) -> None:
        """After validation during fit: back to train mode."""
        self.trainer.model.train()

    def on_test_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_test_model_train(self) -> None:
        self.trainer.model.train()

    def on_predict_model_eval(self) -> None:
        self.trainer.model.eval()

    def on_train_epoch_start(self) -> None:
        """When a training epoch begins."""

    def on_train_epoch_end(self) -> None:
        """When a training epoch ends (after the validation run at the end of it, if any)."""

    def on_validation_epoch_start(self) -> None:
        """When a validation epoch begins."""

    def on_validation_epoch_end(self) -> None:
        """When a validation epoch ends."""

    def on_test_epoch_start(self) -> None:
        """When a test epoch begins."""

    def on_test_epoch_end(self) -> None:
        """When a test epoch ends."""

    def on_predict_epoch_start(self) -> None:
        """When a prediction epoch begins."""

    def on_predict_epoch_end(self) -> None:
        """When a prediction epoch ends."""

    def on_before_zero_grad(self, optimizer: Optimizer) -> None:
        """Before ``optimizer.zero_grad()``."""

    def on_before_backward(self, loss: Tensor) -> None:
        """Before ``loss.backward()``."""

    def on_after_backward(self) -> None:
        """After ``loss.backward()``; gradients are available."""

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Before the optimizer step and gradient clipping."""

    def on_exception(self, exception: BaseException) -> None:
        """When fit, validate, test or predict raises; the exception is re-raised afterwards."""
