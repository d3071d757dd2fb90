"""Run the runnable snippets of docs pages: ``python run_snippets.py OUT_DIR PAGE [PAGE ...]``.

torch and fulmen are imported once; then each page runs in a child forked from this process
(so pages cannot disturb each other, and none pays the import again). In the child each
snippet is written to a file in a fresh folder, which becomes the working directory, and runs
with ``runpy`` as ``__main__`` (so ``inspect`` finds its source, as for a pasted script), in
fresh globals, under an alarm. The outcome of each snippet is written to ``OUT_DIR/<page>.json``
as soon as it is known, so a page that hangs still reports which snippet did.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.docs.snippets import DOCS, extract  # noqa: E402

SNIPPET_TIMEOUT_S = int(os.environ.get("FULMEN_SNIPPET_TIMEOUT", "60"))
PAGE_TIMEOUT_S = int(os.environ.get("FULMEN_SNIPPET_PAGE_TIMEOUT", "240"))


class SnippetTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise SnippetTimeout(f"the snippet ran longer than {SNIPPET_TIMEOUT_S} s")


def report_path(out_dir: Path, page: str) -> Path:
    return out_dir / (page.replace("/", "__") + ".json")


def run_one(code: str, name: str, base: Path, argv: tuple[str, ...] = ()) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=name.replace("/", "_").replace(":", "_") + "-", dir=base))
    script = folder / "snippet.py"
    script.write_text(code, encoding="utf-8")
    cwd, old_argv = os.getcwd(), sys.argv[:]
    os.chdir(folder)
    sys.argv = [str(script), *argv]
    started = time.perf_counter()
    signal.alarm(SNIPPET_TIMEOUT_S)
    try:
        runpy.run_path(str(script), run_name="__main__")
        outcome = {"ok": True}
    except SystemExit as exit_:
        outcome = {"ok": exit_.code in (None, 0), "error": f"SystemExit({exit_.code!r})"}
    except BaseException:  # the report must name whatever the snippet raised
        outcome = {"ok": False, "error": traceback.format_exc()}
    finally:
        signal.alarm(0)
        os.chdir(cwd)
        sys.argv = old_argv
    outcome["seconds"] = round(time.perf_counter() - started, 3)
    return outcome


def run_page(page: str, out: Path) -> None:
    signal.signal(signal.SIGALRM, _alarm)
    snippets = [s for s in extract((DOCS / page).read_text(encoding="utf-8"), page) if not s.fragment]
    results: dict[str, dict] = {}
    out.write_text("{}", encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="fulmen-docs-") as base:
        for snippet in snippets:
            results[snippet.id] = run_one(snippet.code, snippet.id, Path(base), snippet.argv)
            out.write_text(json.dumps(results), encoding="utf-8")


def _wait(pid: int, page: str) -> str | None:
    """Wait for a page's child; kill it past the page timeout. Returns a problem, or None."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return None if code == 0 else f"the process running {page} ended with {code}"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return f"{page} ran past {PAGE_TIMEOUT_S} s and was killed"


def main(out_dir: str, pages: list[str]) -> None:
    import torch  # noqa: F401  (paid once, before forking)

    import fulmen  # noqa: F401
    from fulmen import LightningModule, Trainer  # noqa: F401

    out = Path(out_dir)
    problems = {}
    for page in pages:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run_page(page, report_path(out, page))
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        problem = _wait(pid, page)
        if problem:
            problems[page] = problem
    (out / "problems.json").write_text(json.dumps(problems), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
