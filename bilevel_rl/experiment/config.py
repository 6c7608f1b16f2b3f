"""Run configurations: the algorithms and suites by name, TOML files, validation.

A :class:`RunConfig` names an algorithm and a problem suite and sets sizes, seeds
and the options of the algorithm (the fields of its module's ``Params``) and of the
suite's generator. It is what ``bilevel-rl run`` executes and what it saves as
``config.toml`` in the output folder (read back by ``--resume``). Every rule is
checked here, outside jit, and a broken rule raises :class:`ConfigError` naming the
key::

    cfg = load_config("run.toml")               # or RunConfig() for the main job
    problems, keys = build_problems(cfg)        # a batch of batch * seeds runs
    solver = build_solver(cfg)

The algorithm options are the fields of ``bilevel_rl.algorithms.<name>.Params``
(an ``optimizer`` is a table ``{name = "adam", learning_rate = 1e-3, ...}`` merged
onto the default one; an option whose default is unset is omitted). A suite's
options are the keyword arguments of its generator whose defaults are scalars.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import tomllib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from bilevel_rl.algorithms import (
    aihf,
    drlhf,
    exact,
    hpgd,
    m_sobirl,
    parl,
    pbrl,
    sobirl,
    stoc_sobirl,
)
from bilevel_rl.algorithms.params import Optimizer, rename_deprecated
from bilevel_rl.devices import physical_memory
from bilevel_rl.suites import four_rooms_problem, shaping_problem, sobirl_synthetic
from bilevel_rl.suites.checks import MEMORY_FRACTION
from bilevel_rl.suites.rlhf import alignment_problem, tabular_rlhf_problem

DTYPES = ("float32", "float64")
KINDS = {
    "trajectories": "a trajectory-level upper loss (model-free algorithms)",
    "alignment": "demonstrations and preferences (AlignmentData)",
    "incentive": "an incentive-design upper level (IncentiveData)",
}


class ConfigError(ValueError):
    """A configuration that breaks a rule; the message names the key."""


ALGORITHMS: dict[str, ModuleType] = {
    module.__name__.rsplit(".", 1)[-1]: module
    for module in (exact, m_sobirl, pbrl, parl, sobirl, stoc_sobirl, aihf, drlhf, hpgd)
}
"""Algorithm modules by name; each has ``DESCRIPTION``, ``NEEDS``, ``Params``,
``estimator`` and ``make``."""


@dataclasses.dataclass(frozen=True)
class Suite:
    """A problem suite by name.

    Attributes:
        description: one line for ``bilevel-rl list``.
        build: ``generator(key, **params, dtype=...) -> BilevelProblem``.
        provides: the :data:`KINDS` its problems provide.
    """

    description: str
    build: Callable[..., Any]
    provides: tuple[str, ...] = ()

    def defaults(self) -> dict[str, Any]:
        """The configurable keyword arguments and their defaults."""
        params = inspect.signature(self.build).parameters.values()
        return {
            p.name: p.default
            for p in params
            if p.kind is p.KEYWORD_ONLY
            and p.name != "dtype"
            and isinstance(p.default, bool | int | float | str)
        }


SUITES: dict[str, Suite] = {
    "sobirl": Suite(
        "SoBiRL synthetic instances: quadratic upper level, optimum f* = 1 "
        "(docs/math.md §3)",
        sobirl_synthetic,
    ),
    "shaping": Suite(
        "random MDPs, tanh-feature reward shaping, non-convex trajectory loss",
        shaping_problem,
        provides=("trajectories",),
    ),
    "four_rooms": Suite(
        "HPGD Four-Rooms incentive design (104 cells, 4 actions, docs/math.md §9)",
        four_rooms_problem,
        provides=("incentive",),
    ),
    "rlhf": Suite(
        "tabular RLHF (docs/math.md §9): linear reward model, Bradley-Terry "
        "trajectory pairs",
        tabular_rlhf_problem,
        provides=("trajectories",),
    ),
    "alignment": Suite(
        "tabular AIHF data: expert demonstrations + per-state comparisons "
        "(docs/math.md §6)",
        alignment_problem,
        provides=("alignment",),
    ),
}


def algorithm_options(name: str) -> list[dataclasses.Field]:
    """The fields of ``algorithms.<name>.Params`` (default, help, rule)."""
    return list(dataclasses.fields(ALGORITHMS[name].Params))


def _key(default, help: str, *, nonnegative: bool = False):
    return dataclasses.field(
        default=default, metadata={"help": help, "nonnegative": nonnegative}
    )


HISTORY_BYTES_PER_ITERATION = 16 * 8
"""Bound on the history one run records per iteration (<= 16 float64 metrics)."""

HISTORY_BUDGET = 4_000_000
"""``record_every = 0`` records at most about this many run-iterations per-run
(``runs * iterations / record_every``; ~250 MB on disk for 8 float64 metrics)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One ``bilevel-rl run``; the defaults are the main job (M-SoBiRL on 256 SoBiRL
    synthetic instances, 3000 iterations, float64)."""

    algorithm: str = _key("m_sobirl", "algorithm (bilevel-rl list shows them)")
    suite: str = _key("sobirl", "problem suite")
    batch: int = _key(256, "problem instances, each generated from its own key")
    seeds: int = _key(1, "algorithm seeds per instance: batch * seeds runs in one call")
    iterations: int = _key(3000, "outer iterations")
    seed: int = _key(
        0, "master seed of the instances and the algorithm keys", nonnegative=True
    )
    dtype: str = _key("float64", "float32 or float64")
    chunk_size: int = _key(
        0, "instances per cache chunk; 0 = from the L2 size", nonnegative=True
    )
    log_every: int = _key(100, "iterations per compiled segment (one progress update)")
    record_every: int = _key(
        0,
        "record per-run metrics every n-th iteration (batch statistics: every "
        "one; exact_f/exact_grad_norm are computed at the recorded ones only); "
        "0 = automatic: every one while runs x iterations <= 4e6, else the "
        "smallest divisor or multiple of log_every that keeps under that",
        nonnegative=True,
    )
    checkpoint_every: int = _key(500, "iterations between checkpoints (whole segments)")
    checkpoint_seconds: float = _key(60.0, "also checkpoint after this many seconds")
    algorithm_params: dict = dataclasses.field(default_factory=dict)
    suite_params: dict = dataclasses.field(default_factory=dict)

    @property
    def num_runs(self) -> int:
        return self.batch * self.seeds

    @property
    def recording(self) -> int:
        """The ``record_every`` the run uses (``record_every = 0`` resolved)."""
        if self.record_every:
            return self.record_every
        need = -(-self.num_runs * self.iterations // HISTORY_BUDGET)
        if need <= 1:
            return 1
        segment = self.log_every
        if need > segment:  # whole segments: one compiled segment program
            return -(-need // segment) * segment
        return next(d for d in range(need, segment + 1) if segment % d == 0)


RUN_KEYS: tuple[dataclasses.Field, ...] = tuple(
    f for f in dataclasses.fields(RunConfig) if not f.name.endswith("_params")
)
"""The top-level keys of a configuration (default, help, ``nonnegative``)."""


def make_config(values: dict[str, Any]) -> RunConfig:
    """Validates a dictionary (e.g. a parsed TOML file) into a :class:`RunConfig`.

    Missing keys take their defaults; ``algorithm_params``/``suite_params`` are
    completed with the defaults of the chosen algorithm/suite.

    Raises:
        ConfigError: unknown key, wrong type, value outside its range, unknown
            algorithm/suite, an algorithm that cannot run on the suite, or a batch
            too large for this machine's memory.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"config: expected a table of keys, got {type(values)}")
    tables = {"algorithm_params", "suite_params"}
    names = [f.name for f in RUN_KEYS]
    for key in values:
        if key not in names and key not in tables:
            raise ConfigError(
                f"{key}: unknown config key; known keys are "
                f"{sorted(names) + sorted(tables)}"
            )
    top = {
        f.name: _check_value(f.name, values.get(f.name, f.default), f.default)
        for f in RUN_KEYS
    }
    nonnegative = {f.name for f in RUN_KEYS if f.metadata["nonnegative"]}
    for key, value in top.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            low = 0 if key in nonnegative else 1e-300
            if not (math.isfinite(value) and value >= low):
                rule = ">= 0" if key in nonnegative else "> 0"
                raise ConfigError(f"{key}: must be finite and {rule}, got {value!r}")
    if top["seed"] >= 2**32:
        raise ConfigError(f"seed: must be < 2**32, got {top['seed']}")
    _check_choice("algorithm", top["algorithm"], ALGORITHMS)
    _check_choice("suite", top["suite"], SUITES)
    _check_choice("dtype", top["dtype"], DTYPES)
    needs, suite = ALGORITHMS[top["algorithm"]].NEEDS, SUITES[top["suite"]]
    if needs is not None and needs not in suite.provides:
        fitting = sorted(k for k, v in SUITES.items() if needs in v.provides)
        raise ConfigError(
            f"suite: {top['algorithm']} needs {KINDS[needs]}, which "
            f"{top['suite']!r} does not provide; use one of {fitting}"
        )
    algo_params = _check_algorithm_params(
        top["algorithm"], values.get("algorithm_params", {})
    )
    suite_params = _check_params("suite_params", values.get("suite_params", {}), suite)
    cfg = RunConfig(**top, algorithm_params=algo_params, suite_params=suite_params)
    build_solver(cfg)  # the algorithm's own range checks
    _check_memory(cfg, _check_suite(cfg))
    return cfg


def load_config(path: str) -> RunConfig:
    """Reads and validates a TOML file.

    Raises:
        ConfigError: the file is missing, unreadable or malformed TOML (with the
            parser's line and column), or :func:`make_config` rejects it.
    """
    try:
        with open(path, "rb") as fh:
            values = tomllib.load(fh)
    except OSError as err:
        raise ConfigError(f"config file {path!r}: {err.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path!r}: malformed TOML ({err})") from None
    return make_config(values)


def to_toml(cfg: RunConfig, *, comments: bool = False) -> str:
    """The configuration as TOML text (``load_config`` reads it back equal)."""
    lines = []
    if comments:
        lines += [
            "# bilevel-rl run configuration: bilevel-rl run --config FILE",
            "# `bilevel-rl list` shows the algorithms and suites.",
            "",
        ]
    for f in RUN_KEYS:
        line = f"{f.name} = {_toml_value(getattr(cfg, f.name))}"
        lines.append(f"{line:<31} # {f.metadata['help']}" if comments else line)
    helps = {f.name: f.metadata["help"] for f in algorithm_options(cfg.algorithm)}
    for table, owner in (
        ("algorithm_params", f"bilevel_rl.algorithms.{cfg.algorithm}.Params"),
        ("suite_params", f"the {cfg.suite!r} suite generator"),
    ):
        lines += [
            "",
            f"[{table}]" + (f"  # fields of {owner}" if comments else ""),
        ]
        for k, v in getattr(cfg, table).items():
            text = helps.get(k) if table == "algorithm_params" else None
            line = f"{k} = {_toml_value(v)}"
            if v is None:  # unset: TOML has no null; the key is omitted
                line = f"# {k} = (unset)"
            lines.append(f"{line:<31} # {text}" if comments and text else line)
    return "\n".join(lines) + "\n"


def example_config(algorithm: str = "m_sobirl", suite: str | None = None) -> str:
    """A commented TOML file for ``algorithm`` (and a suite it can run on)."""
    _check_choice("algorithm", algorithm, ALGORITHMS)
    if suite is None:
        needs = ALGORITHMS[algorithm].NEEDS
        suite = next((k for k, v in SUITES.items() if needs in v.provides), "sobirl")
    return to_toml(make_config({"algorithm": algorithm, "suite": suite}), comments=True)


# ----------------------------------------------------------- building the run


def build_params(cfg: RunConfig):
    """``algorithms.<name>.Params`` from ``cfg.algorithm_params``."""
    values = {k: v for k, v in cfg.algorithm_params.items() if v is not None}
    try:
        return ALGORITHMS[cfg.algorithm].Params(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"algorithm_params.{err}") from None


def build_solver(cfg: RunConfig):
    """The algorithm's ``Solver`` from ``cfg.algorithm_params``."""
    params = build_params(cfg)
    fields = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    return ALGORITHMS[cfg.algorithm].make(**fields)


GENERATE_BLOCK = 1024
"""Instances generated per compiled call by :func:`build_problems`."""


def build_problems(cfg: RunConfig):
    """``(problems, keys)``: ``batch * seeds`` runs, instance-major.

    Run ``i`` solves instance ``i // seeds`` with algorithm key ``keys[i]``; the
    instance keys and the algorithm keys are independent splits of ``cfg.seed``.
    """
    import jax
    import jax.numpy as jnp

    generator = SUITES[cfg.suite].build
    k_inst, k_alg = jax.random.split(jax.random.key(cfg.seed))
    dtype = jnp.dtype(cfg.dtype)

    @jax.jit
    def generate(keys):
        return jax.vmap(lambda k: generator(k, **cfg.suite_params, dtype=dtype))(keys)

    @functools.partial(jax.jit, donate_argnums=0)
    def write(problems, block, start):
        return jax.tree.map(
            lambda a, b: jax.lax.dynamic_update_slice_in_dim(a, b, start, axis=0),
            problems,
            block,
        )

    # GENERATE_BLOCK instances at a time, each block written in place into the
    # batch: the generator's temporaries (several times the output) stay one
    # block's, so the peak is the batch plus one block.
    keys = jax.random.split(k_inst, cfg.batch)
    problems = first = generate(keys[:GENERATE_BLOCK])
    if cfg.batch > GENERATE_BLOCK:
        problems = jax.tree.map(
            lambda b: jnp.zeros((cfg.batch, *b.shape[1:]), b.dtype), first
        )
        for start in range(0, cfg.batch, GENERATE_BLOCK):
            block = first if start == 0 else generate(keys[start:][:GENERATE_BLOCK])
            problems = write(problems, block, start)
    if cfg.seeds > 1:
        problems = jax.tree.map(lambda a: jnp.repeat(a, cfg.seeds, axis=0), problems)
    return problems, jax.random.split(k_alg, cfg.num_runs)


# ------------------------------------------------------------------ validation


def _check_value(key: str, value: Any, default: Any) -> Any:
    """``value`` with the type of ``default`` (an int is accepted for a float)."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(
            f"{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(
            f"{key}: unknown {key} {value!r}; choose from {sorted(choices)}"
        )


def _check_algorithm_params(name: str, values: Any) -> dict[str, Any]:
    """Every ``Params`` field of algorithm ``name``: typed like its default; an
    optimizer table merged onto the default optimizer; unset ones ``None``."""
    table = "algorithm_params"
    if not isinstance(values, dict):
        raise ConfigError(f"{table}: expected a table, got {type(values).__name__}")
    module = ALGORITHMS[name]
    try:
        values = rename_deprecated(
            module.Params, values, getattr(module, "ALIASES", {})
        )
    except TypeError as err:
        raise ConfigError(f"{table}.{err}") from None
    fields = {f.name: f for f in algorithm_options(name)}
    for key in values:
        if key not in fields:
            raise ConfigError(
                f"{table}.{key}: unknown parameter; known: {sorted(fields)}"
            )
    out = {}
    for key, f in fields.items():
        default = f.default
        value = values.get(key, default)
        if isinstance(default, Optimizer):
            if isinstance(value, dict):
                try:
                    value = Optimizer.from_dict({**default.to_dict(), **value})
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"{table}.{err}") from None
            elif not isinstance(value, Optimizer):
                raise ConfigError(
                    f"{table}.{key}: expected a table {{name = ..., learning_rate = "
                    f"...}}, got {value!r}"
                )
        elif default is None:
            if not (value is None or isinstance(value, int | float)) or isinstance(
                value, bool
            ):
                raise ConfigError(f"{table}.{key}: expected a number, got {value!r}")
        else:
            value = _check_value(f"{table}.{key}", value, default)
        out[key] = value
    return out


def _check_params(table: str, values: Any, entry: Suite) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"{table}: expected a table, got {type(values).__name__}")
    defaults = entry.defaults()
    for key in values:
        if key not in defaults:
            raise ConfigError(
                f"{table}.{key}: unknown parameter; known: {sorted(defaults)}"
            )
    return {
        k: _check_value(f"{table}.{k}", values.get(k, d), d)
        for k, d in defaults.items()
    }


def _check_suite(cfg: RunConfig):
    """Traces one instance (no compute) for the generator's own checks; returns
    its abstract ``BilevelProblem`` (shapes and dtypes). float64 is traced with
    64-bit types enabled (in this call only): without them JAX would warn and
    truncate the dtype to float32."""
    import jax
    import jax.numpy as jnp

    generator = SUITES[cfg.suite].build
    try:
        with jax.enable_x64(cfg.dtype == "float64" or jax.config.jax_enable_x64):
            dtype = jnp.dtype(cfg.dtype)
            return jax.eval_shape(
                lambda k: generator(k, **cfg.suite_params, dtype=dtype),
                jax.random.key(0),
            )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"suite_params.{err}") from None


def _check_memory(cfg: RunConfig, instance) -> None:
    """Refuses a batch whose problems and one segment of history (the rest goes to
    disk as the run goes) would not fit in memory."""
    import jax

    per_run = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(instance))
    per_run += min(cfg.log_every, cfg.iterations) * HISTORY_BYTES_PER_ITERATION
    need = cfg.num_runs * per_run
    limit = MEMORY_FRACTION * physical_memory()
    if need > limit:
        raise ConfigError(
            f"batch: {cfg.num_runs} runs x {cfg.iterations} iterations need "
            f"{need / 2**30:.3g} GiB for the problems and a segment of history, "
            f"more than {limit / 2**30:.3g} GiB (half this machine's memory)"
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, Optimizer):
        items = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.to_dict().items())
        return "{" + items + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)


def config_reference() -> str:
    """Markdown reference of every algorithm's options, generated from ``Params``
    (``docs/config.md`` is this text; a test keeps them equal)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from each algorithm's `Params` by",
        "`python -m bilevel_rl.experiment.config` (do not edit by hand). Set an option",
        "in a TOML file under `[algorithm_params]` or with `bilevel-rl run -p",
        "NAME=VALUE` (`-p optimizer.learning_rate=0.01` sets one key of the optimizer",
        "table; a partial table is merged onto the default optimizer).",
        "`bilevel-rl config --example --algorithm NAME` writes a commented file.",
        "",
        "## Top-level keys",
        "",
        "| key | default | meaning |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| `{f.name}` | `{_toml_value(f.default)}` | {f.metadata['help']} |"
        for f in RUN_KEYS
    ]
    for name, module in ALGORITHMS.items():
        needs = KINDS[module.NEEDS] if module.NEEDS else "any problem"
        lines += [
            "",
            f"## `{name}`: {module.DESCRIPTION}",
            "",
            f"Needs: {needs}.",
            "",
            "| option | default | meaning |",
            "| --- | --- | --- |",
        ]
        for f in algorithm_options(name):
            default = getattr(module.Params(), f.name)
            shown = "unset" if default is None else _toml_value(default)
            lines.append(f"| `{f.name}` | `{shown}` | {f.metadata['help']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
