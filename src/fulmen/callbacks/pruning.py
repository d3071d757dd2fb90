"""Model pruning with ``torch.nn.utils.prune``: zero out weights by magnitude (or at random) during training.

It exists because a network trained while being pruned keeps most of its accuracy at a fraction
of its non-zero weights. ``torch.nn.utils.prune`` reparametrises a pruned tensor ``weight`` as
``weight_orig * weight_mask`` (a parameter, a buffer and a forward pre-hook); this callback
decides when and how much to prune (by default at the end of every training epoch), optionally
resets the surviving weights to their initial values (the lottery ticket hypothesis), and makes
the pruning permanent when training ends.

How it survives exact resume:

* pruning scores are the current effective weights (``weight_orig * weight_mask``), not the value
  the pre-hook last left on the module, which depends on when the last forward pass ran;
* a checkpoint keeps, under this callback's state, the masks and ``*_orig`` tensors (its
  ``"state_dict"`` holds the pruned weights made permanent when ``make_pruning_permanent``, as in
  Lightning, so ``load_from_checkpoint`` needs no pruning code) and the initial weights the
  lottery ticket resets to;
* a resumed fit re-applies the saved masks before the weights and the optimizer state are
  loaded, so both land in the same tensors as before.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.utils.prune as torch_prune
from torch import Tensor, nn

from fulmen.callbacks.callback import Callback
from fulmen.module import LightningModule
from fulmen.utilities.exceptions import MisconfigurationException, invalid_argument
from fulmen.utilities.rank_zero import rank_zero_info
from fulmen.utilities.stages import TrainerFn

if TYPE_CHECKING:
    from fulmen.trainer import Trainer

_METHODS: dict[str, type[torch_prune.BasePruningMethod]] = {
    "ln_structured": torch_prune.LnStructured,
    "l1_unstructured": torch_prune.L1Unstructured,
    "random_structured": torch_prune.RandomStructured,
    "random_unstructured": torch_prune.RandomUnstructured,
}
#: Containers whose own parameters are not pruned when ``parameters_to_prune`` is left empty.
_CONTAINERS = (LightningModule, nn.Sequential, nn.ModuleList, nn.ModuleDict)

ParameterList = Sequence[tuple[nn.Module, str]]


def _is_pruning_method(value: Any) -> bool:
    return inspect.isclass(value) and issubclass(value, torch_prune.BasePruningMethod)


def _effective(module: nn.Module, name: str) -> Tensor:
    """The tensor the module computes with: ``orig * mask`` once pruned, the parameter before."""
    orig = getattr(module, name + "_orig", None)
    if orig is None:
        return getattr(module, name).detach()
    mask = getattr(module, name + "_mask")
    return (orig * mask.to(orig.dtype)).detach()


def _stored(module: nn.Module, name: str) -> Tensor:
    """The tensor that holds the values (``*_orig`` once pruned)."""
    return getattr(module, name + "_orig") if hasattr(module, name + "_orig") else getattr(module, name)


class ModelPruning(Callback):
    """Prune the model's weights during training with ``torch.nn.utils.prune``.

    Args:
        pruning_fn: ``"l1_unstructured"``, ``"random_unstructured"``, ``"ln_structured"``,
            ``"random_structured"``, or a ``torch.nn.utils.prune.BasePruningMethod`` subclass
            (the class, with ``use_global_unstructured=True``).
        parameters_to_prune: ``[(module, "weight"), ...]``; empty: every ``parameter_names``
            parameter of every non-container module.
        parameter_names: ``"weight"`` and/or ``"bias"`` (default both).
        use_global_unstructured: rank all ``parameters_to_prune`` together (unstructured methods only).
        amount: what to prune each time: a fraction in [0, 1] of the remaining weights, a count,
            or ``epoch -> amount``.
        apply_pruning: ``True``/``False``, or ``epoch -> bool``.
        make_pruning_permanent: remove the reparametrisation when training ends, and store
            permanent weights in every checkpoint's ``"state_dict"``.
        use_lottery_ticket_hypothesis: after pruning, reset the remaining weights to their
            values when fit started (or ``epoch -> bool``).
        resample_parameters: with the lottery ticket, draw new initial values instead.
        pruning_dim: the dimension structured methods prune along.
        pruning_norm: the norm of ``"ln_structured"``.
        verbose: 0 silent, 1 the overall sparsity after each pruning, 2 also per parameter.
        prune_on_train_epoch_end: prune at the end of the training epoch (``True``) or of validation.

    Example::

        trainer = Trainer(callbacks=[ModelPruning("l1_unstructured", amount=0.2)])
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(
        self,
        pruning_fn: str | type[torch_prune.BasePruningMethod],
        parameters_to_prune: ParameterList = (),
        parameter_names: list[str] | None = None,
        use_global_unstructured: bool = True,
        amount: int | float | Callable[[int], int | float] = 0.5,
        apply_pruning: bool | Callable[[int], bool] = True,
        make_pruning_permanent: bool = True,
        use_lottery_ticket_hypothesis: bool | Callable[[int], bool] = True,
        resample_parameters: bool = False,
        pruning_dim: int | None = None,
        pruning_norm: int | float | None = None,
        verbose: int = 0,
        prune_on_train_epoch_end: bool = True,
    ) -> None:
        self._parameter_names = tuple(parameter_names or self.PARAMETER_NAMES)
        for name in self._parameter_names:
            if name not in self.PARAMETER_NAMES:
                raise invalid_argument("parameter_names", parameter_names, f"a list drawn from {self.PARAMETER_NAMES}")
        for flag, value in (
            ("use_global_unstructured", use_global_unstructured),
            ("make_pruning_permanent", make_pruning_permanent),
            ("resample_parameters", resample_parameters),
            ("prune_on_train_epoch_end", prune_on_train_epoch_end),
        ):
            if not isinstance(value, bool):
                raise invalid_argument(flag, value, (True, False))
        for flag, value in (
            ("apply_pruning", apply_pruning),
            ("use_lottery_ticket_hypothesis", use_lottery_ticket_hypothesis),
        ):
            if not isinstance(value, bool) and not callable(value):
                raise invalid_argument(flag, value, "True, False or a function epoch -> bool")
        if isinstance(amount, bool) or not (isinstance(amount, (int, float)) or callable(amount)):
            raise invalid_argument("amount", amount, "a fraction in [0, 1], a number of weights, or epoch -> amount")
        if isinstance(amount, float) and not 0 <= amount <= 1:
            raise invalid_argument("amount", amount, "a float in [0, 1] (a fraction), an int >= 0, or epoch -> amount")
        if isinstance(amount, int) and amount < 0:
            raise invalid_argument(
                "amount", amount, "an int >= 0 (a number of weights), a fraction, or epoch -> amount"
            )
        if verbose not in (0, 1, 2) or isinstance(verbose, bool):
            raise invalid_argument("verbose", verbose, (0, 1, 2))

        kwargs: dict[str, Any] = {}
        if isinstance(pruning_fn, str):
            key = pruning_fn.lower()
            if key not in _METHODS:
                raise invalid_argument("pruning_fn", pruning_fn, f"{sorted(_METHODS)} or a BasePruningMethod subclass")
            if key.endswith("_structured"):
                if pruning_dim is None:
                    raise invalid_argument("pruning_dim", pruning_dim, f"an int: {key!r} prunes along a dimension")
                kwargs["dim"] = pruning_dim
                if key == "ln_structured":
                    if pruning_norm is None:
                        raise invalid_argument(
                            "pruning_norm", pruning_norm, "an int, float, 'fro' or inf for 'ln_structured'"
                        )
                    kwargs["n"] = pruning_norm
            method = _METHODS[key]
        elif _is_pruning_method(pruning_fn):
            if not use_global_unstructured:
                raise invalid_argument(
                    "use_global_unstructured", use_global_unstructured, "True when `pruning_fn` is a BasePruningMethod"
                )
            method = pruning_fn
        else:
            raise invalid_argument(
                "pruning_fn", pruning_fn, f"one of {sorted(_METHODS)} or a BasePruningMethod subclass (the class)"
            )
        if use_global_unstructured and getattr(method, "PRUNING_TYPE", None) != "unstructured":
            raise invalid_argument(
                "pruning_fn",
                pruning_fn,
                f"an unstructured method with `use_global_unstructured=True` ({method.__name__} is "
                f"{getattr(method, 'PRUNING_TYPE', None)!r}); set use_global_unstructured=False for structured pruning",
            )
        self.pruning_fn = method
        self._method_kwargs = kwargs
        self._use_global_unstructured = use_global_unstructured
        self._given_parameters = parameters_to_prune
        self._parameters_to_prune: list[tuple[nn.Module, str]] = []
        self.amount = amount
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        self._verbose = verbose
        #: Per entry of ``parameters_to_prune``, its value when fit started (the lottery ticket).
        self._original: list[Tensor] | None = None

    # ------------------------------------------------------------------ which parameters
    def filter_parameters_to_prune(self, parameters_to_prune: ParameterList = ()) -> ParameterList:
        """Override to choose among the parameters :meth:`sanitize_parameters_to_prune` found."""
        return parameters_to_prune

    @staticmethod
    def sanitize_parameters_to_prune(
        pl_module: LightningModule, parameters_to_prune: ParameterList = (), parameter_names: Sequence[str] = ()
    ) -> list[tuple[nn.Module, str]]:
        """``parameters_to_prune`` checked against the model, or every matching parameter when empty."""
        names = tuple(parameter_names) or ModelPruning.PARAMETER_NAMES
        modules = [m for m in pl_module.modules() if not isinstance(m, _CONTAINERS)]
        if not parameters_to_prune:
            return [
                (m, n)
                for n in names
                for m in modules
                if isinstance(getattr(m, n, None), nn.Parameter) or hasattr(m, n + "_orig")
            ]
        if not isinstance(parameters_to_prune, (list, tuple)) or not all(
            isinstance(item, (list, tuple))
            and len(item) == 2
            and isinstance(item[0], nn.Module)
            and isinstance(item[1], str)
            for item in parameters_to_prune
        ):
            raise invalid_argument(
                "parameters_to_prune", parameters_to_prune, "a list of (nn.Module, parameter name) pairs, or empty"
            )
        known = {id(m) for m in modules}
        missing_modules = [type(m).__name__ for m, _ in parameters_to_prune if id(m) not in known]
        missing_names = [n for m, n in parameters_to_prune if id(m) in known and not hasattr(m, n)]
        if missing_modules or missing_names:
            raise MisconfigurationException(
                f"`parameters_to_prune` names what the model does not have: modules {missing_modules}, parameters "
                f"{missing_names}. Accepted: (module, name) pairs of modules inside the LightningModule."
            )
        return [(m, n) for m, n in parameters_to_prune]

    # ---------------------------------------------------------------------------- pruning
    def apply_pruning(self, amount: int | float) -> None:
        """Prune ``parameters_to_prune`` by ``amount`` now."""
        before = [self._sparsity(m, n) for m, n in self._parameters_to_prune] if self._verbose else []
        scores = {(m, n): _effective(m, n) for m, n in self._parameters_to_prune}
        if self._use_global_unstructured:
            accepted = set(inspect.signature(self.pruning_fn).parameters) - {"self"}
            kwargs = {k: v for k, v in {**self._method_kwargs, "amount": amount}.items() if k in accepted}
            torch_prune.global_unstructured(
                self._parameters_to_prune, pruning_method=self.pruning_fn, importance_scores=scores, **kwargs
            )
        else:
            # The random methods take no scores.
            takes_scores = "importance_scores" in inspect.signature(self.pruning_fn.apply).parameters
            for module, name in self._parameters_to_prune:
                extra = {"importance_scores": scores[(module, name)]} if takes_scores else {}
                self.pruning_fn.apply(module, name, amount=amount, **self._method_kwargs, **extra)
        if self._verbose:
            self._report(before, [self._sparsity(m, n) for m, n in self._parameters_to_prune], amount)

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Reset the weights that survived pruning to their values when fit started (or new draws).

        Frankle & Carbin (2019): a pruned network retrained from its original initialisation
        trains as well as the full one. The masks stay; only the values under them change.
        """
        if self._original is None:
            return
        originals = list(self._original)
        if self._resample_parameters:
            originals = self._resampled()
        with torch.no_grad():
            for (module, name), value in zip(self._parameters_to_prune, originals):
                target = _stored(module, name)
                target.copy_(value.to(device=target.device, dtype=target.dtype))

    def _resampled(self) -> list[Tensor]:
        fresh: dict[int, nn.Module] = {}
        values = []
        for module, name in self._parameters_to_prune:
            if id(module) not in fresh:
                fresh[id(module)] = _reinitialised_copy(module)
            copy_ = fresh[id(module)]
            values.append(getattr(copy_, name).detach() if copy_ is not None else self._original[len(values)])
        return values

    def make_pruning_permanent(self, module: nn.Module) -> None:
        """Remove the reparametrisation everywhere in ``module``: ``weight`` becomes ``orig * mask`` again."""
        for submodule in module.modules():
            for hook in list(submodule._forward_pre_hooks.values()):
                if isinstance(hook, torch_prune.BasePruningMethod):
                    torch_prune.remove(submodule, hook._tensor_name)

    def _run_pruning(self, epoch: int) -> None:
        prune = self._apply_pruning(epoch) if callable(self._apply_pruning) else self._apply_pruning
        amount = self.amount(epoch) if callable(self.amount) else self.amount
        if not prune or not amount:
            return
        self.apply_pruning(amount)
        lottery = self._use_lottery_ticket_hypothesis
        if lottery(epoch) if callable(lottery) else lottery:
            self.apply_lottery_ticket_hypothesis()

    @staticmethod
    def _sparsity(module: nn.Module, name: str) -> tuple[int, int]:
        mask = getattr(module, name + "_mask", None)
        if mask is None:
            return 0, getattr(module, name).numel()
        return int((mask == 0).sum()), mask.numel()

    def _report(self, before: list[tuple[int, int]], after: list[tuple[int, int]], amount: int | float) -> None:
        total = sum(n for _, n in after)
        zeros_before, zeros_after = sum(z for z, _ in before), sum(z for z, _ in after)
        rank_zero_info(
            f"Applied `{self.pruning_fn.__name__}` (amount={amount}). Pruned: {zeros_before}/{total} "
            f"({zeros_before / total:.2%}) -> {zeros_after}/{total} ({zeros_after / total:.2%})"
        )
        if self._verbose == 2:
            for (module, name), (z0, n0), (z1, n1) in zip(self._parameters_to_prune, before, after):
                rank_zero_info(f"  {type(module).__name__}.{name}: {z0 / n0:.2%} -> {z1 / n1:.2%} pruned")

    # ------------------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        found = self.sanitize_parameters_to_prune(pl_module, self._given_parameters, self._parameter_names)
        self._parameters_to_prune = list(self.filter_parameters_to_prune(found))
        if self._use_lottery_ticket_hypothesis:
            self._original = [_stored(m, n).detach().clone() for m, n in self._parameters_to_prune]

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._prune_on_train_epoch_end:
            self._run_pruning(pl_module.current_epoch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._prune_on_train_epoch_end and not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self._run_pruning(pl_module.current_epoch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._make_pruning_permanent:
            self.make_pruning_permanent(pl_module)

    # ------------------------------------------------------------------------ checkpoints
    def _names(self, pl_module: nn.Module) -> list[str]:
        qualified = {id(m): q for q, m in pl_module.named_modules()}
        return [f"{qualified[id(m)]}.{n}".lstrip(".") for m, n in self._parameters_to_prune]

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        state_dict = checkpoint["state_dict"]
        bases = (k[: -len("_mask")] for k in state_dict if k.endswith("_mask"))
        pruned = sorted(base for base in bases if base + "_orig" in state_dict)
        entry: dict[str, Any] = {"pruned": pruned}
        if self._make_pruning_permanent and pruned:
            # Loadable without pruning code: `weight` instead of `weight_orig` and `weight_mask`.
            permanent = dict(state_dict)
            raw = {}
            for name in pruned:
                orig, mask = permanent.pop(name + "_orig"), permanent.pop(name + "_mask")
                raw[name + "_orig"], raw[name + "_mask"] = orig, mask
                permanent[name] = orig * mask.to(orig.dtype)
            checkpoint["state_dict"] = permanent
            entry["reparametrized"] = raw
        if self._original is not None and self._parameters_to_prune:
            entry["original"] = dict(zip(self._names(pl_module), self._original))
        checkpoint.setdefault("callbacks", {}).setdefault(self.state_key, {}).update(entry)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # evaluation loads the permanent weights like any other
        entry = checkpoint.get("callbacks", {}).get(self.state_key)
        if not entry:
            return
        state_dict = checkpoint["state_dict"]
        raw = entry.get("reparametrized", {})
        if raw:
            state_dict = {k: v for k, v in state_dict.items() if k not in entry["pruned"]}
            state_dict.update(raw)
            checkpoint["state_dict"] = state_dict
        # Reparametrise as the saved model was, so that the weights and the optimizer state load
        # into `*_orig` (the same Parameter object the optimizer already holds).
        for name in entry["pruned"]:
            owner, _, tensor = name.rpartition(".")
            module = pl_module.get_submodule(owner)
            mask = state_dict[name + "_mask"]
            if hasattr(module, tensor + "_mask"):
                getattr(module, tensor + "_mask").copy_(mask)
            else:
                torch_prune.custom_from_mask(module, tensor, mask.to(_stored(module, tensor).device))
        original = entry.get("original")
        if original is not None and self._parameters_to_prune:
            self._original = [original[name].clone() for name in self._names(pl_module)]


def _reinitialised_copy(module: nn.Module) -> nn.Module | None:
    """A copy of ``module`` with fresh initial values (``reset_parameters``), or None when it has no initialiser.

    A pruned module holds ``weight`` as a plain attribute computed by the pre-hook, which
    ``deepcopy`` refuses while it is part of a graph: it is swapped for a detached copy meanwhile.
    """
    if not callable(getattr(module, "reset_parameters", None)):
        return None
    computed = {k: v for k, v in module.__dict__.items() if isinstance(v, Tensor) and not v.is_leaf}
    try:
        for key, value in computed.items():
            module.__dict__[key] = value.detach().clone()
        fresh = copy.deepcopy(module)
    finally:
        module.__dict__.update(computed)
    fresh.reset_parameters()
    return fresh
