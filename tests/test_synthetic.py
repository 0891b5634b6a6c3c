"""Tests of the synthetic customer base: the planted information gap, the event log and the truth."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from clm_torch.data.synthetic import (
    BEHAVIOUR_COLUMNS,
    CATEGORICAL_COLUMNS,
    NUMERIC_COLUMNS,
    SyntheticBase,
    generate_customer_base,
)

N = 2000
MCAR = 0.08


@pytest.fixture(scope="module")
def base() -> SyntheticBase:
    return generate_customer_base(N, seed=0, mcar_rate=MCAR)


def _current(base: SyntheticBase) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Current rows (last per id), their contradiction mask and their truth rows, aligned by id."""
    cur = base.customers.drop_duplicates("customer_id", keep="last")
    mask = base.contradictions.loc[cur.index]
    truth = base.truth.set_index("customer_id").loc[cur["customer_id"]]
    return cur.reset_index(drop=True), mask.reset_index(drop=True), truth.reset_index(drop=True)


def _normalise(s: pd.Series) -> pd.Series:
    return s.astype("str").str.strip().str.lower()


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    """ROC-AUC by the rank-sum formula (ties averaged)."""
    r = pd.Series(score).rank().to_numpy()
    pos = y.astype(bool)
    n1, n0 = pos.sum(), (~pos).sum()
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ----------------------------------------------------------------------------- structure


def test_frames_and_columns(base: SyntheticBase) -> None:
    c, ev, it, tr = base.customers, base.events, base.items, base.truth
    assert c["customer_id"].drop_duplicates().shape[0] == N
    assert all(re.fullmatch(r"C\d{6}", x) for x in c["customer_id"].head(50))
    assert set(base.feature_columns) >= {*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS, "email_opt_in"}
    assert any(col.startswith("interest_") for col in base.feature_columns)
    assert set(c[base.target].unique()) == {"Yes", "No"}
    assert list(ev.columns) == ["customer_id", "timestamp", "item_id", "quantity", "amount"]
    assert ev["timestamp"].dtype == "datetime64[ns]"
    assert pd.api.types.is_integer_dtype(ev["quantity"]) and (ev["quantity"] >= 1).all()
    assert pd.api.types.is_float_dtype(ev["amount"]) and (ev["amount"] > 0).all()
    assert ev["timestamp"].is_monotonic_increasing
    assert ev["item_id"].isin(it["item_id"]).all()
    assert len(it) == 300 and it["category"].nunique() == 8 and (it["price"] > 0).all()
    assert [f"il_{k}" for k in range(4)] == [col for col in it.columns if col.startswith("il_")]
    # truth: one row per id in customers ∪ events
    ids = set(c["customer_id"]) | set(ev["customer_id"])
    assert tr["customer_id"].is_unique and set(tr["customer_id"]) == ids
    for col in ["segment", "churn_time", "churned", "future_spend", "future_n_tx", *[f"z_{k}" for k in range(4)]]:
        assert col in tr.columns
    assert {f"clean_{col}" for col in base.feature_columns} <= set(tr.columns)
    # contradiction mask aligned with the table
    m = base.contradictions
    assert m.index.equals(c.index) and (m["customer_id"] == c["customer_id"]).all()
    assert list(m.columns) == ["customer_id", *base.feature_columns]
    assert all(m[col].dtype == bool for col in base.feature_columns)
    roles = base.roles
    assert sorted(c for cols in roles.values() for c in cols) == sorted(base.feature_columns)
    assert set(roles["categorical"]) == set(CATEGORICAL_COLUMNS) and "email_opt_in" in roles["binary"]
    # log size close to the configured 20 events per table customer
    assert 17.0 < len(ev) / N < 23.0


def test_save(base: SyntheticBase, tmp_path) -> None:
    paths = base.save(tmp_path / "syn")
    assert {"customers", "events", "items", "truth"} <= set(paths)
    back = pd.read_csv(paths["customers"])
    assert back.shape == base.customers.shape
    ev = pd.read_parquet(paths["events"])
    assert len(ev) == len(base.events) and ev["amount"].sum() == pytest.approx(base.events["amount"].sum())


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="mcar_rate"):
        generate_customer_base(10, mcar_rate=1.5)
    with pytest.raises(ValueError, match="before cutoff"):
        generate_customer_base(10, start="2025-01-01")
    with pytest.raises(ValueError, match="n_customers"):
        generate_customer_base(0)


# ----------------------------------------------------------------------------- determinism


def test_deterministic_by_seed(base: SyntheticBase) -> None:
    again = generate_customer_base(N, seed=0, mcar_rate=MCAR)
    for name in ("customers", "events", "items", "truth", "contradictions"):
        pd.testing.assert_frame_equal(getattr(base, name), getattr(again, name))
    other = generate_customer_base(N, seed=1, mcar_rate=MCAR)
    assert not base.customers.equals(other.customers)
    assert not base.items.equals(other.items)
    assert len(base.events) != len(other.events) or not base.events.equals(other.events)


# ----------------------------------------------------------------------------- information gap


def test_mcar_missingness_rate(base: SyntheticBase) -> None:
    c = base.customers
    assert c["customer_id"].notna().all() and c[base.target].notna().all()
    mnar = {"satisfaction", "income", "age"}
    plain = [col for col in base.feature_columns if col not in mnar]
    rates = c[plain].isna().mean()
    assert rates.between(MCAR - 0.03, MCAR + 0.03).all(), rates
    assert abs(c[plain].isna().to_numpy().mean() - MCAR) < 0.01
    # MNAR columns lose more than MCAR alone
    assert (c[sorted(mnar)].isna().mean() > MCAR + 0.01).all()


def test_no_missingness_when_rates_are_zero() -> None:
    b = generate_customer_base(500, seed=3, mcar_rate=0.0, mnar_strength=0.0)
    assert not b.customers.isna().any().any()


def test_mnar_satisfaction(base: SyntheticBase) -> None:
    cur, _, tr = _current(base)
    miss = cur["satisfaction"].isna()
    low, high = tr["clean_satisfaction"] <= 4, tr["clean_satisfaction"] >= 7
    assert low.sum() > 100 and high.sum() > 100
    assert miss[low].mean() > miss[high].mean() + 0.1
    # switched off, the gap disappears
    b0 = generate_customer_base(N, seed=0, mcar_rate=MCAR, mnar_strength=0.0)
    cur0, _, tr0 = _current(b0)
    miss0 = cur0["satisfaction"].isna()
    assert abs(miss0[tr0["clean_satisfaction"] <= 4].mean() - miss0[tr0["clean_satisfaction"] >= 7].mean()) < 0.05


def test_clean_table_when_no_noise() -> None:
    b = generate_customer_base(800, seed=5, mcar_rate=0.0, mnar_strength=0.0, contradiction_rate=0.0,
                               misspelling_rate=0.0, duplicate_rate=0.0)
    assert b.customers["customer_id"].is_unique
    assert not b.contradictions[b.feature_columns].any().any()
    tr = b.truth.set_index("customer_id").loc[b.customers["customer_id"]]
    for col in b.feature_columns:
        np.testing.assert_array_equal(b.customers[col].to_numpy(), tr[f"clean_{col}"].to_numpy(), err_msg=col)


def test_duplicates_last_row_is_current(base: SyntheticBase) -> None:
    c, m = base.customers, base.contradictions
    counts = c["customer_id"].value_counts()
    dup_ids = counts.index[counts > 1]
    assert (counts <= 2).all()
    assert 0.004 * N < len(dup_ids) < 0.02 * N
    truth = base.truth.set_index("customer_id")
    n_differ = 0
    for cid in dup_ids:
        rows = c[c["customer_id"] == cid]
        first, last = rows.iloc[0], rows.iloc[-1]
        assert not m.loc[rows.index[0], base.feature_columns].any()  # stale rows carry no planted contradictions
        lm = m.loc[rows.index[-1]]
        for col in base.feature_columns:
            if pd.isna(last[col]) or lm[col]:
                continue
            clean = truth.at[cid, f"clean_{col}"]
            if isinstance(clean, str):
                assert last[col].strip().lower() == clean.lower(), (cid, col)
            else:
                assert last[col] == clean, (cid, col)
        n_differ += any(
            pd.notna(first[col]) and pd.notna(last[col]) and first[col] != last[col]
            for col in ("tenure_months", "satisfaction", "monthly_fee", "support_contacts")
        )
    assert n_differ >= 0.8 * len(dup_ids)  # the stale row really is an older, different record


def test_contradiction_mask_consistent(base: SyntheticBase) -> None:
    cur, mask, tr = _current(base)
    total = 0
    for col in base.feature_columns:
        obs, clean, mk = cur[col], tr[f"clean_{col}"], mask[col].to_numpy()
        present = obs.notna().to_numpy()
        assert not (mk & ~present).any(), col
        if obs.dtype == object or pd.api.types.is_string_dtype(obs):
            same = (_normalise(obs) == _normalise(clean)).to_numpy()
        else:
            same = (obs.to_numpy() == clean.to_numpy())
        assert not same[mk].any(), f"{col}: a marked cell equals its clean value"
        assert same[present & ~mk].all(), f"{col}: an unmarked cell differs from its clean value"
        total += mk.sum()
    interest = [col for col in base.feature_columns if col.startswith("interest_")]
    n_int = mask[interest].to_numpy().sum()
    expected = 0.05 * len(cur) * len(interest) * (1 - MCAR)
    assert 0.6 * expected < n_int < 1.4 * expected
    assert mask["plan"].sum() > 0 and total > n_int
    # implausible values are out of range
    for col, lo, hi in (("age", 18, 90), ("tenure_months", 0, 200), ("monthly_fee", 0, 1000)):
        marked = cur.loc[mask[col], col]
        assert ((marked < lo) | (marked > hi)).all(), col


def test_interest_contradictions_contradict_behaviour(base: SyntheticBase) -> None:
    cur, mask, _ = _current(base)
    ev = base.events.merge(base.items[["item_id", "category"]], on="item_id")
    ev = ev[ev["timestamp"] <= base.cutoff]
    share = pd.crosstab(ev["customer_id"], ev["category"], normalize="index")
    share = share.reindex(cur["customer_id"]).fillna(0.0).reset_index(drop=True)
    checked = 0
    for col in [col for col in base.feature_columns if col.startswith("interest_")]:
        s, v, mk = share[col.removeprefix("interest_")], cur[col], mask[col]
        yes_c, yes_ok = s[(v == 1) & mk], s[(v == 1) & ~mk]
        no_c, no_ok = s[(v == 0) & mk], s[(v == 0) & ~mk]
        if min(len(yes_c), len(no_c)) >= 10:
            assert yes_c.mean() < yes_ok.mean(), col
            assert no_c.mean() > no_ok.mean(), col
            checked += 1
        # unflipped stated interests agree with behaviour
        assert yes_ok.mean() > no_ok.mean(), col
    assert checked >= 2


def test_misspellings(base: SyntheticBase) -> None:
    cur, _, tr = _current(base)
    total, bad = 0, 0
    for col in CATEGORICAL_COLUMNS:
        obs = cur[col].dropna()
        canonical = set(tr[f"clean_{col}"])
        off = ~obs.isin(canonical)
        assert off.any(), col
        assert set(_normalise(obs[off])) <= {v.lower() for v in canonical}, col
        total, bad = total + len(obs), bad + off.sum()
    assert 0.015 < bad / total < 0.05


# ----------------------------------------------------------------------------- churn and events


def test_tenure_consistent_with_acquisition(base: SyntheticBase) -> None:
    tr = base.truth
    end = tr["churn_time"].where(~tr["in_customers"], base.cutoff)
    months = np.floor((end - tr["acquisition_date"]).dt.total_seconds() / 86_400 / 30.4375)
    assert (np.abs(months - tr["clean_tenure_months"]) <= 1).all()
    assert (tr["acquisition_date"] < base.cutoff).all()
    # legacy customers were acquired before the log starts
    assert (tr["acquisition_date"] < pd.Timestamp("2023-01-01")).mean() > 0.1


def test_churn_rate_and_label(base: SyntheticBase) -> None:
    cur, _, tr = _current(base)
    y = (cur[base.target] == "Yes").to_numpy()
    assert 0.10 <= y.mean() <= 0.35
    np.testing.assert_array_equal(y, tr["churned"].to_numpy())
    h = pd.Timedelta(days=base.horizon_days)
    within = (tr["churn_time"] > base.cutoff) & (tr["churn_time"] <= base.cutoff + h)
    np.testing.assert_array_equal(within.to_numpy(), y)


def test_no_events_after_churn(base: SyntheticBase) -> None:
    ev = base.events.merge(base.truth[["customer_id", "churn_time"]], on="customer_id")
    left = ev["churn_time"].notna()
    assert left.sum() > 1000
    assert (ev.loc[left, "timestamp"] <= ev.loc[left, "churn_time"]).all()
    assert ev["timestamp"].min() >= pd.Timestamp("2023-01-01")
    assert ev["timestamp"].max() <= base.cutoff + pd.Timedelta(days=base.horizon_days)
    # the log extends past the cutoff
    assert (ev["timestamp"] > base.cutoff).sum() > 1000


def test_future_labels_match_events(base: SyntheticBase) -> None:
    ev = base.events
    h = base.cutoff + pd.Timedelta(days=base.horizon_days)
    fut = ev[(ev["timestamp"] > base.cutoff) & (ev["timestamp"] <= h)]
    spend = fut.groupby("customer_id")["amount"].sum()
    n_tx = fut.groupby("customer_id").size()
    tr = base.truth.set_index("customer_id")
    np.testing.assert_allclose(tr["future_spend"], spend.reindex(tr.index).fillna(0.0), atol=1e-6)
    np.testing.assert_array_equal(tr["future_n_tx"], n_tx.reindex(tr.index).fillna(0).astype(int))
    assert (tr["future_spend"] > 0).mean() > 0.3
    # churned customers spend less in the horizon than those who stay
    stay = tr["in_customers"] & ~tr["churned"]
    assert tr.loc[tr["churned"], "future_spend"].mean() < tr.loc[stay, "future_spend"].mean()


def test_churned_before_cutoff_only_in_events(base: SyntheticBase) -> None:
    tr = base.truth
    gone = tr[tr["churn_time"] <= base.cutoff]
    assert len(gone) > 0.2 * N
    assert not gone["customer_id"].isin(base.customers["customer_id"]).any()
    assert gone["customer_id"].isin(base.events["customer_id"]).all()
    assert not gone["in_customers"].any() and not gone["churned"].any()
    np.testing.assert_array_equal(tr["in_customers"], tr["customer_id"].isin(base.customers["customer_id"]))


# ----------------------------------------------------------------------------- realism


def test_features_informative(base: SyntheticBase) -> None:
    _, _, tr = _current(base)
    y = tr["churned"].to_numpy()
    contract = tr["clean_contract"]
    assert y[contract == "Month-to-month"].mean() > y[contract == "Two year"].mean() + 0.05
    assert tr.loc[y, "clean_satisfaction"].mean() < tr.loc[~y, "clean_satisfaction"].mean()
    fee = tr.groupby("clean_plan")["clean_monthly_fee"].median()
    assert fee["Basic"] < fee["Standard"] < fee["Premium"]
    # the true churn probability ranks churners well but not perfectly
    assert 0.72 < _auc(tr["churn_prob"].to_numpy(), y) < 0.95
    # a single feature is informative but far from sufficient
    auc_sat = _auc(-tr["clean_satisfaction"].to_numpy(), y)
    assert 0.55 < auc_sat < 0.8


def test_purchases_follow_latents(base: SyntheticBase) -> None:
    tr = base.truth.set_index("customer_id")
    it = base.items.set_index("item_id")
    zc = [f"z_{k}" for k in range(4)]
    ic = [f"il_{k}" for k in range(4)]
    ev = base.events.sample(20_000, random_state=0)
    z = tr.loc[ev["customer_id"], zc].to_numpy()
    bought = np.einsum("nd,nd->n", z, it.loc[ev["item_id"], ic].to_numpy())
    rand = np.einsum("nd,nd->n", z, it[ic].to_numpy()[np.random.default_rng(0).integers(0, len(it), len(ev))])
    assert bought.mean() > rand.mean() + 0.3


def _kmeans(x: np.ndarray, k: int, *, restarts: int = 4, iters: int = 50, seed: int = 0) -> np.ndarray:
    """Plain Lloyd's k-means with k-means++ starts; labels of the lowest-inertia restart."""
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        centres = x[[rng.integers(len(x))]]
        while len(centres) < k:
            d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1).min(1)
            centres = np.vstack([centres, x[rng.choice(len(x), p=d2 / d2.sum())]])
        for _ in range(iters):
            labels = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
            centres = np.stack([x[labels == j].mean(0) if (labels == j).any() else centres[j] for j in range(k)])
        inertia = ((x - centres[labels]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index from the contingency table."""
    table = pd.crosstab(a, b).to_numpy().astype(float)
    def comb(v: np.ndarray) -> float:
        return float((v * (v - 1) / 2).sum())

    sum_ij, sum_a, sum_b, n = comb(table), comb(table.sum(1)), comb(table.sum(0)), comb(np.array([table.sum()]))
    expected = sum_a * sum_b / n
    return float((sum_ij - expected) / ((sum_a + sum_b) / 2 - expected))


def test_ari_helper() -> None:
    assert _ari(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    assert _ari(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(-0.5)


def test_segments_are_recoverable(base: SyntheticBase) -> None:
    tr = base.truth
    z = tr[[f"z_{k}" for k in range(4)]].to_numpy()
    seg = tr["segment"].to_numpy()
    assert len(np.unique(seg)) == 5
    ari = _ari(seg, _kmeans(z, 5))
    assert 0.7 < ari < 0.99
    noisy = z + np.random.default_rng(0).normal(0.0, 1.0, z.shape)
    assert _ari(seg, _kmeans(noisy, 5)) < ari - 0.1  # not trivially separated


# ----------------------------------------------------------------------------- behaviour columns (opt-in)


@pytest.fixture(scope="module")
def rich() -> SyntheticBase:
    return generate_customer_base(N, seed=0, mcar_rate=MCAR, behaviour_columns=True)


def _behaviour_cols(b: SyntheticBase) -> list[str]:
    return [c for c in b.feature_columns if c in BEHAVIOUR_COLUMNS or c.startswith("views_")]


def test_behaviour_columns_leave_everything_else_unchanged(base: SyntheticBase, rich: SyntheticBase) -> None:
    beh = _behaviour_cols(rich)
    assert beh[: len(BEHAVIOUR_COLUMNS)] == list(BEHAVIOUR_COLUMNS)
    assert beh[len(BEHAVIOUR_COLUMNS):] == [f"views_{c}_30d" for c in sorted(set(rich.items["category"]),
                                                                              key=list(rich.items["category"]).index)]
    assert not _behaviour_cols(base)
    # the default table plus columns (placed before the target): same rows, cells, labels, events, truth
    pd.testing.assert_frame_equal(rich.customers.drop(columns=beh), base.customers)
    assert list(rich.customers.columns[-len(beh) - 1:]) == [*beh, "churn"]
    pd.testing.assert_frame_equal(rich.contradictions.drop(columns=beh), base.contradictions)
    assert not rich.contradictions[beh].any().any()
    pd.testing.assert_frame_equal(rich.truth.drop(columns=[f"clean_{c}" for c in beh]), base.truth)
    for name in ("events", "items"):
        pd.testing.assert_frame_equal(getattr(rich, name), getattr(base, name))
    assert set(beh) <= set(rich.roles["numeric"])
    again = generate_customer_base(N, seed=0, mcar_rate=MCAR, behaviour_columns=True)
    pd.testing.assert_frame_equal(again.customers, rich.customers)
    with pytest.raises(ValueError, match="behaviour_noise"):
        generate_customer_base(10, behaviour_columns=True, behaviour_noise=-1.0)


def test_behaviour_columns_values_and_missingness(rich: SyntheticBase) -> None:
    beh = _behaviour_cols(rich)
    c = rich.customers[beh]
    assert all(c[col].dtype == np.float64 for col in beh)
    assert (c.min() >= 0).all() and (c["newsletter_open_rate"].dropna() <= 1).all()
    assert c.isna().mean().between(MCAR - 0.03, MCAR + 0.03).all()
    # observed current cells are the truth's clean values (stale rows hold an older, independent measurement)
    cur, _, tr = _current(rich)
    for col in beh:
        obs = cur[col].notna().to_numpy()
        np.testing.assert_array_equal(cur[col].to_numpy()[obs], tr[f"clean_{col}"].to_numpy()[obs], err_msg=col)
    stale = rich.customers[rich.customers["customer_id"].duplicated(keep="last")]
    assert len(stale) > 5
    st = rich.truth.set_index("customer_id").loc[stale["customer_id"]]
    assert (stale["orders_12m"].to_numpy() != st["clean_orders_12m"].to_numpy()).any()


def _probe_r2(b: SyntheticBase, cols: list[str]) -> float:
    """Held-out R² of a least-squares probe from the current rows' columns (log1p, mean-imputed) to z."""
    cur, _, tr = _current(b)
    x = np.log1p(cur[cols].astype(float).clip(lower=0))
    x = x.fillna(x.mean()).to_numpy()
    x = np.column_stack([x, np.ones(len(x))])
    z = tr[[c for c in tr.columns if c.startswith("z_")]].to_numpy()
    k = int(0.75 * len(x))
    coef, *_ = np.linalg.lstsq(x[:k], z[:k], rcond=None)
    resid = z[k:] - x[k:] @ coef
    return float(1.0 - (resid**2).sum(0).mean() / ((z[k:] - z[k:].mean(0)) ** 2).sum(0).mean())


def test_behaviour_columns_identify_the_latent(base: SyntheticBase, rich: SyntheticBase) -> None:
    beh = _behaviour_cols(rich)
    numeric = [c for c in base.feature_columns if pd.api.types.is_numeric_dtype(base.customers[c])]
    r2_table, r2_rich = _probe_r2(base, numeric), _probe_r2(rich, numeric + beh)
    assert r2_table < 0.5 < 0.8 < r2_rich, (r2_table, r2_rich)
    # the noise knob: less noise identifies z better, more noise worse
    quiet = generate_customer_base(N, seed=0, mcar_rate=MCAR, behaviour_columns=True, behaviour_noise=0.0)
    loud = generate_customer_base(N, seed=0, mcar_rate=MCAR, behaviour_columns=True, behaviour_noise=3.0)
    assert _probe_r2(loud, beh) < _probe_r2(rich, beh) < _probe_r2(quiet, beh)
    # category page views follow the stated interests where these were not flipped
    cur, mask, _ = _current(rich)
    for col in [c for c in rich.feature_columns if c.startswith("interest_")]:
        views = cur[f"views_{col.removeprefix('interest_')}_30d"]
        ok = ~mask[col]
        assert views[ok & (cur[col] == 1)].mean() > 1.5 * views[ok & (cur[col] == 0)].mean(), col
        assert views[mask[col] & (cur[col] == 1)].mean() < views[ok & (cur[col] == 1)].mean(), col


def test_many_candidate_batches_and_event_blocks(monkeypatch) -> None:
    """The i.i.d. candidate stream is drawn batch by batch until n_customers are active at the cutoff, and
    the purchases in blocks of whole customers: small batches and blocks give a consistent base too."""
    import clm_torch.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "_CANDIDATE_BATCH", 256)
    monkeypatch.setattr(synthetic, "_EVENT_BLOCK", 2048)
    b = generate_customer_base(1500, seed=3)
    assert len(b.events) > 10 * 2048
    test_no_events_after_churn(b)
    test_future_labels_match_events(b)
    assert b.customers["customer_id"].nunique() == 1500
    assert int(b.truth["in_customers"].sum()) == 1500
    assert b.truth["acquisition_date"].is_monotonic_increasing  # ids in order of acquisition
    assert set(b.events["customer_id"].unique()) <= set(b.truth["customer_id"])
    for col in CATEGORICAL_COLUMNS:
        assert str(b.customers[col].dtype) == "str" and str(b.truth[f"clean_{col}"].dtype) == "str"
