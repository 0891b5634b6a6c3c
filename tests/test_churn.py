"""ChurnClassifier end to end through train(cfg), and scoring raw frames from a checkpoint."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clm_torch import ChurnClassifier, SchemaError
from clm_torch.train import train
from tests.conftest import REPO, messy_table

FAST = ["model.k_ensemble=2", "model.hidden=[32]", "model.d_embed=8", "trainer.max_epochs=3",
        "data.batch_size=64", "callbacks.model_summary=null"]


def _csv_overrides(path: Path) -> list[str]:
    return ["model=churn", "data=csv", f"data.path={path}", "data.target=churn", "data.id_col=customer_id"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[dict, Path]:
    from tests.conftest import compose_cfg

    tmp = tmp_path_factory.mktemp("churn")
    p = tmp / "customers.csv"
    messy_table(800).to_csv(p, index=False)
    cfg = compose_cfg([*_csv_overrides(p), *FAST], tmp / "run")
    metrics, _ = train(cfg)
    return metrics, tmp / "run"


def test_fast_dev_run_on_synthetic(make_cfg) -> None:
    cfg = make_cfg("debug=fdr", "data.source.n_customers=600", *FAST)
    metrics, objects = train(cfg)
    assert objects["trainer"].fast_dev_run
    assert np.isfinite(metrics["test/loss"])


def test_run_directory_has_everything(trained_run) -> None:
    metrics, run = trained_run
    for rel in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json", "predictions/test.csv",
                ".hydra/config.yaml") if (run / ".hydra").exists() else ("checkpoints/best.ckpt",
                                                                           "checkpoints/last.ckpt", "metrics.json",
                                                                           "predictions/test.csv"):
        assert (run / rel).exists(), rel
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test/auroc"] == pytest.approx(metrics["test/auroc"])
    assert 0.5 <= saved["test/auroc"] <= 1.0 and saved["val/auroc"] > 0.7  # the planted signal is learnable
    preds = pd.read_csv(run / "predictions" / "test.csv")
    assert list(preds.columns) == ["customer_id", "label", "prediction"]
    assert preds["prediction"].between(0, 1).all() and len(preds) == 120
    from clm_torch.callbacks import expected_calibration_error  # in metrics.json too, not only TensorBoard

    assert saved["test/ece"] == pytest.approx(expected_calibration_error(preds["prediction"].to_numpy(),
                                                                         preds["label"].to_numpy()), abs=1e-4)


def test_checkpoint_is_weights_only_and_scores_raw_frames(trained_run) -> None:
    _, run = trained_run
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert "clm_preprocessing" in ckpt and "encoder" in ckpt["clm_preprocessing"]
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    df = messy_table(50, seed=3).drop(columns=["churn"])
    df.loc[0, "contract"] = "lifetime"  # unseen category
    df.loc[1, ["tenure", "monthly_fee", "region"]] = np.nan  # NaN everywhere
    df["unused_extra"] = "x"  # extra column
    p = model.predict_proba(df)
    assert p.shape == (50,) and np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    p_small_batches = model.predict_proba(df, batch_size=7)
    np.testing.assert_allclose(p, p_small_batches, rtol=1e-5, atol=1e-6)
    model.forward_rows = 3  # forward passes smaller than the encoded chunk, the last one partial
    np.testing.assert_allclose(p, model.predict_proba(df, batch_size=20), rtol=1e-5, atol=1e-6)
    with pytest.raises(SchemaError, match="column 'tenure'.*missing"):
        model.predict_proba(df.drop(columns=["tenure"]))
    assert not model.training  # loaded in eval mode, ready to score


def _cxx_compiler() -> str | None:
    import os
    import shutil

    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.slow
@pytest.mark.skipif(_cxx_compiler() is None, reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_scoring_matches_the_uncompiled_one(trained_run, monkeypatch) -> None:
    """predict_proba(compile=True) runs the full forward passes through torch.compile (the last, shorter
    pass uncompiled) and gives the uncompiled probabilities, for this model and for a second one of the
    same shape with other weights (the compiled graph takes the weights as inputs, it does not keep them)."""
    _, run = trained_run
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    model.forward_rows = 16
    df = messy_table(50, seed=3).drop(columns=["churn"])
    made = []
    build = ChurnClassifier._compiled_predict_batch
    monkeypatch.setattr(ChurnClassifier, "_compiled_predict_batch", lambda self: made.append(build(self)) or made[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning: it really compiled
        for m in (model, ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")):
            if m is not model:
                m.forward_rows = 16
                with torch.no_grad():
                    for prm in m.parameters():
                        prm.add_(0.1 * torch.randn_like(prm))
            eager = m.predict_proba(df)
            np.testing.assert_allclose(m.predict_proba(df, compile=True), eager, rtol=1e-5, atol=1e-6)
    assert [f.state for f in made] == [{"ok": True}] * 2


def test_compiled_scoring_falls_back_with_a_warning(trained_run, monkeypatch) -> None:
    """When torch.compile fails (no C++ compiler, an unsupported op), scoring goes on uncompiled."""
    _, run = trained_run
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    model.forward_rows = 16
    df = messy_table(50, seed=3).drop(columns=["churn"])

    def broken(fn, **_):
        def call(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: InvalidCxxCompiler: No working C\+\+ "
                                         r"compiler found\); scoring without it") as rec:
        p = model.predict_proba(df, compile=True)
    assert len([w for w in rec if "torch.compile failed" in str(w.message)]) == 1  # once, not per pass
    np.testing.assert_allclose(p, model.predict_proba(df), rtol=1e-6)

    def refused(fn, **_):
        raise RuntimeError("torch.compile is not supported on this Python version")

    monkeypatch.setattr(torch, "compile", refused)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: torch.compile is not supported"):
        np.testing.assert_allclose(model.predict_proba(df, compile=True), p, rtol=1e-6)


def test_rows_without_a_readable_value_are_warned_about(trained_run, caplog) -> None:
    """A row whose every feature is missing (or an unseen category) still gets a probability, from
    the missingness alone: a warning counts such rows and names one."""
    import logging

    _, run = trained_run
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    df = messy_table(20, seed=3).drop(columns=["churn"])
    cols = model.encoder.feature_columns
    with caplog.at_level(logging.WARNING, logger="clm_torch.models.churn"):
        model.predict_proba(df, source="new.csv")
    assert "no feature value" not in caplog.text
    df.loc[[4, 9], cols] = np.nan
    with caplog.at_level(logging.WARNING, logger="clm_torch.models.churn"):
        p = model.predict_proba(df, source="new.csv", batch_size=6)
    assert np.isfinite(p).all()
    assert "new.csv: 2 of 20 rows have no feature value the model can read" in caplog.text
    assert "index 4" in caplog.text



def test_scoring_frames_with_unknown_targets_and_bad_numbers(trained_run) -> None:
    """Rows whose churn label is not known yet are scored (the label column is ignored); numbers too
    large for float32, dates in a numeric column and duplicated columns are clear SchemaErrors."""
    _, run = trained_run
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    df = messy_table(50, seed=3)
    p = model.predict_proba(df.drop(columns=["churn"]))
    unlabelled = df.assign(churn=np.where(np.arange(50) < 45, df["churn"], None))
    np.testing.assert_allclose(model.predict_proba(unlabelled), p, rtol=1e-6)
    with pytest.raises(SchemaError, match=r"column 'tenure'.*too large to encode"):
        model.predict_proba(df.assign(tenure=1e300))
    with pytest.raises(SchemaError, match=r"column 'tenure'.*expected a number but found datetime64"):
        model.predict_proba(df.assign(tenure=pd.Timestamp("2024-01-01")))
    with pytest.raises(SchemaError, match=r"column 'tenure'.*2 columns share this name"):
        model.predict_proba(pd.concat([df, df[["tenure"]]], axis=1))
    assert model.predict_proba(df.iloc[:0]).shape == (0,)
    with pytest.raises(SchemaError, match=r"required column.*missing"):
        model.predict_proba(pd.DataFrame())

def test_predictions_csv_matches_predict_proba(trained_run) -> None:
    """The test predictions written by the run equal scoring the raw test rows from best.ckpt."""
    _, run = trained_run
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    preds = pd.read_csv(run / "predictions" / "test.csv")
    raw = messy_table(800).set_index("customer_id").loc[preds["customer_id"]].reset_index()
    np.testing.assert_allclose(model.predict_proba(raw), preds["prediction"], rtol=1e-4, atol=1e-5)


def test_calibration_is_fitted_and_stored(trained_run) -> None:
    _, run = trained_run
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    a, b = ckpt["state_dict"]["calib"].tolist()
    assert (a, b) != (1.0, 0.0)


def test_same_seed_same_metrics(make_cfg, table_csv) -> None:
    runs = []
    for i in range(2):
        cfg = make_cfg(*_csv_overrides(table_csv), *FAST, "trainer.max_epochs=2", "~logger", out=f"r{i}")
        runs.append(train(cfg)[0])
    for k in ("val/auroc", "test/auroc", "test/log_loss"):
        assert runs[0][k] == runs[1][k], k
    preds = [pd.read_csv(Path(make_cfg(out=f"r{i}").paths.output_dir) / "predictions" / "test.csv") for i in range(2)]
    pd.testing.assert_frame_equal(preds[0], preds[1])  # identical predictions, not just metrics
    cfg = make_cfg(*_csv_overrides(table_csv), *FAST, "trainer.max_epochs=2", "~logger", "seed=7", out="r7")
    assert train(cfg)[0]["test/log_loss"] != runs[0]["test/log_loss"]


@pytest.mark.slow
def test_cli_trains_any_csv_and_reports_bad_input(tmp_path: Path, table_csv: Path) -> None:
    exe = [sys.executable, "-m", "clm_torch.train"]
    ok = subprocess.run([*exe, *_csv_overrides(table_csv), *FAST, "trainer.max_epochs=1",
                         f"hydra.run.dir={tmp_path / 'cli_run'}"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"run directory: {tmp_path / 'cli_run'}" in ok.stdout
    assert (tmp_path / "cli_run" / "checkpoints" / "best.ckpt").exists()
    bad = subprocess.run([*exe, "data=csv", f"data.path={tmp_path / 'missing.csv'}", "data.target=churn",
                          f"hydra.run.dir={tmp_path / 'bad'}"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0
    assert "missing.csv" in bad.stderr and "not found" in bad.stderr
    assert "Traceback" not in bad.stderr
    typo = subprocess.run([*exe, "trainer.max_epoch=3", f"hydra.run.dir={tmp_path / 'typo'}"],
                          capture_output=True, text=True, cwd=REPO)
    assert typo.returncode != 0 and "max_epoch" in typo.stderr


def test_churn_with_infogap_vae(tmp_path, make_cfg, recwarn) -> None:
    """`model.infogap_ckpt`: the frozen VAE's signals become inputs, missing cells are routed through
    its imputation, and the churn checkpoint is self-contained (scores with the VAE file deleted).
    Lightning's warning about modules in eval mode is not shown for the VAE, which is frozen on purpose."""
    import shutil

    from clm_torch.models.infogap_features import infogap_columns
    from clm_torch.train import train
    from tests.conftest import messy_table

    df = messy_table(500, seed=1)
    df.loc[df.index % 7 == 0, "contract"] = np.nan
    csv = tmp_path / "customers.csv"
    df.to_csv(csv, index=False)
    data = ["data=csv", f"data.path={csv}", "data.target=churn", "data.id_col=customer_id"]
    small = ["trainer.max_epochs=2", "logger=csv", "callbacks.model_summary=null", "trainer.enable_model_summary=false"]
    vae_m, _ = train(make_cfg("model=infogap_vae", *data, *small, "model.latent_dim=4", "model.encoder_hidden=[16]",
                              "model.decoder_hidden=[16]", "model.n_samples=2", out="vae"))
    vae_ckpt = tmp_path / "vae.ckpt"
    shutil.copy(tmp_path / "vae" / "checkpoints" / "best.ckpt", vae_ckpt)
    metrics, objects = train(make_cfg("model=churn", *data, *small, f"model.infogap_ckpt={vae_ckpt}",
                                      "model.k_ensemble=2", "model.additive_members=0", "model.hidden=[16]",
                                      "model.infogap_samples=2", out="churn"))
    assert np.isfinite(metrics["test/auroc"])
    assert not [w for w in recwarn if "in eval mode at the start of training" in str(w.message)]
    assert not [f for f in warnings.filters if f[1] is not None and "in eval mode" in f[1].pattern]  # for this fit only
    dm, model = objects["datamodule"], objects["model"]
    added = infogap_columns(4)
    assert set(added) <= set(dm.schema.numeric) and dm.encoder.dims()["n_num"] == 2 + len(added)
    # missing inputs were routed through the VAE: no missing contract left in the training split
    assert dm.frames["train"]["contract"].notna().all() and df["contract"].isna().sum() > 50
    assert not any(p.requires_grad for p in model.infogap.parameters())
    ckpt = tmp_path / "churn" / "checkpoints" / "best.ckpt"
    raw = torch.load(ckpt, weights_only=True)
    assert any(k.startswith("infogap.") for k in raw["state_dict"]) and "infogap" in raw["clm_preprocessing"]
    # a VAE of other data: the error says which setting brought the columns it reads
    df.drop(columns=["tenure"]).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(SchemaError, match=r"column 'tenure': required column missing: \['tenure'\]: the InfoGapVAE "
                                          r"of model\.infogap_ckpt=.*vae\.ckpt reads these columns; was it trained"):
        train(make_cfg("model=churn", "data=csv", f"data.path={tmp_path / 'other.csv'}", "data.target=churn",
                       "data.id_col=customer_id", *small, f"model.infogap_ckpt={vae_ckpt}", out="other"))
    vae_ckpt.unlink()  # the churn checkpoint carries the VAE
    loaded = ChurnClassifier.load_from_checkpoint(ckpt)
    test = df.drop(columns=["churn"]).iloc[:40].copy()
    test.loc[test.index[:3], "contract"] = "never-seen"
    p1 = loaded.predict_proba(test)
    assert p1.shape == (40,) and np.isfinite(p1).all() and (p1 > 0).all() and (p1 < 1).all()
    np.testing.assert_allclose(p1, loaded.predict_proba(test), atol=1e-6)  # seeded: deterministic
    with pytest.raises(SchemaError, match="tenure"):
        loaded.predict_proba(test.drop(columns=["tenure"]))
    # no rows (a filter that kept none): nothing to score; it used to ask for the VAE's own columns
    assert loaded.predict_proba(test.iloc[:0]).shape == (0,)
    with pytest.raises(SchemaError, match=r"column 'tenure': required column missing: \['tenure'\]"):
        loaded.predict_proba(test.iloc[:0].drop(columns=["tenure"]))
    # model.infogap_features=summary: only the gap summaries join the inputs (imputation unchanged)
    vae_ckpt2 = tmp_path / "vae2.ckpt"
    shutil.copy(tmp_path / "vae" / "checkpoints" / "best.ckpt", vae_ckpt2)
    m2, o2 = train(make_cfg("model=churn", *data, *small, f"model.infogap_ckpt={vae_ckpt2}", "model.k_ensemble=2",
                            "model.additive_members=0", "model.hidden=[16]", "model.infogap_samples=2",
                            "model.infogap_features=summary", out="churn_summary"))
    assert o2["datamodule"].encoder.dims()["n_num"] == 2 + len(infogap_columns(4, "summary")) == 5
    assert o2["datamodule"].frames["train"]["contract"].notna().all()
    p2 = ChurnClassifier.load_from_checkpoint(m2["best_ckpt"]).predict_proba(test)
    assert np.isfinite(p2).all()
    with pytest.raises(ValueError, match="infogap_features"):
        infogap_columns(4, "latent")
    # a VAE whose posterior no feature moves (feature_info 0, a collapsed posterior, e.g. one epoch of
    # training) has no completeness: 0 for every row, not an all-NaN input column the encoder refuses
    from clm_torch import InfoGapVAE
    from clm_torch.models.infogap_features import infogap_frame

    collapsed = InfoGapVAE.load_from_checkpoint(tmp_path / "vae" / "checkpoints" / "best.ckpt")
    collapsed.feature_info.fill_(0.0)
    frame = infogap_frame(collapsed, df.iloc[:30], n_samples=2)
    assert (frame["vae_completeness"] == 0).all() and frame["vae_gap_score"].notna().all()


def test_fit_platt_is_bounded_and_optimal() -> None:
    """Platt scaling with smoothed targets and a line search: the gradient of its objective vanishes
    at the fit, rescaled (saturated) logits give the rescaled fit, and separable logits stay finite
    instead of pushing every probability to exactly 0 or 1."""
    from clm_torch.models.components.calibration import fit_platt

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g, dtype=torch.float64) * 3
    y = (torch.rand(1000, generator=g, dtype=torch.float64) < torch.sigmoid(0.3 * x)).double()
    a, b = fit_platt(x, y)
    n_pos = float(y.sum())
    t = torch.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (len(y) - n_pos + 2))
    p = torch.sigmoid(a * x + b)
    assert abs(float(((p - t) * x).sum())) < 1e-4 and abs(float((p - t).sum())) < 1e-4
    assert 0.2 < a < 0.45
    a2, b2 = fit_platt(x * 1000, y)  # an overconfident model: a full Newton step from (1, 0) blows up
    assert a2 * 1000 == pytest.approx(a, rel=1e-4) and b2 == pytest.approx(b, abs=1e-4)
    sep = torch.cat([torch.full((50,), -40.0), torch.full((50,), 40.0)]).double()
    a3, b3 = fit_platt(sep, (sep > 0).double())
    q = torch.sigmoid(a3 * sep + b3)
    assert math.isfinite(a3) and 0.9 < float(q.max()) < 1.0 and 0.0 < float(q.min()) < 0.1


def test_fit_platt_never_reverses_the_ranking() -> None:
    """Validation logits that rank churners lower (a model without signal, early in training) made
    Platt's slope negative: the calibrated probabilities reversed the ranking, so val/auroc (computed
    on them) reported 1 - AUROC and the checkpoint could favour noise. The slope is kept >= 0."""
    from clm_torch.models.components.calibration import fit_platt

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=g, dtype=torch.float64)
    y = (torch.rand(2000, generator=g, dtype=torch.float64) < torch.sigmoid(-1.5 * x - 1.0)).double()
    a, b = fit_platt(x, y)
    assert a == 0.0
    n_pos = float(y.sum())
    rate = ((n_pos + 1) / (n_pos + 2) * n_pos + (len(y) - n_pos) / (len(y) - n_pos + 2)) / len(y)
    assert b == pytest.approx(math.log(rate / (1 - rate)), abs=1e-9)  # every probability: the (smoothed) base rate
    a2, _ = fit_platt(-x, y)  # the same logits the right way round keep their fit
    assert a2 == pytest.approx(1.5, abs=0.2)


def test_a_frame_to_score_with_an_empty_column_or_unknown_categories_warns_once(trained_run, caplog) -> None:
    """Scored in several chunks, a frame whose column is empty in every row, or written in categories
    the model never saw, gets one warning of each kind (not one per chunk), naming the column."""
    import logging

    _, run = trained_run
    model = ChurnClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    df = messy_table(60, seed=3).drop(columns=["churn"])
    with caplog.at_level(logging.WARNING):
        model.predict_proba(df, source="new.csv", batch_size=16)
    assert "new.csv" not in caplog.text
    df["tenure"] = np.nan
    df["region"] = "Atlantis"
    with caplog.at_level(logging.WARNING):
        model.predict_proba(df, source="new.csv", batch_size=16)
    assert caplog.text.count("new.csv: column 'tenure' is missing in every one of its 60 rows") == 1
    assert caplog.text.count("new.csv: column 'region': ") == 1 and "(e.g. 'Atlantis'" in caplog.text


def test_predict_proba_counts_unseen_categories_over_all_chunks(caplog) -> None:
    """predict_proba in chunks of 10 named a column of unseen categories with the counts of the first
    chunk that crossed the threshold ('10 of 10 values'), and never when each chunk held fewer than 5;
    it now says the call's totals once, with the first unseen values."""
    import logging

    from clm_torch.data.encoding import FeatureEncoder
    from clm_torch.data.schema import infer_schema

    df = messy_table(100, seed=0).drop(columns=["churn"])
    schema = infer_schema(df, id_col="customer_id")
    enc = FeatureEncoder.from_schema(schema).fit(df)
    torch.manual_seed(0)
    model = ChurnClassifier(**enc.dims(), k_ensemble=1, hidden=[8], d_embed=4)
    model.set_preprocessing({"encoder": enc.state_dict()})
    model.eval()
    region = df["region"].copy()
    region.iloc[:12] = "Atlantis"
    region.iloc[50:53] = "Mu"
    n_obs = int(region.notna().sum())
    with caplog.at_level(logging.WARNING):
        model.predict_proba(df.assign(region=region), source="new.csv", batch_size=10)
    said = [r.getMessage() for r in caplog.records if "'region'" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"new.csv: column 'region': 15 of {n_obs} values"), said
    assert "(e.g. 'Atlantis', 'Mu';" in said[0]
    caplog.clear()
    spread = df["region"].where(np.arange(100) % 5 != 0, "Atlantis")  # 2 in every chunk of 10
    with caplog.at_level(logging.WARNING):
        model.predict_proba(df.assign(region=spread), source="new.csv", batch_size=10)
    assert caplog.text.count("new.csv: column 'region': 20 of ") == 1


def test_a_churn_model_with_a_vae_warns_once_per_frame(caplog) -> None:
    """With model.infogap_ckpt the frozen VAE reads the frame too (its encoding, latent means, gap
    scores and imputation, for every chunk): an empty column or one of unseen categories is still
    named once per frame, as the README says, not once per chunk and VAE call (13 warnings for 4
    chunks before)."""
    import logging

    from clm_torch import InfoGapVAE
    from clm_torch.data.encoding import FeatureEncoder
    from clm_torch.data.schema import infer_schema
    from clm_torch.models.infogap_features import infogap_frame

    torch.manual_seed(0)
    df = messy_table(100, seed=0).drop(columns=["churn"])
    schema = infer_schema(df, id_col="customer_id")
    enc = FeatureEncoder.from_schema(schema).fit(df)
    vae = InfoGapVAE(**enc.dims(), latent_dim=2, encoder_hidden=[8], decoder_hidden=[8], n_samples=2)
    vae.set_preprocessing({"encoder": enc.state_dict(), "schema": schema.to_dict(), "cleaning": {}})
    vae.feature_info.fill_(1.0)
    framed = infogap_frame(vae, df, n_samples=2)
    schema2 = infer_schema(framed, id_col="customer_id")
    enc2 = FeatureEncoder.from_schema(schema2).fit(framed)
    model = ChurnClassifier(**enc2.dims(), k_ensemble=2, hidden=[8], d_embed=4, infogap=dict(vae.hparams),
                            infogap_samples=2)
    model.set_preprocessing({"encoder": enc2.state_dict()})
    model.attach_infogap(vae)
    model.eval()
    with caplog.at_level(logging.WARNING):
        model.predict_proba(df.assign(tenure=np.nan, region="Atlantis"), source="new.csv", batch_size=25)
    assert caplog.text.count("new.csv: column 'tenure' is missing in every one of its 100 rows") == 1
    assert caplog.text.count("is missing in every one of its") == 1
    assert caplog.text.count("new.csv: column 'region': ") == 1 and "(e.g. 'Atlantis'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the VAE on its own: one warning per frame and method
        vae.impute(df.assign(tenure=np.nan), batch_size=25, source="v.csv")
    assert caplog.text.count("v.csv: column 'tenure' is missing in every one of its 100 rows") == 1
    assert "its 25 rows" not in caplog.text


@pytest.mark.parametrize("calibration", ["temperature", "none"])
def test_pos_weight_is_undone_before_a_calibration_without_bias(calibration: str) -> None:
    """A loss that weighs positives by w learns logits shifted by log w (odds × w). Platt's bias
    absorbs that; temperature scaling and ``none`` have no bias, so the shift must be undone for
    the probabilities to stay calibrated (the model promises a calibrated churn probability)."""
    from clm_torch.callbacks import expected_calibration_error

    model = ChurnClassifier(n_num=1, cat_cardinalities=[], k_ensemble=1, pos_rate=0.1, pos_weight="balanced",
                            calibration=calibration)
    w = float(model.pos_weight)
    assert w == pytest.approx(9.0)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, generator=g) * 1.5 - 2.8  # the true log-odds: about 10 % churn
    y = (torch.rand(20000, generator=g) < torch.sigmoid(z)).float()
    logits = z + math.log(w)  # what a pos_weight-trained model outputs
    model.fit_calibration(logits, y)
    p = model.calibrated_prob(logits)
    assert float(p.mean()) == pytest.approx(float(y.mean()), abs=0.01)
    assert expected_calibration_error(p.numpy(), y.numpy()) < 0.02
    np.testing.assert_allclose(p.numpy(), torch.sigmoid(z).numpy(), atol=0.02)
    # before any validation epoch (a fresh model) the shift is undone as well
    fresh = ChurnClassifier(n_num=1, cat_cardinalities=[], k_ensemble=1, pos_rate=0.1, pos_weight="balanced",
                            calibration=calibration)
    np.testing.assert_allclose(fresh.calibrated_prob(logits).numpy(), torch.sigmoid(z).numpy(), atol=1e-5)


def test_ensemble_calibration_metrics_and_class_weight_by_hand() -> None:
    """The pieces between the members' logits and the reported numbers, checked with numpy, scipy and
    scikit-learn: members averaged in probability space (not in logit space); the calibrated
    probability sigmoid(a · logit + b); temperature scaling stores a = 1/T with T the log-loss
    minimiser (found here by scipy); binary_metrics equal scikit-learn's; "balanced" weighs the
    positives by neg/pos in the training loss."""
    special = pytest.importorskip("scipy.special")
    optimize = pytest.importorskip("scipy.optimize")
    skm = pytest.importorskip("sklearn.metrics")
    from clm_torch.models.churn import binary_metrics

    model = ChurnClassifier(2, [3], k_ensemble=2, calibration="temperature", pos_rate=0.2, pos_weight="balanced")
    assert float(model.pos_weight) == pytest.approx(4.0)  # 0.8 / 0.2
    members = torch.tensor([[0.0, 4.0, -3.0], [-2.0, 2.0, 5.0]])
    want = special.logit(special.expit(members.numpy().astype(np.float64)).mean(0))
    np.testing.assert_allclose(model.ensemble_logit(members).numpy(), want, rtol=1e-5)

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(400, generator=g, dtype=torch.float64) * 4  # overconfident: the true slope is 0.5
    y = (torch.rand(400, generator=g, dtype=torch.float64) < torch.sigmoid(0.5 * logits)).double()
    x, t = logits.numpy(), y.numpy()

    shift = np.log(4.0)  # pos_weight 4 shifts the learned logits by log 4; the temperature is fitted without it

    def log_loss_at(temp: float) -> float:
        p = special.expit((x - shift) / temp)
        return float(-(t * np.log(p) + (1 - t) * np.log1p(-p)).mean())

    best_t = optimize.minimize_scalar(log_loss_at, bounds=(0.05, 20.0), method="bounded",
                                      options={"xatol": 1e-9}).x
    model.fit_calibration(logits.float(), y.float())
    a, b = model.calib.tolist()
    assert a == pytest.approx(1 / best_t, rel=1e-3) and b == pytest.approx(-a * shift, rel=1e-5) and 0.3 < a < 0.8
    model.calib.copy_(torch.tensor([0.5, -1.0]))
    np.testing.assert_allclose(model.calibrated_prob(torch.tensor([0.0, 2.0, -4.0])).numpy(),
                               special.expit(0.5 * np.array([0.0, 2.0, -4.0]) - 1.0), rtol=1e-6)

    # the training loss weighs the positives by pos_weight: -mean(w y log p + (1 - y) log(1 - p)) over members and rows
    batch = {"num": torch.randn(6, 2, generator=g), "num_mask": torch.ones(6, 2, dtype=torch.bool),
             "cat": torch.tensor([[0], [1], [2], [1], [0], [2]]), "y": torch.tensor([1.0, 0, 0, 1, 0, 0])}
    model.eval()
    with torch.no_grad():
        loss, member_logits = model.model_step(batch)
    z, yb = member_logits.double().numpy(), batch["y"].double().numpy()[None]
    want_loss = -(4.0 * yb * np.log(special.expit(z)) + (1 - yb) * np.log(special.expit(-z))).mean()
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)

    prob = special.expit(x / 3).astype(np.float32)
    got = {k: float(v) for k, v in binary_metrics(torch.from_numpy(prob), y.float()).items()}
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(t, prob), abs=1e-6)
    assert got["ap"] == pytest.approx(skm.average_precision_score(t, prob), abs=1e-6)
    assert got["log_loss"] == pytest.approx(skm.log_loss(t, prob), rel=1e-5)
    assert got["brier"] == pytest.approx(skm.brier_score_loss(t, prob), rel=1e-5)


def test_trainer_validate_measures_the_calibration_it_does_not_refit_it() -> None:
    """The calibration is fitted at the end of each validation epoch of fit(). trainer.validate(model,
    other_data) ran the same hook and refitted it on that data: a model checked on a new month's
    customers came back with another calibration, in silence."""
    import lightning as L

    g = torch.Generator().manual_seed(0)

    def batches(flip: bool) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in range(4):
            num = torch.randn(64, 2, generator=g)
            y = (torch.rand(64, generator=g) < torch.sigmoid(2 * num[:, 0])).float()
            out.append({"num": num, "num_mask": torch.ones(64, 2, dtype=torch.bool),
                        "cat": torch.randint(0, 3, (64, 1), generator=g), "y": 1 - y if flip else y})
        return out

    torch.manual_seed(0)
    model = ChurnClassifier(2, [3], k_ensemble=1, hidden=[8], d_embed=4, pos_rate=0.5)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(model, torch.utils.data.DataLoader(batches(False), batch_size=None),
                torch.utils.data.DataLoader(batches(False), batch_size=None))
    fitted = model.calib.clone()
    assert not torch.equal(fitted, torch.tensor([1.0, 0.0]))  # fit() did fit it
    trainer.validate(model, torch.utils.data.DataLoader(batches(True), batch_size=None), verbose=False)
    assert torch.equal(model.calib, fitted)
