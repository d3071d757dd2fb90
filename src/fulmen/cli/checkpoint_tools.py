"""``fulmen checkpoint consolidate DIR OUT``: a sharded checkpoint directory as one ordinary checkpoint file.

The directory (written by ``strategy="deepspeed*"``) holds one shard per rank; the output holds
the full fp32 weights with fulmen's own state, and ``Model.load_from_checkpoint(OUT)`` loads it
on one process without DeepSpeed.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    checkpoint = commands.add_parser("checkpoint", help="checkpoint tools (consolidate a sharded checkpoint)")
    tools = checkpoint.add_subparsers(dest="tool", required=True)
    consolidate = tools.add_parser(
        "consolidate",
        help="merge a sharded checkpoint directory (DeepSpeed ZeRO) into one checkpoint file",
        description="Merge the shards in DIR into one checkpoint file OUT with full fp32 weights and fulmen's "
        "state (loop position, callbacks, hyperparameters); the sharded optimizer state is left out. "
        "Model.load_from_checkpoint(OUT) then works on one process, without DeepSpeed.",
    )
    consolidate.add_argument("directory", metavar="DIR", help="the checkpoint directory (e.g. .../last.ckpt)")
    consolidate.add_argument("output", metavar="OUT", help="the file to write")


def run(args: argparse.Namespace) -> int:
    from fulmen.strategies import consolidate_checkpoint
    from fulmen.utilities.exceptions import CheckpointError

    try:
        consolidate_checkpoint(args.directory, args.output)
    except (CheckpointError, OSError) as err:
        print(f"fulmen checkpoint consolidate: error: {err}", file=sys.stderr)
        return 1
    size = os.path.getsize(args.output) / 2**20
    print(f"Wrote {args.output} ({size:.1f} MiB) from {args.directory}.")
    return 0
