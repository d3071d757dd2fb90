"""``Lite.setup(..., sync_batchnorm=True)`` with two real processes (``ddp_spawn``).

torch synchronises BatchNorm statistics of CUDA (and a few other accelerators') tensors only,
and its DDP refuses SyncBatchNorm on the CPU: there, every rank ends with fulmen's error that
names the flag. The statistics over both ranks need two GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from fulmen import Lite
from fulmen.utilities.exceptions import DistributedError

pytestmark = [pytest.mark.slow]


def _model() -> nn.Module:
    # momentum=None: the running mean is the plain average of the batches seen, here exactly one.
    return nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, momentum=None))


def _batch(rank: int) -> torch.Tensor:
    # rank 0: 0 and 2 (mean 1); rank 1: 4 and 6 (mean 5); both ranks together: mean 3.
    return torch.tensor([[4.0 * rank], [4.0 * rank + 2.0]]).repeat(1, 3)


def _setup_and_step(lite: Lite, out_dir: str, train: bool) -> None:
    rank = lite.global_rank
    record: dict = {}
    original = _model()
    synced = lite.setup(original, sync_batchnorm=True)
    record["synced_type"] = type(synced.module[1]).__name__
    record["same_module"] = synced.module is original
    plain = lite.setup_module(_model())  # the default: BatchNorm stays as it is
    record["plain_type"] = type(plain.module[1]).__name__
    if train:
        for model in (synced, plain):
            with torch.no_grad():  # the identity, so that BatchNorm sees the data itself
                model.module[0].weight.copy_(torch.eye(3))
                model.module[0].bias.zero_()
            model.train()
            model(lite.to_device(_batch(rank)))
        record["synced_mean"] = synced.module[1].running_mean.tolist()
        record["synced_var"] = synced.module[1].running_var.tolist()
        record["plain_mean"] = plain.module[1].running_mean.tolist()
    Path(out_dir, f"rank_{rank}.json").write_text(json.dumps(record))


def _check_conversion(out_dir: Path) -> list[dict]:
    records = [json.loads((out_dir / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    for record in records:
        assert record["synced_type"] == "SyncBatchNorm"
        assert record["same_module"] is True  # converted in place: the user's object is the model
        assert record["plain_type"] == "BatchNorm1d"
    return records


@pytest.mark.timeout(90)
def test_sync_batchnorm_on_cpu_processes_fails_at_setup_naming_the_flag(tmp_path):
    lite = Lite(accelerator="cpu", strategy="ddp_spawn", devices=2)
    with pytest.raises((DistributedError, mp.ProcessRaisedException), match=r"`sync_batchnorm=True`.*need GPUs"):
        lite.launch(_setup_and_step, str(tmp_path), False)


def test_sync_batchnorm_on_one_process_changes_nothing():
    lite = Lite(accelerator="cpu", devices=1)
    original = _model()
    model = lite.setup(original, sync_batchnorm=True)
    assert type(model.module[1]) is nn.BatchNorm1d and model.module is original


@pytest.mark.gpu
@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm synchronises CUDA tensors: needs 2 GPUs")
def test_sync_batchnorm_statistics_cover_both_ranks(tmp_path):
    lite = Lite(accelerator="cuda", strategy="ddp_spawn", devices=2)
    lite.launch(_setup_and_step, str(tmp_path), True)
    first, second = _check_conversion(tmp_path)
    both = torch.cat([_batch(0), _batch(1)])
    for record in (first, second):
        assert record["synced_mean"] == pytest.approx(both.mean(0).tolist())  # 3.0: both ranks' data
        assert record["synced_var"] == pytest.approx(both.var(0).tolist())
    assert first["plain_mean"] == pytest.approx([1.0] * 3) and second["plain_mean"] == pytest.approx([5.0] * 3)
