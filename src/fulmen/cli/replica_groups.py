"""``fulmen run --replica-groups N``: a torchft lighthouse, N replica groups, and a restart for a group that dies.

The lighthouse runs inside this process, bound to 127.0.0.1 on a free port. Each group is the
script in ``processes`` processes (one per device, ``--devices K``), told its place through
``TORCHFT_LIGHTHOUSE``, ``FULMEN_REPLICA_GROUP`` and ``FULMEN_NUM_REPLICA_GROUPS``; several
processes of a group also get the variables torchrun would set (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` on a free port of their own).

A group one of whose processes is killed by a signal is stopped whole and restarted
(``--max-restarts`` times in all) and heals from the live
ones. A group that ends with an error (its script raised) ends the job with that error: restarting
it would fail the same way. Once one group has finished, training is over: the others get
``FINISH_GRACE`` seconds to finish their last step, and no group is restarted any more; a group
restarted before that which then finds nobody to heal from fails without failing the job.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from fulmen.strategies.environments.lightning import find_free_network_port
from fulmen.utilities.processes import die_with_parent

#: Seconds the other groups get to finish once one group has ended successfully.
FINISH_GRACE = 60.0
POLL_INTERVAL = 0.1


@dataclass
class _Group:
    index: int
    procs: list[subprocess.Popen]
    starts: int = 1
    pids: list[int] = field(default_factory=list)

    def ended(self) -> tuple[bool, int]:
        """``(over, code)``: a process killed by a signal, one that failed, or all that finished well."""
        codes = [proc.poll() for proc in self.procs]
        killed = [code for code in codes if code is not None and code < 0]
        if killed:  # checked first: the kill is what made the others fail (their peer vanished)
            return True, killed[0]
        failed = [code for code in codes if code is not None and code > 0]
        if failed:
            return True, failed[0]
        return all(code == 0 for code in codes), 0


def run_replica_groups(
    script: str,
    script_args: list[str],
    groups: int,
    max_restarts: int = 3,
    heartbeat_timeout: float = 5.0,
    min_replicas: int = 1,
    processes: int = 1,
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
    running = {g: _Group(g, _start(command, env, g, 0, processes)) for g in range(groups)}
    for group in running.values():
        group.pids.extend(proc.pid for proc in group.procs)
    restarts_left = max_restarts
    finished_at: float | None = None
    status = 0
    try:
        while running:
            time.sleep(POLL_INTERVAL)
            for index, group in list(running.items()):
                over, code = group.ended()
                if not over:
                    continue
                del running[index]
                _stop(group.procs)  # the rest of a group that lost a process cannot go on
                if code == 0:
                    finished_at = finished_at or time.monotonic()
                    continue
                if code > 0 and finished_at is not None and group.starts > 1:
                    print(f"fulmen run: restarted replica group {index} ended with exit code {code} after training "
                          "had finished (nothing was left to heal it from).", file=sys.stderr, flush=True)  # fmt: skip
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
                group.procs = _start(command, env, index, group.starts, processes)
                group.starts += 1
                group.pids.extend(proc.pid for proc in group.procs)
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
            _stop(group.procs)
        lighthouse.shutdown()


def _start(command: list[str], env: dict[str, str], index: int, restart: int, processes: int) -> list[subprocess.Popen]:
    group_env = {**env, "FULMEN_REPLICA_GROUP": str(index), "FULMEN_REPLICA_GROUP_RESTART": str(restart)}
    gpus = group_gpus(index, processes, _visible_gpus(env))
    if gpus is not None:
        group_env["CUDA_VISIBLE_DEVICES"] = gpus
    if processes > 1:  # the group's own process group: a new port each start, so no old socket is in the way
        group_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(find_free_network_port()), WORLD_SIZE=str(processes),
                         LOCAL_WORLD_SIZE=str(processes), NODE_RANK="0", GROUP_RANK="0")  # fmt: skip
    # Each process in its own session: stopping it is one signal to its process group (with any
    # children it started); and it dies with this launcher, even when the launcher is killed.
    preexec = functools.partial(die_with_parent, os.getpid())
    procs = []
    for rank in range(processes):
        rank_env = {**group_env, "RANK": str(rank), "LOCAL_RANK": str(rank)} if processes > 1 else group_env
        procs.append(subprocess.Popen(command, env=rank_env, start_new_session=True, preexec_fn=preexec))
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in procs:
        proc.wait()


def group_gpus(index: int, processes: int, available: list[str]) -> str | None:
    """The GPUs group ``index`` sees (``CUDA_VISIBLE_DEVICES``): its own ``processes`` of them, so that
    groups on one machine never share a device; None when there are too few to give each its own."""
    first = index * processes
    if first + processes > len(available):
        return None
    return ",".join(available[first : first + processes])


def _visible_gpus(env: dict[str, str]) -> list[str]:
    """The GPUs this launcher may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else every device torch sees."""
    if env.get("FULMEN_ACCELERATOR") == "cpu":
        return []
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip()]
    import torch

    return [str(device) for device in range(torch.cuda.device_count())]


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
