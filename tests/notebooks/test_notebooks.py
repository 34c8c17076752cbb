"""Executes the theory-verification and sensitivity notebooks in a fresh kernel.

Each notebook's checks are ``assert``s, so a failed check is a cell error here. The
notebooks read ``MAP_JAX_NOTEBOOK_SCALE=small`` in their first code cell and shrink
bootstrap, grid and palette counts (never the checks) to stay within CI time. The
kernel is ``python3`` as provided by the ipykernel of the interpreter running pytest,
so it sees the same environment (the venv) and the checkout's ``map_jax``.
"""

import os
import pathlib

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", ["theory_verification.ipynb", "sensitivity_study.ipynb"])
def test_notebook_runs_without_errors(name, monkeypatch):
  monkeypatch.setenv("MAP_JAX_NOTEBOOK_SCALE", "small")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # The kernel must import this checkout's map_jax even if it is not installed.
  root = str(NOTEBOOKS.parent)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
  # Raises CellExecutionError naming the cell and the failed assert.
  client.execute()
