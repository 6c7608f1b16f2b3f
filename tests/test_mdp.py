"""TabularMDP: every validation rule names its field, batching helpers round-trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_P
from hypothesis import given, settings
from hypothesis import strategies as st

from bilevel_rl import TabularMDP, broadcast, stack, unstack


def valid_inputs(S=3, A=2, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        P=random_P(rng, S, A),
        gamma=0.9,
        tau=0.5,
        rho=rng.dirichlet(np.ones(S)),
        ref_policy=rng.dirichlet(np.ones(A), size=S),
    )


def make(**changes):
    kwargs = valid_inputs()
    kwargs.update(changes)
    return TabularMDP.create(kwargs.pop("P"), **kwargs)


def test_valid_mdp_fields_and_properties():
    kw = valid_inputs(S=4, A=3)
    mdp = TabularMDP.create(kw.pop("P"), **kw)
    assert mdp.num_states == 4 and mdp.num_actions == 3 and mdp.batch_shape == ()
    assert mdp.P.dtype == jnp.float64 and mdp.gamma.shape == () and mdp.tau.shape == ()
    np.testing.assert_allclose(mdp.log_ref_policy, np.log(kw["ref_policy"]))


def test_defaults_uniform_rho_and_no_ref_policy():
    mdp = TabularMDP.create(random_P(np.random.default_rng(1), 5, 2), gamma=0, tau=1)
    np.testing.assert_allclose(mdp.rho, np.full(5, 0.2))
    assert mdp.ref_policy is None and mdp.log_ref_policy is None


def test_dtype_follows_input_and_override():
    P = random_P(np.random.default_rng(2), 3, 2)
    assert TabularMDP.create(P.astype(np.float32), gamma=0.5, tau=1).P.dtype == (
        jnp.float32
    )
    mdp = TabularMDP.create(P, gamma=0.5, tau=1, dtype=jnp.float32)
    assert mdp.P.dtype == mdp.rho.dtype == mdp.gamma.dtype == jnp.float32
    # integer one-hot transitions are accepted and converted to a float dtype
    onehot = np.zeros((2, 1, 2), dtype=np.int64)
    onehot[:, 0, 0] = 1
    assert jnp.issubdtype(
        TabularMDP.create(onehot, gamma=0.5, tau=1).P.dtype, jnp.floating
    )
    with pytest.raises(TypeError, match="dtype"):
        TabularMDP.create(P, gamma=0.5, tau=1, dtype=jnp.int32)


BAD_P = [
    (np.ones((3, 3)) / 3, ValueError, r"P: expected rank 3"),
    (np.ones((3, 2, 4)) / 4, ValueError, r"P: last axis must equal the first"),
    (np.zeros((0, 2, 0)), ValueError, r"P: must not be empty"),
    (np.full((2, 2, 2), np.nan), ValueError, r"P: entries must be finite"),
    (np.array([[[1.5, -0.5]], [[0.5, 0.5]]]), ValueError, r"P: .*>= 0.*P\[0, 0, 1\]"),
    (np.ones((2, 2, 2), dtype=bool), TypeError, r"P: must hold real numbers"),
    (np.ones((2, 2, 2), dtype=complex) / 2, TypeError, r"P: must hold real numbers"),
    ([[[1.0, 0.0]], [[1.0]]], TypeError, r"P: cannot be converted"),
]


@pytest.mark.parametrize("P, err, msg", BAD_P)
def test_bad_P(P, err, msg):
    with pytest.raises(err, match=msg):
        TabularMDP.create(P, gamma=0.5, tau=1.0)


def test_P_rows_not_summing_name_the_worst_row():
    P = random_P(np.random.default_rng(3), 4, 3)
    P[1, 2] *= 1.01  # off by 1e-2
    P[3, 0] *= 1.0 + 1e-5  # off by 1e-5, smaller
    with pytest.raises(ValueError, match=r"P: rows must sum to 1.*\(s=1, a=2\)"):
        TabularMDP.create(P, gamma=0.5, tau=1.0)
    P[1, 2] /= 1.01
    with pytest.raises(ValueError, match=r"\(s=3, a=0\)"):
        TabularMDP.create(P, gamma=0.5, tau=1.0)


def test_row_sum_tolerance_is_1e_6():
    P = random_P(np.random.default_rng(4), 3, 2)
    P[0, 0, 0] += 5e-7  # inside tolerance
    TabularMDP.create(P, gamma=0.5, tau=1.0)
    P[0, 0, 0] += 1e-6  # now 1.5e-6 off
    with pytest.raises(ValueError, match="P: rows must sum to 1"):
        TabularMDP.create(P, gamma=0.5, tau=1.0)


@pytest.mark.parametrize(
    "change, err, msg",
    [
        (dict(rho=np.ones(4) / 4), ValueError, r"rho: expected shape \[S\] = \(3,\)"),
        (dict(rho=np.array([0.5, 0.6, -0.1])), ValueError, r"rho: .*>= 0.*rho\[2\]"),
        (dict(rho=np.array([0.5, 0.4, 0.0])), ValueError, r"rho: rows must sum to 1"),
        (
            dict(rho=np.array([np.inf, 0, 0])),
            ValueError,
            r"rho: entries must be finite",
        ),
        (dict(gamma=1.0), ValueError, r"gamma: must lie in \[0, 1\)"),
        (dict(gamma=-0.1), ValueError, r"gamma: must lie in \[0, 1\)"),
        (dict(gamma=float("nan")), ValueError, r"gamma: must be finite"),
        (dict(gamma=[0.5, 0.5]), ValueError, r"gamma: must be a scalar"),
        (dict(gamma=True), TypeError, r"gamma: must be a real number"),
        (dict(tau=0.0), ValueError, r"tau: must be > 0"),
        (dict(tau=-1.0), ValueError, r"tau: must be > 0"),
        (dict(tau=float("inf")), ValueError, r"tau: must be finite"),
        (dict(tau="1"), TypeError, r"tau: must be a real number"),
        (
            dict(ref_policy=np.ones((3, 3)) / 3),
            ValueError,
            r"ref_policy: expected shape",
        ),
        (
            dict(ref_policy=np.array([[0.5, 0.5], [0.7, 0.7], [0.5, 0.5]])),
            ValueError,
            r"ref_policy: rows must sum to 1.*\(s=1\)",
        ),
        (
            dict(ref_policy=np.array([[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])),
            ValueError,
            r"ref_policy: entries must be > 0.*ref_policy\[0, 1\]",
        ),
    ],
)
def test_bad_fields(change, err, msg):
    with pytest.raises(err, match=msg):
        make(**change)


def test_create_refuses_traced_values():
    P = random_P(np.random.default_rng(5), 2, 2)
    with pytest.raises(TypeError, match="P: TabularMDP.create validates concrete"):
        jax.jit(lambda p: TabularMDP.create(p, gamma=0.5, tau=1.0))(P)


@settings(max_examples=30, deadline=None)
@given(
    S=st.integers(1, 6),
    A=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(2e-6, 1e-1),
)
def test_random_valid_accepted_and_perturbed_row_rejected(S, A, seed, scale):
    rng = np.random.default_rng(seed)
    P = random_P(rng, S, A)
    TabularMDP.create(P, gamma=0.9, tau=1.0)
    s, a = int(rng.integers(S)), int(rng.integers(A))
    P[s, a] *= 1.0 + scale
    with pytest.raises(ValueError, match=rf"P: rows must sum to 1.*\(s={s}, a={a}\)"):
        TabularMDP.create(P, gamma=0.9, tau=1.0)


def test_stack_unstack_broadcast_round_trip():
    mdps = [make(P=random_P(np.random.default_rng(i), 3, 2)) for i in range(4)]
    batch = stack(mdps)
    assert batch.P.shape == (4, 3, 2, 3) and batch.gamma.shape == (4,)
    assert batch.batch_shape == (4,) and batch.num_states == 3
    for orig, back in zip(mdps, unstack(batch)):
        for a, b in zip(jax.tree.leaves(orig), jax.tree.leaves(back)):
            np.testing.assert_array_equal(a, b)
    rep = broadcast(mdps[0], 5)
    assert rep.P.shape == (5, 3, 2, 3)
    np.testing.assert_array_equal(rep.P[4], mdps[0].P)


def test_stack_errors_name_the_instance():
    a = make()
    b = make(P=random_P(np.random.default_rng(1), 4, 2), rho=None, ref_policy=None)
    with pytest.raises(ValueError, match=r"mdps\[1\]\.P"):
        stack([a, b])
    c = make(ref_policy=None)
    with pytest.raises(ValueError, match=r"mdps\[1\]\.ref_policy"):
        stack([a, c])
    with pytest.raises(ValueError, match="mdps: need at least one"):
        stack([])
    with pytest.raises(ValueError, match=r"batch\.P: expected one leading batch"):
        unstack(a)
