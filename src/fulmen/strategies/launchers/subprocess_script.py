"""``strategy="ddp"``: re-run the user's script once per extra local rank, as torchrun would.

The current process becomes local rank 0 and the children inherit its environment plus their
rank. A watcher thread polls the children: when one exits with an error, the others are
killed and the main process is interrupted, so that no rank waits forever on a dead peer.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from fulmen.strategies.environments.cluster_environment import ClusterEnvironment
from fulmen.strategies.launchers.launcher import Launcher
from fulmen.utilities.exceptions import DistributedError

#: Set in children so that a re-run script does not launch again.
CHILD_FLAG = "FULMEN_LAUNCHED_CHILD"
#: One set of children per process, however many Trainers and Lites the script creates.
_CHILDREN_STARTED = False


class SubprocessScriptLauncher(Launcher):
    def __init__(self, cluster_environment: ClusterEnvironment, num_processes: int, num_nodes: int) -> None:
        self.cluster_environment = cluster_environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes
        self.procs: list[subprocess.Popen] = []
        self._watcher: _ChildWatcher | None = None

    @property
    def is_interactive_compatible(self) -> bool:
        return False

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start the other ranks (once per process) and run ``function`` here, as rank 0.

        The children re-run the whole script, so they are not waited for here but at exit:
        a script that trains twice must not block its first call on the children's second.
        """
        self.launch_in_background()
        try:
            return function(*args, **kwargs)
        except BaseException as err:
            # Rank 0 failed: the job cannot go on, so no child may be left waiting for it. The
            # watcher is told first, so that it does not interrupt this handler with a SIGINT.
            if self._watcher is not None:
                self._watcher.stop()
            try:
                failure = self._child_failure(grace=5.0)
            except KeyboardInterrupt:  # a SIGINT the watcher sent just before it was told
                failure = _describe_failure(self.procs)
            self._stop_children()
            if failure is not None and not isinstance(err, DistributedError):
                raise DistributedError(failure) from err
            raise

    def launch_in_background(self) -> None:
        """Direct style (``lite.launch()`` with no function): start the other ranks and return.

        The script goes on in this process as rank 0; at exit we wait for the children and
        turn a failed child into a non-zero exit.
        """
        global _CHILDREN_STARTED
        if (
            self.cluster_environment.creates_processes_externally
            or os.environ.get(CHILD_FLAG) == "1"
            or _CHILDREN_STARTED
        ):
            return
        _CHILDREN_STARTED = True
        self._start_children()
        atexit.register(self._wait_at_exit)

    def _wait_at_exit(self) -> None:
        if self._watcher is not None and self._watcher._stopped.is_set():
            return  # already stopped after a failure
        failure = self._wait_for_children()
        if failure is not None:
            print(f"fulmen: {failure}", file=sys.stderr)
            os._exit(1)

    def _start_children(self) -> None:
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = "0"
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        command = _script_command()
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank), CHILD_FLAG: "1"}
            self.procs.append(subprocess.Popen(command, env=child_env, preexec_fn=_die_with_parent))
        self._watcher = _ChildWatcher(self.procs)
        self._watcher.start()

    def _child_failure(self, grace: float) -> str | None:
        if self._watcher is None:
            return None
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _describe_failure(self.procs) is None:
            if all(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.05)
        return self._watcher.failure or _describe_failure(self.procs)

    def _wait_for_children(self) -> str | None:
        if self._watcher is None:
            return None
        for proc in self.procs:
            proc.wait()
        self._watcher.stop()
        return self._watcher.failure or _describe_failure(self.procs)

    def _stop_children(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()


class _ChildWatcher(threading.Thread):
    """Polls the children; on the first failure kills the rest and interrupts the main process."""

    def __init__(self, procs: list[subprocess.Popen], interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="fulmen-child-watcher")
        self.procs = procs
        self.interval = interval
        self.failure: str | None = None
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            failure = _describe_failure(self.procs)
            if failure is not None:
                self.failure = failure
                if not self._stopped.is_set():
                    self._fail()
                return

    def _fail(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        # A real signal (not a flag) so that sleeps and blocking waits in rank 0 wake up.
        os.kill(os.getpid(), signal.SIGINT)


def _describe_failure(procs: list[subprocess.Popen]) -> str | None:
    for local_rank, proc in enumerate(procs, start=1):
        code = proc.poll()
        if code is not None and code != 0:
            return (
                f"Local rank {local_rank} (pid {proc.pid}) exited with code {code}; "
                "its traceback is printed above. The other ranks were stopped."
            )
    return None


def _script_command() -> list[str]:
    """The command that started this process: ``python script.py args`` or ``python -m pkg args``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name not in ("__main__", None):
        module = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", module, *sys.argv[1:]]
    script = os.path.abspath(sys.argv[0])
    return [sys.executable, script, *sys.argv[1:]]


def _die_with_parent() -> None:
    """Children die with the launcher, even when it is killed with SIGKILL (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the watcher still stops them on errors
        pass
