"""Processes started by another launcher (by hand, a scheduler, torchrun without elastic variables) with
LOCAL_RANK/RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set are used as they are: no process of fulmen's own,
no second rendezvous (rank 1 once failed with EADDRINUSE), one DDP job of two ranks. Trainer and Lite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fulmen.strategies.environments import LightningEnvironment
from fulmen.strategies.environments.lightning import find_free_network_port
from fulmen.utilities.exceptions import MisconfigurationException
from tests.conftest import ROOT

SCRIPT = ROOT / "tests" / "strategies" / "scripts" / "hand_launched.py"


def _launch_by_hand(out_dir, front: str, devices: str, timeout: float = 120) -> list[dict]:
    port = str(find_free_network_port())
    procs = []
    try:
        for rank in (0, 1):
            env = {
                **os.environ,
                "LOCAL_RANK": str(rank),
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(SCRIPT), str(out_dir), front, devices],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        errors = [proc.communicate(timeout=timeout)[1] for proc in procs]
    finally:
        for proc in procs:  # ours: the two ranks this test started
            if proc.poll() is None:
                proc.kill()
    for proc, stderr in zip(procs, errors):
        assert proc.returncode == 0, stderr[-3000:]
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize(("front", "devices"), [("trainer", "2"), ("lite", "2"), ("trainer", "auto")])
def test_two_processes_started_by_hand_form_one_job(tmp_path, front, devices):
    reports = _launch_by_hand(tmp_path, front, devices)
    for rank, report in enumerate(reports):
        assert (report["global_rank"], report["local_rank"], report["world_size"]) == (rank, rank, 2)
        assert report["launcher"] is None and report["started_children"] is False
        assert report["steps"] == 4  # 16 samples, batch 2, each rank its half
    assert reports[0]["weight"] == reports[1]["weight"]  # one job: gradients averaged over both


def test_local_rank_means_launched_externally(monkeypatch):
    env = LightningEnvironment()
    assert not env.creates_processes_externally
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert env.creates_processes_externally and env.global_rank() == 3 and env.world_size() == 4
    env.set_global_rank(1)  # the launcher's numbering wins over the flags' arithmetic
    assert env.global_rank() == 3
    env.validate_settings(num_devices=2, num_nodes=2)
    with pytest.raises(MisconfigurationException, match=r"WORLD_SIZE=4.*`devices=1`"):
        env.validate_settings(num_devices=1, num_nodes=1)


def test_strategy_from_flags_starts_nothing_when_launched_externally(monkeypatch):
    from fulmen.strategies import select_strategy

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "29999")
    strategy = select_strategy(accelerator="cpu", devices=2, strategy="ddp")
    assert strategy.launcher is None and strategy.local_rank == 1
    auto = select_strategy(accelerator="cpu", devices="auto")
    assert type(auto).__name__ == "DDPStrategy" and auto.num_processes == 2 and auto.launcher is None
    with pytest.raises(MisconfigurationException, match="WORLD_SIZE=2"):
        select_strategy(accelerator="cpu", devices=3, strategy="ddp")
