"""The Trainer's flags are listed once (``fulmen.trainer.flags.FLAGS``); everything else agrees with it."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

import fulmen as L
from fulmen.trainer import flags
from fulmen.trainer.configuration import TrainerConfig, configure

DOCS = Path(__file__).resolve().parents[2] / "docs" / "trainer.md"


def test_the_trainer_signature_is_the_flag_list():
    parameters = inspect.signature(L.Trainer.__init__).parameters
    signature = {name: p.default for name, p in parameters.items() if name != "self"}
    assert set(signature) == set(flags.NAMES)
    for flag in flags.FLAGS:
        assert signature[flag.name] == flag.default, flag.name
        assert parameters[flag.name].kind is inspect.Parameter.KEYWORD_ONLY


def test_configure_takes_the_config_flags_and_each_has_a_field_or_an_owner():
    taken = set(inspect.signature(configure).parameters)
    expected = {f.name for f in flags.FLAGS if f.taken_by == flags.CONFIG} | {"profiler"}
    assert taken == expected
    fields = {field.name for field in dataclasses.fields(TrainerConfig)}
    # max_time is stored in seconds; every other config flag is a field of the same name.
    assert {f.name for f in flags.FLAGS if f.taken_by == flags.CONFIG} - fields == {"max_time"}
    assert "max_time_seconds" in fields


def test_attributes_read_and_write_the_config():
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    for name in flags.ATTRIBUTES:
        assert getattr(trainer, name) == getattr(trainer.config, name)
    trainer.max_steps = 7
    assert trainer.config.max_steps == 7


@pytest.mark.parametrize("prefix", ["PL_TRAINER_", "FULMEN_TRAINER_"])
def test_environment_defaults_cover_every_flag_by_its_name(monkeypatch, prefix):
    monkeypatch.setenv(prefix + "MAX_STEPS", "11")
    monkeypatch.setenv(prefix + "ENABLE_AUTOLOG_HPARAMS", "False")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.max_steps == 11
    assert trainer.config.enable_autolog_hparams is False


def test_split_refuses_a_flag_missing_from_the_list():
    values = dict.fromkeys(flags.NAMES)
    values["max_stepz"] = 1
    with pytest.raises(TypeError, match="max_stepz"):
        flags.split(values)


@pytest.mark.parametrize("group", flags.GROUPS)
def test_docs_tables_are_rendered_from_the_list(group):
    text = DOCS.read_text()
    marker = f"<!-- flags: {group} "
    assert marker in text, f"docs/trainer.md lacks the {group!r} flag table marker"
    table = text[text.index(marker) :].split("-->\n", 1)[1]
    rendered = flags.markdown_table(group)
    assert table.startswith(rendered + "\n"), f"regenerate with `python -m fulmen.trainer.flags`:\n{rendered}"


def test_every_flag_is_in_one_docs_table():
    assert {f.group for f in flags.FLAGS} == set(flags.GROUPS)
    documented = "".join(flags.markdown_table(group) for group in flags.GROUPS)
    for name in flags.NAMES:
        assert f"`{name}`" in documented
