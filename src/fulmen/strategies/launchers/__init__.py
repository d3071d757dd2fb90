"""Launchers: how the processes of a job come to exist."""

from fulmen.strategies.launchers.launcher import Launcher
from fulmen.strategies.launchers.multiprocessing import MultiprocessingLauncher
from fulmen.strategies.launchers.subprocess_script import SubprocessScriptLauncher

__all__ = ["Launcher", "MultiprocessingLauncher", "SubprocessScriptLauncher"]
