"""The banner Lightning's command-line examples print first (``cli_lightning_logo()``), in fulmen's colours."""

from __future__ import annotations

FULMEN_LOGO = r"""
        __
       / /
      / /___
     /__   /      f u l m e n
       /  /
      /  /        a structured PyTorch trainer
     / /
    //
"""


def cli_lightning_logo() -> None:
    """Print fulmen's logo (a bolt) in magenta, between blank lines, as Lightning's examples expect."""
    print()
    print("\033[0;35m" + FULMEN_LOGO + "\033[0m")
    print()
