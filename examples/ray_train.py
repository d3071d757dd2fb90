"""Ray Train's Lightning guide (seed 003) with fulmen: an image classifier on 2 CPU workers.

    python examples/ray_train.py                      # 4 epochs on a local Ray, synthetic images
    python examples/ray_train.py --kill-once          # a worker is SIGKILLed in epoch 2, once:
                                                      # Ray restarts both, fulmen resumes exactly
    python examples/ray_train.py --fashion-mnist      # the guide's data and resnet18 (torchvision,
                                                      # and a download)

The classifier is the guide's: a ResNet whose first convolution takes one channel, cross
entropy, Adam at 1e-3, ``self.log("loss", ...)``. Its Trainer is the guide's too:
``RayDDPStrategy``, ``RayLightningEnvironment``, ``RayTrainReportCallback``, ``prepare_trainer``.
Each epoch reports its metrics and a checkpoint to Ray; after a restart ``ray_checkpoint_file()``
gives the last one to ``trainer.fit(..., ckpt_path=...)`` (None on the first run), as Ray's guide
resumes. Needs ``pip install fulmen[ray]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
from pathlib import Path

# A local Ray on this machine only: node addresses (and so the process group's) are loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
import torch  # noqa: E402
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import fulmen as L  # noqa: E402
from fulmen.integrations.ray import (  # noqa: E402
    RayDDPStrategy,
    RayLightningEnvironment,
    RayTrainReportCallback,
    prepare_trainer,
    ray_checkpoint_file,
)


def small_resnet(num_classes: int = 10) -> nn.Module:
    """resnet18's stem and one basic block: trains in seconds on a CPU (torchvision not needed)."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
            )  # fmt: skip

        def forward(self, x):
            return torch.relu(self.body(x) + x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.rest = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1), Block())
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.fc(self.rest(self.conv1(x)).mean(dim=(2, 3)))

    return Net()


class ImageClassifier(L.LightningModule):
    def __init__(self, resnet: str = "small") -> None:
        super().__init__()
        self.save_hyperparameters()
        if resnet == "resnet18":
            from torchvision.models import resnet18

            self.model = resnet18(num_classes=10)
        else:
            self.model = small_resnet(num_classes=10)
        self.model.conv1 = nn.Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.criterion(self(x), y)
        self.log("loss", loss, on_step=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=0.001)


def synthetic_images(count: int = 512) -> TensorDataset:
    """FashionMNIST-shaped images (1x28x28, 10 classes): each class a bright band of its own."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = torch.rand(count, 1, 28, 28, generator=generator) * 0.3
    for i, label in enumerate(labels.tolist()):
        images[i, :, 2 * label + 4 : 2 * label + 8] += 0.7
    return TensorDataset((images - 0.5) / 0.5, labels)


def fashion_mnist() -> torch.utils.data.Dataset:
    from torchvision.datasets import FashionMNIST
    from torchvision.transforms import Compose, Normalize, ToTensor

    transform = Compose([ToTensor(), Normalize((0.5,), (0.5,))])
    return FashionMNIST(root="./data", train=True, download=True, transform=transform)


class KillOnce(L.Callback):
    """SIGKILLs rank 1 at ``step``, once: the marker file outlives the restarted worker group."""

    def __init__(self, marker: str, step: int) -> None:
        self.marker, self.step = Path(marker), step

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            with open(self.marker.with_suffix(".starts"), "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "global_step": trainer.global_step}) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == self.step and not self.marker.exists():
            import ray.train

            registered = getattr(ray.train, "get_all_reported_checkpoints", None)  # Ray Train 2
            if registered is not None:
                registered()  # returns once Ray has registered the last epoch's checkpoint
            self.marker.write_text(str(os.getpid()))
            print(f"[example] SIGKILL to rank 1 (pid {os.getpid()}) at step {self.step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def train_func(config: dict) -> None:
    dataset = fashion_mnist() if config["fashion_mnist"] else synthetic_images()
    train_dataloader = DataLoader(dataset, batch_size=128, shuffle=True)
    L.seed_everything(0)
    model = ImageClassifier(resnet="resnet18" if config["fashion_mnist"] else "small")
    callbacks = [RayTrainReportCallback()]
    if config["kill_at"] is not None:
        callbacks.append(KillOnce(config["marker"], config["kill_at"]))
    trainer = L.Trainer(
        max_epochs=config["epochs"],
        devices="auto",
        accelerator="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=callbacks,
        enable_progress_bar=False,
        logger=False,
    )
    trainer = prepare_trainer(trainer)
    with ray_checkpoint_file() as ckpt_path:  # after a restart: Ray's latest checkpoint; else None
        trainer.fit(model, train_dataloaders=train_dataloader, ckpt_path=ckpt_path)


def main(argv: list[str] | None = None) -> ray.train.Result:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kill-once", action="store_true", help="SIGKILL rank 1 once, in the second epoch")
    parser.add_argument("--fashion-mnist", action="store_true", help="the guide's data and resnet18 (torchvision)")
    parser.add_argument("--storage", default=None, help="where Ray keeps results (default: a temporary folder)")
    args = parser.parse_args(argv)

    storage = args.storage or tempfile.mkdtemp(prefix="fulmen-ray-example-")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    batches_per_epoch = 2  # 512 synthetic images, batches of 128, two workers
    config = {
        "epochs": args.epochs,
        "fashion_mnist": args.fashion_mnist,
        # In the second epoch, after the first epoch's checkpoint.
        "kill_at": batches_per_epoch + 1 if args.kill_once else None,
        "marker": os.path.join(storage, "killed"),
    }
    trainer = TorchTrainer(
        train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(
            name="ray_train_example",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=1),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"
            ),
        ),
    )
    result = trainer.fit()

    print(f"metrics:    {result.metrics}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"path:       {result.path}")
    print(f"error:      {result.error}")
    starts = Path(config["marker"]).with_suffix(".starts")
    if starts.exists():
        steps = [json.loads(line)["global_step"] for line in starts.read_text().splitlines()]
        print(f"starts:     fit began at global step {steps} (a restart resumes where Ray's checkpoint left off)")
    with result.checkpoint.as_directory() as directory:
        model = ImageClassifier.load_from_checkpoint(os.path.join(directory, "checkpoint.ckpt"))
    print(f"loaded:     ImageClassifier with {sum(p.numel() for p in model.parameters())} parameters")
    return result


if __name__ == "__main__":
    main()
