"""A LightningCLI script as Lightning's examples write one (imports changed only): logo, demo model and data.

Usage: python cli_boring.py fit --trainer.default_root_dir=OUT ...
"""

from fulmen import cli_lightning_logo
from fulmen.cli import LightningCLI
from fulmen.demos import BoringDataModule, DemoModel


class Model(DemoModel):
    def validation_step(self, batch, batch_idx):
        self.log("val_sum", self(batch).sum())


def cli_main():
    LightningCLI(Model, BoringDataModule, seed_everything_default=1234, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    cli_lightning_logo()
    cli_main()
