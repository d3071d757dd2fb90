"""Lightning's demo classes under fulmen: same shapes, data and optimisation, and they run in every loop."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

import fulmen as L
from fulmen.demos import (
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


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**options, **kwargs})


def test_random_datasets_shapes_and_lengths():
    dataset = RandomDataset(32, 64)
    assert len(dataset) == 64 and dataset[3].shape == (32,) and torch.equal(dataset[3], dataset[3])
    item = RandomDictDataset(4, 8)[1]
    assert set(item) == {"a", "b"} and torch.allclose(item["b"], item["a"] + 2)
    assert [x.shape for x in RandomIterableDataset(5, 3)] == [torch.Size([5])] * 3
    assert not hasattr(RandomIterableDataset(5, 3), "__len__")
    assert len(RandomIterableDatasetWithLen(5, 7)) == 7 and len(list(RandomIterableDatasetWithLen(5, 7))) == 7


def test_boring_model_runs_every_loop_and_trains(tmp_path):
    torch.manual_seed(0)
    model = BoringModel()
    assert isinstance(model.layer, torch.nn.Linear) and model.layer.weight.shape == (2, 32)
    [optimizer], [scheduler] = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.1
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    weight = model.layer.weight.detach().clone()
    trainer = _trainer(tmp_path, limit_train_batches=32, limit_val_batches=4)
    trainer.fit(model)
    assert trainer.global_step == 32 and not torch.equal(weight, model.layer.weight)
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr() == [0.1 * 0.1]  # StepLR stepped once
    assert trainer.test(model, verbose=False) == [{}]
    predictions = trainer.predict(model)
    assert len(predictions) == 64 and predictions[0].shape == (1, 2)


def test_boring_model_hook_can_be_turned_off(tmp_path):
    model = BoringModel()
    model.validation_step = None
    trainer = _trainer(tmp_path, limit_train_batches=2, limit_val_batches=2)
    trainer.fit(model)
    assert trainer.global_step == 2


def test_boring_datamodule_splits_are_disjoint_quarters(tmp_path):
    datamodule = BoringDataModule()
    for stage in ("fit", "test", "predict"):
        datamodule.setup(stage)
    parts = [datamodule.random_train, datamodule.random_val, datamodule.random_test, datamodule.random_predict]
    indices = [list(part.indices) for part in parts]
    assert indices == [list(range(i * 64, (i + 1) * 64)) for i in range(4)]
    assert isinstance(datamodule.train_dataloader(), DataLoader) and len(datamodule.val_dataloader()) == 64
    trainer = _trainer(tmp_path, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(BoringModel(), datamodule=BoringDataModule())
    assert trainer.global_step == 3


def test_manual_optimization_model_steps_its_optimizer(tmp_path):
    model = ManualOptimBoringModel()
    assert model.automatic_optimization is False
    weight = model.layer.weight.detach().clone()
    trainer = _trainer(tmp_path, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.global_step == 4 and not torch.equal(weight, model.layer.weight)


def test_demo_model_and_net(tmp_path):
    model = DemoModel(out_dim=3, learning_rate=0.01)
    assert model.l1.out_features == 3 and model(torch.randn(5, 32)).shape == (5, 3)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 0.01
    trainer = _trainer(tmp_path, limit_train_batches=2)
    trainer.fit(model, DataLoader(RandomDataset(32, 8), batch_size=4))
    assert trainer.global_step == 2
    log_probs = Net()(torch.randn(2, 1, 28, 28))
    assert log_probs.shape == (2, 10) and torch.allclose(log_probs.exp().sum(1), torch.ones(2))
