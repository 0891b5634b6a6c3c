"""Every notebook runs top to bottom against a tiny pipeline run (the synthetic base, and an event log alone
with numeric-looking ids), and is committed without outputs."""

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


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def log_only_run(tmp_path_factory) -> Path:
    """A tiny `clm-pipeline experiment=pipeline_events` run on an event log alone (no customer table), whose
    customer ids look numeric ('000123': text, zeros kept), as a run on one's own log can be."""
    from clm_torch.data.synthetic import generate_customer_base
    from clm_torch.pipeline import run_pipeline
    from tests.conftest import compose_cfg

    folder = tmp_path_factory.mktemp("own_log")
    base = generate_customer_base(n_customers=600, seed=0)
    events = base.events.assign(customer_id=base.events["customer_id"].astype(str).str.replace("C", "", regex=False))
    events.to_csv(folder / "events.csv", index=False)
    cfg = compose_cfg(["experiment=pipeline_events", f"data.path={folder / 'events.csv'}",
                       f"data.cutoff={pd.Timestamp(base.cutoff):%Y-%m-%d}", *(f"models.{m}.trainer.max_epochs=2"
                       for m in ("vae", "churn", "recommender", "spend")),
                       "segments.k_max=4", "score.gap_samples=2", "score.question_samples=4"],
                      folder / "run", config_name="pipeline.yaml")
    run_pipeline(cfg)
    return folder / "run"


# 02 (a log's '000123' ids) runs in `make test`; the other three notebooks on the own-log run, 15-20 s each
# on a 2-core VM, in `make test-extended`
OWN_LOG = [p if p.stem.startswith("02") else pytest.param(p, marks=pytest.mark.extended) for p in NOTEBOOKS]


@pytest.mark.slow
@pytest.mark.parametrize("path", OWN_LOG, ids=lambda p: p.stem)
def test_notebook_executes_on_a_run_of_ones_own_log(path: Path, log_only_run: Path, tmp_path: Path,
                                                    monkeypatch) -> None:
    """The notebooks read any pipeline run (CLM_RUN_DIR), not only the synthetic base's: 01 used to show the
    synthetic table's `plan` column (KeyError on a log without that table), and 02 and 04 read customers.csv
    with its ids as numbers, so '000123' became 123: 02's latent map found none of its customers
    (KeyError) and 04's action table showed 123."""
    monkeypatch.setenv("CLM_RUN_DIR", str(log_only_run))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CLM_PROGRESS", "0")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    if path.name.startswith("04"):
        shown = "".join(o.get("data", {}).get("text/plain", "") for o in nb.cells[8].outputs)
        assert re.search(r"\s0\d{5}\s", shown), f"the action table shows the ids as the run holds them:\n{shown}"
