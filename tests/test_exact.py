"""Oracle hyper-gradient descent (algorithms.exact)."""

import jax
import numpy as np
import pytest

from bilevel_rl import hypergradient
from bilevel_rl.algorithms import exact
from bilevel_rl.experiment import run
from bilevel_rl.suites import sobirl_synthetic


def test_step_is_sgd_on_the_exact_hypergradient_and_descends():
    problem = sobirl_synthetic(jax.random.key(1), dim=8)
    solver = exact.make(optimizer={"learning_rate": 1e-2})
    state0 = solver.init(problem, jax.random.key(0))
    state1, metrics = jax.jit(solver.step)(state0, problem)
    reward_fn, upper = problem.bind()
    g = hypergradient(upper, reward_fn, problem.x0, problem.mdp)
    np.testing.assert_allclose(state1.x, problem.x0 - 1e-2 * g, rtol=1e-12)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(g), rtol=1e-12)

    _, hist = run(solver, problem, jax.random.key(0), 300)
    f = np.asarray(hist["f"])
    assert np.all(np.diff(f) <= 1e-12)  # small steps: monotone descent
    assert f[-1] < f[0] and bool(hist["finite"].all())


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (
            dict(optimizer={"learning_rate": 0.0}),
            "optimizer.learning_rate: must be finite and > 0",
        ),
        (dict(tol=-1.0), "tol: must be finite and >= 0"),
        (dict(max_iters=0), "max_iters: must be finite and > 0"),
    ],
)
def test_bad_configuration(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        exact.make(**kwargs)
