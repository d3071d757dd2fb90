"""Every fulmen name the guides use (``from fulmen.x import Name``, or spelled `` `fulmen.x.Name` ``)
is documented in the API reference: a reader who meets it in a guide finds it there."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

from tests.docs.snippets import DOCS

_DIRECTIVE = re.compile(r"^::: *(?P<path>[\w.]+) *$", re.MULTILINE)
_IMPORT = re.compile(r"from (?P<module>fulmen[\w.]*) import \(?(?P<names>[\w,\s]+?)\)?$", re.MULTILINE)
_SPELLED = re.compile(r"`(?P<path>fulmen(?:\.\w+)+)`")


def _resolve(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _documented() -> set[int]:
    found = set()
    for page in (DOCS / "reference").glob("*.md"):
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            module, _, name = match["path"].rpartition(".")
            obj = _resolve(module, name)
            if obj is not None:
                found.add(id(obj))
    return found


def _used_in_guides() -> dict[tuple[str, str], str]:
    used: dict[tuple[str, str], str] = {}
    for page in DOCS.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for match in _IMPORT.finditer(text):
            for name in re.split(r"[,\s]+", match["names"].strip()):
                if name and name != "as":
                    used.setdefault((match["module"], name), page.name)
        for match in _SPELLED.finditer(text):
            module, _, name = match["path"].rpartition(".")
            used.setdefault((module, name), page.name)
    return used


def test_every_name_the_guides_use_is_in_the_reference():
    documented = _documented()
    missing = []
    for (module, name), page in sorted(_used_in_guides().items()):
        obj = _resolve(module, name)
        if obj is None or isinstance(obj, (ModuleType, str, int, float, dict, list, tuple)):
            continue  # not a name (a module path, a constant, or prose that is not an import)
        if id(obj) not in documented:
            missing.append(f"{module}.{name} (in {page})")
    assert not missing, f"used in the guides, missing from docs/reference: {missing}"


def test_consolidate_checkpoint_is_in_the_reference():
    from fulmen.strategies import consolidate_checkpoint

    assert id(consolidate_checkpoint) in _documented()
