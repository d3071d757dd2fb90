"""A tiny GAN on 2-D points, trained with manual optimization (two optimizers, stepped by hand).

The real data is a ring of 8 Gaussian blobs; the generator learns to map noise onto it. Runs in
a few seconds on a CPU: ``python examples/gan_manual_optimization.py``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fulmen as L


def ring_of_blobs(samples: int = 2048, modes: int = 8, radius: float = 2.0, spread: float = 0.05) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    angles = 2 * math.pi * torch.randint(0, modes, (samples,), generator=generator) / modes
    centers = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return centers + spread * torch.randn(samples, 2, generator=generator)


class GAN(L.LightningModule):
    def __init__(self, latent_dim: int = 8, hidden: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
        )
        self.discriminator = nn.Sequential(
            nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.hparams.latent_dim, device=self.device)
        fake = self(z)
        ones = torch.ones(real.shape[0], 1, device=self.device)
        zeros = torch.zeros_like(ones)

        # Discriminator: real -> 1, fake -> 0 (the generator's parameters stay frozen meanwhile).
        self.toggle_optimizer(opt_d)
        d_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones) + (
            F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros)
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # Generator: make the discriminator call its samples real.
        self.toggle_optimizer(opt_g)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)

    def configure_optimizers(self):
        lr = self.hparams.lr
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        return [opt_g, opt_d]


def mean_distance_to_ring(points: torch.Tensor, radius: float = 2.0) -> float:
    return (points.norm(dim=1) - radius).abs().mean().item()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--root-dir", default="fulmen_logs/gan")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)

    L.seed_everything(7)
    data = DataLoader(TensorDataset(ring_of_blobs()), batch_size=128, shuffle=True)
    model = GAN()
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        accelerator="cpu",
        default_root_dir=args.root_dir,
        enable_checkpointing=False,
        enable_progress_bar=not args.no_progress_bar,
        log_every_n_steps=4,
    )
    with torch.no_grad():
        before = mean_distance_to_ring(model(torch.randn(1024, model.hparams.latent_dim)))
    trainer.fit(model, data)
    with torch.no_grad():
        after = mean_distance_to_ring(model(torch.randn(1024, model.hparams.latent_dim)))
    print(f"optimizer steps: {trainer.global_step} (two per batch)")
    print(f"mean distance of generated points to the ring: {before:.3f} before, {after:.3f} after")
    return after


if __name__ == "__main__":
    main()
