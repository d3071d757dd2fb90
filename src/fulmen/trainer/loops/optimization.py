"""One training batch: ``training_step``, zero_grad, backward, clipping and the optimizer step.

``automatic_step`` follows the ``closure()`` of :mod:`fulmen.trainer.dispatch`: the closure runs
``training_step`` and backward, and the optimizer (through the strategy) calls it, so that
optimizers like LBFGS can re-evaluate the loss. ``manual_step`` only runs ``training_step``:
the module steps its optimizers itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from fulmen.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:
    from fulmen.trainer.loops.fit import EpochPlan
    from fulmen.trainer.run import Run


def automatic_step(run: Run, plan: EpochPlan, batch: Any, batch_idx: int, stepping: bool) -> dict[str, Any]:
    """``training_step``, zero_grad, backward and (when ``stepping``) the optimizer step, for one batch."""
    hooks = run.hooks
    active = hooks.active
    accumulate = plan.accumulate
    optimizer = run.optimizers[0]
    first_in_window = batch_idx % accumulate == 0
    result: list[Any] = [None]

    def closure() -> Tensor | None:
        run.results.fx = "training_step"
        output = plan.training_step(batch, batch_idx)
        loss = output if isinstance(output, Tensor) else _loss_of(plan, output)
        if first_in_window:
            if active["on_before_zero_grad"]:
                hooks.call("on_before_zero_grad", run.lightning_optimizers[0])
            if hooks.module["optimizer_zero_grad"] is None:
                optimizer.zero_grad()
            else:
                hooks.call_module(
                    "optimizer_zero_grad", run.state.current_epoch, batch_idx, run.lightning_optimizers[0]
                )
        if loss is not None:
            if accumulate > 1:
                loss = loss / accumulate
            plan.backward(loss)
            loss = loss.detach()
        result[0] = (output, loss)
        if stepping:
            if active["on_before_optimizer_step"]:
                hooks.call("on_before_optimizer_step", run.lightning_optimizers[0])
            config = run.config
            if hooks.module["configure_gradient_clipping"] is not None:
                hooks.call_module(
                    "configure_gradient_clipping",
                    run.lightning_optimizers[0],
                    config.gradient_clip_val,
                    config.gradient_clip_algorithm,
                )
            elif config.gradient_clip_val:
                run.clip_gradients(optimizer, None, None)
        return loss

    if not stepping:
        with run.strategy.no_backward_sync(run.model, enabled=True):
            closure()
    elif run.step_with_closure:
        hooks.call_module(
            "optimizer_step", run.state.current_epoch, batch_idx, run.lightning_optimizers[0], closure, always=True
        )
    else:
        closure()
        plan.optimizer_step(optimizer)
        if run.strategy.last_step_committed:  # fault_tolerant: a step the replica groups did not commit
            run.state.global_step += 1

    if result[0] is None:  # an optimizer_step override that never ran the closure
        return {}
    output, loss = result[0]
    if loss is None:
        return {}
    if isinstance(output, dict):
        return {**output, "loss": loss}
    return {"loss": loss}


def _loss_of(plan: EpochPlan, output: Any) -> Tensor | None:
    if isinstance(output, dict):
        loss = output.get("loss")
        if loss is None:
            raise MisconfigurationException(
                "`training_step` returned a dict without the key 'loss'. Return the loss tensor, or a dict "
                "holding it under 'loss'."
            )
        return loss
    if output is None:
        plan.loop.warn_once(
            "none_loss", "`training_step` returned None: the batch's backward is skipped. Ignore this if intended."
        )
        return None
    raise MisconfigurationException(
        f"`training_step` returned {type(output).__name__}; with automatic optimization it must return "
        "a tensor, a dict with 'loss', or None (to skip the batch)."
    )


def manual_step(run: Run, plan: EpochPlan, batch: Any, batch_idx: int, stepping: bool) -> dict[str, Any]:
    """Manual optimization: ``training_step`` calls the optimizers itself."""
    run.results.fx = "training_step"
    output = plan.training_step(batch, batch_idx)
    if output is None:
        return {}
    if isinstance(output, Tensor):
        return {"loss": output.detach()}
    if isinstance(output, dict):
        outputs = dict(output)
        if isinstance(outputs.get("loss"), Tensor):
            outputs["loss"] = outputs["loss"].detach()
        return outputs
    raise MisconfigurationException(
        f"`training_step` returned {type(output).__name__}; with manual optimization it must return a tensor, "
        "a dict or None."
    )
