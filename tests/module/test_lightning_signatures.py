"""LightningModule / LightningDataModule names with Lightning's signatures: on_gpu, to_onnx without a file,
load_from_checkpoint(map_location=) by name, LightningDataModule() as Lightning's."""

from __future__ import annotations

import importlib.util
import io

import pytest
import torch

import fulmen as L
from fulmen.demos import BoringDataModule, BoringModel


class Exportable(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = torch.randn(3, 32)


def test_on_gpu_follows_the_device():
    model = BoringModel()
    assert model.on_gpu is False
    if torch.cuda.is_available():
        assert model.cuda().on_gpu is True


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs onnx")
def test_to_onnx_to_a_path_or_a_file_object(tmp_path):
    import onnx

    model = Exportable()
    assert model.to_onnx(tmp_path / "m.onnx") is None and onnx.load(tmp_path / "m.onnx").graph.input
    buffer = io.BytesIO()
    model.to_onnx(buffer, torch.randn(1, 32))
    assert onnx.load_from_string(buffer.getvalue()).graph.output[0].type.tensor_type.elem_type == 1  # float


def test_to_onnx_without_a_file_needs_the_dynamo_exporter():
    model = Exportable()
    with pytest.raises(ValueError, match="file_path"):
        model.to_onnx(dynamo=False)
    if importlib.util.find_spec("onnxscript") is None:
        with pytest.raises(ModuleNotFoundError, match="pip install onnxscript"):
            model.to_onnx()
    else:
        program = model.to_onnx()
        assert program is not None and program.model_proto.graph.input


class Saved(BoringDataModule):
    def __init__(self, size: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.seen = torch.zeros(size)

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state_dict):
        self.seen = state_dict["seen"]


def test_datamodule_load_from_checkpoint_takes_map_location(tmp_path):
    datamodule = Saved(size=3)
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(BoringModel(), datamodule=datamodule)
    path = tmp_path / "dm.ckpt"
    trainer.save_checkpoint(path)
    loaded = Saved.load_from_checkpoint(path, map_location="cpu")
    assert loaded.hparams.size == 3 and loaded.seen.shape == (3,) and loaded.seen.device.type == "cpu"
    again = Saved.load_from_checkpoint(checkpoint_path=path, map_location=torch.device("cpu"), size=3)
    assert again.hparams.size == 3


def test_datamodule_init_takes_no_arguments_as_in_lightning():
    import inspect

    assert list(inspect.signature(L.LightningDataModule.__init__).parameters) == ["self"]
