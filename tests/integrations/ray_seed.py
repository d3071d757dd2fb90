# ruff: noqa
# fmt: off
# Seed 003 (Ray Train's "Get Started with PyTorch Lightning"), its "PyTorch Lightning + Ray Train"
# script as written there. Only import lines differ, and use_gpu=False (CPU workers, as issue 11
# asks): fulmen for Lightning, fulmen.integrations.ray standing in for `ray` (so that
# `ray.train.lightning.X` is fulmen's), and tests.integrations.vision_standin for torchvision,
# which cannot be installed on this machine.
import torch
from tests.integrations.vision_standin import resnet18
from tests.integrations.vision_standin import FashionMNIST
from tests.integrations.vision_standin import ToTensor, Normalize, Compose
from torch.utils.data import DataLoader
import fulmen as pl

from ray.train.torch import TorchTrainer
from ray.train import ScalingConfig
from fulmen.integrations import ray

# Model, Loss, Optimizer
class ImageClassifier(pl.LightningModule):
    def __init__(self):
        super(ImageClassifier, self).__init__()
        self.model = resnet18(num_classes=10)
        self.model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)
        self.criterion = torch.nn.CrossEntropyLoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        outputs = self.forward(x)
        loss = self.criterion(outputs, y)
        self.log("loss", loss, on_step=True, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=0.001)


def train_func(config):

    # Data
    transform = Compose([ToTensor(), Normalize((0.5,), (0.5,))])
    train_data = FashionMNIST(root='./data', train=True, download=True, transform=transform)
    train_dataloader = DataLoader(train_data, batch_size=128, shuffle=True)

    # Training
    model = ImageClassifier()
    # [1] Configure PyTorch Lightning Trainer.
    trainer = pl.Trainer(
        max_epochs=10,
        devices="auto",
        accelerator="auto",
        strategy=ray.train.lightning.RayDDPStrategy(),
        plugins=[ray.train.lightning.RayLightningEnvironment()],
        callbacks=[ray.train.lightning.RayTrainReportCallback()],
    )
    trainer = ray.train.lightning.prepare_trainer(trainer)
    trainer.fit(model, train_dataloaders=train_dataloader)

# [2] Configure scaling and resource requirements.
scaling_config = ScalingConfig(num_workers=2, use_gpu=False)

# [3] Launch distributed training job.
trainer = TorchTrainer(train_func, scaling_config=scaling_config)
result = trainer.fit()
