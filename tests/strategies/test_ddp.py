"""``DDPStrategy`` with two real processes (gloo on loopback), started by its own launcher: no Trainer.

One launch runs every check: each rank records its results in ``rank_N.json`` and the test
reads the files after the launcher has joined both processes.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

from fulmen.strategies import DDPStrategy, select_strategy

pytestmark = [pytest.mark.slow]


def _ddp_spawn(monkeypatch: pytest.MonkeyPatch) -> DDPStrategy:
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.delenv("MASTER_PORT", raising=False)  # a free port of its own
    strategy = select_strategy(strategy="ddp_spawn", devices=2, accelerator="cpu")
    strategy.timeout = timedelta(seconds=20)  # a missing rank fails a collective quickly
    return strategy


def _grad(module: nn.Module) -> list[float]:
    return module.weight.grad.flatten().tolist()


def _every_check(strategy: DDPStrategy, out_dir: str) -> str:
    strategy.setup_environment()
    rank = strategy.global_rank
    record: dict = {
        "rank": rank,
        "world_size": strategy.world_size,
        "backend": torch.distributed.get_backend(),
        "sampler": strategy.distributed_sampler_kwargs,
    }

    # Gradients: every rank holds the mean of the ranks' gradients after backward.
    torch.manual_seed(0)
    layer = nn.Linear(4, 1, bias=False)
    record["initial_weight"] = layer.weight.flatten().tolist()
    ddp = strategy.setup_module(layer)
    x = torch.full((2, 4), float(rank + 1))  # d(sum(w.x))/dw = 2 * (rank + 1) per weight
    strategy.backward(ddp(x).sum(), ddp)
    record["grad_synced"] = _grad(layer)

    # no_backward_sync: each rank keeps its own gradient; the next synced backward averages the sum.
    layer.weight.grad = None
    with strategy.no_backward_sync(ddp):
        strategy.backward(ddp(x).sum(), ddp)
    record["grad_unsynced"] = _grad(layer)
    strategy.backward(ddp(x).sum(), ddp)
    record["grad_accumulated"] = _grad(layer)

    # all_gather: equal shapes stack; uneven first dims come back as a list at each rank's own shape.
    record["gather_equal"] = strategy.all_gather(torch.tensor([rank, rank + 10])).tolist()
    uneven = strategy.all_gather(torch.arange(rank + 1, dtype=torch.float32))
    record["gather_uneven_type"] = type(uneven).__name__
    record["gather_uneven"] = [t.tolist() for t in uneven]
    uneven_2d = strategy.all_gather(torch.full((rank + 1, 3), float(rank)))
    record["gather_uneven_2d"] = [list(t.shape) for t in uneven_2d]
    record["gather_uneven_2d_values"] = [t.unique().tolist() for t in uneven_2d]
    try:
        strategy.all_gather(torch.tensor(1.0) if rank == 0 else torch.ones(2))
        record["gather_dims"] = "no error"
    except ValueError as err:
        record["gather_dims"] = str(err)

    # broadcast: any picklable object, from any rank.
    mine = {"from": rank, "payload": [1, 2, 3], "pair": (rank, "x")}
    record["broadcast_from_1"] = strategy.broadcast(mine, src=1)
    record["broadcast_default"] = strategy.broadcast(f"rank {rank}")
    record["gather_object"] = strategy.all_gather_object({"rank": rank})

    # all_reduce: the four ops; the input tensor is left as it was.
    value = torch.tensor(float(rank + 1))
    for op in ("sum", "mean", "max", "min"):
        record[f"reduce_{op}"] = strategy.all_reduce(value, reduce_op=op).item()
    record["input_after_reduce"] = value.item()
    int_mean = strategy.all_reduce(torch.tensor(rank + 1), reduce_op="mean")
    record["reduce_int_mean"] = [int_mean.item(), str(int_mean.dtype)]
    record["reduce_float_sum"] = strategy.all_reduce(0.5 * (rank + 1), reduce_op="sum").item()

    record["decide_all"] = strategy.reduce_boolean_decision(rank == 0, all=True)
    record["decide_any"] = strategy.reduce_boolean_decision(rank == 0, all=False)
    strategy.barrier("end")

    path = Path(out_dir, f"rank_{rank}.json")
    path.with_suffix(".tmp").write_text(json.dumps(record))
    os.replace(path.with_suffix(".tmp"), path)  # the test never reads a half-written file
    return f"done on rank {rank}"


@pytest.mark.timeout(90)
def test_two_processes_gradients_no_sync_and_collectives(tmp_path, monkeypatch):
    strategy = _ddp_spawn(monkeypatch)
    assert strategy.launcher.pickles_function

    result = strategy.launcher.launch(_every_check, strategy, str(tmp_path))

    assert result == "done on rank 0"  # rank zero's return value comes back to the caller
    first, second = (json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in (0, 1))
    assert (first["rank"], second["rank"]) == (0, 1)
    for record in (first, second):
        assert record["world_size"] == 2
        assert record["backend"] == "gloo"
    assert first["sampler"] == {"num_replicas": 2, "rank": 0}
    assert second["sampler"] == {"num_replicas": 2, "rank": 1}
    assert first["initial_weight"] == second["initial_weight"]

    # Local gradients are 2 * 1 and 2 * 2 per weight: DDP leaves their mean on both ranks.
    assert first["grad_synced"] == second["grad_synced"] == [3.0] * 4
    assert first["grad_unsynced"] == [2.0] * 4 and second["grad_unsynced"] == [4.0] * 4
    assert first["grad_accumulated"] == second["grad_accumulated"] == [6.0] * 4  # mean of 2+2 and 4+4

    for record in (first, second):
        assert record["gather_equal"] == [[0, 10], [1, 11]]
        assert record["gather_uneven_type"] == "list"
        assert record["gather_uneven"] == [[0.0], [0.0, 1.0]]
        assert record["gather_uneven_2d"] == [[1, 3], [2, 3]]
        assert record["gather_uneven_2d_values"] == [[0.0], [1.0]]  # no padding leaks into the result
        assert "same number of dimensions" in record["gather_dims"]

        assert record["broadcast_from_1"] == {"from": 1, "payload": [1, 2, 3], "pair": [1, "x"]}
        assert record["broadcast_default"] == "rank 0"
        assert record["gather_object"] == [{"rank": 0}, {"rank": 1}]

        assert (record["reduce_sum"], record["reduce_mean"], record["reduce_max"], record["reduce_min"]) == (
            3.0, 1.5, 2.0, 1.0
        )  # fmt: skip
        assert record["reduce_int_mean"] == [1.5, "torch.float32"]
        assert record["reduce_float_sum"] == 1.5
        assert (record["decide_all"], record["decide_any"]) == (False, True)
    assert (first["input_after_reduce"], second["input_after_reduce"]) == (1.0, 2.0)
