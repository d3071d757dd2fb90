"""Launchers start the other processes of a job and run the user's function in each.

A front end asks the launcher how it launches instead of checking its type:
``is_interactive_compatible`` (usable from a notebook), ``pickles_function`` (the function runs
in new processes from pickled arguments) and ``launch_in_background`` (start the other ranks
and return, for scripts that go on as rank 0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from fulmen.utilities.exceptions import MisconfigurationException


class Launcher(ABC):
    @property
    @abstractmethod
    def is_interactive_compatible(self) -> bool:
        """Whether it works from a notebook/REPL, where there is no script to re-run."""

    @property
    def pickles_function(self) -> bool:
        """Whether ``launch`` runs the function in new processes from pickled arguments.

        (Or from a fork's copy of them: the point is the same.) When True, the ranks work on
        copies of the caller's objects, which the run leaves untouched:
        whatever the caller needs back (weights, results, logger versions) must travel in the
        function's return value.
        """
        return False

    @abstractmethod
    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` on every rank; return what rank zero returned."""

    def launch_in_background(self) -> None:
        """Start the other ranks and return, so that the calling script goes on as rank 0.

        Only launchers that re-run the script can do this; the others need a function to run.
        """
        raise MisconfigurationException(
            f"{self._launch_description()} starts processes from a function: call `lite.launch(train_fn)` "
            "where train_fn(lite, ...) trains."
        )

    def _launch_description(self) -> str:
        return f"`{type(self).__name__}`"
