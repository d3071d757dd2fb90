"""``Profiler``: the interface every profiler implements, and where its report goes.

A profiler records named actions between ``start(name)`` and ``stop(name)``. The Trainer calls
``setup`` when a call (fit, validate, test, predict) begins and ``describe`` when it ends: the
report goes to ``dirpath/<stage>-<filename>.txt`` when ``filename`` is given (``dirpath``
defaults to ``trainer.log_dir``), else to the console of global rank 0.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable, Iterator
from typing import Any, TextIO

from fulmen.utilities.annotations import resolve_init_annotations
from fulmen.utilities.rank_zero import rank_zero_print


class Profiler(ABC):
    """Subclass it and implement ``start`` and ``stop`` (and ``summary`` for a report) to write your own.

    ``dirpath``: the folder of the report file (default: ``trainer.log_dir``). ``filename``: write
    the report to ``<stage>-<filename>.txt`` there instead of printing it.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        resolve_init_annotations(cls)  # real types in the signature, as Lightning's have

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None) -> None:
        if filename is not None and (not isinstance(filename, str) or not filename or os.sep in filename):
            raise ValueError(
                f"`filename={filename!r}` is not accepted: give a file name without a folder (the folder is `dirpath`)."
            )
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self._output_file: TextIO | None = None
        self._stage: str | None = None
        self._local_rank: int | None = None

    @abstractmethod
    def start(self, action_name: str) -> None:
        """Begin recording ``action_name``."""

    @abstractmethod
    def stop(self, action_name: str) -> None:
        """End recording ``action_name``."""

    def summary(self) -> str:
        """The report of what was recorded (empty: nothing to report)."""
        return ""

    @contextlib.contextmanager
    def profile(self, action_name: str) -> Generator[str, None, None]:
        """``with profiler.profile("name"):`` records the block as one call of ``name``."""
        self.start(action_name)
        try:
            yield action_name
        finally:
            self.stop(action_name)

    def profile_iterable(self, iterable: Iterable[Any], action_name: str) -> Iterator[Any]:
        """Yield from ``iterable``, recording each ``next`` (the wait for data) as one call of ``action_name``."""
        iterator = iter(iterable)
        while True:
            self.start(action_name)
            try:
                value = next(iterator)
            except StopIteration:
                self.stop(action_name)
                return
            except BaseException:
                self.stop(action_name)
                raise
            self.stop(action_name)
            yield value

    # ------------------------------------------------------------------------ trainer calls
    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        """At the start of a Trainer call: ``stage`` is "fit", "validate", "test" or "predict".

        ``local_rank`` is given when several processes run (each writes its own file);
        ``log_dir`` becomes ``dirpath`` when none was given.
        """
        self._stage = stage
        self._local_rank = local_rank
        if self.dirpath is None and log_dir is not None:
            self.dirpath = os.fspath(log_dir)

    def teardown(self, stage: str | None = None) -> None:
        """At the end of a Trainer call (also after an error): release what recording holds."""
        if self._output_file is not None:
            self._output_file.close()
            self._output_file = None

    def describe(self) -> None:
        """Write the summary to the file or the console, then tear down (the Trainer calls it after each call)."""
        try:
            report = self.summary()
            if report:
                self._write(report)
        finally:
            self.teardown(self._stage)

    # ----------------------------------------------------------------------------- output
    def _prepare_filename(self, action_name: str | None = None, extension: str = ".txt", split_token: str = "-") -> str:
        """``<stage>-<filename>[-<local rank>][-<action>]<extension>``."""
        parts = [part for part in (self._stage, self.filename) if part]
        if self._local_rank is not None:
            parts.append(str(self._local_rank))
        if action_name is not None:
            parts.append(action_name)
        return split_token.join(parts) + extension

    def _output_path(self, action_name: str | None = None, extension: str = ".txt") -> str:
        folder = self.dirpath if self.dirpath is not None else os.getcwd()
        return os.path.join(folder, self._prepare_filename(action_name, extension))

    def _write(self, report: str) -> None:
        if not self.filename:
            rank_zero_print(report)
            return
        if self._output_file is None:
            import fsspec

            path = self._output_path()
            fs, _ = fsspec.core.url_to_fs(path)
            fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._output_file = fs.open(path, "a")
        self._output_file.write(report + os.linesep)
        self._output_file.flush()

    def _stats_to_str(self, stats: dict[str, str]) -> str:
        """A titled report with one section per action."""
        title = f"{self._stage.upper()} Profiler Report" if self._stage else "Profiler Report"
        lines = [title]
        for action, text in stats.items():
            header = f"Profile stats for: {action}"
            if self._local_rank is not None:
                header += f" rank: {self._local_rank}"
            lines += ["", header, text]
        return os.linesep.join(lines)

    def __getstate__(self) -> dict[str, Any]:
        # A spawned process gets the settings, never an open file.
        state = self.__dict__.copy()
        state["_output_file"] = None
        return state
