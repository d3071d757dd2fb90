"""``python -m fulmen run ...`` (or ``--version``), the same as the ``fulmen`` console script."""

import sys

from fulmen.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
