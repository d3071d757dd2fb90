"""``AdvancedProfiler``: a ``cProfile`` report per action, function by function.

Python allows one active ``cProfile`` at a time (3.12 enforces it), so nested actions hand over:
while ``run_training_batch`` runs inside ``run_training_epoch``, only the batch's profiler is
on. Each action's report therefore counts the time spent in it outside the nested actions that
have their own report; add the nested ones up for an inclusive figure.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
from typing import Any

from fulmen.profilers.profiler import Profiler


class AdvancedProfiler(Profiler):
    """``cProfile`` statistics per action, sorted by cumulative time.

    ``line_count_restriction``: how many functions each report lists (an int), or which share of
    them (a float in (0, 1]). ``dump_stats=True`` also writes each action's raw statistics to
    ``dirpath/<stage>-<filename>-<action>.prof`` (readable with ``pstats`` or snakeviz).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike | None = None,
        filename: str | None = None,
        line_count_restriction: float = 1.0,
        dump_stats: bool = False,
    ) -> None:
        super().__init__(dirpath=dirpath, filename=filename)
        if isinstance(line_count_restriction, bool) or not isinstance(line_count_restriction, (int, float)):
            raise ValueError(
                f"`line_count_restriction={line_count_restriction!r}` is not accepted: give an int (lines) or a "
                "float in (0, 1] (a share of the lines)."
            )
        if line_count_restriction <= 0 or (isinstance(line_count_restriction, float) and line_count_restriction > 1):
            raise ValueError(
                f"`line_count_restriction={line_count_restriction!r}` is not accepted: give an int >= 1 (lines) or a "
                "float in (0, 1] (a share of the lines)."
            )
        self.line_count_restriction = line_count_restriction
        self.dump_stats = bool(dump_stats)
        self.profiled_actions: dict[str, cProfile.Profile] = {}
        #: The actions running now, innermost last; only the innermost one's profiler is enabled.
        self._running: list[str] = []

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage, local_rank, log_dir)
        self._disable_all()
        self.profiled_actions = {}

    def start(self, action_name: str) -> None:
        if action_name in self._running:
            raise ValueError(f"Attempted to start {action_name!r}, which has already started.")
        if self._running:
            self.profiled_actions[self._running[-1]].disable()
        profiler = self.profiled_actions.get(action_name)
        if profiler is None:
            profiler = self.profiled_actions[action_name] = cProfile.Profile()
        self._running.append(action_name)
        profiler.enable()

    def stop(self, action_name: str) -> None:
        if action_name not in self._running:
            raise ValueError(f"Attempted to stop {action_name!r}, which was never started.")
        innermost = self._running[-1] == action_name
        self.profiled_actions[action_name].disable()
        self._running.remove(action_name)
        if innermost and self._running:
            self.profiled_actions[self._running[-1]].enable()

    def summary(self) -> str:
        self._disable_all()
        if not self.profiled_actions:
            return ""
        if self.dump_stats:
            for action, profiler in self.profiled_actions.items():
                path = self._output_path(action, extension=".prof")
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                profiler.dump_stats(path)
        reports = {}
        for action, profiler in self.profiled_actions.items():
            stream = io.StringIO()
            stats = pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats("cumulative")
            stats.print_stats(self.line_count_restriction)
            reports[action] = stream.getvalue()
        return self._stats_to_str(reports)

    def teardown(self, stage: str | None = None) -> None:
        self._disable_all()
        super().teardown(stage)

    def _disable_all(self) -> None:
        for action in self._running:
            self.profiled_actions[action].disable()
        self._running = []

    def __getstate__(self) -> dict[str, Any]:
        # cProfile objects do not pickle; a spawned process starts with none recorded.
        state = super().__getstate__()
        state["profiled_actions"] = {}
        state["_running"] = []
        return state
