"""Exporting a LightningModule for serving: TorchScript and ONNX, on ``example_input_array`` by default."""

from __future__ import annotations

import importlib.util
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


def to_onnx(module: nn.Module, file_path: str | os.PathLike | Any, input_sample: Any, **kwargs: Any) -> Any:
    """``torch.onnx.export`` of the module in eval mode on ``input_sample``; returns what torch returns.

    To a path or file object the TorchScript-based exporter writes (no extra package); without a
    ``file_path`` only the dynamo exporter can export, into the returned ``ONNXProgram``.
    """
    if input_sample is None:
        raise invalid_argument("input_sample", None, "an input to export with, or set `example_input_array`")
    if file_path is None:
        if kwargs.get("dynamo") is False:
            raise invalid_argument("file_path", None, "a path or file to write, or dynamo=True (returns the program)")
        if importlib.util.find_spec("onnxscript") is None:
            raise ModuleNotFoundError(
                "`to_onnx()` without `file_path` returns torch's ONNXProgram, made by the dynamo exporter, which "
                "needs onnxscript: `pip install onnxscript`, or pass a `file_path` to write."
            )
        kwargs["dynamo"] = True
    kwargs.setdefault("dynamo", False)  # the TorchScript-based exporter needs no extra package
    if isinstance(file_path, (str, os.PathLike)):
        file_path = os.fspath(file_path)
    mode = module.training
    module.eval()
    try:
        sample = _on_device(input_sample, module)
        return torch.onnx.export(module, sample if isinstance(sample, tuple) else (sample,), file_path, **kwargs)
    finally:
        module.train(mode)


def _on_device(inputs: Any, module: nn.Module) -> Any:
    from fulmen.utilities.apply_func import move_data_to_device

    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    return move_data_to_device(inputs, device)
