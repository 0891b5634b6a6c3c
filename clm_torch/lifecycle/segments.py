"""Customer segments: k-means in torch on latent profiles, k chosen by silhouette or BIC, and summaries."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from clm_torch.data.schema import SchemaError
from clm_torch.utils.io import is_whole


@dataclasses.dataclass
class KMeansResult:
    """A fitted k-means: ``centers`` (k, d), ``labels`` (n,), ``inertia`` (sum of squared distances)."""

    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    def assign(self, x: torch.Tensor | np.ndarray, chunk: int = 262144) -> np.ndarray:
        """Nearest-center labels (n,) for new points (n, d)."""
        x = _points(x)
        if x.shape[1] != self.centers.shape[1]:
            raise ValueError(f"x has {x.shape[1]} dimensions, the centers {self.centers.shape[1]}")
        shift = self.centers.mean(0)  # distances near the origin (see _centred)
        c = self.centers - shift
        return torch.cat([torch.cdist(x[i:i + chunk] - shift, c).argmin(1)
                          for i in range(0, len(x), chunk)] or [torch.zeros(0, dtype=torch.long)]).numpy()


def _points(x: torch.Tensor | np.ndarray, what: str = "x") -> torch.Tensor:
    """``x`` as an (n, d) float32 tensor of finite values, or a ValueError naming the first bad cell."""
    try:
        arr = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be numbers: {e}") from None
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (points, dimensions) array, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (np.abs(arr) > 1e15)  # squared distances must stay finite in float32
    if bad.any():
        i, j = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"{what} has {int(bad.sum())} missing, infinite or huge (> 1e15) values (first: row {i}, "
                         f"column {j}: {float(arr[i, j]):.6g}); impute or drop them, and standardise, before segmenting")
    return torch.as_tensor(arr, dtype=torch.float32)


def _centred(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x - mean, mean)``. Every distance below is taken between centred points: ``torch.cdist``
    computes ``|a|^2 + |b|^2 - 2ab`` in float32, whose rounding error grows with ``|a|^2``, so points
    far from the origin (raw features around 5,000) got distances off by whole units and k-means,
    the silhouette and the BIC changed when the data was shifted by a constant."""
    mean = x.mean(0) if len(x) else torch.zeros(x.shape[1])
    return x - mean, mean


class TooFewDistinctPoints(ValueError):
    """More clusters asked for than the data has distinct points."""


def _n_distinct(x: torch.Tensor) -> int:
    return int(torch.unique(x, dim=0).shape[0]) if len(x) else 0


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; 2 + log k candidates per step, as in
    scikit-learn): (k, d) centers."""
    n = x.shape[0]
    n_trials = 2 + int(math.log(k))
    centers = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        if not float(d2.sum()) > 0:  # every point sits on a center already: fewer distinct points than k
            raise TooFewDistinctPoints
        probs = d2 / d2.sum().clamp_min(1e-12)
        cand = torch.multinomial(probs, n_trials, replacement=True, generator=g)
        cand_d2 = torch.minimum(d2[None], torch.cdist(x[cand], x) ** 2)  # (trials, n)
        best = int(cand_d2.sum(1).argmin())
        centers.append(x[cand[best]])
        d2 = cand_d2[best]
    return torch.stack(centers)


def kmeans(x: torch.Tensor | np.ndarray, k: int, *, n_init: int = 4, max_iter: int = 100, tol: float = 1e-6,
           seed: int = 0) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding, best of ``n_init`` restarts.

    Args:
        x: (n, d) points.
        k: number of clusters (≤ n).
    """
    x, shift = _centred(_points(x))
    if not (is_whole(k, 1) and k <= len(x)):
        raise ValueError(f"k must be a whole number in [1, {len(x)}], got {k!r}")
    if not is_whole(n_init, 1):
        raise ValueError(f"n_init must be a whole number >= 1 (restarts), got {n_init!r}")
    g = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(n_init):
        try:
            c = _kmeans_pp(x, k, g)
        except TooFewDistinctPoints:
            distinct = _n_distinct(x)
            raise TooFewDistinctPoints(f"k = {k} clusters but only {distinct} distinct points: k must be <= {distinct}") \
                from None
        prev = math.inf
        for _ in range(max_iter):
            dist = torch.cdist(x, c)
            labels = dist.argmin(1)
            inertia = float((dist.gather(1, labels[:, None]) ** 2).sum())
            counts = torch.bincount(labels, minlength=k).float()
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            empty = counts == 0
            c = torch.where(empty[:, None], c, sums / counts.clamp_min(1)[:, None])
            if empty.any():  # re-seed empty clusters at the farthest points
                far = dist.min(1).values.topk(int(empty.sum())).indices
                c[empty] = x[far]
            if prev - inertia <= tol * max(prev, 1.0):
                break
            prev = inertia
        labels = torch.cdist(x, c).argmin(1)
        inertia = float(((x - c[labels]).double() ** 2).sum())  # exact, not from the cdist shortcut
        if best is None or inertia < best.inertia:
            best = KMeansResult(c + shift, labels, inertia)
    assert best is not None
    return best


def silhouette(x: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, *, sample_size: int = 4000,
               seed: int = 0) -> float:
    """Mean silhouette coefficient (on a random sample of at most ``sample_size`` points)."""
    x = _centred(_points(x))[0]
    if len(x) == 0:
        raise ValueError("no points: the silhouette needs at least 2")
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).ravel()
    if len(labels) != len(x):
        raise ValueError(f"labels has {len(labels)} values for {len(x)} points")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"labels must be cluster numbers >= 0, found {int(labels.min())}")
    if len(x) > sample_size:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:sample_size]
        x, labels = x[idx], labels[idx]
    k = int(labels.max()) + 1
    if k < 2:
        return float("nan")
    d = torch.cdist(x, x)
    onehot = torch.nn.functional.one_hot(labels, k).float()  # (n, k)
    sums = d @ onehot  # (n, k): total distance to each cluster
    counts = onehot.sum(0)  # (k,)
    own = counts[labels]
    a = sums.gather(1, labels[:, None]).squeeze(1) / (own - 1).clamp_min(1)
    other = sums / counts.clamp_min(1)[None]
    other = other.masked_fill(onehot.bool() | (counts[None] == 0), float("inf"))
    b = other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    s = torch.where(own > 1, s, torch.zeros_like(s))  # singletons score 0 by convention
    return float(s.mean())


def kmeans_bic(x: torch.Tensor | np.ndarray, result: KMeansResult) -> float:
    """BIC of k-means seen as a spherical Gaussian mixture with a shared variance (lower is better)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    n, d = x.shape
    k = result.k
    var = max(result.inertia / max(n - k, 1) / d, 1e-12)
    counts = torch.bincount(result.labels, minlength=k).double()
    nz = counts[counts > 0]
    loglik = float((nz * torch.log(nz / n)).sum()) - n * d / 2 * math.log(2 * math.pi * var) - (n - k) * d / 2
    n_params = k * d + k  # centers, mixing weights and the shared variance
    return -2 * loglik + n_params * math.log(n)


@dataclasses.dataclass
class SegmentSelection:
    """The chosen segmentation and the scores of every k tried."""

    result: KMeansResult
    k: int
    scores: pd.DataFrame  # columns: k, silhouette, bic, inertia


def choose_k(x: torch.Tensor | np.ndarray, k_range: Sequence[int] = range(2, 11), *, criterion: str = "silhouette",
             seed: int = 0, n_init: int = 4) -> SegmentSelection:
    """Fit k-means for each k and keep the best by silhouette (max) or BIC (min)."""
    if criterion not in ("silhouette", "bic"):
        raise ValueError(f"criterion must be silhouette or bic, not {criterion!r}")
    x = _points(x)
    ks = [int(k) for k in k_range]
    if not ks:
        raise ValueError("k_range is empty: give the numbers of clusters to try, e.g. range(2, 9)")
    if any(k < 2 for k in ks):
        raise ValueError(f"k_range must hold numbers of clusters >= 2 (the criteria compare partitions), got {ks}")
    rows, fits = [], {}
    for k in ks:
        if k >= len(x):  # a silhouette needs k < n
            continue
        try:
            r = kmeans(x, k, seed=seed, n_init=n_init)
        except TooFewDistinctPoints:  # k above the number of distinct points
            continue
        fits[k] = r
        rows.append({"k": k, "silhouette": silhouette(x, r.labels, seed=seed), "bic": kmeans_bic(x, r),
                     "inertia": r.inertia})
    scores = pd.DataFrame(rows)
    if scores.empty:
        raise ValueError(f"too few points to segment: {len(x)} points, {_n_distinct(x)} distinct, for k in {ks}")
    best_k = int(scores.loc[scores["silhouette"].idxmax() if criterion == "silhouette" else scores["bic"].idxmin(), "k"])
    return SegmentSelection(fits[best_k], best_k, scores)


def segment_summary(customers: pd.DataFrame, segment_col: str = "segment", *,
                    numeric_cols: Sequence[str] = ("churn_probability", "clv", "gap_score"),
                    category_cols: Sequence[str] = (), list_cols: Sequence[str] = (), top: int = 3) -> pd.DataFrame:
    """One readable row per segment: size, share, means of ``numeric_cols``, the most common values
    of ``category_cols`` and the most frequent entries of list-valued ``list_cols`` (e.g. top
    recommended items, next best questions). Columns of ``numeric_cols`` etc. that ``customers``
    lacks are left out (the defaults name the pipeline's columns); every customer needs a segment."""
    # a single column name given as text is that column, not its letters
    numeric_cols, category_cols, list_cols = ([cols] if isinstance(cols, str) else list(cols)
                                              for cols in (numeric_cols, category_cols, list_cols))
    if segment_col not in customers.columns:
        raise SchemaError(f"segment column not found; columns are {list(customers.columns)}", source="<customers>",
                          column=segment_col)
    if customers[segment_col].isna().any():
        first = customers.index[customers[segment_col].isna().to_numpy()][0]
        raise SchemaError(f"{int(customers[segment_col].isna().sum())} customers have no segment", source="<customers>",
                          column=segment_col, row=first)
    g = customers.groupby(segment_col, sort=True, observed=True)
    out = pd.DataFrame({"size": g.size()})
    out["share"] = out["size"] / out["size"].sum()
    for c in numeric_cols:
        if c in customers.columns:
            if not pd.api.types.is_numeric_dtype(customers[c]):
                raise SchemaError(f"expected numbers to average, found {customers[c].dtype} values; convert the "
                                  "column or pass it in category_cols", source="<customers>", column=c)
            out[f"mean_{c}"] = g[c].mean()
    for c in category_cols:
        if c in customers.columns:
            # an empty text is no value (as in list_cols), e.g. no next best question
            out[f"top_{c}"] = g[c].agg(lambda s: ", ".join(map(str, s[s.astype(str) != ""].value_counts().index[:top])))
    for c in list_cols:
        if c in customers.columns:
            def _top(s: pd.Series) -> str:
                # lists, or text joined by " | " as customers.csv writes them (report.TOP_ITEMS_SEP)
                vals = pd.Series([v for lst in s.dropna() for v in (lst if isinstance(lst, (list, tuple, np.ndarray))
                                                                      else [p.strip() for p in str(lst).split("|")])
                                  if v != ""])
                return ", ".join(map(str, vals.value_counts().index[:top]))

            out[f"top_{c}"] = g[c].agg(_top)
    return out.reset_index()
