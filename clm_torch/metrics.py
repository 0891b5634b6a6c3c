"""Full-ranking recommendation metrics, vectorised in torch and averaged per user.

Conventions (all functions):

* ``scores`` (B, n_items): higher = better. Items a user has already seen must be excluded from
  the ranking, either by passing ``exclude`` (B, n_items) bool or by setting them to ``-inf``.
* ``targets`` (B, n_items) bool: the user's held-out items.
* Users without any target are ignored in the averages (they are not evaluated); with none at all
  the averages are NaN. An excluded item (or one scored ``-inf``) is not a target either: it cannot
  be recommended.
* A top-K list holds only items that can be recommended: when a user has fewer unseen items than K,
  the remaining slots are empty (no hit, no coverage).

Definitions for one user with target set T and top-K list L (ranks r = 1..K):

* Recall@K = |L ∩ T| / min(K, |T|)
* NDCG@K   = Σ_r [L_r ∈ T] / log2(r + 1)  ÷  Σ_{r ≤ min(K, |T|)} 1 / log2(r + 1)
* HitRate@K = 1 if |L ∩ T| > 0 else 0
* Coverage@K (catalogue, not per user) = |∪_users L| / n_items

Churn metrics (AUROC, AP, log loss, Brier) live with the churn model (``models/churn.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

METRIC_NAMES = ("recall", "ndcg", "hit_rate")


def mask_scores(scores: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """``scores`` (B, n_items) with excluded items set to ``-inf`` (float32, or float64 when given:
    casting it would turn close scores into ties)."""
    scores = scores if scores.dtype == torch.float64 else scores.float()
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    return scores


def top_k(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (B, k) of the k best items per row; a slot past a row's items that can be recommended
    (excluded or scored ``-inf``) is empty: -1 (no hit in :func:`per_user_metrics`, no coverage)."""
    best = torch.topk(mask_scores(scores, exclude), min(k, scores.shape[1]), dim=1)
    return best.indices.masked_fill(best.values == float("-inf"), -1)


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float32))


def per_user_metrics(topk: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Recall, NDCG and hit rate per user and cut-off from a top-K list.

    Args:
        topk: (B, K) ranked item indices with K ≥ max(ks), or the whole catalogue ranked (K = n_items)
            when it has fewer than max(ks) items; -1 marks an empty slot.
        targets: (B, n_items) bool.
        ks: cut-offs.

    Returns:
        ``{"recall@k": (B,), "ndcg@k": (B,), "hit_rate@k": (B,)}``; users without targets get NaN.
    """
    hits = targets.gather(1, topk.clamp_min(0)).float() * (topk >= 0)  # (B, K); -1: an empty slot
    n_t = targets.sum(1).float()
    valid = n_t > 0
    disc = _discounts(topk.shape[1], topk.device)
    idcg_cum = torch.cumsum(disc, 0)
    out: dict[str, torch.Tensor] = {}
    nan = torch.tensor(float("nan"), device=topk.device)
    for k in ks:
        kk = k
        if k > topk.shape[1]:
            if topk.shape[1] < targets.shape[1]:
                raise ValueError(f"cut-off {k} exceeds the top-K list length {topk.shape[1]}")
            kk = topk.shape[1]  # a catalogue smaller than k: the top-k list is the whole (ranked) catalogue
        h = hits[:, :kk]
        n_hit = h.sum(1)
        denom = torch.clamp(n_t, max=k)
        dcg = (h * disc[:kk]).sum(1)
        ideal = idcg_cum[(denom.long() - 1).clamp(min=0)]
        out[f"recall@{k}"] = torch.where(valid, n_hit / denom.clamp(min=1), nan)
        out[f"ndcg@{k}"] = torch.where(valid, dcg / ideal, nan)
        out[f"hit_rate@{k}"] = torch.where(valid, (n_hit > 0).float(), nan)
    return out


def coverage(topk: torch.Tensor, n_items: int, k: int) -> torch.Tensor:
    """Share of the catalogue that appears in at least one user's top-k list (scalar); empty slots (-1,
    see :func:`top_k`) count nothing."""
    seen = torch.zeros(n_items, dtype=torch.bool, device=topk.device)
    listed = topk[:, :k].reshape(-1)
    seen[listed[listed >= 0]] = True
    return seen.float().mean()


def ranking_metrics(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (10, 20),
                    exclude: torch.Tensor | None = None) -> dict[str, float]:
    """Per-user averages of Recall/NDCG/HitRate@k and catalogue coverage@k over evaluated users.

    Args:
        scores: (B, n_items).
        targets: (B, n_items) bool held-out items.
        ks: cut-offs.
        exclude: optional (B, n_items) bool seen items, removed from the ranking.
    """
    m = RankingMetrics(scores.shape[1], ks)
    m.update(scores, targets, exclude)
    return {k: float(v) for k, v in m.compute().items()}


def dense_targets(offsets: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    """Ragged item lists (offsets (B+1,), items (nnz,)) → (B, n_items) bool."""
    B = len(offsets) - 1
    rows = torch.repeat_interleave(torch.arange(B, device=items.device), offsets[1:] - offsets[:-1])
    out = torch.zeros(B, n_items, dtype=torch.bool, device=items.device)
    out[rows, items] = True
    return out


class RankingMetrics(Metric):
    """Accumulates full-ranking metrics over batches of users (DDP-safe sums).

    ``update(scores (B, n_items), targets (B, n_items) bool, exclude (B, n_items) bool | None)``;
    ``compute()`` → ``{"recall@k", "ndcg@k", "hit_rate@k", "coverage@k"}`` averaged per evaluated user.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_items: int, ks: Sequence[int] = (10, 20)) -> None:
        super().__init__()
        self.n_items, self.ks = int(n_items), [int(k) for k in ks]
        self.names = [f"{m}@{k}" for k in self.ks for m in METRIC_NAMES]
        self.add_state("sums", torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_users", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("covered", torch.zeros(len(self.ks), self.n_items), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> None:
        masked = mask_scores(scores, exclude)
        best = torch.topk(masked, min(max(self.ks), masked.shape[1]), dim=1)
        listed = best.values > float("-inf")  # (B, K): a slot past the user's unseen items is empty
        for j, k in enumerate(self.ks):  # coverage: every ranked user's list, as coverage() counts it
            self.covered[j].index_fill_(0, best.indices[:, :k][listed[:, :k]], 1.0)
        targets = targets & (masked > float("-inf"))  # an excluded item cannot be recommended
        valid = targets.any(1)
        if not valid.any():
            return
        per = per_user_metrics(best.indices[valid], targets[valid], self.ks)
        self.sums += torch.stack([per[n].double().sum() for n in self.names])
        self.n_users += float(valid.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-user averages (NaN when no user had a target) and catalogue coverage."""
        n = torch.where(self.n_users > 0, self.n_users, torch.full_like(self.n_users, float("nan")))  # no host sync
        out = {name: (self.sums[j] / n).float() for j, name in enumerate(self.names)}
        for j, k in enumerate(self.ks):
            out[f"coverage@{k}"] = (self.covered[j] > 0).float().mean()
        return out
