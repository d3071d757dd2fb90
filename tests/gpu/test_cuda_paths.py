"""Every CUDA path of fulmen on one GPU: placement and non-blocking transfers, 16-mixed with gradient
scaling, bf16-mixed, asynchronous saves of CUDA tensors, DeepSpeed and FSDP on one device, device stats."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.callbacks import DeviceStatsMonitor
from fulmen.checkpointing.checkpoint_io import AsyncCheckpointIO
from fulmen.loggers import CSVLogger
from fulmen.strategies.precision import MixedPrecision
from fulmen.utilities.apply_func import move_data_to_device


class Recorder(L.LightningModule):
    """Records, per step, where the batch is and the dtypes of a layer's output and of the weights."""

    def __init__(self, scale_step: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
        self.seen: list[tuple[str, torch.dtype, torch.dtype]] = []
        self.weights: list[torch.Tensor] = []
        self.inf_step = scale_step

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        hidden = self.net[0](x)
        self.seen.append((x.device.type, hidden.dtype, self.net[0].weight.dtype))
        self.weights.append(self.net[0].weight.detach().clone())
        loss = F.mse_loss(self.net(x).float(), y)
        return loss * float("inf") if batch_idx == self.inf_step else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(rows: int = 64) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(rows, 32, generator=generator), torch.randn(rows, 1, generator=generator))
    return DataLoader(data, batch_size=16, pin_memory=True)


def trainer(tmp_path, **flags) -> L.Trainer:
    settings = dict(
        accelerator="cuda", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    return L.Trainer(**{**settings, **flags})


def test_cuda_placement_and_non_blocking_transfers(tmp_path):
    model = Recorder()
    trainer(tmp_path).fit(model, loader())
    assert [s[0] for s in model.seen] == ["cuda"] * 4
    assert next(model.parameters()).is_cuda
    # A pinned host tensor goes over without blocking the host: the copy is queued on the stream.
    pinned = torch.randn(1024, 1024).pin_memory()
    moved = move_data_to_device({"x": pinned}, torch.device("cuda", 0))["x"]
    torch.cuda.synchronize()
    assert moved.is_cuda and torch.equal(moved.cpu(), pinned)


def test_16_mixed_computes_in_float16_and_scales_gradients(tmp_path):
    # growth_interval=1: the scale doubles after every finite step and halves after an overflow.
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, growth_interval=1)
    model = Recorder(scale_step=2)
    trainer(tmp_path, plugins=[MixedPrecision("16-mixed", "cuda", scaler=scaler)]).fit(model, loader(80))
    assert {s[1:] for s in model.seen} == {(torch.float16, torch.float32)}  # float16 compute, float32 weights
    # Steps 0, 1 finite (x2, x2), step 2 overflows (x0.5, skipped), steps 3, 4 finite (x2, x2).
    assert scaler.get_scale() == 2.0**10 * 2 * 2 * 0.5 * 2 * 2
    assert torch.equal(model.weights[2], model.weights[3])  # the overflowing step changed nothing
    assert not torch.equal(model.weights[1], model.weights[2])
    assert torch.isfinite(model.net[0].weight).all()


def test_16_mixed_by_flag_has_a_scaler_and_bf16_mixed_has_none(tmp_path):
    fp16 = trainer(tmp_path, precision="16-mixed")
    fp16.fit(Recorder(), loader())
    assert isinstance(fp16.strategy.precision.scaler, torch.amp.GradScaler)
    model = Recorder()
    bf16 = trainer(tmp_path, precision="bf16-mixed")
    bf16.fit(model, loader())
    assert bf16.strategy.precision.scaler is None
    assert {s[1:] for s in model.seen} == {(torch.bfloat16, torch.float32)}


def test_async_saves_of_cuda_tensors_hold_the_values_at_save_time(tmp_path):
    model = Recorder()
    fit = trainer(tmp_path, plugins=[AsyncCheckpointIO()], max_epochs=2)
    fit.fit(model, loader())
    expected = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path = tmp_path / "async.ckpt"
    fit.save_checkpoint(path)
    with torch.no_grad():  # changed right after save_checkpoint returned: the file must not see it
        for parameter in model.parameters():
            parameter.add_(1.0)
    fit.strategy.checkpoint_io.load_checkpoint(path)  # waits for the pending write
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in expected.items())


def test_deepspeed_on_one_gpu_trains_and_checkpoints(tmp_path):
    pytest.importorskip("deepspeed")
    model = Recorder()
    fit = trainer(tmp_path, strategy="deepspeed_stage_2", precision="bf16-mixed", max_epochs=2)
    fit.fit(model, loader())
    assert fit.global_step == 8 and torch.isfinite(model.net[0].weight).all()
    assert {s[0] for s in model.seen} == {"cuda"}
    fit.save_checkpoint(tmp_path / "ds.ckpt")
    assert (tmp_path / "ds.ckpt").is_dir()  # DeepSpeed's directory of shards


def test_fsdp_on_one_gpu_trains_and_reloads(tmp_path):
    model = Recorder()
    fit = trainer(tmp_path, strategy="fsdp", precision="bf16-mixed", max_epochs=2)
    fit.fit(model, loader())
    assert fit.global_step == 8
    path = tmp_path / "fsdp.ckpt"
    fit.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert set(state) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    # The sharded module called directly after fit: the weights are gathered for the call.
    with torch.no_grad():
        output = model(torch.ones(2, 32, device="cuda"))
        plain = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
        plain.load_state_dict({k.removeprefix("net."): v.float() for k, v in state.items()})
        expected = plain(torch.ones(2, 32))
    assert torch.allclose(output.float().cpu(), expected, atol=1e-2)  # bf16 compute against float32


def test_device_stats_on_cuda(tmp_path):
    logger = CSVLogger(tmp_path, name="stats", version=0)
    fit = trainer(tmp_path, callbacks=[DeviceStatsMonitor()], logger=logger, log_every_n_steps=1)
    fit.fit(Recorder(), loader())
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    allocated = [r for r in rows if any("cuda_memory_allocated" in k and r[k] for k in r)]
    assert allocated, sorted(rows[0]) if rows else "no rows"
