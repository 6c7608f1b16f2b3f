"""Sharded (4 forced host devices) == single device == chunked, in float64."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[1]
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from bilevel_rl import solve_batch, suites
    from bilevel_rl.algorithms import m_sobirl
    from bilevel_rl.algorithms import run

    keys = jax.random.split(jax.random.key(0), 7)  # 7: uneven over 4 devices
    mdp = jax.vmap(lambda k: suites.dirichlet_mdp(k, 6, 3, gamma=0.9))(keys)
    reward = jax.random.uniform(jax.random.key(1), (7, 6, 3))
    out = {}
    for chunk in (1, 3, 7):
        sol = solve_batch(mdp, reward, tol=1e-12, chunk_size=chunk)
        out[f"v{chunk}"], out[f"it{chunk}"] = np.asarray(sol.v), sol.iterations
    problems = jax.vmap(lambda k: suites.sobirl_synthetic(k, dim=5))(keys)
    solver = m_sobirl.make(inner_steps=3)
    for chunk in (1, 2):
        state, hist = run(solver, problems, keys, 25, chunk_size=chunk)
        out[f"x{chunk}"], out[f"g{chunk}"] = state.x, hist["grad_norm"]
    assert len(jax.devices()) == int(sys.argv[1])
    np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in out.items()})
    """
)


def run_with_devices(n, path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n), str(path)],
        check=True,
        env=env,
        timeout=600,
    )
    import numpy as np

    return dict(np.load(path))


def test_sharded_equals_single_device_equals_chunked(tmp_path):
    import numpy as np

    one = run_with_devices(1, tmp_path / "one.npz")
    four = run_with_devices(4, tmp_path / "four.npz")
    for key in one:
        np.testing.assert_allclose(four[key], one[key], rtol=1e-12, atol=1e-12)
    for name in ("v", "it"):
        for chunk in (3, 7):
            np.testing.assert_allclose(
                one[f"{name}{chunk}"], one[f"{name}1"], rtol=1e-12, atol=1e-12
            )
    np.testing.assert_allclose(one["x2"], one["x1"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(one["g2"], one["g1"], rtol=1e-12, atol=1e-12)
