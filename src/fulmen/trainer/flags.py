"""The Trainer's flags, written once.

Everything else that lists the flags is derived from ``FLAGS`` or checked against it:
``Trainer.__init__`` hands them on by these names (its explicit signature stays for IDEs and
``tests/trainer/test_flags_written_once.py`` checks it against this list), ``PL_TRAINER_*`` /
``FULMEN_TRAINER_*`` defaults read these names, the flags the Trainer exposes as attributes
(``trainer.max_epochs``) are those marked ``attribute``, and the tables in ``docs/trainer.md``
are rendered from the ``group``/``shown``/``meaning`` columns (``python -m fulmen.trainer.flags``
prints them; a test compares).
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Who takes the flag: the strategy resolver (shared with Lite), ``configuration.configure``, or
#: the Trainer itself (callbacks, profiler).
STRATEGY, CONFIG, TRAINER = "strategy", "config", "trainer"

#: The sections of docs/trainer.md that list flags, in order.
GROUPS = ("hardware", "how long", "validation", "optimization", "data", "output")


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str
    default: Any
    group: str
    #: What the docs say the flag does (for hardware flags: the values it takes).
    meaning: str
    #: The default as the docs show it (what an unset flag means), when it is not ``default`` itself.
    shown: str | None = None
    taken_by: str = CONFIG
    #: Exposed as a Trainer attribute of the same name (read and written through ``trainer.config``).
    attribute: bool = False

    def shown_default(self) -> str:
        return self.shown if self.shown is not None else f"`{self.default!r}`".replace("'", '"')


_LIMIT = "a float is a fraction of the loader, an int a number of batches"
_DEFAULT_CALLBACK = "the default callbacks"

FLAGS: tuple[Flag, ...] = (
    # hardware: one resolver turns these into one Strategy, for the Trainer and Lite alike
    Flag("accelerator", "auto", "hardware", '`"cpu"`, `"gpu"`/`"cuda"`, `"mps"`, `"auto"` (default: the GPU when '
         "there is one), an `Accelerator`", taken_by=STRATEGY),
    Flag("strategy", "auto", "hardware", '`"auto"`, `"ddp"` (re-runs the script per rank), `"ddp_spawn"` '
         '(torch.multiprocessing), `"dp"` (CUDA), `"ddp_sharded"` (optimizer state sharded, ZeRO-1), `"fsdp"`, '
         '`"deepspeed"` and its stages, or a `Strategy` instance such as '
         '`FSDPStrategy(sharding_strategy="SHARD_GRAD_OP")`', taken_by=STRATEGY),
    Flag("devices", "auto", "hardware", 'an int, a list of indices, `"2"`, `"1, 4"`, `-1` (all), `"auto"`',
         taken_by=STRATEGY),
    Flag("num_nodes", None, "hardware", "an int", taken_by=STRATEGY),
    Flag("precision", None, "hardware", '`"64-true"`, `"32-true"`, `"16-mixed"`, `"bf16-mixed"`, `"16-true"`, '
         '`"bf16-true"`; the older `64`, `32`, `16`, `"bf16"`', taken_by=STRATEGY),
    Flag("logger", None, "output", '`True`: TensorBoard (CSV without tensorboard); `False`; a `Logger` or a list; '
         "see [Callbacks](callbacks.md) and `fulmen.loggers`", shown="`True`"),
    Flag("callbacks", None, "output", "a `Callback` or a list; the progress bar, model summary and checkpointing "
         "are added unless turned off", taken_by=TRAINER),
    Flag("fast_dev_run", False, "how long", "`True` or `n`: run `n` batches of each loop, no logging or "
         "checkpoints, to find bugs fast", attribute=True),
    Flag("max_epochs", None, "how long", "epochs to train; 1000 when no other limit is set, `-1` for no limit",
         attribute=True),
    Flag("min_epochs", None, "how long", "early stopping cannot stop before this", attribute=True),
    Flag("max_steps", -1, "how long", "optimizer steps to train (`-1`: no limit)", attribute=True),
    Flag("min_steps", None, "how long", "as `min_epochs`, in steps", attribute=True),
    Flag("max_time", None, "how long", '`"DD:HH:MM:SS"`, a `timedelta` or a dict like `{"hours": 4}`'),
    Flag("limit_train_batches", None, "how long", _LIMIT, shown="`1.0`", attribute=True),
    Flag("limit_val_batches", None, "how long", _LIMIT, shown="`1.0`", attribute=True),
    Flag("limit_test_batches", None, "how long", _LIMIT, shown="`1.0`", attribute=True),
    Flag("limit_predict_batches", None, "how long", _LIMIT, shown="`1.0`", attribute=True),
    Flag("overfit_batches", 0.0, "how long", "train and validate on the same few batches, without shuffling",
         attribute=True),
    Flag("val_check_interval", None, "validation", "a float: validate that fraction of the way through each "
         "epoch; an int: every that many batches", shown="`1.0`", attribute=True),
    Flag("check_val_every_n_epoch", 1, "validation", "validate every n epochs; `None` counts "
         "`val_check_interval` batches across epochs", attribute=True),
    Flag("num_sanity_val_steps", None, "validation", "validation batches run before training, to fail fast; "
         "`-1` for all, `0` for none", shown="`2`", attribute=True),
    Flag("log_every_n_steps", None, "output", "how often `self.log(..., on_step=True)` values reach the loggers",
         shown="`50`", attribute=True),
    Flag("enable_checkpointing", None, "output", _DEFAULT_CALLBACK, shown="`True`"),
    Flag("enable_progress_bar", None, "output", _DEFAULT_CALLBACK, shown="`True`"),
    Flag("enable_model_summary", None, "output", _DEFAULT_CALLBACK, shown="`True`"),
    Flag("accumulate_grad_batches", 1, "optimization", "step the optimizer every n batches (the loss is divided "
         "by n)", attribute=True),
    Flag("gradient_clip_val", None, "optimization", "clip gradients at this value before each step",
         attribute=True),
    Flag("gradient_clip_algorithm", None, "optimization", '`"norm"` (what `None` means) or `"value"`',
         attribute=True),
    Flag("deterministic", None, "optimization", '`True` uses deterministic torch algorithms; `"warn"` only warns'),
    Flag("benchmark", None, "optimization", "cuDNN's algorithm search"),
    Flag("inference_mode", True, "optimization", "evaluate under `torch.inference_mode` (`False`: `no_grad`)",
         attribute=True),
    Flag("use_distributed_sampler", True, "data", "shard each loader over the processes, keeping your `shuffle` "
         "and `drop_last`", attribute=True),
    Flag("profiler", None, "output", '`"simple"`, `"advanced"`, `"pytorch"` or a `Profiler`', taken_by=TRAINER),
    Flag("detect_anomaly", False, "optimization", "torch's autograd anomaly detection", attribute=True),
    Flag("barebones", False, "output", "turn off everything that costs speed: logging, progress bar, summary, "
         "checkpoints, sanity check", attribute=True),
    Flag("plugins", None, "hardware", "a `ClusterEnvironment` (`SLURMEnvironment`, `TorchElasticEnvironment`, "
         "`KubeflowEnvironment`, `LSFEnvironment`, your own subclass), a `Precision`, a `CheckpointIO` "
         "(`TorchCheckpointIO`, `AsyncCheckpointIO`), a `LayerSync` (`TorchSyncBatchNorm`), or a list",
         taken_by=STRATEGY),
    Flag("sync_batchnorm", False, "optimization", "BatchNorm statistics across processes (CUDA)", attribute=True),
    Flag("reload_dataloaders_every_n_epochs", 0, "data", "ask the module or datamodule for new loaders every n "
         "epochs", attribute=True),
    Flag("default_root_dir", None, "output", "where logs and checkpoints go when nothing else says",
         shown="the working directory"),
    Flag("enable_autolog_hparams", True, "output", "send the saved hyperparameters to the loggers"),
)  # fmt: skip

NAMES: tuple[str, ...] = tuple(flag.name for flag in FLAGS)
BY_NAME: dict[str, Flag] = {flag.name: flag for flag in FLAGS}
#: The flags the Trainer exposes as attributes of the same name.
ATTRIBUTES: tuple[str, ...] = tuple(flag.name for flag in FLAGS if flag.attribute)
#: The flags the Trainer leaves out of ``configure``; the resolver takes ``STRATEGY`` ones.
STRATEGY_FLAGS: tuple[str, ...] = tuple(flag.name for flag in FLAGS if flag.taken_by == STRATEGY)


def split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Trainer's arguments as (the resolver's, ``configure``'s); the Trainer's own ones are in neither."""
    if set(values) != set(NAMES):
        raise TypeError(f"Trainer flags differ from fulmen.trainer.flags.FLAGS: {sorted(set(values) ^ set(NAMES))}")
    strategy = {name: values[name] for name in STRATEGY_FLAGS}
    config = {flag.name: values[flag.name] for flag in FLAGS if flag.taken_by == CONFIG}
    config["profiler"] = values["profiler"]  # barebones refuses a profiler: configure checks it
    return strategy, config


def markdown_table(group: str) -> str:
    """The docs table of one group; rows with the same default and meaning are merged into one."""
    hardware = group == "hardware"
    lines = ["| flag | values |" if hardware else "| flag | default | meaning |"]
    lines.append("| --- | --- |" if hardware else "| --- | --- | --- |")
    rows: list[tuple[list[str], Flag]] = []
    for flag in sorted((f for f in FLAGS if f.group == group), key=_doc_order):
        if (
            rows
            and not hardware
            and (rows[-1][1].shown_default(), rows[-1][1].meaning)
            == (
                flag.shown_default(),
                flag.meaning,
            )
        ):
            rows[-1][0].append(flag.name)
        else:
            rows.append(([flag.name], flag))
    for names, flag in rows:
        label = ", ".join(f"`{name}`" for name in names)
        lines.append(
            f"| {label} | {flag.meaning} |" if hardware else f"| {label} | {flag.shown_default()} | {flag.meaning} |"
        )
    return "\n".join(lines)


#: The order the docs list flags in, where it differs from the signature's.
_DOC_ORDER = (
    "accelerator", "devices", "strategy", "precision", "num_nodes", "plugins",
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches", "limit_val_batches",
    "limit_test_batches", "limit_predict_batches", "overfit_batches", "fast_dev_run",
    "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps",
    "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm", "deterministic", "benchmark",
    "detect_anomaly", "inference_mode", "sync_batchnorm",
    "use_distributed_sampler", "reload_dataloaders_every_n_epochs",
    "default_root_dir", "logger", "callbacks", "log_every_n_steps", "enable_progress_bar", "enable_model_summary",
    "enable_checkpointing", "profiler", "enable_autolog_hparams", "barebones",
)  # fmt: skip


def _doc_order(flag: Flag) -> int:
    return _DOC_ORDER.index(flag.name)


if __name__ == "__main__":
    for group in GROUPS:
        print(f"<!-- flags: {group} -->\n{markdown_table(group)}\n")
