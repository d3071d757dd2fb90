"""README.md stays a short front page: the two commands, and links that lead to the docs pages."""

from __future__ import annotations

import re

from tests.docs.snippets import ROOT

README = ROOT / "README.md"
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_names_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text


def test_readme_links_lead_to_files_of_the_repository():
    text = README.read_text(encoding="utf-8")
    targets = [t for t in _LINK.findall(text) if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in targets if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    assert "docs/index.md" in targets and "docs/getting-started.md" in targets, targets


def test_readme_stays_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move the long parts into docs/"
