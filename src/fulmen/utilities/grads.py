"""``grad_norm``: the gradient norm of every parameter and of all of them together, ready to log."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def grad_norm(module: nn.Module, norm_type: float | int | str, group_separator: str = "/") -> dict[str, Tensor]:
    """The ``norm_type``-norm of each parameter's gradient, and of all gradients as one vector.

    Keys are ``grad_{p}_norm{group_separator}{parameter name}`` and ``grad_{p}_norm_total`` with
    ``p = float(norm_type)`` (``"inf"`` for the largest absolute value), as Lightning names them,
    so that ``self.log_dict(grad_norm(self, 2))`` in ``on_before_optimizer_step`` groups them in
    one folder of the logger. Parameters without a gradient are left out; no gradient at all
    gives an empty dict.
    """
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        p = -1.0
    if not p > 0:
        raise ValueError(f"`norm_type={norm_type!r}` is not valid. Accepted: a positive number or 'inf'.")
    norms = {
        f"grad_{p}_norm{group_separator}{name}": torch.linalg.vector_norm(param.grad.detach(), ord=p)
        for name, param in module.named_parameters()
        if param.grad is not None
    }
    if norms:
        total = torch.linalg.vector_norm(torch.stack([n.to(torch.float32).cpu() for n in norms.values()]), ord=p)
        norms[f"grad_{p}_norm_total"] = total
    return norms
