"""A model built in the main process and passed to ``run`` under ddp_spawn: each rank must own a copy."""

import torch
from torch import nn

from fulmen import Lite


class OneStep(Lite):
    def run(self, model):
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        model, optimizer = self.setup(model, optimizer)
        x = torch.full((1, 1), float(self.global_rank + 1))
        self.backward(model(x).sum())  # gradient x on each rank; DDP averages them: 1.5
        optimizer.step()
        self.barrier()  # both ranks have stepped: a shared tensor would show both updates
        return model.module.weight.detach().clone()


if __name__ == "__main__":
    layer = nn.Linear(1, 1, bias=False)
    nn.init.ones_(layer.weight)
    weight = OneStep(accelerator="cpu", devices=2, strategy="ddp_spawn").run(layer)
    print(f"WEIGHT {weight.item():.4f}")
