"""fulmen.integrations.ray on a real local Ray (loopback, 2 CPUs): seed 003, reports, restarts, Lite, Tune.

One Ray instance serves every test of this module. Workers write what they saw into files
(one per rank); the tests read those and Ray's own results after ``fit`` returns. Run them
under the shared lock: ``flock /tmp/fulmen-mp.lock .venv/bin/python -m pytest tests/integrations``.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

# Read when ray is imported: node addresses (hence MASTER_ADDR) are loopback, on this process and its workers.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
pytest.importorskip("ray.train", reason="Ray Train is not installed: `pip install fulmen[ray]`")
pytestmark = [pytest.mark.slow]

import ray  # noqa: E402
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

from tests.integrations import ray_jobs  # noqa: E402
from tests.integrations.vision_standin import write_idx  # noqa: E402

HERE = Path(__file__).parent
SEED = ROOT.parent / "shared" / "seeds" / "003_8529e8407d9ca8de.txt"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray on loopback with 2 CPUs; its workers start in a fresh folder, on this checkout."""
    cwd = tmp_path_factory.mktemp("ray_workers")
    _write_fashion_mnist(cwd / "data")
    env = {
        # Ray Train's controller polls its workers every 2 s by default; each report waits for a poll.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
        # Workers stay in the folder Ray started in (where seed 003 finds ./data), not a run folder.
        "RAY_CHDIR_TO_TRIAL_DIR": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    previous = os.getcwd()
    os.chdir(cwd)  # the raylet, and every worker it starts, inherit it
    try:
        ray.init(num_cpus=2, include_dashboard=False)
    finally:
        os.chdir(previous)
    yield cwd
    ray.shutdown()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _write_fashion_mnist(root: Path, count: int = 256) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (count,), generator=generator)
    # Each class a brighter band at its own rows, plus noise: learnable in a few steps.
    images = torch.randint(0, 60, (count, 28, 28), generator=generator)
    for i, label in enumerate(labels.tolist()):
        images[i, 2 * label + 4 : 2 * label + 8] += 180
    raw = root / "FashionMNIST" / "raw"
    write_idx(raw / "train-images-idx3-ubyte", images)
    write_idx(raw / "train-labels-idx1-ubyte", labels)


def _checkpoint_dirs(run: Path) -> list[Path]:
    return [path for path in run.glob("checkpoint_*") if path.is_dir()]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _classifier_run(out: Path, **config) -> ray.train.Result:
    out.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        ray_jobs.train_classifier,
        train_loop_config={"out": str(out), **config},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(
            name="run",
            storage_path=str(out / "storage"),
            failure_config=FailureConfig(max_failures=1),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
        ),
    )
    return trainer.fit()


# ------------------------------------------------------------------------------------ seed 003
@pytest.mark.timeout(120)
def test_seed_003_runs_with_only_its_imports_changed(ray_cluster, tmp_path, monkeypatch):
    import ray.train.constants

    # The seed keeps Ray's default storage (~/ray_results); here that is a temporary folder.
    monkeypatch.setattr(ray.train.constants, "DEFAULT_STORAGE_PATH", str(tmp_path / "ray_results"))
    # As `python ray_seed.py` runs it: Ray pickles the script's classes and functions by value.
    seed = runpy.run_path(str(HERE / "ray_seed.py"), run_name="__main__")
    result = seed["result"]

    assert result.error is None
    assert result.metrics["epoch"] == 9 and result.metrics["step"] == 10  # 10 epochs of 1 batch per worker
    assert 0 < result.metrics["loss"] < 2.31  # below chance (ln 10) after training
    assert Path(result.path).parent == tmp_path / "ray_results"
    assert Path(result.checkpoint.path).parent == Path(result.path)
    # The Ray checkpoint holds a full fulmen checkpoint that the seed's model class loads.
    with result.checkpoint.as_directory() as directory:
        path = Path(directory) / "checkpoint.ckpt"
        model = seed["ImageClassifier"].load_from_checkpoint(path)
        saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 9 and saved["global_step"] == 10
    assert torch.equal(model.model.fc.weight, saved["state_dict"]["model.fc.weight"])
    # Every epoch reported one checkpoint; none is dropped without a CheckpointConfig.
    assert len(_checkpoint_dirs(Path(result.path))) == 10


def test_seed_file_differs_from_the_guide_only_in_import_lines():
    if not SEED.exists():
        pytest.skip(f"the seed's text is not beside this checkout ({SEED})")
    guide = SEED.read_text().split("PyTorch Lightning + Ray Train", 1)[1]
    guide = guide.split(".. code-block:: python", 1)[1].split("Set up a training function", 1)[0]
    ours = (HERE / "ray_seed.py").read_text()

    def code(text: str) -> list[str]:
        lines = [line.strip() for line in text.splitlines()]
        kept = [line for line in lines if line and not line.startswith((":emphasize", "#", "import ", "from "))]
        return [line.replace("use_gpu=True", "use_gpu=False") for line in kept]

    assert code(ours) == code(guide)


# ----------------------------------------------------------------- reports, kill and resume
@pytest.mark.timeout(150)
def test_reports_checkpoints_and_exact_resume_after_a_killed_worker(ray_cluster, tmp_path):
    full = _classifier_run(tmp_path / "full")
    assert full.error is None
    epochs = _jsonl(tmp_path / "full" / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]

    # The reported metrics are rank 0's callback_metrics of that epoch, plus epoch and step.
    last = epochs[-1]
    assert full.metrics == {**last["metrics"], "epoch": 3, "step": 16}
    # num_to_keep=2 by val_loss (min): the two best epochs stay, on disk and in the result.
    best_two = sorted(epochs, key=lambda e: e["metrics"]["val_loss"])[:2]
    kept = sorted(m["epoch"] for _, m in full.best_checkpoints)
    assert kept == sorted(e["epoch"] for e in best_two)
    for checkpoint, metrics in full.best_checkpoints:
        assert metrics == {**epochs[metrics["epoch"]]["metrics"], "epoch": metrics["epoch"], "step": metrics["step"]}
        assert (Path(checkpoint.path) / "checkpoint.ckpt").is_file()
    assert len(_checkpoint_dirs(tmp_path / "full" / "storage" / "run")) == 2
    with full.checkpoint.as_directory() as directory:
        model = ray_jobs.Classifier.load_from_checkpoint(Path(directory) / "checkpoint.ckpt")
    reference = torch.load(tmp_path / "full" / "final.pt", weights_only=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.items())
    for rank in (0, 1):  # prepare_trainer left the Trainer's own fit in place
        assert (tmp_path / "full" / f"fit_unchanged_rank{rank}").read_text() == "True"

    # Rank 1 is SIGKILLed at step 6 (in epoch 1); Ray restarts both workers, which resume from
    # the checkpoint of epoch 0 and end bit-equal to the uninterrupted run.
    killed = _classifier_run(tmp_path / "killed", kill_at=6)
    assert killed.error is None
    killed_pid = int((tmp_path / "killed" / "killed").read_text())
    for rank in (0, 1):  # the second start is a new process, 4 steps (epoch 0) in
        starts = _jsonl(tmp_path / "killed" / f"starts_rank{rank}.jsonl")
        assert [s["step"] for s in starts] == [0, 4], starts
        assert starts[0]["pid"] != starts[1]["pid"]
    assert [e["epoch"] for e in _jsonl(tmp_path / "killed" / "epochs.jsonl")] == [0, 1, 2, 3]
    assert killed_pid in [s["pid"] for s in _jsonl(tmp_path / "killed" / "starts_rank1.jsonl")]
    resumed = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    for name, value in reference.items():
        assert torch.equal(value, resumed[name]), f"{name} differs after the restart"
    assert killed.metrics == full.metrics


# ----------------------------------------------------------------------- Lite, plain Trainers
@pytest.mark.timeout(90)
def test_lite_and_plain_trainers_inside_a_ray_worker(ray_cluster, tmp_path):
    result = TorchTrainer(
        ray_jobs.lite_and_plain_trainers,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="lite", storage_path=str(tmp_path / "storage")),
    ).fit()
    assert result.error is None
    records = [json.loads((tmp_path / f"lite_rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, record in enumerate(records):
        assert record["world_size"] == 2 and record["global_rank"] == rank and record["local_rank"] == rank
        assert record["device"] == "cpu" and record["master_addr"] == "127.0.0.1"
        assert record["batches"] == 4 and record["seen"] == 16  # half of 32 samples each
        assert record["all_reduce_sum"] == 3.0 and record["all_reduce_mean"] == 1.5
        assert record["ranks_agree"] and record["loaded_seen"] == 16 and record["loaded_equal"]
        # devices=1 disagrees with Ray's group of 2: the error says what to pass instead.
        assert record["mismatch"].startswith(
            "MisconfigurationException: This process was started as one of WORLD_SIZE=2"
        )
        assert "`devices=1` × `num_nodes=1` makes 1" in record["mismatch"]
        assert "strategy=RayDDPStrategy() and plugins=[RayLightningEnvironment()]" in record["mismatch"]
        # devices=2 agrees: the plain DDP Trainer joins Ray's group (each rank half the batches).
        assert record["joined_rank"] == rank and record["joined_batches"] == 4 and record["joined_ranks_agree"]


@pytest.mark.timeout(120)
def test_fsdp_and_deepspeed_under_ray(ray_cluster, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed: `pip install fulmen[deepspeed]`")
    result = TorchTrainer(
        ray_jobs.sharded_strategies,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name="sharded", storage_path=str(tmp_path / "storage")),
    ).fit()
    assert result.error is None
    records = [json.loads((tmp_path / f"sharded_rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in records:
        assert record["fsdp"]["strategy"].startswith("RayFSDPStrategy(sharding_strategy='FULL_SHARD'")
        assert record["deepspeed"]["strategy"].startswith("RayDeepSpeedStrategy(stage=2")
        for name in ("fsdp", "deepspeed"):
            assert record[name]["world_size"] == 2 and record[name]["batches"] == 4
    # sync_dist: every rank holds the same logged values.
    assert records[0]["fsdp"]["metrics"] == records[1]["fsdp"]["metrics"]
    assert set(records[0]["deepspeed"]["metrics"]) == {"train_loss", "val_loss", "val_acc"}
    assert records[0]["deepspeed"]["metrics"] == records[1]["deepspeed"]["metrics"]
    # Two epochs each reported a checkpoint; the last is DeepSpeed's, a directory of shards.
    assert len(result.best_checkpoints) == 4
    assert result.metrics == {**records[0]["deepspeed"]["metrics"], "epoch": 1, "step": 8}
    from fulmen.strategies import consolidate_checkpoint

    with result.checkpoint.as_directory() as directory:
        assert (Path(directory) / "checkpoint.ckpt").is_dir()
        consolidate_checkpoint(Path(directory) / "checkpoint.ckpt", tmp_path / "whole.ckpt")
    model = ray_jobs.Classifier.load_from_checkpoint(tmp_path / "whole.ckpt")
    assert model.net[0].weight.shape == (16, 8)


# ------------------------------------------------------------------------------------- example
@pytest.mark.timeout(120)
def test_example_restarts_after_its_worker_is_killed(ray_cluster, tmp_path, monkeypatch, capsys):
    argv = ["ray_train.py", "--kill-once", "--epochs", "3", "--storage", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "examples" / "ray_train.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "error:      None" in out
    assert "metrics:    {'loss': " in out and "'epoch': 2, 'step': 6}" in out
    assert "fit began at global step [0, 2]" in out  # the restart resumed after epoch 0
    assert (tmp_path / "killed").exists() and "loaded:     ImageClassifier" in out


# ---------------------------------------------------------------------------------------- Tune
@pytest.mark.timeout(180)
def test_tune_two_learning_rates_and_an_early_stop(ray_cluster, tmp_path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # lr=0 never learns: ASHA stops it at its first rung (epoch 2) against lr=0.1's record there;
    # lr=0.1 ends on its own after 4 epochs (max_t is beyond). A trial takes both CPUs: one for
    # Tune's trial (Ray Train's driver), one for the worker. This test runs last: see the end.
    tuner = tune.Tuner(
        ray_jobs.tune_trial,
        param_space={
            "lr": tune.grid_search([0.1, 0.0]),
            # lr=0 would train long, so that the stop lands while it runs.
            "max_epochs": tune.sample_from(lambda spec: 4 if spec.config.lr > 0 else 40),
            "out": str(tmp_path),
            "storage": str(tmp_path / "train"),
        },
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=10, grace_period=2, reduction_factor=2),
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(name="sweep", storage_path=str(tmp_path / "tune")),
    )
    try:
        results = tuner.fit()
    finally:
        _remove_placement_groups()
    assert results.num_errors == 0
    best = results.get_best_result()
    assert best.config["lr"] == 0.1 and best.metrics["epoch"] == 3

    # Tune holds each epoch's metrics as fulmen logged them; the stopped trial's first two.
    by_lr = {r.config["lr"]: r for r in results}
    for lr, epochs in ((0.1, 4), (0.0, 2)):
        reported = by_lr[lr].metrics_dataframe
        recorded = _jsonl(tmp_path / f"lr_{lr}" / "epochs.jsonl")
        assert list(reported["epoch"]) == list(range(epochs)), lr
        assert [e["epoch"] for e in recorded][:epochs] == list(range(epochs))
        assert list(reported["val_loss"]) == [e["metrics"]["val_loss"] for e in recorded[:epochs]]
    # The stopped trial ended mid-run: no error, far from its 40 epochs, its worker gone.
    assert by_lr[0.0].error is None and by_lr[0.1].error is None
    assert len(_jsonl(tmp_path / "lr_0.0" / "epochs.jsonl")) < 20
    assert not (tmp_path / "lr_0.0" / "final.pt").exists()
    assert (tmp_path / "lr_0.1" / "final.pt").exists()
    stopped = [s["pid"] for s in _jsonl(tmp_path / "lr_0.0" / "starts_rank0.jsonl")]
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in stopped)


def _remove_placement_groups() -> None:
    """Free what a stopped trial's Ray Train run still reserves (nothing else runs by now).

    Tune stops a trial by ending its driver, which takes Ray Train's controller and workers with
    it, but not the placement group the controller reserved: Ray's PlacementGroupCleaner frees
    it through the state API, which needs the dashboard that these tests leave out.
    """
    from ray.util.placement_group import PlacementGroup, placement_group_table

    for hex_id, info in placement_group_table().items():
        if info["state"] in ("CREATED", "PENDING", "RESCHEDULING"):
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(hex_id))))


def _alive(pid: int) -> bool:
    from tests.processes import alive

    return alive(pid)


# ----------------------------------------------------------------------------- without Ray
@pytest.mark.timeout(60)
def test_import_fulmen_never_imports_ray_and_a_missing_ray_says_how_to_install():
    code = (
        "import sys; import fulmen, fulmen.strategies, fulmen.callbacks; assert 'ray' not in sys.modules\n"
        "sys.modules['ray'] = None\n"
        "try:\n    import fulmen.integrations.ray\nexcept ModuleNotFoundError as err:\n    print(err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=55)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pip install fulmen[ray]" in proc.stdout


def test_refusals_outside_a_worker_and_for_what_ray_decides():
    import fulmen as L
    from fulmen.integrations.ray import RayDDPStrategy, RayFSDPStrategy, prepare_trainer
    from fulmen.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match=r"RayDDPStrategy\(start_method='spawn'\)"):
        RayDDPStrategy(start_method="spawn")
    with pytest.raises(MisconfigurationException, match=r"TorchConfig\(timeout_s=...\)"):
        RayFSDPStrategy(timeout=30)
    with pytest.raises(RuntimeError, match="only inside the training function"):
        prepare_trainer(L.Trainer(logger=False))
