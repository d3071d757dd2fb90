"""``strategy="ddp"``: re-run the user's script once per extra local rank, as torchrun would.

The current process becomes local rank 0 and the children inherit its environment plus their
rank. Whichever rank fails, every rank ends, with the failed rank's error:

- a child fails: a watcher thread polls the children; it kills the others and interrupts rank 0,
  whose error names the child and its exit;
- rank 0 raises inside ``launch``: the children are stopped before the error goes on;
- rank 0 raises outside any fulmen call (direct style, the user's own loop): ``sys.excepthook``
  stops them, instead of the exit handler waiting for children that wait in a collective;
- rank 0 is killed: the children get SIGKILL from the kernel (``PR_SET_PDEATHSIG``, Linux).

A script that ends normally (or with ``sys.exit``) waits for its children at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

from fulmen.strategies.environments.cluster_environment import ClusterEnvironment
from fulmen.strategies.launchers.launcher import Launcher
from fulmen.utilities.exceptions import DistributedError
from fulmen.utilities.processes import die_with_parent

#: Set in children so that a re-run script does not launch again.
CHILD_FLAG = "FULMEN_LAUNCHED_CHILD"
#: Seconds rank 0 waits, once it has failed, for a child's failure that may have caused its own.
FAILURE_GRACE = 5.0
#: This process's children, once started: one set however many Trainers and Lites the script creates.
_children: _Children | None = None


class SubprocessScriptLauncher(Launcher):
    def __init__(self, cluster_environment: ClusterEnvironment, num_processes: int, num_nodes: int) -> None:
        self.cluster_environment = cluster_environment
        self.num_processes = num_processes
        self.num_nodes = num_nodes

    @property
    def is_interactive_compatible(self) -> bool:
        return False

    @property
    def procs(self) -> list[subprocess.Popen]:
        """The other local ranks, shared by every launcher of this process."""
        return [] if _children is None else _children.procs

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Start the other ranks (once per process) and run ``function`` here, as rank 0.

        The children re-run the whole script, so they are not waited for here but at exit:
        a script that trains twice must not block its first call on the children's second.
        """
        self.launch_in_background()
        try:
            return function(*args, **kwargs)
        except BaseException as err:
            # Rank 0 failed: the job cannot go on, so no child may be left waiting for it.
            failure = None if _children is None else _children.shut_down(FAILURE_GRACE)
            if failure is not None and not isinstance(err, DistributedError):
                raise DistributedError(failure) from err
            raise

    def launch_in_background(self) -> None:
        """Direct style (``lite.launch()`` with no function): start the other ranks and return.

        The script goes on in this process as rank 0. An uncaught exception stops the children;
        a normal exit waits for them and turns a failed child into a non-zero exit.
        """
        global _children
        if (
            self.cluster_environment.creates_processes_externally
            or os.environ.get(CHILD_FLAG) == "1"
            or _children is not None
        ):
            return
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = "0"
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        command = _script_command()
        preexec = functools.partial(die_with_parent, os.getpid())  # children die with the launcher, even killed
        procs = []
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank), CHILD_FLAG: "1"}
            procs.append(subprocess.Popen(command, env=child_env, preexec_fn=preexec))
        # Module-level, so that a second Trainer's launcher stops them too.
        _children = _Children(procs)
        _children.start()


class _Children:
    """The other local ranks of this process and how they end: the one place that stops them."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.procs = procs
        self.watcher = _ChildWatcher(procs)
        self.stopped = False
        self.failure: str | None = None
        self._previous_excepthook = sys.excepthook

    def start(self) -> None:
        self.watcher.start()
        atexit.register(self.wait_at_exit)
        sys.excepthook = self.on_uncaught_exception

    def shut_down(self, grace: float) -> str | None:
        """Rank 0 failed: look for a child's failure that caused it, then stop every child.

        Returns the child's failure, if any (once; later calls return the same).
        """
        if self.stopped:
            return self.failure
        self.stopped = True
        with _sigint_recorded() as interrupted:  # the watcher's last SIGINT must not cut this short
            self.watcher.stop()
            self.failure = self.watcher.failure or self._wait_for_failure(grace, interrupted)
            self._kill()
        return self.failure

    def on_uncaught_exception(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        """Rank 0 ends with an error that no fulmen call saw: stop the children now, since they
        may wait in a collective for a rank that is gone (until the process group's timeout)."""
        shut_down_here = not self.stopped
        try:
            self._previous_excepthook(exc_type, exc, tb)
        finally:
            failure = self.shut_down(FAILURE_GRACE) if shut_down_here else None
            if failure is not None:
                print(f"fulmen: {failure}", file=sys.stderr, flush=True)

    def wait_at_exit(self) -> None:
        """Rank 0 ended without an error: wait for the children, ending them all if one fails."""
        if self.stopped:
            return
        self.stopped = True
        with _sigint_recorded() as interrupted:
            self.watcher.stop()
            failure = self.watcher.failure
            while failure is None and not interrupted.is_set():
                if all(proc.poll() is not None for proc in self.procs):
                    break
                interrupted.wait(0.1)
                failure = _describe_failure(self.procs)
            self._kill()
        self.failure = failure
        if failure is not None:
            print(f"fulmen: {failure}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)

    def _wait_for_failure(self, grace: float, interrupted: threading.Event) -> str | None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not interrupted.is_set():
            failure = _describe_failure(self.procs)
            if failure is not None or all(proc.poll() is not None for proc in self.procs):
                return failure
            interrupted.wait(0.05)
        return _describe_failure(self.procs)

    def _kill(self) -> None:
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
        # Held while deciding to interrupt: once ``stop`` returns, no SIGINT comes from here.
        self._lock = threading.Lock()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            failure = _describe_failure(self.procs)
            if failure is None:
                continue
            with self._lock:
                if self._stopped.is_set():
                    return
                self.failure = failure
                for proc in self.procs:
                    if proc.poll() is None:
                        proc.kill()
                # A real signal (not a flag) so that sleeps and blocking waits in rank 0 wake up.
                os.kill(os.getpid(), signal.SIGINT)
            return


@contextlib.contextmanager
def _sigint_recorded() -> Generator[threading.Event, None, None]:
    """While cleaning up, a SIGINT (the watcher's, or the user's Ctrl-C) sets an event instead of
    raising KeyboardInterrupt halfway through; the clean-up cuts its waits short on it."""
    interrupted = threading.Event()
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    except ValueError:  # not the main thread, where Python runs signal handlers
        yield interrupted
        return
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _describe_failure(procs: list[subprocess.Popen]) -> str | None:
    for local_rank, proc in enumerate(procs, start=1):
        code = proc.poll()
        if code is None or code == 0:
            continue
        if code < 0:
            try:
                how = f"it was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"it was killed by signal {-code}"
        else:
            how = "its traceback is printed above"
        return f"Local rank {local_rank} (pid {proc.pid}) exited with code {code}; {how}. The other ranks were stopped."
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
