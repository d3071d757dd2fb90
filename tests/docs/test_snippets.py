"""Every ``python`` block in docs/ that is not marked ``<!-- fragment -->`` runs as pasted, on CPU.

One subprocess (see ``run_snippets.py``) runs every page's snippets, each page in a forked child,
each snippet in fresh globals and its own temporary working directory; the tests below read its
report, one test per snippet.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.docs.run_snippets import report_path
from tests.docs.snippets import FRAGMENT_MARKER, ROOT, all_snippets, extract

RUNNER = Path(__file__).with_name("run_snippets.py")
TOTAL_TIMEOUT_S = 600

SNIPPETS = [s for s in all_snippets() if not s.fragment]


@functools.lru_cache(maxsize=1)
def _report() -> tuple[dict[str, dict], dict[str, str], str]:
    """Run every page's snippets once per session: (results by id, problems by page, output)."""
    pages = sorted({s.page for s in SNIPPETS})
    env = {
        **os.environ,
        "FULMEN_SNIPPET_TIMEOUT": "60",
        "FULMEN_SNIPPET_PAGE_TIMEOUT": "240",
        # No network here: trackers that a snippet may use stay local.
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(
                [sys.executable, str(RUNNER), tmp, *pages],
                capture_output=True,
                text=True,
                timeout=TOTAL_TIMEOUT_S,
                cwd=tmp,
                env=env,
            )
            output = done.stdout[-3000:] + done.stderr[-5000:]
        except subprocess.TimeoutExpired as error:
            output = f"the snippets ran past {TOTAL_TIMEOUT_S} s\n{error.stdout or ''}{error.stderr or ''}"
        results: dict[str, dict] = {}
        for page in pages:
            path = report_path(Path(tmp), page)
            if path.exists():
                results.update(json.loads(path.read_text()))
        problems_file = Path(tmp) / "problems.json"
        problems = json.loads(problems_file.read_text()) if problems_file.exists() else {}
    return results, problems, output


@pytest.mark.timeout(TOTAL_TIMEOUT_S + 30)
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet_runs(snippet):
    results, problems, output = _report()
    result = results.get(snippet.id)
    assert result is not None, (
        f"docs/{snippet.id} did not run: {problems.get(snippet.page, 'no report')}; the runner said:\n{output}"
    )
    assert result["ok"], (
        f"docs/{snippet.id} failed ({result['seconds']} s). Fix the snippet, or mark it "
        f"{FRAGMENT_MARKER!r} on the line above its fence if it cannot run alone:\n{result['error']}"
    )


def test_fragment_marker_is_recognised():
    text = "a\n\n<!-- fragment -->\n```python\nundefined_name\n```\n\n```python\nx = 1\n```\n"
    first, second = extract(text, "page.md")
    assert (first.fragment, first.line, first.code) == (True, 4, "undefined_name\n")
    assert (second.fragment, second.line, second.code) == (False, 8, "x = 1\n")


def test_run_with_gives_the_script_its_arguments():
    text = "<!-- run-with: fit --trainer.max_epochs=1 --name 'a b' -->\n```python\nimport sys\n```\n"
    (snippet,) = extract(text, "page.md")
    assert snippet.argv == ("fit", "--trainer.max_epochs=1", "--name", "a b")
    assert not snippet.fragment


def test_indented_blocks_are_dedented():
    text = "1. a step\n\n    ```python\n    if True:\n        y = 2\n    ```\n"
    (snippet,) = extract(text, "page.md")
    assert snippet.code == "if True:\n    y = 2\n"
    assert not snippet.fragment


def test_docs_have_runnable_snippets():
    assert len(SNIPPETS) >= 10, f"only {len(SNIPPETS)} runnable snippets found under {ROOT / 'docs'}"
