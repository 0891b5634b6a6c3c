"""The action table, the report's plots and ``summary.md``.

Suggested actions (first matching rule wins; ``high value`` = positive CLV in the top ``1 - value_quantile``
share of customers; ``informative question`` = a next best question whose expected gain (``next_best_question_gain``,
nats) is positive and in the top ``1 - question_gain_quantile`` share of the gains of the customers with a question
whom none of the four rules above it in the table takes):

===========================================  =====================================================
rule                                          action — reason
===========================================  =====================================================
lapsed, never bought (NaN ``recency_days``)   first-purchase offer — "no purchase yet"
stage lapsed                                  win-back campaign — "lapsed: no purchase for N days"
high value and (at_risk or p_churn ≥ τ)       retention offer — "high value, at risk: no purchase for N days, churn p=…"
stage at_risk                                 re-engagement nudge — "at risk: no purchase for N days, churn p=…"
informative question                          ask next best question — "profile incomplete: ask <q> (expected gain G nats)"
stage new                                     onboarding — "new customer"
stage won_back                                welcome-back offer — "won back after a long gap"
high value                                    cross-sell top recommendation — "high value, loyal"
otherwise                                     recommend — "active"
===========================================  =====================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clm_torch.data.schema import SchemaError, to_numeric_strict
from clm_torch.lifecycle.stages import STAGES

log = logging.getLogger(__name__)


def _top_share(x: np.ndarray, quantile: float) -> np.ndarray:
    """``x`` in the top ``1 - quantile`` share of its finite values and positive. When ties at the quantile would
    put more than that share in the group (e.g. most customers at CLV 0), the tied values are left out."""
    ok = np.isfinite(x)
    if not ok.any() or quantile >= 1.0:  # the top 0 % is nobody
        return np.zeros(len(x), bool)
    thr = np.quantile(x[ok], quantile)
    with np.errstate(invalid="ignore"):
        top = x >= thr
        if top[ok].mean() > (1.0 - quantile) + 1.0 / ok.sum():  # ties at the threshold
            top = x > thr
        return top & (x > 0)


def _high_value(clv: np.ndarray, value_quantile: float) -> np.ndarray:
    """CLV in the top ``1 - value_quantile`` share of all customers (NaN left out) and positive; customers tied at
    the quantile are left out when they would make the group larger than that share."""
    return _top_share(clv, value_quantile)


def _fmt_prob(p: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(p), "n/a", np.char.mod("%.2f", np.nan_to_num(p)))


TOP_ITEMS_SEP = " | "  # joins the recommended item ids of a customers.csv cell (ids may hold spaces)


def suggest_actions(customers: pd.DataFrame, *, churn_threshold: float = 0.5, value_quantile: float = 0.8,
                    question_gain_quantile: float = 0.8) -> pd.DataFrame:
    """Columns ``action`` and ``reason`` for a frame with ``stage``, ``churn_probability``, ``clv``,
    and optionally ``next_best_question`` with ``next_best_question_gain`` (the question's expected
    information gain, nats: ``InfoGapVAE.next_best_question(...)["gain_1"]``), ``recency_days``,
    ``top5_items`` (a list of item ids per customer, or the ids joined by :data:`TOP_ITEMS_SEP`; the
    first is offered).

    ``high value`` is a positive CLV at or above the ``value_quantile`` quantile of every
    customer's CLV (NaN left out): the top ``1 - value_quantile`` share of all customers, less those
    at CLV 0 or below; customers tied at the quantile are all left out when including them would
    exceed that share. A missing churn probability never makes a customer at risk. A question is
    worth asking when its gain is positive and at or above the ``question_gain_quantile`` quantile of
    the gains of the customers with a question whom no lapsed or at-risk rule takes (the same tie
    rule): what the answer would tell about the customer's profile, not the share of the record
    that is filled in (``completeness`` counts the event log's features, which no question can fill).

    Raises:
        SchemaError: a required column is missing, or ``next_best_question`` comes without
            ``next_best_question_gain``; a value cannot be read; an unknown stage.
        ValueError: a threshold or quantile outside [0, 1].
    """
    c = customers
    for name, v, lo, hi in (("churn_threshold", churn_threshold, 0, 1), ("value_quantile", value_quantile, 0, 1),
                            ("question_gain_quantile", question_gain_quantile, 0, 1)):
        if not (isinstance(v, (int, float, np.number)) and lo <= v <= hi):
            raise ValueError(f"{name} must be in [{lo}, {hi}], not {v!r}")
    missing = [k for k in ("stage", "churn_probability", "clv") if k not in c.columns]
    if missing:
        raise SchemaError(f"column not found; suggest_actions needs stage, churn_probability and clv "
                          f"(columns are {list(c.columns)})", source="<customers>", column=missing[0])
    if "next_best_question" in c.columns and "next_best_question_gain" not in c.columns:
        raise SchemaError("column not found; the next best question is asked by its expected gain: add it as "
                          "next_best_question_gain (InfoGapVAE.next_best_question(...)['gain_1'])",
                          source="<customers>", column="next_best_question_gain")
    num = {k: to_numeric_strict(c[k], source="<customers>", column=k).to_numpy()
           for k in ("churn_probability", "clv", "next_best_question_gain", "recency_days") if k in c.columns}
    p = num["churn_probability"]
    bad = ~np.isnan(p) & ((p < 0) | (p > 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SchemaError(f"churn probabilities must lie in [0, 1] (found {p[i]})", source="<customers>",
                          column="churn_probability", row=c.index[i])
    stage = c["stage"].astype(object).to_numpy()
    unknown = ~pd.Series(stage).isin(STAGES).to_numpy()
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise SchemaError(f"unknown stage {stage[i]!r}; stages are {list(STAGES)} (assign_stage)",
                          source="<customers>", column="stage", row=c.index[i])
    stage = stage.astype(str)
    high = _high_value(num["clv"], value_quantile)
    question = c["next_best_question"].astype(object).fillna("").to_numpy() if "next_best_question" in c \
        else np.full(len(c), "")
    gain = num.get("next_best_question_gain", np.full(len(c), np.nan))
    gain = np.where((question != "") & np.isfinite(gain), gain, np.nan)
    rec = num.get("recency_days", np.full(len(c), np.nan))
    rec = np.where(np.isfinite(rec), rec, np.nan)
    top = np.full(len(c), "", dtype=object)
    if "top5_items" in c:
        items = c["top5_items"].astype(object)
        text = pd.api.types.infer_dtype(items, skipna=True) == "string"  # joined ids, else lists of ids
        first = (items.str.split(TOP_ITEMS_SEP, n=1, regex=False).str[0].fillna("") if text else
                 items.map(lambda r: str(r[0]) if isinstance(r, (list, tuple, np.ndarray)) and len(r) else ""))
        top = first.astype(str).to_numpy(dtype=object)
    with np.errstate(invalid="ignore"):
        offers = [
            (stage == "lapsed") & np.isnan(rec) & ("recency_days" in c),
            stage == "lapsed",
            high & ((stage == "at_risk") | (p >= churn_threshold)),
            stage == "at_risk",
        ]
        # the gains compared are those of the customers the rule can reach: a lapsed or at-risk customer's
        # profile is looser (fewer recent purchases), so its questions gain more, but it gets its offer first
        reach = ~np.logical_or.reduce(offers)
        conds = [
            *offers,
            _top_share(np.where(reach, gain, np.nan), question_gain_quantile),
            stage == "new",
            stage == "won_back",
            high,
        ]
    actions = ["first-purchase offer", "win-back campaign", "retention offer", "re-engagement nudge",
               "ask next best question", "onboarding", "welcome-back offer", "cross-sell"]
    action = np.select(conds, actions, default="recommend")
    days = np.char.mod("%.0f", np.nan_to_num(np.floor(rec), nan=0))  # full days (float: no int64 overflow)
    silent = np.char.add(np.char.add("no purchase for ", days), " days")
    lapsed = np.where(np.isnan(rec), "lapsed", np.char.add("lapsed: ", silent))  # NaN: no recency column
    # at risk by the stage's recency rule or by the churn probability: the reason gives both facts
    at_risk = np.where(~np.isnan(rec),
                       np.char.add(np.char.add(np.char.add("at risk: ", silent), ", churn p="), _fmt_prob(p)),
                       np.char.add("at risk: churn p=", _fmt_prob(p)))
    reasons = np.select(conds, [
        np.full(len(c), "no purchase yet"),
        lapsed,
        np.char.add("high value, ", at_risk),  # at risk by recency or by p: both facts, as for at_risk
        at_risk,
        np.char.add(np.char.add(np.char.add("profile incomplete: ask ", question.astype(str)), " (expected gain "),
                    np.char.add(np.char.mod("%.2f", np.nan_to_num(gain)), " nats)")),
        np.full(len(c), "new customer"),
        np.full(len(c), "won back after a long gap"),
        np.char.add("high value, loyal: offer ", top.astype(str)),
    ], default=np.char.add("active: recommend ", top.astype(str)))
    return pd.DataFrame({"action": action, "reason": reasons}, index=c.index)


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG, 110 dpi), close it; ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_latent_map(latents: np.ndarray, segments: np.ndarray, path: Path) -> Path:
    """2-D PCA of the latent profiles coloured by segment."""
    latents = np.asarray(latents, dtype=float)
    if latents.ndim != 2 or len(latents) != len(segments):
        raise ValueError(f"latents must be (customers, dimensions) with one segment each: got latents "
                         f"{latents.shape} and {len(segments)} segments")
    plt = _plt()
    x = latents - latents.mean(0)
    if x.shape[1] == 1:  # a one-dimensional profile: PC 2 is 0
        x = np.c_[x, np.zeros(len(x))]
    _, _, vt = np.linalg.svd(x[: min(len(x), 20000)], full_matrices=False)
    xy = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=segments, s=4, cmap="tab10", alpha=0.6)
    ax.legend(*sc.legend_elements(), title="segment", loc="best", fontsize=8)
    ax.set(title="Customer profiles (InfoGapVAE latent mean, PCA)", xlabel="PC 1", ylabel="PC 2")
    return _save(fig, path)


def plot_churn(prob: np.ndarray, y: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Calibration curve and cumulative gain chart of churn predictions against outcomes."""
    prob, y = np.asarray(prob, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if len(prob) != len(y) or len(y) == 0:
        raise ValueError(f"prob and y must hold one value per customer: got {len(prob)} and {len(y)}")
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    edges = np.quantile(prob, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, bins - 1)
    mp = np.array([prob[idx == i].mean() if (idx == i).any() else np.nan for i in range(bins)])
    my = np.array([y[idx == i].mean() if (idx == i).any() else np.nan for i in range(bins)])
    a.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    a.plot(mp, my, "o-", label="model")
    a.set(title="Churn calibration", xlabel="predicted probability", ylabel="observed churn rate")
    a.legend()
    order = np.argsort(-prob)
    gain = np.cumsum(y[order]) / max(y.sum(), 1)
    share = np.arange(1, len(y) + 1) / len(y)
    b.plot(share, gain, label="model")
    b.plot([0, 1], [0, 1], "k--", lw=1, label="random")
    b.set(title="Cumulative gain", xlabel="share of customers contacted", ylabel="share of churners reached")
    b.legend()
    return _save(fig, path)


def _clv_boxes(customers: pd.DataFrame, segs: list) -> list[np.ndarray]:
    """The CLVs of each segment in ``segs``, NaN left out: matplotlib drew no box for a segment with one."""
    clv = pd.to_numeric(customers["clv"], errors="coerce")
    return [clv[(customers["segment"] == s).to_numpy() & clv.notna().to_numpy()].to_numpy() for s in segs]


def plot_clv_by_segment(customers: pd.DataFrame, path: Path) -> Path:
    plt = _plt()
    segs = sorted(customers["segment"].unique())
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot(_clv_boxes(customers, segs), showfliers=False)
    ax.set_xticks(range(1, len(segs) + 1), [str(s) for s in segs])
    ax.set(title="CLV by segment", xlabel="segment", ylabel="CLV")
    return _save(fig, path)


def plot_cohorts(cohorts: pd.DataFrame, path: Path, max_cohorts: int = 8) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = cohorts.iloc[-max_cohorts:] if len(cohorts) > max_cohorts else cohorts
    for name, row in rows.iterrows():
        ax.plot(row.index.astype(int), row.to_numpy(dtype=float), marker=".", label=str(name))
    ax.set(title="Cohort retention by acquisition month", xlabel="months since acquisition", ylabel="share active")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_top_gaps(gap: pd.DataFrame, path: Path, top: int = 12) -> Path:
    """Bar chart of the mean surprise per feature, over the customers where it is observed."""
    plt = _plt()
    cols = [c for c in gap.columns if c.startswith("surprise_")]
    mean = gap[cols].mean().rename(lambda c: c.removeprefix("surprise_")).sort_values(ascending=False)[:top]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.barh(mean.index[::-1], mean.to_numpy()[::-1])
    ax.set(title="Top information gaps: mean surprise of observed values (nats)", xlabel="mean surprise")
    return _save(fig, path)


def write_summary(path: Path, headline: Mapping[str, Any], sections: Mapping[str, str]) -> Path:
    """``summary.md``: a headline metrics table, then free-text sections."""
    lines = ["# clm_torch pipeline summary", "", "| metric | value |", "|---|---|"]
    for k, v in headline.items():
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    for title, body in sections.items():
        lines += ["", f"## {title}", "", body]
    path.write_text("\n".join(lines) + "\n")
    return path
