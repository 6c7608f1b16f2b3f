"""Hyper-parameters as typed, validated, serializable ``Params`` dataclasses.

Every algorithm module declares a frozen ``Params`` dataclass whose fields are its
options; each field is declared with :func:`option` (default, one line of help and
a rule). The rules run in ``__post_init__``, so a ``Params`` that exists is valid,
and a broken rule raises ``ValueError`` naming the field. The run configuration
(TOML files, ``bilevel-rl run -p``) and ``bilevel-rl config --example`` are built
from these declarations (:mod:`bilevel_rl.experiment.config`).

The leader's update is an :class:`Optimizer`: an optax alias by name, its learning
rate (constant or the ``a / (w + k)^{1/3}`` schedule of the SoBiRL paper's theory)
and the alias's other keyword arguments. It round-trips through TOML as an inline
table, e.g. ``optimizer = {name = "adam", learning_rate = 1e-3, b1 = 0.8}``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "Optimizer",
    "check_positive",
    "from_kwargs",
    "option",
]

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "rmsprop", "lion", "nadam", "lamb")
"""optax aliases an :class:`Optimizer` may name (each takes ``learning_rate``)."""

SCHEDULES = ("constant", "inverse_cube_root")
"""``constant``: ``lr``; ``inverse_cube_root``: ``lr / (offset + k)^{1/3}``."""

Rule = Callable[[str, Any], Any]


# ------------------------------------------------------------------------ rules


def check_positive(name: str, value, *, integer: bool = False, allow_zero=False):
    """Returns ``value`` (as int/float) or raises naming ``name``.

    Raises:
        TypeError: not a number.
        ValueError: not finite, not ``> 0`` (``>= 0`` with ``allow_zero``), or not
            an integer when ``integer``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name}: must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: must be a number, got {value!r}") from None
    if integer and number != int(number):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    ok = number >= 0 if allow_zero else number > 0
    if not (math.isfinite(number) and ok):
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: must be finite and {rule}, got {value!r}")
    return int(number) if integer else number


def positive(name, value):
    return check_positive(name, value)


def nonnegative(name, value):
    return check_positive(name, value, allow_zero=True)


def count(name, value):
    """An integer ``>= 1``."""
    return check_positive(name, value, integer=True)


def at_least(minimum: int) -> Rule:
    """An integer ``>= minimum``."""

    def rule(name, value):
        value = check_positive(name, value, integer=True, allow_zero=minimum <= 0)
        if value < minimum:
            raise ValueError(f"{name}: must be >= {minimum}, got {value}")
        return value

    return rule


def step_or_inf(name, value):
    """A step size ``> 0``, or ``inf`` (the exact / soft policy-iteration limit)."""
    if not isinstance(value, bool) and isinstance(value, int | float):
        if value == math.inf:
            return math.inf
    return check_positive(name, value)


def choice(*choices: str) -> Rule:
    def rule(name, value):
        if value not in choices:
            raise ValueError(f"{name}: must be one of {choices}, got {value!r}")
        return value

    return rule


def unit_interval(name, value):
    """A number in ``(0, 1]``."""
    value = check_positive(name, value)
    if value > 1.0:
        raise ValueError(f"{name}: must lie in (0, 1], got {value!r}")
    return value


def optional(rule: Rule) -> Rule:
    """``None`` or a value that passes ``rule``."""
    return lambda name, value: None if value is None else rule(name, value)


def flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name}: must be true or false, got {value!r}")
    return value


def option(default, help: str, rule: Rule | None = None, **field_kwargs):
    """A ``Params`` field: its default, one line of help and its rule.

    ``rule(name, value) -> value`` returns the (normalized) value or raises
    ``TypeError``/``ValueError`` naming the field.
    """
    meta = {"help": help, "rule": rule}  # an Optimizer default is frozen: shareable
    return dataclasses.field(default=default, metadata=meta, **field_kwargs)


def validate(params) -> None:
    """Runs every field's rule (call from ``__post_init__``)."""
    for f in dataclasses.fields(params):
        rule = f.metadata.get("rule")
        if rule is not None:
            value = rule(f.name, getattr(params, f.name))
            object.__setattr__(params, f.name, value)


# -------------------------------------------------------------------- optimizer


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The leader's update: an optax alias by name with its learning rate.

    Attributes:
        name: one of :data:`OPTIMIZERS` (``optax.<name>``).
        learning_rate: ``lr > 0``; the outer step size.
        schedule: ``"constant"`` or ``"inverse_cube_root"``:
            ``lr_k = lr / (offset + k)^{1/3}`` (the step of Stoc-SoBiRL's theory).
        offset: ``w >= 0`` of the schedule (``offset + k > 0`` is required).
        kwargs: the alias's other keyword arguments as ``((name, value), ...)``.
    """

    name: str = "sgd"
    learning_rate: float = 1e-2
    schedule: str = "constant"
    offset: float = 0.0
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(
                f"optimizer.name: must be one of {OPTIMIZERS}, got {self.name!r}"
            )
        lr = check_positive("optimizer.learning_rate", self.learning_rate)
        object.__setattr__(self, "learning_rate", lr)
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"optimizer.schedule: must be one of {SCHEDULES}, got {self.schedule!r}"
            )
        offset = check_positive("optimizer.offset", self.offset, allow_zero=True)
        if self.schedule == "inverse_cube_root" and offset == 0.0:
            raise ValueError("optimizer.offset: must be > 0 for inverse_cube_root")
        object.__setattr__(self, "offset", offset)
        kwargs = tuple(sorted(dict(self.kwargs).items()))
        known = set(inspect.signature(getattr(optax, self.name)).parameters)
        for key, value in kwargs:
            if key in ("learning_rate", "name") or key not in known:
                raise ValueError(
                    f"optimizer.{key}: not an argument of optax.{self.name}; known: "
                    f"{sorted(known - {'learning_rate'})}"
                )
            if not isinstance(value, bool | int | float | str):
                raise TypeError(f"optimizer.{key}: must be a scalar, got {value!r}")
        object.__setattr__(self, "kwargs", kwargs)

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> Optimizer:
        """From a TOML inline table ``{name = ..., learning_rate = ..., ...}``."""
        if not isinstance(table, Mapping):
            raise TypeError(f"optimizer: expected a table, got {table!r}")
        own = {f.name for f in dataclasses.fields(cls)} - {"kwargs"}
        fields = {k: v for k, v in table.items() if k in own}
        extra = tuple((k, v) for k, v in table.items() if k not in own)
        return cls(**fields, kwargs=extra)

    def to_dict(self) -> dict[str, Any]:
        """The inverse of :meth:`from_dict`."""
        out = {"name": self.name, "learning_rate": self.learning_rate}
        out.update(schedule=self.schedule, offset=self.offset)
        out.update(self.kwargs)
        return out

    def step_size(self, k) -> jnp.ndarray:
        """``lr_k`` at update count ``k`` (an int32 array inside jit)."""
        if self.schedule == "constant":
            return jnp.asarray(self.learning_rate)
        return self.learning_rate / (self.offset + k) ** (1.0 / 3.0)

    def build(self) -> optax.GradientTransformation:
        """``optax.<name>(learning_rate=lr or its schedule, **kwargs)``."""
        lr = self.learning_rate if self.schedule == "constant" else self.step_size
        return getattr(optax, self.name)(learning_rate=lr, **dict(self.kwargs))


def as_optimizer(name: str, value) -> Optimizer | optax.GradientTransformation:
    """An :class:`Optimizer`, a table for one, or an optax transformation as is."""
    if isinstance(value, Optimizer | optax.GradientTransformation):
        return value
    if isinstance(value, Mapping):
        return Optimizer.from_dict(value)
    raise TypeError(
        f"{name}: expected an Optimizer, a table {{name = ..., learning_rate = ...}} "
        f"or an optax.GradientTransformation, got {value!r}"
    )


def build_optimizer(optimizer) -> optax.GradientTransformation:
    """The optax transformation of a ``Params.optimizer`` value."""
    return optimizer.build() if isinstance(optimizer, Optimizer) else optimizer


# ------------------------------------------------------- make(...) from kwargs


def default_optimizer(params_cls) -> Optimizer | optax.GradientTransformation:
    """The default of ``params_cls.optimizer``."""
    return params_cls.__dataclass_fields__["optimizer"].default


def rename_deprecated(
    params_cls, values: Mapping[str, Any], aliases: Mapping[str, str]
) -> dict[str, Any]:
    """``values`` with deprecated names replaced by their new ones, with a warning.

    ``aliases`` maps an old name to its new one; a new name ``"optimizer.KEY"``
    sets ``KEY`` of the optimizer (merged onto the given or the default one).

    Raises:
        TypeError: an old optimizer name next to an ``optax`` transformation.
    """
    values, table = dict(values), {}
    for old, new in aliases.items():
        if old not in values:
            continue
        warnings.warn(
            f"{params_cls.__module__.rsplit('.', 1)[-1]}: {old} is deprecated; use "
            f"{new}",
            DeprecationWarning,
            stacklevel=5,  # the caller of algorithms.<name>.make
        )
        value = values.pop(old)
        if new.startswith("optimizer."):
            table[new.split(".", 1)[1]] = value
        else:
            values.setdefault(new, value)
    if values.get("optimizer", ...) is None:  # the old "default optimizer" value
        values.pop("optimizer")
    if table:
        base = values.get("optimizer", default_optimizer(params_cls))
        if isinstance(base, Mapping):
            base = Optimizer.from_dict(
                {**default_optimizer(params_cls).to_dict(), **base}
            )
        if not isinstance(base, Optimizer):
            raise TypeError(
                f"{', '.join(table)}: an old step-size option cannot be combined with "
                "an optax transformation; set the optimizer's learning rate"
            )
        values["optimizer"] = Optimizer.from_dict({**base.to_dict(), **table})
    return values


def from_kwargs(params_cls, kwargs: dict[str, Any], aliases: Mapping[str, str] = {}):
    """``params_cls(**kwargs)``, deprecated names mapped (:func:`rename_deprecated`).

    Raises:
        TypeError: an unknown keyword (named, with the known ones listed).
        ValueError: a field breaks its rule.
    """
    kwargs = rename_deprecated(params_cls, kwargs, aliases)
    known = {f.name for f in dataclasses.fields(params_cls)}
    for key in kwargs:
        if key not in known:
            raise TypeError(f"{key}: unknown parameter; known: {sorted(known)}")
    return params_cls(**kwargs)
