"""``fulmen run --replica-groups N``: a torchft lighthouse, N replica groups, and a restart for a group that dies.

The lighthouse runs inside this process, bound to 127.0.0.1 on a free port. Each group is the
script in its own process, told its place through ``TORCHFT_LIGHTHOUSE``, ``FULMEN_REPLICA_GROUP``
and ``FULMEN_NUM_REPLICA_GROUPS``.

A group killed by a signal is restarted (``--max-restarts`` times in all) and heals from the live
ones. A group that ends with an error (its script raised) ends the job with that error: restarting
it would fail the same way. Once one group has finished, training is over: the others get
``FINISH_GRACE`` seconds to finish their last step, and no group is restarted any more.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from fulmen.strategies.launchers.subprocess_script import _die_with_parent

#: Seconds the other groups get to finish once one group has ended successfully.
FINISH_GRACE = 60.0
POLL_INTERVAL = 0.1


@dataclass
class _Group:
    index: int
    proc: subprocess.Popen
    starts: int = 1
    pids: list[int] = field(default_factory=list)


def run_replica_groups(
    script: str,
    script_args: list[str],
    groups: int,
    max_restarts: int = 3,
    heartbeat_timeout: float = 5.0,
    min_replicas: int = 1,
) -> int:
    """Run the job; returns its exit status (0: every group that ended, ended well)."""
    os.environ.setdefault("RUST_LOG", "warn")  # torchft logs every quorum at info (see cli.main)
    from torchft._torchft import LighthouseServer

    lighthouse = LighthouseServer(
        bind="127.0.0.1:0",
        min_replicas=min_replicas,
        join_timeout_ms=int(max(heartbeat_timeout, 1.0) * 1000),
        heartbeat_timeout_ms=int(heartbeat_timeout * 1000),
    )
    env = dict(os.environ)
    env["TORCHFT_LIGHTHOUSE"] = _loopback(lighthouse.address())
    env["FULMEN_NUM_REPLICA_GROUPS"] = str(groups)
    env.setdefault("FULMEN_STRATEGY", "fault_tolerant")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # every group is on this machine: gloo over loopback
    command = [sys.executable, script, *script_args]
    running = {g: _Group(g, _start(command, env, g, 0)) for g in range(groups)}
    for group in running.values():
        group.pids.append(group.proc.pid)
    restarts_left = max_restarts
    finished_at: float | None = None
    status = 0
    try:
        while running:
            time.sleep(POLL_INTERVAL)
            for index, group in list(running.items()):
                code = group.proc.poll()
                if code is None:
                    continue
                del running[index]
                if code == 0:
                    finished_at = finished_at or time.monotonic()
                    continue
                if code > 0:
                    print(f"fulmen run: replica group {index} failed with exit code {code} (its error is above); "
                          "stopping the other groups.", file=sys.stderr, flush=True)  # fmt: skip
                    return code
                how = _how_it_ended(code)
                if finished_at is not None:
                    continue  # training is over: a group that dies now is not needed again
                if restarts_left <= 0:
                    print(f"fulmen run: replica group {index} {how}, and --max-restarts={max_restarts} restarts are "
                          "used up; stopping the job.", file=sys.stderr, flush=True)  # fmt: skip
                    return 1
                restarts_left -= 1
                print(f"fulmen run: replica group {index} {how}; restarting it ({max_restarts - restarts_left} of "
                      f"{max_restarts} restarts).", file=sys.stderr, flush=True)  # fmt: skip
                group.proc = _start(command, env, index, group.starts)
                group.starts += 1
                group.pids.append(group.proc.pid)
                running[index] = group
            if finished_at is not None and running and time.monotonic() - finished_at > FINISH_GRACE:
                print(f"fulmen run: groups {sorted(running)} had not finished {FINISH_GRACE:.0f} s after the first "
                      "group did; stopping them.", file=sys.stderr, flush=True)  # fmt: skip
                return status
        return status
    except KeyboardInterrupt:
        return 130
    finally:
        for group in running.values():
            _stop(group.proc)
        lighthouse.shutdown()


def _start(command: list[str], env: dict[str, str], index: int, restart: int) -> subprocess.Popen:
    group_env = {**env, "FULMEN_REPLICA_GROUP": str(index), "FULMEN_REPLICA_GROUP_RESTART": str(restart)}
    # Its own session: stopping a group is one signal to its process group (with any children it
    # started); and it dies with this launcher, even when the launcher is killed.
    preexec = functools.partial(_die_with_parent, os.getpid())
    return subprocess.Popen(command, env=group_env, start_new_session=True, preexec_fn=preexec)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"ended with exit code {code}"


def _loopback(address: str) -> str:
    """The lighthouse reports its bound address; make sure the groups dial it on loopback."""
    scheme, _, rest = address.rpartition("://")
    port = rest.rsplit(":", 1)[-1]
    return f"{scheme or 'http'}://127.0.0.1:{port}"
