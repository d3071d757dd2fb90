"""rank_zero_info lines reach the console as Lightning's INFO lines do."""

from __future__ import annotations

import logging
import subprocess
import sys


def test_fulmen_logger_logs_at_info():
    import fulmen.utilities.rank_zero  # noqa: F401  (configures the logger)

    assert logging.getLogger("fulmen").getEffectiveLevel() == logging.INFO


def test_info_lines_print_to_stderr_when_the_program_configured_no_logging():
    code = "from fulmen.utilities.rank_zero import rank_zero_info; rank_zero_info('hello from fulmen')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stderr.strip() == "hello from fulmen" and result.stdout == ""


def test_a_program_that_configured_logging_gets_the_lines_through_its_own_handlers():
    code = (
        "import logging; logging.basicConfig(format='ROOT %(message)s'); "
        "from fulmen.utilities.rank_zero import rank_zero_info; rank_zero_info('hello')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stderr.strip() == "ROOT hello"
