"""The documentation site, built once per session by ``mkdocs build --strict`` into a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.snippets import ROOT

BUILD_TIMEOUT_S = 240


@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The built site's folder; the build's own output is in the failure message when it fails."""
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as error:
        pytest.fail(f"the docs tests need the docs extra: pip install 'fulmen[docs]' ({error})")
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"mkdocs build took longer than {BUILD_TIMEOUT_S} s")
    if done.returncode != 0:
        output = done.stdout[-3000:] + done.stderr[-6000:]
        pytest.fail(f"mkdocs build --strict failed (exit {done.returncode}):\n{output}")
    return site
