"""MkDocs hook: put a code block from a module docstring into a page, so it is written once.

A page line ``<!-- docstring-block: fulmen.trainer.dispatch -->`` becomes a fenced ``python``
block holding the first literal block (after a ``::`` line or ``.. code-block:: python``) of
that module's docstring. The source is read with ``ast`` (nothing is imported), and a marker
whose module or block is missing fails the build.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

from mkdocs.exceptions import PluginError

_MARKER = re.compile(r"^<!-- docstring-block: ([\w.]+) -->$", re.MULTILINE)


def _module_docstring(root: Path, module: str) -> str:
    base = root / "src" / Path(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
            if doc:
                return doc
    raise PluginError(f"docstring-block: no module docstring found for {module!r} under {root / 'src'}")


def literal_block(doc: str, module: str) -> str:
    """The first indented block after a line ending in ``::`` or ``.. code-block:: python``."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith("::") or line.strip().startswith(".. code-block::"):
            block: list[str] = []
            for following in lines[i + 1 :]:
                if following.strip() and not following[:1].isspace():
                    break
                block.append(following)
            text = textwrap.dedent("\n".join(block)).strip("\n")
            if text:
                return text
    raise PluginError(f"docstring-block: the docstring of {module!r} has no literal block")


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' signature)
    root = Path(config.config_file_path).parent

    def replace(match: re.Match) -> str:
        module = match.group(1)
        return f"```python\n{literal_block(_module_docstring(root, module), module)}\n```"

    return _MARKER.sub(replace, markdown)
