"""Model summary: a table of the model's layers and parameter counts, printed when fit starts.

It exists because "how big is my model, and which parts are frozen?" is the first question of
every run, and answering it before the first step catches a wrong ``requires_grad`` or a layer
that was never registered. :func:`summarize` computes the numbers as data (so tests and users
can read them); :class:`ModelSummary` prints them on global rank zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fulmen.callbacks.callback import MODEL_SUMMARY, Callback
from fulmen.utilities.apply_func import move_data_to_device
from fulmen.utilities.exceptions import invalid_argument


class LayerRow(NamedTuple):
    """One layer of the summary; ``params`` counts every parameter inside the layer."""

    name: str
    type: str
    params: int
    trainable_params: int
    mode: str  # "train" or "eval"
    in_size: Any = None  # the layer's input shape(s) on ``example_input_array``; None without one
    out_size: Any = None


def _is_uninitialized(param: nn.Parameter) -> bool:
    # Lazy layers have no size until their first forward; they count as 0 until then.
    return isinstance(param, nn.parameter.UninitializedParameter)


def _count(params: Any, numel: Callable[[Tensor], int]) -> tuple[int, int, int]:
    """(total, trainable, bytes) over ``params``, each parameter once even when shared."""
    total = trainable = size = 0
    for p in params:
        if _is_uninitialized(p):
            continue
        n = numel(p)
        total += n
        size += n * p.element_size()
        if p.requires_grad:
            trainable += n
    return total, trainable, size


def human_readable_count(number: int) -> str:
    """``123`` -> ``"123"``, ``1234`` -> ``"1.2 K"``, ``2_500_000`` -> ``"2.5 M"``."""
    for unit in ("", " K", " M", " B"):
        if abs(number) < 1000:
            return f"{number}" if not unit else f"{number:.1f}{unit}"
        number /= 1000  # type: ignore[assignment]
    return f"{number:.1f} T"


class Summary:
    """What :func:`summarize` returns: the rows (iterate over it) and the whole model's totals.

    ``str(summary)`` is the table the :class:`ModelSummary` callback prints.
    """

    def __init__(self, module: nn.Module, max_depth: int = 1, numel: Callable[[Tensor], int] = Tensor.numel) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise invalid_argument("max_depth", max_depth, "-1 (every layer), 0 (no layers) or a positive int")
        self.max_depth = max_depth
        named = list(module.named_modules())[1:]  # the module itself is the "Total" line, not a row
        if max_depth >= 0:
            named = [(name, layer) for name, layer in named if name.count(".") < max_depth]
        self.rows: list[LayerRow] = []
        sizes = _example_sizes(module, named)
        #: Whether the table has the "In sizes"/"Out sizes" columns (the module has ``example_input_array``).
        self.has_sizes = sizes is not None
        for name, layer in named:
            total, trainable, _ = _count(layer.parameters(), numel)
            in_size, out_size = sizes.get(name, ("?", "?")) if sizes is not None else (None, None)
            mode = "train" if layer.training else "eval"
            self.rows.append(LayerRow(name, type(layer).__name__, total, trainable, mode, in_size, out_size))
        self.total_parameters, self.trainable_parameters, size = _count(module.parameters(), numel)
        #: Bytes of all parameters, in MB (1e6 bytes), at their current dtype.
        self.model_size = size / 1e6
        modes = [m.training for m in list(module.modules())[1:]]
        self.training_modules = modes.count(True)
        self.eval_modules = modes.count(False)

    @property
    def non_trainable_parameters(self) -> int:
        return self.total_parameters - self.trainable_parameters

    @property
    def layer_names(self) -> list[str]:
        return [row.name for row in self.rows]

    @property
    def layer_types(self) -> list[str]:
        return [row.type for row in self.rows]

    @property
    def param_nums(self) -> list[int]:
        return [row.params for row in self.rows]

    def __iter__(self) -> Any:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> LayerRow:
        return self.rows[index]

    def __str__(self) -> str:
        header: tuple[str, ...] = ("", "Name", "Type", "Params", "Mode")
        body = [(str(i), r.name, r.type, human_readable_count(r.params), r.mode) for i, r in enumerate(self.rows)]
        if self.has_sizes:
            header += ("In sizes", "Out sizes")
            body = [(*cells, str(r.in_size), str(r.out_size)) for cells, r in zip(body, self.rows)]
        widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

        rule = "-" * max(len(line(header)), 40)
        lines = [line(header), rule, *(line(cells) for cells in body)]
        if body:
            lines.append(rule)
        totals = (
            (human_readable_count(self.trainable_parameters), "Trainable params"),
            (human_readable_count(self.non_trainable_parameters), "Non-trainable params"),
            (human_readable_count(self.total_parameters), "Total params"),
            (f"{self.model_size:,.3f}", "Total estimated model params size (MB)"),
            (str(self.training_modules), "Modules in train mode"),
            (str(self.eval_modules), "Modules in eval mode"),
        )
        lines.extend(f"{value:<10}{label}" for value, label in totals)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        shapes = [_shape_of(v) for v in value]
        return shapes[0] if len(shapes) == 1 else shapes
    return "?"


def _example_sizes(module: nn.Module, layers: list[tuple[str, nn.Module]]) -> dict[str, tuple[Any, Any]] | None:
    """Each layer's input and output shapes in one forward on ``example_input_array`` (None without one)."""
    example = getattr(module, "example_input_array", None)
    if example is None:
        return None
    sizes: dict[str, tuple[Any, Any]] = {}

    def recorder(name: str) -> Any:
        def record(layer: nn.Module, inputs: Any, output: Any) -> None:
            sizes[name] = (_shape_of(inputs), _shape_of(output))

        return record

    handles = [layer.register_forward_hook(recorder(name)) for name, layer in layers]
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    example = move_data_to_device(example, device)
    mode = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            if isinstance(example, (list, tuple)):
                module(*example)
            elif isinstance(example, dict):
                module(**example)
            else:
                module(example)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in mode.items():
            m.training = training
    return sizes


def summarize(module: nn.Module, max_depth: int = 1, numel: Callable[[Tensor], int] = Tensor.numel) -> Summary:
    """Summarise ``module``: a row per layer down to ``max_depth`` nesting levels (-1: all), and totals.

    ``numel`` counts a parameter's elements; the callback passes its strategy's
    ``parameter_numel``, which knows the whole size of a parameter an engine partitioned.
    """
    return Summary(module, max_depth, numel)


class ModelSummary(Callback):
    """Print :func:`summarize`'s table when fit starts, on global rank zero.

    Args:
        max_depth: how many levels of nested layers get a row: 1 the direct children, -1 every
            layer, 0 prints nothing.
    """

    trainer_role = MODEL_SUMMARY

    def __init__(self, max_depth: int = 1) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise invalid_argument("max_depth", max_depth, "-1 (every layer), 0 (no summary) or a positive int")
        self._max_depth = max_depth

    @property
    def max_depth(self) -> int:
        return self._max_depth

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        if self._max_depth == 0 or not trainer.is_global_zero:
            return
        self.summarize(summarize(pl_module, self._max_depth, trainer.strategy.parameter_numel))

    def summarize(self, summary: Summary) -> None:
        """Show the summary; override to send it elsewhere (a logger, a file)."""
        print(summary)
