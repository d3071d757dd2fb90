"""The process group's exit handler: a rank whose work succeeded exits with 0, whatever its script
does with the group at its end.

A gloo worker thread drops its last reference to a finished collective after the caller moved on;
with Python tensors in it, that takes the GIL. If the interpreter is already finalising, Python ends
the thread with a forced unwind and the rank aborts (``terminate called without an active
exception``), or, when the group's backend is freed with the GIL held, hangs. The handler
(``fulmen.strategies.group_exit``) waits until every gloo worker thread is idle, whether or not the
group is still initialised: the script's own ``destroy_process_group`` leaves the threads running.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import run_python

SCRIPTS = Path(__file__).parent / "scripts"
SCRIPT = SCRIPTS / "ddp_exit_gil.py"
DRIVER = SCRIPTS / "ddp_exit_destroy.py"
LOOPBACK = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def test_worker_thread_waiting_for_the_gil_at_exit_does_not_abort_the_process():
    # The script never lets the GIL go on its own: without the handler's wait it aborts about one
    # run in two, however long the machine takes to schedule the worker thread.
    proc = run_python(str(SCRIPT), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    assert proc.stdout.strip() == "done"


def _run_scenarios(out: Path, runs: int, configs: list[str], timeout: float) -> dict[str, list[list[int]]]:
    proc = run_python(str(DRIVER), str(out), str(runs), *configs, timeout=timeout, env=LOOPBACK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    failures = []
    for config in configs:
        name = config.replace(":", "-")
        assert len(summary[name]) == runs
        for run, codes in enumerate(summary[name]):
            for rank, code in enumerate(codes):
                if code != 0:  # -6: SIGABRT; -9: still running after the driver's timeout
                    err = (out / name / f"run_{run}" / f"rank_{rank}.err").read_text()
                    failures.append(f"{name} run {run} rank {rank}: exit {code}\n{err[-1500:]}")
    assert failures == [], "\n".join(failures)
    return summary


def _records(out: Path, name: str, run: int, world_size: int) -> list[dict]:
    return [json.loads((out / name / f"run_{run}" / f"rank_{rank}.json").read_text()) for rank in range(world_size)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lite_ddp_rank_exits_0_every_time_whether_or_not_the_script_destroys_the_group(tmp_path):
    # The reproduction, with the public API only: Lite(accelerator="cpu", devices=1 or 2,
    # strategy="ddp"), lite.setup(model), an all_gather into Python tensors while the main thread keeps
    # the GIL, then the script's own dist.destroy_process_group() (or none). Before the handler waited
    # for the worker threads, a quarter to a third of the "destroy" ranks aborted or hung at exit.
    runs = 20
    configs = ["keep:1", "destroy:1", "keep:2", "destroy:2"]
    _run_scenarios(tmp_path, runs, configs, timeout=540)
    for config in configs:
        name, world_size = config.replace(":", "-"), int(config.split(":")[1])
        for run in range(runs):
            records = _records(tmp_path, name, run, world_size)
            assert [r["rank"] for r in records] == list(range(world_size))
            assert all(r["world_size"] == world_size for r in records)
            assert all(r["gathered"] == [float(rank) for rank in range(world_size)] for r in records)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_script_run_through_fulmens_launcher_exits_0_when_it_destroys_the_group(tmp_path):
    # The same script as a user runs it: fulmen's launcher starts rank 1 by running it again, and
    # rank 0's exit code is the job's (a rank 1 that aborted makes it non-zero).
    proc = run_python(str(DRIVER), str(tmp_path), "--direct", "destroy:2", timeout=150, env=LOOPBACK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    records = [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["gathered"] for r in records] == [[0.0, 1.0], [0.0, 1.0]]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_front_end_and_strategy_exits_0_whatever_the_script_does_with_the_group(tmp_path):
    # The Trainer (the group destroyed in a callback before fulmen's teardown, after fit, or a
    # sys.exit(0) in a callback), FSDP, DeepSpeed, and a group the script created itself (as Ray
    # Train does) that fulmen joins: each ends the same hard way, twice.
    configs = [
        "trainer-destroy-in-callback:2",
        "trainer-exit-in-callback:2",
        "trainer-exit-in-callback:1",
        "trainer-destroy-after-fit:2",
        "fsdp:2",
        "joined:2",
        "joined:1",
    ]
    if importlib.util.find_spec("deepspeed") is not None:
        configs.append("deepspeed:2")
    runs = 2
    _run_scenarios(tmp_path, runs, configs, timeout=540)
    for config in configs:
        name, world_size = config.replace(":", "-"), int(config.split(":")[1])
        for run in range(runs):
            records = _records(tmp_path, name, run, world_size)
            assert all(r["world_size"] == world_size for r in records)
            if name.startswith("trainer"):
                assert all(r["global_step"] == 3 for r in records)
            else:
                assert all(r["gathered"] == [float(rank) for rank in range(world_size)] for r in records)
