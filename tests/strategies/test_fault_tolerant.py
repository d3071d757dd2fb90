"""FaultTolerantStrategy without processes: options, errors, the exactly-once slices, the healed state."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen.cli.main import main
from fulmen.strategies import FaultTolerantStrategy, Strategy, select_strategy
from fulmen.strategies.ft_data import EpochPosition, ExactlyOnceLoader, epoch_order, share, step_slice
from fulmen.strategies.ft_state import ReplicaState
from fulmen.utilities.exceptions import MisconfigurationException


def test_share_splits_a_slice_without_gaps_or_overlaps() -> None:
    for total in range(0, 20):
        for participants in range(1, 5):
            parts = [share(10, 10 + total, r, participants) for r in range(participants)]
            assert parts[0][0] == 10 and parts[-1][1] == 10 + total
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [stop - start for start, stop in parts]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank=2 is not in 0..1"):
        share(0, 4, 2, 2)


def test_step_slice_last_step_takes_the_rest() -> None:
    assert step_slice(8, 64, 8, last_step=False) == (8, 16)
    assert step_slice(60, 64, 8, last_step=False) == (60, 64)
    assert step_slice(40, 64, 8, last_step=True) == (40, 64)


def test_epoch_order_is_the_same_everywhere_and_changes_with_the_epoch() -> None:
    assert epoch_order(5, shuffle=False, seed=3, epoch=7) == [0, 1, 2, 3, 4]
    first = epoch_order(50, shuffle=True, seed=3, epoch=0)
    assert first == epoch_order(50, shuffle=True, seed=3, epoch=0)
    assert sorted(first) == list(range(50)) and first != epoch_order(50, shuffle=True, seed=3, epoch=1)


class _Quorums:
    """Plays the strategy's side: a scripted quorum per step and a commit decision per step."""

    def __init__(self, loader_position: EpochPosition, plan: list[tuple[int, bool]]) -> None:
        self.position = loader_position
        self.plan = iter(plan)
        self.assigned = 0
        self.current: tuple[int, bool] = (1, True)

    def quorum(self) -> tuple[int, int]:
        self.current = next(self.plan)
        return 0, self.current[0]

    def commit(self) -> None:
        if self.current[1]:
            self.position.cursor += self.assigned


def test_exactly_once_loader_gives_an_uncommitted_slice_to_the_next_step() -> None:
    data = TensorDataset(torch.arange(20))
    position = EpochPosition()
    # 2 groups configured, batch 2: 5 steps per epoch of 4 samples; this group is rank 0 of each quorum.
    plan = [(2, True), (2, False), (1, True), (2, True), (2, True)]
    quorums = _Quorums(position, plan)
    loader = ExactlyOnceLoader(DataLoader(data, batch_size=2), position, 2, quorums.quorum, _setter(quorums))
    assert len(loader) == 5
    batches = []
    for (batch,) in loader:
        batches.append(batch.tolist())
        quorums.commit()
    # step 1 did not commit: step 2 takes the same samples (alone: all four); the fifth and last step takes
    # the rest (8 samples, this group's half of them), so that the epoch still has 5 steps.
    assert batches == [[0, 1], [4, 5], [4, 5, 6, 7], [8, 9], [12, 13, 14, 15]]
    assert position.epoch == 1 and position.cursor == 0 and position.steps == 0


def _setter(quorums: _Quorums):
    def on_assigned(samples: int) -> None:
        quorums.assigned = samples

    return on_assigned


def test_exactly_once_loader_needs_a_batch_size_and_a_sample_per_group() -> None:
    loader = DataLoader(TensorDataset(torch.arange(4)), batch_size=None)
    with pytest.raises(ValueError, match="batch_size=None"):
        ExactlyOnceLoader(loader, EpochPosition(), 2, lambda: (0, 1), lambda n: None)
    loader = DataLoader(TensorDataset(torch.arange(2)), batch_size=1)
    with pytest.raises(ValueError, match="up to 3 replica groups, but the dataset has 2 samples"):
        ExactlyOnceLoader(loader, EpochPosition(), 3, lambda: (0, 1), lambda n: None)


def test_a_tail_smaller_than_a_step_joins_the_last_step() -> None:
    """21 samples, 2 groups of batch 2: 5 steps, the last of 5 samples, so no group ever gets an empty share."""
    position = EpochPosition()
    quorums = _Quorums(position, [(2, True)] * 5)
    loader = ExactlyOnceLoader(
        DataLoader(TensorDataset(torch.arange(21)), batch_size=2), position, 2, quorums.quorum, _setter(quorums)
    )
    sizes = []
    for (batch,) in loader:
        sizes.append((len(batch), quorums.assigned))
        quorums.commit()
    assert sizes == [(2, 4), (2, 4), (2, 4), (2, 4), (3, 5)]


def test_replica_state_round_trip_heals_weights_optimizer_rng_and_extras() -> None:
    def build(seed: int) -> tuple[ReplicaState, nn.Module, torch.optim.Optimizer, dict]:
        torch.manual_seed(seed)
        model = nn.Linear(3, 2)
        optimizer = torch.optim.Adam(model.parameters())
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        progress = {"step": seed}
        state = ReplicaState()
        state.modules.append(model)
        state.optimizers.append(optimizer)
        state.register("loop", lambda: dict(progress), progress.update)
        return state, model, optimizer, progress

    live, live_model, live_opt, _ = build(1)
    restarted, model, optimizer, progress = build(2)
    sent = live.state_dict()
    expected_draw = torch.rand(3)
    restarted.load_state_dict(sent)
    assert restarted.healed == 1 and restarted.pending_rng is not None
    restarted.apply_pending_rng()  # at the step's first batch
    assert torch.equal(torch.rand(3), expected_draw)  # the random state came along
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), live_model.parameters()))
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], live_opt.state_dict()["state"][0]["exp_avg"])
    assert progress == {"step": 1}


def test_replica_state_refuses_a_different_setup() -> None:
    live, restarted = ReplicaState(), ReplicaState()
    live.modules.append(nn.Linear(1, 1))
    with pytest.raises(RuntimeError, match="sent 1 module"):
        restarted.load_state_dict(live.state_dict())
    with pytest.raises(TypeError, match="must be callables"):
        restarted.register("x", 1, print)  # type: ignore[arg-type]


def test_base_strategy_always_commits_and_ignores_replica_state() -> None:
    strategy = select_strategy(accelerator="cpu", devices=1)
    assert strategy.last_step_committed is True
    strategy.register_replica_state("loop", dict, print)  # nothing to heal from: accepted, unused
    assert not isinstance(strategy, FaultTolerantStrategy)


def test_resolver_builds_fault_tolerant_by_name() -> None:
    strategy = select_strategy(accelerator="cpu", strategy="fault_tolerant")
    assert isinstance(strategy, FaultTolerantStrategy) and isinstance(strategy, Strategy)
    assert strategy.root_device == torch.device("cpu")
    assert strategy.last_step_committed is True


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_replicas": 0}, "min_replicas"),
        ({"timeout": -1}, "timeout"),
        ({"quorum_timeout": "soon"}, "quorum_timeout"),
        ({"quorum_retries": -1}, "quorum_retries=-1"),
        ({"inner": "deepspeed"}, "inner='deepspeed'.*'single', 'ddp', 'fsdp'"),
        ({"auto_wrap_policy": {torch.nn.Linear}}, r"\['auto_wrap_policy'\].*inner='fsdp'"),
    ],
)
def test_invalid_options_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(MisconfigurationException, match=message):
        FaultTolerantStrategy(**kwargs)


def test_missing_lighthouse_and_group_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torchft")
    monkeypatch.delenv("TORCHFT_LIGHTHOUSE", raising=False)
    monkeypatch.delenv("FULMEN_REPLICA_GROUP", raising=False)
    strategy = FaultTolerantStrategy()
    with pytest.raises(MisconfigurationException, match=r"needs the address of a torchft lighthouse.*TORCHFT_LIGHT"):
        strategy.setup_environment()
    with pytest.raises(MisconfigurationException, match=r"needs `replica_group`.*FULMEN_REPLICA_GROUP"):
        strategy.replica_group  # noqa: B018
    monkeypatch.setenv("TORCHFT_LIGHTHOUSE", "http://127.0.0.1:1")
    monkeypatch.setenv("FULMEN_REPLICA_GROUP", "0")
    monkeypatch.setenv("FULMEN_NUM_REPLICA_GROUPS", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MisconfigurationException, match=r"inner='single'.*WORLD_SIZE=2.*inner='ddp'"):
        FaultTolerantStrategy(inner="single").setup_environment()
    monkeypatch.setenv("FULMEN_NUM_REPLICA_GROUPS", "two")
    with pytest.raises(MisconfigurationException, match="FULMEN_NUM_REPLICA_GROUPS"):
        strategy.num_replica_groups  # noqa: B018


def test_accumulating_steps_take_consecutive_slices_and_an_uncommitted_step_gives_them_all_back() -> None:
    """Gradients accumulated over 3 batches: one quorum and one commit per step of 3 batches."""
    position = EpochPosition()
    plan = iter([True, False, True, True])  # the second step does not commit
    state = {"pending": 0, "open": False, "commits": True, "in_step": 0}

    def quorum() -> tuple[int, int]:
        if not state["open"]:  # the step's first batch opens it; the others join the open step
            state.update(open=True, commits=next(plan))
        return 0, 1

    def assign(samples: int) -> None:
        state["pending"] += samples

    data = DataLoader(TensorDataset(torch.arange(24)), batch_size=2)
    loader = ExactlyOnceLoader(data, position, 1, quorum, assign, pending=lambda: state["pending"])
    assert len(loader) == 12
    batches, committed = [], []
    for index, (batch,) in enumerate(loader):
        batches.append(batch.tolist())
        state["in_step"] += 1
        if state["in_step"] == 3 or index == len(loader) - 1:  # the optimizer step
            if state["commits"]:
                position.cursor += state["pending"]
                committed.extend(sum(batches[-state["in_step"] :], []))
            state.update(pending=0, open=False, in_step=0)
    assert batches[:9] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [6, 7], [8, 9], [10, 11]]
    assert batches[9:] == [[12, 13], [14, 15], list(range(16, 24))]  # the last batch takes the rest
    assert sorted(committed) == list(range(24))
    assert position.epoch == 1 and position.cursor == 0


def test_trainer_accumulation_is_refused_and_accumulating_backwards_are_not_averaged() -> None:
    strategy = FaultTolerantStrategy()
    with pytest.raises(MisconfigurationException, match="accumulate_grad_batches=4"):
        strategy.configure_training(accumulate_grad_batches=4)
    module = nn.Linear(2, 2)
    with strategy.no_backward_sync(module):
        assert strategy._sync_off
    assert not strategy._sync_off


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--replica-groups", "0"], "--replica-groups=0"),
        (["--replica-groups", "2", "--max-restarts", "-1"], "--max-restarts=-1"),
        (["--replica-groups", "2", "--heartbeat-timeout", "0"], "--heartbeat-timeout=0"),
        (["--replica-groups", "2", "--strategy", "ddp"], "runs strategy='fault_tolerant'"),
        (["--replica-groups", "2", "--num-nodes", "2"], "starts every group on this machine"),
        (["--replica-groups", "2", "--devices", "two"], "--devices='two'"),
    ],
)
def test_cli_refuses_bad_fault_tolerance_flags(
    tmp_path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    script = tmp_path / "train.py"
    script.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(script), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_inner_strategy_runs_inside_each_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from fulmen.strategies import DDPStrategy, FSDPStrategy

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert type(FaultTolerantStrategy()) is FaultTolerantStrategy
    monkeypatch.setenv("WORLD_SIZE", "2")  # one of several processes of a group: DDP inside it by default
    strategy = FaultTolerantStrategy(timeout=7)
    assert isinstance(strategy, DDPStrategy) and strategy.inner == "ddp"
    assert strategy.timeout.total_seconds() == 7  # the group's process group waits as long
    sharded = FaultTolerantStrategy(inner="fsdp", auto_wrap_policy={torch.nn.Linear})
    assert isinstance(sharded, FSDPStrategy) and isinstance(sharded, FaultTolerantStrategy)
    assert "inner='fsdp'" in repr(sharded)


def test_each_group_gets_its_own_gpus_when_there_are_enough() -> None:
    from fulmen.cli.replica_groups import group_gpus

    gpus = ["0", "1", "2", "3"]
    assert [group_gpus(g, 2, gpus) for g in (0, 1)] == ["0,1", "2,3"]
    assert [group_gpus(g, 1, ["4", "6"]) for g in (0, 1)] == ["4", "6"]  # of CUDA_VISIBLE_DEVICES
    assert group_gpus(1, 2, ["0", "1", "2"]) is None  # too few: the groups share what there is
    assert group_gpus(0, 1, []) is None  # no GPU


class _OneGroupManager:
    """torchft's Manager for one group alone, whose commit votes follow ``commits`` (then always commit)."""

    def __init__(self, commits: list[bool]) -> None:
        self.commits = iter(commits)

    def start_quorum(self) -> None:
        pass

    def participating_rank(self) -> int:
        return 0

    def num_participants(self) -> int:
        return 1

    def current_step(self) -> int:
        return 0

    def allreduce(self, tensor: torch.Tensor) -> Any:
        return SimpleNamespace(wait=lambda: None)

    def should_commit(self) -> bool:
        return next(self.commits, True)

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_trainer_epoch_whose_last_step_does_not_commit_takes_one_more_batch(tmp_path) -> None:
    """4 steps per epoch; epoch 0's last step does not commit: its samples come in a 5th batch of the same
    epoch, and max_epochs=2 still trains every sample of both epochs once."""
    import fulmen as L

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(1, 1)
            self.batches: list[tuple[int, list[int], bool]] = []

        def training_step(self, batch, batch_idx):
            (ids,) = batch
            self.current_ids = ids.tolist()
            return self.layer(ids.float().unsqueeze(1)).pow(2).mean()

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.batches.append((self.current_epoch, self.current_ids, self.trainer.strategy.last_step_committed))

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]

    strategy = FaultTolerantStrategy(replica_group=0, num_replica_groups=1, lighthouse="http://127.0.0.1:1")
    strategy._manager = _OneGroupManager([True, True, True, False])
    model = Recorder()
    data = DataLoader(TensorDataset(torch.arange(16)), batch_size=4, shuffle=True)
    trainer = L.Trainer(
        strategy=strategy, accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, data)
    per_epoch = [[b for b in model.batches if b[0] == epoch] for epoch in (0, 1)]
    assert [len(batches) for batches in per_epoch] == [5, 4]
    assert [committed for _, _, committed in per_epoch[0]] == [True, True, True, False, True]
    assert per_epoch[0][3][1] == per_epoch[0][4][1]  # the uncommitted step's samples, again
    for batches in per_epoch:
        assert sorted(i for _, ids, committed in batches if committed for i in ids) == list(range(16))
    assert trainer.global_step == 8 and trainer.current_epoch == 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**2)  # stepped once per epoch
