"""Replica groups on torchft in real processes: `fulmen run --replica-groups 2`, a real lighthouse, loopback.

Each script writes one JSON line per step (``steps-<group>.jsonl``) and its final state; the
tests kill a group with SIGKILL at a random step and read what happened from those files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchft")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SCRIPTS = Path(__file__).parent / "ft_scripts"
HEARTBEAT = 1.0


def _launch(tmp_path: Path, script: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "fulmen.cli.main", "run", str(SCRIPTS / script), "--replica-groups", "2",
               "--heartbeat-timeout", str(HEARTBEAT), *flags]  # fmt: skip
    full_env = {**os.environ, "FT_OUT": str(tmp_path), "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    # Output to a file: a pipe nobody reads until the end would fill up and block the groups.
    output = open(tmp_path / "output.txt", "w")  # noqa: SIM115 (closed by _finish)
    proc = subprocess.Popen(command, env=full_env, stdout=output, stderr=subprocess.STDOUT)
    proc.output_file = output  # type: ignore[attr-defined]
    return proc


def _lines(tmp_path: Path, group: int | str) -> list[dict]:
    path = tmp_path / f"steps-{group}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _records(tmp_path: Path, group: int | str) -> list[dict]:
    """One process's step records: ``group`` is the group (one process per group) or ``"<group>-<rank>"``."""
    return [record for record in _lines(tmp_path, group) if record.get("kind") != "pending"]


def _unrecorded(tmp_path: Path, group: int | str) -> list[dict]:
    """The steps a killed process voted on but never recorded: its last ``pending`` line, if no record followed."""
    last: dict[int, dict | None] = {}
    for line in _lines(tmp_path, group):
        last[line["pid"]] = line if line.get("kind") == "pending" else None
    return [line for line in last.values() if line is not None]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_group(tmp_path: Path, group: int | str, after_commits: int) -> tuple[int, float]:
    """SIGKILL ``group``'s current process (``"<group>-<rank>"``: that rank's) once it has committed
    ``after_commits`` steps; (pid, time)."""

    def ready() -> bool:
        return sum(r["committed"] for r in _records(tmp_path, group)) >= after_commits

    _wait_for(ready, 60, f"group {group} to commit {after_commits} steps")
    time.sleep(random.uniform(0.0, 0.1))  # anywhere in the step: forward, all-reduce or commit
    pid = _records(tmp_path, group)[-1]["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid, time.time()


def _run_killing(
    tmp_path: Path, script: str, victim: int | str, after_commits: int, *flags: str, env: dict, timeout: float = 120
) -> tuple[str, int, int, float]:
    """Run the job, SIGKILL ``victim`` once it has committed ``after_commits`` steps, wait for the end:
    (output, exit status, the killed pid, when it was killed)."""
    proc = _launch(tmp_path, script, *flags, env=env)
    try:
        killed_pid, killed_at = _kill_group(tmp_path, victim, after_commits)
        output = _finish(proc, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return output, proc.returncode, killed_pid, killed_at


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"fulmen run did not end in {timeout} s:\n{_output(proc)[-4000:]}") from None
    return _output(proc)


def _output(proc: subprocess.Popen) -> str:
    proc.output_file.close()  # type: ignore[attr-defined]
    return Path(proc.output_file.name).read_text()  # type: ignore[attr-defined]


def _check_every_sample_once(tmp_path: Path, num_samples: int, epochs: int, names=(0, 1)) -> None:
    per_epoch: dict[int, list[int]] = {}
    records = {name: _records(tmp_path, name) for name in names}
    for name in names:
        for record in records[name]:
            if record["committed"]:
                per_epoch.setdefault(record["epoch"], []).extend(record["samples"])
        # Killed after its vote, before its record: its samples count if another group committed that step with it.
        for pending in _unrecorded(tmp_path, name):
            if any(
                r["group"] != pending["group"] and r["committed"] and r["participants"] >= 2
                and (r["epoch"], r["global_step"]) == (pending["epoch"], pending["global_step"] + 1)
                for other in names for r in records[other]
            ):  # fmt: skip
                per_epoch.setdefault(pending["epoch"], []).extend(pending["samples"])
    # A step is recorded by every process of every group of its quorum, each with its own share.
    assert sorted(per_epoch) == list(range(epochs))
    for epoch, samples in per_epoch.items():
        assert sorted(samples) == list(range(num_samples)), f"epoch {epoch}: {sorted(samples)}"


def _check_equal_finals(tmp_path: Path, names=(0, 1)) -> dict:
    finals = [torch.load(tmp_path / f"final-{name}.pt", weights_only=False) for name in names]
    for key in ("model",):
        for name, value in finals[0][key].items():
            assert torch.equal(value, finals[1][key][name]), name
    state0, state1 = finals[0]["optimizer"]["state"], finals[1]["optimizer"]["state"]
    assert state0.keys() == state1.keys() and state0
    for index in state0:
        assert torch.equal(state0[index]["momentum_buffer"], state1[index]["momentum_buffer"])
    assert finals[0]["scheduler"] == finals[1]["scheduler"]
    assert finals[0]["progress"] == finals[1]["progress"]
    return finals[0]


def test_lite_group_killed_twice_heals_and_every_sample_once(tmp_path: Path) -> None:
    epochs = 14
    proc = _launch(tmp_path, "lite_train.py", env={"FT_EPOCHS": str(epochs), "FT_SLEEP": "0.15"})
    try:
        first_pid, killed_at = _kill_group(tmp_path, 1, after_commits=random.randint(6, 16))
        # Once restarted and healed, killed again (anywhere in its step, the all-reduce included).
        commits = sum(r["committed"] for r in _records(tmp_path, 1))
        second_pid, _ = _kill_group(tmp_path, 1, after_commits=commits + random.randint(3, 8))
        output = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert "replica group 1 was killed by SIGKILL; restarting it (1 of 3 restarts)" in output
    assert "replica group 1 was killed by SIGKILL; restarting it (2 of 3 restarts)" in output
    assert first_pid != second_pid

    survivor = _records(tmp_path, 0)
    assert {r["pid"] for r in survivor} == {survivor[0]["pid"]}, "the survivor restarted"
    after_kill = [r for r in survivor if r["time"] > killed_at and r["committed"]]
    assert after_kill and after_kill[0]["time"] - killed_at < HEARTBEAT + 2.0
    assert any(r["participants"] == 1 for r in after_kill), "the survivor never trained alone"

    last = [r for r in _records(tmp_path, 1) if r["pid"] not in (first_pid, second_pid)]
    assert last and all(r["participants"] == 2 for r in last if r["committed"])
    assert last[0]["global_step"] > 1, "the restarted group started over instead of healing"

    final = _check_equal_finals(tmp_path)
    assert final["progress"]["global_step"] == sum(r["committed"] for r in survivor)
    _check_every_sample_once(tmp_path, 64, epochs)


@pytest.mark.parametrize("workers", [0, 2])
def test_trainer_group_zero_killed_heals_counts_committed_steps_and_checkpoints(tmp_path: Path, workers: int) -> None:
    """Group 0 hosts the quorum's rendezvous store and writes the checkpoints: group 1 takes both over.
    Also with the batches loaded in 2 DataLoader workers per group."""
    epochs = 8
    env = {"FT_EPOCHS": str(epochs), "FT_SLEEP": "0.15", "FT_WORKERS": str(workers)}
    output, status, killed_pid, killed_at = _run_killing(
        tmp_path, "trainer_train.py", 0, random.randint(6, 20), env=env
    )
    assert status == 0, output[-4000:]
    survivor = _records(tmp_path, 1)
    assert {r["pid"] for r in survivor} == {survivor[0]["pid"]}, "the survivor restarted"
    after_kill = [r for r in survivor if r["time"] > killed_at and r["committed"]]
    assert after_kill and after_kill[0]["time"] - killed_at < HEARTBEAT + 2.0
    restarted = [r for r in _records(tmp_path, 0) if r["pid"] != killed_pid]
    assert restarted and restarted[0]["global_step"] > 1, "the restarted group started over instead of healing"
    # global_step counts committed steps only, on the survivor and (after healing) on the restarted group.
    committed = [r for r in survivor if r["committed"]]
    assert [r["global_step"] for r in committed] == list(range(1, len(committed) + 1))
    lr_at = {r["global_step"]: r["lr"] for r in committed}
    assert all(lr_at[r["global_step"]] == r["lr"] for r in restarted if r["committed"])  # the same schedule
    final = _check_equal_finals(tmp_path)
    assert final["progress"] == {"global_step": len(committed), "epoch": epochs}
    _check_every_sample_once(tmp_path, 64, epochs)
    # Written by whichever group was rank 0 of the quorum: the job's checkpoint is the final state.
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == len(committed)
    counts = json.loads((tmp_path / "loader-1.json").read_text())  # where the survivor's batches came from
    # 8 steps per epoch, and one more batch in an epoch whose last step did not commit (the kill hit it).
    ended_uncommitted = sum(1 for r in survivor if r["batch_idx"] == 7 and not r["committed"])
    assert counts["prefetched"] + counts["loaded_in_process"] == epochs * 8 + ended_uncommitted == len(survivor)
    if workers:  # from the workers, but for a batch or two at each change of quorum (the kill, the rejoin)
        assert counts["loaded_in_process"] <= 4, counts
    else:
        assert counts["prefetched"] == 0, counts


def test_a_group_that_starts_late_is_waited_for_so_that_every_group_trains_from_the_first_step(tmp_path: Path) -> None:
    """Group 1 starts 3 s after group 0 (more than the lighthouse waits for stragglers): without waiting
    for it, group 0 would train this short job alone and group 1 would then train it again alone."""
    env = {"FT_EPOCHS": "2", "FT_START_DELAY_1": "3"}
    proc = _launch(tmp_path, "trainer_train.py", env=env)
    output = _finish(proc, timeout=90)
    assert proc.returncode == 0, output[-4000:]
    for group in (0, 1):
        records = _records(tmp_path, group)
        assert len(records) == 16 and all(r["committed"] and r["participants"] == 2 for r in records)
    _check_every_sample_once(tmp_path, 64, 2)
    _check_equal_finals(tmp_path)


def test_max_restarts_used_up_ends_the_job(tmp_path: Path) -> None:
    env = {"FT_EPOCHS": "50", "FT_SLEEP": "0.05"}
    output, status, _, _ = _run_killing(tmp_path, "lite_train.py", 1, 3, "--max-restarts", "0", env=env, timeout=60)
    assert status == 1
    assert "replica group 1 was killed by SIGKILL, and --max-restarts=0 restarts are used up" in output
    assert not (tmp_path / "final-0.pt").exists()  # the survivor was stopped too


def test_a_group_that_raises_ends_the_job_with_its_error(tmp_path: Path) -> None:
    env = {"FT_EPOCHS": "50", "FT_SLEEP": "0.05", "FT_RAISE_GROUP": "1", "FT_RAISE_AT": "3"}
    proc = _launch(tmp_path, "lite_train.py", env=env)
    output = _finish(proc, timeout=60)
    assert proc.returncode == 1
    assert "RuntimeError: group 1 fails on purpose at step 3" in output
    assert "replica group 1 failed with exit code 1 (its error is above); stopping the other groups" in output
    assert "restarting" not in output


def test_trainer_two_groups_of_two_processes_one_killed_group_restarts_whole_and_heals(tmp_path: Path) -> None:
    """2 groups x 2 processes (FSDP inside a group: hybrid sharding): one process of group 1 is
    killed, so its group is stopped and restarted whole; each rank heals from the same rank of group 0.
    Long enough for the restarted group (two processes starting on two cores) to join before the end."""
    epochs = 20
    env = {"FT_EPOCHS": str(epochs), "FT_SLEEP": "0.15", "FT_INNER": "fsdp"}
    victim = f"1-{random.randint(0, 1)}"
    output, status, killed_pid, killed_at = _run_killing(
        tmp_path, "trainer_train.py", victim, random.randint(5, 12), "--devices", "2", env=env
    )
    assert status == 0, output[-4000:]
    assert "replica group 1 was killed by SIGKILL; restarting it (1 of 3 restarts)" in output
    for rank in (0, 1):
        survivor = _records(tmp_path, f"0-{rank}")
        assert {r["pid"] for r in survivor} == {survivor[0]["pid"]}, "a survivor restarted"
        after_kill = [r for r in survivor if r["time"] > killed_at and r["committed"]]
        assert after_kill and after_kill[0]["time"] - killed_at < HEARTBEAT + 2.0
        committed = [r for r in survivor if r["committed"]]
        assert [r["global_step"] for r in committed] == list(range(1, len(committed) + 1))
        records = _records(tmp_path, f"1-{rank}")  # in the order written: the first process's first
        pids = {r["pid"] for r in records}
        assert len(pids) == 2, f"rank {rank} of group 1 was not restarted with its group: {pids}"
        restarted = [r for r in records if r["pid"] != records[0]["pid"]]
        assert restarted and restarted[0]["global_step"] > 1, "the restarted group started over instead of healing"
        final = _check_equal_finals(tmp_path, names=(f"0-{rank}", f"1-{rank}"))
        assert final["progress"] == {"global_step": len(committed), "epoch": epochs}
    assert killed_pid in {r["pid"] for r in _records(tmp_path, victim)}
    _check_every_sample_once(tmp_path, 64, epochs, names=("0-0", "0-1", "1-0", "1-1"))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == len(committed)


def test_a_job_that_lost_every_group_resumes_from_disk_with_the_exactly_once_position(tmp_path: Path) -> None:
    """The first run stops mid-epoch (every group gone); the second resumes from `last.ckpt`: the
    epoch it was in goes on with the samples it had not fed, so each sample is in one committed step."""
    first = _launch(tmp_path, "trainer_train.py", env={"FT_EPOCHS": "3", "FT_MAX_STEPS": "10", "FT_EVERY": "1"})
    output = _finish(first, timeout=90)
    assert first.returncode == 0, output[-4000:]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    # 8 steps of 2 groups x 4 samples per epoch: step 10 is two steps into epoch 1.
    assert checkpoint["global_step"] == 10
    assert checkpoint["strategy_progress"]["data_position"] == {"epoch": 1, "cursor": 16, "steps": 2}
    pids = {name: {r["pid"] for r in _records(tmp_path, name)} for name in (0, 1)}

    second = _launch(tmp_path, "trainer_train.py", env={"FT_EPOCHS": "3", "FT_RESUME": "1"})
    output = _finish(second, timeout=90)
    assert second.returncode == 0, output[-4000:]
    for name in (0, 1):
        resumed = [r for r in _records(tmp_path, name) if r["pid"] not in pids[name]]
        assert [(r["epoch"], r["global_step"]) for r in resumed][:2] == [(1, 11), (1, 12)]
    _check_every_sample_once(tmp_path, 64, 3)
    final = _check_equal_finals(tmp_path)
    assert final["progress"] == {"global_step": 24, "epoch": 3}


def test_groups_of_your_own_launcher_train_through_a_lighthouse_restart(tmp_path: Path) -> None:
    """Groups started without `fulmen run` (the variables set by hand) and a lighthouse of their own,
    killed and started again on its address while they train: no group restarts, training goes on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binary = shutil.which("torchft_lighthouse", path=str(Path(sys.executable).parent)) or "torchft_lighthouse"
    lighthouse_command = [binary, "--bind", f"127.0.0.1:{port}", "--min_replicas", "1",
                          "--heartbeat_timeout_ms", "1000", "--join_timeout_ms", "1000"]  # fmt: skip
    env = {**os.environ, "RUST_LOG": "warn", "GLOO_SOCKET_IFNAME": "lo", "FT_OUT": str(tmp_path),
           "FT_EPOCHS": "10", "FT_SLEEP": "0.1", "TORCHFT_LIGHTHOUSE": f"http://127.0.0.1:{port}",
           "FULMEN_NUM_REPLICA_GROUPS": "2"}  # fmt: skip
    processes = [subprocess.Popen(lighthouse_command, env=env)]
    try:
        for group in (0, 1):
            output = open(tmp_path / f"output-{group}.txt", "w")  # noqa: SIM115 (closed with the process)
            group_env = {**env, "FULMEN_REPLICA_GROUP": str(group)}
            command = [sys.executable, str(SCRIPTS / "lite_train.py")]
            processes.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=group_env))
        _wait_for(lambda: sum(r["committed"] for r in _records(tmp_path, 0)) >= 8, 60, "8 commits")
        processes[0].kill()
        processes[0].wait()
        killed_at = time.time()
        time.sleep(1.0)
        processes[0] = subprocess.Popen(lighthouse_command, env=env)
        for group in (1, 2):
            processes[group].wait(timeout=150)
            assert processes[group].returncode == 0, (tmp_path / f"output-{group - 1}.txt").read_text()[-3000:]
    finally:
        for proc in processes:
            proc.kill()
            proc.wait()
    for group in (0, 1):
        records = _records(tmp_path, group)
        assert {r["pid"] for r in records} == {records[0]["pid"]}, "a group restarted"
        after = [r for r in records if r["time"] > killed_at and r["committed"]]
        assert after and after[0]["participants"] == 2
    _check_every_sample_once(tmp_path, 64, 10)
    _check_equal_finals(tmp_path)


def test_a_group_restarted_after_the_others_finished_never_trains_alone_from_scratch(tmp_path: Path) -> None:
    """Group 1 dies two steps before the end; group 0 finishes before group 1 is back. The restarted group
    finds nobody to heal from: it waits `quorum_timeout`, then fails without training (it would start
    over from scratch and, as rank 0 of its own quorum, overwrite the job's checkpoints), and the job,
    whose training had finished, succeeds."""
    env = {"FT_EPOCHS": "4", "FT_SLEEP": "0.05", "FT_QUORUM_TIMEOUT": "4"}
    output, status, killed_pid, _ = _run_killing(tmp_path, "lite_train.py", 1, 30, env=env, timeout=90)  # of 32
    assert status == 0, output[-4000:]
    assert "replica group 1 was killed by SIGKILL; restarting it (1 of 3 restarts)" in output
    assert "no live replica group joined it within quorum_timeout=4s" in output
    assert "restarted replica group 1 ended with exit code 1 after training had finished" in output
    assert {r["pid"] for r in _records(tmp_path, 1)} == {killed_pid}, "the restarted group trained"
    survivor = _records(tmp_path, 0)
    final = torch.load(tmp_path / "final-0.pt", weights_only=False)
    assert final["progress"]["global_step"] == sum(r["committed"] for r in survivor)
    assert not (tmp_path / "final-1.pt").exists()
