"""Lifecycle stages from the customer-view features (and optionally a churn probability)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from clm_torch.data.schema import SchemaError

log = logging.getLogger(__name__)

STAGES = ("new", "active", "at_risk", "lapsed", "won_back")
_REQUIRED = ("recency_days", "tenure_days", "frequency", "last_gap_days")


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
        Optional ``(n,)`` churn probabilities: a Series aligned on ``features.index``, or an
        array in the row order of ``features``.
    new_days, active_recency_days, lapsed_recency_days, winback_gap_days
        Thresholds in days.
    at_risk_prob
        Churn probability at or above which an otherwise active customer is at risk.

    Returns
    -------
    pd.Series
        Categorical with categories :data:`STAGES`, index of ``features``, name ``stage``.
    """
    missing = [c for c in _REQUIRED if c not in features.columns]
    if missing:
        raise SchemaError(
            f"column not found; assign_stage needs {list(_REQUIRED)} (CustomerView.features)",
            source="<features>",
            column=missing[0],
        )
    if not active_recency_days <= lapsed_recency_days:
        raise ValueError("active_recency_days must be <= lapsed_recency_days")
    recency = features["recency_days"].to_numpy(dtype="float64")
    tenure = features["tenure_days"].to_numpy(dtype="float64")
    freq = features["frequency"].to_numpy(dtype="float64")
    last_gap = features["last_gap_days"].to_numpy(dtype="float64")
    if churn_prob is None:
        prob = np.full(len(features), np.nan)
    elif isinstance(churn_prob, pd.Series):
        prob = churn_prob.reindex(features.index).to_numpy(dtype="float64")
    else:
        prob = np.asarray(churn_prob, dtype="float64").ravel()
        if len(prob) != len(features):
            raise ValueError(f"churn_prob has {len(prob)} values for {len(features)} customers")

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
