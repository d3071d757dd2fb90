"""Lightning's demo models and datasets (``lightning.pytorch.demos``), for examples, bug reports and tests.

Datasets that Lightning downloads (WikiText-2, MNIST) are read from local files here; a missing
file raises ``FileNotFoundError`` that names the path and how to get the data.
"""

from fulmen.demos.boring_classes import (
    BoringDataModule,
    BoringModel,
    DemoModel,
    ManualOptimBoringModel,
    Net,
    RandomDataset,
    RandomDictDataset,
    RandomIterableDataset,
    RandomIterableDatasetWithLen,
)
from fulmen.demos.lstm import LightningLSTM, SequenceSampler, SimpleLSTM
from fulmen.demos.transformer import LightningTransformer, Transformer, WikiText2

__all__ = [
    "BoringDataModule",
    "BoringModel",
    "DemoModel",
    "LightningLSTM",
    "LightningTransformer",
    "ManualOptimBoringModel",
    "Net",
    "RandomDataset",
    "RandomDictDataset",
    "RandomIterableDataset",
    "RandomIterableDatasetWithLen",
    "SequenceSampler",
    "SimpleLSTM",
    "Transformer",
    "WikiText2",
]
