"""Every notebook runs top to bottom against a tiny pipeline run, and is committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_four_notebooks() -> None:
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_information_gap.ipynb",
                                           "03_recommendations.ipynb", "04_lifecycle.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"
        if cell.cell_type == "code":
            assert "sys.path" not in cell.source, "notebooks import the installed clm_torch only"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, tiny_pipeline_run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CLM_RUN_DIR", str(tiny_pipeline_run))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CLM_PROGRESS", "0")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
