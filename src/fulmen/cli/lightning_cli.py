"""``LightningCLI``: a command line and YAML configs for a Trainer, a LightningModule and a LightningDataModule.

``python main.py fit --config config.yaml --trainer.max_epochs=5 --model.lr=0.01`` parses every
argument of the Trainer, the model and the datamodule from their signatures (jsonargparse),
merges the config files in order, seeds, instantiates the three, and runs the subcommand::

    __init__: parse -> seed_everything -> before_instantiate_classes -> instantiate_classes
              -> before_<subcommand> -> <subcommand> (trainer.fit, ...) -> after_<subcommand>

With ``run=False`` there are no subcommands: the CLI parses and instantiates, and the caller
uses ``cli.trainer``, ``cli.model``, ``cli.datamodule`` and ``cli.config``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from functools import partial, update_wrapper
from types import MethodType
from typing import Any

from fulmen.callbacks import Callback
from fulmen.checkpointing.safe_reading import safe_load
from fulmen.cli.optimizers import ReduceLROnPlateau, add_class_path, instantiate_class
from fulmen.cli.parser import ActionConfigFile, LightningArgumentParser, Namespace
from fulmen.cli.save_config import SaveConfigCallback
from fulmen.datamodule import LightningDataModule
from fulmen.module import LightningModule
from fulmen.trainer import Trainer
from fulmen.utilities.exceptions import MisconfigurationException
from fulmen.utilities.overrides import is_overridden
from fulmen.utilities.rank_zero import rank_zero_warn
from fulmen.utilities.seed import seed_everything

ArgsType = list[str] | dict[str, Any] | Namespace | None


class LightningCLI:
    """Parse the command line (or ``args``) and config files, build the Trainer, model and datamodule, run.

    ``model_class``/``datamodule_class``: the classes to configure (``None``: any subclass, chosen
    with ``--model=MyModel``/``class_path``); ``subclass_mode_model``/``subclass_mode_data`` accept
    subclasses of the given class too. ``save_config_callback``/``save_config_kwargs``: how the
    config is written beside the logs. ``trainer_defaults``: defaults for the Trainer's arguments
    (``callbacks`` are always added). ``seed_everything_default``: the default of
    ``--seed_everything`` (True: a random seed, recorded in the saved config; False: no seeding).
    ``parser_kwargs``: keyword arguments of the parsers, also per subcommand
    (``{"fit": {"default_config_files": [...]}}``). ``args``: arguments instead of ``sys.argv``
    (a list of strings, a dict or a Namespace). ``run=False``: parse and instantiate only.
    ``auto_configure_optimizers``: build ``--optimizer``/``--lr_scheduler`` into the model's
    ``configure_optimizers``. ``load_from_checkpoint_support``: with ``--ckpt_path``, the model's
    hyperparameters saved in the checkpoint become the defaults of ``--model.*``.
    """

    def __init__(
        self,
        model_class: type[LightningModule] | Callable[..., LightningModule] | None = None,
        datamodule_class: type[LightningDataModule] | Callable[..., LightningDataModule] | None = None,
        save_config_callback: type[SaveConfigCallback] | None = SaveConfigCallback,
        save_config_kwargs: dict[str, Any] | None = None,
        trainer_class: type[Trainer] | Callable[..., Trainer] = Trainer,
        trainer_defaults: dict[str, Any] | None = None,
        seed_everything_default: bool | int = True,
        parser_kwargs: dict[str, Any] | dict[str, dict[str, Any]] | None = None,
        parser_class: type[LightningArgumentParser] = LightningArgumentParser,
        subclass_mode_model: bool = False,
        subclass_mode_data: bool = False,
        args: ArgsType = None,
        run: bool = True,
        auto_configure_optimizers: bool = True,
        load_from_checkpoint_support: bool = True,
    ) -> None:
        _check_seed_default(seed_everything_default)
        self.save_config_callback = save_config_callback
        self.save_config_kwargs = dict(save_config_kwargs or {})
        self.trainer_class = trainer_class
        self.trainer_defaults = dict(trainer_defaults or {})
        self.seed_everything_default = seed_everything_default
        self.parser_kwargs = dict(parser_kwargs or {})
        if not (isinstance(parser_class, type) and issubclass(parser_class, LightningArgumentParser)):
            raise TypeError(
                f"`parser_class={parser_class!r}` must be LightningArgumentParser or a subclass of it "
                "(from fulmen.cli)."
            )
        self.parser_class = parser_class
        self.auto_configure_optimizers = auto_configure_optimizers

        self.model_class = model_class
        # No class given: any LightningModule (or datamodule), chosen in the config.
        self._model_class = model_class or LightningModule
        self.subclass_mode_model = model_class is None or subclass_mode_model
        self.datamodule_class = datamodule_class
        self._datamodule_class = datamodule_class or LightningDataModule
        self.subclass_mode_data = datamodule_class is None or subclass_mode_data

        main_kwargs, subparser_kwargs = self._setup_parser_kwargs(self.parser_kwargs)
        self.setup_parser(run, main_kwargs, subparser_kwargs)
        self.parse_arguments(self.parser, args)
        if load_from_checkpoint_support and run:
            self._model_defaults_from_checkpoint(args)

        self.subcommand: str | None = self.config["subcommand"] if run else None
        self._set_seed()
        self.before_instantiate_classes()
        self.instantiate_classes()
        self.after_instantiate_classes()
        if self.subcommand is not None:
            self._run_subcommand(self.subcommand)

    # ------------------------------------------------------------------------------ parsers
    def _setup_parser_kwargs(self, parser_kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        names = self.subcommands().keys()
        main_kwargs = {k: v for k, v in parser_kwargs.items() if k not in names}
        subparser_kwargs = {k: v for k, v in parser_kwargs.items() if k in names}
        return main_kwargs, subparser_kwargs

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """A parser with ``-c/--config`` (several, merged in order) and ``--print_config``."""
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c", "--config", action=ActionConfigFile, help="Path to a configuration file in json or yaml format."
        )
        return parser

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Build ``self.parser``: one parser per subcommand, or one parser when ``run=False``."""
        self.parser = self.init_parser(**main_kwargs)
        if add_subcommands:
            self._subcommand_method_arguments: dict[str, list[str]] = {}
            self._add_subcommands(self.parser, **subparser_kwargs)
        else:
            self._add_arguments(self.parser)

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--seed_everything``."""
        parser.add_argument(
            "--seed_everything",
            type=bool | int,
            default=self.seed_everything_default,
            help="An int seeds every generator with it before the classes are built; True picks a random seed "
            "(recorded in the saved config); False does not seed.",
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--trainer.*``, ``--model.*`` and ``--data.*``."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        defaults = {f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        parser.set_defaults(defaults)
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        # Without a datamodule class the data is optional: the model may bring its own dataloaders.
        parser.add_lightning_class_args(
            self._datamodule_class,
            "data",
            subclass_mode=self.subclass_mode_data,
            required=self.datamodule_class is not None,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Override to add arguments, links (``parser.link_arguments``) or callbacks to the parser."""

    def link_optimizers_and_lr_schedulers(self, parser: LightningArgumentParser) -> None:
        """Hand optimizers/schedulers that are not ``AUTOMATIC`` to the model argument they link to."""
        for key, (classes, link_to) in {**parser._optimizers, **parser._lr_schedulers}.items():
            if link_to == "AUTOMATIC":
                continue
            compute_fn = None if isinstance(classes, tuple) else partial(_class_path_dict, classes)
            parser.link_arguments(key, link_to, compute_fn=compute_fn)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """The subcommands and the Trainer method arguments the CLI fills itself (so they are not parsed)."""
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "test": {"model", "dataloaders", "datamodule"},
            "predict": {"model", "dataloaders", "datamodule"},
        }

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        self.add_default_arguments_to_parser(parser)
        self.add_core_arguments_to_parser(parser)
        self.add_arguments_to_parser(parser)
        if self.auto_configure_optimizers:
            if not parser._optimizers:  # unless add_arguments_to_parser added its own
                parser.add_optimizer_args()
            if not parser._lr_schedulers:
                parser.add_lr_scheduler_args()
        self.link_optimizers_and_lr_schedulers(parser)

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        subcommands = parser.add_subcommands()
        trainer_class = _class_of(self.trainer_class)
        for name in self.subcommands():
            description = _first_line(getattr(trainer_class, name).__doc__)
            subparser_kwargs = dict(kwargs.get(name, {}))
            subparser_kwargs.setdefault("description", description)
            subparser = self._prepare_subcommand_parser(trainer_class, name, **subparser_kwargs)
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=description)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = self.init_parser(**kwargs)
        self._add_arguments(parser)
        # The subcommand's own arguments: ``ckpt_path``, ``verbose``, ``return_predictions``, ...
        skip = self.subcommands()[subcommand]
        added = parser.add_method_arguments(klass, subcommand, skip=skip, fail_untyped=False)
        self._subcommand_method_arguments[subcommand] = added
        return parser

    def _parser(self, subcommand: str | None) -> LightningArgumentParser:
        if subcommand is None:
            return self.parser
        return self._subcommand_parsers[subcommand]

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse ``args`` (or the command line) into ``self.config``."""
        if args is not None and len(sys.argv) > 1:
            rank_zero_warn(
                "LightningCLI's `args` runs it from Python as if from the command line; the command line is ignored "
                f"then, to avoid mixing the two. Got sys.argv[1:]={sys.argv[1:]} and args={args}."
            )
        self.config = _parse(parser, args)

    def _model_defaults_from_checkpoint(self, args: ArgsType) -> None:
        """The checkpoint's model hyperparameters as defaults, so ``--ckpt_path`` rebuilds the model that saved it.

        The command line and config files still win. Subclass mode is left alone: the checkpoint
        does not record which class saved it.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if self.subclass_mode_model or not ckpt_path or not os.path.isfile(ckpt_path):
            return  # "best", "last" and remote paths are resolved by the Trainer, later
        hparams = safe_load(ckpt_path, map_location="cpu").get("hyper_parameters") or {}
        parser = self._parser(subcommand)
        known = parser.get_defaults().get("model") or {}
        defaults = {f"model.{k}": v for k, v in hparams.items() if k in known}
        if not defaults:
            return
        parser.set_defaults(defaults)
        self.config = _parse(self.parser, args)

    # ------------------------------------------------------------------------ instantiation
    def before_instantiate_classes(self) -> None:
        """Override to run code after parsing and seeding, before the classes are built."""

    def instantiate_classes(self) -> None:
        """Build the classes in the config: ``self.config_init``, then the model, datamodule and trainer."""
        self.config_init = self.parser.instantiate(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()

    def after_instantiate_classes(self) -> None:
        """Override to run code after the classes are built, before the subcommand runs."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the Trainer with the config's arguments (``kwargs`` win) and the CLI's callbacks."""
        extra_callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return self._instantiate_trainer(trainer_config, extra_callbacks)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if "callbacks" not in config:
            rank_zero_warn(
                f"`{_class_of(self.trainer_class).__qualname__}` has no `callbacks` argument: the CLI cannot add the "
                "config-saving callback nor the callbacks added with `add_lightning_class_args`."
            )
            return self.trainer_class(**config)
        given = config["callbacks"]
        config["callbacks"] = [] if given is None else list(given) if isinstance(given, list) else [given]
        config["callbacks"].extend(callbacks)
        if "callbacks" in self.trainer_defaults:
            default = self.trainer_defaults["callbacks"]
            config["callbacks"].extend(default if isinstance(default, list) else [default])
        if self.save_config_callback is not None and not config.get("fast_dev_run", False):
            config_callback = self.save_config_callback(
                self._parser(self.subcommand),
                self.config.get(str(self.subcommand), self.config),
                **self.save_config_kwargs,
            )
            config["callbacks"].append(config_callback)
        return self.trainer_class(**config)

    def _get(self, config: Namespace, key: str, default: Any = None) -> Any:
        """``key`` of this subcommand's part of ``config`` (of ``config`` itself when ``run=False``)."""
        return config.get(str(self.subcommand), config).get(key, default)

    # ---------------------------------------------------------------------------- optimizers
    @staticmethod
    def configure_optimizers(lightning_module: LightningModule, optimizer: Any, lr_scheduler: Any = None) -> Any:
        """What the model's ``configure_optimizers`` returns for ``--optimizer`` and ``--lr_scheduler``.

        Override it (as a staticmethod) to return another of ``configure_optimizers``' forms.
        """
        if lr_scheduler is None:
            return optimizer
        if isinstance(lr_scheduler, ReduceLROnPlateau):
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": lr_scheduler, "monitor": lr_scheduler.monitor},
            }
        return [optimizer], [lr_scheduler]

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """Give the model a ``configure_optimizers`` that builds the config's optimizer and scheduler."""
        if not self.auto_configure_optimizers or self.model is None:
            return
        parser = self._parser(subcommand)
        optimizer_keys = _automatic_keys(parser._optimizers)
        scheduler_keys = _automatic_keys(parser._lr_schedulers)
        if not optimizer_keys:
            return
        if len(optimizer_keys) > 1 or len(scheduler_keys) > 1:
            raise MisconfigurationException(
                f"`{type(self).__name__}` builds at most one AUTOMATIC optimizer and one AUTOMATIC lr_scheduler; got "
                f"optimizers {optimizer_keys} and lr_schedulers {scheduler_keys}. Link the others to model "
                "arguments with `link_to=`."
            )
        optimizer_init = self._init_of(parser._optimizers, optimizer_keys[0])
        if optimizer_init is None:  # registered automatically, not given: the model's own method stays
            return
        scheduler_init = self._init_of(parser._lr_schedulers, scheduler_keys[0]) if scheduler_keys else None
        if is_overridden(self.model, LightningModule, "configure_optimizers"):
            rank_zero_warn(
                f"`{type(self.model).__name__}.configure_optimizers` will be overridden by "
                f"`{type(self).__name__}.configure_optimizers`: the config gives an optimizer."
            )
        build = self.configure_optimizers

        def configure_optimizers(module: LightningModule) -> Any:
            optimizer = instantiate_class(module.parameters(), optimizer_init)
            scheduler = instantiate_class(optimizer, scheduler_init) if scheduler_init is not None else None
            return build(module, optimizer, scheduler)

        update_wrapper(configure_optimizers, build)
        self.model.configure_optimizers = MethodType(configure_optimizers, self.model)

    def _init_of(self, register: dict[str, tuple[Any, str]], key: str) -> dict[str, Any] | None:
        value = _as_dict(self._get(self.config_init, key))
        if not value:
            return None
        classes = register[key][0]
        return value if isinstance(classes, tuple) else add_class_path(classes, value)

    # ------------------------------------------------------------------------------- running
    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if seed is False:
            return
        seed = seed_everything(None if seed is True else seed, workers=True)
        if self.subcommand:
            self.config[self.subcommand]["seed_everything"] = seed
        else:
            self.config["seed_everything"] = seed

    def _run_subcommand(self, subcommand: str) -> None:
        before = getattr(self, f"before_{subcommand}", None)
        if callable(before):
            before()
        # A CLI subclass may define the subcommand itself (``def fit(self, model, **kwargs)``).
        fn = getattr(self, subcommand, getattr(self.trainer, subcommand))
        fn(**self._prepare_subcommand_kwargs(subcommand))
        after = getattr(self, f"after_{subcommand}", None)
        if callable(after):
            after()

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model}
        if self.datamodule is not None:
            kwargs["datamodule"] = self.datamodule
        config = self.config_init[subcommand]
        kwargs.update({key: config[key] for key in self._subcommand_method_arguments[subcommand]})
        return kwargs


def _parse(parser: LightningArgumentParser, args: ArgsType) -> Namespace:
    if isinstance(args, (dict, Namespace)):
        return parser.parse_object(args)
    return parser.parse_args(args)


def _automatic_keys(register: dict[str, tuple[Any, str]]) -> list[str]:
    return [key for key, (_, link_to) in register.items() if link_to == "AUTOMATIC"]


def _as_dict(value: Any) -> Any:
    return value.as_dict() if isinstance(value, Namespace) else value


def _class_path_dict(class_type: type, value: Any) -> dict[str, Any]:
    return add_class_path(class_type, _as_dict(value))


def _class_of(factory: Any) -> type:
    return factory if isinstance(factory, type) else Trainer


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0]


def _check_seed_default(value: Any) -> None:
    if not isinstance(value, (bool, int)):
        raise TypeError(
            f"`seed_everything_default={value!r}` is not valid. Accepted: True (a random seed), False (no seeding) "
            "or an int."
        )


__all__ = ["ArgsType", "LightningArgumentParser", "LightningCLI", "SaveConfigCallback"]


def _import_builtin_classes() -> None:
    """Import the built-in callbacks and profilers, so a config can name them briefly (``EarlyStopping``)."""
    for package_name in ("fulmen.callbacks", "fulmen.profilers"):
        try:
            package = importlib.import_module(package_name)
        except ImportError:
            continue
        for name in package.__all__:
            try:
                getattr(package, name)
            except (ImportError, AttributeError):  # a built-in not written yet, or an extra not installed
                pass


_import_builtin_classes()


def instantiate_module(class_type: type[Any], config: dict[str, Any]) -> Any:
    """Build ``class_type`` (or, when ``config`` has a ``_class_path``, that subclass of it) from ``config``.

    ``config`` holds the constructor's arguments as a CLI would parse them: nested classes as
    ``class_path``/``init_args`` dicts, types converted from their config form. Lightning's name
    for rebuilding a module from the hyperparameters a CLI run saved.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    if "_class_path" in config:
        parser.add_subclass_arguments(class_type, "module", fail_untyped=False)
        config = {
            "class_path": config["_class_path"],
            "dict_kwargs": {key: value for key, value in config.items() if key != "_class_path"},
        }
    else:
        parser.add_class_arguments(class_type, "module", fail_untyped=False)
    namespace = parser.parse_object({"module": config})
    return parser.instantiate(namespace).module
