"""Committed samples per second of ``strategy="fault_tolerant"`` (torchft): against plain DDP, and under failures.

Two CPU processes (one thread each, gloo on loopback) train an MLP through Lite, with a batch that
makes a step about 50 ms (``--batch 256``; at ``--batch 64`` a step is about 25 ms, and torchft's
fixed per-step cost weighs twice as much). Three runs:

- ``ddp``: ``fulmen run --devices 2 --strategy ddp``, each process a DDP rank;
- ``fault_tolerant``: ``fulmen run --replica-groups 2 --heartbeat-timeout 1``, each process a
  replica group (gradients averaged through torchft's Manager, exactly-once data);
- ``fault_tolerant, kills``: the same, with group 1 SIGKILLed every ``--kill-every`` seconds
  (restarted by ``fulmen run``, healing from group 0).

Throughput is the global samples of committed steps per second, read from group 0 / rank 0's
step times (the first steps warm up). The two fault-free runs alternate over ``--rounds`` rounds and
the ratio is the median of each round's ratio: a shared 2-core machine drifts by more than the
difference measured. Goals: fault-free fault_tolerant >= 0.9x ddp; with one kill per 30 s >= 0.85x
fault-free.

    python benchmarks/bench_fault_tolerance.py [--steps 300] [--batch 256] [--rounds 3]
        [--kill-seconds 95] [--kill-every 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH, DEPTH = 1024, 2
WARMUP = 5


def worker(out: str, steps: int, batch: int) -> None:
    """One process of either run: trains until ``steps`` steps have committed; rank/group 0 records them."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import fulmen as L

    torch.set_num_threads(1)  # two processes share two cores
    lite = L.Lite(accelerator="cpu")
    lite.launch()
    strategy = lite.strategy
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(DEPTH) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())])
    model, optimizer = lite.setup(net, torch.optim.SGD(net.parameters(), lr=1e-4))
    data = TensorDataset(torch.randn(32 * batch, WIDTH))  # 16 steps per epoch
    fault_tolerant = os.environ.get("FULMEN_REPLICA_GROUP") is not None
    if fault_tolerant:
        loader = strategy.exactly_once(DataLoader(data, batch_size=batch, shuffle=True))
        groups = strategy.num_replica_groups
        writer = strategy.replica_group == 0
    else:
        loader = lite.setup_dataloaders(DataLoader(data, batch_size=batch, shuffle=True))
        groups = lite.world_size
        writer = lite.global_rank == 0
    progress = {"step": 0}
    strategy.register_replica_state("loop", lambda: dict(progress), progress.update)
    log = open(os.path.join(out, "steps.jsonl"), "a", buffering=1) if writer else None  # noqa: SIM115
    while progress["step"] < steps:
        for (x,) in loader:
            optimizer.zero_grad()
            lite.backward(model(x).pow(2).mean())
            optimizer.step()
            if strategy.last_step_committed:
                progress["step"] += 1
                if log is not None:
                    log.write(json.dumps({"time": time.time(), "samples": batch * groups, "pid": os.getpid()}) + "\n")
            if progress["step"] >= steps:
                break


def _run(out: Path, fulmen_flags: list[str], steps: int, batch: int, kill_every: float | None = None) -> dict:
    command = [sys.executable, "-m", "fulmen.cli.main", "run", __file__, *fulmen_flags, "--",
               "--worker", str(out), "--steps", str(steps), "--batch", str(batch)]  # fmt: skip
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    with open(out / "output.txt", "w") as output:
        proc = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        kills = 0
        try:
            next_kill = time.monotonic() + kill_every if kill_every else None
            while proc.poll() is None:
                time.sleep(0.1)
                if next_kill is not None and time.monotonic() >= next_kill:
                    kills += _kill_group_one(out)
                    next_kill += kill_every
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{(out / 'output.txt').read_text()[-3000:]}")
    records = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()][WARMUP:]
    elapsed = records[-1]["time"] - records[0]["time"]
    samples = sum(r["samples"] for r in records[1:])
    return {"samples_per_s": samples / elapsed, "seconds": elapsed, "kills": kills}


def _kill_group_one(out: Path) -> int:
    """SIGKILL replica group 1's current process (its pid from the environment of the children of fulmen run)."""
    for pid in _children_with(f"FULMEN_REPLICA_GROUP=1\0FT_BENCH_OUT={out}"):
        os.kill(pid, signal.SIGKILL)
        return 1
    return 0


def _children_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        first, second = marker.split("\0")
        if f"\0{first}\0" in f"\0{environ}" and f"\0{second}\0" in f"\0{environ}":
            found.append(int(entry.name))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=300, help="committed steps of the fault-free runs")
    parser.add_argument("--batch", type=int, default=256, help="samples per process and step (256: ~50 ms steps)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating ddp / fault_tolerant rounds")
    parser.add_argument("--kill-seconds", type=float, default=95.0, help="about how long the run with kills lasts")
    parser.add_argument("--kill-every", type=float, default=30.0)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.steps, args.batch)
        return
    fault_free = {
        "ddp": ["--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"],
        "fault_tolerant": ["--replica-groups", "2", "--heartbeat-timeout", "1"],
    }
    with tempfile.TemporaryDirectory() as folder:
        rounds: dict[str, list[dict]] = {name: [] for name in fault_free}
        for index in range(args.rounds):
            order = list(fault_free) if index % 2 == 0 else list(reversed(fault_free))  # no fixed neighbour
            for name in order:
                out = _fresh(Path(folder) / f"{name}_{index}")
                rounds[name].append(_run(out, fault_free[name], args.steps, args.batch))
        ratios = [f["samples_per_s"] / d["samples_per_s"] for f, d in zip(rounds["fault_tolerant"], rounds["ddp"])]
        results = {name: _median_run(runs) for name, runs in rounds.items()}
        step_seconds = results["fault_tolerant"]["seconds"] / max(args.steps - WARMUP - 1, 1)
        kill_steps = int(args.kill_seconds / step_seconds)
        flags = [*fault_free["fault_tolerant"], "--max-restarts", "100"]
        out = _fresh(Path(folder) / "kills")
        results["fault_tolerant, kills"] = _run(out, flags, kill_steps, args.batch, args.kill_every)

    ft, kills = (results[k]["samples_per_s"] for k in ("fault_tolerant", "fault_tolerant, kills"))
    ratio = statistics.median(ratios)
    print(f"\nCommitted samples/s, 2 CPU processes, MLP {DEPTH}x{WIDTH}, batch {args.batch} per process")
    for name, result in results.items():
        extra = f", {result['kills']} kills" if result["kills"] else ""
        print(f"  {name:<24} {result['samples_per_s']:9.1f} samples/s  ({result['seconds']:.1f} s{extra})")
    print(f"  step time (fault_tolerant): {step_seconds * 1000:.1f} ms")
    print(f"  fault_tolerant / ddp per round: {', '.join(f'{r:.3f}x' for r in ratios)}")
    print(f"  fault_tolerant / ddp:       {ratio:6.3f}x  goal >= 0.90  {'OK' if ratio >= 0.9 else 'MISSED'}  (median)")
    print(f"  kills / fault-free:         {kills / ft:6.3f}x  goal >= 0.85  {'OK' if kills / ft >= 0.85 else 'MISSED'}")


def _fresh(out: Path) -> Path:
    """An empty folder for one run; the workers find it through ``FT_BENCH_OUT`` (the kill looks for it too)."""
    out.mkdir()
    os.environ["FT_BENCH_OUT"] = str(out)
    return out


def _median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda run: run["samples_per_s"])[len(runs) // 2]


if __name__ == "__main__":
    main()
