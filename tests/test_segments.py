"""k-means, silhouette and BIC checked against small worked examples and scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from clm_torch.lifecycle.segments import choose_k, kmeans, segment_summary, silhouette


def _blobs(n_per: int = 100, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = 10.0 * np.eye(max(k, 3))[:k, :3] * np.array([1, -1, 1])[None, :] + 3.0 * np.arange(k)[:, None]
    x = np.concatenate([c + rng.normal(0, 1, (n_per, 3)) for c in centers])
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


def test_silhouette_by_hand() -> None:
    # points 0, 1 in cluster 0 and 5, 7 in cluster 1 on a line
    x = np.array([[0.0], [1.0], [5.0], [7.0]])
    labels = np.array([0, 0, 1, 1])
    # a(0)=1, b(0)=6 -> 5/6 ; a(1)=1, b(1)=5 -> 4/5 ; a(5)=2, b(5)=4.5 -> 2.5/4.5 ; a(7)=2, b(7)=6.5 -> 4.5/6.5
    expected = np.mean([5 / 6, 4 / 5, 2.5 / 4.5, 4.5 / 6.5])
    assert silhouette(x, labels) == pytest.approx(expected, rel=1e-6)


def test_silhouette_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    x, y = _blobs(40, 3, seed=2)
    assert silhouette(x, y) == pytest.approx(sk.silhouette_score(x, y), abs=1e-5)


def test_kmeans_recovers_blobs_and_choose_k_finds_their_number() -> None:
    from sklearn.metrics import adjusted_rand_score

    x, y = _blobs()
    r = kmeans(x, 4, seed=0)
    assert adjusted_rand_score(y, r.labels.numpy()) > 0.99
    for criterion in ("silhouette", "bic"):
        sel = choose_k(x, range(2, 8), criterion=criterion)
        assert sel.k == 4, (criterion, sel.scores)
    assert (r.assign(torch.as_tensor(x)) == r.labels.numpy()).all()
    from sklearn.cluster import KMeans

    x2, _ = _blobs(60, 6, seed=1)
    ref = KMeans(6, n_init=4, random_state=0).fit(x2)
    assert kmeans(x2, 6, seed=0).inertia <= ref.inertia_ * 1.01


def test_segment_summary() -> None:
    df = pd.DataFrame({"segment": [0, 0, 1], "churn_probability": [0.2, 0.4, 0.9], "plan": ["a", "a", "b"],
                       "recs": [["x", "y"], ["x"], ["z"]]})
    s = segment_summary(df, category_cols=["plan"], list_cols=["recs"])
    assert s["size"].tolist() == [2, 1]
    assert s["mean_churn_probability"].tolist() == pytest.approx([0.3, 0.9])
    assert s.loc[0, "top_plan"] == "a" and s.loc[0, "top_recs"].startswith("x")
    # the same read back from customers.csv, where the items are joined by " | " (ids may hold spaces):
    # "Blue Shirt" is one item, counted once per customer, without the separator's spaces
    from clm_torch.lifecycle.report import TOP_ITEMS_SEP

    text = df.assign(recs=[TOP_ITEMS_SEP.join(["Blue Shirt", "y"]), "y", "z"])
    assert segment_summary(text, list_cols=["recs"])["top_recs"].tolist() == ["y, Blue Shirt", "z"]


def test_bad_points_and_labels_are_named_errors() -> None:
    """Missing or overflowing values, more clusters than distinct points, mismatched labels and
    customers without a segment: ValueErrors/SchemaErrors that say what to do, never a bare torch
    error from the k-means++ draw; choose_k skips the k that the data cannot support."""
    from clm_torch.data.schema import SchemaError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    for bad, shown in ((np.nan, "nan"), (np.inf, "inf"), (1e20, r"1e\+20")):
        y = x.copy()
        y[7, 2] = bad
        with pytest.raises(ValueError, match=rf"first: row 7, column 2: {shown}\); impute or drop"):
            kmeans(y, 3)
        with pytest.raises(ValueError, match="row 7, column 2"):
            choose_k(y)
    three = np.repeat(np.eye(3), 100, axis=0)
    assert np.bincount(kmeans(three, 3).labels.numpy()).tolist() == [100, 100, 100]
    with pytest.raises(ValueError, match="k = 4 clusters but only 3 distinct points"):
        kmeans(three, 4)
    assert choose_k(three).k == 3 and choose_k(three, [5, 2, 3]).k == 3  # k above 3 skipped, any order
    with pytest.raises(ValueError, match="clusters >= 2"):
        choose_k(x, [1])
    with pytest.raises(ValueError, match="labels has 299 values for 300 points"):
        silhouette(x, np.zeros(299, dtype=int))
    with pytest.raises(ValueError, match="found -1"):
        silhouette(x, np.r_[-1, np.zeros(299, dtype=int)])
    df = pd.DataFrame({"segment": [0, 1, None, 1], "clv": [1.0, 2.0, 3.0, 4.0]}, index=list("abcd"))
    with pytest.raises(SchemaError, match="column 'segment', row c: 1 customers have no segment"):
        segment_summary(df)
    with pytest.raises(SchemaError, match="column 'cluster': segment column not found"):
        segment_summary(df, "cluster")


def test_segments_do_not_change_when_the_data_is_shifted() -> None:
    """k-means, the silhouette and the choice of k are the same on data far from the origin: the
    float32 ``cdist`` shortcut used to put distances of points near (5000, 3000) off by whole units
    (inertia 500 where scikit-learn gives 379; BIC chose k = 4 for two blobs)."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal([5000, 3000], 1, (100, 2)), rng.normal([5004, 3000], 1, (100, 2))])
    centred = x - x.mean(0)
    far, near = kmeans(x, 2), kmeans(centred, 2)
    assert far.inertia == pytest.approx(near.inertia, rel=1e-4)
    assert far.inertia == pytest.approx(KMeans(2, n_init=4, random_state=0).fit(x).inertia_, rel=1e-3)
    np.testing.assert_allclose(far.centers.numpy() - x.mean(0), near.centers.numpy(), atol=1e-2)
    assert (far.assign(x) == far.labels.numpy()).all()
    assert silhouette(x, far.labels) == pytest.approx(silhouette(centred, far.labels), abs=1e-4)
    for criterion in ("bic", "silhouette"):
        assert choose_k(x, range(2, 5), criterion=criterion).k == choose_k(centred, range(2, 5), criterion=criterion).k == 2


def test_segment_summary_reads_one_column_name_and_skips_empty_answers() -> None:
    c = pd.DataFrame({"segment": [0, 0, 0, 1], "stage": ["a", "b", "b", "a"], "question": ["", "", "income", ""],
                      "clv": [1.0, 2.0, 3.0, 4.0]})
    out = segment_summary(c, numeric_cols="clv", category_cols=["stage", "question"])
    assert out["mean_clv"].tolist() == [2.0, 4.0]  # "clv" used to be read letter by letter
    assert out["top_stage"].tolist() == ["b, a", "a"]
    assert out["top_question"].tolist() == ["income", ""]  # "" was a value: ", income"
    from clm_torch.data.schema import SchemaError

    with pytest.raises(SchemaError, match="column 'stage': expected numbers to average"):
        segment_summary(c, numeric_cols=["stage"])
    with pytest.raises(ValueError, match="k_range is empty"):
        choose_k(np.random.default_rng(0).normal(size=(20, 2)), [])
    with pytest.raises(ValueError, match="n_init must be a whole number >= 1"):
        kmeans(np.random.default_rng(0).normal(size=(20, 2)), 2, n_init=0)


def test_kmeans_bic_and_segment_summary_by_hand() -> None:
    """The BIC of a fit, with the log-likelihood summed point by point with scipy: the log mixing
    weight of the point's cluster plus a normal log-density around its center with the shared
    variance inertia / ((n - k) d); k d + k parameters (centers, k - 1 weights, one variance).
    And the summary's shares and means on skewed values (where a median would differ)."""
    norm = pytest.importorskip("scipy.stats").norm
    from clm_torch.lifecycle.segments import KMeansResult, kmeans_bic

    x = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 2.0], [10.0, 10.0], [12.0, 11.0]])
    labels = np.array([0, 0, 0, 1, 1])
    centers = np.stack([x[labels == j].mean(0) for j in (0, 1)])
    inertia = float(((x - centers[labels]) ** 2).sum())
    res = KMeansResult(torch.as_tensor(centers, dtype=torch.float32), torch.as_tensor(labels), inertia)
    n, d, k = 5, 2, 2
    var = inertia / ((n - k) * d)
    loglik = sum(np.log((labels == labels[i]).sum() / n) + norm.logpdf(x[i], centers[labels[i]], np.sqrt(var)).sum()
                 for i in range(n))
    assert kmeans_bic(x, res) == pytest.approx(-2 * loglik + (k * d + k) * np.log(n), rel=1e-6)

    df = pd.DataFrame({"segment": [1, 0, 0, 0], "clv": [5.0, 0.1, 0.2, 0.9]})
    s = segment_summary(df, numeric_cols=["clv"])
    assert s["segment"].tolist() == [0, 1]
    assert s["share"].tolist() == pytest.approx([0.75, 0.25])
    assert s["mean_clv"].tolist() == pytest.approx([0.4, 5.0])


def test_silhouette_with_a_singleton_and_unused_cluster_numbers_and_top_values() -> None:
    """A singleton cluster scores 0 (as scikit-learn's); cluster numbers need not be consecutive (an
    unused number is no cluster at distance 0); the summary lists the ``top`` most common values."""
    sk = pytest.importorskip("sklearn.metrics")
    x = np.array([[0.0], [1.0], [5.0], [7.0], [20.0]])
    labels = np.array([0, 0, 1, 1, 2])
    assert silhouette(x, labels) == pytest.approx(sk.silhouette_score(x, labels), rel=1e-6)
    assert silhouette(x[:4], np.array([0, 0, 2, 2])) == pytest.approx(silhouette(x[:4], labels[:4]), rel=1e-6)
    df = pd.DataFrame({"segment": [0] * 6, "plan": ["a", "a", "a", "b", "b", "c"]})
    assert segment_summary(df, category_cols=["plan"])["top_plan"].tolist() == ["a, b, c"]
    assert segment_summary(df, category_cols=["plan"], top=2)["top_plan"].tolist() == ["a, b"]
