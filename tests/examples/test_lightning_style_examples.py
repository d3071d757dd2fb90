"""Scripts written the way Lightning's examples are (only the imports name fulmen) run start to end."""

from __future__ import annotations

import csv
import json

from tests.conftest import ROOT, run_python

SCRIPTS = ROOT / "tests" / "examples" / "scripts"


def test_custom_trainer_on_fabric(tmp_path):
    proc = run_python(str(SCRIPTS / "fabric_custom_trainer.py"), str(tmp_path), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == 16 and result["last"] < result["first"]
    assert result["calls"] == {"on_train_epoch_start": 2, "on_train_batch_end": 16}
    with open(tmp_path / "mini" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(bool(row.get("train_loss")) for row in rows) == 16
    assert sum(bool(row.get("val_loss")) for row in rows) == 2  # validation_step overridden: it ran each epoch


def test_lightning_cli_script_with_logo_and_demo_classes(tmp_path):
    args = [
        "fit",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--model.out_dim=4",
    ]
    proc = run_python(str(SCRIPTS / "cli_boring.py"), *args, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "f u l m e n" in proc.stdout
    checkpoints = list(tmp_path.rglob("*.ckpt"))
    assert [c.name for c in checkpoints] == ["epoch=0-step=3.ckpt"]
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "out_dim: 4" in config and "seed_everything: 1234" in config


def test_transformer_language_model_on_local_text(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "wikitext-2.txt").write_text("a b c d e f g h\n" * 60)
    proc = run_python(str(SCRIPTS / "language_model.py"), str(data), str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val_loss"] < 1.0  # the sequence repeats: after 3 epochs the next word is predictable


def test_missing_text_fails_with_the_path(tmp_path):
    proc = run_python(str(SCRIPTS / "language_model.py"), str(tmp_path / "none"), str(tmp_path), timeout=120)
    assert proc.returncode != 0
    assert "FileNotFoundError" in proc.stderr and str(tmp_path / "none" / "wikitext-2.txt") in proc.stderr
