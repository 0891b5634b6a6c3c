"""CLV, survival, retention/churn rates, cohorts, baselines, metrics and lifecycle stages, by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clm_torch.data.events import build_customer_view, load_events
from clm_torch.data.schema import SchemaError
from clm_torch.lifecycle.stages import STAGES, assign_stage
from clm_torch.lifecycle.value import (
    churn_rate,
    clv_formula,
    clv_learned,
    cohort_retention,
    per_period_churn_prob,
    rates_from_events,
    retention_rate,
    run_rate_clv,
    spearman,
    spend_capture,
    survival_from_churn_prob,
)


def _events(rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"])
    return load_events(df, customer_col="customer_id", time_col="timestamp", amount_col="amount", now="2025-01-01")


# ----------------------------------------------------------------------------- CLV


def test_clv_hand_check():
    # 20/1.1 + 25/1.1^2 + 30/1.1^3 + 35/1.1^4 + 40/1.1^5 = 110.1247
    value = clv_formula([20, 25, 30, 35, 40], discount_rate=0.1)
    assert isinstance(value, float)
    assert round(value, 2) == 110.12
    assert clv_formula([20, 25, 30, 35, 40], discount_rate=0.0) == pytest.approx(150.0)


def test_clv_with_survival_vectorised():
    margins = np.array([[100.0, 100.0], [20, 25]])
    survival = np.array([[0.5, 0.25], [1.0, 1.0]])
    out = clv_formula(margins, survival, discount_rate=0.1)
    assert out.shape == (2,)
    np.testing.assert_allclose(out, [100 * 0.5 / 1.1 + 100 * 0.25 / 1.21, 20 / 1.1 + 25 / 1.21])
    # (T,) survival broadcast over customers
    np.testing.assert_allclose(clv_formula(margins, [0.5, 0.25], discount_rate=0.0), [75.0, 16.25])
    with pytest.raises(ValueError):
        clv_formula([1, 2, 3], [0.5, 0.5])
    with pytest.raises(ValueError):
        clv_formula([1, 2], [1.5, 0.5])


def test_learned_clv_is_the_spend_rate_held_and_discounted_like_the_formula():
    """90 in a 90-day horizon is 30 per 30-day period; margin 0.5 makes 15; two periods at 10 %:
    15/1.1 + 15/1.21. It used to be undiscounted (margin x spend x periods x period / horizon), so
    `clv_learned` and `clv_formula` in customers.csv were not on one footing."""
    got = clv_learned([90.0, 0.0], margin=0.5, horizon_days=90, period_days=30, periods=2, discount_rate=0.1)
    np.testing.assert_allclose(got, [15 / 1.1 + 15 / 1.21, 0.0])
    np.testing.assert_allclose(clv_learned([90.0], margin=0.5, horizon_days=90, period_days=30, periods=2,
                                           discount_rate=0.1),
                               clv_formula([[15.0, 15.0]], None, 0.1))
    # one customer's spend as a number: one value (it used to be an IndexError); bad periods are named
    # (a zero horizon used to be a ZeroDivisionError)
    np.testing.assert_allclose(clv_learned(90.0, margin=0.5, horizon_days=90, period_days=30, periods=2,
                                           discount_rate=0.1), [15 / 1.1 + 15 / 1.21])
    for kw, msg in ((dict(horizon_days=0), "horizon_days must be a number of days > 0, got 0"),
                    (dict(period_days=float("nan")), "period_days must be a number of days > 0"),
                    (dict(periods=0), "periods must be a whole number >= 1, got 0")):
        args = {**dict(margin=0.5, horizon_days=90, period_days=30, periods=2, discount_rate=0.1), **kw}
        with pytest.raises(ValueError, match=msg):
            clv_learned([1.0], **args)


def test_survival_from_churn_prob():
    np.testing.assert_allclose(survival_from_churn_prob(0.2, 3), [0.8, 0.64, 0.512])
    s = survival_from_churn_prob([0.1, 0.5], 2)
    np.testing.assert_allclose(s, [[0.9, 0.81], [0.5, 0.25]])
    with pytest.raises(ValueError):
        survival_from_churn_prob(1.2, 3)


def test_per_period_churn_prob():
    # surviving 2 periods at 20 % churn each: 0.8^2 = 0.64, so 36 % over the horizon
    assert per_period_churn_prob(0.36, 2) == pytest.approx(0.2)
    # a 90-day churn probability of 10 % as a yearly one: 1 - 0.9^(365/90)
    assert per_period_churn_prob(0.1, 90 / 365) == pytest.approx(1 - 0.9 ** (365 / 90))
    p = np.array([0.0, 0.5, 1.0])
    round_trip = survival_from_churn_prob(per_period_churn_prob(p, 4), 4)[:, -1]
    np.testing.assert_allclose(round_trip, 1 - p, atol=1e-12)
    # CLV at a constant yearly churn of 20 %: 100 * (0.8/1.1 + 0.64/1.21)
    assert clv_formula([100, 100], survival_from_churn_prob(0.2, 2)) == pytest.approx(80 / 1.1 + 64 / 1.21)


# ----------------------------------------------------------------------------- rates


def test_retention_and_churn_rate():
    assert retention_rate(100, 90, 10) == pytest.approx(0.8)
    assert churn_rate(100, 90, 10) == pytest.approx(0.2)
    np.testing.assert_allclose(retention_rate([100, 50], [90, 50], [10, 0]), [0.8, 1.0])
    assert np.isnan(retention_rate(0, 5, 5))
    with pytest.raises(ValueError):
        retention_rate(100, 10, 20)


def test_rates_from_events_by_hand():
    # period [02-01, 03-01) (29 days); customers at the start = purchase in [01-03, 02-01)
    ev = _events(
        [
            ("a", "2024-01-05", 10),  # start
            ("a", "2024-02-10", 10),  # end -> retained
            ("b", "2024-01-20", 10),  # start
            ("b", "2024-02-10", -5),  # a refund is not a purchase -> b churned
            ("c", "2024-02-03", 10),  # new, first purchase
            ("d", "2023-06-01", 10),
            ("d", "2024-02-15", 10),  # new, reactivated
            ("e", "2024-01-10", 10),  # start, churned
            ("f", "2024-01-02", 10),  # just before the start window: not counted
            ("g", "2024-03-01", 10),  # at the period end: not counted
        ]
    )
    r = rates_from_events(ev, "2024-02-01", "2024-03-01")
    assert (r["n_start"], r["n_end"], r["n_new"], r["n_reactivated"]) == (3, 3, 2, 1)
    assert r["retention_rate"] == pytest.approx(1 / 3)
    assert r["churn_rate"] == pytest.approx(2 / 3)
    wider = rates_from_events(ev, "2024-02-01", "2024-03-01", lookback_days=30)  # now f counts at the start
    assert wider["n_start"] == 4 and wider["retention_rate"] == pytest.approx(1 / 4)


def test_cohort_retention_by_hand():
    ev = _events(
        [
            ("a", "2024-01-05", 1),
            ("a", "2024-01-25", 1),
            ("a", "2024-03-01", 2),
            ("b", "2024-01-20", 3),
            ("b", "2024-02-10", -1),  # refund: not activity
            ("c", "2024-02-03", 5),
            ("c", "2024-02-20", 6),
            ("d", "2024-02-28", 7),
            ("d", "2024-03-03", 7),
            ("e", "2024-03-03", 7),
        ]
    )
    cohorts = pd.PeriodIndex(["2024-01", "2024-02", "2024-03"], freq="M", name="cohort")
    # observed to the end of March: every cell up to March counts
    got = cohort_retention(ev, freq="M", end="2024-04-01")
    expected = pd.DataFrame([[1.0, 0.0, 0.5], [1.0, 0.5, np.nan], [1.0, np.nan, np.nan]], index=cohorts,
                            columns=pd.Index([0, 1, 2], name="period"))
    pd.testing.assert_frame_equal(got, expected, check_column_type=False)
    assert got.attrs["size"] == {"2024-01": 2, "2024-02": 2, "2024-03": 1}
    # by default the log ends the day after its last purchase (March 4): March is not fully observed,
    # so its cells are unknown rather than a false drop (column 0 stays 1.0 by construction)
    expected.loc[["2024-01"], 2] = np.nan
    expected.loc[["2024-02"], 1] = np.nan
    pd.testing.assert_frame_equal(cohort_retention(ev, freq="M"), expected, check_column_type=False)
    # observed to mid-May: April is a month without purchases (0), May is unknown
    later = cohort_retention(ev, freq="M", end=pd.Timestamp("2024-05-15", tz="Europe/Berlin"))
    assert later.columns.tolist() == [0, 1, 2, 3]  # up to April for the January cohort
    np.testing.assert_array_equal(later.to_numpy(), [[1.0, 0.0, 0.5, 0.0], [1.0, 0.5, 0.0, np.nan],
                                                     [1.0, 0.0, np.nan, np.nan]])
    with pytest.raises(ValueError, match="must be after the last purchase"):
        cohort_retention(ev, end="2024-03-03")
    # a customer buying every month, the log cut on the 10th: retention 1.0, no drop in the cut month
    monthly = _events([(c, f"2023-{m:02d}-0{1 + i}", 1) for i, c in enumerate("xyz") for m in range(1, 7)])
    monthly = pd.concat([monthly, _events([("x", "2023-06-10", 1)])], ignore_index=True)
    assert np.nanmin(cohort_retention(monthly).to_numpy()) == 1.0


# ----------------------------------------------------------------------------- baselines and metrics


def test_run_rate_clv():
    f = pd.DataFrame(
        {"monetary_total": [70.0, 10.0, 0.0, -5.0], "tenure_days": [70.0, 1.0, np.nan, 14.0]}, index=list("abcd")
    )
    pred = run_rate_clv(f, horizon_days=28)
    # a: 70 over 10 weeks * 4 weeks; b: tenure floored at one week; c: no history; d: net refunds -> 0
    np.testing.assert_allclose(pred, [28.0, 40.0, 0.0, 0.0])
    assert pred.index.tolist() == list("abcd")


def test_spend_capture_by_hand():
    pred = [0.9, 0.1, 0.5, 0.3, 0.2]
    truth = [10, 40, 30, 0, 20]
    assert spend_capture(pred, truth, top=0.2) == pytest.approx(0.1)  # top 1: the 0.9 customer, 10 of 100
    assert spend_capture(pred, truth, top=0.4) == pytest.approx(0.4)  # 0.9 and 0.5: 40 of 100
    assert spend_capture(truth, truth, top=0.2) == pytest.approx(0.4)  # perfect ranking
    assert spend_capture([np.nan, 1, 0, 0, 0], truth, top=0.2) == pytest.approx(0.4)  # NaN ranks last
    assert np.isnan(spend_capture(pred, [0, 0, 0, 0, 0]))


def test_spearman():
    # ranks 1,2,4,3: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


# ----------------------------------------------------------------------------- stages


def _rows():
    cols = ["recency_days", "tenure_days", "frequency", "last_gap_days"]
    data = {
        "new": [5, 20, 2, 15],
        "active": [10, 300, 10, 30],
        "active_edge": [60, 300, 10, 30],  # recency == active threshold: still active
        "at_risk_recency": [100, 400, 5, 50],
        "at_risk_prob": [10, 400, 8, 20],
        "lapsed_recency": [200, 500, 4, 60],
        "lapsed_no_history": [np.nan, np.nan, 0, np.nan],
        "won_back": [10, 500, 3, 200],
        "won_back_high_prob": [10, 500, 3, 200],
        "gap_but_not_recent": [90, 500, 3, 200],  # long gap closed 90 days ago: at risk, not won back
        "new_high_prob": [5, 20, 1, np.nan],
    }
    return pd.DataFrame.from_dict(data, orient="index", columns=cols)


def test_assign_stage_every_stage():
    f = _rows()
    prob = pd.Series(0.1, index=f.index)
    prob[["at_risk_prob", "won_back_high_prob", "new_high_prob"]] = [0.5, 0.9, 0.9]  # 0.5 == threshold
    stage = assign_stage(f, prob)
    expected = {
        "new": "new",
        "active": "active",
        "active_edge": "active",
        "at_risk_recency": "at_risk",
        "at_risk_prob": "at_risk",
        "lapsed_recency": "lapsed",
        "lapsed_no_history": "lapsed",
        "won_back": "won_back",
        "won_back_high_prob": "won_back",
        "gap_but_not_recent": "at_risk",
        "new_high_prob": "new",
    }
    assert stage.to_dict() == expected
    assert list(stage.cat.categories) == list(STAGES)
    assert set(stage) == set(STAGES)
    # without probabilities the probability-driven customer is active; an array works like a Series
    assert assign_stage(f).loc["at_risk_prob"] == "active"
    assert assign_stage(f, prob.to_numpy()).tolist() == stage.tolist()
    # thresholds move customers between stages
    assert assign_stage(f, prob, lapsed_recency_days=250).loc["lapsed_recency"] == "at_risk"
    assert assign_stage(f, prob, winback_gap_days=250).loc["won_back"] == "active"
    with pytest.raises(SchemaError, match="column 'last_gap_days'"):
        assign_stage(f.drop(columns="last_gap_days"))


def test_assign_stage_refuses_what_it_would_misread():
    """A probability Series that does not cover the customers (e.g. a 0..n-1 index on an id-indexed
    view), probabilities on a 0-100 scale, durations or text in a day column, duplicated customers
    and thresholds out of range are errors, not silently "active" or "lapsed" customers."""
    f = _rows()
    with pytest.raises(ValueError, match=r"11 of 11 customers are not in it \(first: 'new'\).*to_numpy\(\)"):
        assign_stage(f, pd.Series(np.full(len(f), 0.9)))
    with pytest.raises(ValueError, match="index, which has duplicates"):
        assign_stage(f, pd.concat([pd.Series(0.9, index=f.index)] * 2))
    with pytest.raises(ValueError, match=r"customer 'new' has 30.0 \(11 such values; a 0-100 scale"):
        assign_stage(f, np.full(len(f), 30.0))
    with pytest.raises(ValueError, match="at_risk_prob must be a probability"):
        assign_stage(f, at_risk_prob=50)
    with pytest.raises(ValueError, match="new_days must be a number of days"):
        assign_stage(f, new_days=float("nan"))
    with pytest.raises(SchemaError, match="column 'recency_days': expected a number but found timedelta64"):
        assign_stage(f.assign(recency_days=pd.to_timedelta(f["recency_days"].fillna(0), unit="D")))
    with pytest.raises(SchemaError, match=r"column 'tenure_days', row active: expected a number but found 'n/d'"):
        assign_stage(f.assign(tenure_days=f["tenure_days"].astype(object).where(f.index != "active", "n/d")))
    with pytest.raises(SchemaError, match="duplicated customer 'new'"):
        assign_stage(pd.concat([f, f.iloc[:1]]))
    # a Series covering every customer in another order, with extra customers, is matched by id
    prob = pd.Series(0.9, index=[*f.index[::-1], "someone_else"])
    assert assign_stage(f, prob).tolist() == assign_stage(f, np.full(len(f), 0.9)).tolist()


def test_assign_stage_on_customer_view():
    log = pd.DataFrame(
        [
            ("A", "2024-01-01", 10.0),
            ("A", "2024-02-01", 20.0),
            ("A", "2024-03-02", 30.0),
            ("B", "2023-09-01", 40.0),
            ("B", "2024-03-22", 60.0),
            ("C", "2024-03-20", 12.0),
        ],
        columns=["c", "t", "a"],
    )
    ev = load_events(log, customer_col="c", time_col="t", amount_col="a", now="2025-01-01")
    v = build_customer_view(ev, "2024-04-01", customers=pd.DataFrame({"customer_id": ["E"]}))
    assert assign_stage(v.features).to_dict() == {"A": "active", "B": "won_back", "C": "new", "E": "lapsed"}
    assert math.isclose(v.features.loc["B", "last_gap_days"], 203)


def test_value_and_rate_inputs_that_would_give_silent_nan_or_impossible_rates():
    """NaN margins, survival or probabilities, more customers retained than there were, text or
    time-zone timestamps and events without an amount: named errors (or, for time zones, one UTC
    clock), never a NaN CLV or a retention above 1."""
    with pytest.raises(ValueError, match=r"margins has 1 missing or infinite values \(first at index 2: nan\)"):
        clv_formula([1.0, 2.0, np.nan])
    with pytest.raises(ValueError, match="survival has 1 missing"):
        clv_formula([1.0, 2.0], survival=[0.9, np.nan])
    with pytest.raises(ValueError, match="discount_rate must be a number"):
        clv_formula([1.0, 2.0], discount_rate=float("nan"))
    with pytest.raises(ValueError, match="p_churn has 1 missing"):
        survival_from_churn_prob([0.1, np.nan], 3)
    with pytest.raises(ValueError, match="p_horizon has 1 missing"):
        per_period_churn_prob([np.nan], 2)
    with pytest.raises(ValueError, match=r"\(1100 - 50\) exceeds customers_start \(1000\)"):
        retention_rate(1000, 1100, 50)
    with pytest.raises(ValueError, match=r"\(40 - 10\) exceeds customers_start \(0\)"):
        churn_rate([10, 0], [5, 40], [0, 10])
    with pytest.raises(ValueError, match="customers_end has 1 missing"):
        retention_rate(10, np.nan, 0)
    assert math.isnan(retention_rate(0, 3, 3)) and retention_rate(10, 12, 4) == 0.8
    ev = _events([("a", "2024-01-05", 1), ("a", "2024-02-05", 1), ("b", "2024-01-20", 3), ("b", "2024-03-02", 1)])
    base = rates_from_events(ev, "2024-02-01", "2024-03-01")
    tz = ev.assign(timestamp=ev["timestamp"].dt.tz_localize("UTC").dt.tz_convert("America/New_York"))
    pd.testing.assert_series_equal(rates_from_events(tz, pd.Timestamp("2024-02-01", tz="UTC"), "2024-03-01"), base)
    pd.testing.assert_frame_equal(cohort_retention(tz), cohort_retention(ev))
    with pytest.raises(SchemaError, match="column 'timestamp': expected datetimes but found"):
        rates_from_events(ev.assign(timestamp=ev["timestamp"].astype(str)), "2024-02-01", "2024-03-01")
    with pytest.raises(SchemaError, match="column 'amount', row 1: missing amount"):
        cohort_retention(ev.assign(amount=[1.0, np.nan, 3.0, 1.0]))
    # a missing id or time (a raw log, not load_events'): named; they used to shift the cohorts and
    # count a NaN id as a customer
    with pytest.raises(SchemaError, match=r"column 'customer_id', row 2: missing customer id \(1 rows\)"):
        cohort_retention(ev.assign(customer_id=["a", "a", None, "b"]))
    with pytest.raises(SchemaError, match=r"column 'timestamp', row 0: missing timestamp \(1 rows\)"):
        rates_from_events(ev.assign(timestamp=ev["timestamp"].where(ev.index != 0)), "2024-02-01", "2024-03-01")
    # dates as the CLI reads them: 20240201 is that day (pd.Timestamp made it 20 ms after 1970)
    pd.testing.assert_series_equal(rates_from_events(ev, 20240201, 20240301), base)
    with pytest.raises(SchemaError, match=r"rates_from_events: period_start=None is not a date"):
        rates_from_events(ev, None, "2024-03-01")
    with pytest.raises(SchemaError, match=r"cohort_retention: end='soon' is not a date"):
        cohort_retention(ev, end="soon")
    with pytest.raises(ValueError, match="lookback_days must be a number of days > 0"):
        rates_from_events(ev, "2024-02-01", "2024-03-01", lookback_days=0)
    with pytest.raises(ValueError, match="horizon_days must be"):
        run_rate_clv(pd.DataFrame({"monetary_total": [1.0], "tenure_days": [3.0]}), float("nan"))


def test_suggested_actions_refuse_bad_inputs_and_ties_do_not_make_everyone_high_value():
    from clm_torch.lifecycle.report import suggest_actions

    clv = np.r_[np.zeros(85), np.linspace(50, 500, 15)]  # most customers have no value yet
    c = pd.DataFrame({"stage": "active", "churn_probability": 0.1, "clv": clv, "top5_items": "i1 i2"})
    got = suggest_actions(c)
    assert (got.loc[clv == 0, "action"] == "recommend").all()
    assert got.loc[clv > 0, "action"].value_counts().to_dict() == {"cross-sell": 15}  # the top 20 % minus ties
    assert "cross-sell" not in set(suggest_actions(c, value_quantile=1.0)["action"])  # the top 0 %: nobody
    at_risk = suggest_actions(c.assign(clv=0.0, stage="at_risk", churn_probability=np.r_[np.full(99, 0.7), np.nan]))
    assert set(at_risk["reason"]) == {"at risk: churn p=0.70", "at risk: churn p=n/a"}
    no_history = suggest_actions(pd.DataFrame({"stage": ["lapsed", "lapsed"], "churn_probability": [0.9, 0.9],
                                               "clv": [0.0, 1.0], "recency_days": [np.nan, 200.4],
                                               "top5_items": [np.nan, np.nan]}))
    assert no_history["reason"].tolist() == ["no purchase yet", "lapsed: no purchase for 200 days"]
    assert no_history["action"].tolist() == ["first-purchase offer", "win-back campaign"]
    long_ago = suggest_actions(pd.DataFrame({"stage": ["lapsed"], "churn_probability": [0.9], "clv": [0.0],
                                             "recency_days": [1e19]}))  # past int64: was "-9223372036854775808 days"
    assert long_ago.loc[0, "reason"] == "lapsed: no purchase for 10000000000000000000 days"
    # high value: the top 20 % of all customers (CLV 0 included), positive only: 2, 3, 4 of 12
    assert suggest_actions(c.iloc[:12].assign(clv=[0.0] * 8 + [1.0, 2.0, 3.0, 4.0]))["action"].tolist() == (
        ["recommend"] * 9 + ["cross-sell"] * 3)
    unknown = suggest_actions(pd.DataFrame({"stage": ["lapsed"], "churn_probability": [0.9], "clv": [0.0]}))
    assert (unknown.loc[0, "action"], unknown.loc[0, "reason"]) == ("win-back campaign", "lapsed")  # no recency column
    with pytest.raises(SchemaError, match="column 'clv': column not found"):
        suggest_actions(c.drop(columns="clv"))
    with pytest.raises(SchemaError, match="row 3: unknown stage 'Lapsed'"):
        suggest_actions(c.assign(stage=["active"] * 3 + ["Lapsed"] + ["active"] * 96))
    with pytest.raises(SchemaError, match=r"column 'churn_probability', row 0: churn probabilities must lie in \[0, 1\]"):
        suggest_actions(c.assign(churn_probability=70.0))
    with pytest.raises(ValueError, match="value_quantile must be in"):
        suggest_actions(c, value_quantile=80)


def test_lifecycle_inputs_that_were_paired_or_binned_wrongly_in_silence():
    """A one-column churn-probability frame is matched by customer like a Series (it was taken in
    row order); two Series with different indexes are refused by the ranking metrics (they were
    paired by position); a multiple period ('2M') is refused (it was binned by month); a fractional
    number of periods, a tenure floor of 0 or a text setting are named errors."""
    f = pd.DataFrame({"recency_days": [10, 10], "tenure_days": [500, 500], "frequency": [5, 5],
                      "last_gap_days": [10, 10]}, index=["a", "b"])
    p = pd.DataFrame({"p": [0.9, 0.1]}, index=["b", "a"])
    assert assign_stage(f, p).tolist() == ["active", "at_risk"]
    with pytest.raises(ValueError, match="churn_prob is a DataFrame with 2 columns"):
        assign_stage(f, p.assign(q=0.5))
    a, b = pd.Series([1.0, 2.0, 3.0], index=[2, 1, 0]), pd.Series([1.0, 2.0, 3.0])
    for fn in (spearman, spend_capture):
        with pytest.raises(ValueError, match="different indexes"):
            fn(a, b)
    assert spearman(a, b.reindex(a.index)) == pytest.approx(-1.0)
    ev = _events([("a", "2024-01-05", 1), ("b", "2024-02-05", 1), ("a", "2024-03-02", 1), ("c", "2024-04-20", 1)])
    with pytest.raises(ValueError, match=r"freq='2M': expected a single pandas period"):
        cohort_retention(ev, freq="2M")
    with pytest.raises(ValueError, match="n_periods must be a whole number >= 1, got 2.5"):
        survival_from_churn_prob(0.1, 2.5)
    feats = pd.DataFrame({"monetary_total": [10.0, 70.0], "tenure_days": [0.0, 3.0]})
    for floor in (0, -3, float("nan")):
        with pytest.raises(ValueError, match="min_tenure_days must be a number of days > 0"):
            run_rate_clv(feats, 90, min_tenure_days=floor)
    with pytest.raises(SchemaError, match="column 'monetary_total', row 1: contains infinite values"):
        run_rate_clv(feats.assign(monetary_total=[1.0, np.inf]), 90)
    with pytest.raises(ValueError, match=r"spend_horizon has 1 missing or infinite values \(first at index 1"):
        clv_learned([1.0, np.nan], margin=0.3, horizon_days=90, period_days=30, periods=2, discount_rate=0.0)
    for kw in ({"discount_rate": "0.1"}, {"periods": float("nan")}, {"horizon_days": None}):
        args = {"margin": 0.3, "horizon_days": 90, "period_days": 30, "periods": 2, "discount_rate": 0.0, **kw}
        with pytest.raises(ValueError, match=f"{next(iter(kw))} must be a"):
            clv_learned([1.0], **args)
    with pytest.raises(ValueError, match=r"survival shape \(3, 2\) does not match margins shape \(2, 2\)"):
        clv_formula(np.ones((2, 2)), np.full((3, 2), 0.5))
    with pytest.raises(SchemaError, match="column 'amount': expected money amounts"):
        rates_from_events(ev.assign(amount=ev["amount"].astype(str)), "2024-02-01", "2024-03-01")


def test_report_plots_name_mismatched_inputs_and_draw_one_dimensional_profiles(tmp_path):
    from clm_torch.lifecycle.report import plot_churn, plot_clv_by_segment, plot_latent_map

    with pytest.raises(ValueError, match="prob and y must hold one value per customer: got 3 and 4"):
        plot_churn(np.full(3, 0.5), np.ones(4), tmp_path / "c.png")
    assert plot_latent_map(np.linspace(0, 1, 30)[:, None], np.arange(30) % 3, tmp_path / "l.png").exists()
    with pytest.raises(ValueError, match=r"got latents \(5,\) and 5 segments"):
        plot_latent_map(np.ones(5), np.zeros(5), tmp_path / "l.png")
    # a NaN CLV is left out of its box (matplotlib drew no box for the segment)
    from clm_torch.lifecycle.report import _clv_boxes

    frame = pd.DataFrame({"segment": [0, 0, 0, 1, 1], "clv": [1.0, 2.0, np.nan, 3.0, 4.0]})
    assert [b.tolist() for b in _clv_boxes(frame, [0, 1])] == [[1.0, 2.0], [3.0, 4.0]]
    assert plot_clv_by_segment(frame, tmp_path / "v.png").exists()


def test_one_top_20_percent_capture_for_the_spend_model_and_the_lifecycle_layer():
    """The spend model's capture20 took round(0.2 n) customers, spend_capture ceil(0.2 n): the same
    predictions gave 0.0 and 0.5. A net refund divided the share by a total net of refunds (2.0)."""
    import torch

    from clm_torch.models.spend import spend_metrics

    p = np.linspace(1, 0, 452)
    y = np.zeros(452)
    y[[90, 200]] = 1.0
    assert float(spend_metrics(torch.tensor(p), torch.tensor(y))["capture20"]) == spend_capture(p, y) == 0.5
    assert spend_capture(np.array([5.0, 4, 3, 2, 1]), np.array([10.0, -8, 1, 1, 1]), 0.2) == pytest.approx(10 / 13)


def test_reactivated_customers_zero_amount_purchases_and_a_lookback_shorter_than_the_period():
    """Period [01-01, 03-01) with a 20-day lookback: the start window is [12-12, 01-01), the end window
    [02-10, 03-01). x first bought inside the period (01-05), before the end window, and again in it:
    new, and a first-time buyer (not reactivated: nothing before the start window). y bought long
    before the start window: reactivated. z is retained by a purchase of amount 0 (a free item is a
    purchase; only negative amounts are refunds, as in the customer view)."""
    ev = _events([
        ("x", "2024-01-05", 10), ("x", "2024-02-20", 10),
        ("y", "2023-11-01", 10), ("y", "2024-02-25", 10),
        ("z", "2023-12-20", 10), ("z", "2024-02-15", 0),
    ])
    r = rates_from_events(ev, "2024-01-01", "2024-03-01", lookback_days=20)
    assert (r["n_start"], r["n_end"], r["n_new"], r["n_reactivated"]) == (1, 3, 2, 1)
    assert (r["retention_rate"], r["churn_rate"]) == (1.0, 0.0)
    # the zero-amount purchase is activity in the cohort table too: z's February cell
    got = cohort_retention(ev, freq="M", end="2024-03-01")
    assert got.loc[pd.Period("2023-12", "M")].tolist()[:3] == [1.0, 0.0, 1.0]  # Dec, Jan, Feb


def test_spearman_drops_pairs_with_a_missing_value_and_averages_tied_ranks():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 40).astype(float)  # many ties
    b = a + rng.integers(0, 3, 40)
    a[[3, 17]] = np.nan
    b[[5, 17, 30]] = np.nan
    ok = ~np.isnan(a) & ~np.isnan(b)
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a[ok], b[ok]).statistic, abs=1e-12)
    assert spearman([1, 2, 3, np.nan, 5], [1, 2, 3, 4, np.nan]) == pytest.approx(1.0)


def test_assign_stage_thresholds_are_strict_where_documented():
    """Each threshold at exactly its value: ``recency > lapsed`` (180 is still at risk), ``tenure <
    new_days`` (60 days is no longer new), ``last_gap > winback_gap`` (a gap of exactly 180 is not a
    win-back) and ``recency <= active_recency`` for a win-back (a purchase 60 days ago still is)."""
    cols = ["recency_days", "tenure_days", "frequency", "last_gap_days"]
    f = pd.DataFrame.from_dict({
        "lapsed_edge": [180, 400, 5, 50],
        "new_edge": [10, 60, 3, 20],
        "winback_gap_edge": [10, 500, 3, 180],
        "winback_recency_edge": [60, 500, 3, 200],
    }, orient="index", columns=cols)
    assert assign_stage(f).to_dict() == {"lapsed_edge": "at_risk", "new_edge": "active",
                                         "winback_gap_edge": "active", "winback_recency_edge": "won_back"}
    # a churn probability of exactly 1 is a probability (at risk), not an error; won_back stays
    assert assign_stage(f, np.ones(len(f))).tolist() == ["at_risk", "at_risk", "at_risk", "won_back"]


def test_suggested_actions_at_the_edges_of_their_rules():
    """churn p exactly at the threshold makes a high-value customer's retention offer (p >= τ); a
    question's gain exactly at the gain quantile is asked (>=), a gain of 0 never is; customers tied at
    the value quantile are all left out when they would make more than the top share (here half of
    them at the top CLV, for a top 20 %); a CLV of 0 or below is never high value, even at the top."""
    from clm_torch.lifecycle.report import suggest_actions

    base = {"stage": "active", "churn_probability": 0.1, "top5_items": "i1"}
    c = pd.DataFrame({**base, "clv": np.r_[np.zeros(8), 5.0, 9.0]})
    c.loc[9, "churn_probability"] = 0.5
    got = suggest_actions(c)["action"].tolist()
    assert got == ["recommend"] * 8 + ["cross-sell", "retention offer"]  # the top 2 of 10 (quantile 1.0)
    # five customers with a question: gains 0.1 .. 0.5, of which 0.5 gets its retention offer first; the
    # 0.6 quantile of the other four is 0.28, so 0.3 and 0.4 (the cross-sell's customer) are asked
    q = c.assign(next_best_question=[None] * 5 + ["income"] * 5,
                 next_best_question_gain=[np.nan] * 5 + [0.1, 0.2, 0.3, 0.4, 0.5])
    assert suggest_actions(q, question_gain_quantile=0.6)["action"].tolist() == (
        ["recommend"] * 7 + ["ask next best question"] * 2 + ["retention offer"])
    assert suggest_actions(q.assign(next_best_question_gain=[np.nan] * 5 + [0.0] * 5), question_gain_quantile=0.0
                           )["action"].tolist()[5:8] == ["recommend"] * 3  # nothing to learn: not asked
    # exactly at the quantile: the median of 0.1, 0.2, 0.3 is 0.2, asked with 0.3; the top 0 % is nobody
    edge = q.iloc[:8].assign(next_best_question_gain=[np.nan] * 5 + [0.1, 0.2, 0.3])
    assert suggest_actions(edge, question_gain_quantile=0.5)["action"].tolist()[5:] == (
        ["recommend"] + ["ask next best question"] * 2)
    assert set(suggest_actions(edge, question_gain_quantile=1.0)["action"]) == {"recommend"}
    tied = pd.DataFrame({**base, "clv": np.r_[np.zeros(5), np.full(5, 10.0)]})
    assert set(suggest_actions(tied)["action"]) == {"recommend"}  # 5 of 10 tied at the top: nobody
    negative = pd.DataFrame({**base, "clv": [-5.0, -4.0, -3.0, -2.0, -1.0]})
    assert set(suggest_actions(negative)["action"]) == {"recommend"}


def test_the_next_best_question_is_asked_by_its_expected_gain_not_by_completeness():
    """``make run`` never suggested "ask next best question": the rule was completeness < 0.5, and the
    pipeline's completeness counts the event log's features, which no question fills, so it fell below
    0.5 only for customers without purchases (627 of 8,421), who all get a first-purchase offer first.
    The rule is now the question's expected gain (``next_best_question_gain``) in the top
    ``1 - question_gain_quantile`` share of the customers with a question that the rule can reach;
    lapsed and at-risk customers still get their offers first, and their (larger) gains do not
    raise the bar for the others."""
    from clm_torch.lifecycle.report import suggest_actions

    n = 10
    c = pd.DataFrame({"stage": ["lapsed", "at_risk"] + ["active"] * (n - 2), "churn_probability": 0.2,
                      "clv": 1.0, "completeness": 0.9, "recency_days": [400.0, 100.0] + [5.0] * (n - 2),
                      "next_best_question": ["income"] * (n - 1) + [None],
                      "next_best_question_gain": [0.9, 0.8, 0.7, 0.05, 0.04, 0.03, 0.02, 0.01, 0.0, 5.0],
                      "top5_items": "i1"})
    # the gains compared are those of rows 2-8 (the lapsed and at-risk rows get their offers whatever their
    # gain); their 0.6 quantile is 0.036, so 0.7, 0.05 and 0.04 are asked; row 9 has no question
    got = suggest_actions(c, question_gain_quantile=0.6)
    assert got["action"].tolist() == ["win-back campaign", "re-engagement nudge"] + ["ask next best question"] * 3 + (
        ["recommend"] * 5)
    assert got.loc[2, "reason"] == "profile incomplete: ask income (expected gain 0.70 nats)"
    # the default top 20 % of those 7: the 0.8 quantile is 0.048, so 0.7 and 0.05
    assert suggest_actions(c)["action"].tolist()[2:5] == ["ask next best question"] * 2 + ["recommend"]
    with pytest.raises(SchemaError, match="column 'next_best_question_gain': column not found; the next best "
                                          "question is asked by its expected gain"):
        suggest_actions(c.drop(columns="next_best_question_gain"))
    with pytest.raises(SchemaError, match="column 'next_best_question_gain'"):
        suggest_actions(c.assign(next_best_question_gain="a lot"))
    with pytest.raises(ValueError, match=r"question_gain_quantile must be in \[0, 1\], not 80"):
        suggest_actions(c, question_gain_quantile=80)
    # without a question column nobody is asked (a frame of stage, churn and CLV alone)
    assert "ask next best question" not in set(suggest_actions(c.drop(columns=["next_best_question",
                                                                             "next_best_question_gain"]))["action"])
