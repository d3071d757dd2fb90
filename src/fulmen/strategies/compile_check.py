"""Refuse ``torch.compile``d tensor-parallel blocks where torch computes their gradients wrongly.

With torch 2.13 on CPU, a block compiled by ``torch.compile`` (with AOTAutograd: the default
inductor backend, or ``aot_eager``) whose layers are split over more than one tensor-parallel
rank gets no gradient for its input when that input comes out of an eager tensor-parallel layer
(the embedding of a Llama-style model): with FSDP on top the layers before it silently stop
training, without FSDP backward fails inside DTensor (``'Tensor' object has no attribute
'_local_tensor'``). Measured on 2 gloo processes; compiled blocks train correctly with one
tensor-parallel rank (FSDP only). Failing at setup, with the reason, beats wrong weights.
"""

from __future__ import annotations

import torch
from torch import nn

from fulmen.utilities.exceptions import MisconfigurationException


def _compiled(module: nn.Module) -> bool:
    """``torch.compile(module)`` (a wrapper holding ``_orig_mod``) or ``module.compile()`` (in place)."""
    return isinstance(getattr(module, "_orig_mod", None), nn.Module) or (
        getattr(module, "_compiled_call_impl", None) is not None
    )


def check_compiled_tensor_parallel(module: nn.Module, device: torch.device, tensor_parallel_size: int) -> None:
    """Raise if ``module`` holds a compiled submodule with DTensor parameters, tensor-parallel over
    several CPU processes."""
    if device.type != "cpu" or tensor_parallel_size < 2:
        return
    from torch.distributed.tensor import DTensor

    for name, child in module.named_modules():
        if _compiled(child) and any(isinstance(p, DTensor) for p in child.parameters()):
            raise MisconfigurationException(
                f"`{name or type(module).__name__}` is compiled with `torch.compile` and its layers are split over "
                f"`tensor_parallel_size={tensor_parallel_size}` CPU processes: torch {torch.__version__} does not "
                "support this on CPU (the compiled block's input gets no gradient, so the layers before it stop "
                "training). Compile tensor-parallel blocks on CUDA, or on CPU compile with `tensor_parallel_size=1` "
                "(FSDP over the data-parallel ranks), or leave the blocks uncompiled."
            )
