"""The Ray resume path refuses tampered checkpoints: Ray's latest checkpoint goes through fulmen's safe loading.

``ray_checkpoint_file()`` yields ``checkpoint.ckpt`` inside ``ray.train.get_checkpoint()`` to resume ``fit`` from;
here Ray's own ``Checkpoint`` of a tampered directory stands as the latest one (no Ray cluster:
what is tested is fulmen's reading of it), and the file found there is resumed by a Trainer.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("ray.train", reason="Ray Train is not installed: `pip install fulmen[ray]`")

import ray.train  # noqa: E402

import fulmen as L  # noqa: E402
from fulmen.integrations.ray.prepare import ray_checkpoint_file  # noqa: E402
from fulmen.utilities.exceptions import CheckpointError  # noqa: E402
from tests.checkpointing.tampering import FILE_TAMPERS, TamperNet, loader  # noqa: E402


def _trainer(root) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
    )  # fmt: skip


@pytest.fixture
def ray_checkpoint(tmp_path, monkeypatch):
    """A Ray checkpoint directory holding a real checkpoint.ckpt; Ray reports it as the latest."""
    directory = tmp_path / "ray_checkpoint"
    directory.mkdir()
    trainer = _trainer(tmp_path)
    trainer.fit(TamperNet(), loader())
    trainer.save_checkpoint(directory / "checkpoint.ckpt")
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint.from_directory(str(directory)))
    return directory


@pytest.mark.parametrize("tamper", sorted(FILE_TAMPERS))
def test_ray_resume_refuses_a_tampered_checkpoint_and_runs_nothing(ray_checkpoint, tmp_path, tamper):
    marker = str(tmp_path / "marker")
    FILE_TAMPERS[tamper](ray_checkpoint / "checkpoint.ckpt", marker)
    with ray_checkpoint_file() as path:
        assert path == os.path.join(str(ray_checkpoint), "checkpoint.ckpt")
        if tamper == "control":
            _trainer(tmp_path).fit(TamperNet(), loader(), ckpt_path=path)
        else:
            with pytest.raises(CheckpointError) as info:
                _trainer(tmp_path).fit(TamperNet(), loader(), ckpt_path=path)
            assert path in str(info.value)
    assert not os.path.exists(marker)


def test_ray_resume_refuses_a_checkpoint_file_linked_from_outside(ray_checkpoint, tmp_path):
    outside = tmp_path / "elsewhere.ckpt"
    shutil.move(ray_checkpoint / "checkpoint.ckpt", outside)
    os.symlink(outside, ray_checkpoint / "checkpoint.ckpt")
    with pytest.raises(CheckpointError, match="'checkpoint.ckpt'.*leads outside the checkpoint directory"):
        with ray_checkpoint_file():
            pass
