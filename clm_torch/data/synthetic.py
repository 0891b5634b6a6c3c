"""A synthetic customer base with a known ground truth: latents, a messy table, an event log.

The generator is fully vectorised numpy (no Python loop per customer or per event; the only
loops run over segments, item categories and fixed-size chunks of events), deterministic by
``seed``, and scales to 1M customers / ~20M events in well under a minute.

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
   a Weibull hazard in time since acquisition (shape 0.8: risk falls with tenure) whose log-scale
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
   the horizon; during the 60 days before churn 60% of purchases are dropped (disengagement).
   A purchase is a repeat of one of the customer's 3 favourite items with probability 0.3; else
   its category is drawn from the customer's softmax over ``z · centroid`` and the item within the
   category from ``popularity × exp(1.5 z·residual + 0.5 value × centred log-price)``. Quantity is
   ``1 + Poisson`` (more units of cheap items); amount = quantity × price × log-normal(0, 0.05).
   Nothing is bought after churn.
8. **The information gap** (only in the observed table; ``truth`` keeps the clean values):
   contradictions (stated interests flipped against the true affinity, plans that contradict the
   fee, a few implausible values — all marked in ``contradictions``); MCAR missingness on every
   feature cell; MNAR missingness (unhappy customers skip ``satisfaction``, high earners and one
   segment skip ``income``, another segment skips ``age``), scaled by ``mnar_strength``;
   case/whitespace misspellings of categorical values; and stale duplicate rows (same id, an
   older version of the record placed *before* the current one).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

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

NUMERIC_COLUMNS = ("age", "income", "tenure_months", "monthly_fee", "support_contacts", "satisfaction")
CATEGORICAL_COLUMNS = ("gender", "region", "plan", "contract", "channel")
_LEVELS = {"gender": GENDERS, "region": REGIONS, "plan": PLANS, "contract": CONTRACTS, "channel": CHANNELS}

_DAY_NS = 86_400 * 10**9
_LEGACY_DAYS = 4 * 365  # acquisitions reach this far back before `start`
_WEIBULL_SHAPE = 0.8
_CHURN_BASE = -1.65  # log cumulative hazard at one year of tenure for an average customer
_PRECHURN_DAYS = 60.0
_PRECHURN_KEEP = 0.4
_P_FAVOURITE = 0.3
_N_FAVOURITES = 3
_SEGMENT_SEPARATION = 3.4  # min distance between segment means / mean within-segment scale
_CHUNK = 1 << 20


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
            ("Yes"/"No"); target ``churn`` ("Yes"/"No", never missing).
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
        return {
            "numeric": [c for c in feats if c in NUMERIC_COLUMNS],
            "categorical": [c for c in feats if c in CATEGORICAL_COLUMNS],
            "binary": [c for c in feats if c not in NUMERIC_COLUMNS and c not in CATEGORICAL_COLUMNS],
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


def _softmax_sample(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``logits`` (n, k) → codes (n,)."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    c = np.cumsum(p, axis=1)
    u = rng.random(len(c)) * c[:, -1]
    return np.minimum((c < u[:, None]).sum(axis=1), logits.shape[1] - 1)


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
    """Draw M i.i.d. candidate customers: latents, clean attributes, acquisition and churn (days)."""
    K = len(model.weights)
    seg = rng.choice(K, size=M, p=model.weights)
    eps = rng.normal(size=(M, d))
    z = np.empty((M, d))
    for k in range(K):
        idx = np.flatnonzero(seg == k)
        z[idx] = model.means[k] + eps[idx] @ model.chol[k].T
    t_age, t_val, t_loy, t_dig, t_eng, t_gen = (z @ model.directions.T).T
    nz = lambda: rng.normal(size=M)  # noqa: E731

    age = np.clip(np.round(44.0 + 14.0 * (0.75 * t_age + 0.66 * nz())), 18, 90)
    agez = (age - 44.0) / 14.0
    gender = _softmax_sample(rng, np.stack([0.4 * t_gen, -0.4 * t_gen, np.full(M, np.log(0.04))], 1))
    region_cdf = np.cumsum(model.region_p, axis=1)[seg]
    region = np.minimum((region_cdf < rng.random(M)[:, None]).sum(1), len(REGIONS) - 1)
    log_inc = np.log(42_000.0) + 0.35 * t_val + 0.15 * agez - 0.08 * agez**2 + 0.35 * nz()
    income = np.round(np.exp(log_inc), -2)
    inc_z = (log_inc - np.log(42_000.0)) / 0.5
    plan = _ordinal(0.9 * t_val + 0.3 * inc_z + rng.logistic(size=M), (-0.45, 1.6))
    contract = _ordinal(0.8 * t_loy + 0.4 * (plan == 2) + 0.2 * agez + rng.logistic(size=M), (0.35, 1.75))
    channel = _softmax_sample(rng, np.stack([0.6 * t_dig, -0.6 * t_dig + 0.3 + 0.2 * agez,
                                             1.0 * t_dig - 0.4 * agez, -0.8 * t_dig + 0.4 * agez - 0.8], 1))
    addons = rng.poisson(np.exp(-1.0 + 0.4 * t_val))
    fee_ratio = np.exp(rng.normal(0.0, 0.12, size=M))
    monthly_fee = np.round(_PLAN_FEE[plan] * _CONTRACT_DISCOUNT[contract] * fee_ratio + 8.0 * addons, 2)
    sat_lat = 0.75 * t_loy + 0.66 * nz()
    support = rng.poisson(np.exp(-0.05 - 0.45 * sat_lat + 0.15 * (channel == 3)))
    satisfaction = np.clip(np.round(6.3 + 1.6 * sat_lat - 0.25 * (support - 1.1) + 0.5 * nz()), 1, 10)
    email = (rng.random(M) < _sigmoid(-0.2 + 0.6 * t_dig + 0.3 * t_loy)).astype(np.int64)
    aff = z @ model.centroids.T + model.cat_logw  # (M, C) category logits
    n_int = min(N_INTERESTS, aff.shape[1])
    aff_std = (z @ model.centroids[:n_int].T) / model.aff_sd[:n_int]
    q = 0.385 * np.sqrt(1.0 + 0.7**2)  # ≈35% "yes"
    interests = (aff_std + 0.7 * rng.normal(size=(M, n_int)) > q).astype(np.float64)

    # acquisition: exponential growth over [-(t0 + legacy), 0)
    g = 0.35 / 365.0
    a, b = -(t0 + _LEGACY_DAYS), 0.0
    acq = np.log(np.exp(g * a) + rng.random(M) * (np.exp(g * b) - np.exp(g * a))) / g
    # churn: Weibull hazard in time since acquisition
    contract_eff = np.array([0.8, -0.25, -1.0])[contract]
    eta = (_CHURN_BASE - 0.55 * t_loy - 0.25 * t_eng + contract_eff - 0.22 * (satisfaction - 6.3)
           + 0.12 * (support - 1.1) + 1.2 * (fee_ratio - 1.0) + 0.25 * (channel == 3)
           + model.seg_churn[seg] + 0.35 * nz())
    life = 365.0 * (rng.exponential(size=M) * np.exp(-eta)) ** (1.0 / _WEIBULL_SHAPE)
    churn = acq + np.minimum(life, 36_500.0)
    rate_mult = np.exp(0.5 * t_eng + 0.2 * t_val + model.seg_rate[seg]) * rng.gamma(2.0, 0.5, size=M)
    return {
        "segment": seg, "z": z, "t_val": t_val, "age": age, "gender": gender, "region": region, "income": income,
        "plan": plan, "contract": contract, "channel": channel, "monthly_fee": monthly_fee,
        "support_contacts": support.astype(np.float64), "satisfaction": satisfaction, "email_opt_in": email,
        "interests": interests, "aff": aff, "aff_std": aff_std, "acq": acq, "churn": churn, "eta": eta,
        "rate_mult": rate_mult,
    }


def _take(d: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in d.items()}


# ----------------------------------------------------------------------------- events


def _sample_items(rng: np.random.Generator, cust: np.ndarray, cat_cdf: np.ndarray, zaug: np.ndarray,
                  raug: np.ndarray, cat_of_item_sorted: np.ndarray, cat_counts: np.ndarray) -> np.ndarray:
    """Item index for each purchase of customer ``cust`` (n,): category, then item within category."""
    n = len(cust)
    cat = np.empty(n, dtype=np.int8)
    for s in range(0, n, _CHUNK):
        c = cust[s:s + _CHUNK]
        u = rng.random(len(c), dtype=np.float32)
        cat[s:s + _CHUNK] = np.minimum((cat_cdf[c] < u[:, None]).sum(1), len(cat_counts) - 1)
    item = np.empty(n, dtype=np.int32)
    order = np.argsort(cat, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(cat, minlength=len(cat_counts)))])
    item_start = np.concatenate([[0], np.cumsum(cat_counts)])
    for k in range(len(cat_counts)):
        ev = order[bounds[k]:bounds[k + 1]]
        rk = raug[item_start[k]:item_start[k + 1]].T  # (d+2, m_k)
        for s in range(0, len(ev), _CHUNK):
            e = ev[s:s + _CHUNK]
            logit = zaug[cust[e]] @ rk
            logit -= logit.max(axis=1, keepdims=True)
            np.exp(logit, out=logit)
            np.cumsum(logit, axis=1, out=logit)
            u = rng.random(len(e), dtype=np.float32) * logit[:, -1]
            j = np.minimum((logit < u[:, None]).sum(1), rk.shape[1] - 1)
            item[e] = cat_of_item_sorted[item_start[k] + j]
    return item


def _events(rng: np.random.Generator, pop: dict[str, np.ndarray], cat_items: dict[str, np.ndarray],
            t0: float, horizon: float, events_per_customer: float) -> dict[str, np.ndarray]:
    """Purchases of the kept customers. Times are integer seconds relative to the cutoff."""
    V = len(pop["acq"])
    ws = np.maximum(pop["acq"], -t0)
    we = np.minimum(pop["churn"], horizon)
    length = np.maximum(we - ws, 0.0)
    pre_lo = np.maximum(pop["churn"] - _PRECHURN_DAYS, ws)
    overlap = np.clip(np.minimum(pop["churn"], we) - pre_lo, 0.0, None) * (pop["churn"] <= horizon)
    exposure = pop["rate_mult"] * (length - (1.0 - _PRECHURN_KEEP) * overlap)
    base = events_per_customer * V / max(exposure.sum(), 1e-12)
    rate = base * pop["rate_mult"]
    counts = rng.poisson(rate * length)
    cust = np.repeat(np.arange(V, dtype=np.int32), counts)
    t = ws[cust] + rng.random(len(cust)) * length[cust]
    keep = ~((t >= pop["churn"][cust] - _PRECHURN_DAYS) & (rng.random(len(cust)) > _PRECHURN_KEEP))
    cust, t = cust[keep], t[keep]
    sec = np.floor(t * 86_400.0).astype(np.int64)
    n = len(cust)

    # purchase model
    aff = pop["aff"]
    p = np.exp(aff - aff.max(1, keepdims=True))
    cat_cdf = np.cumsum(p / p.sum(1, keepdims=True), axis=1).astype(np.float32)
    order = np.argsort(cat_items["cat"], kind="stable")
    raug = np.concatenate([cat_items["resid"], cat_items["lp_centred"][:, None], cat_items["logpop"][:, None]], 1)
    raug = raug[order].astype(np.float32)
    zaug = np.concatenate([1.5 * pop["z"], 0.5 * pop["t_val"][:, None], np.ones((V, 1))], 1).astype(np.float32)
    fav = _sample_items(rng, np.repeat(np.arange(V, dtype=np.int32), _N_FAVOURITES), cat_cdf, zaug, raug,
                        order, cat_items["counts"]).reshape(V, _N_FAVOURITES)
    is_fav = rng.random(n) < _P_FAVOURITE
    item = np.empty(n, dtype=np.int32)
    item[is_fav] = fav[cust[is_fav], rng.integers(0, _N_FAVOURITES, size=int(is_fav.sum()))]
    rest = np.flatnonzero(~is_fav)
    item[rest] = _sample_items(rng, cust[rest], cat_cdf, zaug, raug, order, cat_items["counts"])
    price = cat_items["price"][item]
    quantity = 1 + rng.poisson(np.clip(0.5 * np.sqrt(15.0 / price), 0.02, 2.5))
    amount = np.round(quantity * price * np.exp(rng.normal(0.0, 0.05, size=n)), 2)
    return {"cust": cust, "sec": sec, "item": item, "quantity": quantity.astype(np.int64), "amount": amount,
            "rate": rate, "counts_raw": counts}


# ----------------------------------------------------------------------------- observation


def _spelling_variants(levels: tuple[str, ...]) -> np.ndarray:
    """(n_levels, 5) object array: canonical spelling, then four variants that differ from it."""
    rows = [[lv, lv.lower(), lv.upper(), f" {lv.lower()} ", f"{lv} "] for lv in levels]
    return np.array(rows, dtype=object)


def _observe(rng: np.random.Generator, model: _Model, cust: dict[str, np.ndarray], rows: np.ndarray,
             stale: np.ndarray, interest_cols: list[str], mcar_rate: float, mnar_strength: float,
             contradiction_rate: float, misspelling_rate: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Turn clean per-customer values into messy table cells.

    Args:
        cust: clean per-customer arrays (index = table customer).
        rows: (n_rows,) customer index of every output row.
        stale: (n_rows,) True for stale duplicate rows.

    Returns:
        (observed cells, contradiction masks), each a dict column → (n_rows,).
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

    out: dict[str, np.ndarray] = {}
    for col in obs:
        if col in _LEVELS:
            table = _spelling_variants(_LEVELS[col])
            variant = np.where(rng.random(n) < misspelling_rate, rng.integers(1, table.shape[1], n), 0)
            cells = table[obs[col], variant]
            cells[missing[col]] = np.nan
            out[col] = cells
        elif col == "email_opt_in":
            cells = np.asarray(YES_NO, dtype=object)[obs[col]]
            cells[missing[col]] = np.nan
            out[col] = cells
        else:
            cells = obs[col].astype(np.float64)
            cells[missing[col]] = np.nan
            out[col] = cells
    return out, mask


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
        events_per_customer: mean number of events per observed customer over the whole log.
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
        seed: everything is a deterministic function of the arguments.

    Returns:
        A :class:`SyntheticBase`.
    """
    start_ts, cutoff_ts = pd.Timestamp(start), pd.Timestamp(cutoff)
    rates = dict(mcar_rate=mcar_rate, contradiction_rate=contradiction_rate, misspelling_rate=misspelling_rate,
                 duplicate_rate=duplicate_rate)
    _check_args(n_customers, n_items, n_segments, latent_dim, events_per_customer, horizon_days, rates, start_ts,
                cutoff_ts)
    if mnar_strength < 0:
        raise ValueError(f"mnar_strength must be >= 0, got {mnar_strength}")
    d = latent_dim
    t0 = (cutoff_ts - start_ts) / pd.Timedelta(days=1)
    horizon = float(horizon_days)
    ss = np.random.SeedSequence(seed)
    ss_model, ss_items, ss_pop, ss_events, ss_obs = ss.spawn(5)
    rng_model, rng_items, rng_events, rng_obs = (np.random.default_rng(s) for s in (ss_model, ss_items, ss_events,
                                                                                     ss_obs))
    n_cat = min(len(CATEGORIES), n_items)
    model = _population_model(rng_model, n_segments, d, n_cat)
    cat_items = _catalogue(rng_items, model, n_items, d)

    # candidates: i.i.d. stream, kept up to the n_customers-th one active at the cutoff
    M = int(n_customers * 2.2) + 500
    while True:
        cand = _candidates(np.random.default_rng(ss_pop.spawn(1)[0]), model, M, d, t0)
        churn_sec = np.floor(cand["churn"] * 86_400.0)
        active = churn_sec > 0
        if active.sum() >= n_customers:
            break
        log.debug("only %d of %d candidates active at the cutoff; drawing more", active.sum(), M)
        M = int(M * 1.6)
    prefix = np.flatnonzero(active)[n_customers - 1] + 1
    seen = np.flatnonzero(cand["churn"][:prefix] > -t0)  # still a customer when the log starts
    pop = _take(cand, seen)
    del cand

    ev = _events(rng_events, pop, cat_items, t0, horizon, events_per_customer)
    churn_sec = np.floor(pop["churn"] * 86_400.0).astype(np.int64)
    active = churn_sec > 0
    n_ev = np.bincount(ev["cust"], minlength=len(active))
    visible = active | (n_ev > 0)
    # ids in order of acquisition
    vis = np.flatnonzero(visible)
    vis = vis[np.argsort(pop["acq"][vis], kind="stable")]
    pop = _take(pop, vis)
    remap = np.full(len(active), -1, dtype=np.int64)
    remap[vis] = np.arange(len(vis))
    ev_keep = remap[ev["cust"]] >= 0  # always true: customers with events are visible
    cust_idx = remap[ev["cust"][ev_keep]].astype(np.int32)
    churn_sec, active, rate = churn_sec[vis], active[vis], ev["rate"][vis]
    V = len(vis)
    width = max(6, len(str(V)))
    ids = ("C" + pd.Series(np.arange(1, V + 1)).astype("str").str.zfill(width)).astype("str")

    # tenure at the cutoff (or at churn for those who left)
    end_day = np.where(active, 0.0, pop["churn"])
    pop["tenure_months"] = np.floor((end_day - pop["acq"]) / 30.4375).clip(0)

    # event frame, sorted by time
    cutoff_ns = cutoff_ts.value
    sec = ev["sec"][ev_keep]
    order = np.argsort(sec, kind="stable")
    cust_sorted = cust_idx[order]
    ts = cutoff_ns + sec[order] * 10**9
    item_ids = pd.Series([f"I{j:05d}" for j in range(1, n_items + 1)], dtype="str")
    amount = ev["amount"][ev_keep][order]
    events = pd.DataFrame({
        "customer_id": ids.take(cust_sorted).reset_index(drop=True),
        "timestamp": pd.DatetimeIndex(ts.view("datetime64[ns]")),
        "item_id": item_ids.take(ev["item"][ev_keep][order]).reset_index(drop=True),
        "quantity": ev["quantity"][ev_keep][order],
        "amount": amount,
    })
    future = (sec[order] > 0) & (sec[order] <= horizon_days * 86_400)
    future_spend = np.bincount(cust_sorted[future], weights=amount[future], minlength=V)
    future_n = np.bincount(cust_sorted[future], minlength=V)
    del ev, sec, order, cust_idx

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
    churned = active & (churn_sec <= horizon_days * 86_400)
    table_id = ids.take(rows).reset_index(drop=True)
    customers = pd.DataFrame({"customer_id": table_id, **{c: obs[c] for c in columns},
                              "churn": np.asarray(YES_NO, dtype=object)[churned[rows].astype(np.int64)]})
    for c in (*CATEGORICAL_COLUMNS, "email_opt_in", "churn"):
        customers[c] = customers[c].astype("str")
    contradictions = pd.DataFrame({"customer_id": table_id, **{c: cmask[c] for c in columns}})

    # truth: clean values of every visible customer (current version)
    all_idx = np.arange(V)
    clean_all = {c: pop[c] for c in (*NUMERIC_COLUMNS, "email_opt_in")}
    for c in CATEGORICAL_COLUMNS:
        clean_all[c] = np.asarray(_LEVELS[c], dtype=object)[pop[c]]
    clean_all["email_opt_in"] = np.asarray(YES_NO, dtype=object)[pop["email_opt_in"]]
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
        "future_spend": np.round(future_spend, 2),
        "future_n_tx": future_n.astype(np.int64),
        "purchase_rate": rate,
        "in_customers": active,
        **{f"clean_{c}": clean_all[c] for c in columns},
    })
    truth.index = all_idx
    items = pd.DataFrame({"item_id": item_ids, "category": pd.Series(np.asarray(CATEGORIES)[cat_items["cat"]],
                                                                     dtype="str"),
                          "price": cat_items["price"],
                          **{f"il_{k}": cat_items["latent"][:, k] for k in range(d)}})
    log.info("synthetic base: %d customers in the table (%d rows), %d churned before the cutoff, %d events, "
             "horizon churn rate %.3f", int(active.sum()), len(customers), int((~active).sum()), len(events),
             float(churned[active].mean()))
    return SyntheticBase(customers=customers, events=events, items=items, truth=truth, contradictions=contradictions,
                         cutoff=cutoff_ts, horizon_days=int(horizon_days))
