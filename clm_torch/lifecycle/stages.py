"""Lifecycle stages from the customer-view features (and optionally a churn probability)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from clm_torch.data.schema import SchemaError, to_numeric_strict

log = logging.getLogger(__name__)

STAGES = ("new", "active", "at_risk", "lapsed", "won_back")
STAGE_INPUTS = ("recency_days", "tenure_days", "frequency", "last_gap_days")  # the columns assign_stage reads


def assign_stage(
    features: pd.DataFrame,
    churn_prob: Any = None,
    *,
    new_days: float = 60,
    active_recency_days: float = 60,
    lapsed_recency_days: float = 180,
    at_risk_prob: float = 0.5,
    winback_gap_days: float = 180,
) -> pd.Series:
    """Assign one lifecycle stage to every customer.

    The rules are tried in this order; the first that matches wins (``np.select``):

    ===== ========== ===================================================================
    order stage      rule
    ===== ========== ===================================================================
    1     lapsed     no purchase before the cutoff (``frequency == 0`` or NaN recency),
                     or ``recency_days > lapsed_recency_days``
    2     new        ``tenure_days < new_days`` (first purchase is recent)
    3     won_back   ``last_gap_days > winback_gap_days`` and
                     ``recency_days <= active_recency_days``: the latest purchase ended a
                     long silence and is recent
    4     at_risk    ``recency_days > active_recency_days`` (between the active and lapsed
                     thresholds), or ``churn_prob >= at_risk_prob``
    5     active     everything else
    ===== ========== ===================================================================

    ``won_back`` uses ``last_gap_days`` (the gap that the latest purchase closed), not
    ``max_gap_days``: with the maximum, a customer who was silent once years ago and has bought
    regularly since would stay "won back" for ever. A won-back customer who buys again soon after
    moves to ``active``. A NaN ``churn_prob`` never makes a customer at risk; ``new`` and
    ``won_back`` customers are not moved to ``at_risk`` by the churn probability.

    Parameters
    ----------
    features
        ``CustomerView.features``: needs ``recency_days``, ``tenure_days``, ``frequency``,
        ``last_gap_days``; one row per customer.
    churn_prob
        Optional ``(n,)`` churn probabilities: a Series (or one-column DataFrame) aligned on
        ``features.index``, or an array in the row order of ``features``.
    new_days, active_recency_days, lapsed_recency_days, winback_gap_days
        Thresholds in days.
    at_risk_prob
        Churn probability at or above which an otherwise active customer is at risk.

    Returns
    -------
    pd.Series
        Categorical with categories :data:`STAGES`, index of ``features``, name ``stage``.
    """
    missing = [c for c in STAGE_INPUTS if c not in features.columns]
    if missing:
        raise SchemaError(
            f"column not found; assign_stage needs {list(STAGE_INPUTS)} (CustomerView.features)",
            source="<features>",
            column=missing[0],
        )
    days = {"new_days": new_days, "active_recency_days": active_recency_days,
            "lapsed_recency_days": lapsed_recency_days, "winback_gap_days": winback_gap_days}
    for name, v in days.items():
        if not (isinstance(v, (int, float, np.number)) and np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a number of days >= 0, not {v!r}")
    if not (isinstance(at_risk_prob, (int, float, np.number)) and 0.0 <= at_risk_prob <= 1.0):
        raise ValueError(f"at_risk_prob must be a probability in [0, 1], not {at_risk_prob!r}")
    if not active_recency_days <= lapsed_recency_days:
        raise ValueError("active_recency_days must be <= lapsed_recency_days")
    if features.index.has_duplicates:
        dup = features.index[features.index.duplicated()][0]
        raise SchemaError(f"duplicated customer {dup!r} in the index: one row per customer", source="<features>")
    recency, tenure, freq, last_gap = (
        to_numeric_strict(features[c], source="<features>", column=c).to_numpy() for c in STAGE_INPUTS)
    prob = _churn_prob(churn_prob, features.index)

    no_history = (freq == 0) | np.isnan(recency)
    with np.errstate(invalid="ignore"):
        conditions = [
            no_history | (recency > lapsed_recency_days),
            tenure < new_days,
            (last_gap > winback_gap_days) & (recency <= active_recency_days),
            (recency > active_recency_days) | (prob >= at_risk_prob),
        ]
    stage = np.select(conditions, ["lapsed", "new", "won_back", "at_risk"], default="active")
    out = pd.Series(pd.Categorical(stage, categories=list(STAGES)), index=features.index, name="stage")
    log.info("stages: %s", out.value_counts().to_dict())
    return out


def _churn_prob(churn_prob: Any, index: pd.Index) -> np.ndarray:
    """``churn_prob`` as float64 in the order of ``index`` (NaN: unknown). A Series is matched by its
    index, which must hold every customer once; anything else is taken in row order."""
    n = len(index)
    if churn_prob is None:
        return np.full(n, np.nan)
    if isinstance(churn_prob, pd.DataFrame):  # one column: matched by its index like a Series
        if churn_prob.shape[1] != 1:
            raise ValueError(f"churn_prob is a DataFrame with {churn_prob.shape[1]} columns "
                             f"({list(churn_prob.columns)[:5]}); pass the one column of churn probabilities")
        churn_prob = churn_prob.iloc[:, 0]
    if isinstance(churn_prob, pd.Series):
        if churn_prob.index.has_duplicates:
            raise ValueError("churn_prob (a Series) is matched to the customers by its index, which has duplicates")
        absent = ~index.isin(churn_prob.index)
        if absent.any():
            raise ValueError(f"churn_prob (a Series) is matched to the customers by its index, but {int(absent.sum())} "
                             f"of {n} customers are not in it (first: {index[absent][0]!r}); pass "
                             "churn_prob.to_numpy() to take the values in row order")
        churn_prob = churn_prob.reindex(index)
    try:
        prob = np.asarray(churn_prob, dtype="float64").ravel()
    except (TypeError, ValueError) as e:
        raise ValueError(f"churn_prob must be numbers: {e}") from None
    if len(prob) != n:
        raise ValueError(f"churn_prob has {len(prob)} values for {n} customers")
    bad = ~np.isnan(prob) & ~((prob >= 0) & (prob <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"churn_prob must be probabilities in [0, 1] (NaN = unknown): customer {index[i]!r} has "
                         f"{prob[i]} ({int(bad.sum())} such values; a 0-100 scale must be divided by 100)")
    return prob
