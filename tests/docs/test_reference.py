"""The API reference (docs/reference/) documents every public name of the API contract.

The contract is the import table of ``../shared/API.md`` (beside the repository, as in CI); the
site itself never links there. For each ``import path -> name`` of that table a ``::: object``
block of the reference must resolve to the very object ``from path import name`` gives, and the
built page must carry its anchor (so mkdocstrings rendered it). Names in parentheses after a
class (``Tuner`` (``lr_find``, ...)) must appear as documented members of that class, and the
``fulmen`` command's subcommands as headings of the CLI reference.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from tests.docs.snippets import DOCS, ROOT

API_MD = ROOT.parent / "shared" / "API.md"
REFERENCE = DOCS / "reference"

_ROW = re.compile(r"^\|\s*`(?P<path>fulmen[\w.]*)`\s*\|(?P<names>.*)\|\s*$")
_COMMAND = re.compile(r"the `(?P<command>[\w-]+)` command")
_TICKED = re.compile(r"`([^`]+)`")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_DIRECTIVE = re.compile(r"^::: *(?P<ident>[\w.]+) *$", re.MULTILINE)


def parse_api_table(text: str) -> list[dict[str, Any]]:
    """Rows of the import table: path, names, members ({name: [member, ...]}) and commands."""
    rows = []
    for line in text.splitlines():
        match = _ROW.match(line)
        if not match:
            continue
        cell = match["names"]
        commands = _COMMAND.findall(cell)
        cell = _COMMAND.sub("", cell)
        # Split into the part outside parentheses and each parenthesised group, in order.
        names: list[str] = []
        members: dict[str, list[str]] = {}
        depth, outside, group = 0, "", ""
        for char in cell:
            if char == "(":
                depth += 1
                if depth == 1:
                    names.extend(t for t in _TICKED.findall(outside) if _IDENT.match(t))
                    outside, group = "", ""
                    continue
            elif char == ")":
                depth -= 1
                if depth == 0:
                    owner = names[-1] if names else None
                    for token in (t for t in _TICKED.findall(group) if _IDENT.match(t)):
                        members.setdefault(owner, []).append(token)
                    continue
            if depth:
                group += char
            else:
                outside += char
        names.extend(t for t in _TICKED.findall(outside) if _IDENT.match(t))
        rows.append({"path": match["path"], "names": names, "members": members, "commands": commands})
    return rows


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\b.*?(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    return match.group(0) if match else ""


def _member_tokens(text: str) -> list[str]:
    """``name`` of each backticked ``name``, ``name()`` or ``name(args)``; others are dropped."""
    names = []
    for token in _TICKED.findall(text):
        name = token.split("(", 1)[0].strip()
        if _IDENT.match(name):
            names.append(name)
    return names


def parse_member_lists(text: str) -> dict[str, list[str]]:
    """Members API.md names for its classes: "`Trainer` (`fit`, ...)" under "Trainer side",
    and Lite's "Methods and properties:" paragraph."""
    members: dict[str, list[str]] = {}
    prose = " ".join(_section(text, "Trainer side").split())
    for match in re.finditer(r"`(\w+)`[^`(]*\(", prose):
        depth, i, in_tick = 1, match.end(), False
        while i < len(prose) and depth:  # the group's end; parentheses inside backticks do not count
            char = prose[i]
            if char == "`":
                in_tick = not in_tick
            elif not in_tick:
                depth += {"(": 1, ")": -1}.get(char, 0)
            i += 1
        members.setdefault(match.group(1), []).extend(_member_tokens(prose[match.end() : i - 1]))
    lite = re.search(r"Methods and properties:(.*?)(?:\n\s*\n|\Z)", _section(text, "Lite"), re.DOTALL)
    if lite:
        members["Lite"] = _member_tokens(lite.group(1))
    return members


def resolve(ident: str) -> Any:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = ident.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(ident)


def reference_blocks() -> list[tuple[str, str]]:
    """(page relative to docs/, identifier) for every ``::: identifier`` of the reference."""
    blocks = []
    for page in sorted(REFERENCE.rglob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            blocks.append((page.relative_to(DOCS).as_posix(), match["ident"]))
    return blocks


def _contract() -> list[dict[str, Any]]:
    if not API_MD.exists():
        return []
    return parse_api_table(API_MD.read_text(encoding="utf-8"))


ROWS = _contract()
PAIRS = [(row["path"], name) for row in ROWS for name in row["names"]]
MEMBERS = [(row["path"], owner, member) for row in ROWS for owner, ms in row["members"].items() for member in ms]
MEMBERS = [m for m in MEMBERS if (m[0], m[2]) not in set(PAIRS)]  # `LightningLite` (= `Lite`) is a name
_CLASS_MEMBERS = parse_member_lists(API_MD.read_text(encoding="utf-8")) if ROWS else {}
_PATH_OF = {name: path for path, name in PAIRS if path == "fulmen"}
MEMBERS += [(_PATH_OF[owner], owner, m) for owner, ms in _CLASS_MEMBERS.items() if owner in _PATH_OF for m in ms]
COMMANDS = [(row["path"], command) for row in ROWS for command in row["commands"]]
needs_contract = pytest.mark.skipif(not ROWS, reason=f"{API_MD} is absent (it lies beside the repository in CI)")


def _public(path: str, name: str) -> Any:
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as error:
        pytest.skip(f"{path} cannot be imported here ({error})")
    if not hasattr(module, name):
        pytest.fail(f"API.md lists {path}.{name}, but `from {path} import {name}` fails")
    return getattr(module, name)


def _documented(obj: Any) -> list[tuple[str, str]]:
    found = []
    for page, ident in reference_blocks():
        try:
            if resolve(ident) is obj:
                found.append((page, ident))
        except (ModuleNotFoundError, AttributeError):
            continue
    return found


def _anchors(built_site: Path, page: str) -> set[str]:
    html = (built_site / page).with_suffix(".html").read_text(encoding="utf-8")
    return set(re.findall(r'\bid="([^"]+)"', html))


@needs_contract
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "name"), PAIRS, ids=[f"{p}.{n}" for p, n in PAIRS])
def test_reference_documents_public_name(path, name, request):
    obj = _public(path, name)
    found = _documented(obj)
    assert found, (
        f"`from {path} import {name}` is public (API.md) but no `::: ...` block under docs/reference/ "
        f"documents it: add `::: {getattr(obj, '__module__', path)}.{name}` to the page of {path}"
    )
    built_site = request.getfixturevalue("built_site")
    rendered = [(page, ident) for page, ident in found if ident in _anchors(built_site, page)]
    assert rendered, f"{found} did not render an anchor for {name} in the built site"


@needs_contract
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "owner", "member"), MEMBERS, ids=[f"{p}.{o}.{m}" for p, o, m in MEMBERS])
def test_reference_documents_member(path, owner, member, request):
    found = _documented(_public(path, owner))
    assert found, f"{path}.{owner} is not documented under docs/reference/"
    built_site = request.getfixturevalue("built_site")
    anchors = set().union(*(_anchors(built_site, page) for page, _ in found))
    wanted = {f"{ident}.{member}" for _, ident in found}
    assert anchors & wanted, f"API.md names {owner}.{member}; the reference shows no {sorted(wanted)}"


@needs_contract
@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_reference_documents_every_subcommand(path, command):
    from fulmen.cli.main import build_parser

    subcommands = [
        choice
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for choice in action.choices
    ]
    text = (REFERENCE / "cli.md").read_text(encoding="utf-8")
    missing = [s for s in subcommands if f"### `{command} {s}`" not in text]
    assert subcommands and not missing, f"docs/reference/cli.md has no '### `{command} X`' section for {missing}"


def test_parse_api_table():
    text = (
        "| import | names |\n| --- | --- |\n"
        "| `fulmen` | `Trainer`, `Lite`, `LightningLite` (= `Lite`), `seed_everything` |\n"
        "| `fulmen.tuner` | `Tuner` (`lr_find`, `scale_batch_size`) |\n"
        "| `fulmen.cli` | `LightningCLI` (YAML configs); the `fulmen` command (`fulmen run`, tools) |\n"
        "| `fulmen.loggers` | `TensorBoardLogger` (default when tensorboard is installed), `CSVLogger` |\n"
    )
    rows = {row["path"]: row for row in parse_api_table(text)}
    assert rows["fulmen"]["names"] == ["Trainer", "Lite", "LightningLite", "seed_everything"]
    assert rows["fulmen.tuner"]["members"] == {"Tuner": ["lr_find", "scale_batch_size"]}
    assert rows["fulmen.cli"]["names"] == ["LightningCLI"] and rows["fulmen.cli"]["commands"] == ["fulmen"]
    assert rows["fulmen.loggers"]["names"] == ["TensorBoardLogger", "CSVLogger"]


def test_parse_member_lists():
    text = (
        "## Lite (raw loops)\n\nMethods and properties: `setup(model, *optimizers)`, `setup_dataloaders(*loaders)`\n"
        "(`replace_sampler=` the older name), `barrier()`, `device`.\n\n"
        "## Trainer side\n\n`LightningModule` hooks and API (`training_step`, `optimizers()`, the `on_*` hooks),\n"
        "`Trainer` (`fit`, `callback_metrics`) and the `Callback` hooks behave as documented.\n\n## Next\n"
    )
    assert parse_member_lists(text) == {
        "LightningModule": ["training_step", "optimizers"],
        "Trainer": ["fit", "callback_metrics"],
        "Lite": ["setup", "setup_dataloaders", "barrier", "device"],
    }


def test_reference_blocks_all_resolve():
    """A ``:::`` block naming nothing would fail the build too; this says which one, faster."""
    broken = []
    for page, ident in reference_blocks():
        try:
            resolve(ident)
        except (ModuleNotFoundError, AttributeError, ImportError) as error:
            broken.append(f"docs/{page}: ::: {ident} ({error})")
    assert not broken, "\n".join(broken)
