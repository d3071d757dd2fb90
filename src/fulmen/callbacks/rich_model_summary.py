"""``RichModelSummary``: the model summary as a ``rich`` table (``pip install 'fulmen[rich]'``).

The numbers are :class:`~fulmen.callbacks.model_summary.ModelSummary`'s; only the drawing differs.
Pass it instead of the default summary: ``Trainer(callbacks=[RichModelSummary(max_depth=2)])``.
"""

from __future__ import annotations

from typing import Any

from fulmen.callbacks.model_summary import ModelSummary, Summary, human_readable_count
from fulmen.callbacks.rich_progress import import_rich
from fulmen.utilities.exceptions import invalid_argument

_HEADER_STYLE = "bold magenta"


class RichModelSummary(ModelSummary):
    """Print the model summary as a ``rich`` table when fit starts, on global rank zero.

    Args:
        max_depth: how many levels of nested layers get a row (1: the direct children, -1: all,
            0: no summary).
        header_style: the rich style of the table's header row.
        console_kwargs: arguments of the ``rich.console.Console`` it prints on (``file``, ``width``, ...);
            by default rich's console on standard output.
    """

    def __init__(
        self, max_depth: int = 1, header_style: str = _HEADER_STYLE, console_kwargs: dict[str, Any] | None = None
    ) -> None:
        import_rich(type(self).__name__)
        super().__init__(max_depth=max_depth)
        if not isinstance(header_style, str):
            raise invalid_argument("header_style", header_style, "a rich style string such as 'bold magenta'")
        if console_kwargs is not None and not isinstance(console_kwargs, dict):
            raise invalid_argument("console_kwargs", console_kwargs, "None or a dict of rich.console.Console arguments")
        self._header_style = header_style
        self._console_kwargs = console_kwargs

    def summarize(self, summary: Summary) -> None:
        from rich import get_console
        from rich.console import Console
        from rich.table import Table

        console = Console(**self._console_kwargs) if self._console_kwargs is not None else get_console()
        table = Table(header_style=self._header_style)
        table.add_column(" ", style="dim")
        table.add_column("Name", justify="left", no_wrap=True)
        table.add_column("Type")
        table.add_column("Params", justify="right")
        table.add_column("Mode")
        for index, row in enumerate(summary):
            table.add_row(str(index), row.name, row.type, human_readable_count(row.params), row.mode)
        if len(summary):
            console.print(table)

        totals = Table.grid(expand=False)
        totals.add_column(style="bold")
        totals.add_column()
        totals.add_row(human_readable_count(summary.trainable_parameters), "Trainable params")
        totals.add_row(human_readable_count(summary.non_trainable_parameters), "Non-trainable params")
        totals.add_row(human_readable_count(summary.total_parameters), "Total params")
        totals.add_row(f"{summary.model_size:,.3f}", "Total estimated model params size (MB)")
        totals.add_row(str(summary.training_modules), "Modules in train mode")
        totals.add_row(str(summary.eval_modules), "Modules in eval mode")
        console.print(totals)
