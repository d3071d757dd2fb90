"""``SimpleProfiler``: wall time per action, as a table of mean, calls, total and share.

Each ``start``/``stop`` pair costs two clock reads and a list append, so it can stay on for a
whole run. The table comes at the end of each Trainer call (sorted by total time), printed or
written to ``<stage>-<filename>.txt``.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

from fulmen.profilers.profiler import Profiler


class SimpleProfiler(Profiler):
    """Times every action with ``time.perf_counter``.

    ``extended=True`` adds the number of calls and each action's share of the call's total time.
    ``recorded_durations[name]`` holds every duration, in seconds, of the current Trainer call
    (each call starts afresh).
    """

    def __init__(
        self, dirpath: str | os.PathLike | None = None, filename: str | None = None, extended: bool = True
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        self.extended = bool(extended)
        self.current_actions: dict[str, float] = {}
        self.recorded_durations: defaultdict[str, list[float]] = defaultdict(list)
        self.start_time = time.perf_counter()

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        # Each call reports its own time: a validate after fit does not repeat fit's rows.
        self.current_actions.clear()
        self.recorded_durations.clear()
        self.start_time = time.perf_counter()

    def start(self, action_name: str) -> None:
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name!r}, which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        end = time.perf_counter()
        start = self.current_actions.pop(action_name, None)
        if start is None:
            raise ValueError(f"Attempted to stop {action_name!r}, which was never started.")
        self.recorded_durations[action_name].append(end - start)

    def summary(self) -> str:
        if not self.recorded_durations:
            return ""
        total = time.perf_counter() - self.start_time
        rows = sorted(
            ((name, sum(durations), len(durations)) for name, durations in self.recorded_durations.items()),
            key=lambda row: row[1],
            reverse=True,
        )
        if self.extended:
            header = ("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
            calls = sum(count for _, _, count in rows)
            first = ("Total", "-", str(calls), f"{total:.5g}", "100 %")
            body = [
                (name, f"{spent / count:.5g}", str(count), f"{spent:.5g}", _share(spent, total))
                for name, spent, count in rows
            ]
        else:
            header = ("Action", "Mean duration (s)", "Total time (s)")
            first = ("Total", "-", f"{total:.5g}")
            body = [(name, f"{spent / count:.5g}", f"{spent:.5g}") for name, spent, count in rows]
        return self._title() + os.linesep + _table(header, [first, *body])

    def _title(self) -> str:
        title = f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"
        if self._local_rank is not None:
            title += f" (rank {self._local_rank})"
        return title


def _share(spent: float, total: float) -> str:
    return f"{100 * spent / total:.4g}" if total > 0 else "-"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A bordered text table; the first row (the total) gets its own rule below it."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "|  " + "  |  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  |"

    rule = "-" * len(line(header))
    out = [rule, line(header), rule, line(rows[0]), rule, *(line(row) for row in rows[1:]), rule]
    return os.linesep.join(out)
