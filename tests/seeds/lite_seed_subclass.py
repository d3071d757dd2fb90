"""Seed 000 ("Convert to LightningLite"), as its users wrote it; only the import lines differ.

One call line differs too: the seed calls ``lite.run(lite_model, train_dataloader(), val_dataloader())``,
which leaves out the ``num_epochs`` its own ``run`` requires (a TypeError in any framework);
here it is passed.
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fulmen import seed_everything
from fulmen.lite import LightningLite


class BoringModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(32, 2)

    def forward(self, x):
        x = self.layer(x)
        return torch.nn.functional.mse_loss(x, torch.ones_like(x))


def configure_optimizers(module: nn.Module):
    return torch.optim.SGD(module.parameters(), lr=0.001)


class RandomDataset(Dataset):
    def __init__(self, length: int, size: int):
        self.len = length
        self.data = torch.randn(length, size)

    def __getitem__(self, index):
        return self.data[index]

    def __len__(self):
        return self.len


def train_dataloader():
    return DataLoader(RandomDataset(64, 32))


def val_dataloader():
    return DataLoader(RandomDataset(64, 32))


class Lite(LightningLite):
    def run(self, num_epochs, model, train_dataloader, val_dataloader):
        optimizer = configure_optimizers(model)
        model, optimizer = self.setup(model=model, optimizers=optimizer)
        train_dataloader = self.setup_dataloaders(train_dataloader)
        val_dataloader = self.setup_dataloaders(val_dataloader)

        for epoch in range(num_epochs):
            train_losses = []
            val_losses = []

            model.train()
            for batch in train_dataloader:
                optimizer.zero_grad()
                loss = model(batch)
                train_losses.append(loss)
                self.backward(loss)
                optimizer.step()

            model.eval()
            with torch.no_grad():
                for batch in val_dataloader:
                    val_losses.append(model(batch))

            # all_gather keeps the list: stack it to average over every batch of every rank.
            train_epoch_loss = torch.stack(self.all_gather(train_losses)).mean()
            val_epoch_loss = torch.stack(self.all_gather(val_losses)).mean()

            print(f"{epoch}/{num_epochs}| Train Epoch Loss: {train_epoch_loss}")
            print(f"{epoch}/{num_epochs}| Valid Epoch Loss: {val_epoch_loss}")
        return model


if __name__ == "__main__":
    seed_everything(42)
    lite_model = BoringModel()
    lite = Lite()
    lite.run(10, lite_model, train_dataloader(), val_dataloader())
