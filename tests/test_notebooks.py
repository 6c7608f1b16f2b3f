"""The notebooks execute without error (nbclient), each in its own kernel."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_notebook_is_listed():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


SLOW = {"02", "03"}
"""Notebooks whose checks the fast suite makes anyway (three-way hyper-gradient
checks: test_hypergrad.py; the AIHF bandit numbers: test_aihf.py): they execute
with ``pytest -m slow`` to keep the CI run short."""


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.slow) if p.name[:2] in SLOW else p
        for p in NOTEBOOKS
    ],
    ids=lambda p: p.stem,
)
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
