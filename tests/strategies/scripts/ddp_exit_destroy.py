"""Ranks that end while gloo's worker thread still has Python tensors to drop, many times over.

    python ddp_exit_destroy.py OUT RUNS SCENARIO:DEVICES [SCENARIO:DEVICES ...]
    python ddp_exit_destroy.py OUT --direct SCENARIO:DEVICES

Each run of a scenario is one job of DEVICES ranks that use fulmen's public API and end as a script
ends. Every scenario ends the same hard way: an ``all_gather`` into Python tensors, left to gloo's
worker thread, while the main thread never lets the GIL go (a switch interval of 1000 s, busy waits
without a torch call); a DDP (or FSDP, DeepSpeed) model lives on in a global and keeps the gloo
backend and its threads alive. Scenarios (what the script does around that ending):

- ``keep``: ``Lite(accelerator="cpu", devices=DEVICES, strategy="ddp")``, ``lite.setup(model)``, and
  the group left to fulmen; ``destroy``: the same, ending with ``dist.destroy_process_group()``;
- ``trainer-destroy-in-callback``: a Trainer fit whose callback ends that way and destroys the
  group in ``on_train_end``, before fulmen's teardown; ``trainer-exit-in-callback``: the callback
  calls ``sys.exit(0)`` instead; ``trainer-destroy-after-fit``: the script destroys it after ``fit``;
- ``fsdp``, ``deepspeed``: ``Lite`` with that strategy, ending with the script's destroy;
- ``joined``: the script creates the group itself (as Ray Train does) and Lite joins it; destroyed
  at the end.

Every rank is a process forked from this one after the imports, so that a run costs no interpreter
start (DDP's first use imports torch._dynamo: seconds), and it ends as a script does, through the
whole interpreter exit (atexit handlers, finalisation). One process is one rank started the way
fulmen's launcher starts rank 0; more are started as torchrun starts them (its variables). Two runs
at a time. Each rank writes ``OUT/<scenario>-<devices>/run_<i>/rank_<r>.json`` once its work is done,
and its stderr to ``rank_<r>.err`` beside it; the parent writes every rank's exit code to
``OUT/summary.json`` (-6: SIGABRT, -9: still running after RUN_TIMEOUT).

``--direct`` runs one scenario once, as the script itself, the way a user runs it: fulmen's
launcher re-runs it for the other ranks, and rank 0's exit code says whether any rank failed.
Each rank writes ``OUT/rank_<r>.json``.
"""

import ctypes
import gc
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
import torch._dynamo  # noqa: F401  (DDP imports it on first use: once here, not in every rank)
import torch.distributed as dist
from torch import nn

import fulmen as L
from fulmen.callbacks import Callback

PARALLEL_RUNS = 2
RUN_TIMEOUT = 90.0
HOLD_SECONDS = 0.1  # busy, with the GIL held: long enough for the worker to ask for it
ARRIVAL_SECONDS = 5.0  # the longest the GIL is held while waiting for the collective's result
_kept: list = []  # what a script's globals hold until the interpreter ends


def end_holding_the_gil(destroy: bool) -> None:
    """The ending that aborted ranks; the last thing the rank's script does."""
    # The workers drop the tensors of earlier collectives now: one that still waits for the GIL
    # holds its group's queue, and the collective below would never start.
    time.sleep(0.05)
    world_size = dist.get_world_size()
    out = [torch.zeros(4) for _ in range(world_size)]
    _kept.append(out)
    arrived = [tensor.numpy() for tensor in out]  # read without a torch call: torch calls release the GIL
    sys.setswitchinterval(1000.0)
    work = dist.all_gather(out, torch.ones(4), async_op=True)
    del work  # the worker thread now holds the last reference, and the tensors with it
    give_up = time.monotonic() + ARRIVAL_SECONDS
    while not all(values[3] == 1.0 for values in arrived):
        if time.monotonic() > give_up:  # a worker still needs the GIL to go on: let it, not hang
            time.sleep(0.001)
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:
        pass
    if destroy:
        dist.destroy_process_group()


def record(run_dir: Path, **values) -> None:
    values.update(rank=dist.get_rank(), world_size=dist.get_world_size())
    (run_dir / f"rank_{values['rank']}.json").write_text(json.dumps(values))


def lite_run(run_dir: Path, devices: int, strategy: str = "ddp", destroy: bool = True) -> None:
    lite = L.Lite(accelerator="cpu", devices=devices, strategy=strategy)
    model = nn.Linear(2, 2)
    if strategy == "deepspeed":
        model, optimizer = lite.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        _kept.append(optimizer)
    else:
        model = lite.setup(model)
    _kept.extend([lite, model])
    gathered = lite.all_gather(torch.tensor([float(dist.get_rank())]))
    record(run_dir, gathered=gathered.flatten().tolist())
    end_holding_the_gil(destroy)


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        self.log("loss", loss, sync_dist=True)  # a collective on Python tensors every step
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class EndInCallback(Callback):
    def __init__(self, run_dir: Path, action: str) -> None:
        self.run_dir, self.action = run_dir, action

    def on_train_end(self, trainer, pl_module) -> None:
        record(self.run_dir, global_step=trainer.global_step)
        end_holding_the_gil(destroy=self.action == "destroy")
        if self.action == "exit":
            sys.exit(0)


def trainer_run(run_dir: Path, devices: int, in_callback: str | None) -> None:
    callbacks = [EndInCallback(run_dir, in_callback)] if in_callback else []
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp",
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )
    model = Regressor()
    _kept.extend([trainer, model])
    trainer.fit(model, torch.utils.data.DataLoader(torch.randn(32, 4), batch_size=4))
    if in_callback is None:
        record(run_dir, global_step=trainer.global_step)
        end_holding_the_gil(destroy=True)


def joined_run(run_dir: Path, devices: int) -> None:
    os.environ.setdefault("MASTER_PORT", str(free_port()))  # one rank: no launcher chose a port
    dist.init_process_group("gloo", rank=int(os.environ.get("RANK", 0)), world_size=devices)
    lite_run(run_dir, devices)


SCENARIOS = {
    "keep": lambda run_dir, devices: lite_run(run_dir, devices, destroy=False),
    "destroy": lambda run_dir, devices: lite_run(run_dir, devices),
    "trainer-destroy-in-callback": lambda run_dir, devices: trainer_run(run_dir, devices, "destroy"),
    "trainer-exit-in-callback": lambda run_dir, devices: trainer_run(run_dir, devices, "exit"),
    "trainer-destroy-after-fit": lambda run_dir, devices: trainer_run(run_dir, devices, None),
    "fsdp": lambda run_dir, devices: lite_run(run_dir, devices, strategy="fsdp"),
    "deepspeed": lambda run_dir, devices: lite_run(run_dir, devices, strategy="deepspeed"),
    "joined": joined_run,
}


def start_rank(run_dir: Path, scenario: str, devices: int, rank: int, port: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    # The rank: dies with this parent, writes its streams to files, then runs and exits as a script.
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    for stream, suffix in ((sys.stdout, "out"), (sys.stderr, "err")):
        target = os.open(run_dir / f"rank_{rank}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, stream.fileno())
        os.close(target)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"})
    if devices > 1:
        os.environ.update(
            {
                "MASTER_PORT": str(port),
                "WORLD_SIZE": str(devices),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "GROUP_RANK": "0",
                "LOCAL_WORLD_SIZE": str(devices),
                "TORCHELASTIC_RUN_ID": "fulmen-exit-test",
            }
        )
    SCENARIOS[scenario](run_dir, devices)
    raise SystemExit(0)  # up through the parent's frames (none catches it): the interpreter's own exit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(out: Path, runs: int, configs: list[tuple[str, int]]) -> None:
    if any(scenario == "deepspeed" for scenario, _ in configs):
        os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed  # noqa: F401  (seconds to import: once here)
    # What the ranks inherit is never garbage here: the collector passes it by, in every rank's
    # finalisation too (a second of work per rank otherwise, for torch's two thousand modules).
    gc.freeze()
    jobs = [(scenario, devices, run) for scenario, devices in configs for run in range(runs)]
    codes: dict[tuple[str, int, int], dict[int, int]] = {}
    running: dict[int, tuple[tuple[str, int, int], int]] = {}  # pid -> (job, rank)
    started: dict[tuple[str, int, int], float] = {}
    while jobs or running:
        while jobs and len(started) < PARALLEL_RUNS:
            job = jobs.pop(0)
            scenario, devices, run = job
            run_dir = out / f"{scenario}-{devices}" / f"run_{run}"
            run_dir.mkdir(parents=True)
            port = free_port()
            codes[job] = {}
            for rank in range(devices):
                running[start_rank(run_dir, scenario, devices, rank, port)] = (job, rank)
            started[job] = time.monotonic()
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for pid_left, (job, _) in list(running.items()):
                if time.monotonic() - started[job] > RUN_TIMEOUT:
                    os.kill(pid_left, signal.SIGKILL)  # reaped below; its code says it was killed
            time.sleep(0.01)
            continue
        job, rank = running.pop(pid)
        codes[job][rank] = os.waitstatus_to_exitcode(status)
        if len(codes[job]) == job[1]:
            del started[job]
    summary: dict[str, list[list[int]]] = {}
    for (scenario, devices, run), ranks in sorted(codes.items()):
        summary.setdefault(f"{scenario}-{devices}", []).append([ranks[r] for r in range(devices)])
    (out / "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    if sys.argv[2] == "--direct":
        scenario, devices = sys.argv[3].split(":")
        SCENARIOS[scenario](Path(sys.argv[1]), int(devices))
    else:
        configs = [(config.split(":")[0], int(config.split(":")[1])) for config in sys.argv[3:]]
        main(Path(sys.argv[1]), int(sys.argv[2]), configs)
