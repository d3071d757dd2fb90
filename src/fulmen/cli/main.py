"""``fulmen run SCRIPT [flags] [-- script args]``: start the processes and hand the flags to the script.

(``fulmen checkpoint consolidate DIR OUT`` lives in :mod:`fulmen.cli.checkpoint_tools`.)

The flags become the defaults of every ``Lite()`` and ``Trainer()`` the script creates
(through ``FULMEN_*`` environment variables read by the shared resolver). More than one
process per node is started by torchrun (``torch.distributed.run``), so every rank sees the
standard TorchElastic variables, exactly as if the user had called torchrun.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Sequence

from fulmen import __version__
from fulmen.cli import checkpoint_tools
from fulmen.cli.machine_check import check_machine
from fulmen.strategies.environments.lightning import find_free_network_port
from fulmen.strategies.registry import strategy_names
from fulmen.strategies.resolver import ACCELERATOR_NAMES, CLI_ENV, normalize_precision
from fulmen.utilities.exceptions import MisconfigurationException

_SINGLE_PROCESS_STRATEGIES = ("auto", "single_device", "dp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fulmen", description="fulmen command line")
    parser.add_argument("--version", action="version", version=f"fulmen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run a training script on the given devices, processes and precision",
        description="Run SCRIPT with the flags as defaults of every Lite() and Trainer() it creates. "
        "Arguments after `--` go to the script. `fulmen run model SCRIPT` (the older spelling) is the same.",
    )
    run.add_argument("script", help="path to the training script")
    run.add_argument("--accelerator", default=None, choices=ACCELERATOR_NAMES)
    run.add_argument("--devices", default=None, help="number of devices per node, a list like '0,1', -1 or auto")
    run.add_argument("--strategy", default=None, help=f"one of {', '.join(strategy_names())}")
    run.add_argument("--precision", default=None, help="64-true, 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true")
    run.add_argument("--num-nodes", "--num_nodes", dest="num_nodes", type=int, default=1)
    run.add_argument("--node-rank", "--node_rank", dest="node_rank", type=int, default=0)
    run.add_argument("--main-address", "--main_address", dest="main_address", default="127.0.0.1")
    run.add_argument("--main-port", "--main_port", dest="main_port", type=int, default=None)
    ft = run.add_argument_group("fault tolerance (torchft; see docs/fault-tolerance.md)")
    ft.add_argument(
        "--replica-groups",
        dest="replica_groups",
        type=int,
        default=None,
        help="run N replica groups that keep training when one dies (strategy='fault_tolerant')",
    )
    ft.add_argument(
        "--max-restarts",
        dest="max_restarts",
        type=int,
        default=3,
        help="how many times in all a killed replica group is restarted",
    )
    ft.add_argument(
        "--heartbeat-timeout",
        dest="heartbeat_timeout",
        type=float,
        default=5.0,
        help="seconds without a heartbeat before the lighthouse drops a group (the survivors' stall)",
    )
    ft.add_argument(
        "--min-replicas", dest="min_replicas", type=int, default=1, help="fewest replica groups a step needs to commit"
    )
    checkpoint_tools.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = _accept_run_model(list(sys.argv[1:] if argv is None else argv))
    own, script_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = build_parser()
    args, unknown = parser.parse_known_args(own)
    if args.command == "checkpoint":
        if unknown or script_args:
            parser.error(f"unrecognized arguments: {' '.join([*unknown, *script_args])}")
        return checkpoint_tools.run(args)
    script_args = [*unknown, *script_args]
    try:
        _validate(args)
        processes = _processes_per_node(args)
        check_machine(args.accelerator, args.devices)
    except MisconfigurationException as err:
        parser.error(str(err))
    if not os.path.isfile(args.script):
        parser.error(f"`script={args.script!r}` does not exist. Accepted: the path to a Python file.")
    _export_flags(args)
    if args.replica_groups is not None:
        from fulmen.cli.replica_groups import run_replica_groups

        return run_replica_groups(
            args.script, script_args, args.replica_groups, args.max_restarts, args.heartbeat_timeout,
            args.min_replicas, processes,
        )  # fmt: skip
    if processes == 1 and args.num_nodes == 1:
        return _run_in_process(args.script, script_args)
    return _run_with_torchrun(args, processes, script_args)


def _accept_run_model(argv: list[str]) -> list[str]:
    """``fulmen run model SCRIPT``, the older spelling (``lightning run model``), means ``fulmen run SCRIPT``.

    A file named ``model`` in the working directory is still taken as the script.
    """
    if argv[:2] == ["run", "model"] and len(argv) > 2 and not os.path.isfile("model"):
        return ["run", *argv[2:]]
    return argv


def _validate(args: argparse.Namespace) -> None:
    if args.precision is not None:
        try:
            args.precision = normalize_precision(int(args.precision) if args.precision.isdigit() else args.precision)
        except MisconfigurationException as err:
            accepted = str(err).split("Accepted: ", 1)[-1]
            message = f"`--precision={args.precision!r}` is not valid. Accepted: {accepted}"
            raise MisconfigurationException(message) from None
    if args.strategy is not None and args.strategy not in strategy_names():
        raise MisconfigurationException(
            f"`--strategy={args.strategy!r}` is not valid. Accepted: {', '.join(strategy_names())}."
        )
    if args.num_nodes < 1:
        raise MisconfigurationException(f"`--num-nodes={args.num_nodes}` is not valid. Accepted: a positive int.")
    _validate_fault_tolerance(args)
    if not 0 <= args.node_rank < args.num_nodes:
        raise MisconfigurationException(
            f"`--node-rank={args.node_rank}` is not valid with --num-nodes={args.num_nodes}. "
            f"Accepted: 0..{args.num_nodes - 1}."
        )


def _validate_fault_tolerance(args: argparse.Namespace) -> None:
    groups = args.replica_groups
    checks = (
        ("--replica-groups", groups, groups is None or groups >= 1, "a positive int"),
        ("--max-restarts", args.max_restarts, args.max_restarts >= 0, "an int >= 0"),
        ("--heartbeat-timeout", args.heartbeat_timeout, args.heartbeat_timeout > 0, "a positive number of seconds"),
        ("--min-replicas", args.min_replicas, args.min_replicas >= 1, "a positive int"),
    )
    for flag, value, valid, accepted in checks:
        if not valid:
            raise MisconfigurationException(f"`{flag}={value}` is not valid. Accepted: {accepted}.")
    if args.replica_groups is None:
        return
    if args.num_nodes != 1:
        raise MisconfigurationException(
            f"`--replica-groups` starts every group on this machine, but --num-nodes={args.num_nodes}. For groups on "
            "several machines, start each group with your own launcher (see docs/fault-tolerance.md)."
        )
    if args.strategy not in (None, "fault_tolerant"):
        raise MisconfigurationException(
            f"`--replica-groups` runs strategy='fault_tolerant', but --strategy={args.strategy!r} was given. "
            "Leave --strategy out."
        )
    # torchft's lighthouse and managers log every quorum at info; read when its extension first loads.
    os.environ.setdefault("RUST_LOG", "warn")
    try:
        import torchft  # noqa: F401
    except ImportError:
        raise MisconfigurationException(
            "`--replica-groups` needs torchft, which is not installed: `pip install 'fulmen[ft]'`."
        ) from None


def _export_flags(args: argparse.Namespace) -> None:
    for flag, variable in CLI_ENV.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[variable] = str(value)


def _processes_per_node(args: argparse.Namespace) -> int:
    devices = args.devices
    if devices is None or devices == "auto":
        if args.accelerator in ("cuda", "gpu") or (args.accelerator in (None, "auto") and _cuda_count() > 0):
            count = _cuda_count()
        else:
            count = 1
    elif devices.strip() == "-1":
        count = _cuda_count() if args.accelerator in ("cuda", "gpu", "auto", None) and _cuda_count() else os.cpu_count()
    elif "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        try:
            count = int(devices)
        except ValueError:
            raise MisconfigurationException(
                f"`--devices={devices!r}` is not valid. Accepted: a number, a list like '0,1', -1 or auto."
            ) from None
    if args.strategy in _SINGLE_PROCESS_STRATEGIES and args.strategy != "auto":
        return 1
    return max(count or 1, 1)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def _run_in_process(script: str, script_args: list[str]) -> int:
    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


def _run_with_torchrun(args: argparse.Namespace, processes: int, script_args: list[str]) -> int:
    from torch.distributed import run as torchrun

    port = args.main_port or (find_free_network_port() if args.num_nodes == 1 else 29400)
    torchrun_args = [
        f"--nproc-per-node={processes}",
        f"--nnodes={args.num_nodes}",
        f"--node-rank={args.node_rank}",
        f"--master-addr={args.main_address}",
        f"--master-port={port}",
        "--max-restarts=0",
        "--monitor-interval=0.2",
        args.script,
        *script_args,
    ]
    try:
        torchrun.main(torchrun_args)
    except Exception as err:  # ChildFailedError already printed each rank's error summary
        print(f"fulmen run: {err.__class__.__name__}: a rank failed; see its error above.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
