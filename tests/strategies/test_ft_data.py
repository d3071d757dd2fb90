"""The exactly-once loader without torchft: several processes per group, and worker processes prefetching.

A fake quorum plays the strategy: each step, this group's ``(rank, participants)`` and whether the
step commits (the cursor then advances by the step's samples, as ``FaultTolerantStrategy`` does).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from fulmen.strategies.ft_data import EpochPosition, ExactlyOnceLoader
from tests.processes import alive, wait_until_gone


class _Recorded(Dataset):
    """Sample ``i`` is ``(i, the id of the worker process that loaded it, or -1 for the training process)``."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        info = get_worker_info()
        return torch.tensor(index), -1 if info is None else info.id


class _Process:
    """One training process: its loader, its position and its view of each step's quorum."""

    def __init__(
        self, size: int, groups: int, quorum=None, group_rank=0, group_size=1, skip_first=0, **options
    ) -> None:
        self.position = EpochPosition()
        self.view = (0, groups)
        self.assigned = 0
        data = DataLoader(_Recorded(size), batch_size=2, **options)
        groups_view = quorum or (lambda: self.view)
        self.loader = ExactlyOnceLoader(
            data, self.position, groups, groups_view, self._assign, 0, skip_first, group_rank, group_size
        )

    def _assign(self, samples: int) -> None:
        self.assigned = samples


class _Run:
    """One group's single process under ``script`` (per step: rank, participants, commits[, position healed
    to]); after the script, every step is rank 0 of all groups and commits."""

    def __init__(self, script: list[tuple], size: int = 48, groups: int = 2, **options) -> None:
        self.process = _Process(size, groups, quorum=self._quorum, **options)
        self.loader = self.process.loader
        self.steps = iter(script)
        self.groups = groups
        self.commits = True

    def _quorum(self) -> tuple[int, int]:
        rank, participants, self.commits, *healed = next(self.steps, (0, self.groups, True))
        if healed:
            self.process.position.load_state_dict(healed[0])
        return rank, participants

    def epoch(self) -> tuple[list[list[int]], list[str]]:
        """The sample indices of each batch, and where each batch was loaded ("workers" or "here")."""
        values, sources = [], []
        for batch, loaded_by in self.loader:
            assert batch.tolist() == self.loader.last_indices
            values.append(batch.tolist())
            sources.append("here" if (loaded_by == -1).all() else "workers" if (loaded_by >= 0).all() else "?")
            if self.commits:
                self.process.position.cursor += self.process.assigned
        return values, sources


def _worker_children() -> set[int]:
    return {child.pid for child in multiprocessing.active_children()}


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_fault_free_epoch_comes_entirely_from_the_workers(shuffle: bool) -> None:
    plain, run = _Run([], shuffle=shuffle), _Run([], shuffle=shuffle, num_workers=2)
    expected, loaded_here = plain.epoch()
    values, sources = run.epoch()
    assert values == expected and len(values) == 12
    assert sources == ["workers"] * 12 and loaded_here == ["here"] * 12
    assert (run.loader.prefetched, run.loader.loaded_in_process) == (12, 0)
    assert (plain.loader.prefetched, plain.loader.loaded_in_process) == (0, 12)


def test_a_misprediction_is_loaded_in_process_and_the_workers_recover() -> None:
    # 48 samples, 2 groups of batch 2: 12 steps of 4 samples.
    script = [
        (0, 2, True),
        (0, 2, True),
        (0, 2, False),  # uncommitted: step 4 takes its samples again (the workers guessed the next ones)
        (0, 2, True),
        (0, 2, True),
        (0, 1, True),  # the other group died: this one takes the whole slice
        (0, 1, True),
        (1, 2, True),  # it rejoined, first in the quorum
        (1, 2, True, {"epoch": 0, "cursor": 32, "steps": 9}),  # healed: a peer was one step further
        (1, 2, True),
        (1, 2, True),
    ]
    expected, _ = _Run(script).epoch()
    run = _Run(script, num_workers=2)
    values, sources = run.epoch()
    assert values == expected  # the quorum's assignment, whatever the workers had guessed
    assert values[2:4] == [[8, 9], [8, 9]] and values[5] == [16, 17, 18, 19] and values[8] == [34, 35]
    assert sources == ["workers"] * 3 + ["here", "workers", "here", "workers", "here", "here", "workers", "workers"]
    assert (run.loader.prefetched, run.loader.loaded_in_process) == (7, 4)
    assert run.loader.position.epoch == 1


def test_predictions_stop_at_the_epoch_end() -> None:
    """The last step does not commit: its samples come in one more step, loaded in process (nothing was
    predicted past the epoch); the next epoch, in another order, comes from the workers again."""
    script = [(0, 2, True)] * 5 + [(0, 2, False)]
    plain, run = _Run(script, size=24, shuffle=True), _Run(script, size=24, shuffle=True, num_workers=2)
    first, sources = run.epoch()
    assert first == plain.epoch()[0] and len(first) == 7 and first[-1] == first[-2]
    assert sources == ["workers"] * 6 + ["here"]
    second, sources = run.epoch()
    assert second == plain.epoch()[0] and second != first[:6] and sources == ["workers"] * 6
    assert (run.loader.prefetched, run.loader.loaded_in_process) == (12, 1)


def test_workers_end_with_the_epoch_and_with_an_abandoned_iterator() -> None:
    before = _worker_children()
    run = _Run([], size=24, num_workers=2)
    run.epoch()
    assert _worker_children() <= before  # all taken: shut down at the last batch
    batches = iter(run.loader)
    next(batches)
    assert _worker_children() - before  # loading the next batches
    del batches  # the loop broke out of the epoch
    assert _worker_children() <= before


def test_a_healed_loop_replays_its_first_batches_as_none_with_workers() -> None:
    run = _Run([], size=24, num_workers=2, skip_first=2)
    run.process.position.load_state_dict({"epoch": 0, "cursor": 8, "steps": 2})
    batches = []
    for batch in run.loader:
        batches.append(batch if batch is None else batch[0].tolist())
        if batch is not None:
            run.process.position.cursor += run.process.assigned
    assert batches == [None, None, [8, 9], [12, 13], [16, 17], [20, 21]]
    assert (run.loader.prefetched, run.loader.loaded_in_process) == (4, 0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_groups_of_two_processes_feed_every_sample_once(num_workers: int) -> None:
    """Each process of each group has its loader and its position; they see the same quorums and commits.
    Group 1 dies for two steps (its processes are not stepped) and rejoins healed from group 0."""
    size, groups, group_size = 51, 2, 2  # steps of 2 x 2 x 2 = 8 samples: 6 per epoch, the last of 11
    processes = {
        (group, rank): _Process(size, groups, group_rank=rank, group_size=group_size, num_workers=num_workers)
        for group in range(groups)
        for rank in range(group_size)
    }
    batches = {key: iter(process.loader) for key, process in processes.items()}
    script = [  # per step: the live groups in quorum order, whether the step commits
        ((0, 1), True),
        ((0, 1), False),
        ((0,), True),  # group 1 died
        ((0,), False),
        ((1, 0), True),  # it rejoined, first in the quorum
        ((0, 1), False),  # the epoch's last step, not committed: one more step takes its samples
        ((0, 1), True),
    ]
    committed: list[int] = []
    previous = (0, 1)
    for live, commits in script:
        peer = processes[(next(group for group in live if group in previous), 0)]
        step: list[int] = []
        for group in live:
            for rank in range(group_size):
                process = processes[(group, rank)]
                if group not in previous:  # healed from a live peer before the step
                    process.position.load_state_dict(peer.position.state_dict())
                process.view = (live.index(group), len(live))
                values, _ = next(batches[(group, rank)])
                assert values.tolist() == process.loader.last_indices and len(values) >= 1
                step += values.tolist()
        live_processes = [processes[(group, rank)] for group in live for rank in range(group_size)]
        assert len({process.assigned for process in live_processes}) == 1
        assert len(step) == len(set(step)) == live_processes[0].assigned  # the step's slice, split without overlap
        if commits:
            committed += step
            for process in live_processes:
                process.position.cursor += process.assigned
        previous = live
    assert sorted(committed) == list(range(size))
    for key in batches:  # the epoch is over for every process
        assert next(batches[key], None) is None and processes[key].position.epoch == 1


def test_group_arguments_are_checked() -> None:
    data = DataLoader(_Recorded(3), batch_size=1)
    with pytest.raises(ValueError, match=r"dataset has 3 samples.*2 groups x 2 processes = 4"):
        ExactlyOnceLoader(data, EpochPosition(), 2, lambda: (0, 2), print, group_size=2)
    with pytest.raises(ValueError, match=r"group_rank=2 must be an int in 0\.\.1"):
        ExactlyOnceLoader(data, EpochPosition(), 1, lambda: (0, 1), print, group_rank=2, group_size=2)
    with pytest.raises(ValueError, match="group_size=0"):
        ExactlyOnceLoader(data, EpochPosition(), 1, lambda: (0, 1), print, group_size=0)
    assert (
        len(ExactlyOnceLoader(DataLoader(_Recorded(20), batch_size=2), EpochPosition(), 2, print, print, 0, 0, 1, 2))
        == 2
    )


_KILLED_TRAINING_PROCESS = """
import os, sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset
from fulmen.strategies.ft_data import EpochPosition, ExactlyOnceLoader
from tests.processes import alive, wait_until_gone

out = sys.argv[1]

def record_worker(worker_id):  # the loader's own worker_init_fn still runs
    with open(os.path.join(out, f"worker-{worker_id}.pid"), "w") as file:
        file.write(str(os.getpid()))

data = DataLoader(TensorDataset(torch.arange(64)), batch_size=2, num_workers=2, worker_init_fn=record_worker)
loader = ExactlyOnceLoader(data, EpochPosition(), 1, lambda: (0, 1), lambda samples: None)
batches = iter(loader)  # kept: an abandoned iterator shuts its workers down
next(batches)
open(os.path.join(out, "ready"), "w").close()
time.sleep(60)
"""


def test_prefetching_workers_die_at_once_with_a_killed_training_process(tmp_path) -> None:
    """Their copies of its sockets would otherwise keep the cross-group connections open until the workers
    notice (every 5 s), and the surviving groups would stall that long."""
    workers: list[int] = []
    training = subprocess.Popen([sys.executable, "-c", _KILLED_TRAINING_PROCESS, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert training.poll() is None and time.monotonic() < deadline, "the training process did not start"
            time.sleep(0.05)
        workers = [int((tmp_path / f"worker-{index}.pid").read_text()) for index in range(2)]
        assert all(alive(pid) for pid in workers)
        training.kill()
        training.wait()
        assert wait_until_gone(workers, seconds=1.0) == [], "the workers outlived the training process"
    finally:
        if training.poll() is None:
            training.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
