"""The user docs stay true: the estimator example runs, the configuration
reference is the one generated from ``Params``."""

import pathlib
import re

from bilevel_rl.experiment.config import config_reference

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_the_estimator_example_runs_and_descends():
    text = (DOCS / "algorithms.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(code, "docs/algorithms.md", "exec"), {})


def test_config_reference_is_generated_from_params():
    assert (DOCS / "config.md").read_text() == config_reference(), (
        "docs/config.md is stale: python -m bilevel_rl.experiment.config "
        "> docs/config.md"
    )
