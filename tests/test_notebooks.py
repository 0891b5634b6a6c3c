"""Every notebook runs top to bottom against a tiny pipeline run, and is committed without outputs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pandas as pd
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


def _files(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, tiny_pipeline_run: Path, tmp_path: Path, monkeypatch) -> None:
    """01 takes its run from CLM_RUN_DIR; the others find the newest finished run in logs/pipeline/runs/
    of a parent of their folder (as after `make run`) instead of running a pipeline of their own. No
    notebook writes into the run it reads."""
    work = tmp_path / "project" / "notebooks"
    work.mkdir(parents=True)
    runs = tmp_path / "project" / "logs" / "pipeline" / "runs"
    runs.mkdir(parents=True)
    (runs / "2026-01-01_00-00-00-000000").mkdir()  # an older run that stopped before metrics.json
    (runs / "2026-01-02_00-00-00-000000").symlink_to(tiny_pipeline_run, target_is_directory=True)
    (runs / "2026-01-03_00-00-00-000000").mkdir()  # a newer one, not finished
    if path.name.startswith("01"):
        monkeypatch.setenv("CLM_RUN_DIR", str(tiny_pipeline_run))
    else:
        monkeypatch.delenv("CLM_RUN_DIR", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CLM_PROGRESS", "0")
    before = _files(tiny_pipeline_run)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    first = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.output_type == "stream")
    assert first.startswith(str(tiny_pipeline_run) if path.name.startswith("01") else str(runs / "2026-01-02"))
    assert sorted(p.name for p in runs.iterdir()) == ["2026-01-01_00-00-00-000000", "2026-01-02_00-00-00-000000",
                                                       "2026-01-03_00-00-00-000000"]  # no pipeline of its own
    assert _files(tiny_pipeline_run) == before


def _with_numeric_looking_ids(run: Path, dest: Path) -> Path:
    """``run`` as a pipeline on one's own log would hold it: customer ids such as '000123' (text, zeros kept)
    instead of the synthetic 'C000123'. The models read no customer ids, so the sub-runs are shared."""
    dest.mkdir()
    for p in run.iterdir():
        if p.name not in ("data", "customers.csv"):
            (dest / p.name).symlink_to(p, target_is_directory=p.is_dir())
    (dest / "data").mkdir()
    strip = lambda ids: ids.astype(str).str.replace("C", "", regex=False)  # noqa: E731
    for p in (run / "data").iterdir():
        df = pd.read_parquet(p)
        if "customer_id" in df.columns:
            df["customer_id"] = strip(df["customer_id"])
        df.to_parquet(dest / "data" / p.name, index=False)
    customers = pd.read_csv(run / "customers.csv", dtype={"customer_id": str})
    customers.assign(customer_id=strip(customers["customer_id"])).to_csv(dest / "customers.csv", index=False)
    return dest


@pytest.mark.parametrize("name", ["02_information_gap", "04_lifecycle"])
def test_notebooks_read_the_report_ids_as_text(name: str, tiny_pipeline_run: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    """customers.csv read with its ids as numbers lost their leading zeros: the latent map of 02 found none of
    the customers ('000123' is not 123) and 04's action table showed 123."""
    run = _with_numeric_looking_ids(tiny_pipeline_run, tmp_path / "run")
    monkeypatch.setenv("CLM_RUN_DIR", str(run))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CLM_PROGRESS", "0")
    work = tmp_path / "notebooks"
    work.mkdir()
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
    shown = "".join(o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
    if name == "04_lifecycle":
        assert re.search(r"\s0\d{5}\s", shown), "the action table shows the ids as the run holds them"
