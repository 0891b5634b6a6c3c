"""SpendRegressor: Tweedie loss by hand, and learning a zero-inflated heavy-tailed spend."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from clm_torch.data.datamodules import TableDataModule
from clm_torch.data.schema import SchemaError
from clm_torch.data.sources import FrameSource
from clm_torch.models.spend import SpendRegressor, spend_metrics, tweedie_nll


def test_tweedie_nll_by_hand() -> None:
    # p = 1.5, eta = 0 (mu = 1), y = 2:  -2 * 1 / (-0.5) + 1 / 0.5 = 4 + 2 = 6
    assert float(tweedie_nll(torch.tensor([0.0]), torch.tensor([2.0]), 1.5)) == pytest.approx(6.0)
    # the minimiser over eta of the expected loss is log E[y]
    eta = torch.linspace(-2, 3, 501)
    y = torch.tensor([0.0, 0.0, 3.0, 5.0])
    losses = torch.stack([tweedie_nll(e.expand(4), y, 1.5) for e in eta])
    assert float(eta[losses.argmin()]) == pytest.approx(float(torch.log(y.mean())), abs=0.01)


def test_spend_metrics_by_hand() -> None:
    m = spend_metrics(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]), torch.tensor([10.0, 0.0, 5.0, 5.0, 0.0]))
    assert float(m["capture20"]) == pytest.approx(0.5)  # top 1 of 5 holds 10 of 20
    assert float(m["rmse"]) == pytest.approx(np.sqrt((36 + 9 + 9 + 16 + 0) / 5), rel=1e-5)


def test_learns_zero_inflated_spend() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.normal(size=n)
    c = rng.choice(["a", "b", "c"], n)
    mu = np.exp(1 + x + (c == "a"))
    y = np.where(rng.random(n) < 0.4, 0.0, rng.gamma(2, mu / 2))
    df = pd.DataFrame({"x": x, "c": c, "spend": y})
    dm = TableDataModule(FrameSource(df, target="spend"), target_type="continuous", batch_size=128)
    dm.setup()
    L.seed_everything(0)  # before the model: its starting weights must not depend on the tests run before
    model = SpendRegressor(**dm.model_kwargs())
    model.set_preprocessing(dm.preprocessing_state())
    trainer = L.Trainer(max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, dm)
    res = trainer.test(model, dm, verbose=False)[0]
    # the logged test metrics are those of the spend predictions (not of their logs), as exported
    exported = model.export_predictions(dm, "test")
    np.testing.assert_allclose(exported["prediction"], model.predict_spend(dm.frames["test"]), rtol=1e-5)
    assert res["test/rmse"] == pytest.approx(
        float(np.sqrt(((exported["prediction"] - exported["label"]) ** 2).mean())), rel=1e-4)
    test_rows = dm.frames["test"].index.to_numpy()
    oracle = pd.Series(mu[test_rows]).corr(pd.Series(y[test_rows]), method="spearman")
    assert res["test/spearman"] > 0.8 * oracle  # close to the noise ceiling of this data
    pred = model.predict_spend(df.iloc[:500])
    truth = 0.6 * mu[:500]
    assert np.corrcoef(np.log(pred), np.log(truth))[0, 1] > 0.9
    assert 0.7 < pred.mean() / truth.mean() < 1.3
    # customers whose spend is not known yet are scored too; chunks cover every row
    np.testing.assert_allclose(model.predict_spend(df.iloc[:500].assign(spend=np.nan), batch_size=7), pred,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        model.predict_spend(df.iloc[:5], batch_size=0)
    assert model.predict_spend(df.iloc[:0]).shape == (0,)
    with pytest.raises(SchemaError, match=r"required column.*missing"):
        model.predict_spend(pd.DataFrame())


def test_spend_metrics_loss_and_starting_scale_by_hand() -> None:
    """spend_metrics' Spearman equals scipy's (ties averaged); the Tweedie loss is a mean over the
    customers (not a sum, whose size would follow the batch); the model starts at the log of the
    mean training spend; a net refund (negative spend) is read as no spend by the loss."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    pred = rng.gamma(1.0, 10.0, 60)
    y = np.where(rng.random(60) < 0.4, 0.0, np.round(pred + rng.normal(0, 8, 60)).clip(0))  # tied zeros
    m = spend_metrics(torch.tensor(pred), torch.tensor(y))
    assert float(m["spearman"]) == pytest.approx(stats.spearmanr(pred, y).statistic, abs=1e-6)
    eta, yy = torch.tensor([0.0, np.log(2.0)]), torch.tensor([2.0, 0.0])
    # p = 1.5: -y mu^-0.5 / -0.5 + mu^0.5 / 0.5 -> (4 + 2) and (0 + 2 sqrt 2), averaged
    assert float(tweedie_nll(eta, yy, 1.5)) == pytest.approx((6.0 + 2 * np.sqrt(2.0)) / 2)

    df = pd.DataFrame({"x": rng.normal(size=200), "spend": rng.gamma(2.0, 15.0, 200)})
    dm = TableDataModule(FrameSource(df, target="spend"), target_type="continuous", batch_size=64)
    dm.setup()
    model = SpendRegressor(**dm.model_kwargs())
    model.set_preprocessing(dm.preprocessing_state())
    assert float(model.log_scale) == pytest.approx(np.log(dm.frames["train"]["spend"].mean()), rel=1e-5)
    batch = {k: v[:8] for k, v in dm.tensors["train"].items()}
    model.eval()
    with torch.no_grad():
        refund, _ = model.model_step({**batch, "y": torch.full((8,), -5.0)})
        nothing, _ = model.model_step({**batch, "y": torch.zeros(8)})
    assert float(refund) == float(nothing)
    # the starting scale reads refunds as the loss does, as 0 (the raw mean, negative here, gave log(1e-6))
    net = df.assign(spend=np.where(np.arange(200) % 2 == 0, df["spend"], -df["spend"] * 3))
    dm2 = TableDataModule(FrameSource(net, target="spend"), target_type="continuous", batch_size=64)
    dm2.setup()
    want = dm2.frames["train"]["spend"].clip(lower=0).mean()
    assert dm2.preprocessing_state()["target_mean"] == pytest.approx(want, rel=1e-6)


def test_predict_spend_names_rows_it_cannot_read(caplog) -> None:
    """predict_proba warned about rows with no value the model can read (every column missing or an
    unseen category); predict_spend scored them in silence."""
    import logging

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=60), "c": rng.choice(["a", "b"], 60), "spend": rng.gamma(2.0, 15.0, 60)})
    dm = TableDataModule(FrameSource(df, target="spend"), target_type="continuous", batch_size=16)
    dm.setup()
    model = SpendRegressor(**dm.model_kwargs())
    model.set_preprocessing(dm.preprocessing_state())
    frame = df.drop(columns=["spend"]).copy()
    frame.loc[[3, 41], "x"] = np.nan
    frame.loc[[3, 41], "c"] = "zzz"  # unseen
    with caplog.at_level(logging.WARNING):
        model.predict_spend(frame, batch_size=7, source="new.csv")
    assert caplog.text.count("new.csv: 2 of 60 rows have no feature value the model can read") == 1
    assert "index 3" in caplog.text and "expected spend rests on that alone" in caplog.text
