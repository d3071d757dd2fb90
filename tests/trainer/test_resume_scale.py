"""Resume at scale: skipping by sample index (bit-exact, nothing loaded twice), elastic N→M resume,
two nodes on one machine, failures that end every rank, and signals agreed without a per-step collective.

The single-process cases run in this process (a crash is an exception raised in a callback); the
multi-process ones run scripts from ``scripts/`` on loopback, each rank writing its own file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

import fulmen as L
from fulmen.callbacks import Callback, ModelCheckpoint
from fulmen.strategies import make_resumable, resumable_sampler
from fulmen.strategies.environments.lightning import find_free_network_port
from fulmen.strategies.resumable_sampler import Layout, spread
from tests.conftest import run_python

# ----------------------------------------------------------------------------- the sampler alone


@pytest.mark.parametrize(
    ("size", "replicas", "drop_last"), [(10, 3, False), (10, 3, True), (12, 4, False), (2, 3, False)]
)
def test_a_fresh_layout_is_what_distributed_sampler_yields(size, replicas, drop_last):
    order = torch.randperm(size, generator=torch.Generator().manual_seed(5 + 2)).tolist()  # seed + epoch
    for rank in range(replicas):
        sampler = DistributedSampler(range(size), replicas, rank, shuffle=True, seed=5, drop_last=drop_last)
        sampler.set_epoch(2)
        assert list(sampler) == spread(order, Layout({}, size, drop_last, 0, replicas, 0), rank)


def _resumable(size: int, batch_size: int, replicas: int, rank: int, workers: int = 0) -> DataLoader:
    data = list(range(size))
    user = DataLoader(data, batch_size=batch_size, shuffle=True)
    if replicas == 1:
        return make_resumable(user, origin=user.sampler)
    sharded = DataLoader(data, batch_size=batch_size, num_workers=workers,
                         sampler=DistributedSampler(data, replicas, rank, shuffle=True, seed=3))  # fmt: skip
    return make_resumable(sharded, origin=user.sampler)


def _epoch(loader: DataLoader, epoch: int) -> list[list[int]]:
    resumable_sampler(loader).set_epoch(epoch)
    return [batch.tolist() for batch in loader]


def _resume(loader: DataLoader, saved: dict, batches_done: int, epoch: int) -> list[list[int]]:
    sampler = resumable_sampler(loader)
    sampler.set_epoch(epoch)
    left = sampler.resume(saved, batches_done)
    batches = [batch.tolist() for batch in loader]
    assert len(batches) == left
    return batches


@pytest.mark.parametrize(("before", "after"), [(2, 2), (2, 1), (1, 2), (2, 3), (3, 2)])
def test_every_sample_of_the_epoch_once_across_a_change_of_world_size(before, after):
    batch_size, done = 2, 2
    size = done * batch_size * before + 12  # neither run pads: 12 is a multiple of 1, 2 and 3
    torch.manual_seed(0)  # the single-process order draws from torch's generator
    first = [_resumable(size, batch_size, before, rank) for rank in range(before)]
    generator_state = torch.get_rng_state()
    fed = [index for loader in first for batch in _epoch(loader, 1)[:done] for index in batch]
    saved = resumable_sampler(first[0]).state_dict()
    rest = []
    for rank in range(after):
        torch.set_rng_state(generator_state)  # every rank redraws a one-process order from rank 0's generators
        rest += [
            index for batch in _resume(_resumable(size, batch_size, after, rank), saved, done, 1) for index in batch
        ]
    assert sorted(fed + rest) == list(range(size))


def test_same_world_size_skips_to_where_the_rank_stood():
    loaders = [_resumable(20, 2, 2, rank) for rank in (0, 1)]
    full = [_epoch(loader, 3) for loader in loaders]
    saved = resumable_sampler(loaders[0]).state_dict()
    for rank, loader in enumerate(loaders):
        assert _resume(loader, saved, 3, epoch=3) == full[rank][3:]


def test_workers_get_the_epoch_seed_with_the_first_index_of_every_batch():
    loader = _resumable(16, 4, 2, 0, workers=2)
    sampler = resumable_sampler(loader)
    sampler.set_epoch(0)
    indices = list(sampler)
    tagged = [position for position, index in enumerate(indices) if hasattr(index, "epoch_seed")]
    assert tagged == [0, 4]  # 8 indices on this rank, batches of 4
    assert isinstance(loader.sampler, DistributedSampler)  # what users see is unchanged


class RandomSample(Dataset):
    """Draws its sample with torch, python and numpy generators inside ``__getitem__``."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int):
        import random

        import numpy as np

        return torch.tensor([index, torch.rand(()).item(), random.random(), np.random.rand()])


@pytest.mark.timeout(60)
def test_a_sample_draws_alike_whichever_worker_loads_it():
    def draws(workers: int) -> dict[int, list[float]]:
        user = DataLoader(RandomSample(), batch_size=3, shuffle=True, num_workers=workers)
        loader = make_resumable(user, origin=user.sampler)
        return {int(row[0]): row[1:].tolist() for batch in loader for row in batch}

    one, two = draws(1), draws(2)
    assert one == two and len(one) == 12
    assert len({values[0] for values in one.values()}) == 12  # each sample its own draw


def test_loaders_that_cannot_skip_by_index_are_left_as_they_are():
    class MyLoader(DataLoader):
        pass

    subclass = MyLoader(list(range(8)), batch_size=2)
    assert make_resumable(subclass) is subclass
    custom_batches = DataLoader(list(range(8)), batch_sampler=[[0, 1], [2, 3]])
    assert make_resumable(custom_batches) is custom_batches
    plain = DataLoader(list(range(8)), batch_size=2, shuffle=True)
    copy = make_resumable(plain, origin=plain.sampler)
    assert copy is not plain and copy.sampler is plain.sampler and isinstance(copy.sampler, RandomSampler)
    assert copy.batch_size == 2 and len(copy) == 4


# --------------------------------------------------------------------- exact resume in one process


class NoisyDataset(Dataset):
    """Random noise drawn in ``__getitem__`` (as augmentations do); every load appends to ``log``."""

    def __init__(self, n: int, log: str | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=generator)
        self.y = torch.randn(n, 1, generator=generator)
        self.log = log

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        if self.log is not None:
            with open(self.log, "a") as file:  # workers are other processes: a file counts for all
                file.write(f"{index}\n")
        return self.x[index] + 0.01 * torch.randn(8), self.y[index]


class DropoutRegressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=7)}


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("crashed on purpose")


SAMPLES, BATCH = 64, 4  # 16 batches an epoch, 8 optimizer steps (accumulating 2)


def _fit(root: Path, workers: int, crash_at: int | None = None, resume: bool = False, log: str | None = None):
    L.seed_everything(1234, workers=True)
    model = DropoutRegressor()
    persistent = workers < 0  # -2: two persistent workers
    train = DataLoader(NoisyDataset(SAMPLES, log), shuffle=True, batch_size=BATCH, num_workers=abs(workers),
                       persistent_workers=persistent)  # fmt: skip
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=0, save_last=True)]
    if crash_at is not None:
        callbacks.insert(0, CrashAt(crash_at))
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, val_check_interval=4, accumulate_grad_batches=2, callbacks=callbacks,
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=root,
    )  # fmt: skip
    ckpt_path = str(root / "last.ckpt") if resume else None
    trainer.fit(model, train, DataLoader(NoisyDataset(16), batch_size=BATCH), ckpt_path=ckpt_path)
    return model.state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cache: dict[int, dict[str, torch.Tensor]] = {}

    def weights(workers: int) -> dict[str, torch.Tensor]:
        if workers not in cache:
            cache[workers] = _fit(tmp_path_factory.mktemp(f"full_{workers}"), workers)
        return cache[workers]

    return weights


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("workers", "crash_at", "left_in_epoch"),
    [
        (0, 4, 40),  # last checkpoint at step 3 (batch 6 of epoch 0, after a step)
        (0, 11, 48),  # step 9: epoch 1 after its 4th batch, saved after the validation there
        (2, 13, 32),  # step 12: epoch 1 after its 8th batch
        (-2, 13, 32),  # the same with persistent workers, started in epoch 0 in the uninterrupted run
    ],
)
def test_a_resumed_run_ends_bit_equal_and_loads_only_the_samples_left(tmp_path, uninterrupted, workers, crash_at,
                                                                      left_in_epoch):  # fmt: skip
    with pytest.raises(RuntimeError, match="crashed on purpose"):
        _fit(tmp_path, workers, crash_at=crash_at)
    log = tmp_path / "loads.txt"
    resumed = _fit(tmp_path, workers, resume=True, log=str(log))
    expected = uninterrupted(workers)
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), f"{key} differs after resuming at step {crash_at}"
    loads = log.read_text().split()
    later_epochs = SAMPLES if crash_at < 8 else 0
    assert len(loads) == left_in_epoch + later_epochs  # no finished sample was loaded again


def test_the_loader_users_see_keeps_its_sampler(tmp_path):
    user = DataLoader(NoisyDataset(8), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(DropoutRegressor(), user)
    assert isinstance(trainer.train_dataloader.sampler, SequentialSampler)
    assert trainer.train_dataloader.sampler is user.sampler and trainer.train_dataloader.batch_size == 4
    assert resumable_sampler(trainer.train_dataloader) is not None and trainer.num_training_batches == 2


# ------------------------------------------------------------------------ elastic resume: N → M

ELASTIC = str(Path(__file__).parent / "scripts" / "elastic_worker.py")


def _ranks(out: Path, phase: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(out.glob(f"{phase}_rank*.json"))]


def _elastic_run(out: Path, phase: str, devices: int, strategy: str, *extra: str) -> list[dict]:
    strategy = "auto" if strategy == "ddp" and devices == 1 else strategy  # FSDP shards over one process too
    proc = run_python(ELASTIC, str(out), phase, "--devices", str(devices), "--strategy", strategy, *extra,
                      timeout=100)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = _ranks(out, phase)
    assert [r["rank"] for r in reports] == list(range(devices)) and all(r["world"] == devices for r in reports)
    return reports


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("before", "after", "strategy", "workers"),
    [(2, 1, "ddp", 0), (1, 2, "ddp", 2), (2, 1, "fsdp", 0), (1, 2, "fsdp", 0)],
    ids=["ddp-2to1", "ddp-1to2-workers", "fsdp-2to1", "fsdp-1to2"],
)
def test_a_mid_epoch_checkpoint_resumed_on_another_number_of_processes_feeds_every_sample_once(
    tmp_path, before, after, strategy, workers
):
    first = _elastic_run(tmp_path, "first", before, strategy, "--stop-after", "3", "--workers", str(workers))
    assert all(len(r["indices"]) == 3 * 4 for r in first)  # 3 batches of 4 on every rank, then the checkpoint
    rest = _elastic_run(tmp_path, "resume", after, strategy, "--workers", str(workers))
    fed = [i for r in first for i in r["indices"]] + [i for r in rest for i in r["indices"]]
    assert sorted(fed) == list(range(48))  # every sample of the epoch, once
    # The rest of the epoch is split evenly over the new processes.
    left = 48 - 12 * before
    assert all(len(r["indices"]) == left // after for r in rest)


# ----------------------------------------------------------------------- two nodes on one machine

TWO_NODES = str(Path(__file__).parent / "scripts" / "two_nodes.py")
SLURM_TWO_NODES = {
    "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "node[1-2]", "SLURM_LOCALID": "0",
}  # fmt: skip


def _run_nodes(commands: list[list[str]], envs: list[dict[str, str]], timeout: float) -> list[tuple[int, str]]:
    """Start one process per node at once; their return codes and stderr (each node its own pipe)."""
    procs = [
        subprocess.Popen(
            command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for command, env in zip(commands, envs)
    ]
    results = []
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=timeout)
            results.append((proc.returncode, stderr))
    finally:
        for proc in procs:  # ours: the node processes this test started
            if proc.poll() is None:
                proc.kill()
    return results


def _check_two_nodes(out: Path, environment: str) -> None:
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, report in enumerate(reports):
        assert (report["node_rank"], report["global_rank"], report["local_rank"]) == (rank, rank, 0)
        assert report["world_size"] == 2 and report["num_nodes"] == 2 and report["environment"] == environment
    for rank, report in enumerate(reports):  # each node trained on its DistributedSampler shard of the epoch
        shard = DistributedSampler(range(24), num_replicas=2, rank=rank, shuffle=True, seed=3)
        assert report["indices"] == list(shard)
    assert reports[0]["weight"] == reports[1]["weight"]  # gradients were averaged across the nodes
    checkpoint = torch.load(out / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3 and set(checkpoint["state_dict"]) == {"net.weight", "net.bias"}
    assert len(checkpoint["rng"]["ranks"]) == 2  # both nodes' generators


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_two_nodes_started_with_fulmen_run_train_and_checkpoint(tmp_path):
    port = str(find_free_network_port())
    commands = [
        [sys.executable, "-m", "fulmen.cli.main", "run", "--num-nodes", "2", "--node-rank", str(rank),
         "--main-address", "127.0.0.1", "--main-port", port, "--devices", "1", "--strategy", "ddp",
         "--accelerator", "cpu", TWO_NODES, "--", str(tmp_path)]
        for rank in (0, 1)
    ]  # fmt: skip
    results = _run_nodes(commands, [{}, {}], timeout=150)
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    _check_two_nodes(tmp_path, "TorchElasticEnvironment")


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_two_nodes_under_slurm_variables_train_and_checkpoint(tmp_path):
    port = str(find_free_network_port())
    envs = [{**SLURM_TWO_NODES, "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank), "MASTER_PORT": port}
            for rank in (0, 1)]  # fmt: skip
    commands = [[sys.executable, TWO_NODES, str(tmp_path), "--flags"]] * 2
    results = _run_nodes(commands, envs, timeout=150)
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    _check_two_nodes(tmp_path, "SLURMEnvironment")


# ------------------------------------------------------------------ a failing rank ends every rank

STEP_FAILURE = str(Path(__file__).parent / "scripts" / "step_failure.py")
FAILURES = [(0, "raise"), (1, "raise"), (1, "kill"), (0, "kill")]
SHARDED_FAILURES = [("fsdp", rank, mode) for rank, mode in FAILURES] + [
    ("deepspeed_stage_2", 1, "raise"),
    ("deepspeed_stage_2", 0, "kill"),
]


def _assert_failure_reported(rank: int, mode: str, returncode: int, stderr: str, pids: dict[int, int]) -> None:
    if (rank, mode) == (0, "kill"):
        assert returncode == -signal.SIGKILL
    elif rank == 0:
        assert returncode == 1 and "RuntimeError: rank 0 broke on purpose at batch 3" in stderr, stderr[-3000:]
    else:
        assert returncode == 1, stderr[-3000:]
        child = f"DistributedError: Local rank 1 (pid {pids[1]}) exited with code"
        if mode == "raise":
            assert "RuntimeError: rank 1 broke on purpose at batch 3" in stderr  # the child's own traceback
            assert f"{child} 1; its traceback is printed above" in stderr
        else:
            assert f"{child} -9; it was killed by SIGKILL" in stderr


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("strategy", "rank", "mode"),
    SHARDED_FAILURES,
    ids=[f"{s.split('_')[0]}-rank{r}-{m}" for s, r, m in SHARDED_FAILURES],
)
def test_a_rank_failing_inside_a_sharded_step_ends_every_rank(tmp_path, strategy, rank, mode):
    """The failing rank raises (or dies) between its forward and backward while the other waits in collectives.

    The process-group timeout (70 s) is above the 60 s allowed, so it cannot be what ends them.
    """
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    from tests.processes import run_failing

    run = run_failing(STEP_FAILURE, tmp_path, str(rank), mode, "3", "--strategy", strategy, timeout=120,
                      env={"FULMEN_DIST_TIMEOUT": "70"})  # fmt: skip
    assert sorted(run.pids) == [0, 1], run.proc.stderr[-3000:]
    assert run.survivors == [] and run.elapsed < 60
    assert "unreachable" not in run.proc.stdout
    _assert_failure_reported(rank, mode, run.proc.returncode, run.proc.stderr, run.pids)


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    ("strategy", "rank", "mode"), [("ddp", 0, "raise"), ("ddp", 1, "kill"), ("fsdp", 1, "raise"), ("fsdp", 0, "kill")]
)
def test_a_failing_rank_on_one_of_two_nodes_ends_both_nodes(tmp_path, strategy, rank, mode):
    """Two ``fulmen run`` nodes: the one whose rank fails and the other both end, every process with them."""
    from tests.processes import alive

    port = str(find_free_network_port())
    commands = [
        [sys.executable, "-m", "fulmen.cli.main", "run", "--num-nodes", "2", "--node-rank", str(node),
         "--main-address", "127.0.0.1", "--main-port", port, "--devices", "1", "--strategy", strategy,
         "--accelerator", "cpu", STEP_FAILURE, "--", str(tmp_path), str(rank), mode, "3", "--from-cli"]
        for node in (0, 1)
    ]  # fmt: skip
    start = time.monotonic()
    results = _run_nodes(commands, [{"FULMEN_DIST_TIMEOUT": "70"}] * 2, timeout=150)
    elapsed = time.monotonic() - start
    pids = {int(path.name.split("_")[1]): int(path.read_text()) for path in tmp_path.glob("pid_*")}
    assert sorted(pids) == [0, 1], results
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in pids.values() if alive(pid)]
    for pid in survivors:  # ours: the ranks this test started, by the pids they wrote
        os.kill(pid, signal.SIGKILL)
    assert survivors == [] and elapsed < 60
    assert [code for code, _ in results] == [1, 1]  # `fulmen run` fails on both nodes
    failing_node = results[rank][1]
    if mode == "raise":
        assert f"RuntimeError: rank {rank} broke on purpose at batch 3" in failing_node
    else:
        assert f"failed (exitcode: -9) local_rank: 0 (pid: {pids[rank]})" in failing_node, failing_node[-3000:]


# ------------------------------------------------------------ signals without a per-step collective

SIGNAL_RANKS = str(Path(__file__).parent / "scripts" / "signal_ranks.py")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_signal_on_one_rank_stops_every_rank_after_the_same_batch_without_a_collective_per_step(tmp_path):
    # 20 ms steps and checks about every 0.2 s: the ranks agree every ~10 batches.
    proc = run_python(SIGNAL_RANKS, str(tmp_path), "10", env={"FULMEN_SIGNAL_CHECK_SECONDS": "0.2"}, timeout=130)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    (stopped,) = {report["global_step"] for report in reports}  # every rank after the same batch
    assert 10 <= stopped <= 10 + 25  # at the next agreed check: within the epoch's 25 batches at most
    assert all(report["batches"] == stopped for report in reports)
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == stopped
    # One all-reduce per check (the first batch of each epoch, then every ~10), not one per batch.
    assert all(report["all_reduces"] <= stopped // 2 for report in reports), reports


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_signal_check_interval_is_refused_by_name(monkeypatch, value):
    from fulmen.trainer.signals import SignalPoll
    from fulmen.utilities.exceptions import MisconfigurationException

    monkeypatch.setenv("FULMEN_SIGNAL_CHECK_SECONDS", value)
    with pytest.raises(MisconfigurationException, match=rf"FULMEN_SIGNAL_CHECK_SECONDS='{value}'.*seconds >= 0"):
        SignalPoll(type("RunLike", (), {"signals": None, "strategy": None})())
