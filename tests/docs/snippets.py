"""Find the ``python`` code blocks of the Markdown pages in docs/, and tell fragments apart.

A block is a fragment (shown, never run) when the line right above its opening fence is
``<!-- fragment -->``; every other ``python`` block must run as pasted. A script that reads its
command line gets its arguments from a ``<!-- run-with: ARGS -->`` line in the same place
(``<!-- run-with: fit --trainer.max_epochs=1 -->``).
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FRAGMENT_MARKER = "<!-- fragment -->"
_RUN_WITH = re.compile(r"^<!-- run-with:(?P<args>.*)-->$")
PYTHON_LANGUAGES = ("python", "py", "python3")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")


@dataclass(frozen=True)
class Snippet:
    page: str  # relative to docs/, with forward slashes
    line: int  # 1-based line of the opening fence
    code: str
    fragment: bool
    argv: tuple[str, ...] = ()  # the script's command-line arguments

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def extract(text: str, page: str) -> list[Snippet]:
    """Every fenced ``python`` block of one page, dedented, in page order."""
    lines = text.splitlines()
    found: list[Snippet] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        language = opening["info"].strip().split(" ")[0].lstrip(".").lower() if opening["info"].strip() else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence):
                if not closing["info"].strip():
                    break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise ValueError(f"docs/{page}:{i + 1}: the code block opened here is never closed")
        if language in PYTHON_LANGUAGES:
            above = lines[i - 1].strip() if i > 0 else ""
            code = textwrap.dedent("\n".join(body)) + "\n"
            run_with = _RUN_WITH.match(above)
            argv = tuple(shlex.split(run_with["args"])) if run_with else ()
            found.append(Snippet(page, i + 1, code, fragment=above == FRAGMENT_MARKER, argv=argv))
        i = j + 1
    return found


def pages(docs: Path = DOCS) -> list[Path]:
    return sorted(docs.rglob("*.md"))


def all_snippets(docs: Path = DOCS) -> list[Snippet]:
    """The snippets of every page, and of README.md (the front page: its taste must run too)."""
    snippets: list[Snippet] = []
    for path in pages(docs):
        snippets.extend(extract(path.read_text(encoding="utf-8"), path.relative_to(docs).as_posix()))
    readme = docs.parent / "README.md"
    if readme.exists():
        snippets.extend(extract(readme.read_text(encoding="utf-8"), "../README.md"))
    return snippets
