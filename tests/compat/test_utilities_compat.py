"""``fulmen.utilities`` as Lightning users import it: the names, and the behaviour Lightning documents.

rank_zero_*, grad_norm (logged from a LightningModule), CombinedLoader (its four modes, alone and
in ``Trainer.fit``), measure_flops, PossibleUserWarning, GradClipAlgorithmType (as a Trainer flag)
and load_hparams_from_yaml (on the file a logger wrote).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from collections import namedtuple

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from fulmen import Trainer
from fulmen.loggers import CSVLogger
from fulmen.utilities import (
    CombinedLoader,
    GradClipAlgorithmType,
    PossibleUserWarning,
    grad_norm,
    load_hparams_from_yaml,
    measure_flops,
    rank_zero_info,
    rank_zero_only,
    rank_zero_warn,
)
from fulmen.utilities.exceptions import MisconfigurationException
from tests.trainer.helpers import BoringModel, loader, quiet


def test_the_package_exports_lightning_s_utility_names_and_stays_lazy():
    import fulmen.utilities as utilities

    for name in utilities.__all__:
        assert getattr(utilities, name) is not None
    # Importing fulmen must not pull in every helper: they load when first used.
    helpers = ("combined_loader", "grads", "flops", "hparams_yaml", "enums")
    code = (
        "import sys, fulmen, fulmen.utilities.rank_zero\n"
        f"print(sorted(m for m in sys.modules if m.rsplit('.', 1)[-1] in {helpers!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        utilities.nothing_here  # noqa: B018


# ------------------------------------------------------------------------------------ rank zero
def test_rank_zero_helpers_act_on_rank_zero_only(caplog):
    calls = []

    @rank_zero_only
    def record(value):
        calls.append(value)
        return value

    assert record(1) == 1
    rank_zero_only.rank = 1  # the conftest fixture puts rank 0 back
    assert record(2) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rank_zero_warn("silent on rank 1")
    rank_zero_only.rank = 0
    assert calls == [1]
    with pytest.warns(PossibleUserWarning, match="probably wrong"):
        rank_zero_warn("probably wrong", category=PossibleUserWarning)
    with caplog.at_level(logging.INFO, logger="fulmen"):
        rank_zero_info("hello from rank zero")
    assert "hello from rank zero" in caplog.text
    assert issubclass(PossibleUserWarning, UserWarning)


# ------------------------------------------------------------------------------------ grad_norm
def test_grad_norm_keys_and_values_as_lightning_names_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    model[1].bias.requires_grad_(False)
    model(torch.randn(5, 3)).sum().backward()
    norms = grad_norm(model, norm_type=2)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert sorted(norms) == sorted([f"grad_2.0_norm/{name}" for name in grads] + ["grad_2.0_norm_total"])
    for name, grad in grads.items():
        assert norms[f"grad_2.0_norm/{name}"].item() == pytest.approx(grad.norm(2).item())
    total = torch.cat([g.flatten() for g in grads.values()]).norm(2)
    assert norms["grad_2.0_norm_total"].item() == pytest.approx(total.item(), rel=1e-6)

    largest = grad_norm(model, "inf", group_separator="_")
    assert largest["grad_inf_norm_total"].item() == pytest.approx(max(g.abs().max().item() for g in grads.values()))
    assert "grad_inf_norm_0.weight" in largest
    assert grad_norm(nn.Linear(2, 2), 2) == {}  # no gradients yet
    for bad in (0, -1, "two"):
        with pytest.raises(ValueError, match=f"`norm_type={bad!r}` is not valid"):
            grad_norm(model, bad)


def test_grad_norm_logged_from_on_before_optimizer_step_reaches_callback_metrics():
    class Tracked(BoringModel):
        def on_before_optimizer_step(self, optimizer):
            self.log_dict(grad_norm(self.layer, norm_type=2))

    trainer = Trainer(**quiet(max_epochs=1, limit_train_batches=2))
    trainer.fit(Tracked(), loader(16))
    keys = {k for k in trainer.callback_metrics if k.startswith("grad_2.0_norm")}
    assert keys == {"grad_2.0_norm/weight", "grad_2.0_norm/bias", "grad_2.0_norm_total"}
    assert trainer.callback_metrics["grad_2.0_norm_total"] > 0


# ------------------------------------------------------------------------------- CombinedLoader
def _loaders():
    # Lightning's documented example: 2 batches in "a", 3 in "b".
    return {"a": DataLoader(range(6), batch_size=4), "b": DataLoader(range(15), batch_size=5)}


def _lists(batch):
    if batch is None or isinstance(batch, torch.Tensor):
        return None if batch is None else batch.tolist()
    return {k: _lists(v) for k, v in batch.items()}


def test_combined_loader_modes_give_lightning_s_documented_batches():
    expected = {
        "min_size": [{"a": [0, 1, 2, 3], "b": [0, 1, 2, 3, 4]}, {"a": [4, 5], "b": [5, 6, 7, 8, 9]}],
        "max_size_cycle": [
            {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3, 4]},
            {"a": [4, 5], "b": [5, 6, 7, 8, 9]},
            {"a": [0, 1, 2, 3], "b": [10, 11, 12, 13, 14]},
        ],
        "max_size": [
            {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3, 4]},
            {"a": [4, 5], "b": [5, 6, 7, 8, 9]},
            {"a": None, "b": [10, 11, 12, 13, 14]},
        ],
    }
    for mode, batches in expected.items():
        combined = CombinedLoader(_loaders(), mode)
        assert len(combined) == len(batches)
        seen = [(_lists(batch), batch_idx, dataloader_idx) for batch, batch_idx, dataloader_idx in combined]
        assert seen == [(batch, i, 0) for i, batch in enumerate(batches)], mode
        assert [_lists(batch) for batch, _, _ in combined] == batches  # iterable again, from the start

    sequential = CombinedLoader(_loaders(), "sequential")
    assert len(sequential) == 5
    assert [(b.tolist(), i, d) for b, i, d in sequential] == [
        ([0, 1, 2, 3], 0, 0), ([4, 5], 1, 0),
        ([0, 1, 2, 3, 4], 0, 1), ([5, 6, 7, 8, 9], 1, 1), ([10, 11, 12, 13, 14], 2, 1),
    ]  # fmt: skip
    assert CombinedLoader(_loaders()).mode == "min_size"  # Lightning's default


def test_combined_loader_keeps_the_structure_of_lists_tuples_and_nesting():
    a, b = DataLoader(range(4), batch_size=2), DataLoader(range(10, 16), batch_size=2)
    batch, _, _ = next(iter(CombinedLoader([a, b], "max_size_cycle")))
    assert isinstance(batch, list) and [t.tolist() for t in batch] == [[0, 1], [10, 11]]
    batch, _, _ = next(iter(CombinedLoader((a, b))))
    assert isinstance(batch, tuple)
    Pair = namedtuple("Pair", ["x", "y"])
    nested = CombinedLoader({"pair": Pair(a, b), "single": a}, "max_size_cycle")
    assert len(nested.flattened) == 3 and len(nested) == 3
    batch, _, _ = next(iter(nested))
    assert isinstance(batch["pair"], Pair) and batch["pair"].y.tolist() == [10, 11]
    single = CombinedLoader(a)  # one iterable: the batch itself
    assert [batch.tolist() for batch, _, _ in single] == [[0, 1], [2, 3]]


def test_combined_loader_flattened_setter_samplers_and_errors():
    combined = CombinedLoader(_loaders(), "max_size_cycle")
    replaced = [DataLoader(range(2), batch_size=1), DataLoader(range(3), batch_size=1)]
    combined.flattened = replaced
    assert combined.iterables == {"a": replaced[0], "b": replaced[1]} and len(combined) == 3
    assert set(combined.sampler) == {"a", "b"}
    with pytest.raises(MisconfigurationException, match="`flattened='1 loaders'` is not valid"):
        combined.flattened = replaced[:1]
    with pytest.raises(MisconfigurationException, match="`mode='longest'` is not valid. Accepted: 'min_size'"):
        CombinedLoader(_loaders(), "longest")
    unsized = CombinedLoader({"a": DataLoader(range(4)), "g": (i for i in range(3))})
    with pytest.raises(TypeError, match="loader 1 \\(generator\\) has none"):
        len(unsized)
    assert [b["g"] for b, _, _ in unsized] == [0, 1, 2]  # iterating needs no length


class _TwoLoaders(BoringModel):
    def __init__(self):
        super().__init__()
        self.batches = []

    def training_step(self, batch, batch_idx):
        self.batches.append({k: v.shape[0] for k, v in batch.items()} if isinstance(batch, dict) else len(batch))
        parts = batch.values() if isinstance(batch, dict) else batch
        return sum(self.loss(part) for part in parts)


def test_fit_steps_through_a_dict_or_list_of_training_loaders():
    model = _TwoLoaders()  # a dict: one batch of each per step, max_size_cycle as Lightning's trainer
    Trainer(**quiet(max_epochs=1)).fit(model, {"big": loader(32, batch_size=8), "small": loader(8, batch_size=4)})
    assert model.batches == [{"big": 8, "small": 4}] * 4
    model = _TwoLoaders()
    Trainer(**quiet(max_epochs=1)).fit(model, [loader(16), loader(24)])
    assert model.batches == [2] * 3
    model = _TwoLoaders()
    given = CombinedLoader({"big": loader(32), "small": loader(8)}, "min_size")
    Trainer(**quiet(max_epochs=1)).fit(model, given)
    assert len(model.batches) == 1
    with pytest.raises(MisconfigurationException, match="`train_dataloaders=CombinedLoader\\(mode='sequential'"):
        Trainer(**quiet(max_epochs=1)).fit(_TwoLoaders(), CombinedLoader([loader(16)], "sequential"))


def test_the_trainer_shards_every_loader_inside_a_combined_loader():
    from fulmen.trainer import loaders as data

    user = CombinedLoader({"a": loader(16), "b": loader(8)}, "max_size")
    prepared = data.prepare(user, {"num_replicas": 2, "rank": 1}, True)
    assert all(isinstance(inner.sampler, DistributedSampler) for inner in prepared.flattened)
    assert prepared.mode == "max_size" and len(prepared) == 1  # 8 and 4 samples per rank in batches of 8
    assert not any(isinstance(inner.sampler, DistributedSampler) for inner in user.flattened)  # the user's copy


# -------------------------------------------------------------------------------- measure_flops
def test_measure_flops_counts_forward_and_backward_on_a_meta_model():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
        x = torch.randn(4, 32)
    forward = measure_flops(model, lambda: model(x))
    assert forward == 2 * 4 * (32 * 64 + 64 * 8)  # a matmul (b, n) @ (n, m) is 2*b*n*m FLOPs
    # Backward: the weight gradients of both layers plus the input gradient of the second one.
    with_backward = measure_flops(model, lambda: model(x), lambda y: y.sum())
    assert with_backward == forward + 2 * 4 * (32 * 64 + 64 * 8) + 2 * 4 * 64 * 8
    real = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    assert measure_flops(real, lambda: real(torch.randn(4, 32))) == forward
    with pytest.raises(MisconfigurationException, match="`forward_fn="):
        measure_flops(model, model(x))


# ------------------------------------------------------------------------ GradClipAlgorithmType
def test_grad_clip_algorithm_type_is_a_string_enum_the_trainer_accepts():
    assert GradClipAlgorithmType.NORM == "norm" and GradClipAlgorithmType.VALUE == "value"
    assert GradClipAlgorithmType("value") is GradClipAlgorithmType.VALUE
    assert GradClipAlgorithmType.supported_types() == ["norm", "value"]
    assert GradClipAlgorithmType.supported_type("norm") and not GradClipAlgorithmType.supported_type("max")

    class Clipped(BoringModel):
        def on_before_optimizer_step(self, optimizer):  # Lightning clips right after this hook
            self.before = max(p.grad.abs().max().item() for p in self.parameters())

        def on_train_batch_end(self, outputs, batch, batch_idx):  # the gradients the step used
            self.after = max(p.grad.abs().max().item() for p in self.parameters())

    model = Clipped()
    flags = quiet(max_steps=1, gradient_clip_val=1e-3, gradient_clip_algorithm=GradClipAlgorithmType.VALUE)
    Trainer(**flags).fit(model, loader(16))
    assert model.before > 1e-3 and model.after == pytest.approx(1e-3)


# ------------------------------------------------------------------------ load_hparams_from_yaml
def test_load_hparams_from_yaml_reads_what_the_logger_wrote(tmp_path):
    class WithHparams(BoringModel):
        def __init__(self, lr: float = 0.1, hidden: int = 4, name: str = "boring", layers=(1, 2)):
            super().__init__(lr=lr)
            self.save_hyperparameters()

    logger = CSVLogger(tmp_path, name="run", version=0)
    Trainer(**quiet(max_steps=1, logger=logger, log_every_n_steps=1)).fit(WithHparams(lr=0.05, hidden=8), loader(16))
    hparams = load_hparams_from_yaml(tmp_path / "run" / "version_0" / "hparams.yaml")
    assert hparams == {"lr": 0.05, "hidden": 8, "name": "boring", "layers": [1, 2]}

    with pytest.warns(RuntimeWarning, match="does not exist"):
        assert load_hparams_from_yaml(tmp_path / "missing.yaml") == {}
    (tmp_path / "empty.yaml").write_text("")
    assert load_hparams_from_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="holds a list; Accepted: a YAML mapping"):
        load_hparams_from_yaml(tmp_path / "list.yaml")
    (tmp_path / "code.yaml").write_text("x: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(Exception, match="python/object"):  # never runs code from the file
        load_hparams_from_yaml(tmp_path / "code.yaml")
