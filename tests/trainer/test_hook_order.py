"""Every hook call of fit, validate, test and predict, compared with the documented order.

The reference is the pseudocode in ``fulmen.trainer.dispatch``' docstring: this test expands it
(loops repeated, conditions decided per scenario) and compares the result with a record of
every hook call a real run makes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

import fulmen.trainer.dispatch as hooks_module
from fulmen import Callback, Trainer
from fulmen.callbacks.callback import CALLBACK_HOOKS
from fulmen.module.module import MODULE_HOOKS
from tests.trainer.helpers import BoringDataModule, BoringModel, quiet

# ------------------------------------------------------------------ the documented pseudocode


def parse_documented_order() -> dict[str, list[Any]]:
    """``{def name: statement tree}`` from the code block in the hooks module docstring."""
    doc = hooks_module.__doc__
    block = doc.split(".. code-block:: python", 1)[1]
    lines = []
    for raw in block.splitlines()[1:]:
        if raw.strip() and not raw.startswith("    "):
            break  # end of the indented block
        text = raw.split("#", 1)[0].rstrip()
        if text.strip():
            lines.append((len(text) - len(text.lstrip()) - 4, text.strip()))

    definitions: dict[str, list[Any]] = {}
    position = 0

    def block_at(indent: int) -> list[Any]:
        nonlocal position
        statements: list[Any] = []
        while position < len(lines) and lines[position][0] == indent:
            _, text = lines[position]
            position += 1
            if text.startswith("for "):
                match = re.fullmatch(r"for \w+ in (.+):", text)
                statements.append(("for", match.group(1), block_at(indent + 4)))
            elif text.startswith("if "):
                condition = text[3:-1]
                body = block_at(indent + 4)
                otherwise: list[Any] = []
                if position < len(lines) and lines[position] == (indent, "else:"):
                    position += 1
                    otherwise = block_at(indent + 4)
                statements.append(("if", condition, body, otherwise))
            else:
                match = re.fullmatch(r"(?:(callbacks|module|datamodule)\.)?(\w+)\(.*\)", text)
                assert match, f"cannot read documented line: {text!r}"
                who, name = match.groups()
                statements.append(("call", who, name))
        return statements

    while position < len(lines):
        indent, text = lines[position]
        match = re.fullmatch(r"def (\w+)\(\):", text)
        assert indent == 0 and match, f"expected a def, got {text!r}"
        position += 1
        definitions[match.group(1)] = block_at(4)
    return definitions


def expand(
    definitions: dict[str, list[Any]],
    entry: str,
    loops: dict[str, int],
    conditions: dict[str, bool | Callable[[dict], bool]],
) -> list[str]:
    """The hook calls the pseudocode makes, as ``"who.name"`` strings."""
    out: list[str] = []
    env: dict[str, Any] = {"counts": {}}

    def run(statements: list[Any]) -> None:
        for statement in statements:
            kind = statement[0]
            if kind == "call":
                _, who, name = statement
                if who is None:
                    run(definitions[name])
                else:
                    out.append(f"{who}.{name}")
            elif kind == "for":
                _, iterable, body = statement
                for index in range(loops[iterable]):
                    env[iterable] = index
                    run(body)
            else:
                _, condition, body, otherwise = statement
                decide = conditions[condition]
                env["count"] = env["counts"].get(condition, 0)
                env["counts"][condition] = env["count"] + 1
                run(body if (decide(env) if callable(decide) else decide) else otherwise)

    run(definitions[entry])
    return out


# ------------------------------------------------------------------------ recording objects

CALLS: list[str] = []


def _recording(cls: type, who: str, names: tuple[str, ...]) -> type:
    def make(name: str) -> Callable:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            CALLS.append(f"{who}.{name}")
            return getattr(cls, name)(self, *args, **kwargs)

        method.__name__ = name
        return method

    return type(f"Recording{cls.__name__}", (cls,), {name: make(name) for name in names})


_MODULE_NAMES = tuple(
    n for n in (*MODULE_HOOKS, "configure_callbacks", "configure_optimizers", "training_step", "validation_step",
                "test_step", "predict_step")
    if n not in ("configure_sharded_model", "on_exception", "on_save_checkpoint", "on_load_checkpoint")
)  # fmt: skip
RecordingModule = _recording(BoringModel, "module", _MODULE_NAMES)
RecordingCallback = _recording(Callback, "callbacks", tuple(n for n in CALLBACK_HOOKS if n != "on_exception"))
RecordingDataModule = _recording(
    BoringDataModule,
    "datamodule",
    ("prepare_data", "setup", "teardown", "train_dataloader", "val_dataloader", "test_dataloader",
     "predict_dataloader"),
)  # fmt: skip


@pytest.fixture
def record():
    CALLS.clear()
    yield CALLS
    CALLS.clear()


def _trainer(**flags: Any) -> Trainer:
    return Trainer(**quiet(callbacks=[RecordingCallback()], **flags))


FIT_CONDITIONS: dict[str, Any] = {
    "sanity check": True,
    "reload due": False,
    "automatic optimization": True,
    "accumulating": False,
    "scheduler due": False,
    "validation due": lambda env: env["train batches"] == 1,  # the last of 2 batches
    "plateau scheduler due": False,
    "checkpointing or early stopping callbacks": False,
    "first batch of an accumulation window": True,
    "not accumulating": True,
    "first run or reload due": lambda env: env["count"] == 0,
}


def test_documented_pseudocode_is_readable():
    definitions = parse_documented_order()
    assert {"fit", "closure", "validation_run", "validate", "test", "predict"} <= set(definitions)


def test_fit_calls_every_hook_in_the_documented_order(record):
    torch.manual_seed(0)
    trainer = _trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=2)
    trainer.fit(RecordingModule(), datamodule=RecordingDataModule())
    expected = expand(
        parse_documented_order(),
        "fit",
        loops={"epochs": 2, "train batches": 2, "val batches": 2},
        conditions=FIT_CONDITIONS,
    )
    assert record == expected


def test_fit_without_overrides_skips_the_optional_hooks(record):
    """A datamodule passed positionally, no sanity check, validation every batch."""
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                       val_check_interval=1)  # fmt: skip
    trainer.fit(RecordingModule(), RecordingDataModule())
    conditions = {**FIT_CONDITIONS, "sanity check": False, "validation due": True}
    expected = expand(
        parse_documented_order(),
        "fit",
        loops={"epochs": 1, "train batches": 2, "val batches": 1},
        conditions=conditions,
    )
    assert record == expected


@pytest.mark.parametrize("entry", ["validate", "test", "predict"])
def test_evaluation_entry_points_call_hooks_in_the_documented_order(record, entry):
    trainer = _trainer(limit_val_batches=2, limit_test_batches=2, limit_predict_batches=2)
    model = RecordingModule()
    getattr(trainer, entry)(model, datamodule=RecordingDataModule())
    expected = expand(
        parse_documented_order(),
        entry,
        loops={"val batches": 2, "test batches": 2, "predict batches": 2},
        conditions={"first run or reload due": True},
    )
    assert record == expected


def test_reloading_dataloaders_is_documented(record):
    trainer = _trainer(max_epochs=2, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
                       reload_dataloaders_every_n_epochs=1)  # fmt: skip
    trainer.fit(RecordingModule(), datamodule=RecordingDataModule())
    conditions = {
        **FIT_CONDITIONS,
        "sanity check": False,
        "validation due": True,
        "reload due": lambda env: env["epochs"] > 0,
        "first run or reload due": True,
    }
    expected = expand(
        parse_documented_order(),
        "fit",
        loops={"epochs": 2, "train batches": 1, "val batches": 1},
        conditions=conditions,
    )
    assert record == expected


def test_hooks_nobody_overrides_are_not_called(record):
    """Only the recording callback's hooks are recorded; a plain Callback costs nothing."""
    from fulmen.trainer.dispatch import Hooks

    trainer = Trainer(**quiet(callbacks=[Callback()], max_epochs=1, limit_train_batches=1))
    model = BoringModel()
    trainer.fit(model, datamodule=BoringDataModule())
    hooks = Hooks(trainer, model, trainer.callbacks, None)
    assert all(fns == [] for fns in hooks.callbacks.values())
    assert hooks.module["on_train_batch_start"] is None
    assert not hooks.any("on_before_backward")


class StageRecorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("setup", args[2:], kwargs))

    def teardown(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("teardown", args[2:], kwargs))


def test_setup_and_teardown_get_the_stage_by_keyword_and_every_stage_starts_without_gradients():
    class Grads(BoringModel):
        def on_fit_start(self) -> None:
            for p in self.parameters():
                p.grad = torch.ones_like(p)

        def on_train_start(self) -> None:
            self.grads_at_train_start = [p.grad for p in self.parameters()]

        def on_predict_start(self) -> None:
            self.grads_at_predict_start = [p.grad for p in self.parameters()]

    recorder = StageRecorder()
    model = Grads()
    trainer = Trainer(**quiet(max_epochs=1, limit_train_batches=1, callbacks=[recorder]))
    trainer.fit(model, BoringDataModule())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    trainer.predict(model, BoringDataModule().predict_dataloader())
    assert recorder.calls == [
        ("setup", (), {"stage": "fit"}),
        ("teardown", (), {"stage": "fit"}),
        ("setup", (), {"stage": "predict"}),
        ("teardown", (), {"stage": "predict"}),
    ]
    assert model.grads_at_train_start == [None, None] and model.grads_at_predict_start == [None, None]


def test_a_datamodule_that_only_wraps_its_transfer_hooks_leaves_them_to_the_module():
    seen: list[str] = []

    class Moves(BoringModel):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            seen.append("module")
            return batch

    dm = BoringDataModule()
    original = dm.on_before_batch_transfer

    def recording(*args: Any) -> Any:
        seen.append("datamodule wrapper")
        return original(*args)

    dm.on_before_batch_transfer = functools.update_wrapper(functools.partial(recording), original)
    Trainer(**quiet(max_epochs=1, limit_train_batches=1)).fit(Moves(), datamodule=dm)
    assert seen and set(seen) == {"module"}
