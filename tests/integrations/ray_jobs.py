"""Training functions that Ray Train runs on its workers in the tests of fulmen.integrations.ray.

Each writes what it saw into files (one per rank, or rank 0 only), never to stdout: the test
reads them after ``TorchTrainer.fit`` returns.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import ray.train
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L
from fulmen.integrations.ray import (
    RayDDPStrategy,
    RayLightningEnvironment,
    RayTrainReportCallback,
    prepare_trainer,
    ray_checkpoint_file,
)


class Classifier(L.LightningModule):
    """A small MLP with dropout: its result depends on every random stream a resume must restore."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def loaders(batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=generator)
    y = (x[:, :4].sum(dim=1) > 0).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=batch_size)
    return train, val


class Recorder(L.Callback):
    """Writes each epoch's ``callback_metrics`` (rank 0) and where each attempt started (every rank)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_start(self, trainer, pl_module):
        rank = trainer.global_rank
        record = {"pid": os.getpid(), "epoch": trainer.current_epoch, "step": trainer.global_step}
        with open(self.out / f"starts_rank{rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
            with open(self.out / "epochs.jsonl", "a") as f:
                f.write(json.dumps({"epoch": trainer.current_epoch, "metrics": metrics}) + "\n")


class KillOnce(L.Callback):
    """SIGKILLs rank ``rank`` at ``step`` once (a marker file remembers it across restarts)."""

    def __init__(self, out: str, step: int, rank: int = 1) -> None:
        self.marker = Path(out) / "killed"
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step and not self.marker.exists():
            # Ray registers a reported checkpoint a moment after `report` returns: wait for it, so
            # that the restart has one to resume from (without, it starts over, equally exact).
            ray.train.get_all_reported_checkpoints()
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def train_classifier(config: dict) -> None:
    """The seed's pattern on the small classifier; ``config``: out, max_epochs, lr, kill_at."""
    out = config["out"]
    L.seed_everything(config.get("seed", 0))
    model = Classifier(lr=config.get("lr", 0.1))
    callbacks = [RayTrainReportCallback(), Recorder(out)]
    if config.get("kill_at") is not None:
        callbacks.append(KillOnce(out, config["kill_at"]))
    trainer = L.Trainer(
        max_epochs=config.get("max_epochs", 4),
        devices="auto",
        accelerator="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    fit = trainer.fit
    trainer = prepare_trainer(trainer)
    rank = ray.train.get_context().get_world_rank()
    # prepare_trainer replaces nothing: fit is still the Trainer's own method.
    unchanged = trainer.fit == fit and trainer.fit.__func__ is L.Trainer.fit
    (Path(out) / f"fit_unchanged_rank{rank}").write_text(str(unchanged))
    train, val = loaders()
    # Ray's guide resumes explicitly; ckpt_path is None on the first run (a TypeError once).
    with ray_checkpoint_file() as ckpt_path:
        trainer.fit(model, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        torch.save(model.state_dict(), Path(out) / "final.pt")


def lite_and_plain_trainers(config: dict) -> None:
    """Lite with the Ray strategy, then plain Trainers that meet Ray's process group."""
    out = Path(config["out"])
    lite = L.Lite(strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()])
    lite.seed_everything(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = lite.setup(model, optimizer)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    loader = lite.setup_dataloaders(DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4))
    seen = 0
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(inputs), targets)
        lite.backward(loss)
        optimizer.step()
        seen += len(inputs)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = lite.all_gather(weights)
    lite.save(out / "lite.ckpt", {"model": model, "optimizer": optimizer, "seen": seen})
    restored = nn.Linear(4, 1)
    state = lite.load(out / "lite.ckpt", {"model": restored})
    record = {
        "world_size": lite.world_size,
        "global_rank": lite.global_rank,
        "local_rank": lite.local_rank,
        "device": str(lite.device),
        "master_addr": os.environ.get("MASTER_ADDR"),
        "batches": len(loader),
        "seen": seen,
        "all_reduce_sum": lite.all_reduce(torch.tensor(float(lite.global_rank + 1)), reduce_op="sum").item(),
        "all_reduce_mean": lite.all_reduce(torch.tensor(float(lite.global_rank + 1))).item(),
        "ranks_agree": all(torch.equal(gathered[0], g) for g in gathered),
        "loaded_seen": state["seen"],
        "loaded_equal": torch.equal(torch.cat([p.flatten() for p in restored.parameters()]), weights),
    }
    # A plain DDP Trainer whose flags describe another job than Ray's: told what to pass.
    try:
        L.Trainer(strategy="ddp", devices=1, accelerator="cpu", logger=False).fit(Classifier(), loaders()[0])
        record["mismatch"] = "no error"
    except Exception as err:
        record["mismatch"] = f"{type(err).__name__}: {err}"
    # One whose flags agree (devices=2 on this one-node job) joins Ray's group.
    trainer = L.Trainer(
        strategy="ddp", devices=2, accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False
    )
    classifier = Classifier()
    trainer.fit(classifier, loaders()[0])
    record["joined_batches"] = trainer.num_training_batches
    record["joined_rank"] = trainer.global_rank
    weights = torch.cat([p.detach().flatten() for p in classifier.parameters()])
    record["joined_ranks_agree"] = all(torch.equal(weights, g) for g in lite.all_gather(weights))
    (out / f"lite_rank{lite.global_rank}.json").write_text(json.dumps(record))


def sharded_strategies(config: dict) -> None:
    """The classifier for two epochs under RayFSDPStrategy and RayDeepSpeedStrategy."""
    from fulmen.integrations.ray import RayDeepSpeedStrategy, RayFSDPStrategy

    out = Path(config["out"])
    record = {}
    for name, strategy in (("fsdp", RayFSDPStrategy()), ("deepspeed", RayDeepSpeedStrategy(stage=2))):
        L.seed_everything(0)
        model = Classifier()
        trainer = L.Trainer(
            max_epochs=2,
            strategy=strategy,
            plugins=[RayLightningEnvironment()],
            callbacks=[RayTrainReportCallback()],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer = prepare_trainer(trainer)
        train, val = loaders()
        # FSDP: no validation loader. fulmen's FSDPStrategy fails validation under the Trainer
        # (a plain Linear gets DTensor weights in validation_step), with or without Ray.
        trainer.fit(model, train, None if name == "fsdp" else val)
        record[name] = {
            "strategy": repr(trainer.strategy),
            "world_size": trainer.world_size,
            "batches": trainer.num_training_batches,
            "metrics": {k: v.item() for k, v in trainer.callback_metrics.items()},
        }
    (out / f"sharded_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def tune_trial(config: dict) -> None:
    """One Tune trial: a TorchTrainer (one worker), its reports forwarded to Tune."""
    from ray import tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    out = Path(config["out"]) / f"lr_{config['lr']}"
    out.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_classifier,
        train_loop_config={**config, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False),
        run_config=RunConfig(
            name=f"trial_{tune.get_context().get_trial_id()}",
            storage_path=config["storage"],
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()
