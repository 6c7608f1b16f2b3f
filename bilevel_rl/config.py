"""Run configurations: the algorithms and suites by name, TOML files, validation.

A :class:`RunConfig` names an algorithm and a problem suite and sets sizes, seeds
and the keyword arguments of the algorithm's ``make`` and of the suite's generator.
It is what ``bilevel-rl run`` executes and what it saves as ``config.toml`` in the
output folder (read back by ``--resume``). Every rule is checked here, outside jit,
and a broken rule raises :class:`ConfigError` naming the key::

    cfg = load_config("run.toml")               # or RunConfig() for the main job
    problems, keys = build_problems(cfg)        # a batch of batch * seeds runs
    solver = build_solver(cfg)

The configurable parameters of an algorithm or suite are the keyword arguments of
its ``make``/generator whose defaults are scalars (bool, int, float, str); their
types follow the defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import tomllib
from collections.abc import Callable
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
from bilevel_rl.algorithms.hpgd import target_reward
from bilevel_rl.suites import four_rooms_problem, shaping_problem, sobirl_synthetic
from bilevel_rl.suites.checks import MEMORY_FRACTION, physical_memory
from bilevel_rl.suites.rlhf import alignment_problem, tabular_rlhf_problem

DTYPES = ("float32", "float64")
KINDS = {
    "trajectories": "a trajectory-level upper loss (model-free algorithms)",
    "alignment": "demonstrations and preferences (AlignmentData)",
    "incentive": "an incentive-design upper level (IncentiveData)",
}


class ConfigError(ValueError):
    """A configuration that breaks a rule; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """An algorithm or suite by name.

    Attributes:
        description: one line for ``bilevel-rl list``.
        build: ``make(**params)`` for an algorithm; ``generator(key, **params,
            dtype=...)`` for a suite.
        needs: (algorithms) what the problem must provide, one of :data:`KINDS`
            (``None``: any problem).
        provides: (suites) the :data:`KINDS` its problems provide.
    """

    description: str
    build: Callable[..., Any]
    needs: str | None = None
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


ALGORITHMS: dict[str, Entry] = {
    "exact": Entry(
        "hyper-gradient descent with the exact adjoint hyper-gradient (the oracle)",
        exact.make,
    ),
    "m_sobirl": Entry(
        "M-SoBiRL (Yang, Gao & Yuan 2025, Alg. 2): model-based, one adjoint step per "
        "iteration",
        m_sobirl.make,
    ),
    "pbrl": Entry(
        "PBRL (Shen et al. 2024): value-penalty single-level reformulation",
        pbrl.make,
    ),
    "parl": Entry(
        "A-PARL (Chakraborty et al. 2024): softmax-logit PG follower, HVP + CG "
        "hyper-gradient",
        parl.make,
    ),
    "sobirl": Entry(
        "SoBiRL (Alg. 1): PMD inner loop, exact dQ/dV, sampled outer trajectories",
        sobirl.make,
        needs="trajectories",
    ),
    "stoc_sobirl": Entry(
        "Stoc-SoBiRL (Algs. 3-4): fully sampled hyper-gradient with STORM momentum",
        stoc_sobirl.make,
        needs="trajectories",
    ),
    "aihf": Entry(
        "AIHF (Li et al. 2024, Alg. 1): demonstrations + preferences, Lemma 5.1",
        aihf.make,
        needs="alignment",
    ),
    "drlhf": Entry(
        "DRLHF (Christiano et al. 2017): alternating Bradley-Terry reward / policy",
        drlhf.make,
        needs="alignment",
    ),
    "hpgd": Entry(
        "HPGD (Thoma et al. 2024): hyper-policy gradient, exact soft best response",
        functools.partial(hpgd.make, upper_reward=target_reward),
        needs="incentive",
    ),
}

SUITES: dict[str, Entry] = {
    "sobirl": Entry(
        "SoBiRL synthetic instances: quadratic upper level, optimum f* = 1 (MATH §3)",
        sobirl_synthetic,
    ),
    "shaping": Entry(
        "random MDPs, tanh-feature reward shaping, non-convex trajectory loss",
        shaping_problem,
        provides=("trajectories",),
    ),
    "four_rooms": Entry(
        "HPGD Four-Rooms incentive design (104 cells, 4 actions, MATH §9.3)",
        four_rooms_problem,
        provides=("incentive",),
    ),
    "rlhf": Entry(
        "tabular RLHF (MATH §9.4): linear reward model, Bradley-Terry trajectory pairs",
        tabular_rlhf_problem,
        provides=("trajectories",),
    ),
    "alignment": Entry(
        "tabular AIHF data: expert demonstrations + per-state comparisons (MATH §7)",
        alignment_problem,
        provides=("alignment",),
    ),
}

TOP_LEVEL = {
    "algorithm": ("m_sobirl", "algorithm (bilevel-rl list shows them)"),
    "suite": ("sobirl", "problem suite"),
    "batch": (256, "problem instances, each generated from its own key"),
    "seeds": (1, "algorithm seeds per instance: batch * seeds runs in one call"),
    "iterations": (3000, "outer iterations"),
    "seed": (0, "master seed of the instances and the algorithm keys"),
    "dtype": ("float64", "float32 or float64"),
    "chunk_size": (0, "instances per cache chunk; 0 = from the L2 size"),
    "log_every": (100, "iterations per compiled segment (one progress update)"),
    "checkpoint_every": (500, "iterations between checkpoints (whole segments)"),
    "checkpoint_seconds": (60.0, "also checkpoint after this many seconds"),
}
_NONNEGATIVE = {"seed", "chunk_size"}
HISTORY_BYTES_PER_ITERATION = 16 * 8
"""Bound on the history one run records per iteration (<= 16 float64 metrics)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One ``bilevel-rl run``; the defaults are the main job (M-SoBiRL on 256 SoBiRL
    synthetic instances, 3000 iterations, float64)."""

    algorithm: str = TOP_LEVEL["algorithm"][0]
    suite: str = TOP_LEVEL["suite"][0]
    batch: int = TOP_LEVEL["batch"][0]
    seeds: int = TOP_LEVEL["seeds"][0]
    iterations: int = TOP_LEVEL["iterations"][0]
    seed: int = TOP_LEVEL["seed"][0]
    dtype: str = TOP_LEVEL["dtype"][0]
    chunk_size: int = TOP_LEVEL["chunk_size"][0]
    log_every: int = TOP_LEVEL["log_every"][0]
    checkpoint_every: int = TOP_LEVEL["checkpoint_every"][0]
    checkpoint_seconds: float = TOP_LEVEL["checkpoint_seconds"][0]
    algorithm_params: dict = dataclasses.field(default_factory=dict)
    suite_params: dict = dataclasses.field(default_factory=dict)

    @property
    def num_runs(self) -> int:
        return self.batch * self.seeds


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
    for key in values:
        if key not in TOP_LEVEL and key not in tables:
            raise ConfigError(
                f"{key}: unknown config key; known keys are "
                f"{sorted(TOP_LEVEL) + sorted(tables)}"
            )
    top = {k: _check_value(k, values.get(k, d), d) for k, (d, _) in TOP_LEVEL.items()}
    for key, value in top.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            low = 0 if key in _NONNEGATIVE else 1e-300
            if not (math.isfinite(value) and value >= low):
                rule = ">= 0" if key in _NONNEGATIVE else "> 0"
                raise ConfigError(f"{key}: must be finite and {rule}, got {value!r}")
    if top["seed"] >= 2**32:
        raise ConfigError(f"seed: must be < 2**32, got {top['seed']}")
    _check_choice("algorithm", top["algorithm"], ALGORITHMS)
    _check_choice("suite", top["suite"], SUITES)
    _check_choice("dtype", top["dtype"], DTYPES)
    algorithm, suite = ALGORITHMS[top["algorithm"]], SUITES[top["suite"]]
    if algorithm.needs is not None and algorithm.needs not in suite.provides:
        fitting = sorted(k for k, v in SUITES.items() if algorithm.needs in v.provides)
        raise ConfigError(
            f"suite: {top['algorithm']} needs {KINDS[algorithm.needs]}, which "
            f"{top['suite']!r} does not provide; use one of {fitting}"
        )
    algo_params = _check_params(
        "algorithm_params", values.get("algorithm_params", {}), algorithm
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
    for key, (_, text) in TOP_LEVEL.items():
        line = f"{key} = {_toml_value(getattr(cfg, key))}"
        lines.append(f"{line:<32}# {text}" if comments else line)
    for table, owner in (
        ("algorithm_params", f"bilevel_rl.algorithms.{cfg.algorithm}.make"),
        ("suite_params", f"the {cfg.suite!r} suite generator"),
    ):
        lines += [
            "",
            f"[{table}]" + (f"  # keyword arguments of {owner}" if comments else ""),
        ]
        lines += [f"{k} = {_toml_value(v)}" for k, v in getattr(cfg, table).items()]
    return "\n".join(lines) + "\n"


def example_config(algorithm: str = "m_sobirl", suite: str | None = None) -> str:
    """A commented TOML file for ``algorithm`` (and a suite it can run on)."""
    _check_choice("algorithm", algorithm, ALGORITHMS)
    if suite is None:
        needs = ALGORITHMS[algorithm].needs
        suite = next((k for k, v in SUITES.items() if needs in v.provides), "sobirl")
    return to_toml(make_config({"algorithm": algorithm, "suite": suite}), comments=True)


# ----------------------------------------------------------- building the run


def build_solver(cfg: RunConfig):
    """The algorithm's ``Solver`` from ``cfg.algorithm_params``."""
    try:
        return ALGORITHMS[cfg.algorithm].build(**cfg.algorithm_params)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"algorithm_params.{err}") from None


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

    problems = generate(jax.random.split(k_inst, cfg.batch))
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


def _check_params(table: str, values: Any, entry: Entry) -> dict[str, Any]:
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
    its abstract ``BilevelProblem`` (shapes and dtypes)."""
    import jax
    import jax.numpy as jnp

    generator = SUITES[cfg.suite].build
    dtype = jnp.dtype(cfg.dtype)
    try:
        return jax.eval_shape(
            lambda k: generator(k, **cfg.suite_params, dtype=dtype), jax.random.key(0)
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"suite_params.{err}") from None


def _check_memory(cfg: RunConfig, instance) -> None:
    """Refuses a batch whose problems and history would not fit in memory."""
    import jax

    per_run = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(instance))
    per_run += cfg.iterations * HISTORY_BYTES_PER_ITERATION
    need = cfg.num_runs * per_run
    limit = MEMORY_FRACTION * physical_memory()
    if need > limit:
        raise ConfigError(
            f"batch: {cfg.num_runs} runs x {cfg.iterations} iterations need "
            f"{need / 2**30:.3g} GiB for the problems and the history, more than "
            f"{limit / 2**30:.3g} GiB (half this machine's memory)"
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return str(value)
