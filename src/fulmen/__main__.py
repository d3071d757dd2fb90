"""``python -m fulmen run ...``, the same as the ``fulmen`` console script."""

import sys

from fulmen.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
