"""Exporting a LightningModule for serving: TorchScript and ONNX, on ``example_input_array`` by default."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from fulmen.utilities.exceptions import invalid_argument


def to_torchscript(
    module: nn.Module, file_path: str | os.PathLike | None, method: str, example_inputs: Any, **kwargs: Any
) -> torch.jit.ScriptModule:
    """``torch.jit.script`` (``method="script"``) or ``torch.jit.trace`` on the example inputs; saved when asked."""
    mode = module.training
    module.eval()
    module.__dict__["_jit_is_scripting"] = True  # its properties must not raise while torch inspects them
    try:
        if method == "script":
            exported = torch.jit.script(module, **kwargs)
        elif method == "trace":
            if example_inputs is None:
                raise invalid_argument(
                    "example_inputs", None, "inputs to trace with, or set `example_input_array` on the module"
                )
            exported = torch.jit.trace(module, example_inputs=_on_device(example_inputs, module), **kwargs)
        else:
            raise invalid_argument("method", method, ("script", "trace"))
    finally:
        module.__dict__["_jit_is_scripting"] = False
        module.train(mode)
    if file_path is not None:
        torch.jit.save(exported, os.fspath(file_path))
    return exported


def to_onnx(module: nn.Module, file_path: str | os.PathLike, input_sample: Any, **kwargs: Any) -> None:
    """``torch.onnx.export`` of the module in eval mode on ``input_sample``."""
    if input_sample is None:
        raise invalid_argument("input_sample", None, "an input to export with, or set `example_input_array`")
    mode = module.training
    module.eval()
    try:
        kwargs.setdefault("dynamo", False)  # the TorchScript-based exporter needs no extra package
        sample = _on_device(input_sample, module)
        torch.onnx.export(module, sample if isinstance(sample, tuple) else (sample,), os.fspath(file_path), **kwargs)
    finally:
        module.train(mode)


def _on_device(inputs: Any, module: nn.Module) -> Any:
    from fulmen.utilities.apply_func import move_data_to_device

    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    return move_data_to_device(inputs, device)
