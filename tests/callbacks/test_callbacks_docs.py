"""The runnable snippets of docs/callbacks.md run (fragments, marked ``<!-- fragment -->``, are skipped)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "callbacks.md"
SNIPPETS = [code for fragment, code in re.findall(r"(<!-- fragment -->\n)?```python\n(.*?)```", DOC.read_text(), re.S)
            if not fragment]  # fmt: skip


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("code", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_snippet_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippets write checkpoints and logs into the working folder
    exec(compile(code, str(DOC), "exec"), {"__name__": "__docs__"})
