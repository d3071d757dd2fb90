"""Public signatures carry real types (argparse, jsonargparse and other tools read them unevaluated)."""

from __future__ import annotations

import inspect
from typing import Literal, Union

import pytest

import fulmen
from fulmen.callbacks import Callback, EarlyStopping, ModelCheckpoint
from fulmen.loggers import CSVLogger
from fulmen.profilers import SimpleProfiler
from fulmen.strategies import DDPStrategy
from fulmen.utilities.annotations import resolve_annotations


@pytest.mark.parametrize(
    "cls", [fulmen.Trainer, ModelCheckpoint, EarlyStopping, CSVLogger, SimpleProfiler, DDPStrategy]
)
def test_public_constructors_have_no_string_annotations(cls):
    strings = {n: p.annotation for n, p in inspect.signature(cls).parameters.items() if isinstance(p.annotation, str)}
    assert strings == {}


def test_a_composed_annotation_works_as_a_jsonargparse_type():
    jsonargparse = pytest.importorskip("jsonargparse")
    annotation = inspect.signature(ModelCheckpoint).parameters["save_last"].annotation
    assert annotation == Union[bool, Literal["link"], None]
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--save_last", type=annotation)
    assert parser.parse_args(["--save_last", "link"]).save_last == "link"
    assert parser.parse_args(["--save_last", "true"]).save_last is True


def test_names_only_type_checkers_know_stay_strings_and_user_classes_are_left_alone():
    def function(x: NotDefinedAnywhere, y: int | None) -> None:  # noqa: F821
        pass

    resolve_annotations(function)
    assert function.__annotations__ == {"x": "NotDefinedAnywhere", "y": int | None, "return": None}

    class Mine(Callback):
        def __init__(self, size: int) -> None:
            pass

    assert inspect.signature(Mine).parameters["size"].annotation == "int"  # a user class: untouched
