"""DeepSpeedStrategy's names, arguments and config, on one process and without importing deepspeed."""

from __future__ import annotations

import json

import pytest

from fulmen.strategies import DeepSpeedStrategy, select_strategy
from fulmen.strategies.deepspeed import DeepSpeedPrecision
from fulmen.strategies.precision import Precision
from fulmen.utilities.exceptions import MisconfigurationException
from tests.conftest import run_python


@pytest.mark.parametrize(
    ("name", "stage", "offload_optimizer", "offload_parameters"),
    [
        ("deepspeed", 2, False, False),
        ("deepspeed_stage_1", 1, False, False),
        ("deepspeed_stage_2", 2, False, False),
        ("deepspeed_stage_2_offload", 2, True, False),
        ("deepspeed_stage_3", 3, False, False),
        ("deepspeed_stage_3_offload", 3, True, True),
    ],
)
def test_names(name, stage, offload_optimizer, offload_parameters):
    strategy = select_strategy(accelerator="cpu", devices=2, strategy=name)
    assert isinstance(strategy, DeepSpeedStrategy)
    assert strategy.zero_stage == stage
    zero = strategy.config["zero_optimization"]
    assert ("offload_optimizer" in zero) is offload_optimizer
    assert ("offload_param" in zero) is offload_parameters
    assert strategy.world_size == 2 and strategy.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 0}


def test_import_fulmen_and_resolving_do_not_import_deepspeed():
    code = (
        "import sys, fulmen\n"
        "from fulmen.strategies import select_strategy\n"
        "select_strategy(accelerator='cpu', devices=2, strategy='deepspeed_stage_3')\n"
        "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'\n"
    )
    proc = run_python("-c", code, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_trainer_flags_go_into_the_config():
    strategy = select_strategy(accelerator="cpu", devices=2, strategy="deepspeed", precision="bf16-mixed")
    strategy.configure_training(accumulate_grad_batches=4, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    config = strategy._full_config()
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": True}
    assert config["train_micro_batch_size_per_gpu"] == 1


def test_without_a_clipping_value_deepspeed_does_not_clip():
    # DeepSpeed's own default clips at 1.0; fulmen clips only when asked, as with every strategy.
    strategy = select_strategy(accelerator="cpu", devices=2, strategy="deepspeed")
    assert strategy._full_config()["gradient_clipping"] == 0.0
    strategy = DeepSpeedStrategy(config={"zero_optimization": {"stage": 2}, "gradient_clipping": 2.0})
    assert strategy._full_config()["gradient_clipping"] == 2.0


def test_a_trainer_flag_that_disagrees_with_the_config_names_both():
    # The Trainer calls configure_training before DeepSpeed is imported: the clash fails there.
    strategy = DeepSpeedStrategy(config={"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 4})
    with pytest.raises(MisconfigurationException, match=r"accumulate_grad_batches=2.*gradient_accumulation_steps=4"):
        strategy.configure_training(accumulate_grad_batches=2)
    strategy = DeepSpeedStrategy(config={"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0})
    with pytest.raises(MisconfigurationException, match=r"gradient_clip_val=0.5.*gradient_clipping=1.0"):
        strategy.configure_training(gradient_clip_val=0.5)
    with pytest.raises(MisconfigurationException, match="gradient_clip_algorithm='value'"):
        DeepSpeedStrategy().configure_training(gradient_clip_val=0.5, gradient_clip_algorithm="value")


def test_agreeing_values_are_fine():
    strategy = DeepSpeedStrategy(config={"gradient_accumulation_steps": 2, "gradient_clipping": 0.5})
    strategy.configure_training(accumulate_grad_batches=2, gradient_clip_val=0.5)
    config = strategy._full_config()
    assert (config["gradient_accumulation_steps"], config["gradient_clipping"]) == (2, 0.5)


def test_precision():
    strategy = select_strategy(accelerator="cpu", devices=2, strategy="deepspeed", precision="bf16-true")
    assert isinstance(strategy.precision, DeepSpeedPrecision) and strategy.precision.precision == "bf16-true"
    strategy = select_strategy(accelerator="cpu", devices=2, strategy="deepspeed")
    assert type(strategy.precision) is Precision
    with pytest.raises(MisconfigurationException, match=r"'16-mixed'.*needs CUDA.*accelerator='cpu'"):
        select_strategy(accelerator="cpu", devices=2, strategy="deepspeed", precision="16-mixed")
    with pytest.raises(MisconfigurationException, match=r"`precision='64-true'` is not supported with DeepSpeed"):
        select_strategy(accelerator="cpu", devices=2, strategy="deepspeed", precision="64-true")


def test_precision_follows_the_config_and_a_clash_names_both():
    bf16 = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}
    strategy = select_strategy(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(config=bf16))
    assert strategy.precision.precision == "bf16-mixed"
    fp16 = {"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}}
    with pytest.raises(MisconfigurationException, match=r"precision='bf16-mixed'.*`fp16` section"):
        select_strategy(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(config=fp16), precision="bf16-mixed")


def test_config_from_a_json_file(tmp_path, monkeypatch):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8}))
    strategy = DeepSpeedStrategy(config=str(path))
    assert strategy.zero_stage == 3 and strategy._full_config()["train_micro_batch_size_per_gpu"] == 8
    monkeypatch.setenv("FULMEN_DEEPSPEED_CONFIG_PATH", str(path))
    assert DeepSpeedStrategy().zero_stage == 3
    with pytest.raises(MisconfigurationException, match="no such file"):
        DeepSpeedStrategy(config=str(tmp_path / "missing.json"))
    path.write_text("{not json")
    with pytest.raises(MisconfigurationException, match="not valid JSON"):
        DeepSpeedStrategy(config=str(path))


def test_bad_arguments_are_named():
    with pytest.raises(MisconfigurationException, match=r"`stage=4` is not valid. Accepted: 0, 1, 2, 3"):
        DeepSpeedStrategy(stage=4)
    with pytest.raises(MisconfigurationException, match="offload_optimizer_device='disk'"):
        DeepSpeedStrategy(offload_optimizer=True, offload_optimizer_device="disk")
    with pytest.raises(MisconfigurationException, match="`offload_parameters=True` needs ZeRO stage 3"):
        DeepSpeedStrategy(stage=2, offload_parameters=True)
    with pytest.raises(MisconfigurationException, match=r"`stage=3` and the DeepSpeed config"):
        DeepSpeedStrategy(stage=3, config={"zero_optimization": {"stage": 2}})
    with pytest.raises(MisconfigurationException, match="logging_batch_size_per_gpu"):
        DeepSpeedStrategy(logging_batch_size_per_gpu=0)


def test_clipping_in_the_loop_must_match_the_engine():
    strategy = DeepSpeedStrategy()
    strategy.configure_training(gradient_clip_val=1.0)
    assert strategy.clip_gradients_norm(None, None, max_norm=1.0) is None  # the engine clips in its step
    with pytest.raises(MisconfigurationException, match=r"`max_norm=0.5`.*gradient_clipping"):
        strategy.clip_gradients_norm(None, None, max_norm=0.5)
    with pytest.raises(MisconfigurationException, match="by their total norm only"):
        strategy.clip_gradients_value(None, None, clip_val=0.5)


def test_a_missing_deepspeed_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # as if it were not installed
    strategy = select_strategy(accelerator="cpu", devices=1, strategy="deepspeed")
    with pytest.raises(ModuleNotFoundError, match=r"pip install fulmen\[deepspeed\]"):
        strategy._deepspeed()
