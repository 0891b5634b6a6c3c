"""clm-pipeline end to end on a tiny synthetic base: the files and columns it writes, and the report's rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clm_torch.lifecycle.report import suggest_actions
from clm_torch.pipeline import adjusted_rand

CUSTOMER_COLUMNS = ["customer_id", "segment", "stage", "churn_probability", "clv", "gap_score", "completeness",
                    "next_best_question", "next_best_question_gain", "top5_items", "action", "reason"]


def test_pipeline_writes_every_output(tiny_pipeline_run: Path) -> None:
    run = tiny_pipeline_run
    for model in ("vae", "churn", "recommender", "spend"):
        assert (run / model / "checkpoints" / "best.ckpt").exists(), model
        assert list((run / model / "tensorboard").glob("events.out.tfevents.*")), model
    for name in ("latent_map", "churn_calibration_gain", "clv_by_segment", "cohort_retention", "top_gaps"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000, name
    customers = pd.read_csv(run / "customers.csv")
    assert set(CUSTOMER_COLUMNS) <= set(customers.columns)
    assert customers["customer_id"].is_unique and len(customers) > 600  # table customers + event-only ones
    assert customers["churn_probability"].between(0, 1).all()
    assert set(customers["stage"]) <= {"new", "active", "at_risk", "lapsed", "won_back"}
    assert customers["top5_items"].str.split(" | ", regex=False).str.len().eq(5).mean() > 0.95
    assert (customers["clv"] >= 0).all() and customers["action"].notna().all()
    # questions are about the customer table's fields, never about features computed from the log
    table = pd.read_parquet(run / "data" / "customers_clean.parquet").columns
    asked = set(customers["next_best_question"].dropna())
    assert asked and asked <= set(table) - {"customer_id"}, asked
    # each question comes with its expected gain, and the informative ones are asked (the completeness rule
    # asked nobody: completeness fell below 0.5 only for customers without purchases)
    has_q = customers["next_best_question"].notna()
    assert (customers.loc[has_q, "next_best_question_gain"] >= 0).all()
    assert customers.loc[~has_q, "next_best_question_gain"].isna().all()
    ask = customers["action"] == "ask next best question"
    assert ask.any() and has_q[ask].all()
    assert not customers.loc[ask, "stage"].isin(["lapsed", "at_risk"]).any()
    # and nothing already bought is recommended
    bought = pd.read_parquet(run / "data" / "interactions.parquet").groupby("customer_id")["item_id"].agg(set)
    assert not any(set(r.split(" | ")) & bought.get(c, set()) for c, r in zip(customers["customer_id"],
                                                                            customers["top5_items"].fillna("")))
    # the training view (at the cutoff - horizon) holds no customer who joined later: every one of
    # them bought before it (the customer table is of the scoring cutoff; it used to add the later ones)
    log = pd.read_parquet(run / "data" / "interactions.parquet")
    train_ids = pd.read_parquet(run / "data" / "train_view.parquet")["customer_id"].astype(str)
    train_cut = log["timestamp"].max().normalize() + pd.Timedelta(days=1) - pd.Timedelta(days=90)
    first = log.groupby("customer_id")["timestamp"].min()
    assert (first.reindex(train_ids) < train_cut + pd.Timedelta(days=1)).all()
    # the VAE learns from every customer then, the table's without a purchase too (the score view has
    # such customers), and from no label
    profile = pd.read_parquet(run / "data" / "profile_view.parquet")
    assert set(train_ids) < set(profile["customer_id"].astype(str)) and not {"churn", "future_spend"} & set(profile)
    assert (profile["frequency"] == 0).sum() > (pd.read_parquet(run / "data" / "train_view.parquet")["frequency"]
                                                == 0).sum()
    segments = pd.read_csv(run / "segments.csv")
    assert segments["size"].sum() == len(customers)
    assert {"mean_churn_probability", "mean_clv", "top_top_items", "top_gap"} <= set(segments.columns)
    summary = (run / "summary.md").read_text()
    assert "segment ARI" in summary and "churn AUROC vs true no-purchase in horizon" in summary
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["customers scored"] == len(customers)
    # the built-in table is current at the cutoff, later than the training view: the AUROC within groups
    assert "## A table of a later date than the training cutoff" in summary
    assert any(k.startswith("churn test AUROC, ") for k in metrics)


def test_stages_read_the_score_views_own_features() -> None:
    """Nobody bought twice before cutoff − horizon, so the model frames have no last_gap_days; A bought
    again 354 days after its first purchase and 12 days before the cutoff: won back, as the score
    view says (the stage rules used to read NaN and call A active)."""
    from clm_torch.lifecycle.stages import assign_stage
    from clm_torch.pipeline import CustomerViews, build_views, stage_frame

    ev = pd.DataFrame({"customer_id": ["A", "A", "B", "C", "C"],
                       "timestamp": pd.to_datetime(["2023-06-01", "2024-05-20", "2023-07-01", "2024-02-01",
                                                    "2024-05-25"]),
                       "amount": [10.0, 20, 30, 40, 50], "item_id": ["i1", "i2", "i1", "i3", "i2"]})
    cutoff = pd.Timestamp("2024-06-01")
    inputs = {"events": ev, "customers": None, "truth": None, "items": None, "cutoff": cutoff, "name": "ev",
              "customers_source": None}
    views = CustomerViews(inputs, None, 90.0, 10)
    _, sf = build_views(inputs, None, 90.0, 10, views=views)
    assert "last_gap_days" not in sf.columns
    full = stage_frame(sf, views.at(cutoff).features)
    assert dict(zip(sf["customer_id"], assign_stage(full, np.full(len(sf), 0.1)))) == \
        {"A": "won_back", "B": "lapsed", "C": "active"}
    with pytest.raises(RuntimeError, match="list different customers"):
        stage_frame(sf.iloc[:2], views.at(cutoff).features)


def test_membership_aurocs_by_hand() -> None:
    """The churn test AUROC within the table's customers and within the log-only ones; ids compare as
    text (a CSV reads 7 as a number, the table holds '7'); a group with one class is left out."""
    from clm_torch.pipeline import membership_aurocs

    preds = pd.DataFrame({"customer_id": list(range(12)) + ["x"] * 10,
                          "label": [0, 1] * 6 + [1] * 10, "prediction": [0.1, 0.9] * 6 + [0.5] * 10})
    table = pd.Series([str(i) for i in range(12)])
    assert membership_aurocs(preds, table) == {"churn test AUROC, customers of the table": 1.0}
    preds.loc[12:, "label"] = [0, 1] * 5
    preds.loc[12:, "prediction"] = [0.6, 0.4] * 5
    assert membership_aurocs(preds, table) == {"churn test AUROC, customers of the table": 1.0,
                                               "churn test AUROC, log-only customers": 0.0}


def test_membership_groups_keep_leading_zeros(tmp_path) -> None:
    """Ids with leading zeros are found in the table: the predictions file was read with '000009' as
    the number 9, so every test customer counted as log-only."""
    from clm_torch.pipeline import membership_aurocs, read_predictions

    ids = [f"{i:06d}" for i in range(20)]
    pd.DataFrame({"customer_id": ids, "label": [0, 1] * 10, "prediction": [0.2, 0.8] * 10}).to_csv(
        tmp_path / "test.csv", index=False)
    preds = read_predictions(tmp_path / "test.csv")
    assert preds["customer_id"].tolist() == ids
    assert membership_aurocs(preds, pd.Series(ids)) == {"churn test AUROC, customers of the table": 1.0}


def test_adjusted_rand_by_hand() -> None:
    assert adjusted_rand(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    # contingency [[2,0],[1,1]]: sum_ij C(n,2)=1, a: C(2,2)+C(2,2)=2, b: C(3,2)+C(1,2)=3, C(4,2)=6
    # expected = 2*3/6 = 1, max = 2.5 -> (1-1)/(2.5-1) = 0
    assert adjusted_rand(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 200), rng.integers(0, 3, 200)
    assert adjusted_rand(a, b) == pytest.approx(adjusted_rand_score(a, b))


def test_action_rules() -> None:
    df = pd.DataFrame({
        "stage": ["lapsed", "at_risk", "at_risk", "active", "new", "won_back", "active", "active"],
        "churn_probability": [0.9, 0.7, 0.6, 0.1, 0.2, 0.2, 0.1, 0.1],
        "clv": [500, 900, 10, 10, 10, 10, 950, 10],
        "completeness": [1, 1, 1, 0.2, 1, 1, 1, 1],
        "next_best_question": ["", "", "", "satisfaction", "", "", "", ""],
        "next_best_question_gain": [np.nan, np.nan, np.nan, 0.3, np.nan, np.nan, np.nan, np.nan],
        "recency_days": [200.7, 30, 90.5, 5, 5, 5, 5, 5],
        "top5_items": ["Blue Shirt 154 | I2"] * 8,
    })
    a = suggest_actions(df, value_quantile=0.75)
    assert a["action"].tolist() == ["win-back campaign", "retention offer", "re-engagement nudge",
                                    "ask next best question", "onboarding", "welcome-back offer", "cross-sell",
                                    "recommend"]
    assert a.loc[0, "reason"] == "lapsed: no purchase for 200 days"  # full days
    assert a.loc[1, "reason"].startswith("high value, at risk")
    assert a.loc[2, "reason"] == "at risk: no purchase for 90 days, churn p=0.60"  # the recency rule shows
    assert a.loc[3, "reason"] == "profile incomplete: ask satisfaction (expected gain 0.30 nats)"
    # an item id with spaces is offered whole (the cell joins ids with " | "), as is a list's first id
    assert a.loc[6, "reason"] == "high value, loyal: offer Blue Shirt 154"
    assert a.loc[7, "reason"] == "active: recommend Blue Shirt 154"
    listed = suggest_actions(df.assign(top5_items=[["Blue Shirt 154", "I2"]] * 8), value_quantile=0.75)
    assert listed.loc[7, "reason"] == "active: recommend Blue Shirt 154"
    # a customer of the table who never bought: no recency, a first-purchase offer instead of a win-back
    never = suggest_actions(df.assign(recency_days=[np.nan] + [5] * 7), value_quantile=0.75)
    assert (never.loc[0, "action"], never.loc[0, "reason"]) == ("first-purchase offer", "no purchase yet")


def test_retention_reason_gives_the_recency_that_made_the_customer_at_risk() -> None:
    """A high-value customer at risk by the stage's recency rule (no purchase for 100 days) with a low
    churn probability: the reason said only "high value, at risk: churn p=0.10", a low probability that
    does not explain the offer; it now gives both facts, as the re-engagement reason does."""
    df = pd.DataFrame({"stage": ["at_risk", "active", "active", "active", "active"],
                       "churn_probability": [0.1, 0.1, 0.1, 0.1, 0.1],
                       "clv": [900.0, 10, 10, 10, 10],
                       "recency_days": [100.4, 5, 5, 5, 5]})
    a = suggest_actions(df)
    assert a.loc[0, "action"] == "retention offer"
    assert a.loc[0, "reason"] == "high value, at risk: no purchase for 100 days, churn p=0.10"
    # without a recency column the reason is the churn probability alone
    assert suggest_actions(df.drop(columns="recency_days")).loc[0, "reason"] == "high value, at risk: churn p=0.10"


@pytest.mark.slow
def test_pipeline_churn_model_can_read_the_purchase_sequence(tmp_path: Path, monkeypatch) -> None:
    """``churn_sequence=gru``: the churn sub-run gets the ``seq{k}_*`` columns and a GRU encoder,
    the VAE and the spend model do not see them, and every customer is still scored. The customer
    view is built once per cutoff: the training and the profile view at cutoff - horizon are one
    build (it was built twice)."""
    import torch

    from clm_torch import pipeline
    from clm_torch.pipeline import run_pipeline
    from tests.conftest import compose_cfg

    built: list[pd.Timestamp] = []
    build = pipeline.build_customer_view

    def counting(events: pd.DataFrame, cutoff: pd.Timestamp, **kw: object) -> object:
        built.append(pd.Timestamp(cutoff))
        return build(events, cutoff, **kw)

    monkeypatch.setattr(pipeline, "build_customer_view", counting)
    out = tmp_path / "run"
    cfg = compose_cfg(["data.n_customers=300", "n_last=4", "churn_sequence=gru", "tensorboard=false",
                       *[f"models.{m}.trainer.max_epochs=1" for m in ("vae", "churn", "recommender", "spend")],
                       "segments.k_max=3", "score.gap_samples=2", "score.question_samples=2"],
                      out, config_name="pipeline.yaml")
    run_pipeline(cfg)
    assert len(built) == 2 and len(set(built)) == 2, built  # the training cutoff and the scoring cutoff, once each
    from clm_torch import InfoGapVAE
    from clm_torch.models.spend import SpendRegressor

    hp = torch.load(out / "churn" / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert hp["sequence_encoder"] == "gru" and hp["sequence_layout"]["days"][0] >= 0
    for cls, name in ((InfoGapVAE, "vae"), (SpendRegressor, "spend")):
        enc = cls.load_from_checkpoint(out / name / "checkpoints" / "best.ckpt").encoder
        assert not [c for c in enc.feature_columns if c.startswith("seq")], name
    customers = pd.read_csv(out / "customers.csv")
    assert customers["churn_probability"].between(0, 1).all() and customers["churn_probability"].notna().all()
    with pytest.raises(ValueError, match="churn_sequence"):
        run_pipeline(compose_cfg(["churn_sequence=lstm"], tmp_path / "bad", config_name="pipeline.yaml"))


def _view_log() -> tuple[pd.DataFrame, pd.DataFrame]:
    """An event log and a customer table with each kind of customer at the training cutoff 2024-03-02
    (cutoff 2024-04-01, horizon 30 days): with purchases before it (A), with a refund only before it
    (B), in the table with a first purchase after it (C, F, H), in the table without events (D, G),
    only in the log (E); F joined before it, G after it, the others have no join date."""
    from clm_torch.data.events import load_events

    rows = [("A", "2024-01-05", 10.0, "x"), ("A", "2024-02-10", 20.0, "y"), ("A", "2024-03-10", 5.0, "x"),
            ("B", "2024-02-01", -5.0, "y"), ("B", "2024-03-15", 7.0, "z"), ("C", "2024-03-10", 3.0, "x"),
            ("E", "2024-01-20", 4.0, "z"), ("E", "2024-03-20", 6.0, "y"), ("F", "2024-03-25", 8.0, "x"),
            ("H", "2024-03-05", 9.0, "y")]
    ev = load_events(pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount", "item_id"]),
                     customer_col="customer_id", time_col="timestamp", amount_col="amount", item_col="item_id")
    table = pd.DataFrame({"customer_id": ["A", "B", "C", "D", "F", "G", "H"], "age": [30, 41, 25, 52, 38, 29, 60],
                          "signup": [None, None, None, None, "2024-01-01", "2024-03-20", None]})
    return ev, table


@pytest.mark.parametrize("table, as_of, joined, trained_on", [
    (False, None, None, "ABE"), (True, None, None, "ABE"), (True, "2024-06-01", None, "ABE"),
    (True, "2024-02-01", None, "ABCDEFGH"),  # a table of a date before the training cutoff: all of it
    (True, None, "signup", "ABEF"), (True, "2024-06-01", "signup", "ABEF")])
def test_the_views_built_once_are_the_views_built_one_by_one(table: bool, as_of: str | None, joined: str | None,
                                                             trained_on: str) -> None:
    """CustomerViews builds the view at the training cutoff once, with every customer of the table,
    for both the profile view and the training view; the training view it gives (less the table's
    customers without an event then) is build_customer_view's with customers_as_of, row for row and
    value for value, whatever the table, its date and its join dates."""
    from clm_torch.data.events import build_customer_view
    from clm_torch.pipeline import CustomerViews, _view_kwargs

    ev, customers = _view_log()
    customers = customers if table else None
    if customers is not None and joined is None:
        customers = customers.drop(columns="signup")
    cutoff = pd.Timestamp("2024-04-01")
    inputs = {"events": ev, "cutoff": cutoff, "items": None, "customers_source": "crm.csv",
              "customers_as_of": pd.Timestamp(as_of) if as_of else cutoff, "customers_joined_col": joined}
    views = CustomerViews(inputs, customers, 30.0, 3)
    train_cut = cutoff - pd.Timedelta(days=30)

    def alone(cut: pd.Timestamp, table_of: pd.Timestamp | None) -> object:
        return build_customer_view(ev, cut, horizon_days=30.0, customers=customers, n_last=3,
                                   customers_as_of=table_of, **_view_kwargs(inputs))

    for got, want in ((views.at(train_cut, inputs["customers_as_of"]), alone(train_cut, inputs["customers_as_of"])),
                      (views.at(train_cut), alone(train_cut, None)),
                      (views.at(cutoff, inputs["customers_as_of"]), alone(cutoff, inputs["customers_as_of"]))):
        pd.testing.assert_frame_equal(got.features, want.features, check_exact=True)
        pd.testing.assert_frame_equal(got.labels, want.labels, check_exact=True)
        assert got.sequences.keys() == want.sequences.keys()
        for k in want.sequences:
            np.testing.assert_array_equal(got.sequences[k], want.sequences[k])
        assert got.item_vocab == want.item_vocab and got.cutoff == want.cutoff
    assert "".join(views.at(train_cut, inputs["customers_as_of"]).features.index) == trained_on


def test_the_pipeline_views_are_the_same_with_one_build_per_cutoff(tmp_path: Path) -> None:
    """build_views and profile_view on the built-in data give the same frames with the run's
    CustomerViews (two builds) as each on its own (three builds)."""
    from clm_torch import pipeline
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["data.n_customers=200", "data.seed=2"], tmp_path / "run", config_name="pipeline.yaml")
    inputs = pipeline.load_inputs(cfg)
    customers = pipeline.clean_customers(inputs["customers"], inputs["customers_source"])
    frames = []
    for views in (None, pipeline.CustomerViews(inputs, customers, 90.0, 4)):
        train, score = pipeline.build_views(inputs, customers, 90.0, 4, 4, views=views)
        columns = [c for c in train.columns if c not in ("churn", "future_spend") and not c.startswith("seq")]
        frames.append((train, score, pipeline.profile_view(inputs, customers, 90.0, 4, columns, views=views)))
    for alone, shared in zip(*frames):
        pd.testing.assert_frame_equal(shared, alone, check_exact=True)
    assert len(frames[1][2]) > len(frames[1][0])  # the profile view also holds the table's customers without history


def test_the_pipeline_warns_about_id_letter_case_once(tmp_path: Path, caplog) -> None:
    """Table ids in the log only in other letter case: one warning for the run's views (the views at
    both cutoffs read the same ids); views of their own (profile_view without the run's) warn again."""
    import logging

    from clm_torch import pipeline
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["data.n_customers=200", "data.seed=2"], tmp_path / "run", config_name="pipeline.yaml")
    inputs = pipeline.load_inputs(cfg)
    table = inputs["customers"].copy()
    table.loc[:4, "customer_id"] = table.loc[:4, "customer_id"].str.lower()
    customers = pipeline.clean_customers(table, inputs["customers_source"])
    for views, n in ((pipeline.CustomerViews(inputs, customers, 90.0, 4), 1), (None, 2)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="clm_torch.data.events"):
            train, _ = pipeline.build_views(inputs, customers, 90.0, 4, 4, views=views)
            pipeline.profile_view(inputs, customers, 90.0, 4, [c for c in train.columns if c != "churn"], views=views)
        assert caplog.text.count("only in other letter case") == n, caplog.text


def test_a_pipeline_into_an_earlier_pipeline_run_is_refused_before_it_writes(tmp_path: Path) -> None:
    """A second pipeline into the directory of an earlier one, finished or stopped after its first
    model, used to write data/*.parquet over the earlier run's before a sub-run refused: now it stops
    first, naming what is there, and every earlier file is left as it was."""
    from clm_torch.pipeline import run_pipeline
    from clm_torch.train import RunDirectoryError
    from tests.conftest import TINY_PIPELINE, compose_cfg

    out = tmp_path / "run"
    (out / "vae" / "checkpoints").mkdir(parents=True)
    (out / "data").mkdir()
    (out / "data" / "train_view.parquet").write_bytes(b"the earlier run's view")
    with pytest.raises(RunDirectoryError, match=r"run: already holds an earlier run \(vae/checkpoints\); nothing "
                                                r"was overwritten. Choose a new hydra.run.dir$"):
        run_pipeline(compose_cfg(TINY_PIPELINE, out, config_name="pipeline.yaml"))
    assert (out / "data" / "train_view.parquet").read_bytes() == b"the earlier run's view"
    assert sorted(p.name for p in out.rglob("*")) == ["checkpoints", "data", "train_view.parquet", "vae"]


def test_a_pipeline_subrun_refuses_the_relaunching_ddp_strategy(tmp_path: Path) -> None:
    """strategy=ddp re-runs the command line for every extra rank: inside clm-pipeline that is the
    whole pipeline, so a model's sub-run stops before training with a pointer to ddp_spawn."""
    from clm_torch.pipeline import run_model
    from clm_torch.train import RunDirectoryError
    from tests.conftest import REPO, messy_table

    data = tmp_path / "t.csv"
    messy_table(200).to_csv(data, index=False)
    base = ["model=churn", "data=csv", f"data.path={data}", "data.target=churn", "~logger", "trainer=ddp_sim"]
    with pytest.raises(RunDirectoryError, match="whole pipeline again; use trainer.strategy=ddp_spawn"):
        run_model("churn", base, None, tmp_path / "out", str(REPO), 0)
    assert not (tmp_path / "out" / "churn" / "checkpoints").exists()
    # the same through the per-model settings (+models.churn.trainer.strategy=ddp on the command line)
    from omegaconf import OmegaConf

    from clm_torch.train import SettingError

    plain = [b for b in base if b != "trainer=ddp_sim"]
    extra = OmegaConf.create({"trainer": {"strategy": "ddp", "devices": 2}})
    with pytest.raises(RunDirectoryError, match="use trainer.strategy=ddp_spawn"):
        run_model("churn", plain, extra, tmp_path / "out2", str(REPO), 0)
    with pytest.raises(SettingError, match=r"^models\.churn\.trainer\.max_epoch=3: trainer\.max_epoch is not a "
                                           r"setting of the churn sub-run"):
        run_model("churn", plain, OmegaConf.create({"trainer": {"max_epoch": 3}}), tmp_path / "out3", str(REPO), 0)


def test_an_event_log_without_money_is_refused_before_any_training(tmp_path: Path) -> None:
    from clm_torch.pipeline import load_inputs
    from clm_torch.train import SettingError
    from tests.conftest import compose_cfg

    log = tmp_path / "events.csv"
    pd.DataFrame({"customer_id": [1, 2], "timestamp": ["2024-01-01", "2024-01-02"]}).to_csv(log, index=False)
    cfg = compose_cfg(["data.kind=events", f"data.path={log}", "data.amount_col=null"], tmp_path / "run",
                      config_name="pipeline.yaml")
    with pytest.raises(SettingError, match=r"^data\.amount_col=None: expected the event log's money column"):
        load_inputs(cfg)



def test_the_pipeline_drops_customer_table_columns_it_is_told_to(tmp_path: Path) -> None:
    """A customer table with an empty column (an unused 'fax' field of a CRM export) stopped the pipeline
    with "drop it or give it values", but the pipeline had no key to drop a column of its table:
    the file had to be edited. data.customers_drop leaves columns out (a misspelt one is refused),
    and the error names that key; data.csv reads a ';'-separated log and table with decimal commas."""
    from clm_torch.data.schema import SchemaError
    from clm_torch.pipeline import clean_customers, load_inputs
    from tests.conftest import compose_cfg

    log = tmp_path / "events.csv"
    log.write_text("customer_id;timestamp;amount;item_id\n001;2024-01-01;5,50;a\n002;2024-01-02;1.006,25;b\n"
                   "002;2024-03-01;7;a\n")
    table = tmp_path / "crm.csv"
    table.write_text("customer_id;fax;plan;balance\n001;;gold;1.234,50\n002;;silver;-7,5\n003;;gold;0\n")
    base = ["data.kind=events", f"data.path={log}", f"data.customers_path={table}", "data.csv.sep=';'",
            "data.csv.decimal=','", "data.csv.thousands='.'"]
    inputs = load_inputs(compose_cfg(base, tmp_path / "a", config_name="pipeline.yaml"))
    assert inputs["events"]["amount"].tolist() == [5.5, 1006.25, 7.0]
    with pytest.raises(SchemaError, match=r"crm.csv, column 'fax': column is entirely empty; drop it "
                                          r"\(data.customers_drop=\[fax\]\)"):
        clean_customers(inputs["customers"], str(table))
    inputs = load_inputs(compose_cfg([*base, "data.customers_drop=[fax]"], tmp_path / "b",
                                     config_name="pipeline.yaml"))
    clean = clean_customers(inputs["customers"], str(table))
    assert list(clean.columns) == ["customer_id", "plan", "balance"] and clean["balance"].tolist() == [1234.5, -7.5, 0]
    with pytest.raises(SchemaError, match=r"data.customers_drop names a column the table does not have \('fox'\)"):
        load_inputs(compose_cfg([*base, "data.customers_drop=[fox]"], tmp_path / "c", config_name="pipeline.yaml"))

def test_the_cutoff_settings_of_an_event_log_pipeline(tmp_path: Path) -> None:
    """data.cutoff with a time zone is converted to UTC (it used to stop with a TypeError from pandas);
    one that is not a date, or data.customers_as_of that is not, is a named error."""
    from clm_torch.data.schema import SchemaError
    from clm_torch.pipeline import load_inputs
    from tests.conftest import compose_cfg

    log = tmp_path / "events.csv"
    pd.DataFrame({"customer_id": [1, 2, 2], "timestamp": ["2024-01-01", "2024-01-02", "2024-03-01T01:30:00"],
                  "amount": [5, 6, 7], "item_id": ["a", "b", "a"]}).to_csv(log, index=False)
    base = ["data.kind=events", f"data.path={log}"]
    inputs = load_inputs(compose_cfg([*base, "data.cutoff='2024-03-01T02:00:00+02:00'"], tmp_path / "a",
                                     config_name="pipeline.yaml"))
    assert inputs["cutoff"] == pd.Timestamp("2024-03-01") and len(inputs["events"]) == 2
    assert inputs["customers_as_of"] == inputs["cutoff"] and inputs["customers_joined_col"] is None
    joined = load_inputs(compose_cfg([*base, "data.customers_joined_col=signup"], tmp_path / "j",
                                     config_name="pipeline.yaml"))
    assert joined["customers_joined_col"] == "signup"
    from clm_torch.pipeline import _view_kwargs

    assert _view_kwargs(joined)["customers_joined_col"] == "signup"  # both views and the VAE's profile view
    for setting in ("data.cutoff=2024-13-45", "data.customers_as_of=soon"):
        with pytest.raises(SchemaError, match=rf"{setting.split('=')[0]}='{setting.split('=')[1]}' is not a date"):
            load_inputs(compose_cfg([*base, setting], tmp_path / "b", config_name="pipeline.yaml"))
    # the command line makes 20240601 a number: a whole YYYYMMDD is that date (it used to be 20 ms after
    # 1970, which switched the leak guard off); another number is refused
    compact = load_inputs(compose_cfg([*base, "data.customers_as_of=20240601", "data.cutoff=20240301"], tmp_path / "c",
                                      config_name="pipeline.yaml"))
    assert (compact["customers_as_of"], compact["cutoff"]) == (pd.Timestamp("2024-06-01"), pd.Timestamp("2024-03-01"))
    with pytest.raises(SchemaError, match=r"data.cutoff=12345 is a number, not a date"):
        load_inputs(compose_cfg([*base, "data.cutoff=12345"], tmp_path / "d", config_name="pipeline.yaml"))


def test_the_pipeline_reads_a_customer_table_as_data_events_does(tmp_path: Path, caplog) -> None:
    """One reader for both: ids as text (leading zeros kept), the id column named in the error when it
    is absent, and duplicate ids kept once (the last row, with a warning). The pipeline used to stop on
    a duplicate id that data=events drops."""
    from clm_torch.data.schema import SchemaError
    from clm_torch.pipeline import load_inputs
    from tests.conftest import compose_cfg

    log, table = tmp_path / "events.csv", tmp_path / "customers.csv"
    pd.DataFrame({"customer_id": ["007", "012"], "timestamp": ["2024-01-01", "2024-01-02"], "amount": [5, 6],
                  "item_id": ["a", "b"]}).to_csv(log, index=False)
    pd.DataFrame({"cid": ["007", "012", "007"], "age": [30, 40, 31]}).to_csv(table, index=False)
    base = ["data.kind=events", f"data.path={log}", f"data.customers_path={table}"]
    with caplog.at_level("WARNING"):
        inputs = load_inputs(compose_cfg([*base, "data.customers_id_col=cid"], tmp_path / "a",
                                         config_name="pipeline.yaml"))
    assert inputs["customers"].to_dict("list") == {"customer_id": ["012", "007"], "age": [40, 31]}
    assert "dropped 1 duplicate customer rows (kept the last per id)" in caplog.text
    with pytest.raises(SchemaError, match=r"customers\.csv, column 'customer_id': id column not found; columns are "
                                          r"\['cid', 'age'\]"):
        load_inputs(compose_cfg(base, tmp_path / "b", config_name="pipeline.yaml"))


def test_views_the_models_cannot_learn_from_are_refused_before_training() -> None:
    """A cutoff before the log, one churn outcome, or a single item: a named error from check_views,
    which run_pipeline calls before the first model trains (it used to fail after training)."""
    from omegaconf import OmegaConf

    from clm_torch.data.schema import SchemaError
    from clm_torch.pipeline import check_views

    ev = pd.DataFrame({"customer_id": ["a", "b", "a"], "item_id": ["x", "y", "x"],
                       "timestamp": pd.to_datetime(["2024-01-05", "2024-01-06", "2024-03-01"])})
    inputs = {"events": ev, "cutoff": pd.Timestamp("2024-04-01"), "name": "log.csv"}
    d = OmegaConf.create({"item_col": "sku"})
    # the cutoff and the horizon are named as settings, not as a column of the log
    with pytest.raises(SchemaError, match=r"^log.csv: data.cutoff=2024-04-01 \(the day after the last event\), "
                                          r"horizon_days=90: no customer has a purchase before the training cutoff "
                                          r"2024-01-02 .* the log runs from 2024-01-05 to 2024-03-01"):
        check_views(inputs, pd.DataFrame({"churn": []}), 90, d)
    with pytest.raises(SchemaError, match=r"^log.csv: data.cutoff=2024-04-01, horizon_days=90: every customer made "
                                          r"no purchase within the horizon"):
        check_views(inputs, pd.DataFrame({"churn": [1, 1]}), 90, OmegaConf.create({"cutoff": "2024-04-01"}))
    with pytest.raises(SchemaError, match="every customer bought again"):
        check_views(inputs, pd.DataFrame({"churn": [0, 0]}), 90, d)
    with pytest.raises(SchemaError, match=r"column 'sku': the recommender needs at least 2 distinct items; the log has 1"):
        check_views({**inputs, "events": ev.assign(item_id="x")}, pd.DataFrame({"churn": [0, 1]}), 90, d)
    check_views(inputs, pd.DataFrame({"churn": [0, 1]}), 90, d)  # a learnable view passes


def test_a_label_like_table_column_is_flagged(caplog) -> None:
    """A telco export's own 'Churn' status is in the future of the training cutoff: it would leak."""
    import logging

    from clm_torch.pipeline import clean_customers

    table = pd.DataFrame({"customer_id": ["a", "b", "c"], "plan": ["x", "y", "x"], "Churn": ["Yes", "No", "No"]})
    with caplog.at_level(logging.WARNING, logger="clm_torch.pipeline"):
        clean_customers(table, "crm.csv")
    assert "crm.csv: column(s) ['Churn'] look like a churn label" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clm_torch.pipeline"):
        clean_customers(table.drop(columns="Churn"), "crm.csv")
    assert "look like a churn label" not in caplog.text


def test_a_date_column_of_the_pipelines_table_names_no_roles_setting(caplog) -> None:
    """The date warning of the pipeline's customer table advised +data.roles.categorical=[col]: clm-train's
    setting, which clm-pipeline does not have. It points to the join-date setting instead."""
    import logging

    from clm_torch.pipeline import clean_customers

    table = pd.DataFrame({"customer_id": ["a", "b", "c"], "plan": ["x", "y", "x"],
                          "renewed": ["2024-01-03", "2024-02-11", "2024-03-30"]})
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        clean_customers(table, "crm.csv")
    assert "crm.csv: column 'renewed' holds dates: not a feature" in caplog.text
    assert "data.roles" not in caplog.text and "data.customers_joined_col" in caplog.text


@pytest.mark.parametrize("overrides, message", [
    (["horizon_days=0"], "horizon_days=0: expected a number of days > 0"),
    (["horizon_days=-5"], "horizon_days=-5: expected a number of days > 0"),
    (["horizon_days=abc"], "horizon_days='abc': expected a number of days > 0"),
    (["n_last=0"], "n_last=0: expected a whole number of purchases >= 1"),
    (["churn_sequence=lstm"], "churn_sequence='lstm': expected none, gru or attention"),
    (["tensorboard=maybe"], "tensorboard='maybe': expected true or false"),
    (["seed=abc"], "seed='abc': expected a whole number"),
    (["data.kind=csv"], "data.kind='csv': expected synthetic or events"),
    (["data.n_customers=many"], "data.n_customers='many': expected a whole number of customers >= 1"),
    (["data.kind=events", "data.path=events.csv", "data.future_policy=ignore"],
     "data.future_policy='ignore': expected error or drop"),
    (["data.kind=events", "data.path=events.csv", "data.csv.decimal=','"],
     "data.csv.sep and data.csv.decimal are both ',': a number such as 1,5 could not be told from two fields or a "
     "thousands group; a file with decimal commas is usually separated by ';' (data.csv.sep=';' data.csv.decimal=',')"),
    (["data.kind=events", "data.path=events.csv", "data.item_col=null"],
     "data.item_col=None: expected the event log's item column (the recommender learns from the items bought): "
     "set data.item_col=<column>"),
    (["data.kind=events", "data.path=events.csv", "data.cutoff=12345"],
     "config: data.cutoff=12345 is a number, not a date; use e.g. 2024-10-01 (in a YAML file, quote a date written "
     "in digits, cutoff: '01032024': unquoted, a leading 0 and digits up to 7 read as an octal number)"),
    (["data.kind=events", "data.path=events.csv", "data.date_format=DD/MM/YYYY"],
     "data.date_format='DD/MM/YYYY': expected a strftime format such as '%d/%m/%Y' (day/month/year), '%m/%d/%Y' or "
     "'%d.%m.%Y %H:%M', or null (ISO 8601 dates and epoch seconds)"),
    (["data.kind=events", "data.path=events.csv", "data.cutoff=13/04/2024"],
     "config: data.cutoff='13/04/2024' is not a date in ISO form; use YYYY-MM-DD, e.g. 2024-10-01 or "
     "2024-10-01T00:00:00+02:00 (other orders are ambiguous: is 01/10/2024 the first of October or the tenth of "
     "January?), or set data.date_format='%d/%m/%Y' (day first: '13/04/2024' has a first number above 12)"),
    (["data.kind=events", "data.path=events.csv", "data.cutoff=2024/04/13", "data.date_format=%d/%m/%Y"],
     "config: data.cutoff='2024/04/13' is a date neither in data.date_format='%d/%m/%Y' nor in ISO form "
     "(YYYY-MM-DD, e.g. 2024-10-01)"),
    (["+models.churm.trainer.max_epochs=1"],
     "models.churm: not a setting of the pipeline; expected one of vae, churn, recommender, spend"),
    (["score.gap_samples=0"], "score.gap_samples=0: expected a whole number of samples >= 1"),
    (["segments.criterion=aic"], "segments.criterion='aic': expected silhouette or bic"),
    (["segments.k_min=1"], "segments.k_min=1: expected a whole number of segments >= 2"),
    (["segments.k_max=1"], "segments.k_max=1: expected a whole number of segments >= segments.k_min=2"),
    (["value.clv=foo"], "value.clv='foo': expected learned or formula"),
    (["value.margin=30"], "value.margin=30: expected a share of spend in (0, 1]"),
    (["value.discount_rate=-0.1"], "value.discount_rate=-0.1: expected a rate per period >= 0"),
    (["value.period_days=0"], "value.period_days=0: expected a number of days > 0"),
    (["value.periods=1.5"], "value.periods=1.5: expected a whole number of periods >= 1"),
    (["stages.at_risk_prob=2"], "stages.at_risk_prob=2: expected a number in [0, 1]"),
    (["stages.new_days=-1"], "stages.new_days=-1: expected a number of days >= 0"),
    (["+stages.dormant_days=30"], "stages.dormant_days: not a setting of the pipeline; expected one of new_days, "
                                  "active_recency_days, lapsed_recency_days, at_risk_prob, winback_gap_days"),
    (["actions.value_quantile=80"], "actions.value_quantile=80: expected a number in [0, 1]"),
    (["actions.question_gain_quantile=-0.2"], "actions.question_gain_quantile=-0.2: expected a number in [0, 1]"),
    (["actions.question_gain_quantile=top"], "actions.question_gain_quantile='top': expected a number in [0, 1]"),
    # the completeness rule is gone (completeness counts the log's features, which no question fills)
    (["+actions.low_completeness=0.5"], "actions.low_completeness: not a setting of the pipeline; expected one of "
                                        "churn_threshold, value_quantile, question_gain_quantile"),
    (["horizon_days=1" + "0" * 400], "horizon_days=1" + "0" * 400 + ": expected a number of days > 0"),
    (["horizon_days=30.5"], "horizon_days=30.5: expected a whole number of days with data.kind=synthetic"),
    # a sub-run's settings, checked before the first model trains (spend, the last, used to fail after the rest)
    (["+models.spend.model.dropout=1.5"], "models.spend.model.dropout=1.5: expected a share in [0, 1)"),
    (["+models.churn.model.lr=abc"], "models.churn.model.lr='abc': expected a number > 0"),
    (["+models.spend.trainer.max_epoch=3"], "models.spend.trainer.max_epoch=3: trainer.max_epoch is not a setting "
                                            "of the spend sub-run (configs/train.yaml and its groups); check the "
                                            "spelling"),
    # a config-group choice per model used to become the text 'csv' and stop the sub-run with a traceback
    (["+models.churn.logger=csv"], "models.churn.logger='csv': logger is a group of settings of the churn sub-run, "
                                   "not one value (a config-group choice such as logger=csv cannot be made per model): "
                                   "set its keys, e.g. models.churn.logger.<key>=..., or null to turn it off"),
    (["+models.churn.data.rolez.categorical=[region]"],
     "models.churn.data.rolez={'categorical': ['region']}: data.rolez is not a setting of the churn sub-run "
     "(configs/train.yaml and its groups); check the spelling"),
])
def test_a_bad_pipeline_setting_is_one_clear_line_before_the_data_is_read(tmp_path: Path, capsys, monkeypatch,
                                                                          overrides: list[str], message: str) -> None:
    """Pipeline settings used to be checked where they were first used: horizon_days=0 and n_last=0
    stopped in a ValueError naming trend_window_days, churn_sequence=lstm in a ValueError traceback,
    segments.criterion=aic and segments.k_min=1 only after every model had trained, and value.clv=foo
    was taken as formula. Now one line naming the setting and what it accepts, exit 2, before any
    data is read or written."""
    import clm_torch.pipeline as pipeline
    from clm_torch.train import run_cli
    from tests.conftest import compose_cfg

    def refuse(*args, **kwargs):
        raise AssertionError("the data was read")

    monkeypatch.setattr(pipeline, "load_inputs", refuse)
    monkeypatch.chdir(tmp_path)  # data.path=events.csv: a file that is not there
    out = tmp_path / "run"
    cfg = compose_cfg(overrides, out, config_name="pipeline.yaml")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(pipeline.run_pipeline, cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not out.exists()


def test_the_pipelines_own_settings_pass_the_check(tmp_path: Path) -> None:
    """The defaults, the event-log experiment and the tests' tiny pipeline are accepted."""
    from clm_torch.pipeline import check_pipeline_settings
    from tests.conftest import TINY_PIPELINE, compose_cfg

    for overrides in ([], TINY_PIPELINE, ["experiment=pipeline_events", "data.path=events.csv",
                                          "data.cutoff=2024-03-01", "value.clv=formula", "churn_sequence=gru",
                                          "horizon_days=30.5", "segments.criterion=bic"],
                      ["experiment=pipeline_events", "data.path=events.csv", "data.date_format='%d.%m.%Y'",
                       "data.cutoff=01.03.2024", "data.customers_as_of=2024-03-05"]):
        check_pipeline_settings(compose_cfg(overrides, tmp_path / "run", config_name="pipeline.yaml"))


def test_a_sub_runs_empty_maps_take_new_keys(tmp_path: Path) -> None:
    """`+models.churn.data.roles.categorical=[...]` fills the churn sub-run's `data.roles: {}`, as
    `+data.roles.categorical=[...]` does for clm-train; it was refused as a misspelt key."""
    from clm_torch.pipeline import _with_extra, check_pipeline_settings, compose_subrun
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["+models.churn.data.roles.categorical=[region]", "+models.churn.callbacks.early_stopping=null",
                       "+models.recommender.data.item_roles.categorical=[category]"], tmp_path / "run",
                      config_name="pipeline.yaml")
    check_pipeline_settings(cfg)
    churn = _with_extra("churn", compose_subrun(["model=churn", "data=parquet"], tmp_path / "churn", str(tmp_path)),
                        cfg.models.churn)
    assert churn.data.roles.categorical == ["region"] and churn.callbacks.early_stopping is None
    rec = _with_extra("recommender", compose_subrun(["model=recommender", "data=interactions"], tmp_path / "rec",
                                                    str(tmp_path)), cfg.models.recommender)
    assert rec.data.item_roles.categorical == ["category"]


def test_a_future_event_names_the_command_line_setting(tmp_path: Path, capsys) -> None:
    """The error for events after today named load_events' argument (future_policy='drop'); the
    pipeline's command line spells it data.future_policy=drop: the message names both."""
    from clm_torch.pipeline import run_pipeline
    from clm_torch.train import run_cli
    from tests.conftest import compose_cfg

    log = tmp_path / "events.csv"
    pd.DataFrame({"customer_id": [1, 2], "timestamp": ["2024-01-01", "2200-01-02"], "amount": [5, 6],
                  "item_id": ["a", "b"]}).to_csv(log, index=False)
    cfg = compose_cfg(["data.kind=events", f"data.path={log}"], tmp_path / "run", config_name="pipeline.yaml")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run_pipeline, cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {log}, column 'timestamp', row 1: timestamp 2200-01-02 00:00:00 is in the future")
    assert err.endswith("(1 such events); fix the clock/time zone or pass future_policy='drop' "
                        "(data.future_policy=drop on the command line)")


@pytest.mark.extended  # a whole command-line run, 20-40 s on a 2-core VM: `make test-extended`
def test_a_refused_pipeline_command_never_offers_or_starts_a_resume(tmp_path: Path) -> None:
    """Whether a command can continue a run is the program's (clm-train's), not the task name's:
    `clm-pipeline experiment=pipeline_events` (task pipeline_events) over an earlier run used to be
    told to resume with ckpt_path=last, which the pipeline does not do; and `+ckpt_path=last` on a
    pipeline command was taken for a resume, which moved Hydra's record of the command into the
    earlier run's .hydra/resume_<stamp>/ before the pipeline refused. Both are refused by the
    run-directory guard, with no resume advice, and the earlier run is left as it was."""
    import subprocess
    import sys

    run = tmp_path / "run"  # a finished pipeline run
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("task_name: pipeline  # the earlier run\n")
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    (run / "vae" / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text("{}\n")
    before = {str(p.relative_to(run)): p.read_bytes() if p.is_file() else None for p in run.rglob("*")}
    for args in (["experiment=pipeline_events", f"data.path={tmp_path / 'events.csv'}"], ["+ckpt_path=last"]):
        proc = subprocess.run([sys.executable, "-m", "clm_torch.pipeline", *args, f"hydra.run.dir={run}"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert proc.stderr.strip().splitlines()[-1] == (
            f"error: {run.resolve()}: already holds an earlier run (metrics.json, vae/checkpoints); nothing was "
            "overwritten. Choose a new hydra.run.dir"), (args, proc.stderr[-2000:])
        assert {str(p.relative_to(run)): p.read_bytes() if p.is_file() else None for p in run.rglob("*")} == before


def test_only_clm_train_keeps_a_resumes_record_apart(tmp_path: Path) -> None:
    """RunDirGuard._keep_record moves a resume's Hydra files to .hydra/resume_<stamp>/; `ckpt_path` on a
    pipeline command is no resume (the pipeline never continues a run), so its record stays where a
    new run's goes, whatever the task name."""
    from clm_torch.runs import RunDirGuard
    from tests.conftest import compose_cfg

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    for overrides, config_name in ((["+ckpt_path=last"], "pipeline.yaml"),
                                   (["+ckpt_path=last", "experiment=pipeline_events", "data.path=x.csv"],
                                    "pipeline.yaml")):
        cfg = compose_cfg(overrides, run, config_name=config_name)
        RunDirGuard._keep_record(run, cfg)
        assert cfg.hydra.output_subdir == ".hydra", overrides
    cfg = compose_cfg(["ckpt_path=last"], run)  # clm-train does resume
    RunDirGuard._keep_record(run, cfg)
    assert str(cfg.hydra.output_subdir).startswith(".hydra/resume_")


def test_metrics_json_keeps_counts_whole() -> None:
    """metrics.json gave "customers scored": 8421.0 and "segments (k)": 8.0, so load_run(...).metrics
    returned 8.0 where summary.md shows 8."""
    import json

    from clm_torch.pipeline import json_headline

    got = json_headline({"customers scored": np.int64(8421), "segments (k)": 8, "auroc": np.float32(0.5),
                         "clv": "formula", "refit": np.bool_(True)})
    assert json.loads(json.dumps(got)) == {"customers scored": 8421, "segments (k)": 8, "auroc": 0.5,
                                           "clv": "formula", "refit": True}
    assert type(got["customers scored"]) is int and type(got["auroc"]) is float and got["refit"] is True


@pytest.mark.extended  # a whole command-line run, 20-40 s on a 2-core VM: `make test-extended`
def test_the_pipeline_reads_a_log_and_a_table_with_day_first_dates(tmp_path: Path) -> None:
    """clm-pipeline on an event log, a customer table and a cutoff written day first ('13/01/2024'), which
    used to stop at the log: with data.date_format='%d/%m/%Y %H:%M:%S' the log, the join dates and the
    cutoff are read in it, and the table's other date column is a date (not a feature) in the sub-runs too,
    which get the setting."""
    import torch

    from clm_torch.data.synthetic import generate_customer_base
    from clm_torch.models.base import PREPROCESSING_KEY
    from clm_torch.pipeline import run_pipeline
    from tests.conftest import compose_cfg

    base = generate_customer_base(300, seed=1)
    fmt = "%d/%m/%Y %H:%M:%S"
    ev = base.events[base.events["timestamp"] < base.cutoff]
    log, table = tmp_path / "events.csv", tmp_path / "customers.csv"
    ev.assign(timestamp=ev["timestamp"].dt.strftime(fmt)).to_csv(log, index=False)
    first = ev.groupby("customer_id")["timestamp"].min()
    customers = base.customers.drop(columns=[base.target]).iloc[:, :6]
    joined = customers["customer_id"].map(first) - pd.Timedelta(days=3)
    customers = customers.assign(signup=joined.dt.strftime(fmt),
                                 last_contact=(joined + pd.Timedelta(days=40)).dt.strftime(fmt))
    customers.to_csv(table, index=False)
    out = tmp_path / "run"
    cfg = compose_cfg(["experiment=pipeline_events", f"data.path={log}", f"data.customers_path={table}",
                       "data.customers_joined_col=signup", f"data.date_format='{fmt}'",
                       f"data.cutoff='{base.cutoff:%d/%m/%Y} 00:00:00'", "tensorboard=false",
                       *[f"models.{m}.trainer.max_epochs=1" for m in ("vae", "churn", "recommender", "spend")],
                       "segments.k_max=3", "score.gap_samples=2", "score.question_samples=2"],
                      out, config_name="pipeline.yaml")
    run_pipeline(cfg)
    scored = pd.read_csv(out / "customers.csv")
    assert len(scored) >= len(customers) and scored["churn_probability"].notna().all()
    for name in ("churn", "spend"):
        pre = torch.load(out / name / "checkpoints" / "best.ckpt", weights_only=True)[PREPROCESSING_KEY]
        assert pre["schema"]["datetime"] == ["last_contact"], name
        assert "signup_days" in pre["schema"]["numeric"], name
