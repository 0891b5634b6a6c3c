"""Customer value: CLV formula, survival from churn probabilities, retention/churn rates, cohorts,
a run-rate CLV baseline and value-ranking metrics.

Everything here is plain numpy/pandas and vectorised over customers.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from clm_torch.data.schema import SchemaError
from clm_torch.utils.io import is_number

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- CLV


def clv_formula(
    margins: ArrayLike, survival: ArrayLike | None = None, discount_rate: float = 0.1
) -> float | np.ndarray:
    """Discounted customer lifetime value.

    ``CLV = sum_{t=1..T} m_t * S(t) / (1 + d)^t``: the margin of period ``t`` is earned at the end
    of the period, if the customer is still there (probability ``S(t)``).

    Parameters
    ----------
    margins
        ``(T,)`` margins of periods 1..T, or ``(n, T)`` per customer.
    survival
        Probability of still being a customer in period ``t``: ``(T,)`` or ``(n, T)``
        (broadcast against ``margins``); None means no churn (``S = 1``).
    discount_rate
        Per-period discount rate ``d`` (> -1), e.g. 0.1 for 10 % a year with yearly periods.

    Returns
    -------
    float or np.ndarray
        A float when both inputs are 1-D, else ``(n,)``.

    Examples
    --------
    >>> round(clv_formula([20, 25, 30, 35, 40], discount_rate=0.1), 2)
    110.12
    """
    m = np.asarray(margins, dtype="float64")
    if m.ndim not in (1, 2) or m.shape[-1] == 0:
        raise ValueError(f"margins must have shape (T,) or (n, T) with T >= 1, got {m.shape}")
    if not (np.isfinite(_number("discount_rate", discount_rate)) and discount_rate > -1):
        raise ValueError(f"discount_rate must be a number > -1, got {discount_rate}")
    _check_finite(m, "margins")
    s = np.ones_like(m) if survival is None else np.asarray(survival, dtype="float64")
    if s.ndim not in (1, 2) or s.shape[-1] != m.shape[-1] or (
            s.ndim == 2 and m.ndim == 2 and s.shape[0] != m.shape[0]):
        raise ValueError(f"survival shape {s.shape} does not match margins shape {m.shape} (one row per customer "
                         "in both, or a shared (T,) curve)")
    _check_finite(s, "survival")
    if np.any((s < 0) | (s > 1)):
        raise ValueError("survival probabilities must lie in [0, 1]")
    t = np.arange(1, m.shape[-1] + 1, dtype="float64")
    value = (m * s / (1.0 + discount_rate) ** t).sum(axis=-1)
    return float(value) if np.ndim(value) == 0 else value


def clv_learned(spend_horizon: ArrayLike, *, margin: float, horizon_days: float, period_days: float, periods: int,
                discount_rate: float) -> np.ndarray:
    """CLV from a model's expected spend over the next ``horizon_days`` (the spend model's
    prediction): that spend as a rate per period, held for ``periods`` periods and discounted like
    :func:`clv_formula`, whose survival is left out because the predicted spend already counts the
    customers who leave. ``CLV = margin * spend * period_days / horizon_days * sum_t 1 / (1 + d)^t``.

    Examples
    --------
    >>> float(clv_learned([90.0], margin=0.5, horizon_days=90, period_days=30, periods=2, discount_rate=0.0)[0])
    30.0
    """
    for name, v in (("horizon_days", horizon_days), ("period_days", period_days)):
        if not (np.isfinite(_number(name, v)) and v > 0):
            raise ValueError(f"{name} must be a number of days > 0, got {v}")
    periods = _whole("periods", periods)
    if not np.isfinite(_number("margin", margin)):
        raise ValueError(f"margin must be a finite number, got {margin}")
    _number("discount_rate", discount_rate)  # float("0.1") below would read text
    try:
        spend = np.atleast_1d(np.asarray(spend_horizon, dtype="float64"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"spend_horizon must be numbers: {e}") from None
    if spend.ndim != 1:
        raise ValueError(f"spend_horizon must be one value per customer (1-D), got shape {spend.shape}")
    _check_finite(spend, "spend_horizon")
    per_period = float(margin) * spend * (float(period_days) / float(horizon_days))
    return np.asarray(clv_formula(per_period[:, None] * np.ones((1, int(periods))), None, float(discount_rate)))


def _number(name: str, v: Any) -> float:
    """``v`` as a float, or a ValueError naming the argument (text, None or an array is not a number;
    NaN passes here, for the caller's range check to name)."""
    if not (is_number(v) or (isinstance(v, (float, np.floating)) and np.isnan(v))):
        raise ValueError(f"{name} must be a number, got {v!r}")
    return float(v)


def _whole(name: str, v: Any, lo: int = 1) -> int:
    """``v`` as an int when it is a whole number >= ``lo`` (2.0 too), else a ValueError naming the argument."""
    if not (is_number(v) and float(v).is_integer() and v >= lo):
        raise ValueError(f"{name} must be a whole number >= {lo}, got {v!r}")
    return int(v)


def _check_finite(x: np.ndarray, what: str) -> None:
    """A ValueError naming the first missing or infinite value of ``x`` (CLV inputs are never NaN:
    a NaN would silently become a NaN value for the customer)."""
    bad = ~np.isfinite(x)
    if bad.any():
        x, bad = np.atleast_1d(x), np.atleast_1d(bad)
        where = tuple(int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"{what} has {int(bad.sum())} missing or infinite values (first at index "
                         f"{where[0] if len(where) == 1 else where}: {x[where]}); fill or drop those customers")


def survival_from_churn_prob(p_churn: ArrayLike, n_periods: int) -> np.ndarray:
    """Survival curve ``S(t) = (1 - p)^t`` for ``t = 1..n_periods``.

    Geometric assumption: the churn probability ``p`` is the same in every period and periods
    are independent (a memoryless customer), so surviving ``t`` periods has probability
    ``(1 - p)^t``. Real survival curves usually flatten (loyal customers churn less), so this
    is pessimistic for the long tail.

    Parameters
    ----------
    p_churn
        Per-period churn probability in [0, 1]: a scalar or ``(n,)``; convert a probability over
        another horizon with :func:`per_period_churn_prob` first.
    n_periods
        ``T``.

    Returns
    -------
    np.ndarray
        ``(n_periods,)`` for a scalar ``p_churn``, else ``(n, n_periods)``.
    """
    p = np.asarray(p_churn, dtype="float64")
    _check_finite(p, "p_churn")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("churn probabilities must lie in [0, 1]")
    n_periods = _whole("n_periods", n_periods)
    t = np.arange(1, n_periods + 1, dtype="float64")
    return (1.0 - p[..., None]) ** t


def per_period_churn_prob(p_horizon: ArrayLike, periods_in_horizon: float) -> np.ndarray | float:
    """Convert a churn probability over a horizon into a per-period one (geometric assumption).

    A horizon of ``k`` periods is survived with probability ``(1 - p_period)^k = 1 - p_horizon``,
    so ``p_period = 1 - (1 - p_horizon)^(1/k)``. ``k`` may be fractional: a 90-day churn
    probability turned into a yearly one uses ``k = 90 / 365``.

    Parameters
    ----------
    p_horizon
        Churn probability over the horizon, scalar or array, in [0, 1].
    periods_in_horizon
        ``k`` = horizon length / period length (> 0).
    """
    p = np.asarray(p_horizon, dtype="float64")
    _check_finite(p, "p_horizon")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("churn probabilities must lie in [0, 1]")
    if not (np.isfinite(_number("periods_in_horizon", periods_in_horizon)) and periods_in_horizon > 0):
        raise ValueError(f"periods_in_horizon must be > 0, got {periods_in_horizon}")
    out = 1.0 - (1.0 - p) ** (1.0 / periods_in_horizon)
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------- rates


def retention_rate(
    customers_start: ArrayLike, customers_end: ArrayLike, new_customers: ArrayLike
) -> float | np.ndarray:
    """Retention rate ``(end - new) / start``; NaN where ``start`` is 0 (and nobody was retained).

    Parameters
    ----------
    customers_start
        Customers at the start of the period.
    customers_end
        Customers at the end of the period.
    new_customers
        Customers gained during the period (counted in ``customers_end``).
    """
    s, e, n = (np.asarray(x, dtype="float64") for x in (customers_start, customers_end, new_customers))
    for x, what in ((s, "customers_start"), (e, "customers_end"), (n, "new_customers")):
        _check_finite(x, what)
    if np.any(s < 0) or np.any(e < 0) or np.any(n < 0):
        raise ValueError("customer counts must be >= 0")
    if np.any(n > e):
        raise ValueError("new_customers cannot exceed customers_end")
    sb, eb, nb = (x.ravel() for x in np.broadcast_arrays(s, e, n))
    over = np.flatnonzero((eb - nb) > sb)
    if len(over):
        i = over[0]
        raise ValueError(f"customers_end - new_customers ({eb[i]:g} - {nb[i]:g}) exceeds customers_start ({sb[i]:g}): "
                         "more customers retained than there were; new_customers must count every customer gained")
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(s > 0, (e - n) / np.where(s > 0, s, 1.0), np.nan)
    return float(r) if r.ndim == 0 else r


def churn_rate(customers_start: ArrayLike, customers_end: ArrayLike, new_customers: ArrayLike) -> float | np.ndarray:
    """Churn rate ``1 - retention_rate(start, end, new)``."""
    return 1.0 - retention_rate(customers_start, customers_end, new_customers)


def _purchases(events: pd.DataFrame, what: str) -> pd.DataFrame:
    for col in ("customer_id", "timestamp"):
        if col not in events.columns:
            raise SchemaError("column not found; pass the frame returned by load_events", source=what, column=col)
    t = events["timestamp"]
    if not pd.api.types.is_datetime64_any_dtype(t):
        raise SchemaError(f"expected datetimes but found {t.dtype} values; read the log with load_events (which "
                          "parses text and epoch seconds)", source=what, column="timestamp")
    if t.dt.tz is not None:  # one UTC clock, as load_events and build_customer_view use
        events = events.assign(timestamp=t.dt.tz_convert("UTC").dt.tz_localize(None))
    for col, what_ in (("customer_id", "customer id"), ("timestamp", "timestamp")):
        miss = events[col].isna().to_numpy()
        if miss.any():  # a NaN id would be one more customer, a NaT a cohort of its own
            raise SchemaError(f"missing {what_} ({int(miss.sum())} rows); drop those events or read the log with "
                              "load_events", source=what, column=col, row=events.index[miss][0])
    if "amount" in events.columns:
        amount = events["amount"]
        if not pd.api.types.is_numeric_dtype(amount) or pd.api.types.is_bool_dtype(amount):
            raise SchemaError(f"expected money amounts (numbers) but found {amount.dtype} values; read the log with "
                              "load_events (which parses text amounts)", source=what, column="amount")
        if amount.isna().any():
            raise SchemaError(f"missing amount ({int(amount.isna().sum())} rows): a purchase or a refund? Fill or "
                              "drop those events", source=what, column="amount",
                              row=events.index[amount.isna().to_numpy()][0])
        return events.loc[amount >= 0, ["customer_id", "timestamp"]]
    return events[["customer_id", "timestamp"]]


def rates_from_events(
    events: pd.DataFrame, period_start: Any, period_end: Any, *, lookback_days: float | None = None
) -> pd.Series:
    """Retention and churn over ``[period_start, period_end)`` from an event log.

    A customer is *active at time t* when they purchased in ``[t - L, t)``, with ``L`` =
    ``lookback_days`` (default: the period length). So the customers at the start are those
    with a purchase in ``[start - L, start)``, the customers at the end those with a purchase in
    ``[end - L, end)``, and the new ones those active at the end but not at the start (first-time
    buyers and reactivated ones; ``n_reactivated`` counts the latter). Then
    ``retention = (end - new) / start`` = share of the starting customers still active at the end.
    Refunds (negative amounts) are not purchases.

    Parameters
    ----------
    events
        Canonical event frame (``customer_id``, ``timestamp``, optional ``amount``).
    period_start, period_end
        Anything ``pd.Timestamp`` accepts, ``period_start < period_end``.
    lookback_days
        ``L``; default ``period_end - period_start``.

    Returns
    -------
    pd.Series
        float64 values ``n_start, n_end, n_new, n_reactivated, retention_rate, churn_rate``.
    """
    from clm_torch.data.events import parse_cutoff

    start = parse_cutoff(period_start, setting="period_start", source="rates_from_events")
    end = parse_cutoff(period_end, setting="period_end", source="rates_from_events")
    if not start < end:
        raise ValueError(f"period_start {start} must be before period_end {end}")
    if lookback_days is not None and not (np.isfinite(_number("lookback_days", lookback_days)) and lookback_days > 0):
        raise ValueError(f"lookback_days must be a number of days > 0, got {lookback_days}")
    lookback = (end - start) if lookback_days is None else pd.Timedelta(days=lookback_days)
    ev = _purchases(events, "<events>")
    t, cid = ev["timestamp"], ev["customer_id"]
    active_start = pd.unique(cid[(t >= start - lookback) & (t < start)].to_numpy())
    active_end = pd.unique(cid[(t >= end - lookback) & (t < end)].to_numpy())
    new = pd.Index(active_end).difference(pd.Index(active_start))
    seen_before = pd.Index(pd.unique(cid[t < start - lookback].to_numpy()))
    n_start, n_end, n_new = len(active_start), len(active_end), len(new)
    ret = retention_rate(n_start, n_end, n_new)
    return pd.Series(
        {
            "n_start": n_start,
            "n_end": n_end,
            "n_new": n_new,
            "n_reactivated": int(new.isin(seen_before).sum()),
            "retention_rate": ret,
            "churn_rate": 1.0 - ret,
        }
    )


def cohort_retention(events: pd.DataFrame, freq: str = "M", *, end: Any = None) -> pd.DataFrame:
    """Share of each acquisition cohort active in each period since acquisition.

    Parameters
    ----------
    events
        Canonical event frame; refunds (negative amounts) are not purchases.
    freq
        A pandas period frequency (``"M"`` month, ``"W"`` week, ``"Q"``, ``"Y"``).
    end
        The end of observation (exclusive), e.g. the cutoff the log was extracted at: a period is
        observed only if it ends by then. Default: the day after the last purchase, so the
        period holding the last purchase counts only if it ends that day (a log cut mid-month
        would otherwise show a false drop in its last month).

    Returns
    -------
    pd.DataFrame
        Index ``cohort`` (PeriodIndex of the first-purchase period), columns ``period``
        0, 1, 2, ... (periods since acquisition), values = customers of the cohort with a purchase
        in that period / cohort size. Column 0 is 1.0 by construction. Cells of periods not
        fully observed by ``end`` are NaN (not observed), not 0. The cohort sizes are in
        ``df.attrs["size"]``.
    """
    from clm_torch.data.events import parse_cutoff

    ev = _purchases(events, "<events>")
    if len(ev) == 0:
        raise SchemaError("no purchases in the event log", source="<events>")
    t_max = ev["timestamp"].max()
    end = t_max.normalize() + pd.Timedelta(days=1) if end is None else parse_cutoff(end, setting="end",
                                                                                      source="cohort_retention")
    if not end > t_max:
        raise ValueError(f"end {end} must be after the last purchase ({t_max})")
    try:
        per = ev["timestamp"].dt.to_period(freq)
    except (TypeError, ValueError, AttributeError):
        per = None
    if per is None or per.dt.freq.n != 1:  # "2M" would be binned by month but numbered as if by two
        raise ValueError(f"freq={freq!r}: expected a single pandas period, such as 'D', 'W', 'M', 'Q' or 'Y' "
                         "(multiples such as '2M' are not supported)")
    ordinal = per.array.asi8  # period ordinals, int64
    codes, _ = pd.factorize(ev["customer_id"])
    first = pd.Series(ordinal).groupby(codes).min().to_numpy()  # (n_customers,) cohort ordinal
    k = ordinal - first[codes]
    active = pd.DataFrame({"c": codes, "k": k}).drop_duplicates()
    cohort_of = first[active["c"].to_numpy()]
    counts = pd.crosstab(cohort_of, active["k"].to_numpy())
    last_instant = pd.Period(end - pd.Timedelta(1, "ns"), freq=per.dt.freq)
    last_complete = last_instant.ordinal - (0 if last_instant.end_time <= end - pd.Timedelta(1, "ns") else 1)
    n_cols = max(int(k.max()), int(last_complete - counts.index.min())) + 1
    counts = counts.reindex(columns=np.arange(n_cols), fill_value=0)
    size = pd.Series(first).value_counts().reindex(counts.index)
    share = counts.div(size, axis=0).astype("float64")
    cal = np.add.outer(counts.index.to_numpy(), counts.columns.to_numpy())  # calendar ordinal of each cell
    share = share.where((cal <= last_complete) | (counts.columns.to_numpy()[None] == 0))
    share.index = pd.PeriodIndex.from_ordinals(counts.index.to_numpy(), freq=per.dt.freq).rename("cohort")
    share.columns = pd.Index(counts.columns.to_numpy(), name="period")
    share.attrs["size"] = dict(zip(share.index.astype(str), size.to_numpy().tolist()))
    return share


# ----------------------------------------------------------------------------- baselines and metrics


def run_rate_clv(features: pd.DataFrame, horizon_days: float, *, min_tenure_days: float = 7.0) -> pd.Series:
    """Naive CLV baseline: past spend per week times the number of weeks in the horizon.

    ``pred = max(monetary_total, 0) / (max(tenure_days, min_tenure_days) / 7) * horizon_days / 7``.
    The tenure floor keeps a customer who bought once yesterday from being extrapolated at
    100 % per day. Customers with no history (NaN tenure) get 0.

    Parameters
    ----------
    features
        ``CustomerView.features`` (needs ``monetary_total`` and ``tenure_days``).
    horizon_days
        Length of the prediction window.

    Returns
    -------
    pd.Series
        ``(n,)`` predicted spend in the horizon, index of ``features``, name ``run_rate_clv``.
    """
    for col in ("monetary_total", "tenure_days"):
        if col not in features.columns:
            raise SchemaError("column not found; pass CustomerView.features", source="<features>", column=col)
    if not (np.isfinite(_number("horizon_days", horizon_days)) and horizon_days >= 0):
        raise ValueError(f"horizon_days must be a number of days >= 0, got {horizon_days}")
    if not (np.isfinite(_number("min_tenure_days", min_tenure_days)) and min_tenure_days > 0):
        raise ValueError(f"min_tenure_days must be a number of days > 0 (the floor of the tenure), got {min_tenure_days}")
    from clm_torch.data.schema import to_numeric_strict

    total, tenure = (to_numeric_strict(features[c], source="<features>", column=c).astype("float64")  # inf: refused
                     for c in ("monetary_total", "tenure_days"))
    weeks = tenure.clip(lower=min_tenure_days) / 7.0
    pred = (total.fillna(0.0).clip(lower=0.0) / weeks * (horizon_days / 7.0)).where(tenure.notna(), 0.0)
    return pred.rename("run_rate_clv")


def _same_index(a: Any, b: Any, name_a: str, name_b: str) -> None:
    """The values are paired by position: two pandas objects must list the same customers in the same
    order, or a shuffled one would be paired with the wrong customers in silence."""
    if isinstance(a, (pd.Series, pd.DataFrame)) and isinstance(b, (pd.Series, pd.DataFrame)) and not a.index.equals(
            b.index):
        raise ValueError(f"{name_a} and {name_b} are pandas objects with different indexes: values are paired by "
                         f"position, so align them first ({name_b}.reindex({name_a}.index)) or pass arrays")


def spend_capture(pred: ArrayLike, truth: ArrayLike, top: float = 0.2) -> float:
    """Share of the true total spend captured by the top ``top`` fraction ranked by ``pred``.

    The top group has ``ceil(top * n)`` customers; ties in ``pred`` keep the input order and NaN
    predictions rank last. A customer's net refunds (negative spend) count as 0, so the share stays
    in [0, 1] (dividing by a total net of refunds gave shares above 1). Returns NaN when the true
    total is not positive. The spend model's ``capture20`` metric is this function.

    Parameters
    ----------
    pred, truth
        ``(n,)`` predicted scores and true spend.
    top
        Fraction in (0, 1].
    """
    _same_index(pred, truth, "pred", "truth")
    p = np.asarray(pred, dtype="float64").ravel()
    y = np.asarray(truth, dtype="float64").ravel()
    if p.shape != y.shape:
        raise ValueError(f"pred and truth have different lengths: {p.shape} vs {y.shape}")
    if not 0 < top <= 1:
        raise ValueError(f"top must be in (0, 1], got {top}")
    y = np.clip(y, 0.0, None)  # NaN stays NaN (left out of the sums)
    total = np.nansum(y)
    if len(y) == 0 or total <= 0:
        return float("nan")
    k = int(np.ceil(top * len(y) - 1e-9))
    order = np.argsort(-np.nan_to_num(p, nan=-np.inf), kind="stable")
    return float(np.nansum(y[order[:k]]) / total)


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either input is constant.

    Pairs with a NaN in either input are dropped.
    """
    _same_index(a, b, "a", "b")
    x = pd.Series(np.asarray(a, dtype="float64").ravel())
    y = pd.Series(np.asarray(b, dtype="float64").ravel())
    if len(x) != len(y):
        raise ValueError(f"inputs have different lengths: {len(x)} vs {len(y)}")
    ok = x.notna() & y.notna()
    rx, ry = x[ok].rank().to_numpy(), y[ok].rank().to_numpy()
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
