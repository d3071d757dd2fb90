"""Checkpoints: the documented schema, old files, safe and durable loading, load_from_checkpoint, "last"/"best"."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import fulmen as L
from fulmen.callbacks import ModelCheckpoint
from fulmen.checkpointing.remote import CheckpointNotFoundError
from fulmen.utilities.exceptions import CheckpointError, MisconfigurationException
from tests.trainer.helpers import BoringModel, loader, quiet

FIXTURES = Path(__file__).parent / "fixtures"


class HParamModel(BoringModel):
    def __init__(self, lr: float = 0.1, width: int = 2) -> None:
        super().__init__(lr=lr)
        self.save_hyperparameters()
        self.layer = nn.Linear(32, width)


class Data(L.LightningDataModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.position = 0

    def train_dataloader(self):
        return loader(32, batch_size=self.hparams.batch_size)

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def _fit(tmp_path, model=None, **flags):
    model = model or HParamModel()
    trainer = L.Trainer(**quiet(max_epochs=1, default_root_dir=str(tmp_path), **flags))
    trainer.fit(model, loader(32))
    return trainer, model


def test_schema_is_complete_and_loads_with_plain_torch_load(tmp_path):
    trainer, _ = _fit(tmp_path, precision="16-mixed")
    path = tmp_path / "full.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # no fulmen allowlist needed
    assert checkpoint["schema_version"] == 2 and checkpoint["fulmen_version"] == L.__version__
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 4)
    assert checkpoint["loops"]["batch_idx"] == 0 and checkpoint["loops"]["phase"] is None
    assert len(checkpoint["rng"]["ranks"]) == 1 and set(checkpoint["rng"]["ranks"][0]) >= {"python", "numpy", "torch"}
    assert checkpoint["hyper_parameters"] == {"lr": 0.1, "width": 2}
    assert "scale" in checkpoint["precision"]  # the GradScaler's state
    assert len(checkpoint["optimizer_states"]) == 1 and "callbacks" in checkpoint

    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    weights = torch.load(tmp_path / "weights.ckpt", weights_only=True)
    assert "optimizer_states" not in weights and "rng" not in weights and "state_dict" in weights


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_checkpoint_v1", FIXTURES / "make_checkpoint_v1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_schema_1_checkpoint_still_loads_and_resumes(tmp_path):
    fixture = _fixture_module()
    model = fixture.BoringClassifier.load_from_checkpoint(FIXTURES / "checkpoint_v1.ckpt")
    assert model.hparams == {"hidden": 4, "lr": 0.1}
    saved = torch.load(FIXTURES / "checkpoint_v1.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(model.layer.weight, saved["layer.weight"])

    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    trainer = L.Trainer(**quiet(max_epochs=3))
    trainer.fit(
        fixture.BoringClassifier(),
        torch.utils.data.DataLoader(data, batch_size=4),
        ckpt_path=str(FIXTURES / "checkpoint_v1.ckpt"),
    )
    assert (trainer.current_epoch, trainer.global_step) == (3, 12)  # one more epoch of 4 steps


def test_load_from_checkpoint_rebuilds_from_hyperparameters(tmp_path):
    trainer, model = _fit(tmp_path, model=HParamModel(lr=0.5, width=3))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = HParamModel.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.hparams.width == 3 and loaded.layer.out_features == 3
    assert torch.equal(loaded.layer.weight, model.layer.weight)
    overridden = HParamModel.load_from_checkpoint(str(tmp_path / "m.ckpt"), lr=0.01, map_location="cpu")
    assert overridden.hparams.lr == 0.01
    with pytest.raises(TypeError, match="is a classmethod: call it on the class"):
        model.load_from_checkpoint(tmp_path / "m.ckpt")


def test_datamodule_state_and_load_from_checkpoint(tmp_path):
    data = Data(batch_size=4)
    data.position = 11
    trainer = L.Trainer(**quiet(max_epochs=1))
    trainer.fit(HParamModel(), datamodule=data)
    trainer.save_checkpoint(tmp_path / "dm.ckpt")
    restored = Data.load_from_checkpoint(tmp_path / "dm.ckpt")
    assert restored.hparams.batch_size == 4 and restored.position == 11


def test_compiled_and_plain_modules_share_checkpoints(tmp_path):
    trainer, model = _fit(tmp_path)
    compiled = torch.compile(model.layer, backend="eager")
    torch.save({"state_dict": {f"layer.{k}": v for k, v in compiled.state_dict().items()}}, tmp_path / "c.ckpt")
    assert any("_orig_mod" in k for k in torch.load(tmp_path / "c.ckpt")["state_dict"])
    plain = HParamModel.load_from_checkpoint(tmp_path / "c.ckpt")  # compiled → plain
    assert torch.equal(plain.layer.weight, model.layer.weight)

    trainer.save_checkpoint(tmp_path / "plain.ckpt")  # plain → a module with a compiled part
    target = HParamModel()
    target.layer = torch.compile(target.layer, backend="eager")
    trainer2 = L.Trainer(**quiet(max_epochs=2))
    trainer2.fit(target, loader(32), ckpt_path=str(tmp_path / "plain.ckpt"))
    assert trainer2.global_step == 8


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "appears truncated or corrupted"),  # filled in below: half of a real file
        (b"not a checkpoint at all" * 10, "corrupted"),
    ],
)
def test_torn_and_corrupted_files_name_the_file(tmp_path, content, message):
    trainer, _ = _fit(tmp_path)
    good = tmp_path / "good.ckpt"
    trainer.save_checkpoint(good)
    bad = tmp_path / "bad.ckpt"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if content is None else content)
    with pytest.raises(CheckpointError, match=message) as info:
        L.Trainer(**quiet(max_epochs=2)).fit(HParamModel(), loader(32), ckpt_path=str(bad))
    assert str(bad) in str(info.value)
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        HParamModel.load_from_checkpoint(bad)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_malicious_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(marker)}}, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        HParamModel.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        L.Trainer(**quiet(max_epochs=1)).fit(HParamModel(), loader(32), ckpt_path=str(path))
    assert not marker.exists()


def test_weights_only_checkpoints_cannot_resume_training(tmp_path):
    trainer, _ = _fit(tmp_path)
    trainer.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    with pytest.raises(CheckpointError, match="holds the model's weights only") as info:
        L.Trainer(**quiet(max_epochs=2)).fit(HParamModel(), loader(32), ckpt_path=str(tmp_path / "w.ckpt"))
    assert "save_weights_only=True" in str(info.value) and "HParamModel.load_from_checkpoint(path)" in str(info.value)


def test_resuming_fit_from_an_evaluation_checkpoint_says_what_it_holds(tmp_path):
    """A file saved after `validate()` holds weights but no optimizer state: the error says so, and what to do."""
    trainer, model = _fit(tmp_path)
    evaluator = L.Trainer(**quiet())
    evaluator.validate(model, loader(32))
    evaluator.save_checkpoint(tmp_path / "final.ckpt")
    with pytest.raises(CheckpointError) as info:
        L.Trainer(**quiet(max_epochs=2)).fit(HParamModel(), loader(32), ckpt_path=str(tmp_path / "final.ckpt"))
    message = str(info.value)
    assert "final.ckpt" in message and "no optimizer state" in message and "saved outside `fit`" in message
    assert "HParamModel.load_from_checkpoint(path)" in message and "without `ckpt_path`" in message
    # What it advises works: the weights load and a fresh fit trains from them.
    restored = HParamModel.load_from_checkpoint(tmp_path / "final.ckpt")
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)
    L.Trainer(**quiet(max_epochs=1)).fit(restored, loader(32))


def test_ckpt_path_last_best_and_errors(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="train_loss", save_last=True)
    trainer = L.Trainer(**quiet(max_epochs=2, enable_checkpointing=True, callbacks=[checkpoint]))
    trainer.fit(HParamModel(), loader(32))
    assert os.path.exists(checkpoint.last_model_path) and checkpoint.best_model_path

    resumed = L.Trainer(
        **quiet(
            max_epochs=3,
            enable_checkpointing=True,
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)],
        )
    )
    resumed.fit(HParamModel(), loader(32), ckpt_path="last")
    assert resumed.ckpt_path == checkpoint.last_model_path and resumed.global_step == 12

    results = trainer.validate(HParamModel(), loader(16), ckpt_path="best")
    assert trainer.ckpt_path == checkpoint.best_model_path and isinstance(results, list)
    with pytest.raises(MisconfigurationException, match="fit resumes with 'last'"):
        trainer.fit(HParamModel(), loader(32), ckpt_path="best")
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        trainer.fit(HParamModel(), loader(32), ckpt_path=str(tmp_path / "missing.ckpt"))
    with pytest.raises(MisconfigurationException, match="`ckpt_path=3`"):
        trainer.fit(HParamModel(), loader(32), ckpt_path=3)
    with pytest.warns(UserWarning, match='fit\\(ckpt_path="last"\\) is set, .* No checkpoint will be loaded'):
        L.Trainer(**quiet(max_epochs=1, default_root_dir=str(tmp_path / "empty"))).fit(
            HParamModel(), loader(32), ckpt_path="last"
        )


def test_evaluating_without_model_or_ckpt_path_loads_the_best_checkpoint_of_the_fit(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="train_loss")
    trainer = L.Trainer(**quiet(max_epochs=2, enable_checkpointing=True, callbacks=[checkpoint]))
    model = HParamModel()
    trainer.fit(model, loader(32))
    for entry in ("validate", "test", "predict"):
        with pytest.warns(UserWarning, match="The best model of the previous `fit` call will be used"):
            getattr(trainer, entry)(dataloaders=loader(16))
        assert trainer.ckpt_path == checkpoint.best_model_path
        getattr(trainer, entry)(model, loader(16))  # a model given: its weights as they are
        assert trainer.ckpt_path is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"enable_checkpointing": False}, '`.test(ckpt_path="best")` is set but `ModelCheckpoint` is not configured.'),
        (
            {"enable_checkpointing": True, "callbacks": [ModelCheckpoint(save_top_k=0)]},
            "`ModelCheckpoint` is not configured to save the best model",
        ),
    ],
)
def test_best_without_a_best_checkpoint_fails_as_in_lightning(tmp_path, flags, message):
    trainer = L.Trainer(**quiet(max_epochs=1, default_root_dir=tmp_path, **flags))
    trainer.fit(BoringModel(), loader(32))
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer.test(ckpt_path="best", dataloaders=loader(16), verbose=False)


def test_a_newer_schema_is_refused_with_advice(tmp_path):
    path = tmp_path / "future.ckpt"
    torch.save({"schema_version": 99, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="newer fulmen"):
        HParamModel.load_from_checkpoint(path)


class Stateful(L.Callback):
    def state_dict(self):
        return {"seen": 1}


def test_resuming_without_a_callback_whose_state_was_saved_warns_naming_it(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    trainer = L.Trainer(**quiet(max_epochs=1, enable_checkpointing=True, callbacks=[checkpoint, Stateful()]))
    trainer.fit(BoringModel(), loader(32))
    resumed = L.Trainer(**quiet(max_epochs=2, enable_checkpointing=True, default_root_dir=tmp_path))
    with pytest.warns(UserWarning, match=r"Please add the following callbacks: \['Stateful'\]"):
        resumed.fit(BoringModel(), loader(32), ckpt_path=checkpoint.last_model_path)


def test_resuming_past_max_epochs_fails_in_lightnings_words(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    L.Trainer(**quiet(max_epochs=3, enable_checkpointing=True, callbacks=[checkpoint])).fit(BoringModel(), loader(32))
    resumed = L.Trainer(**quiet(max_epochs=1, default_root_dir=tmp_path))
    with pytest.raises(
        MisconfigurationException,
        match=r"You restored a checkpoint with current_epoch=2, but you have set Trainer\(max_epochs=1\)",
    ):
        resumed.fit(BoringModel(), loader(32), ckpt_path=checkpoint.last_model_path)
