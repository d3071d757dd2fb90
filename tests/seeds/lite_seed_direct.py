"""Seeds 001/002 ("My existing PyTorch code" converted to LightningLite, direct style).

The seed leaves ``MyModel``/``MyDataset``/``args`` as ``...``; they are filled in here. The
training function is the seed's, with only the import line changed. Run it with
``fulmen run lite_seed_direct.py --devices=2 --strategy=ddp``.
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fulmen.lite import LightningLite


class MyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(8, 1)

    def forward(self, batch):
        x, y = batch[:, :8], batch[:, 8:]
        return nn.functional.mse_loss(self.net(x), y)


class MyDataset(Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 8, generator=generator)
        self.data = torch.cat([x, x.sum(dim=1, keepdim=True)], dim=1)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]


def train(args):

    lite = LightningLite()

    model = MyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = lite.setup(model, optimizer)

    dataloader = DataLoader(MyDataset(), batch_size=8)
    dataloader = lite.setup_dataloaders(dataloader)

    model.train()
    for epoch in range(args.num_epochs):
        epoch_loss = torch.zeros(())
        for batch in dataloader:
            optimizer.zero_grad()
            loss = model(batch)
            lite.backward(loss)
            optimizer.step()
            epoch_loss += loss.detach()
        mean = lite.all_reduce(epoch_loss / len(dataloader))
        lite.print(f"epoch {epoch} loss {mean.item():.6f}")

    # Distributed collectives from the seed.
    gathered = lite.all_gather(torch.tensor([lite.global_rank]))
    token = lite.broadcast(f"from rank {lite.global_rank}", src=0)
    lite.barrier()
    print(
        f"rank={lite.global_rank} local_rank={lite.local_rank} node_rank={lite.node_rank} "
        f"world_size={lite.world_size} zero={lite.is_global_zero} gathered={gathered.flatten().tolist()} "
        f"token={token!r} device={lite.device} precision={lite.strategy.precision.precision}",
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-epochs", type=int, default=3)
    train(parser.parse_args())
