"""ChurnClassifier with a purchase-sequence encoder (model.sequence_encoder, data.sequence_length)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clm_torch import ChurnClassifier
from clm_torch.data.events import build_customer_view, load_events
from clm_torch.data.sources.events import customer_view_from_files, events_datamodule, view_to_frame
from clm_torch.train import train

FAST = ["model.k_ensemble=2", "model.hidden=[32]", "model.d_embed=8", "model.additive_members=2",
        "data.batch_size=128", "callbacks.model_summary=null", "~logger"]
CUTOFF = "2024-01-01"


def _events_cfg(ev: Path, *extra: str, cutoff: str = CUTOFF) -> list[str]:
    return ["model=churn", "data=events", f"data.path={ev}", "data.amount_col=amount", "data.item_col=item_id",
            f"data.cutoff={cutoff}", *FAST, *extra]


def order_pattern_log(n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Churn depends only on the *order* of a customer's recent basket values.

    Every customer buys 4 to 8 times in the year before the cutoff, at random times, random items,
    with basket values that are a noisy permutation of the same ladder. Customers whose values
    fall over time churn with probability 0.85, those whose values rise with 0.15. Counts, times,
    recency, gaps, trend, item diversity and the monetary mean and total have the same distribution
    in both groups, so the RFM view carries no signal (Bayes AUC from the order: about 0.85).
    """
    rng = np.random.default_rng(seed)
    cut = pd.Timestamp(CUTOFF)
    falling = rng.random(n) < 0.5
    churn = rng.random(n) < np.where(falling, 0.85, 0.15)
    rows = []
    for i in range(n):  # building the fixture only; the model side is vectorised
        m = int(rng.integers(4, 9))
        days = np.sort(rng.uniform(1, 360, m))[::-1]  # oldest first
        ladder = 20.0 * (1.0 + 0.25 * np.arange(m)) * rng.lognormal(0, 0.08, m)
        values = ladder[::-1] if falling[i] else ladder
        items = rng.integers(0, 15, m)
        for d, v, it in zip(days, values, items):
            rows.append((f"C{i:05d}", cut - pd.Timedelta(days=float(d)), f"I{it:02d}", round(float(v), 2)))
        if not churn[i]:
            for d in rng.uniform(1, 89, int(rng.integers(1, 3))):
                rows.append((f"C{i:05d}", cut + pd.Timedelta(days=float(d)), f"I{rng.integers(0, 15):02d}", 30.0))
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "item_id", "amount"])


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster than two fighting over busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base_log(tmp_path_factory) -> Path:
    from clm_torch.data.synthetic import generate_customer_base

    base = generate_customer_base(800, seed=1)
    ev = tmp_path_factory.mktemp("seq") / "events.csv"
    base.events[base.events["timestamp"] < base.cutoff].to_csv(ev, index=False)
    return ev


def test_sequence_columns_are_the_last_purchases_most_recent_first() -> None:
    ev = pd.DataFrame({
        "customer_id": ["a", "a", "a", "a", "b", "b"],
        "timestamp": pd.to_datetime(["2024-01-01", "2024-01-11", "2024-01-21", "2024-01-26", "2024-01-30",
                                     "2024-02-05"]),
        "amount": [10.0, 20.0, 30.0, -5.0, 7.0, 1.0],  # a's refund is no purchase; b buys after the cutoff
        "item_id": ["x", "y", None, "x", "z", "z"],
    })
    events = load_events(ev, customer_col="customer_id", time_col="timestamp", amount_col="amount",
                         item_col="item_id", now="2025-01-01")
    view = build_customer_view(events, "2024-02-01", horizon_days=30)
    frame = view_to_frame(view, "churn", sequence_length=3).set_index("customer_id")
    a, b = frame.loc["a"], frame.loc["b"]
    assert [a["seq0_days"], a["seq1_days"], a["seq2_days"]] == [11.0, 21.0, 31.0]
    assert [a["seq0_amount"], a["seq1_amount"], a["seq2_amount"]] == [30.0, 20.0, 10.0]
    assert pd.isna(a["seq0_item"]) and a["seq1_item"] == "y" and a["seq2_item"] == "x"  # missing item → NaN
    assert b["seq0_days"] == 2.0 and b["seq0_item"] == "z" and pd.isna(b["seq1_days"]) and pd.isna(b["seq2_item"])
    assert "seq0_days" not in view_to_frame(view, "churn").columns  # off by default


def test_steps_are_put_on_one_scale_and_items_on_one_vocabulary(base_log) -> None:
    dm = events_datamodule(str(base_log), amount_col="amount", item_col="item_id", cutoff="2024-06-01",
                           sequence_length=5)
    dm.setup()
    enc = dm.encoder
    assert "seq0_days" in enc.num_columns and "seq0_item" in enc.cat_columns  # items categorical, whatever they look like
    model = ChurnClassifier(**dm.model_kwargs(), sequence_encoder="gru", k_ensemble=2, hidden=[16])
    model.set_preprocessing(dm.preprocessing_state())
    layout = model.hparams.sequence_layout
    assert len(layout["days"]) == 5 and not {*layout["days"], *layout["amount"]} & set(layout["num_tab"])
    assert model.tokenizer.n_num == len(layout["num_tab"]) == enc.n_num - 10  # not also tabular inputs
    t = dm.tensors["train"]
    steps, items, valid = model.sequence_inputs(t)
    # step 0 is on the encoder's own scale of seq0_days; step 3 maps back to the same raw days
    j0, j3 = enc.num_columns.index("seq0_days"), enc.num_columns.index("seq3_days")
    ok = t["num_mask"][:, j0]
    torch.testing.assert_close(steps[ok, 0, 0], t["num"][ok, j0], rtol=1e-4, atol=1e-4)
    raw3 = dm.frames["train"]["seq3_days"].to_numpy()
    ref = enc.transform(pd.DataFrame({c: raw3 if c == "seq0_days" else np.nan for c in enc.feature_columns}))
    ok3 = valid[:, 3]
    torch.testing.assert_close(steps[ok3, 3, 0], ref["num"][ok3, j0], rtol=1e-3, atol=1e-3)
    assert (valid == t["num_mask"][:, [enc.num_columns.index(f"seq{k}_days") for k in range(5)]]).all()
    # the same raw item has the same shared index at every step
    raw = dm.frames["train"][["seq0_item", "seq2_item"]].to_numpy()
    same = (raw[:, 0] == raw[:, 1]) & pd.notna(raw[:, 0])
    assert same.any() and (items[same, 0] == items[same, 2]).all() and (items[same, 0] > 0).all()
    assert (items[~valid] == 0).all() and (steps[~valid] == 0).all()


def test_train_gru_round_trip_and_score_raw_view(make_cfg, base_log) -> None:
    cfg = make_cfg(*_events_cfg(base_log, "data.sequence_length=6", "model.sequence_encoder=gru",
                               "trainer.max_epochs=2", cutoff="2024-06-01"))
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["test/loss"]) and metrics["test/auroc"] > 0.6
    ckpt_path = Path(metrics["best_ckpt"])
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["hyper_parameters"]["sequence_layout"]["n_items"] > 1
    model = ChurnClassifier.load_from_checkpoint(ckpt_path)
    assert model.sequence is not None and model.sequence.kind == "gru"
    view = customer_view_from_files(base_log, amount_col="amount", item_col="item_id", cutoff="2024-06-01")
    raw = view_to_frame(view, None, sequence_length=6)  # the raw view frame: no target, nothing encoded
    dm = objects["datamodule"]
    test_ids = dm.ids("test")
    p = model.predict_proba(raw.set_index("customer_id").loc[test_ids].reset_index())
    preds = pd.read_csv(Path(cfg.paths.output_dir) / "predictions" / "test.csv")
    np.testing.assert_allclose(p, preds["prediction"].to_numpy(), rtol=1e-4, atol=1e-5)
    odd = raw.head(20).copy()
    odd.loc[odd.index[0], "seq0_item"] = "never-seen-item"
    odd.loc[odd.index[1], [c for c in odd.columns if c.startswith("seq")]] = np.nan  # no history at all
    q = model.predict_proba(odd)
    assert np.isfinite(q).all() and ((q > 0) & (q < 1)).all()


def test_attention_encoder_fast_dev_run(make_cfg, base_log) -> None:
    cfg = make_cfg("debug=fdr", *_events_cfg(base_log, "data.sequence_length=4", "model.sequence_encoder=attention",
                                             cutoff="2024-06-01"))
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["test/loss"]) and objects["model"].sequence.kind == "attention"


def test_sequence_encoder_without_item_column_trains(make_cfg, base_log) -> None:
    """A log read without data.item_col has no categorical column at all: the steps' items are all
    unknown (it stopped in index_select on the empty categorical batch during the sanity check)."""
    opts = [o for o in _events_cfg(base_log, "data.sequence_length=3", "model.sequence_encoder=gru",
                                   cutoff="2024-06-01") if o != "data.item_col=item_id"]
    metrics, objects = train(make_cfg("debug=fdr", *opts))
    assert objects["datamodule"].tensors["train"]["cat"].shape[1] == 0
    assert np.isfinite(metrics["test/loss"]) and objects["model"].sequence.kind == "gru"


def test_sequence_encoder_needs_sequence_columns(base_log) -> None:
    dm = events_datamodule(str(base_log), amount_col="amount", cutoff="2024-06-01")
    model = ChurnClassifier(**dm.model_kwargs(), sequence_encoder="gru")
    with pytest.raises(ValueError, match="data.sequence_length"):
        model.set_preprocessing(dm.preprocessing_state())
    with pytest.raises(ValueError, match="sequence_encoder"):
        ChurnClassifier(**dm.model_kwargs(), sequence_encoder="lstm")


def test_gru_sees_the_order_that_rfm_cannot(make_cfg, tmp_path) -> None:
    """On a log where churn depends only on the order of basket values, the GRU beats the RFM model."""
    ev = tmp_path / "pattern.csv"
    order_pattern_log().to_csv(ev, index=False)
    common = ["model.lr=0.003", "trainer.max_epochs=6", "data.batch_size=64", "callbacks.early_stopping=null"]
    rfm, _ = train(make_cfg(*_events_cfg(ev), *common, out="rfm"))
    gru, _ = train(make_cfg(*_events_cfg(ev), *common, "data.sequence_length=6", "model.sequence_encoder=gru",
                            out="gru"))
    assert rfm["test/auroc"] < 0.65  # the aggregates cannot see the order
    assert gru["test/auroc"] > 0.75 and gru["test/auroc"] > rfm["test/auroc"] + 0.15
