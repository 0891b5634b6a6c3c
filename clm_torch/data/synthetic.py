"""A synthetic customer base with a known ground truth: latents, a messy table, an event log.

The generator is fully vectorised numpy (no Python loop per customer or per event; the only
loops run over segments, item categories, batches of candidates and blocks of events),
deterministic by ``seed``, and scales linearly: about 25 s of CPU time and 2.6 GB of extra
memory for 1M customers / 20M events (``experiments/results/synthetic_timing.md``).

Generative story
----------------
Time is measured in days relative to the snapshot ``cutoff`` (day 0). The event log covers
``[start, cutoff + horizon_days]``; customers may have been acquired up to four years before
``start`` (legacy customers), but the log only records their purchases from ``start`` on.

1. **Segments and latent needs.** Each customer belongs to one of ``n_segments`` segments
   (Dirichlet weights) and has a latent vector ``z`` (``latent_dim``) drawn from that segment's
   Gaussian (random rotation and scales). Segment means are spread out (best of several random
   draws, minimum distance fixed relative to the within-segment spread) and the mixture is
   standardised to zero mean and unit average variance, so that k-means on ``z`` recovers the
   segments well but not perfectly.
2. **Traits.** Six unit-variance projections of ``z`` on random directions drive the table:
   age, value (spend / premium-ness), loyalty, digital affinity, engagement and gender. Because
   the directions share ``latent_dim`` dimensions, the traits (and thus the columns) correlate.
3. **Customer attributes** (clean values): ``age`` (from the age trait), ``gender``, ``region``
   (segment-specific distribution over 6 regions), ``income`` (log-normal, value trait and age),
   ``plan`` (ordinal logit on value and income), ``contract`` (ordinal logit on loyalty and plan),
   ``channel`` (multinomial logit on digital affinity and age), ``monthly_fee`` (plan base fee ×
   contract discount × log-normal noise + add-ons), ``support_contacts`` (Poisson, more for
   unhappy customers), ``satisfaction`` (1–10, from a loyalty-driven latent and the support
   contacts), ``email_opt_in`` and stated interests ``interest_<category>`` for the first four
   item categories (a noisy threshold on the customer's true affinity for that category).
4. **Acquisition and churn.** Acquisition dates grow exponentially towards the cutoff. Churn is
   a Weibull hazard in time since acquisition (shape 0.9: risk falls with tenure) whose log-scale
   is linear in loyalty, engagement, contract, satisfaction, support contacts, the fee relative
   to the plan, the segment and an unobserved frailty. ``churned`` = churn in
   ``(cutoff, cutoff + horizon]``; ``churn_prob`` is the true conditional probability of that.
5. **Who is observed.** Candidates are drawn i.i.d. and kept up to the ``n_customers``-th one
   still active at the cutoff. Candidates who left before ``start`` are never seen. Those who
   left between ``start`` and the cutoff appear in the event log (and in ``truth``) but not in
   the customer snapshot.
6. **Catalogue.** ``n_items`` items in up to 8 categories; every category has a centroid in the
   latent space, every item a latent ``il = centroid + residual``, a log-normal popularity and a
   log-normal price around the category's median price.
7. **Event log.** Each customer buys as a Poisson process with a rate driven by engagement,
   value, segment and a gamma frailty, from ``max(acquisition, start)`` until churn or the end of
   the horizon (scaled so that the log holds about ``events_per_customer × n_customers`` events);
   during the 60 days before churn 60% of purchases are dropped (disengagement). With
   probability 0.3 a purchase repeats the item of another (random) purchase of the same customer;
   else its category is drawn from the customer's softmax over ``z · centroid`` and the item
   within the category from ``popularity × exp(1.5 z·residual + 0.5 value × centred log-price)``
   (exact inverse-CDF sampling over the category's items, in chunks). Quantity is ``1 + Poisson``
   (more units of cheap items); amount = quantity × price × log-normal(0, 0.05), in cents.
   Nothing is bought after churn.
8. **The information gap** (only in the observed table; ``truth`` keeps the clean values):
   contradictions (stated interests flipped against the true affinity, plans that contradict the
   fee, a few implausible values — all marked in ``contradictions``); MCAR missingness on every
   feature cell; MNAR missingness (unhappy customers skip ``satisfaction``, high earners and one
   segment skip ``income``, another segment skips ``age``), scaled by ``mnar_strength``;
   case/whitespace misspellings of categorical values; and stale duplicate rows (same id, an
   older version of the record placed *before* the current one).
9. **Behavioural columns** (opt-in, ``behaviour_columns=True``). The default table is thin: 16
   columns, most of them coarse (ordinal plans, 1–10 scores, thresholded interests) and noisy
   functions of the latent, so that even a supervised model reads only about half of the
   variance of ``z`` off it. A CRM usually also holds *measured* behaviour (app and web
   analytics, loyalty programme, campaign tracking). With ``behaviour_columns=True`` the table
   gets :data:`BEHAVIOUR_COLUMNS` plus ``views_<category>_30d`` for every item category: counts
   (Poisson), money (log-normal), a recency in days and a rate in [0, 1], each a log-linear
   (or logit-linear) function of the traits or of the category affinities ``z · centroid`` with
   customer-level noise of scale ``0.3 × behaviour_noise``, so that the observed table
   identifies ``z``. They are drawn from their own random stream, after everything else: every
   other column, row, label, event and contradiction is *identical* to the table without them
   (same seed). They carry MCAR missingness (``mcar_rate``, no MNAR), no contradictions, no
   misspellings; a stale duplicate row holds an independent draw (an older measurement).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from threadpoolctl import threadpool_limits

from clm_torch.utils.memory import small_pages
from clm_torch.utils.progress import steps

log = logging.getLogger(__name__)

CATEGORIES = ("electronics", "fashion", "home", "beauty", "sports", "books", "grocery", "toys")
_CAT_PRICE = np.array([150.0, 45.0, 60.0, 25.0, 50.0, 15.0, 8.0, 30.0])
GENDERS = ("Female", "Male", "Other")
REGIONS = ("North", "South", "East", "West", "Central", "Metro")
PLANS = ("Basic", "Standard", "Premium")
_PLAN_FEE = np.array([29.0, 55.0, 95.0])
CONTRACTS = ("Month-to-month", "One year", "Two year")
_CONTRACT_DISCOUNT = np.array([1.0, 0.92, 0.85])
CHANNELS = ("Web", "Store", "App", "Phone")
YES_NO = ("No", "Yes")
N_INTERESTS = 4
# opt-in behavioural columns (``behaviour_columns=True``); ``views_<category>_30d`` per category follow them
BEHAVIOUR_COLUMNS = ("app_sessions_30d", "web_visits_30d", "store_visits_90d", "orders_12m", "avg_basket_value",
                     "days_since_last_login", "loyalty_points", "newsletter_open_rate", "promo_redemptions_12m",
                     "reviews_written_12m")

NUMERIC_COLUMNS = ("age", "income", "tenure_months", "monthly_fee", "support_contacts", "satisfaction")
CATEGORICAL_COLUMNS = ("gender", "region", "plan", "contract", "channel")
_LEVELS = {"gender": GENDERS, "region": REGIONS, "plan": PLANS, "contract": CONTRACTS, "channel": CHANNELS}

_LEGACY_DAYS = 4 * 365  # acquisitions reach this far back before `start`
_WEIBULL_SHAPE = 0.9  # < 1: the churn hazard falls with tenure
_CHURN_BASE = 0.5  # log cumulative hazard at one year of tenure for an average customer (≈20% horizon churn)
_PRECHURN_DAYS = 60.0  # disengagement window before churn ...
_PRECHURN_KEEP = 0.4  # ... in which only this share of purchases happens
_P_REPEAT = 0.3  # share of purchases that repeat an item the customer bought
_SEGMENT_SEPARATION = 3.8  # min distance between segment means / mean within-segment scale
_CHUNK = 1 << 20  # events per chunk of the category draw (the item draw scales it by 32 / items)
_EVENT_BLOCK = 1 << 20  # raw events per block of customers (its temporaries stay in cache)
_CUSTOMER_BLOCK = 1 << 16  # customers per block of the per-customer category probabilities
_CANDIDATE_BATCH = 1 << 18  # candidates per batch of the i.i.d. stream (its arrays stay in cache)


@dataclasses.dataclass
class SyntheticBase:
    """A generated customer base: the observed data plus the ground truth behind it.

    Attributes:
        customers: the observed, messy snapshot at ``cutoff`` (one row per customer active at the
            cutoff plus stale duplicate rows placed before the current row). Columns:
            ``customer_id`` (str "C000123"), numeric ``age``, ``income``, ``tenure_months``,
            ``monthly_fee``, ``support_contacts``, ``satisfaction`` (float64, NaN = missing);
            categorical ``gender``, ``region``, ``plan``, ``contract``, ``channel`` (str, with
            spelling variants); binary ``interest_<category>`` (float 0/1) and ``email_opt_in``
            ("Yes"/"No"); with ``behaviour_columns=True`` also the numeric :data:`BEHAVIOUR_COLUMNS`
            and ``views_<category>_30d`` (float64, NaN = missing) before ``churn``; target ``churn``
            ("Yes"/"No", never missing).
        events: the event log sorted by time, ``(n_events, 5)``: ``customer_id`` (str),
            ``timestamp`` (datetime64[ns], in ``[start, cutoff + horizon]``), ``item_id`` (str),
            ``quantity`` (int64 ≥ 1), ``amount`` (float64, money).
        items: the catalogue ``(n_items, 3 + d)``: ``item_id``, ``category``, ``price``,
            ``il_0 .. il_{d-1}`` (item latents in the customers' latent space).
        truth: one row per customer id in ``customers`` ∪ ``events``, sorted by id:
            ``customer_id``, ``segment``, ``z_0 .. z_{d-1}``, ``acquisition_date``, ``churn_time``
            (NaT if later than cutoff + horizon), ``churned`` (churn in (cutoff, cutoff+horizon]),
            ``churn_prob`` (true probability of that given survival to the cutoff; 1 for those who
            left before), ``future_spend`` and ``future_n_tx`` (sum of amounts / number of events
            in (cutoff, cutoff+horizon]), ``purchase_rate`` (events per day), ``in_customers``,
            and ``clean_<col>`` for every feature column of ``customers``.
        contradictions: bool mask with the index of ``customers``: ``customer_id`` plus one column
            per feature column, True where the observed cell was planted as contradictory
            (flipped interest, plan against fee, implausible value). Stale duplicate rows are all
            False; a planted cell that was then blanked by missingness is False.
        cutoff: the snapshot date.
        horizon_days: the label horizon after ``cutoff``.
        target: target column of ``customers``.
        id_col: id column of every frame.
    """

    customers: pd.DataFrame
    events: pd.DataFrame
    items: pd.DataFrame
    truth: pd.DataFrame
    contradictions: pd.DataFrame
    cutoff: pd.Timestamp
    horizon_days: int
    target: str = "churn"
    id_col: str = "customer_id"

    @property
    def feature_columns(self) -> list[str]:
        """Feature columns of ``customers`` (all but id and target), in table order."""
        return [c for c in self.customers.columns if c not in (self.id_col, self.target)]

    @property
    def roles(self) -> dict[str, list[str]]:
        """The true role of every feature column: ``numeric``, ``categorical``, ``binary``."""
        feats = self.feature_columns
        numeric = [c for c in feats if c in NUMERIC_COLUMNS or _is_behaviour(c)]
        return {
            "numeric": numeric,
            "categorical": [c for c in feats if c in CATEGORICAL_COLUMNS],
            "binary": [c for c in feats if c not in numeric and c not in CATEGORICAL_COLUMNS],
        }

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write the frames to ``directory`` (created if needed).

        Returns:
            ``{"customers": customers.csv, "events": events.parquet, "items": items.csv,
            "truth": truth.parquet, "contradictions": contradictions.parquet}``.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = {
            "customers": d / "customers.csv",
            "events": d / "events.parquet",
            "items": d / "items.csv",
            "truth": d / "truth.parquet",
            "contradictions": d / "contradictions.parquet",
        }
        self.customers.to_csv(paths["customers"], index=False)
        self.events.to_parquet(paths["events"], index=False)
        self.items.to_csv(paths["items"], index=False)
        self.truth.to_parquet(paths["truth"], index=False)
        self.contradictions.to_parquet(paths["contradictions"], index=False)
        log.info("saved synthetic base (%d customers, %d events) to %s", len(self.customers), len(self.events), d)
        return paths


# ----------------------------------------------------------------------------- helpers


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _dot(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` for tall ``x`` (n, d) and small ``w`` (k, d); BLAS is far faster on this layout."""
    return (w @ x.T).T


def _inverse_cdf(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index of the first cumulative weight above ``u * total`` for each column of ``p`` (k, n).

    A running sum over the k rows, each a contiguous vector (``np.cumsum(axis=0)`` is ~10× slower).
    """
    thr = u * p.sum(axis=0)
    acc = np.zeros(p.shape[1], dtype=p.dtype)
    idx = np.zeros(p.shape[1], dtype=np.int32)
    for row in p[:-1]:
        acc += row
        idx += acc < thr
    return idx


def _softmax_sample(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One categorical draw per column of ``logits`` (k, n; float ``logits`` are overwritten) → codes (n,)."""
    p = np.subtract(logits, logits.max(axis=0), out=logits if logits.dtype.kind == "f" else None)
    np.exp(p, out=p)
    return _inverse_cdf(p, rng.random(p.shape[1])).astype(np.int64)


def _ordinal(score: np.ndarray, cuts: tuple[float, ...]) -> np.ndarray:
    return np.searchsorted(np.asarray(cuts), score).astype(np.int64)


# ----------------------------------------------------------------------------- model parameters


@dataclasses.dataclass
class _Model:
    """Population-level parameters: independent of ``n_customers``."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    chol: np.ndarray  # (K, d, d)
    directions: np.ndarray  # (6, d) unit trait directions, scaled to unit trait variance
    region_p: np.ndarray  # (K, 6)
    seg_churn: np.ndarray  # (K,)
    seg_rate: np.ndarray  # (K,)
    centroids: np.ndarray  # (C, d) category centroids
    cat_logw: np.ndarray  # (C,)
    aff_sd: np.ndarray  # (C,) sd of z·centroid in the population
    mnar_income_seg: int
    mnar_age_seg: int


def _population_model(rng: np.random.Generator, n_segments: int, d: int, n_categories: int) -> _Model:
    K = n_segments
    weights = rng.dirichlet(np.full(K, 6.0))
    scales = rng.uniform(0.55, 1.0, size=(K, d))
    chol = np.empty((K, d, d))
    for k in range(K):
        q, r = np.linalg.qr(rng.normal(size=(d, d)))
        q = q * np.sign(np.diag(r))
        chol[k] = q * scales[k]  # columns scaled: cov = q diag(s^2) q^T
    # spread-out means: best of 64 draws by minimum pairwise distance
    best, best_gap = None, -1.0
    for _ in range(64):
        m = rng.normal(size=(K, d))
        gap = np.inf if K == 1 else min(np.linalg.norm(m[i] - m[j]) for i in range(K) for j in range(i + 1, K))
        if gap > best_gap:
            best, best_gap = m, gap
    means = best * (_SEGMENT_SEPARATION * scales.mean() / best_gap if np.isfinite(best_gap) else 0.0)
    # standardise the mixture: zero mean, unit average variance
    mu = weights @ means
    means = means - mu
    cov = sum(weights[k] * (chol[k] @ chol[k].T + np.outer(means[k], means[k])) for k in range(K))
    s = np.sqrt(np.trace(cov) / d)
    means, chol, cov = means / s, chol / s, cov / s**2
    dirs = rng.normal(size=(6, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs /= np.sqrt(np.einsum("td,de,te->t", dirs, cov, dirs))[:, None]
    region_global = rng.dirichlet(np.full(len(REGIONS), 8.0))
    region_p = 0.5 * region_global + 0.5 * rng.dirichlet(np.full(len(REGIONS), 1.5), size=K)
    g = rng.normal(size=(n_categories, d))
    centroids = 1.3 * g / np.linalg.norm(g, axis=1, keepdims=True)
    aff_sd = np.sqrt(np.einsum("cd,de,ce->c", centroids, cov, centroids))
    order = rng.permutation(K)
    return _Model(
        weights=weights, means=means, chol=chol, directions=dirs, region_p=region_p,
        seg_churn=rng.normal(0.0, 0.3, size=K), seg_rate=rng.normal(0.0, 0.3, size=K),
        centroids=centroids, cat_logw=np.log(rng.dirichlet(np.full(n_categories, 5.0))), aff_sd=aff_sd,
        mnar_income_seg=int(order[0]), mnar_age_seg=int(order[1 % K]),
    )


def _catalogue(rng: np.random.Generator, model: _Model, n_items: int, d: int) -> dict[str, np.ndarray]:
    C = len(model.centroids)
    share = rng.dirichlet(np.full(C, 4.0))
    counts = rng.multinomial(n_items - C, share) + 1
    cat = np.repeat(np.arange(C), counts)
    resid = rng.normal(0.0, 0.8 / np.sqrt(d), size=(n_items, d))
    latent = model.centroids[cat] + resid
    logpop = rng.normal(0.0, 0.8, size=n_items)
    logprice = np.log(_CAT_PRICE[cat]) + rng.normal(0.0, 0.45, size=n_items)
    price = np.round(np.exp(logprice), 2).clip(0.5)
    lp_centred = logprice - np.bincount(cat, logprice, C)[cat] / counts[cat]
    return {"cat": cat, "counts": counts, "resid": resid, "latent": latent, "logpop": logpop, "price": price,
            "lp_centred": lp_centred}


# ----------------------------------------------------------------------------- customers


def _candidates(rng: np.random.Generator, model: _Model, M: int, d: int, t0: float) -> dict[str, np.ndarray]:
    """Draw M i.i.d. candidates: what decides whether a customer is ever seen (latents, churn drivers).

    Returns per-candidate arrays (M,) or (M, d); times are days relative to the cutoff.
    """
    K = len(model.weights)
    seg = rng.choice(K, size=M, p=model.weights)
    order = np.argsort(seg, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(seg, minlength=K))])
    eps = rng.normal(size=(M, d))  # i.i.d., so block k of eps may serve the customers of segment k
    z = np.empty((M, d))
    for k in range(K):
        z[order[bounds[k]:bounds[k + 1]]] = model.means[k] + _dot(eps[bounds[k]:bounds[k + 1]], model.chol[k])
    del eps, order
    t_age, t_val, t_loy, t_dig, t_eng = model.directions[:5] @ z.T
    def nz() -> np.ndarray:
        return rng.normal(size=M)


    age = np.clip(np.round(44.0 + 14.0 * (0.75 * t_age + 0.66 * nz())), 18, 90)
    agez = (age - 44.0) / 14.0
    log_inc = np.log(42_000.0) + 0.35 * t_val + 0.15 * agez - 0.08 * agez**2 + 0.35 * nz()
    income = np.round(np.exp(log_inc), -2)
    inc_z = (log_inc - np.log(42_000.0)) / 0.5
    plan = _ordinal(0.9 * t_val + 0.3 * inc_z + rng.logistic(size=M), (-0.45, 1.6))
    contract = _ordinal(0.8 * t_loy + 0.4 * (plan == 2) + 0.2 * agez + rng.logistic(size=M), (0.35, 1.75))
    channel = _softmax_sample(rng, np.stack([0.6 * t_dig, -0.6 * t_dig + 0.3 + 0.2 * agez,
                                             1.0 * t_dig - 0.4 * agez, -0.8 * t_dig + 0.4 * agez - 0.8]))
    fee_ratio = np.exp(rng.normal(0.0, 0.12, size=M))
    sat_lat = 0.75 * t_loy + 0.66 * nz()
    support = rng.poisson(np.exp(-0.05 - 0.45 * sat_lat + 0.15 * (channel == 3)))
    satisfaction = np.clip(np.round(5.8 + 1.8 * sat_lat - 0.25 * (support - 1.1) + 0.5 * nz()), 1, 10)

    # acquisition: exponential growth over [-(t0 + legacy), 0)
    g = 0.35 / 365.0
    a, b = -(t0 + _LEGACY_DAYS), 0.0
    acq = np.log(np.exp(g * a) + rng.random(M) * (np.exp(g * b) - np.exp(g * a))) / g
    # churn: Weibull hazard in time since acquisition
    contract_eff = np.array([0.8, -0.25, -1.0])[contract]
    eta = (_CHURN_BASE - 0.55 * t_loy - 0.25 * t_eng + contract_eff - 0.22 * (satisfaction - 5.8)
           + 0.12 * (support - 1.1) + 1.2 * (fee_ratio - 1.0) + 0.25 * (channel == 3)
           + model.seg_churn[seg] + 0.35 * nz())
    life = 365.0 * (rng.exponential(size=M) * np.exp(-eta)) ** (1.0 / _WEIBULL_SHAPE)
    churn = acq + np.minimum(life, 36_500.0)
    return {
        "segment": seg, "z": z, "age": age, "income": income, "plan": plan, "contract": contract,
        "channel": channel, "fee_ratio": fee_ratio, "support_contacts": support.astype(np.float64),
        "satisfaction": satisfaction, "acq": acq, "churn": churn, "eta": eta,
    }


def _attributes(rng: np.random.Generator, model: _Model, pop: dict[str, np.ndarray]) -> None:
    """Add the attributes that do not drive churn, for the kept customers only (in place)."""
    z, seg = pop["z"], pop["segment"]
    M, K = len(z), len(model.weights)
    _, t_val, t_loy, t_dig, t_eng, t_gen = model.directions @ z.T
    other = rng.random(M) < 0.02
    pop["gender"] = np.where(other, 2, np.where(rng.random(M) < _sigmoid(0.8 * t_gen), 0, 1))
    # region from the segment's distribution: one searchsorted in the stacked per-segment CDFs
    cdf = np.cumsum(model.region_p, axis=1)
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(K)[:, None]).ravel()
    n_reg = cdf.shape[1]
    pop["region"] = np.clip(np.searchsorted(flat, seg + rng.random(M), side="right") - seg * n_reg, 0, n_reg - 1)
    addons = rng.poisson(np.exp(-1.0 + 0.4 * t_val))
    pop["monthly_fee"] = np.round(
        _PLAN_FEE[pop["plan"]] * _CONTRACT_DISCOUNT[pop["contract"]] * pop["fee_ratio"] + 8.0 * addons, 2)
    pop["email_opt_in"] = (rng.random(M) < _sigmoid(-0.2 + 0.6 * t_dig + 0.3 * t_loy)).astype(np.int64)
    aff = _dot(z, model.centroids)  # (M, C)
    n_int = min(N_INTERESTS, aff.shape[1])
    aff_std = np.divide(aff[:, :n_int], model.aff_sd[:n_int], out=np.empty((M, n_int)))  # C order: rows are gathered
    q = 0.385 * np.sqrt(1.0 + 0.7**2)  # ≈35% "yes"
    pop["interests"] = (aff_std + 0.7 * rng.normal(size=(M, n_int)) > q).astype(np.float64)
    aff += model.cat_logw  # category logits (in place: aff_std above is a copy)
    pop["aff"] = aff
    pop["aff_std"] = aff_std
    pop["t_val"] = t_val
    pop["rate_mult"] = np.exp(0.5 * t_eng + 0.2 * t_val + model.seg_rate[seg]) * rng.gamma(2.0, 0.5, size=M)


def _time_order(sec: np.ndarray) -> np.ndarray:
    """Stable argsort of integer times, by sorting ``(time - min) << bits | position`` (much faster)."""
    n = len(sec)
    if n == 0:
        return np.arange(0)
    lo = sec.min()
    bits = max(1, int(n - 1).bit_length())
    if int(sec.max() - lo).bit_length() + bits > 62:
        return np.argsort(sec, kind="stable")
    key = np.subtract(sec, lo, dtype=np.int64)  # in place from here: no further log-sized temporaries
    key <<= bits
    key |= np.arange(n, dtype=np.int64)
    key.sort()
    key &= (1 << bits) - 1
    return key


def _id_strings(prefix: str, n: int, width: int, codes: np.ndarray | None = None) -> pd.Series:
    """Ids ``f"{prefix}{i + 1:0{width}d}"`` for ``codes`` (default: all ``i < n``), as a ``str`` Series.

    All ids have the same width, so the pyarrow string buffers are built directly from a fixed-width
    byte gather: about twice as fast as ``Series.take`` for the 20M ids of a large event log.
    """
    width = max(width, len(str(n)))
    size = len(prefix) + width
    table = np.char.add(prefix.encode(), np.char.zfill(np.arange(1, n + 1).astype(f"S{width}"), width))
    data = table if codes is None else table[codes]
    m = len(data)
    # 64-bit offsets: the large_string pandas stores, so it keeps the buffers instead of converting them
    offsets = np.arange(0, (m + 1) * size, size, dtype=np.int64)
    return _str_series(pa.LargeStringArray.from_buffers(m, pa.py_buffer(offsets),
                                                        pa.py_buffer(np.ascontiguousarray(data))))


def _str_series(arr: pa.LargeStringArray) -> pd.Series:
    """An Arrow large_string array as a pandas ``str`` Series, buffers kept (large_string is what pandas stores)."""
    return pd.Series(arr, dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def _sorted_items_and_quantity(item: np.ndarray, quantity: np.ndarray, order: np.ndarray,
                               n_items: int) -> tuple[pd.Series, np.ndarray]:
    """The event frame's ``item_id`` and ``quantity`` columns in time ``order`` (run on a worker thread)."""
    return _id_strings("I", n_items, 5, item[order]), quantity[order]


def _take(d: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``idx`` of every array (``np.take`` gathers the rows of 2-D arrays ~3× faster than ``v[idx]``)."""
    return {k: np.take(v, idx, axis=0) for k, v in d.items()}


def _level_strings(levels: Sequence[str], codes: np.ndarray, missing: np.ndarray | None = None) -> pd.Series:
    """``levels[codes]`` as a ``str`` Series, NaN where ``missing``: one Arrow take from the level table.

    Same Series as building the object array and letting pandas infer ``str``, without converting
    millions of Python strings.
    """
    return _str_series(pa.array(list(levels), pa.large_string()).take(pa.array(codes, mask=missing)))


# ----------------------------------------------------------------------------- events


def _sample_items(rng: np.random.Generator, cust: np.ndarray, cat_p: np.ndarray, zaug_t: np.ndarray,
                  raug: np.ndarray, item_order: np.ndarray, cat_counts: np.ndarray) -> np.ndarray:
    """Item index for each purchase of customer ``cust`` (n,): category, then item within category.

    Args:
        cat_p: (C, V) float32 category probabilities per customer.
        zaug_t: (d + 2, V) float32 customer side of the within-category logit.
        raug: (n_items, d + 2) float32 item side, rows sorted by category (``item_order``).
        cat_counts: (C,) items per category.

    Exact inverse-CDF sampling, in chunks of events laid out as (items, events) so that every
    pass runs over contiguous rows.
    """
    n, n_cat = len(cust), len(cat_counts)
    cat = np.empty(n, dtype=np.int8)
    for s in range(0, n, _CHUNK):
        c = cust[s:s + _CHUNK]
        cat[s:s + _CHUNK] = _inverse_cdf(np.take(cat_p, c, axis=1), rng.random(len(c), dtype=np.float32))
    item = np.empty(n, dtype=np.int32)
    order = np.argsort(cat, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(cat, minlength=n_cat))])
    item_start = np.concatenate([[0], np.cumsum(cat_counts)])
    for k in range(n_cat):
        ev = order[bounds[k]:bounds[k + 1]]
        rk = raug[item_start[k]:item_start[k + 1]]  # (m_k, d+2)
        chunk = max(1, _CHUNK * 32 // max(len(rk), 1))
        for s in range(0, len(ev), chunk):
            e = ev[s:s + chunk]
            w = rk @ np.take(zaug_t, cust[e], axis=1)  # (m_k, n_chunk) logits
            np.minimum(w, 60.0, out=w)
            np.exp(w, out=w)
            j = _inverse_cdf(w, rng.random(len(e), dtype=np.float32))
            item[e] = item_order[item_start[k] + j]
    return item


def _events(rng: np.random.Generator, pop: dict[str, np.ndarray], cat_items: dict[str, np.ndarray],
            t0: float, horizon: float, events_per_customer: float, n_customers: int) -> dict[str, np.ndarray]:
    """Purchases of the kept customers, grouped by customer; times are integer seconds from the cutoff.

    Returns ``cust`` (n,) int32, ``sec`` (n,) int64, ``item`` (n,) int32, ``quantity`` (n,) int64,
    ``amount`` (n,) float64, and the per-customer Poisson ``rate`` (V,) in events per day.
    """
    V = len(pop["acq"])
    ws = np.maximum(pop["acq"], -t0)
    we = np.minimum(pop["churn"], horizon)
    length = np.maximum(we - ws, 0.0)
    pre_lo = np.maximum(pop["churn"] - _PRECHURN_DAYS, ws)
    overlap = np.clip(np.minimum(pop["churn"], we) - pre_lo, 0.0, None) * (pop["churn"] <= horizon)
    exposure = pop["rate_mult"] * (length - (1.0 - _PRECHURN_KEEP) * overlap)
    base = events_per_customer * n_customers / max(exposure.sum(), 1e-12)
    rate = base * pop["rate_mult"]
    counts = rng.poisson(rate * length)

    # purchase model; category probabilities per block of customers, so no (V, C) float64 temporaries
    aff = pop["aff"]
    cat_p = np.empty((aff.shape[1], V), dtype=np.float32)  # (C, V)
    z = pop["z"]
    zaug_t = np.empty((z.shape[1] + 2, V), dtype=np.float32)  # (d + 2, V): 1.5 z, 0.5 t_val, 1
    for a in range(0, V, _CUSTOMER_BLOCK):
        b = min(a + _CUSTOMER_BLOCK, V)
        block = aff[a:b]
        p = np.exp(block - block.max(1, keepdims=True))
        cat_p[:, a:b] = (p / p.sum(1, keepdims=True)).T
        zaug_t[:-2, a:b] = (1.5 * z[a:b]).T
        zaug_t[-2, a:b] = 0.5 * pop["t_val"][a:b]
    zaug_t[-1] = 1.0
    model = {
        "cat_p": cat_p,
        "zaug_t": zaug_t,
        "item_order": np.argsort(cat_items["cat"], kind="stable"),
    }
    raug = np.concatenate([cat_items["resid"], cat_items["lp_centred"][:, None], cat_items["logpop"][:, None]], 1)
    model["raug"] = raug[model["item_order"]].astype(np.float32)
    del raug

    # blocks of whole customers with about _EVENT_BLOCK raw events each bound the temporaries
    cum = np.cumsum(counts)
    cuts = np.searchsorted(cum, np.arange(_EVENT_BLOCK, max(int(cum[-1]) if V else 0, 1), _EVENT_BLOCK))
    edges = np.unique(np.concatenate([[0], cuts, [V]]))
    total = int(counts.sum())  # an upper bound: thinning only removes events
    out = {"cust": np.empty(total, np.int32), "sec": np.empty(total, np.int64), "item": np.empty(total, np.int32),
           "quantity": np.empty(total, np.int64), "amount": np.empty(total, np.float64)}
    pos = 0
    for lo, hi in itertools.pairwise(edges):
        part = _event_block(rng, lo, hi, counts, ws, length, pop["churn"], model, cat_items)
        n = len(part["cust"])
        for key, arr in out.items():
            arr[pos:pos + n] = part.pop(key)
        pos += n
    out = {key: arr[:pos] for key, arr in out.items()}
    out["rate"] = rate
    return out


def _event_block(rng: np.random.Generator, lo: int, hi: int, counts: np.ndarray, ws: np.ndarray, length: np.ndarray,
                 churn: np.ndarray, model: dict[str, np.ndarray], cat_items: dict[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
    """Events of customers ``lo .. hi-1``: times, pre-churn thinning, items, quantities, amounts."""
    cust = np.repeat(np.arange(lo, hi, dtype=np.int32), counts[lo:hi])
    t = rng.random(len(cust))
    t *= length[cust]
    t += ws[cust]
    keep = (t < churn[cust] - _PRECHURN_DAYS) | (rng.random(len(cust)) < _PRECHURN_KEEP)
    cust, t = cust[keep], t[keep]
    t *= 86_400.0
    sec = np.floor(t, out=t).astype(np.int64)
    n = len(cust)
    # repeat purchases copy the item of a random fresh purchase of the same customer
    repeat = rng.random(n) < _P_REPEAT
    fresh0 = np.flatnonzero(~repeat)  # sorted by customer, like `cust`
    n_fresh = np.bincount(cust[fresh0] - lo, minlength=hi - lo)
    first = np.concatenate([[0], np.cumsum(n_fresh)[:-1]])
    rep = np.flatnonzero(repeat)
    has = n_fresh[cust[rep] - lo] > 0
    is_fresh = ~repeat
    is_fresh[rep[~has]] = True  # a repeat with nothing to repeat becomes a fresh purchase
    rep = rep[has]
    fresh = np.flatnonzero(is_fresh)
    item = np.empty(n, dtype=np.int32)
    item[fresh] = _sample_items(rng, cust[fresh], model["cat_p"], model["zaug_t"], model["raug"],
                                model["item_order"], cat_items["counts"])
    c_rep = cust[rep] - lo
    pick = first[c_rep] + (rng.random(len(rep)) * n_fresh[c_rep]).astype(np.int64)
    item[rep] = item[fresh0[pick]]
    price = cat_items["price"]
    lam = np.clip(0.5 * np.sqrt(15.0 / price), 0.02, 2.5)  # more units of cheap items
    quantity = 1 + rng.poisson(lam[item])
    amount = quantity * price[item]
    amount *= np.exp(rng.normal(0.0, 0.05, size=n))
    np.round(amount, 2, out=amount)
    return {"cust": cust, "sec": sec, "item": item, "quantity": quantity.astype(np.int64), "amount": amount}


# ----------------------------------------------------------------------------- observation


_N_SPELLINGS = 5


def _spelling_variants(levels: tuple[str, ...]) -> list[str]:
    """``n_levels * 5`` strings, level-major: canonical spelling, then four variants that differ from it."""
    return [v for lv in levels for v in (lv, lv.lower(), lv.upper(), f" {lv.lower()} ", f"{lv} ")]


def _observe(rng: np.random.Generator, model: _Model, cust: dict[str, np.ndarray], rows: np.ndarray,
             stale: np.ndarray, interest_cols: list[str], mcar_rate: float, mnar_strength: float,
             contradiction_rate: float, misspelling_rate: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Turn clean per-customer values into messy table cells.

    Args:
        cust: clean per-customer arrays (index = customer position).
        rows: (n_rows,) customer index of every output row.
        stale: (n_rows,) True for stale duplicate rows.

    Returns:
        (observed cells, contradiction masks), each a dict column → (n_rows,): float64 arrays, and
        ``str`` Series for the categorical columns and ``email_opt_in``.
    """
    n = len(rows)
    clean = {c: cust[c][rows].copy() for c in (*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, "email_opt_in")}
    for j, col in enumerate(interest_cols):
        clean[col] = cust["interests"][rows, j].copy()
    # stale duplicates: an older version of the record
    s = np.flatnonzero(stale)
    if len(s):
        clean["tenure_months"][s] = np.maximum(clean["tenure_months"][s] - rng.integers(1, 13, len(s)), 0)
        clean["satisfaction"][s] = np.clip(clean["satisfaction"][s] + rng.choice([-2, -1, 1, 2], len(s)), 1, 10)
        clean["support_contacts"][s] = rng.poisson(1.0, len(s)).astype(np.float64)
        clean["monthly_fee"][s] = np.round(clean["monthly_fee"][s] * rng.uniform(0.85, 0.97, len(s)), 2)
        down = s[rng.random(len(s)) < 0.3]
        clean["plan"][down] = np.maximum(clean["plan"][down] - 1, 0)
    obs = {c: v.copy() for c, v in clean.items()}
    mask = {c: np.zeros(n, dtype=bool) for c in obs}
    current = np.flatnonzero(~stale)

    # contradictions 1: stated interest flipped against the true category affinity
    aff_std = cust["aff_std"][rows[current]]
    for j, col in enumerate(interest_cols):
        val = obs[col][current]
        strong = ((val == 1) & (aff_std[:, j] > 0.5)) | ((val == 0) & (aff_std[:, j] < -0.5))
        p = min(1.0, contradiction_rate / max(strong.mean(), 1e-9))
        hit = current[strong & (rng.random(len(current)) < p)]
        obs[col][hit] = 1.0 - obs[col][hit]
        mask[col][hit] = True
    # contradictions 2: a plan that contradicts the fee
    hit = current[rng.random(len(current)) < contradiction_rate / 4]
    obs["plan"][hit] = np.where(obs["plan"][hit] == 0, 2, np.where(obs["plan"][hit] == 2, 0,
                                                                   2 * rng.integers(0, 2, len(hit))))
    mask["plan"][hit] = True
    # contradictions 3: implausible values
    hit = current[rng.random(len(current)) < contradiction_rate / 4]
    which = rng.integers(0, 4, len(hit))
    for w, col in enumerate(("age", "tenure_months", "monthly_fee", "support_contacts")):
        h = hit[which == w]
        if col == "age":
            obs[col][h] = rng.choice([0.0, 2.0, 131.0, 150.0, 999.0], len(h))
        elif col == "tenure_months":
            obs[col][h] = rng.choice([-12.0, -1.0, 960.0, 1200.0], len(h))
        elif col == "monthly_fee":
            obs[col][h] = np.round(np.where(rng.random(len(h)) < 0.5, -obs[col][h], 100.0 * obs[col][h]), 2)
        else:
            obs[col][h] = rng.choice([99.0, 250.0, 999.0], len(h))
        mask[col][h] = True

    # missingness: MCAR everywhere, MNAR on satisfaction, income, age
    seg = cust["segment"][rows]
    extra = {
        "satisfaction": 0.45 * _sigmoid(1.2 * (4.5 - clean["satisfaction"])),
        "income": 0.25 * (seg == model.mnar_income_seg)
        + 0.2 * _sigmoid(3.0 * (np.log(clean["income"] / 42_000.0) / 0.5 - 1.5)),
        "age": 0.15 * (seg == model.mnar_age_seg),
    }
    missing = {}
    for col in obs:
        p = np.full(n, mcar_rate)
        if col in extra:
            p = 1.0 - (1.0 - p) * (1.0 - np.clip(mnar_strength * extra[col], 0.0, 1.0))
        missing[col] = rng.random(n) < p
        mask[col] &= ~missing[col]

    out: dict[str, Any] = {}
    for col, values in obs.items():
        if col in _LEVELS:
            variant = np.where(rng.random(n) < misspelling_rate, rng.integers(1, _N_SPELLINGS, n), 0)
            out[col] = _level_strings(_spelling_variants(_LEVELS[col]), values * _N_SPELLINGS + variant, missing[col])
        elif col == "email_opt_in":
            out[col] = _level_strings(YES_NO, values, missing[col])
        else:
            cells = values.astype(np.float64)
            cells[missing[col]] = np.nan
            out[col] = cells
    return out, mask


def _is_behaviour(col: str) -> bool:
    return col in BEHAVIOUR_COLUMNS or (col.startswith("views_") and col.endswith("_30d"))


def _behaviour(rng: np.random.Generator, model: _Model, z: np.ndarray, noise: float) -> dict[str, np.ndarray]:
    """One measurement of the behaviour of customers with latents ``z`` (n, d) → column → (n,) float64.

    Every column is a log-linear (counts, money, recency) or logit-linear (rate) function of the
    traits or of one category affinity, plus N(0, (0.3 noise)²) customer-level noise; counts are
    then Poisson.
    """
    n = len(z)
    t_age, t_val, t_loy, t_dig, t_eng, _ = model.directions @ z.T
    aff_std = _dot(z, model.centroids) / model.aff_sd  # (n, C) unit-variance category affinities

    def nz() -> np.ndarray:
        return 0.3 * noise * rng.normal(size=n)

    def count(log_mean: np.ndarray) -> np.ndarray:
        return rng.poisson(np.exp(np.minimum(log_mean + nz(), 12.0))).astype(np.float64)

    out = {
        "app_sessions_30d": count(np.log(9.0) + 0.9 * t_dig + 0.5 * t_eng - 0.2 * t_age),
        "web_visits_30d": count(np.log(6.0) + 0.3 * t_dig + 0.7 * t_eng + 0.2 * t_val),
        "store_visits_90d": count(np.log(2.5) - 0.8 * t_dig + 0.4 * t_age + 0.2 * t_loy),
        "orders_12m": count(np.log(7.0) + 0.7 * t_eng + 0.3 * t_val + 0.3 * t_loy),
        "avg_basket_value": np.round(np.exp(np.log(45.0) + 0.6 * t_val + 0.2 * t_age + nz()), 2),
        "days_since_last_login": np.round(np.exp(np.log(6.0) - 0.8 * t_eng - 0.4 * t_dig + nz())),
        "loyalty_points": np.round(np.exp(np.log(1200.0) + 0.7 * t_loy + 0.4 * t_val + 0.2 * t_eng + nz()), -1),
        "newsletter_open_rate": np.round(_sigmoid(-0.9 + 0.8 * t_dig + 0.6 * t_loy - 0.3 * t_age + 2.0 * nz()), 3),
        "promo_redemptions_12m": count(np.log(2.0) - 0.6 * t_val + 0.5 * t_eng + 0.3 * t_age),
        "reviews_written_12m": count(np.log(1.5) + 0.5 * t_eng + 0.4 * t_age + 0.4 * t_loy),
    }
    for c in range(aff_std.shape[1]):
        out[f"views_{CATEGORIES[c]}_30d"] = count(np.log(5.0) + 0.8 * aff_std[:, c])
    return out


# ----------------------------------------------------------------------------- main entry


def _check_args(n_customers: int, n_items: int, n_segments: int, latent_dim: int, events_per_customer: float,
                horizon_days: int, rates: dict[str, float], start: pd.Timestamp, cutoff: pd.Timestamp) -> None:
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    if n_items < 1 or n_segments < 1 or latent_dim < 1:
        raise ValueError(f"n_items, n_segments and latent_dim must be >= 1, got {n_items}, {n_segments}, {latent_dim}")
    if events_per_customer < 0 or horizon_days < 1:
        raise ValueError(f"need events_per_customer >= 0 and horizon_days >= 1, got {events_per_customer}, "
                         f"{horizon_days}")
    for name, r in rates.items():
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {r}")
    if not start < cutoff:
        raise ValueError(f"start ({start.date()}) must be before cutoff ({cutoff.date()})")


@small_pages()  # its log-sized temporaries: huge pages cost more than they save (utils/memory.py)
def generate_customer_base(
    n_customers: int = 5000,
    *,
    n_items: int = 300,
    n_segments: int = 5,
    latent_dim: int = 4,
    events_per_customer: float = 20.0,
    horizon_days: int = 90,
    start: str = "2023-01-01",
    cutoff: str = "2024-10-01",
    mcar_rate: float = 0.08,
    mnar_strength: float = 1.0,
    contradiction_rate: float = 0.05,
    misspelling_rate: float = 0.03,
    duplicate_rate: float = 0.01,
    behaviour_columns: bool = False,
    behaviour_noise: float = 1.0,
    seed: int = 0,
) -> SyntheticBase:
    """Generate a customer base with latents, a messy snapshot table, an event log and the truth.

    See the module docstring for the generative story.

    Args:
        n_customers: customers active at ``cutoff`` = unique ids in ``customers``. Customers who
            churned between ``start`` and ``cutoff`` come on top (in ``events`` and ``truth`` only).
        n_items: catalogue size (spread over ``min(8, n_items)`` categories).
        n_segments: true segments of the latent mixture.
        latent_dim: dimension ``d`` of customer and item latents.
        events_per_customer: expected size of the event log divided by ``n_customers`` (the log
            also holds the purchases of the customers who left before the cutoff).
        horizon_days: label horizon after ``cutoff``; the log runs until ``cutoff + horizon_days``.
        start: first day of the event log.
        cutoff: snapshot date of ``customers``.
        mcar_rate: probability that any feature cell is missing completely at random.
        mnar_strength: scale of the missing-not-at-random extra probabilities (0 = none).
        contradiction_rate: fraction of stated-interest cells flipped against behaviour; a further
            ``contradiction_rate / 4`` of rows get a plan contradicting the fee and as many an
            implausible value (age, tenure, fee or support contacts).
        misspelling_rate: probability that a categorical cell is a case/whitespace variant.
        duplicate_rate: probability that a customer also has a stale row earlier in the table.
        behaviour_columns: add the measured-behaviour columns (:data:`BEHAVIOUR_COLUMNS` and
            ``views_<category>_30d``; story step 9), which make the observed table identify ``z``.
            Every other output is the same as without them.
        behaviour_noise: scale of the behavioural columns' customer-level noise (1 = sd 0.3 on the
            log scale; 0 = counts are Poisson around the exact latent-driven mean). Unused when
            ``behaviour_columns`` is False.
        seed: everything is a deterministic function of the arguments.

    Returns:
        A :class:`SyntheticBase`.
    """
    start_ts, cutoff_ts = pd.Timestamp(start), pd.Timestamp(cutoff)
    rates = {"mcar_rate": mcar_rate, "contradiction_rate": contradiction_rate,
             "misspelling_rate": misspelling_rate, "duplicate_rate": duplicate_rate}
    _check_args(n_customers, n_items, n_segments, latent_dim, events_per_customer, horizon_days, rates, start_ts,
                cutoff_ts)
    if mnar_strength < 0:
        raise ValueError(f"mnar_strength must be >= 0, got {mnar_strength}")
    if behaviour_noise < 0:
        raise ValueError(f"behaviour_noise must be >= 0, got {behaviour_noise}")
    d = latent_dim
    t0 = (cutoff_ts - start_ts) / pd.Timedelta(days=1)
    horizon = float(horizon_days)
    ss = np.random.SeedSequence(seed)
    ss_model, ss_items, ss_pop, ss_attr, ss_events, ss_obs = ss.spawn(6)
    rng_model, rng_items, rng_attr, rng_events, rng_obs = (
        np.random.default_rng(s) for s in (ss_model, ss_items, ss_attr, ss_events, ss_obs))
    n_cat = min(len(CATEGORIES), n_items)
    # one BLAS thread: the generator's products are small, and idle OpenBLAS workers spin on the other
    # core (a third of the CPU time at 1M customers); that core serves the event frame's second thread
    with steps(f"generating {n_customers:,} customers", 6) as step, threadpool_limits(1, user_api="blas"), \
            ThreadPoolExecutor(1, thread_name_prefix="clm-synthetic") as pool:
        step("population")
        model = _population_model(rng_model, n_segments, d, n_cat)
        cat_items = _catalogue(rng_items, model, n_items, d)

        # candidates: an i.i.d. stream drawn in batches, kept up to the n_customers-th one active at the cutoff;
        # those who left before the log starts are never seen and are dropped batch by batch
        batches: list[dict[str, np.ndarray]] = []
        n_active, n_drawn, frac = 0, 0, 0.21
        while n_active < n_customers:
            m = min(int((n_customers - n_active) / frac * 1.04) + 500, _CANDIDATE_BATCH)
            batch = _candidates(np.random.default_rng(ss_pop.spawn(1)[0]), model, m, d, t0)
            batches.append(_take(batch, np.flatnonzero(batch["churn"] > -t0)))
            del batch
            n_drawn += m
            n_active += int((np.floor(batches[-1]["churn"] * 86_400.0) > 0).sum())
            frac = max(n_active / n_drawn, 0.01)
        keys = list(batches[0])
        cand = batches[0] if len(batches) == 1 else {k: np.concatenate([b.pop(k) for b in batches]) for k in keys}
        del batches
        active = np.floor(cand["churn"] * 86_400.0) > 0
        prefix = np.flatnonzero(active)[n_customers - 1] + 1
        pop = {k: v[:prefix] for k, v in cand.items()}  # views: the candidates after the prefix are dropped
        del cand
        step("attributes")
        _attributes(rng_attr, model, pop)

        step("event log")
        ev = _events(rng_events, pop, cat_items, t0, horizon, events_per_customer, n_customers)
        churn_sec = np.floor(pop["churn"] * 86_400.0).astype(np.int64)
        active = churn_sec > 0
        n_ev = np.bincount(ev["cust"], minlength=len(active))
        visible = active | (n_ev > 0)
        # ids in order of acquisition
        vis = np.flatnonzero(visible)
        vis = vis[np.argsort(pop["acq"][vis], kind="stable")]
        for key in ("aff", "rate_mult"):  # the event model's inputs; not gathered for the visible customers
            pop.pop(key)
        pop = _take(pop, vis)
        remap = np.full(len(active), -1, dtype=np.int32)
        remap[vis] = np.arange(len(vis), dtype=np.int32)
        churn_sec, active, rate = churn_sec[vis], active[vis], ev.pop("rate")[vis]
        V = len(vis)
        id_width = max(6, len(str(V)))
        ids = _id_strings("C", V, id_width)

        # tenure at the cutoff (or at churn for those who left)
        end_day = np.where(active, 0.0, pop["churn"])
        pop["tenure_months"] = np.floor((end_day - pop["acq"]) / 30.4375).clip(0)

        step("event frame")
        # event frame, sorted by time (customers with events are all visible: remap is never -1 here);
        # columns are built one at a time and their unsorted sources freed, to bound the peak memory.
        # The item and quantity columns are built on a second thread meanwhile (the gathers release the GIL).
        cutoff_ns = cutoff_ts.value
        order = _time_order(ev["sec"])
        side = pool.submit(_sorted_items_and_quantity, ev.pop("item"), ev.pop("quantity"), order, n_items)
        sec = ev.pop("sec")[order]
        cust_sorted = remap[ev.pop("cust")[order]]
        amount = ev.pop("amount")[order]
        future = (sec > 0) & (sec <= horizon_days * 86_400)
        future_spend = np.bincount(cust_sorted[future], weights=amount[future], minlength=V)
        future_n = np.bincount(cust_sorted[future], minlength=V)
        del future
        item_ids = _id_strings("I", n_items, 5)
        columns_ev = {"customer_id": _id_strings("C", V, id_width, cust_sorted)}
        del cust_sorted
        sec *= 10**9
        sec += cutoff_ns
        columns_ev["timestamp"] = sec.view("datetime64[ns]")
        columns_ev["item_id"], columns_ev["quantity"] = side.result()
        columns_ev["amount"] = amount
        del order, sec, amount, ev
        events = pd.DataFrame(columns_ev, copy=False)
        del columns_ev

        step("customer table")
        # observed table: one current row per active customer (shuffled), stale duplicates before theirs
        table_cust = rng_obs.permutation(np.flatnonzero(active))
        dup = np.flatnonzero(rng_obs.random(len(table_cust)) < duplicate_rate)
        key = np.concatenate([np.arange(len(table_cust)) + 0.5, rng_obs.random(len(dup)) * (dup + 0.5)])
        rows = np.concatenate([table_cust, table_cust[dup]])
        stale = np.concatenate([np.zeros(len(table_cust), bool), np.ones(len(dup), bool)])
        row_order = np.argsort(key, kind="stable")
        rows, stale = rows[row_order], stale[row_order]
        interest_cols = [f"interest_{c}" for c in CATEGORIES[: pop["interests"].shape[1]]]
        obs, cmask = _observe(rng_obs, model, pop, rows, stale, interest_cols, mcar_rate, mnar_strength,
                              contradiction_rate, misspelling_rate)
        columns = ["age", "gender", "region", "income", "plan", "contract", "channel", "tenure_months", "monthly_fee",
                   "support_contacts", "satisfaction", *interest_cols, "email_opt_in"]
        beh_clean: dict[str, np.ndarray] = {}
        if behaviour_columns:
            # own stream (the 7th child of the seed), drawn last: nothing else changes. The current
            # measurement of every visible customer (truth), a fresh one for stale rows, then MCAR.
            rng_beh = np.random.default_rng(ss.spawn(1)[0])
            beh_clean = _behaviour(rng_beh, model, pop["z"], behaviour_noise)
            old = _behaviour(rng_beh, model, pop["z"][rows[stale]], behaviour_noise)
            for col, values in beh_clean.items():
                cells = values[rows]
                cells[stale] = old[col]
                cells[rng_beh.random(len(rows)) < mcar_rate] = np.nan
                obs[col] = cells
                cmask[col] = np.zeros(len(rows), dtype=bool)
            columns += list(beh_clean)
        churned = active & (churn_sec <= horizon_days * 86_400)
        table_id = ids.take(rows).reset_index(drop=True)
        customers = pd.DataFrame({"customer_id": table_id, **{c: obs[c] for c in columns},
                                  "churn": _level_strings(YES_NO, churned[rows].astype(np.int64))})
        contradictions = pd.DataFrame({"customer_id": table_id, **{c: cmask[c] for c in columns}})

        step("ground truth")
        # truth: clean values of every visible customer (current version)
        clean_all = {c: pop[c] for c in (*NUMERIC_COLUMNS, "email_opt_in")}
        for c in CATEGORICAL_COLUMNS:
            clean_all[c] = _level_strings(_LEVELS[c], pop[c])
        clean_all["email_opt_in"] = _level_strings(YES_NO, pop["email_opt_in"])
        clean_all.update(beh_clean)
        for j, c in enumerate(interest_cols):
            clean_all[c] = pop["interests"][:, j]
        in_window = churn_sec <= horizon_days * 86_400
        churn_ns = np.where(in_window, cutoff_ns + churn_sec * 10**9, np.iinfo(np.int64).min)
        # P(churn in (0, h] | alive at 0) under the Weibull hazard
        ta, th = -pop["acq"], horizon - pop["acq"]
        dh = np.exp(pop["eta"]) * ((th / 365.0) ** _WEIBULL_SHAPE - (ta / 365.0) ** _WEIBULL_SHAPE)
        truth = pd.DataFrame({
            "customer_id": ids,
            "segment": pop["segment"].astype(np.int64),
            **{f"z_{k}": pop["z"][:, k] for k in range(d)},
            "acquisition_date": pd.DatetimeIndex(
                (cutoff_ns + np.floor(pop["acq"] * 86_400.0).astype(np.int64) * 10**9).view("datetime64[ns]")),
            "churn_time": pd.DatetimeIndex(churn_ns.view("datetime64[ns]")),
            "churned": churned,
            "churn_prob": np.where(active, 1.0 - np.exp(-dh), 1.0),
            "future_spend": future_spend,
            "future_n_tx": future_n.astype(np.int64),
            "purchase_rate": rate,
            "in_customers": active,
            **{f"clean_{c}": clean_all[c] for c in columns},
        }, copy=False)
        items = pd.DataFrame({"item_id": item_ids, "category": pd.Series(np.asarray(CATEGORIES)[cat_items["cat"]],
                                                                         dtype="str"),
                              "price": cat_items["price"],
                              **{f"il_{k}": cat_items["latent"][:, k] for k in range(d)}})
        log.info("synthetic base: %d customers in the table (%d rows), %d churned before the cutoff, %d events, "
                 "horizon churn rate %.3f", int(active.sum()), len(customers), int((~active).sum()), len(events),
                 float(churned[active].mean()))
        return SyntheticBase(customers=customers, events=events, items=items, truth=truth, contradictions=contradictions,
                             cutoff=cutoff_ts, horizon_days=int(horizon_days))
