"""Ranking metrics against values worked out by hand on a 4 users × 3 items example.

scores                     targets      seen (excluded)
u0  [0.9, 0.5, 0.1]        {0, 2}       -
u1  [0.2, 0.8, 0.3]        {2}          -
u2  [0.5, 0.4, 0.3]        {}           -        (not evaluated)
u3  [0.1, 0.2, 0.9]        {0}          {2}

Rankings: u0 → 0, 1, 2; u1 → 1, 2, 0; u3 (item 2 excluded) → 1, 0.
@1: u0 hits (recall 1/min(1,2) = 1, ndcg 1, hit 1); u1 and u3 miss.
@2: u0 hits at rank 1 only: recall 1/2, ndcg 1 / (1 + 1/log2 3) = 0.613147;
    u1 hits at rank 2: recall 1/min(2,1) = 1, ndcg (1/log2 3) / 1 = 0.630930; u3 likewise.
Coverage@1: top-1 items {0, 1, 1} → 2/3; coverage@2: {0,1} ∪ {1,2} ∪ {1,0} → 3/3.
"""

from __future__ import annotations

import math

import pytest
import torch

from clm_torch.metrics import RankingMetrics, dense_targets, per_user_metrics, ranking_metrics, top_k

SCORES = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3], [0.5, 0.4, 0.3], [0.1, 0.2, 0.9]])
TARGETS = torch.tensor([[1, 0, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
SEEN = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1]], dtype=torch.bool)
L3 = 1 / math.log2(3)

EXPECTED = {
    "recall@1": 1 / 3, "ndcg@1": 1 / 3, "hit_rate@1": 1 / 3, "coverage@1": 2 / 3,
    "recall@2": (0.5 + 1 + 1) / 3, "ndcg@2": (1 / (1 + L3) + L3 + L3) / 3, "hit_rate@2": 1.0, "coverage@2": 1.0,
}


def test_ranking_metrics_match_hand_computed_values() -> None:
    got = ranking_metrics(SCORES, TARGETS, ks=(1, 2), exclude=SEEN)
    assert set(got) == set(EXPECTED)
    for k, v in EXPECTED.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_per_user_values_and_unevaluated_user() -> None:
    topk = top_k(SCORES, 2, SEEN)
    assert topk.tolist() == [[0, 1], [1, 2], [0, 1], [1, 0]]
    per = per_user_metrics(topk, TARGETS, (2,))
    assert per["recall@2"][[0, 1, 3]].tolist() == pytest.approx([0.5, 1.0, 1.0])
    assert per["ndcg@2"][[0, 1, 3]].tolist() == pytest.approx([1 / (1 + L3), L3, L3], abs=1e-6)
    assert math.isnan(per["recall@2"][2])


def test_excluded_items_change_the_result() -> None:
    # without excluding u3's seen item 2, u3 ranks 2 first: @1 still a miss, but @2 ranks item 1 second: miss
    got = ranking_metrics(SCORES, TARGETS, ks=(2,))
    assert got["recall@2"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_accumulating_batches_equals_one_batch() -> None:
    m = RankingMetrics(3, (1, 2))
    m.update(SCORES[:2], TARGETS[:2], SEEN[:2])
    m.update(SCORES[2:], TARGETS[2:], SEEN[2:])
    got = {k: float(v) for k, v in m.compute().items()}
    for k, v in EXPECTED.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_recall_denominator_is_min_k_and_targets() -> None:
    # one user with 3 targets, all in the top 2: recall@2 = 2 / min(2, 3) = 1, ndcg@2 = 1
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    targets = torch.tensor([[True, True, True, False]])
    got = ranking_metrics(scores, targets, ks=(2,))
    assert got["recall@2"] == pytest.approx(1.0)
    assert got["ndcg@2"] == pytest.approx(1.0)


def test_dense_targets_from_ragged_lists() -> None:
    t = dense_targets(torch.tensor([0, 2, 2, 3]), torch.tensor([0, 2, 1]), 3)
    assert t.tolist() == [[True, False, True], [False, False, False], [False, True, False]]


def test_cut_offs_beyond_a_small_catalogue_rank_the_whole_catalogue() -> None:
    """A catalogue of 3 items with cut-offs 5 and 10: the top-5 list is the whole ranked catalogue, so
    @5 and @10 equal @3 (every target is found; NDCG by its rank); a truncated list is still refused."""
    got = ranking_metrics(SCORES, TARGETS, ks=(3, 5, 10), exclude=SEEN)
    # @3: u0 hits ranks 1, 3 → recall 1, ndcg (1 + 1/2) / (1 + L3); u1 rank 2 → (L3)/1; u3 (2 excluded) rank 2
    ndcg3 = ((1 + 0.5) / (1 + L3) + L3 + L3) / 3
    for k in (3, 5, 10):
        assert got[f"recall@{k}"] == pytest.approx(1.0) and got[f"ndcg@{k}"] == pytest.approx(ndcg3, abs=1e-6)
        assert got[f"hit_rate@{k}"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cut-off 5 exceeds the top-K list length 2"):
        per_user_metrics(top_k(SCORES, 2), TARGETS, [5])


def test_slots_past_the_unseen_items_and_excluded_targets_count_for_nothing() -> None:
    """A user with fewer unseen items than K: the empty slots (excluded items) were counted in the
    catalogue coverage; an excluded item that is also a target counted as a hit; float64 scores were
    cast to float32 (close scores tied); and no evaluated user gave 0 instead of NaN."""
    s = torch.tensor([[5.0, 4, 3, 2, 1]])
    ex = torch.tensor([[1, 1, 1, 0, 0]]).bool()
    m = ranking_metrics(s, torch.tensor([[0, 0, 0, 0, 1]]).bool(), (3,), ex)
    assert m["coverage@3"] == pytest.approx(2 / 5) and m["recall@3"] == 1.0
    inf = float("-inf")
    assert ranking_metrics(torch.tensor([[inf, 2.0, inf, 1.0]]), torch.tensor([[0, 1, 0, 0]]).bool(),
                           (3,))["coverage@3"] == pytest.approx(0.5)
    seen_target = ranking_metrics(torch.tensor([[5.0, 4, 3], [1.0, 2, 3]]), torch.tensor([[1, 0, 0], [0, 0, 1]]).bool(),
                                  (1,), torch.tensor([[1, 0, 0], [0, 0, 0]]).bool())
    assert seen_target["recall@1"] == 1.0  # only the second user is evaluated (was 1.0 for both: a hit)
    close = torch.tensor([[1.0, 1.0 + 1e-9]], dtype=torch.float64)
    assert ranking_metrics(close, torch.tensor([[False, True]]), (1,))["recall@1"] == 1.0
    none = RankingMetrics(4, (1,))
    none.update(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), torch.zeros(2, 4, dtype=torch.bool))
    out = none.compute()
    assert math.isnan(out["recall@1"]) and math.isnan(out["ndcg@1"]) and out["coverage@1"] == pytest.approx(0.5)


def test_catalogue_coverage_of_top_k_lists() -> None:
    from clm_torch.metrics import coverage

    topk = torch.tensor([[0, 1, 3], [1, 2, 3]])
    assert float(coverage(topk, 5, 1)) == pytest.approx(2 / 5)  # {0, 1}
    assert float(coverage(topk, 5, 2)) == pytest.approx(3 / 5)  # {0, 1, 2}
    assert float(coverage(topk, 5, 3)) == pytest.approx(4 / 5)  # {0, 1, 2, 3}


def test_top_k_leaves_the_slots_past_the_recommendable_items_empty() -> None:
    """A user with fewer unseen items than k: top_k filled the list with excluded items, so
    coverage(top_k(...)) counted them (0.6 where ranking_metrics gives 0.4) and per_user_metrics
    could count an excluded item as a hit. The empty slots are -1 and count nothing."""
    from clm_torch.metrics import coverage

    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    seen = torch.tensor([[True, True, True, False, False]])
    listed = top_k(scores, 3, seen)
    assert listed.tolist() == [[3, 4, -1]]
    targets = torch.tensor([[False, False, True, True, False]])
    want = ranking_metrics(scores, targets, (3,), exclude=seen)
    assert float(coverage(listed, 5, 3)) == pytest.approx(want["coverage@3"]) == pytest.approx(0.4)
    per = per_user_metrics(listed, targets, (3,))
    assert float(per["hit_rate@3"][0]) == 1.0 and float(per["recall@3"][0]) == pytest.approx(0.5)
    only_seen = torch.tensor([[True, False, False, False, False]])  # the hit must be an item in the list
    assert float(per_user_metrics(listed, only_seen, (3,))["hit_rate@3"][0]) == 0.0
