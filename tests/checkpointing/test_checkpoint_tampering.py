"""Tampered checkpoints, in the spirit of a fuzzer: every format x every loader x every tamper.

Real checkpoints are written once (FSDP sharded directories from the Trainer, in the background
too, and from Lite; a DeepSpeed ZeRO-2 directory; single files, one written in the background),
then copied and tampered with (payloads in every pickle-bearing file, dotted-name payloads, path
traversal, symlinks out of the directory, truncated and missing shards, bad tags). Each loader
must refuse each tampered copy with a ``CheckpointError`` that names the checkpoint and the file,
run no code (the payload's marker folder stays absent), and still load the untampered control.
Loads on two processes run every case in one job started as torchrun would, each rank writing
one JSON line per case.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fulmen as L
from fulmen.cli.main import main as fulmen_main
from fulmen.lite import Lite
from fulmen.strategies import consolidate_checkpoint
from fulmen.utilities.exceptions import CheckpointError
from tests.checkpointing import tampering
from tests.checkpointing.tampering import DCP_TAMPERS, DEEPSPEED_TAMPERS, FILE_TAMPERS, TamperNet, loader
from tests.conftest import run_python

WORKER = str(Path(__file__).parent / "scripts" / "tamper_worker.py")
ENV = {"FULMEN_DIST_TIMEOUT": "60", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


# ------------------------------------------------------------------------------------ sources
@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("genuine")
    proc = run_python(WORKER, "make-fsdp", str(out), timeout=240, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    if HAS_DEEPSPEED:
        proc = run_python(WORKER, "make-deepspeed", str(out), timeout=300, env=ENV)
        assert proc.returncode == 0, proc.stderr[-4000:]
    single = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=out,
    )  # fmt: skip
    single.fit(TamperNet(), loader())
    single.save_checkpoint(out / "single.ckpt")
    single.save_checkpoint(out / "single_async.ckpt", async_save=True)
    single.strategy.wait_for_checkpoint_saves()
    return {
        "trainer_fsdp": out / "trainer_fsdp.ckpt",
        "trainer_fsdp_async": out / "trainer_fsdp_async.ckpt",
        "lite_fsdp": out / "lite_fsdp.ckpt",
        "deepspeed": out / "trainer_zero2.ckpt",
        "single": out / "single.ckpt",
        "single_async": out / "single_async.ckpt",
    }


TAMPERS = {
    "trainer_fsdp": DCP_TAMPERS,
    "trainer_fsdp_async": DCP_TAMPERS,
    "lite_fsdp": DCP_TAMPERS,
    "deepspeed": DEEPSPEED_TAMPERS,
    "single": FILE_TAMPERS,
    "single_async": FILE_TAMPERS,
}


def cases_for(sources, fmt, tmp_path) -> list[dict[str, str]]:
    if fmt == "deepspeed" and not HAS_DEEPSPEED:
        pytest.skip("deepspeed is not installed")
    return tampering.make_cases(sources[fmt], TAMPERS[fmt], tmp_path / fmt)


# ----------------------------------------------------------------------------------- verdicts
def check(case: dict[str, str], error: BaseException | None, message: str = "", weights_advice: bool = False) -> None:
    """The case's verdict: the control loads; a tampered copy is a CheckpointError naming checkpoint and file."""
    name = case["name"]
    assert not os.path.exists(case["marker"]), f"{name}: the payload ran"
    if name == "control":
        assert error is None, f"control: {message}"
        return
    assert error == "CheckpointError" or isinstance(error, CheckpointError), f"{name}: {error}: {message}"
    assert case["path"] in message, f"{name}: the checkpoint is not named: {message}"
    assert case["names"] in message, f"{name}: {case['names']!r} is not named: {message}"
    if not weights_advice:
        assert "weights_only=False" not in message, f"{name}: {message}"
    if "traversal" in name or "symlink" in name:
        assert "outside" in message, message


def attempt(load, case) -> tuple[BaseException | None, str]:
    try:
        load(case["path"])
    except Exception as err:  # noqa: BLE001 - judged by check()
        return err, str(err)
    return None, ""


# -------------------------------------------------------------------------- one-process loaders
def validate(path: str) -> None:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.validate(TamperNet(), loader(), ckpt_path=path)


def lite_load(path: str) -> None:
    lite = Lite(accelerator="cpu", devices=1)
    loaded = lite.load(path)
    assert isinstance(loaded, dict) and loaded


def consolidate(path: str) -> None:
    out = Path(path).parent / "consolidated.ckpt"
    consolidate_checkpoint(path, out)
    merged = torch.load(out, weights_only=True)
    assert any(name.endswith("head.weight") for name in merged.get("state_dict", merged.get("model", {})))


def consolidate_command(path: str) -> None:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = fulmen_main(["checkpoint", "consolidate", path, str(Path(path).parent / "cmd.ckpt")])
    if code != 0:
        raise CheckpointError(stderr.getvalue()) if "error:" in stderr.getvalue() else RuntimeError(code)


def load_from_checkpoint(path: str) -> None:
    TamperNet.load_from_checkpoint(path)


ONE_PROCESS = {"validate": validate, "lite_load": lite_load, "load_from_checkpoint": load_from_checkpoint}
DIRECTORY_ONLY = {"consolidate": consolidate, "consolidate_command": consolidate_command}


@pytest.mark.parametrize("fmt", ["trainer_fsdp", "trainer_fsdp_async", "lite_fsdp", "deepspeed"])
def test_sharded_directories_refused_by_every_one_process_loader(sources, fmt, tmp_path):
    cases = cases_for(sources, fmt, tmp_path)
    loaders = {**ONE_PROCESS, **DIRECTORY_ONLY}
    if fmt == "lite_fsdp":  # not a Trainer's checkpoint: only Lite and consolidation read it
        loaders = {"lite_load": lite_load, **DIRECTORY_ONLY}
    for loader_name, load in loaders.items():
        for case in cases:
            error, message = attempt(load, case)
            if loader_name == "load_from_checkpoint":
                # One file only: a directory is refused before anything in it is read, with what to do.
                assert isinstance(error, CheckpointError) and "fulmen checkpoint consolidate" in message, message
                assert case["path"] in message and not os.path.exists(case["marker"])
                continue
            # fulmen's own state file is the one that a loader's `weights_only=False` opens fully.
            advice = loader_name not in DIRECTORY_ONLY and case["names"] == "fulmen_checkpoint.pt"
            try:
                check(case, error, message, weights_advice=advice)
            except AssertionError as failure:
                raise AssertionError(f"{fmt} / {loader_name} / {case['name']}: {failure}") from error


@pytest.mark.parametrize("fmt", ["single", "single_async"])
def test_single_files_refused_by_every_one_process_loader(sources, fmt, tmp_path):
    for loader_name, load in ONE_PROCESS.items():
        for case in cases_for(sources, fmt, tmp_path / loader_name):
            error, message = attempt(load, case)
            # A single file is the case the opt-in exists for: its refusal may say how to trust it.
            check(case, error, message, weights_advice=True)
            if "payload" in case["name"]:
                assert "Refused" in message and "mkdir" in message, message


def test_the_consolidation_command_exits_non_zero_naming_the_refused_file(sources, tmp_path):
    case = next(c for c in cases_for(sources, "trainer_fsdp", tmp_path) if c["name"] == "index_payload")
    proc = run_python("-m", "fulmen", "checkpoint", "consolidate", case["path"], str(tmp_path / "out.ckpt"))
    assert proc.returncode == 1, proc.stderr
    assert case["path"] in proc.stderr and "'.metadata'" in proc.stderr and "os.mkdir" in proc.stderr
    assert not os.path.exists(case["marker"]) and not (tmp_path / "out.ckpt").exists()


# ------------------------------------------------------------------------- two-process loaders
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(loader_name: str, cases: list[dict[str, str]], out: Path) -> list[list[dict]]:
    """Both ranks run every case (started with torchrun's variables); returns each rank's records."""
    cases_file = out / f"{loader_name}.json"
    cases_file.write_text(json.dumps(cases))
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ, **ENV, "TORCHELASTIC_RUN_ID": "tamper", "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0", "MASTER_PORT": port,
        }  # fmt: skip
        log = open(out / f"{loader_name}_rank{rank}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append((subprocess.Popen([sys.executable, WORKER, "load", loader_name, str(cases_file), str(out)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env), log))  # fmt: skip
    try:
        for proc, _ in procs:
            proc.wait(timeout=400)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    records = []
    for rank in (0, 1):
        path = out / f"{loader_name}_rank{rank}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        records.append([json.loads(line) for line in lines])
        assert len(lines) == len(cases), (out / f"{loader_name}_rank{rank}.log").read_text()[-4000:]
    return records


@pytest.mark.parametrize(
    ("fmt", "loader_name"),
    [
        ("trainer_fsdp", "fit_fsdp"),
        ("trainer_fsdp_async", "fit_fsdp"),
        ("lite_fsdp", "lite_fsdp"),
        ("deepspeed", "fit_deepspeed"),
    ],
)
def test_two_processes_refuse_every_tamper_on_every_rank(sources, fmt, loader_name, tmp_path):
    cases = cases_for(sources, fmt, tmp_path)
    for rank, records in enumerate(run_two_ranks(loader_name, cases, tmp_path)):
        for case, record in zip(cases, records):
            assert record["case"] == case["name"]
            try:
                check(case, record["error"], record["message"], case["names"] == "fulmen_checkpoint.pt")
            except AssertionError as failure:
                raise AssertionError(f"{fmt} / {loader_name} / rank {rank} / {case['name']}: {failure}") from None
