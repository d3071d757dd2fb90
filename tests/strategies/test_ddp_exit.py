"""The process group's exit handler: a rank whose work succeeded also exits with 0.

A gloo worker thread drops its last reference to a finished collective after the caller moved on;
with Python tensors in it, that takes the GIL. If the interpreter is already finalising, Python ends
the thread with a forced unwind and the rank aborts (``terminate called without an active
exception``). The handler hands the GIL over before letting the group go.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_python

SCRIPT = Path(__file__).parent / "scripts" / "ddp_exit_gil.py"


def test_worker_thread_waiting_for_the_gil_at_exit_does_not_abort_the_process():
    # Generous, so that a loaded machine still schedules the woken worker thread in time; the
    # script never lets the GIL go on its own, so without the handover it aborts however long this is.
    proc = run_python(str(SCRIPT), "2.0", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    assert proc.stdout.strip() == "done"
