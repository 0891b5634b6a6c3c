"""Issue 7: bad checkpoints, atomic saves, resume after SIGKILL, NaN losses, run-dir safety, CSV escaping."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from clm_torch import ChurnClassifier
from clm_torch.models.base import NonFiniteLossError
from clm_torch.train import RunDirectoryError, train
from clm_torch.utils.io import AtomicCheckpointIO, CheckpointError, escape_formula, write_csv_safe
from tests.conftest import REPO, messy_table

FAST = ["model.k_ensemble=2", "model.hidden=[32]", "model.d_embed=8", "data.batch_size=64",
        "callbacks.model_summary=null"]


def _csv(path: Path) -> list[str]:
    return ["model=churn", "data=csv", f"data.path={path}", "data.target=churn", "data.id_col=customer_id"]


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    from tests.conftest import compose_cfg

    tmp = tmp_path_factory.mktemp("rel")
    p = tmp / "t.csv"
    messy_table(400).to_csv(p, index=False)
    train(compose_cfg([*_csv(p), *FAST, "trainer.max_epochs=1", "~logger"], tmp / "run"))
    return tmp / "run" / "checkpoints" / "last.ckpt"


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('CLM_EVIL_MARKER', '/tmp/clm_evil_marker')}",))


def test_crafted_pickle_checkpoint_is_refused(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CLM_EVIL_MARKER", str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        ChurnClassifier.load_from_checkpoint(evil)
    assert not marker.exists(), "the crafted checkpoint ran code"


def test_a_checkpoint_without_preprocessing_is_one_clear_error_to_score(tmp_path: Path, small_ckpt: Path) -> None:
    """A checkpoint saved without the fitted preprocessing (a plain Lightning Trainer's) cannot score
    raw rows: load_model (clm-evaluate, load_run) says so instead of a RuntimeError traceback."""
    from clm_torch.runs import load_model

    ckpt = torch.load(small_ckpt, weights_only=True)
    for kind, value in (("empty", {}), ("deleted", None)):
        bare = tmp_path / f"{kind}.ckpt"
        torch.save({k: v for k, v in ckpt.items() if k != "clm_preprocessing"}
                   | ({} if value is None else {"clm_preprocessing": value}), bare)
        with pytest.raises(CheckpointError, match=rf"{kind}.ckpt: holds no fitted preprocessing \(saved outside "
                                                  r"clm-train"):
            load_model(bare)
    assert load_model(small_ckpt).preprocessing  # the ordinary checkpoint still loads


def test_truncated_and_empty_checkpoints(tmp_path: Path, small_ckpt: Path) -> None:
    data = small_ckpt.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ChurnClassifier.load_from_checkpoint(cut)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        ChurnClassifier.load_from_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not found"):
        ChurnClassifier.load_from_checkpoint(tmp_path / "nope.ckpt")
    # a run directory (it used to be called a truncated or corrupt checkpoint): the file to pass instead
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(data)
    with pytest.raises(CheckpointError, match=rf"run: is a directory, not a checkpoint file; pass "
                                              rf"{run / 'checkpoints' / 'best.ckpt'}, or load a run directory with "
                                              r"clm_torch\.load_run"):
        ChurnClassifier.load_from_checkpoint(run)


def test_checkpoint_of_another_model_class(tmp_path: Path, small_ckpt: Path) -> None:
    ckpt = torch.load(small_ckpt, weights_only=True)
    ckpt["clm_model_class"] = "InfoGapVAE"
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="holds an InfoGapVAE, not a ChurnClassifier"):
        ChurnClassifier.load_from_checkpoint(other)


def test_kill_during_save_keeps_previous_checkpoint(tmp_path: Path, small_ckpt: Path, monkeypatch) -> None:
    target = tmp_path / "last.ckpt"
    target.write_bytes(small_ckpt.read_bytes())
    io = AtomicCheckpointIO()

    def dying_save(obj, f, *a, **k):
        Path(f).write_bytes(b"partial garbage")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {}}, target)
    monkeypatch.undo()
    assert ChurnClassifier.load_from_checkpoint(target) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"



def test_atomic_writes_get_the_mode_of_a_plain_write(tmp_path: Path, monkeypatch) -> None:
    """Checkpoints, metrics.json and predictions are written through a temporary file, which
    mkstemp creates 0o600: renamed into place as it was, a run was readable by its owner alone, so a
    teammate could not load its checkpoint in a notebook. They now get 0o666 less the umask, as
    open() gives; a checkpoint that cannot be read is called that, not truncated or corrupt."""
    from clm_torch.utils.io import write_json

    old = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "c.ckpt")
        write_json({"a": 1}, tmp_path / "m.json")
        write_csv_safe(pd.DataFrame({"a": [1]}), tmp_path / "p.csv")
        os.umask(0o077)
        write_json({"a": 1}, tmp_path / "private.json")
    finally:
        os.umask(old)
    for name in ("c.ckpt", "m.json", "p.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600  # a strict umask is kept

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointError, match="c.ckpt: cannot read the checkpoint: permission denied"):
        ChurnClassifier.load_from_checkpoint(tmp_path / "c.ckpt")


def test_last_checkpoint_is_the_latest_epoch_and_outputs_the_best(make_cfg, table_csv: Path) -> None:
    """last.ckpt is rewritten every epoch, also when the epoch is not the best (Lightning 2.6 alone
    writes it only with a new best), and the returned model is the best checkpoint's. "Best" here
    is the smallest epoch, so best (epoch 0) and last (epoch 2) differ in every run."""
    cfg = make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=3", "callbacks.early_stopping=null", "~logger",
                   "callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min")
    metrics, objects = train(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    best, last = (torch.load(ckpts / f"{name}.ckpt", weights_only=True) for name in ("best", "last"))
    assert (best["epoch"], last["epoch"]) == (0, 2)
    state = objects["model"].state_dict()
    assert all(torch.equal(state[k], v) for k, v in best["state_dict"].items())
    assert not all(torch.equal(best["state_dict"][k], v) for k, v in last["state_dict"].items())
    # the checkpoint's monitor is not the run's: metrics.json reports the run's metric, not the epoch
    assert 0.5 < metrics["val/auroc"] <= 1.0 and metrics["optimized"] == metrics["val/auroc"]

@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path: Path) -> None:
    data = tmp_path / "big.csv"
    messy_table(12000).to_csv(data, index=False)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "clm_torch.train", *_csv(data), *FAST, "trainer.max_epochs=6",
            "callbacks.early_stopping=null", "data.batch_size=32", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.exists() and torch.load(last, weights_only=True)["epoch"] >= 1:
                time.sleep(0.5)  # now somewhere inside the next epoch
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training finished before it could be killed; make epochs longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_epoch = torch.load(last, weights_only=True)["epoch"]
    assert killed_epoch < 5
    done = subprocess.run([*args, "ckpt_path=last"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 5  # epochs 0..5 = max_epochs 6, counted across the kill
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.7 < metrics["test/auroc"] <= 1.0


def test_nan_loss_raises_naming_the_step(make_cfg, table_csv: Path) -> None:
    cfg = make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=2", "~logger", "model.lr=1e30",
                   "trainer.gradient_clip_val=0")
    with pytest.raises(NonFiniteLossError, match=r"global step \d+"):
        train(cfg)


def test_nan_loss_skip_policy_skips_the_batch(make_cfg, table_csv: Path, monkeypatch) -> None:
    calls = {"n": 0}
    original = ChurnClassifier.model_step

    def sometimes_nan(self, batch):
        loss, logits = original(self, batch)
        calls["n"] += 1
        if self.training and calls["n"] % 3 == 0:
            loss = loss * float("nan")
        return loss, logits

    monkeypatch.setattr(ChurnClassifier, "model_step", sometimes_nan)
    cfg = make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=2", "~logger", "model.nan_policy=skip")
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["test/auroc"])
    assert all(torch.isfinite(p).all() for p in objects["model"].parameters())


def test_nan_metric_never_becomes_best(tmp_path: Path) -> None:
    from clm_torch.utils.checkpointing import SafeModelCheckpoint

    cb = SafeModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/auroc", mode="max")
    saved = []
    cb._save_checkpoint = lambda trainer, path: saved.append(path)  # type: ignore[method-assign]

    class _T:
        current_epoch, global_step, lightning_module = 0, 0, None
        is_global_zero = True

    cb._save_topk_checkpoint(_T(), {"val/auroc": torch.tensor(float("nan")), "epoch": torch.tensor(0),
                                    "step": torch.tensor(0)})
    assert saved == [] and cb.best_model_path == ""


def test_failed_run_never_overwrites_an_earlier_run(make_cfg, table_csv: Path) -> None:
    cfg = make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=1", "~logger", out="same")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    before = (run / "checkpoints" / "best.ckpt").read_bytes()
    cfg2 = make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=1", "~logger", "seed=3", out="same")
    with pytest.raises(RunDirectoryError, match="already holds an earlier run"):
        train(cfg2)
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == before


def test_another_runs_checkpoint_never_overwrites_a_finished_run(make_cfg, table_csv: Path) -> None:
    """`hydra.run.dir=<run A> ckpt_path=<run B's last.ckpt>` counted as a resume and wrote B's continuation
    over A's checkpoints and metrics.json; only a checkpoint of the directory itself resumes in place."""
    args = [*_csv(table_csv), *FAST, "~logger"]
    cfg = make_cfg(*args, "trainer.max_epochs=1", out="a")
    train(cfg)
    other = make_cfg(*args, "trainer.max_epochs=1", "seed=3", out="b")
    train(other)
    run = Path(cfg.paths.output_dir)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints" / "best.ckpt", run / "metrics.json")}
    with pytest.raises(RunDirectoryError, match="already holds an earlier run"):
        train(make_cfg(*args, "trainer.max_epochs=2",
                       f"ckpt_path={Path(other.paths.output_dir) / 'checkpoints' / 'last.ckpt'}", out="a"))
    assert {p.name: p.read_bytes() for p in (run / "checkpoints" / "best.ckpt", run / "metrics.json")} == before
    # its own checkpoint, named by path or by its directory, still continues it there
    metrics, _ = train(make_cfg(*args, "trainer.max_epochs=2", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                                out="a"))
    assert metrics["best_ckpt"] == str(run.resolve() / "checkpoints" / "best.ckpt")


def test_inference_with_different_dtypes(small_ckpt: Path) -> None:
    model = ChurnClassifier.load_from_checkpoint(small_ckpt)
    df = messy_table(20, seed=5).drop(columns="churn")
    p = model.predict_proba(df)
    as_text = df.astype({"tenure": str, "monthly_fee": str})
    as_text.loc[as_text["monthly_fee"] == "nan", "monthly_fee"] = ""
    np.testing.assert_allclose(model.predict_proba(as_text), p, rtol=1e-5)
    bad = df.astype({"tenure": object})
    bad.loc[4, "tenure"] = "twelve"
    from clm_torch import SchemaError

    with pytest.raises(SchemaError, match="column 'tenure', row 4.*'twelve'"):
        model.predict_proba(bad)


def test_csv_export_escapes_formulas(tmp_path: Path) -> None:
    assert escape_formula("=cmd|' /C calc'!A0") == "'=cmd|' /C calc'!A0"
    assert escape_formula("plain") == "plain" and escape_formula(-3) == -3
    df = pd.DataFrame({"id": ["=1+1", "+x", "-y", "@z", "ok"], "v": [1, 2, 3, 4, 5]})
    text = write_csv_safe(df, tmp_path / "r.csv").read_text()
    for bad in ("\n=1+1", "\n+x", "\n-y", "\n@z"):
        assert bad not in text
    assert "'=1+1" in text and "\nok,5" in text


def test_evaluate_only_scores_the_given_checkpoint_into_a_new_directory(make_cfg, table_csv: Path) -> None:
    """train=false ckpt_path=<best.ckpt> reproduces that run's test metrics and predictions in a new
    run directory; without a checkpoint, or into the finished run's directory, it is refused."""
    import json

    first, _ = train(make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=2", "~logger", out="first"))
    best = Path(first["best_ckpt"])
    again, _ = train(make_cfg(*_csv(table_csv), *FAST, "~logger", "train=false", f"ckpt_path={best}", out="eval"))
    assert again["best_ckpt"] == str(best)
    for k in ("test/auroc", "test/log_loss"):
        assert again[k] == pytest.approx(first[k], abs=1e-6), k
    run = best.parents[1]
    p1 = pd.read_csv(run / "predictions" / "test.csv")
    p2 = pd.read_csv(Path(make_cfg(out="eval").paths.output_dir) / "predictions" / "test.csv")
    np.testing.assert_allclose(p1["prediction"], p2["prediction"], atol=1e-6)

    with pytest.raises(CheckpointError, match="train=false evaluates a checkpoint"):
        train(make_cfg(*_csv(table_csv), *FAST, "~logger", "train=false", out="nockpt"))
    before = (run / "metrics.json").read_text()
    with pytest.raises(RunDirectoryError, match="nothing was overwritten"):
        train(make_cfg(*_csv(table_csv), *FAST, "~logger", "train=false", f"ckpt_path={best}", out="first"))
    assert (run / "metrics.json").read_text() == before and json.loads(before)["best_ckpt"] == str(best)


def test_resume_with_more_epochs_keeps_the_csv_rows_and_stretches_the_cosine(make_cfg, table_csv: Path) -> None:
    """Resuming with a larger max_epochs: the cosine schedule ends at 0 at the new last epoch (it does
    not restart from the peak), and metrics.csv keeps the rows of the first part of the run."""
    args = [*_csv(table_csv), *FAST, "model.scheduler=cosine", "model.lr=0.01", "callbacks.early_stopping=null",
            "logger=csv"]
    train(make_cfg(*args, "trainer.max_epochs=2"))
    train(make_cfg(*args, "trainer.max_epochs=4", "ckpt_path=last"))
    run = Path(make_cfg(out="run").paths.output_dir)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 3
    assert all(g["lr"] < 1e-9 for g in last["optimizer_states"][0]["param_groups"])  # cos(π) at epoch 4 of 4
    rows = pd.read_csv(run / "csv" / "metrics.csv")
    assert sorted(rows.dropna(subset=["train/loss"])["epoch"].astype(int)) == [0, 1, 2, 3]
    # each epoch's rate on the 4-epoch cosine, the first resumed one included (it used to train at the
    # 0 its 2-epoch schedule had ended on): 0.01 · ½(1 + cos(π e / 4))
    lr = rows.dropna(subset=["lr-AdamW/pg1"]).drop_duplicates("step")["lr-AdamW/pg1"].to_numpy()
    np.testing.assert_allclose(lr, [0.01, 0.005, 0.005 * (1 + math.cos(math.pi / 2)), 0.005 * (1 + math.cos(
        3 * math.pi / 4))], atol=1e-9)
    # a resume with max_epochs before the checkpoint's epoch: a named error before fit (it was Lightning's
    # MisconfigurationException traceback), the run as it was
    before = {p: p.read_bytes() for p in (run / "metrics.json", run / "csv" / "metrics.csv")}
    with pytest.raises(CheckpointError, match=r"last\.ckpt: the run is at epoch 3 \(counted from 0\), past "
                                              r"trainer\.max_epochs=2; pass a larger trainer\.max_epochs"):
        train(make_cfg(*args, "trainer.max_epochs=2", "ckpt_path=last"))
    assert {p: p.read_bytes() for p in before} == before


def test_a_resume_from_a_checkpoint_older_than_the_log_logs_each_epoch_once(make_cfg, table_csv: Path) -> None:
    """A run stopped after it had logged an epoch but before it wrote that epoch's checkpoint trains
    the epoch again on resume: metrics.csv keeps the rows up to the checkpoint, so the epoch's rows
    are there once (they were there twice, with different values), the learning rates too."""
    import shutil

    args = [*_csv(table_csv), *FAST, "callbacks.early_stopping=null", "logger=csv"]
    train(make_cfg(*args, "trainer.max_epochs=1"))
    run = Path(make_cfg(out="run").paths.output_dir)
    epoch0 = run.parent / "epoch0.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", epoch0)
    train(make_cfg(*args, "trainer.max_epochs=2", "ckpt_path=last"))
    shutil.copy(epoch0, run / "checkpoints" / "last.ckpt")  # as if killed before epoch 1's checkpoint
    train(make_cfg(*args, "trainer.max_epochs=2", "ckpt_path=last"))
    rows = pd.read_csv(run / "csv" / "metrics.csv")
    assert rows.dropna(subset=["val/auroc"])["epoch"].astype(int).tolist() == [0, 1]
    assert rows.dropna(subset=["lr-AdamW/pg1"])["step"].is_unique


def test_rows_up_to_a_checkpoint_by_hand() -> None:
    from clm_torch.train import _rows_up_to

    data = (b"epoch,lr,step,val/auroc\n,0.01,0,\n0,,19,0.8\n0,,20,0.81\n,0.01,20,\n1,,39,0.83\n"
            b"not,a,number,row\n")
    assert _rows_up_to(data, 20) == b"epoch,lr,step,val/auroc\n,0.01,0,\n0,,19,0.8\n0,,20,0.81\nnot,a,number,row\n"
    assert _rows_up_to(data, None) == data and _rows_up_to(b"", 3) == b""


def test_a_handed_over_checkpoint_is_not_served_once_its_file_changed(tmp_path: Path) -> None:
    """The checkpoint train() read is handed to Lightning only while the file is as it was when read
    (the set-up between the read and fit can take minutes): a rewritten file is read again."""
    from clm_torch.utils.checkpointing import CheckedCheckpointIO, checkpoint_signature

    path = tmp_path / "last.ckpt"
    torch.save({"w": torch.tensor(1.0)}, path)
    as_read, read = checkpoint_signature(path), torch.load(path, weights_only=True)
    io = CheckedCheckpointIO()
    with io.handing_over(path, read, as_read):
        assert io.load_checkpoint(path) is read  # unchanged: served without reading
    torch.save({"w": torch.tensor(2.0), "pad": torch.zeros(3)}, path)  # rewritten after it was read
    with io.handing_over(path, read, as_read):
        assert float(io.load_checkpoint(path)["w"]) == 2.0


def test_a_resume_reads_its_checkpoint_once(make_cfg, table_csv: Path, monkeypatch) -> None:
    """ckpt_path=last: fit gets the checkpoint train() read for its checks (the file was read twice,
    once for the checks and once in trainer.fit), and the resumed run ends as one that reads it again."""
    import importlib
    import shutil

    train_module = importlib.import_module("clm_torch.train")  # the module (clm_torch.train is also the function)

    args = [*_csv(table_csv), *FAST, "~logger", "callbacks.early_stopping=null"]
    train(make_cfg(*args, "trainer.max_epochs=1"))
    run = Path(make_cfg(out="run").paths.output_dir)
    shutil.copytree(run, run.parent / "again")
    reads: list[Path] = []
    load = torch.load

    def counting(f: Any, *a: Any, **kw: Any) -> Any:  # a path (clm_torch) or an open file (Lightning)
        name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "path", None) or getattr(f, "name", None)
        reads.append(Path(str(name)).resolve())
        return load(f, *a, **kw)

    monkeypatch.setattr(torch, "load", counting)
    metrics, _ = train(make_cfg(*args, "trainer.max_epochs=2", "ckpt_path=last"))
    assert reads.count((run / "checkpoints" / "last.ckpt").resolve()) == 1, reads
    # the best checkpoint, read once for the returned model, is handed to trainer.test as well
    assert metrics["best_ckpt"] and reads.count(Path(metrics["best_ckpt"]).resolve()) == 1, reads
    resumed = load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] > 0
    # the same resume reading the file in fit as well: the same weights and optimizer state at its end
    monkeypatch.setattr(train_module, "reading_once", lambda *a: contextlib.nullcontext())
    reads.clear()
    train(make_cfg(*args, "trainer.max_epochs=2", "ckpt_path=last", out="again"))
    assert reads.count((run.parent / "again" / "checkpoints" / "last.ckpt").resolve()) == 2
    twice = load(run.parent / "again" / "checkpoints" / "last.ckpt", weights_only=True)
    assert twice["global_step"] == resumed["global_step"]
    for k, v in resumed["state_dict"].items():
        assert torch.equal(v, twice["state_dict"][k]), k
    for a, b in zip(resumed["optimizer_states"][0]["state"].values(), twice["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_setting_left_missing_is_one_clear_line(make_cfg, capsys) -> None:
    """`clm-train data=csv` without data.path: one line naming the setting, exit code 2, nothing run."""
    from clm_torch.train import run_cli

    cfg = make_cfg("data=csv", "data.target=churn")
    ran = []
    with pytest.raises(SystemExit) as exit_info:
        run_cli(ran.append, cfg)
    assert exit_info.value.code == 2 and not ran
    assert capsys.readouterr().err.strip() == "error: no value for data.path: set it on the command line, e.g. data.path=..."


def test_a_data_source_error_raised_inside_hydra_instantiate_is_one_clear_line(make_cfg, tmp_path: Path,
                                                                              capsys) -> None:
    """data=events builds its DataModule through hydra.utils.instantiate, which wraps the source's
    SchemaError in an InstantiationException: the CLI still prints the source's own message, exit 2."""
    from clm_torch.train import run_cli

    log = tmp_path / "events.csv"
    log.write_text("customer_id,timestamp,amount\n1,2024-01-01,5\n1,notadate,3\n2,2024-02-01,4\n")
    cfg = make_cfg("model=churn", "data=events", f"data.path={log}", "data.amount_col=amount", *FAST)
    import logging

    run_log = logging.FileHandler(tmp_path / "run.log")  # as Hydra's job logging writes <task>.log
    logging.getLogger().addHandler(run_log)
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(train, cfg)
    finally:
        logging.getLogger().removeHandler(run_log)
        run_log.close()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {log}, column 'timestamp', row 1: cannot parse timestamp 'notadate'"), err
    assert err in (tmp_path / "run.log").read_text()  # the run's log says why it stopped, too


@pytest.mark.parametrize("override, message", [
    ("data.encoder.log_transform=foo",
     "error: data.encoder.log_transform must be auto, none or a list of numeric columns, not 'foo'"),
    ("model.sequence_encoder=gru", "error: model.sequence_encoder needs purchase-sequence columns seq{k}_days in the "
                                   "data; use data=events with data.sequence_length > 0"),
])
def test_a_bad_model_or_data_setting_is_one_clear_line(make_cfg, table_csv: Path, capsys, override: str,
                                                       message: str) -> None:
    """A value a model or DataModule refuses when hydra builds it: one line, exit 2, nothing trained
    (a typo such as model.scheduler=linear used to train silently without a schedule)."""
    from clm_torch.train import run_cli

    cfg = make_cfg(*_csv(table_csv), *FAST, override)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message


@pytest.mark.parametrize("overrides, key", [
    (["monitor=val/auc"], "monitor"),  # EarlyStopping's RuntimeError
    (["monitor=val/auc", "callbacks.early_stopping=null"], "monitor"),  # ModelCheckpoint's MisconfigurationException
    (["callbacks.early_stopping.monitor=val/auc"], "callbacks.early_stopping.monitor"),
])
def test_a_monitor_the_model_never_logs_is_one_clear_line(make_cfg, table_csv: Path, capsys, overrides: list[str],
                                                          key: str) -> None:
    """`monitor=val/auc` (the churn model logs val/auroc) used to stop at the end of the first epoch with
    Lightning's traceback; now one line naming the setting and the metrics the model logs, exit 2."""
    from clm_torch.train import run_cli

    cfg = make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=1", "~logger", *overrides)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: {key}=val/auc: the model logs no such metric; its validation "
                                                "metrics are val/ap, val/auroc, val/brier, val/log_loss, val/loss")


@pytest.mark.parametrize("override, message", [
    ("model.lr=abc", "error: model.lr='abc': expected a number > 0"),  # used to stop in the optimizer, after
    ("model.lr=-1", "error: model.lr=-1: expected a number > 0"),      # the data was read and split
    ("model.hidden=64", "error: model.hidden=64: expected a list of layer sizes >= 1, e.g. [64,64]"),
    ("model.dropout=1.5", "error: model.dropout=1.5: expected a share in [0, 1)"),
    ("model.pos_weight=heavy", "error: model.pos_weight='heavy': expected null, balanced or a number > 0"),
    ("data.split_seed=abc", "error: data.split_seed='abc': expected a whole number"),
    ("data.val_size=1.5", "error: data.val_size=1.5: expected a share in (0, 1)"),  # trained on 35/50/15
    ("data.val_size=0.9", "error: data.val_size=0.9 and data.test_size=0.15: expected shares that leave rows to "
                          "train on (together below 1)"),
    ("model.weight_decay=1" + "0" * 400, "error: model.weight_decay=1" + "0" * 400 + ": expected a number >= 0"),
    ("data.batch_size=0", "error: data.batch_size=0: expected a whole number >= 1"),
    ("train=false", "error: train=false test=false: nothing to do (train=false tests ckpt_path; clm-evaluate scores "
                    "other data)"),
    ("trainer.max_epochs=abc", "error: trainer.max_epochs='abc': expected a whole number"),
    ("trainer.max_epochs=1.5", "error: trainer.max_epochs=1.5: expected a whole number"),
    ("trainer.gradient_clip_val=big", "error: trainer.gradient_clip_val='big': expected a number"),
    ("seed=x", "error: seed='x': expected a whole number"),
    # named options: the model's constructor would refuse them only after the data was read
    ("model.scheduler=linear", "error: model.scheduler='linear': expected one of none, cosine"),
    ("model.nan_policy=ignore", "error: model.nan_policy='ignore': expected one of raise, skip, off"),
    ("model.calibration=foo", "error: model.calibration='foo': expected one of platt, temperature, none"),
    ("trainer.precision=fp8", "error: trainer.precision='fp8': expected 32-true (the default), bf16-mixed, 16-mixed "
                              "(a GPU), 64-true, bf16-true or 16-true"),
    ("data.clean.clip_outliers=-3",
     "error: data.clean.clip_outliers=-3: expected null (off) or a number of robust sd > 0, e.g. 5"),
    ("data.encoder.max_categories=0", "error: data.encoder.max_categories=0: expected a whole number >= 1"),
    # a monitor left with the other model's mode kept the worst epoch as best.ckpt (churn: epoch 0 of 9)
    ("model_monitor=val/log_loss", "error: monitor=val/log_loss with monitor_mode=max: a lower val/log_loss is "
                                   "better, so the worst epoch would be kept as the best checkpoint; add "
                                   "monitor_mode=min"),
    ("monitor_mode=min", "error: monitor=val/auroc with monitor_mode=min: a higher val/auroc is better, so the worst "
                         "epoch would be kept as the best checkpoint; add monitor_mode=max"),
    ("callbacks.early_stopping.monitor=val/brier", "error: callbacks.early_stopping.monitor=val/brier with "
                                                   "callbacks.early_stopping.mode=max: a lower val/brier is better, "
                                                   "so the worst epoch would be kept as the best checkpoint; add "
                                                   "callbacks.early_stopping.mode=min"),
    # callback settings reached Lightning's comparison (patience 'abc') or its mode check after set-up
    ("callbacks.early_stopping.patience=abc",
     "error: callbacks.early_stopping.patience='abc': expected a whole number of validation epochs >= 0"),
    ("callbacks.early_stopping.min_delta=-1", "error: callbacks.early_stopping.min_delta=-1: expected a number >= 0"),
    ("monitor_mode=maximum", "error: monitor_mode='maximum': expected min or max"),
    # an unknown accelerator: Hydra's "Error in call to target" about torch_xla
    ("trainer.accelerator=tpu", "error: trainer.accelerator='tpu': expected cpu, gpu (cuda) or auto (trainer=cpu, "
                                "trainer=gpu)"),
])
def test_a_setting_of_the_wrong_type_is_one_clear_line_before_the_data_is_read(make_cfg, tmp_path: Path, capsys,
                                                                               override: str, message: str) -> None:
    """`trainer.max_epochs=abc` used to build everything and then stop inside Lightning's fit loop
    with a bare AssertionError: now one line naming the setting, exit 2, before the data is read
    (the data path does not exist, so reading it would be another error)."""
    from clm_torch.train import run_cli

    extra = ["test=false"] if override == "train=false" else []
    cfg = make_cfg("data=csv", f"data.path={tmp_path / 'absent.csv'}", "data.target=churn", override, *extra)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_settings_are_looked_up_one_way() -> None:
    """The settings checks share one lookup (train._select): a key that is absent, or whose
    interpolation fails, is skipped by the monitor and callback checks (reported where it is used),
    an explicit null is None, and the model/data checks see the resolution error."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    from clm_torch.train import _ABSENT, _select, check_monitor_modes

    cfg = OmegaConf.create({"monitor": "${oops}", "monitor_mode": "max", "callbacks": {"early_stopping": None},
                            "model": {"lr": 0.1, "k": None}})
    assert _select(cfg, "model.lr") == 0.1 and _select(cfg, "model.k") is None
    assert _select(cfg, "model.nope") is _ABSENT and _select(cfg, "callbacks.early_stopping.mode") is _ABSENT
    assert _select(cfg, "monitor") is _ABSENT
    with pytest.raises(InterpolationResolutionError):
        _select(cfg, "monitor", skip_unresolved=False)
    check_monitor_modes(cfg)  # the unresolved monitor is left to the run to report


@pytest.mark.parametrize("overrides, message", [
    (["data=events", "data.path=log.csv", "data.sequence_length=-1"],
     "data.sequence_length=-1: expected a whole number >= 0 (0 = no purchase sequence)"),
    (["data=events", "data.path=log.csv", "data.time_features=foo"],
     "data.time_features='foo': expected one of absolute, relative, both"),
    (["data=events", "data.path=log.csv", "data.n_last=0"], "data.n_last=0: expected a whole number >= 1"),
    (["data=events", "data.path=log.csv", "data.horizon_days=0"], "data.horizon_days=0: expected a number of days > 0"),
    (["model=recommender", "data=interactions", "data.path=log.csv", "data.test_fraction=1.5"],
     "data.test_fraction=1.5: expected a share in (0, 1)"),
    (["model=recommender", "data=interactions", "data.path=log.csv", "data.n_neighbors=-1"],
     "data.n_neighbors=-1: expected a whole number >= 0 (0 = no item-item term)"),
    (["model=recommender", "data=interactions", "data.path=log.csv", "model.loss=hinge"],
     "model.loss='hinge': expected one of softmax, sampled_softmax, bpr"),
    (["data=events", "data.path=log.csv", "data.csv.decimal=','"],
     "data.csv.sep and data.csv.decimal are both ',': a number such as 1,5 could not be told from two fields or a "
     "thousands group; a file with decimal commas is usually separated by ';' (data.csv.sep=';' data.csv.decimal=',')"),
    (["model=recommender", "data=interactions", "data.path=log.csv", "data.csv.sep=ab"],
     "data.csv.sep='ab': expected one character such as ';' or ',' (\\t for a tab)"),
])
def test_the_settings_of_event_and_interaction_logs_are_checked_before_the_log_is_read(
        make_cfg, overrides: list[str], message: str) -> None:
    """Log settings that used to be refused only once the log was read (or, for some, in a traceback),
    after the run directory was made."""
    from clm_torch.train import check_settings
    from clm_torch.utils.io import SettingError

    with pytest.raises(SettingError) as err:
        check_settings(make_cfg(*overrides))
    assert str(err.value) == message


@pytest.mark.parametrize("overrides, message", [
    (["model=churn", "data.target=null"],
     "error: model=churn needs a binary target column, but data=csv has none: set data.target=<column> "
     "(e.g. data.target=churn)"),
    (["model=spend"],
     "error: model=spend needs a continuous target, but data=csv's target churn is binary (data.target=future_spend "
     "with data=events or synthetic_events, or a numeric column with data.target_type=continuous; model=churn "
     "predicts a binary one)"),
    (["model=churn", "data.target_type=continuous"],
     "error: model=churn needs a binary target, but data=csv's target churn is continuous (e.g. data.target=churn; "
     "model=spend predicts a continuous target)"),
    (["model=churn", "data=events", "data.path=log.csv", "data.amount_col=amount", "data.target=future_spend"],
     "error: model=churn needs a binary target, but data=events's target future_spend is continuous (e.g. "
     "data.target=churn; model=spend predicts a continuous target)"),  # data=events: before its log is read
    (["model=spend", "data=events", "data.path=log.csv", "data.amount_col=amount"],
     "error: model=spend needs a continuous target, but data=events's target churn is binary (data.target="
     "future_spend with data=events or synthetic_events, or a numeric column with data.target_type=continuous; "
     "model=churn predicts a binary one)"),
    (["experiment=vae_synthetic", "model=churn"],  # the VAE recipe switched the target off
     "error: model=churn needs a binary target column, but data=synthetic has none: set data.require_target=true"),
    (["model=infogap_vae", "data=movielens"],  # the VAE's data settings do not fit an interaction module
     "error: model=infogap_vae trains on a customer table (data=csv, parquet, events, synthetic or telco), but "
     "data=movielens is a user-item interaction log"),
    (["model=recommender"],
     "error: model=recommender trains on a user-item interaction log (data=interactions data.path=<file>, "
     "or data=movielens), but data=csv is a customer table"),
    (["model=churn", "data=movielens"],
     "error: model=churn trains on a customer table (data=csv, parquet, events, synthetic or telco), but "
     "data=movielens is a user-item interaction log"),
])
def test_a_model_paired_with_data_it_cannot_use_is_one_clear_line_before_the_data_is_read(
        make_cfg, table_csv: Path, capsys, monkeypatch, overrides: list[str], message: str) -> None:
    """`clm-train model=churn data=csv` without data.target used to stop in a KeyError traceback after
    reading the table, `model=recommender` on a table and `model=spend` on a binary target in a
    TypeError about a constructor argument: now one line naming the settings, exit 2, and no source read."""
    from clm_torch.data.sources.interactions import MovieLensSource
    from clm_torch.data.sources.tables import CSVSource
    from clm_torch.train import run_cli

    def refuse(*args, **kwargs):
        raise AssertionError("the data was read before the model and data were checked")

    import clm_torch.data.sources.events as event_sources
    from clm_torch.data.sources.tables import SyntheticSource

    monkeypatch.setattr(CSVSource, "load", refuse)
    monkeypatch.setattr(MovieLensSource, "load", refuse)
    monkeypatch.setattr(SyntheticSource, "load", refuse)
    monkeypatch.setattr(event_sources, "load_events", refuse)
    table = ["data=csv", f"data.path={table_csv}", "data.target=churn", "data.id_col=customer_id"]
    own_data = any(o.startswith(("data=", "experiment=")) for o in overrides)
    cfg = make_cfg(*([] if own_data else table), *overrides)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_settings_this_machine_or_file_cannot_serve_are_one_clear_line(make_cfg, table_csv: Path, small_ckpt: Path,
                                                                        capsys) -> None:
    """trainer=gpu without a GPU (a Hydra InstantiationException traceback before), and a
    model.infogap_ckpt that is no VAE (Python advice about load_from_checkpoint before)."""
    from clm_torch.train import run_cli

    def error(*overrides: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(train, make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=1", *overrides))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        return err

    assert error(f"model.infogap_ckpt={small_ckpt}") == (
        f"error: model.infogap_ckpt={small_ckpt}: holds a ChurnClassifier, not an InfoGapVAE: pass an InfoGapVAE "
        "checkpoint")
    if not torch.cuda.is_available():
        assert error("trainer=gpu") == (f"error: trainer.accelerator=gpu: torch {torch.__version__} sees no CUDA GPU "
                                        "here; train on the CPU (trainer=cpu), or install a CUDA build of torch (see "
                                        "the README)")


def test_the_summary_lists_what_the_run_wrote(make_cfg, table_csv: Path, capsys) -> None:
    """The closing lines name the outputs there are: csv/ (not tensorboard/) with logger=csv, and no
    TensorBoard advice without a TensorBoard log; logger=none is a choice (logger=null was a Hydra error)."""
    train(make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=1", "logger=csv", out="csv"))
    out = capsys.readouterr().out
    assert f"outputs in {Path(make_cfg(out='csv').paths.output_dir)}: checkpoints/, csv/, metrics.json, " \
           "predictions/" in out and "tensorboard" not in out
    train(make_cfg(*_csv(table_csv), *FAST, "trainer.max_epochs=1", "logger=none", out="none"))
    assert ": checkpoints/, metrics.json, predictions/\n" in capsys.readouterr().out
    # callbacks=none: the checkpoint is still checkpoints/last.ckpt, where clm-evaluate and ckpt_path=last look
    # (Lightning's own callback wrote tensorboard/checkpoints/epoch=0-step=N.ckpt)
    run = Path(make_cfg(out="bare").paths.output_dir)
    train(make_cfg(*_csv(table_csv), *[f for f in FAST if not f.startswith("callbacks.")], "trainer.max_epochs=1",
                   "callbacks=none", out="bare"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
    assert not list((run / "tensorboard").rglob("*.ckpt"))


def test_degenerate_training_data_is_refused_or_warned_about(make_cfg, tmp_path: Path, caplog) -> None:
    """Found by training on degenerate tables: a validation split of one class (300 rows, 2 churners)
    reported AUROC 0 and skipped the calibration without a word; a spend target with refunds below 0
    made the Tweedie loss fall without bound (capture 2e14), one of all zeros trained on nothing; a
    one-row split stopped the spend model in a TypeError; one huge value squeezed a column to one value."""
    import logging

    from clm_torch.data.schema import SchemaError

    df = messy_table(300, seed=2)
    df["churn"] = "No"
    df.loc[df.index[:2], "churn"] = "Yes"
    df["spend"] = np.linspace(0.0, 50.0, len(df))
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    base = ["data=csv", f"data.path={path}", "data.id_col=customer_id", "data.batch_size=64",
            "callbacks.model_summary=null", "trainer.max_epochs=1", "~logger"]
    with pytest.raises(SchemaError, match=r"t\.csv, column 'churn': the val split \(45 rows\) holds one class of "
                                          r"'churn' only \(2 positives in 300 rows\)"):
        train(make_cfg(*base, *FAST, "model=churn", "data.target=churn", "data.drop=[spend]", out="one_class"))
    spend = [*base, "model=spend", "data.target=spend", "data.target_type=continuous", "data.drop=[churn]",
             "model.hidden=[8]"]
    df.assign(spend=0.0).to_csv(path, index=False)
    with pytest.raises(SchemaError, match=r"column 'spend': the target is never above 0 in the training split"):
        train(make_cfg(*spend, out="zeros"))
    df.assign(spend=df["spend"] - 10.0).to_csv(path, index=False)  # a fifth of the customers net refunds
    with caplog.at_level(logging.WARNING, logger="clm_torch.train"):
        metrics, _ = train(make_cfg(*spend, out="refunds"))
    assert "training values are below 0" in caplog.text
    assert 0 <= metrics["test/capture20"] <= 1 and np.isfinite(metrics["test/loss"])
    df.iloc[:10].to_csv(path, index=False)  # val and test splits of one or two rows
    metrics, _ = train(make_cfg(*spend, out="tiny"))
    assert np.isfinite(metrics["test/rmse"])
    huge = df.assign(tenure=df["tenure"].where(df.index != 5, 1e12) - 100.0)  # negative: no log transform
    huge.to_csv(path, index=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.encoding"):
        train(make_cfg(*spend, out="huge"))
    assert "column 'tenure': a few extreme values" in caplog.text


def test_metrics_json_reports_the_best_epoch_and_a_moved_run_keeps_its_best(make_cfg, table_csv: Path) -> None:
    """With the first epoch the best (the run monitors the epoch, smallest first), every val/* value in
    metrics.json is that epoch's, as logged; a copy of the run directory resumed elsewhere keeps
    epoch 0 as its best instead of letting the next epoch replace it."""
    import json
    import shutil

    args = [*_csv(table_csv), *FAST, "monitor=epoch", "monitor_mode=min", "callbacks.early_stopping=null",
            "logger=csv", "model.lr=0.01"]
    metrics, _ = train(make_cfg(*args, "trainer.max_epochs=3"))
    run = Path(make_cfg(out="run").paths.output_dir)
    log = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/auroc"]).set_index("epoch")
    assert log.loc[2, "val/auroc"] != log.loc[0, "val/auroc"]  # else the test could not tell them apart
    for key in ("val/auroc", "val/log_loss", "val/brier"):
        assert metrics[key] == pytest.approx(log.loc[0, key], abs=1e-6), key

    moved = Path(make_cfg(out="moved").paths.output_dir)
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    train(make_cfg(*args, "trainer.max_epochs=4", "ckpt_path=last", out="moved"))
    assert torch.load(moved / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    assert json.loads((moved / "metrics.json").read_text())["best_ckpt"] == str(moved / "checkpoints" / "best.ckpt")


def test_metrics_json_is_strict_json(tmp_path: Path) -> None:
    """NaN (e.g. ``optimized`` of a train=false run) is written as null: Python's json would read NaN,
    but jq, JavaScript and most other readers refuse it."""
    import json

    from clm_torch.utils.io import write_json

    path = write_json({"optimized": float("nan"), "val/auroc": np.float32(0.75), "n": [1.0, float("inf")]},
                      tmp_path / "metrics.json")
    def refuse(token: str) -> None:
        raise ValueError(token)

    assert json.loads(path.read_text(), parse_constant=refuse) == {"optimized": None, "val/auroc": 0.75,
                                                                   "n": [1.0, None]}


def _run_two_at_a_time(argvs: list[list[str]], env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Run independent commands two at a time (one per core of the CI machine), results in order."""
    def start(argv: list[str]) -> subprocess.Popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    running, done = [start(a) for a in argvs[:2]], []
    for i, proc in enumerate(running):
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        if i + 2 < len(argvs):
            running.append(start(argvs[i + 2]))
    return done


@pytest.mark.slow
def test_a_command_refused_for_a_setting_leaves_no_run_directory(tmp_path: Path) -> None:
    """A bad setting is refused by the run-directory guard before Hydra makes the run directory (it
    used to leave a folder of .hydra/ and a log for every refused command): one line, exit 2, no folder."""
    commands = [
        (["clm_torch.train", "experiment=churn_synthetic", "model.lr=-1"], "error: model.lr=-1: expected a number > 0"),
        (["clm_torch.train", "data=csv"], "error: no value for data.path"),
        (["clm_torch.train", "model=churn", "data=movielens"], "error: model=churn trains on a customer table"),
        (["clm_torch.pipeline", "horizon_days=0"], "error: horizon_days=0: expected a number of days > 0"),
        (["clm_torch.train", "experiment=churn_synthetic", "model.calibration=foo"],
         "error: model.calibration='foo': expected one of platt, temperature, none"),
        (["clm_torch.train", "experiment=churn_synthetic", "ckpt_path=last"], "error: "),  # no run to resume there
    ]
    # the commands are independent (a run directory each): two at a time, one per core
    done = _run_two_at_a_time([[sys.executable, "-m", *cmd, f"hydra.run.dir={tmp_path / f'run{i}'}"]
                               for i, (cmd, _) in enumerate(commands)], {**os.environ, "CLM_ROOT": str(tmp_path)})
    for i, ((cmd, line), proc) in enumerate(zip(commands, done)):
        run = tmp_path / f"run{i}"
        assert proc.returncode == 2, (cmd, proc.stderr[-2000:])
        assert proc.stderr.strip().splitlines()[-1].startswith(line), (cmd, proc.stderr[-2000:])
        if "ckpt_path=last" in cmd:
            assert proc.stderr.strip().endswith("checkpoints/last.ckpt: ckpt_path=last but this run directory has no "
                                                "last.ckpt; pass hydra.run.dir=<the interrupted run's directory>")
        assert not run.exists(), (cmd, sorted(p.name for p in run.rglob("*")))
    assert not (tmp_path / "logs").exists()


@pytest.mark.extended  # a whole command-line run, 20-40 s on a 2-core VM: `make test-extended`
def test_a_grid_sweep_whose_first_job_is_refused_leaves_no_sweep_directory(tmp_path: Path) -> None:
    """`-m` sweeps skipped the early check: a setting every job shares (or the first job's swept value)
    was refused inside job 0's folder, after Hydra had made the sweep directory; a misspelt models.<m>.*
    key of a pipeline sweep likewise. The first job is now checked before anything is written; a later
    job's bad value is still refused inside its own folder, after the jobs before it ran."""
    commands = [
        (["clm_torch.train", "-m", "experiment=churn_synthetic", "model.lr=-1", "seed=1,2"],
         "error: model.lr=-1: expected a number > 0"),
        (["clm_torch.pipeline", "-m", "+models.churn.model.k_ensembel=4,8"],
         "error: models.churn.model.k_ensembel=4: model.k_ensembel is not a setting of the churn sub-run"),
    ]
    done = _run_two_at_a_time([[sys.executable, "-m", *cmd] for cmd, _ in commands],
                              {**os.environ, "CLM_ROOT": str(tmp_path)})
    for (cmd, line), proc in zip(commands, done):
        assert proc.returncode == 2, (cmd, proc.stderr[-2000:])
        assert proc.stderr.strip().splitlines()[-1].startswith(line), (cmd, proc.stderr[-2000:])
    assert not (tmp_path / "logs").exists(), sorted(str(p) for p in (tmp_path / "logs").rglob("*"))


@pytest.mark.extended  # a whole command-line run, 20-40 s on a 2-core VM: `make test-extended`
def test_a_refused_command_leaves_the_earlier_runs_recorded_config(tmp_path: Path) -> None:
    """Hydra writes .hydra/config.yaml before the task runs: the run-directory guard (a Hydra
    callback) refuses a finished run's directory before that, for clm-train, clm-evaluate, a -m sweep
    over a sweep directory with a finished job and clm-pipeline over a pipeline run that stopped after
    its first model; exit 2 with one line, files untouched."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0  # the earlier run\n")
    (run / "metrics.json").write_text("{}\n")
    pipe = tmp_path / "pipe"  # a pipeline run that stopped after its first model
    (pipe / "vae" / "checkpoints").mkdir(parents=True)
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("earlier sweep\n")
    commands = [
        ["clm_torch.train", "experiment=churn_synthetic", "seed=99", f"hydra.run.dir={run}"],
        ["clm_torch.evaluate", f"ckpt_path={run}", "data=synthetic", f"hydra.run.dir={run}"],
        ["clm_torch.train", "-m", "experiment=churn_synthetic", "seed=1,2", f"hydra.sweep.dir={sweep}"],
        ["clm_torch.pipeline", f"hydra.run.dir={pipe}"],
    ]
    # independent directories: two at a time, one per core
    for (module, *_), proc in zip(commands, _run_two_at_a_time([[sys.executable, "-m", *c] for c in commands],
                                                               dict(os.environ))):
        assert proc.returncode == 2, (module, proc.stderr[-2000:])
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "nothing was overwritten" in proc.stderr
    assert (run / ".hydra" / "config.yaml").read_text() == "seed: 0  # the earlier run\n"
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == ["config.yaml"]
    assert (run / "metrics.json").read_text() == "{}\n"
    assert (sweep / "multirun.yaml").read_text() == "earlier sweep\n" and not (sweep / "0" / ".hydra").exists()
    assert sorted(p.name for p in pipe.rglob("*")) == ["checkpoints", "vae"]


def test_train_false_or_resume_on_other_data_is_refused(make_cfg, table_csv: Path, tmp_path: Path) -> None:
    """train=false / ckpt_path=last re-fit the preprocessing on this run's data: when it differs from the
    checkpoint's (another file, another split), the rows would be encoded unlike the model's training
    rows, so the run is refused with a pointer to clm-evaluate; the same data passes."""
    from clm_torch.utils.io import CheckpointError

    args = [*_csv(table_csv), *FAST, "trainer.max_epochs=1", "~logger"]
    train(make_cfg(*args, out="first"))
    best = tmp_path / "first" / "checkpoints" / "best.ckpt"
    shifted = tmp_path / "shifted.csv"
    df = pd.read_csv(table_csv)
    df["monthly_fee"] = df["monthly_fee"] * 3 + 50
    df.to_csv(shifted, index=False)
    metrics, _ = train(make_cfg(*args, "train=false", f"ckpt_path={best}", out="same_data"))
    assert metrics["best_ckpt"] == str(best)
    with pytest.raises(CheckpointError, match=r"best.ckpt: its preprocessing \(encoder\) was fitted on other data "
                                              r"\(or another split\).*"
                                              r"clm-evaluate ckpt_path="):
        train(make_cfg(*[a.replace(str(table_csv), str(shifted)) for a in args], "train=false", f"ckpt_path={best}",
                       out="other_data"))
    with pytest.raises(CheckpointError, match="resuming would go on training on rows encoded differently"):
        train(make_cfg(*args, "data.split_seed=5", "trainer.max_epochs=2", "ckpt_path=last", out="first"))
    # a run directory stands for its best checkpoint; other layer sizes or another model are refused
    metrics, _ = train(make_cfg(*args, "train=false", f"ckpt_path={tmp_path / 'first'}", out="run_dir"))
    assert metrics["best_ckpt"] == str(best)
    with pytest.raises(CheckpointError,
                       match=r"its weights do not fit the model this config builds: .*32\) in the checkpoint"):
        train(make_cfg(*args, "model.hidden=[16]", "train=false", f"ckpt_path={best}", out="hidden"))
    with pytest.raises(CheckpointError, match="holds a ChurnClassifier, but the config builds an InfoGapVAE"):
        train(make_cfg(*[a for a in args if not a.startswith("model")], "model=infogap_vae", "train=false",
                       f"ckpt_path={best}", out="vae"))


def test_clip_outliers_bounds_come_from_the_training_split_and_travel_with_the_checkpoint(
        make_cfg, table_csv: Path, tmp_path: Path) -> None:
    """data.clean.clip_outliers: the bounds are median ± k robust sd of the training rows, stored in the
    encoder, so the run's test predictions equal scoring the raw test rows from best.ckpt (they did
    not when the whole table was clipped before the split and the bounds were thrown away)."""
    from clm_torch import ChurnClassifier

    df = pd.read_csv(table_csv)
    df.loc[df.index[::37], "monthly_fee"] = 5000.0  # outliers in every split
    path = tmp_path / "outliers.csv"
    df.to_csv(path, index=False)
    args = [*_csv(path), *FAST, "trainer.max_epochs=1", "~logger", "data.clean.clip_outliers=1.5"]
    _, objects = train(make_cfg(*args, out="clip"))
    dm = objects["datamodule"]
    fee = dm.frames["train"]["monthly_fee"].astype(float).dropna()
    j = dm.encoder.num_columns.index("monthly_fee")
    robust_sd = 1.4826 * (fee - fee.median()).abs().median()  # not moved by the outliers (mean ± k·std was)
    assert dm.encoder.num_clip_hi[j] == pytest.approx(fee.median() + 1.5 * robust_sd, rel=1e-9)
    assert dm.encoder.num_clip_hi[j] < fee[fee < 5000].max()  # so a bound inside the bulk, unlike mean ± 1.5 std
    assert dm.encoder.num_max[j] == pytest.approx(dm.encoder.num_clip_hi[j])  # training rows were clipped too
    run = tmp_path / "clip"
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    assert model.encoder.num_clip_hi == dm.encoder.num_clip_hi
    preds = pd.read_csv(run / "predictions" / "test.csv")
    raw = df.set_index("customer_id").loc[preds["customer_id"]].reset_index()
    assert (raw["monthly_fee"] == 5000.0).any()
    enc = model.encoder.transform(raw.iloc[:2].assign(monthly_fee=[5000.0, 1e6]))["num"][:, j]
    assert enc[0] == enc[1]  # both at the bound
    np.testing.assert_allclose(model.predict_proba(raw), preds["prediction"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_resume_keeps_the_runs_record_and_names_dropped_settings(table_csv: Path, tmp_path: Path) -> None:
    """Resuming (ckpt_path=last) writes the resume command's Hydra files under .hydra/resume_<stamp>/
    instead of over the run's own record, and warns about settings of the original command that the
    resume command leaves out (here it is then refused: the layer sizes differ, and the refused
    command's record is removed, its error kept in the run's log)."""
    run = tmp_path / "run"
    base = [sys.executable, "-m", "clm_torch.train", *_csv(table_csv), *FAST, "~logger", f"hydra.run.dir={run}"]
    first = subprocess.run([*base, "model.lr=0.003", "trainer.max_epochs=1"], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    record = {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")}
    same = subprocess.run([*base, "model.lr=0.003", "trainer.max_epochs=2", "ckpt_path=last"], capture_output=True,
                          text=True, timeout=300)
    assert same.returncode == 0 and "warning: resuming" not in same.stderr, same.stderr[-2000:]
    short = [a for a in base if a != "model.hidden=[32]"]
    dropped = subprocess.run([*short, "trainer.max_epochs=3", "ckpt_path=last"], capture_output=True, text=True,
                             timeout=300)
    assert dropped.returncode == 2
    assert "without settings of its original command: model.hidden=[32] model.lr=0.003" in dropped.stderr
    assert "its weights do not fit the model this config builds" in dropped.stderr
    assert {p.name: p.read_bytes() for p in (run / ".hydra").glob("*.yaml")} == record
    assert len(list((run / ".hydra").glob("resume_*"))) == 1  # the successful resume's
    assert "its weights do not fit the model this config builds" in "".join(
        p.read_text() for p in run.glob("*.log"))


def test_clm_train_on_a_table_with_unlabelled_rows(make_cfg, tmp_path: Path, capsys) -> None:
    """clm-train data=csv on a table where some customers have no label yet: refused in one line that names
    the file, the column, the first row and data.drop_unlabelled; with data.drop_unlabelled=true the run
    trains without them (none in predictions/test.csv) and its checkpoint scores them; a value other
    than true/false is refused before the run directory is made."""
    from clm_torch.train import SettingError, check_settings, run_cli

    df = messy_table(400, seed=4)
    df.loc[[5, 40, 41, 300], "churn"] = np.nan
    path = tmp_path / "crm.csv"
    df.to_csv(path, index=False)
    base = ["model=churn", "data=csv", f"data.path={path}", "data.target=churn", "data.id_col=customer_id",
            "trainer.max_epochs=1", "logger=none", *FAST]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, make_cfg(*base, out="refused"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith(
        f"error: {path}, column 'churn', row 5: target has 4 missing values (1.0% of 400 rows); drop those rows or "
        "fill them, or set data.drop_unlabelled=true")
    with pytest.raises(SettingError, match=r"data.drop_unlabelled='maybe': expected true"):
        check_settings(make_cfg(*base, "data.drop_unlabelled=maybe", out="bad"))
    cfg = make_cfg(*base, "data.drop_unlabelled=true", out="dropped")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    preds = pd.read_csv(run / "predictions" / "test.csv", dtype={"customer_id": str})
    unlabelled = df.loc[df["churn"].isna(), "customer_id"]
    assert len(preds) == 59 and not set(unlabelled) & set(preds["customer_id"])  # 15 % of the 396 labelled
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    p = model.predict_proba(df.loc[df["churn"].isna()])
    assert p.shape == (4,) and np.isfinite(p).all()
