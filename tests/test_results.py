"""The committed benchmark results say what the README says they say.

Each README headline taken from ``benchmarks/results/*.json`` is asserted here in
its direction (not its digits), so a re-run that changes a conclusion fails a test
instead of leaving a stale sentence.
"""

import json
import pathlib

import pytest

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.fixture(scope="module")
def rates():
    return json.loads((RESULTS / "convergence_rates.json").read_text())


def test_deterministic_methods_reach_their_rate_and_lower_f_everywhere(rates):
    for name in ("theorem/exact", "theorem/sobirl_deterministic"):
        rec = rates["methods"][name]
        assert rec["slope_avg_sq"] <= -0.9, name
        assert rec["frac_f_decreased"] == 1.0, name
    assert rates["conditions"]["beta_times_L_phi"] <= 1.0  # inside the step rule


def test_only_theorem_configurations_carry_a_slope(rates):
    for name, rec in rates["methods"].items():
        assert rec["all_finite"], name
        theorem = name.startswith("theorem/")
        assert rec["rate_is_floor"] == (not theorem), name
        assert ("slope_avg_sq" in rec) == theorem, name


def test_stochastic_methods_lower_f_on_most_instances_under_the_theorem(rates):
    """Every Stoc-SoBiRL variant in the theorem's configuration lowers the exact
    f on average and on >= 90% of instances (none of them on all)."""
    for momentum in ("storm", "average", "none"):
        rec = rates["methods"][f"theorem/stoc_sobirl_{momentum}"]
        assert rec["f_final_mean"] < rec["f_initial_mean"] - 0.3, momentum
        assert rec["frac_f_decreased"] >= 0.9, momentum


def test_fixed_sample_storm_does_not_beat_no_momentum_on_the_objective(rates):
    """The README's headline, paired over the same instances: STORM on fixed
    samples ends no lower than no momentum under the theorem's configuration (not
    better by 2 s.e.) and higher at constant sizes (worse by more than 2 s.e.)."""
    pairs = rates["storm_vs_others_f_final"]
    theorem = pairs["theorem: storm - stoc_sobirl_none"]
    constant = pairs["constant: storm - stoc_sobirl_none"]
    assert theorem["mean"] > -2 * theorem["se"]
    assert constant["mean"] > 2 * constant["se"]
