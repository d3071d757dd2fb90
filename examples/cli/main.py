"""The CLI example: ``python examples/cli/main.py fit --config examples/cli/config.yaml``.

Try ``--help``, ``fit --help``, ``fit --config config.yaml --print_config``,
``fit --config config.yaml --trainer.max_epochs=2 --data.batch_size=64 --optimizer.lr=0.05``,
``fit --config config.yaml --model=WideClassifier``, ``test --config config.yaml --ckpt_path=...``.
The config of each run is written beside its logs (``lightning_logs/version_N/config.yaml``).
Python puts this file's folder first on ``sys.path``, so ``model.py`` and ``datamodule.py`` import as they are.
"""

from __future__ import annotations

from model import Classifier

from datamodule import BlobsDataModule
from fulmen.cli import LightningCLI


class ExampleCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        # The data decides the model's input and output sizes; the config sets them once.
        parser.link_arguments("data.num_features", "model.init_args.num_features")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes")

    def after_fit(self):
        metrics = {k: round(float(v), 4) for k, v in sorted(self.trainer.callback_metrics.items())}
        print(f"fit finished at epoch {self.trainer.current_epoch}, global step {self.trainer.global_step}: {metrics}")
        print(f"config and logs in {self.trainer.log_dir}")


def main(args=None):
    return ExampleCLI(Classifier, BlobsDataModule, subclass_mode_model=True, args=args)


if __name__ == "__main__":
    main()
