"""Two CPU processes (``ddp_spawn``): logging with ``sync_dist``, torchmetrics across ranks,
``prepare_data`` on local rank 0 only, and the distributed sampler. One run checks them all."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fulmen import Callback, LightningDataModule, LightningModule, Trainer
from tests.trainer.helpers import quiet


def classification_data(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(samples, 8, generator=generator), torch.randint(0, 3, (samples,), generator=generator)
    )


class MarkedData(LightningDataModule):
    """Leaves one file per call of prepare_data / setup, named after the process."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def prepare_data(self) -> None:
        Path(self.folder, f"prepare_{os.getpid()}").touch()

    def setup(self, stage: str) -> None:
        Path(self.folder, f"setup_{os.getpid()}").touch()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(classification_data(32, seed=0), batch_size=4)

    def val_dataloader(self) -> DataLoader:
        # 10 samples: each rank gets 5, in batches of 4 and 1 (weighting matters)
        return DataLoader(classification_data(10, seed=1), batch_size=4)


class Classifier(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        import torchmetrics

        self.net = nn.Linear(8, 3)
        self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        rank = float(self.global_rank)
        self.log("rank_mean", rank, on_step=False, on_epoch=True, sync_dist=True)
        self.log("rank_sum", rank, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum")
        self.log("rank_max_step", rank, on_step=True, on_epoch=False, sync_dist=True, reduce_fx="max")
        self.log("rank_local", rank, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.accuracy(self.net(x), y)
        self.log("val_acc", self.accuracy)
        self.log("val_label_mean", y.float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Report(Callback):
    """Rank 0's view of the run; its state comes back to the main process."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_end(self, trainer, pl_module):
        self.seen = {
            "world_size": trainer.world_size,
            "num_training_batches": trainer.num_training_batches,
            "sampler": type(trainer.train_dataloader.sampler).__name__,
        }

    def state_dict(self) -> dict[str, Any]:
        return self.seen

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seen = state_dict


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_logging_metrics_and_data_hooks_on_two_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("FULMEN_DIST_TIMEOUT", "30")
    report = Report()
    model = Classifier()
    trainer = Trainer(
        **quiet(callbacks=[report], max_epochs=2, strategy="ddp_spawn", devices=2, num_sanity_val_steps=0)
    )
    trainer.fit(model, datamodule=MarkedData(str(tmp_path)))

    assert report.seen == {"world_size": 2, "num_training_batches": 4, "sampler": "DistributedSampler"}
    assert len(list(tmp_path.glob("prepare_*"))) == 1  # local rank 0 only
    assert len(list(tmp_path.glob("setup_*"))) == 2  # every rank

    metrics = trainer.callback_metrics
    assert metrics["rank_mean"] == 0.5  # (0 + 1) / 2, synced
    assert metrics["rank_sum"] == 4.0  # 4 steps of 0 on rank 0, 4 steps of 1 on rank 1
    assert metrics["rank_max_step"] == 1.0  # synced on every step
    assert metrics["rank_local"] == 0.0  # not synced: rank 0's own value

    val = classification_data(10, seed=1)
    assert metrics["val_label_mean"] == pytest.approx(val.tensors[1].float().mean().item())
    with torch.no_grad():
        expected = (model.net(val.tensors[0]).argmax(dim=1) == val.tensors[1]).float().mean()
    assert metrics["val_acc"] == pytest.approx(expected.item())


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_reruns_the_script_and_every_rank_fits_then_validates(tmp_path):
    from tests.conftest import run_python

    script = Path(__file__).parent / "scripts" / "ddp_fit_validate.py"
    result = run_python(str(script), str(tmp_path), timeout=170, env={"FULMEN_DIST_TIMEOUT": "30"})
    assert result.returncode == 0, result.stderr[-3000:]
    # One file per rank: the ranks share one stdout, where their lines can interleave.
    ranks = [json.loads((tmp_path / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert all(r["steps"] == 8 for r in ranks)  # 32 samples per rank, batches of 8, 2 epochs
    assert ranks[0]["weight"] == ranks[1]["weight"]  # gradients were averaged
    assert all(isinstance(r["val"], float) for r in ranks)  # each rank validated its own shard


FAILURE_SCRIPT = str(Path(__file__).parent / "scripts" / "ddp_failure.py")


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("rank", "mode", "extra"),
    [
        (0, "raise", ()),
        (1, "raise", ()),
        (1, "kill", ()),
        (0, "kill", ()),
        (0, "raise", ("--second-trainer",)),  # the children were started by another Trainer
    ],
    ids=["rank0-raises", "rank1-raises", "rank1-killed", "rank0-killed", "rank0-raises-in-a-second-trainer"],
)
def test_ddp_a_failing_rank_ends_every_rank_with_its_error(rank, mode, extra, tmp_path):
    """Whichever rank of ``strategy="ddp"`` raises in a callback or dies, every rank ends promptly.

    The process-group timeout is above the 60 s allowed, so it cannot be what ends them.
    """
    from tests.processes import run_failing

    run = run_failing(
        FAILURE_SCRIPT, tmp_path, str(rank), mode, "3", *extra, timeout=100, env={"FULMEN_DIST_TIMEOUT": "70"}
    )
    stderr = run.proc.stderr
    assert sorted(run.pids) == [0, 1], stderr[-3000:]
    assert run.survivors == []
    assert run.elapsed < 60
    assert "unreachable" not in run.proc.stdout
    if (rank, mode) == (0, "kill"):
        assert run.proc.returncode == -signal.SIGKILL
    elif rank == 0:
        assert run.proc.returncode == 1
        assert "RuntimeError: rank 0 broke on purpose at batch 3" in stderr
        assert "DistributedError" not in stderr  # rank 0's own error, not an echo from a stopped child
    else:
        assert run.proc.returncode == 1
        child = f"DistributedError: Local rank 1 (pid {run.pids[1]}) exited with code"
        if mode == "raise":
            assert "RuntimeError: rank 1 broke on purpose at batch 3" in stderr  # the child's own traceback
            assert f"{child} 1; its traceback is printed above" in stderr
        else:
            assert f"{child} -9; it was killed by SIGKILL" in stderr
