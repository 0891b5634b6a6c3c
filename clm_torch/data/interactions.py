"""InteractionDataModule: an interaction log → vocabularies, per-user splits, ragged user batches.

Splits (per user, every user with at least ``min_user_interactions`` distinct items):

* ``random`` (R1): a random ``test_fraction`` of the user's items is held out for test
  (``numpy.random.default_rng(split_seed)``); the validation part is carved out of the rest
  the same way (same generator, next draw).
* ``temporal`` (R2): the last ``test_fraction`` of the user's items by time is held out; the
  validation part is the last ``val_fraction`` of what remains. Items with equal times are
  ordered at random (same generator), not by item id.

Strong generalisation (``test_users`` > 0; Liang et al. 2018, Mult-VAE): users, not items, are held
out. A seeded share ``test_users`` of the eligible users (and ``val_users`` more, for validation
and early stopping) never enters training: the models learn from the other users' interactions
only, and each held-out user's items are split by the protocol above (``test_fraction`` held out as
targets; the rest, the fold-in part, is the history given at inference). Their rows in the
validation and test batches carry the user index 0 (``<unk>``), as a new customer is served, and
they are not in the model's user vocabulary (``model_user_ids``, the checkpoint's ``user_ids``):
``recommend`` serves them as unknown users. ``user_ids`` (the log's users) and the CSRs of
:meth:`InteractionDataModule.csr` keep every user.
``val_fraction`` is not used then (validation users are other users).

Users below the threshold keep all their items in training and are not evaluated. Repeated
(user, item) pairs are collapsed to one interaction (first time, summed weight) before splitting,
so an item is never both "seen" and "held out".

Batches are per user and ragged, sliced without per-row Python (:class:`RaggedUserTable`)::

    user            (B,)    int64   user index (0 = <unk>)
    hist_items      (nnz,)  int64   the users' history items, user by user (CSR order)
    hist_offsets    (B+1,)  int64   user b's history is hist_items[hist_offsets[b]:hist_offsets[b+1]]
    hist_age        (nnz,)  int64   recency bucket of each history item (0 = most recent; log2 buckets)
    target_items    (nnz',) int64   items to predict (train: the history itself; val/test: held out)
    target_offsets  (B+1,)  int64
    target_weight   (nnz',) float32 interaction weight (1 without a weight column)

History per split: train → train part; val → train part; test → train + val parts (with held-out
users: each held-out user's own fold-in part). Items of the history are exactly the items masked
when ranking (the "seen" items). With ``train_on="train+val"`` (a refit after tuning) the training
table holds train + val (with held-out users: the training users and the validation users).

What a checkpoint needs (:meth:`InteractionDataModule.preprocessing_state`, tensors and primitives
only): the id vocabularies, the seen-item index (train + val) as CSR tensors, popularity counts,
the item feature tensors and the items' co-occurrence neighbours (``n_neighbors``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader

from clm_torch.data.datamodules import (IndexBatchSampler, SplitLoaders, TensorTable, check_batch_sizes,
                                        loader_generator, shuffle_seed)
from clm_torch.data.encoding import FeatureEncoder
from clm_torch.data.events import _factorize
from clm_torch.data.schema import SchemaError
from clm_torch.data.sources.interactions import InteractionData
from clm_torch.utils.memory import small_pages

log = logging.getLogger(__name__)

UNK = "<unk>"
N_AGE_BUCKETS = 16
PROTOCOLS = ("random", "temporal")


# ----------------------------------------------------------------------------- CSR helpers
def csr_from_pairs(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """indptr (n_rows+1,) of pairs already sorted by ``rows``."""
    return np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))]).astype(np.int64)


def csr_gather(indptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the entries of ``rows`` in a CSR structure, without a Python loop.

    Args:
        indptr: (n_rows+1,) int64.
        rows: (B,) int64 row indices.

    Returns:
        (positions (nnz,), offsets (B+1,)): ``indices[positions]`` are the rows' entries, row by row.
    """
    start = indptr.index_select(0, rows)
    lens = indptr.index_select(0, rows + 1) - start
    offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
    torch.cumsum(lens, 0, out=offsets[1:])
    total = int(offsets[-1])
    pos = torch.arange(total, dtype=torch.long) + torch.repeat_interleave(start - offsets[:-1], lens,
                                                                           output_size=total)
    return pos, offsets


def item_neighbors(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, k: int,
                   chunk: int = 512) -> torch.Tensor:
    """Top-``k`` co-occurrence neighbours (n_items, k) int64 of every item by cosine similarity.

    Computed block by block of items with sparse products (memory ~ chunk × n_items). Items
    with fewer than ``k`` co-occurring items are padded with their own index (models mask it).
    """
    if k <= 0 or len(users) == 0:
        return torch.zeros(n_items, 0, dtype=torch.long)
    k = min(k, n_items - 1) if n_items > 1 else 0
    users, items = np.asarray(users), np.asarray(items)
    counts = np.bincount(items, minlength=n_items)
    rows, xt = _cooccurrence_operands(users, items, n_users, n_items, counts)
    norm = torch.from_numpy(counts.astype(np.float32)).sqrt().clamp(min=1)
    out = torch.empty(n_items, k, dtype=torch.long)
    for s in range(0, n_items, chunk):
        idx = torch.arange(s, min(n_items, s + chunk))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
            co = torch.sparse.mm(rows(s, s + len(idx)), xt).to_dense()  # (chunk, n_items) co-occurrence counts
        sim = co / (norm[idx, None] * norm[None])
        sim[torch.arange(len(idx)), idx] = -1.0  # never yourself
        top = torch.topk(sim, k, dim=1)
        out[idx] = torch.where(top.values > 0, top.indices, idx[:, None])
    return out


def _cooccurrence_operands(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, counts: np.ndarray
                           ) -> tuple[Callable[[int, int], torch.Tensor], torch.Tensor]:
    """The (item, user) incidence matrix of ones, as ``rows(start, stop)`` (the sparse rows of items
    [start, stop)), and its transpose, for ``torch.sparse.mm``.

    Distinct pairs (as after deduplication) are sorted with :func:`_lexsort` into CSR tensors, whose
    product is several times faster than that of COO tensors, and gives the same counts: sums of
    ones, exact in float32 in any order while every item has fewer than 2**24 users. Otherwise
    (repeated pairs, which ``coalesce`` sums, or more users) coalesced COO tensors, as before.
    """
    if len(users) > 1 and counts.max() < 2**24:
        by_item = _lexsort((users, items))
        col = users[by_item].astype(np.int64, copy=False)
        row = np.repeat(np.arange(n_items), counts)
        if not ((col[1:] == col[:-1]) & (row[1:] == row[:-1])).any():
            crow = torch.from_numpy(csr_from_pairs(row, n_items))
            col_t = torch.from_numpy(col)
            ones = torch.ones(len(users))
            by_user = _lexsort((items, users))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
                xt = torch.sparse_csr_tensor(torch.from_numpy(csr_from_pairs(users[by_user], n_users)),
                                             torch.from_numpy(items[by_user].astype(np.int64, copy=False)), ones,
                                             (n_users, n_items), check_invariants=True)

            def rows(start: int, stop: int) -> torch.Tensor:
                a, b = int(crow[start]), int(crow[stop])
                return torch.sparse_csr_tensor(crow[start:stop + 1] - a, col_t[a:b], ones[a:b], (stop - start, n_users),
                                               check_invariants=True)

            return rows, xt
    x = torch.sparse_coo_tensor(torch.from_numpy(np.stack([items, users])), torch.ones(len(users)),
                                (n_items, n_users), check_invariants=True).coalesce()
    return (lambda start, stop: x.index_select(0, torch.arange(start, stop))), x.t().coalesce()


class RaggedUserTable(TensorTable):
    """Per-user tensors plus ragged (CSR) fields, sliced for a whole batch of users at once.

    Args:
        tensors: per-user tensors of equal length (must include ``user``).
        ragged: name → (indptr (n+1,), {suffix: values (nnz,)}); batches get ``<name>_offsets``
            and ``<name>_<suffix>`` for every value tensor.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor],
                 ragged: Mapping[str, tuple[torch.Tensor, Mapping[str, torch.Tensor]]]) -> None:
        super().__init__(tensors)
        self.ragged = {k: (p, dict(v)) for k, (p, v) in ragged.items()}
        for k, (p, _) in self.ragged.items():
            if len(p) != self.n + 1:
                raise ValueError(f"ragged field {k}: indptr has {len(p)} entries for {self.n} rows")

    def __getitem__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().__getitem__(idx)
        for name, (indptr, values) in self.ragged.items():
            pos, offsets = csr_gather(indptr, idx)
            out[f"{name}_offsets"] = offsets
            for suffix, v in values.items():
                out[f"{name}_{suffix}"] = v.index_select(0, pos)
        return out


def ragged_loader(table: RaggedUserTable, batch_size: int, *, shuffle: bool, seed: int = 0,
                  num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding whole ragged user batches (IndexBatchSampler, no per-row collation)."""
    sampler = IndexBatchSampler(len(table), batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(table, sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=loader_generator(seed))


def age_buckets_sorted(users: np.ndarray, times: np.ndarray, n_buckets: int = N_AGE_BUCKETS) -> np.ndarray:
    """Recency bucket per interaction, floor(log2(1 + rank from the user's most recent)) clipped to
    ``n_buckets - 1``, for interactions already sorted by (user, time, item), without a sort.

    The rank is the number of the user's interactions with a later time plus the position within
    the run of equal times (ties ranked in item order). Linear time; ``users`` and ``times`` are
    (n,) and the result is aligned with them.
    """
    n = len(users)
    if n == 0:
        return np.zeros(0, np.int64)
    new_user = np.empty(n, dtype=bool)
    new_user[0] = True
    np.not_equal(users[1:], users[:-1], out=new_user[1:])
    new_time = np.empty(n, dtype=bool)
    new_time[0] = True
    np.not_equal(times[1:], times[:-1], out=new_time[1:])
    new_time |= new_user
    user_start = np.flatnonzero(new_user)
    user_end = np.append(user_start[1:], n)
    # position p of a user ending at E, in the run of equal times [s, s + L): rank = (E - s - L) + (p - s);
    # without ties (L = 1, s = p) that is E - 1 - p, corrected below at the few tied positions
    rank = np.repeat(user_end, user_end - user_start)
    rank -= np.arange(1, n + 1)
    tied = np.flatnonzero(~new_time)  # positions equal in user and time to the one before
    if len(tied):
        member = np.zeros(n, dtype=bool)
        member[tied] = True
        member[tied - 1] = True
        pos = np.flatnonzero(member)
        first = new_time[pos]  # each run's first position
        at = np.flatnonzero(first)
        run = np.cumsum(first) - 1
        s, size = pos[at][run], np.diff(np.append(at, len(pos)))[run]
        rank[pos] += 2 * (pos - s) + 1 - size  # (E - s - L) + (p - s) - (E - 1 - p)
    table = _age_table(n_buckets)
    if table is None:
        return np.minimum(np.floor(np.log2(1 + rank)).astype(np.int64), n_buckets - 1)
    return table[np.minimum(rank, len(table) - 1, out=rank)]


_AGE_TABLES: dict[int, np.ndarray | None] = {}


def _age_table(n_buckets: int) -> np.ndarray | None:
    """The bucket of every rank below 2**(n_buckets-1), by the formula itself (larger ranks share the
    last entry's bucket, n_buckets - 1); None for too many buckets."""
    if n_buckets not in _AGE_TABLES:
        table = None
        if 1 <= n_buckets <= 24:
            table = np.minimum(np.floor(np.log2(1 + np.arange(2 ** (n_buckets - 1)))).astype(np.int64), n_buckets - 1)
            if table[-1] != n_buckets - 1:  # pragma: no cover - a log2 that misses a power of two
                table = None
        _AGE_TABLES[n_buckets] = table
    return _AGE_TABLES[n_buckets]


# ----------------------------------------------------------------------------- sorting
# Smallest number of levels left to a key that is truncated to fit the packed int64 key (fewer: np.lexsort)
_MIN_LEVELS = 256
_KEY_CAP = 2**63 - 1


def _int_code(col: np.ndarray) -> tuple[np.ndarray, int] | tuple[None, int]:
    """(codes, levels): int64 codes in [0, levels) of integers and whole-valued floats, equal values
    to equal codes, order kept (value - min; the values themselves when the minimum is a small
    non-negative offset: possibly ``col`` itself, to be read, not written); (None, 0) for other
    floats; (None, -1) where the column cannot be coded (NaN, infinite, too wide, not a number)."""
    if col.dtype == np.bool_:
        col = col.view(np.uint8)
    if col.dtype.kind not in "iuf" or len(col) == 0:
        return None, -1
    lo, hi = col.min(), col.max()
    if col.dtype.kind == "f":
        if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(hi - lo)):
            return None, -1
        if lo == hi:
            return np.zeros(len(col), dtype=np.int64), 1
        if not (-(2.0**62) < lo and hi < 2.0**62):
            return None, 0
        code = col.astype(np.int64)
        if not np.array_equal(code, col):
            return None, 0
        lo, hi = code.min(), code.max()
    elif col.dtype == np.uint64:  # col - lo in uint64: no int64 overflow
        span = int(hi) - int(lo) + 1
        return ((col - lo).astype(np.int64), span) if span <= _KEY_CAP else (None, -1)
    else:
        lo, hi = int(lo), int(hi)
        if 0 <= lo <= (hi - lo) // 64:  # codes from 0 (ids, item codes): used as they are, no copy
            return (col if col.dtype == np.int64 else col.astype(np.int64)), hi + 1
        code = col.astype(np.int64)
    span = int(hi) - int(lo) + 1
    if span > _KEY_CAP:
        return None, -1
    code -= int(lo)
    return code, span


def _non_decreasing(col: np.ndarray) -> bool:
    """Whether a numeric column is sorted (False with NaN)."""
    return col.dtype.kind in "biuf" and bool(np.all(col[1:] >= col[:-1]))


def _argsort_codes(codes: np.ndarray, levels: int, presorted: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Stable order of int64 codes in [0, levels), and the sorted codes where the sort gives them
    (int32 or int64; else None).

    numpy's stable sort (a radix sort) for 16-bit codes, and (timsort, nearly linear) where the
    codes are ``presorted`` in long runs; else torch's stable sort, of int32 codes where they fit:
    about 2-3x faster than numpy's at 10-20M codes.
    """
    if levels <= 2**16:
        return np.argsort(codes.astype(np.uint16), kind="stable"), None
    if presorted:
        return np.argsort(codes, kind="stable"), None
    values, order = torch.sort(torch.from_numpy(codes.astype(np.int32) if levels <= 2**31 else codes), stable=True)
    return order.numpy(), values.numpy()


def _lexsort(keys: Sequence[np.ndarray]) -> np.ndarray:
    """``np.lexsort(keys)`` (stable; the last key is the primary one), on numeric keys much faster.

    The keys are packed into one int64 per row (mixed radix, primary first) and sorted once with a
    stable sort (:func:`_argsort_codes`: numpy's timsort, nearly linear when the primary key is
    already sorted, e.g. users after deduplication; else torch's, of int32 keys when they fit). Integers and
    whole-valued floats are packed exactly; a key that does not fit (e.g. fractional times, random
    draws) is truncated monotonically to the levels left, the keys after it dropped, and the rows
    whose packed keys then tie are ordered by all their keys with ``np.lexsort``; so the order is
    always ``np.lexsort``'s, ties (position order) included. Trailing keys that are already
    non-decreasing in row order are dropped first (a stable sort keeps that order). Falls back to
    ``np.lexsort`` for keys it cannot code (NaN, non-numbers, > 63 bits).
    """
    keys = [np.asarray(k) for k in keys]
    n = len(keys[0]) if keys else 0
    if n < 2:
        return np.arange(n, dtype=np.int64)
    cols = keys[::-1]  # primary first
    while len(cols) > 1 and _non_decreasing(cols[-1]):
        cols = cols[:-1]
    packed, owned, levels, exact = None, False, 1, True
    for col in cols:
        code, span = _int_code(col)
        if span < 0:
            return np.lexsort(keys)
        room = _KEY_CAP // levels
        if code is not None and span <= room:
            part, used = code, span
        else:  # truncate this key to the levels left, monotonically; the keys after it are only in the fix-up
            if room < _MIN_LEVELS:
                return np.lexsort(keys)
            if code is not None:
                step = -(-span // room)
                part, used = code // step, (span - 1) // step + 1
            else:
                used = min(room, 2**53)  # a float has 53 bits: more levels would not separate more values
                c = col.astype(np.float64, copy=False)
                lo, hi = float(c.min()), float(c.max())
                scaled = np.subtract(c, lo)
                scaled /= hi - lo  # in [0, 1]; each rounded step is monotone: equal keys stay equal, order is kept
                scaled *= used - 1
                part = scaled.astype(np.int64)
                np.minimum(part, used - 1, out=part)
            exact = False
        if packed is None:
            packed, owned = part, not np.may_share_memory(part, col)  # the caller's array is not written to
        elif owned:
            packed *= used
            packed += part
        else:
            packed = packed * used
            packed += part
            owned = True
        levels *= used
        if not exact:
            break
    order = _argsort_codes(packed, levels, presorted=_non_decreasing(cols[0]))[0]
    if not exact:  # rows whose truncated keys tie: order them by all their keys (rare)
        s = packed[order]
        tie = s[1:] == s[:-1]
        if tie.any():
            member = np.r_[tie, False] | np.r_[False, tie]
            pos = np.flatnonzero(member)
            run = np.cumsum(np.r_[True, ~tie][pos])
            rows = order[pos]
            order[pos] = rows[np.lexsort((*[k[rows] for k in keys], run))]
    return order


# ----------------------------------------------------------------------------- splitting
def _holdout(users: np.ndarray, key: np.ndarray, eligible: np.ndarray, fraction: float,
             n_users: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Mask (n,) of the interactions held out: per eligible user, the round(fraction·n_u) with the
    largest key; equal keys are ordered by ``tiebreak`` (random), else by position."""
    n = len(users)
    o = _lexsort((key, users)) if tiebreak is None else _lexsort((tiebreak, key, users))
    counts = np.bincount(users, minlength=n_users)
    n_hold = np.where(eligible, np.floor(fraction * counts + 0.5).astype(np.int64), 0)
    n_hold = np.minimum(n_hold, np.maximum(counts - 1, 0))  # always leave at least one item
    # in sorted order, a user's rows end at cumsum(counts) and the last n_hold of them are held out
    first_held = np.cumsum(counts) - n_hold
    u = users if _non_decreasing(users) else users[o]  # the users in sorted order (sorted users: the same)
    mask = np.empty(n, bool)
    mask[o] = np.arange(n) >= first_held[u]
    return mask


def split_interactions(users: np.ndarray, times: np.ndarray | None, n_users: int, protocol: str,
                       test_fraction: float, val_fraction: float, min_user_interactions: int,
                       seed: int) -> np.ndarray:
    """Split label per interaction: 0 = train, 1 = validation, 2 = test (see the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"data.protocol must be one of {PROTOCOLS}, not {protocol!r}")
    if protocol == "temporal" and times is None:
        raise SchemaError("the temporal protocol needs a time column (set data.time_col)")
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"data.{name} must be in [0, 1), not {f}")
    rng = np.random.default_rng(seed)
    n = len(users)
    split = np.zeros(n, np.int8)
    counts = np.bincount(users, minlength=n_users)
    # temporal: equal times (date-only logs; 32 % of MovieLens ratings share a user's second) are
    # ordered at random, not by item id, which would hold out each user's largest ids
    if test_fraction > 0:
        key = rng.random(n) if protocol == "random" else times
        tie = rng.random(n) if protocol == "temporal" else None
        test = _holdout(users, key, counts >= min_user_interactions, test_fraction, n_users, tie)
        split[test] = 2
    if val_fraction > 0:
        rest = np.flatnonzero(split == 0)
        ru = users[rest]
        rcounts = np.bincount(ru, minlength=n_users)
        key = rng.random(len(rest)) if protocol == "random" else times[rest]
        tie = rng.random(len(rest)) if protocol == "temporal" else None
        val = _holdout(ru, key, rcounts >= min_user_interactions, val_fraction, n_users, tie)
        split[rest[val]] = 1
    return split


def user_groups(users: np.ndarray, n_users: int, min_user_interactions: int, test_users: float, val_users: float,
                seed: int) -> np.ndarray:
    """Group per user (n_users,) int8 for strong generalisation: 0 = trains, 1 = validation user,
    2 = test user. Among the users with at least ``min_user_interactions`` interactions, a random
    ``round(test_users · n)`` are test users and the next ``round(val_users · n)`` validation users
    (``numpy.random.default_rng((seed, 1))``: its own stream, apart from the item split's); the
    ``<unk>`` row 0 and users below the threshold always train."""
    for name, f in (("test_users", test_users), ("val_users", val_users)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f < 1.0:
            raise ValueError(f"data.{name} must be a share in [0, 1), not {f!r}")
    if test_users + val_users >= 1.0:
        raise ValueError(f"data.test_users + data.val_users must leave users to train on, got {test_users} + "
                         f"{val_users}")
    group = np.zeros(n_users, np.int8)
    eligible = np.flatnonzero(np.bincount(users, minlength=n_users) >= min_user_interactions)
    eligible = eligible[eligible > 0]
    order = np.random.default_rng((seed, 1)).permutation(eligible)
    n_test = int(np.floor(test_users * len(eligible) + 0.5))
    n_val = int(np.floor(val_users * len(eligible) + 0.5))
    group[order[:n_test]] = 2
    group[order[n_test: n_test + n_val]] = 1
    return group


# ----------------------------------------------------------------------------- the DataModule
class InteractionDataModule(SplitLoaders):
    """An interaction log → id vocabularies, per-user split, item features, ragged user batches.

    Args:
        source: an object with ``load() -> InteractionData``.
        protocol: ``random`` (R1) or ``temporal`` (R2); see the module docstring.
        test_fraction: share of each user's items held out for test.
        val_fraction: share of each user's remaining items held out for validation.
        min_user_interactions: users with fewer distinct items are never held out / evaluated.
        split_seed: seed of the random protocol.
        batch_size: users per training batch.
        eval_batch_size: users per validation/test batch (default 4 × batch_size).
        num_workers, pin_memory: DataLoader settings (0 workers is fastest in memory).
        max_labels: most frequent multilabel values kept (the rest are dropped).
        n_neighbors: co-occurrence neighbours kept per item (cosine on the training interactions),
            for the recommender's item-item term (0 = none).
        train_on: ``train`` (default) or ``train+val``: refit on train and validation interactions
            after tuning (use a fixed epoch count: validation metrics are then optimistic, since
            validation items become training targets).
        test_users: share of the eligible users held out of training entirely, for test (strong
            generalisation, see the module docstring; 0 = off, every user trains).
        val_users: share of the eligible users held out of training for validation (with
            ``test_users`` > 0; it must then be > 0 too).
    """

    data_kind = "interactions"  # what a model's ``data_kind`` must be to train on it

    def __init__(self, source: Any, protocol: str = "random", test_fraction: float = 0.2,
                 val_fraction: float = 0.2, min_user_interactions: int = 5, split_seed: int = 0,
                 batch_size: int = 128, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False, max_labels: int = 1000, train_on: str = "train",
                 n_neighbors: int = 0, test_users: float = 0.0, val_users: float = 0.0) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"data.protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.source, self.protocol = source, protocol
        self.test_fraction, self.val_fraction = float(test_fraction), float(val_fraction)
        self.min_user_interactions, self.split_seed = int(min_user_interactions), int(split_seed)
        check_batch_sizes(batch_size, eval_batch_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or 4 * batch_size)
        self.num_workers, self.pin_memory, self.max_labels = int(num_workers), bool(pin_memory), int(max_labels)
        if train_on not in ("train", "train+val"):
            raise ValueError(f"data.train_on must be 'train' or 'train+val', not {train_on!r}")
        self.train_on = train_on
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 0:
            raise ValueError(f"data.n_neighbors must be a whole number >= 0 (0 = no item-item term), not {n_neighbors!r}")
        self.n_neighbors = int(n_neighbors)
        user_groups(np.zeros(0, np.int64), 1, 1, test_users, val_users, 0)  # checks the shares now, not at setup
        if (val_users > 0) != (test_users > 0):
            raise ValueError(f"data.test_users and data.val_users hold out test and validation users together (strong "
                             f"generalisation: validation users for early stopping); set both above 0, or neither "
                             f"(got {test_users} and {val_users})")
        self.test_users, self.val_users = float(test_users), float(val_users)
        self.data: InteractionData | None = None
        self._ready = False

    # ------------------------------------------------------------------ setup
    @small_pages()  # its log-sized temporaries: huge pages cost more than they save (utils/memory.py)
    def setup(self, stage: str | None = None) -> None:
        """Load, deduplicate, split and tensorise (idempotent)."""
        if self._ready:
            return
        data = self.source.load()
        self.data = data
        frame = data.frame
        # vocabularies: users get <unk> at 0; the catalogue is every item of the log or the item table
        _, user_ids, u = _column_codes(frame["user"])
        item_ids, item_list, i = _column_codes(frame["item"], None if data.items is None else data.items["item"])
        u += 1
        self.user_ids: list[Any] = [UNK, *user_ids]
        self.item_ids: list[Any] = item_list
        self.n_users, self.n_items = len(self.user_ids), len(self.item_ids)
        self._item_index = pd.Index(item_ids)
        t = frame["time"].to_numpy(np.float64) if data.has_time else None
        w = frame["weight"].to_numpy(np.float64) if data.has_weight else None
        u, i, t, w = _dedupe(u, i, t, w, self.n_items)
        holdout = self.test_users > 0  # strong generalisation: whole users held out
        self.split = split_interactions(u, t, self.n_users, self.protocol, self.test_fraction,
                                        0.0 if holdout else self.val_fraction, self.min_user_interactions,
                                        self.split_seed)
        self.user_group = user_groups(u, self.n_users, self.min_user_interactions, self.test_users, self.val_users,
                                      self.split_seed)
        if holdout:  # training users keep every item; a validation user's held-out items are validation targets
            g = self.user_group[u]
            self.split[g == 0] = 0
            self.split[(g == 1) & (self.split == 2)] = 1
        order_key = t if t is not None else np.zeros(len(u))
        # one global sort by (user, time, item): every masked subset is then already in CSR order
        if t is not None:  # (without times, _dedupe's (user, item) order is that order)
            o = _lexsort((i, order_key, u))
            u, i, order_key, w, self.split = u[o], i[o], order_key[o], w[o], self.split[o]
        self.interactions = {"user": u, "item": i, "time": order_key, "weight": w}
        self.has_time = t is not None  # without times every history item has age bucket 0
        masks = self._masks()
        parts = {"train": "split0", "val": "val", "test": "test"}  # the rows of each split, by mask name
        self._build_item_features(data)
        if self.train_on == "train+val":  # refit with a fixed number of epochs: validation metrics are optimistic
            parts["train"] = "known"
        train, known = masks[parts["train"]], masks["known"]
        csrs: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

        def csr(name: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # each mask's CSR built once
            if name not in csrs:
                csrs[name] = self._csr(masks.get(name))
            return csrs[name]

        self.train_counts = np.bincount(i[train], minlength=self.n_items)
        self.popularity = np.bincount(i[known], minlength=self.n_items)
        self.known_csr = csr("known")
        self.all_csr = csr("all")  # what recommend() serves from and excludes
        self.neighbors = item_neighbors(u[train], i[train], self.n_users, self.n_items, self.n_neighbors)
        # the model's user vocabulary: <unk> and the users whose interactions train it; users held out of
        # training are not in it (no embedding row, no logged history), so recommend() serves them as
        # unknown users, as the validation and test batches do (the <unk> user)
        trains = self.user_group == 0
        if self.train_on == "train+val":
            trains |= self.user_group == 1  # validation users train in a refit
        self._model_users = np.flatnonzero(trains) if holdout else np.arange(self.n_users)
        code = np.zeros(self.n_users, np.int64)  # log user code → model user index (0 = <unk>: not in it)
        code[self._model_users] = np.arange(len(self._model_users))
        self.model_user_ids: list[Any] = [self.user_ids[k] for k in self._model_users]
        hist = {"train": parts["train"], "val": "val_history", "test": "test_history"}
        self.tables: dict[str, RaggedUserTable] = {}
        self._table_users: dict[str, np.ndarray] = {}
        for name in ("train", "val", "test"):
            hp, hv = csr(hist[name])
            tp, tv = csr(parts[name])
            users = np.flatnonzero(np.diff(tp.numpy()) > 0)  # users with something to predict
            if name == "train":
                users = users[users > 0]
            uu = torch.from_numpy(users)
            self.tables[name] = _subset(uu, hp, hv, tp, tv)
            self._table_users[name] = users
            if holdout:  # model user indices; held-out users are new customers: the <unk> user, as recommend() has
                self.tables[name].tensors["user"] = torch.from_numpy(code[users])
        for name, tab in self.tables.items():
            if len(tab) == 0:
                fraction = {"val": self.val_fraction, "test": self.test_fraction}.get(name)
                most = int(np.bincount(self.interactions["user"]).max())
                hint = "" if fraction is None else (
                    f"; no user has that many (at most {most} items each): lower data.min_user_interactions"
                    if most < self.min_user_interactions else
                    f"; data.{name}_fraction=0 holds out nothing (validation and test need held-out items)"
                    if fraction == 0 else f"; data.{name}_fraction={fraction} rounds to no item for these users "
                    f"(at most {most} items each)")
                raise SchemaError(f"the {name} split has no users: too few interactions per user "
                                  f"(min_user_interactions={self.min_user_interactions}){hint}", source=data.name)
        self._ready = True
        log.info("interactions %s: %d users, %d items, %d interactions (train %d, val %d, test %d); "
                 "users evaluated: val %d, test %d%s", data.name, self.n_users - 1, self.n_items, len(u),
                 int(train.sum()), int(masks["val"].sum()), int(masks["test"].sum()),
                 len(self.tables["val"]), len(self.tables["test"]),
                 f" (held out of training: {len(self.tables['val'])} validation and {len(self.tables['test'])} "
                 "test users, scored from their fold-in items)" if holdout else "")

    def _masks(self) -> dict[str, np.ndarray]:
        """Row masks (over ``self.interactions``) of the parts: ``split0`` (the training part),
        ``val``/``test`` (held-out targets), ``known`` (train + validation), and the histories
        ``val_history``/``test_history`` the validation and test targets are ranked from."""
        s, g = self.split, self.user_group[self.interactions["user"]]
        if not self.test_users > 0:
            split0, known = s == 0, s <= 1
            return {"split0": split0, "val": s == 1, "test": s == 2, "known": known, "val_history": split0,
                    "test_history": known}
        trains = g == 0
        return {"split0": trains, "val": s == 1, "test": s == 2, "known": g <= 1,
                "val_history": (s == 0) & (g == 1), "test_history": (s == 0) & (g == 2)}

    def _csr(self, mask: np.ndarray | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CSR over users of the interactions in ``mask`` (None: all): indptr and items/age/weight, by
        user then time."""
        u, i, t, w = (self.interactions[k] for k in ("user", "item", "time", "weight"))  # sorted by (user, time, item)
        if mask is not None:
            rows = np.flatnonzero(mask)  # one pass over the mask, then plain gathers
            u, i, w = u.take(rows), i.take(rows), w.take(rows)
            t = t.take(rows) if self.has_time else None
        indptr = csr_from_pairs(u, self.n_users)
        age = age_buckets_sorted(u, t) if self.has_time else np.zeros(len(u), np.int64)  # no order to rank by
        return torch.from_numpy(indptr), {"items": torch.from_numpy(i.astype(np.int64, copy=mask is None)),
                                          "age": torch.from_numpy(age),
                                          "weight": torch.from_numpy(w.astype(np.float32))}

    def _build_item_features(self, data: InteractionData) -> None:
        n = self.n_items
        self.item_num = torch.zeros(n, 0)
        self.item_num_mask = torch.zeros(n, 0, dtype=torch.bool)
        self.item_cat = torch.zeros(n, 0, dtype=torch.long)
        self.item_cat_cardinalities: list[int] = []
        self.label_vocab: list[str] = []
        self.item_label_indptr = torch.zeros(n + 1, dtype=torch.long)
        self.item_label_indices = torch.zeros(0, dtype=torch.long)
        self.item_meta = pd.DataFrame({"item_id": pd.Series(self.item_ids).astype(str)})
        if data.items is None:
            return
        roles = data.item_roles
        items = data.items.set_index("item").reindex(self._item_index).reset_index(drop=True)
        num, cat = list(roles.get("numeric", [])), list(roles.get("categorical", []))
        if num or cat:
            enc = FeatureEncoder(numeric=num, categorical=cat, log_transform="auto").fit(
                items, source=f"{data.name} [items]")
            t = enc.transform(items, source=f"{data.name} [items]")
            self.item_num, self.item_num_mask, self.item_cat = t["num"], t["num_mask"], t["cat"]
            self.item_cat_cardinalities = enc.cardinalities
        ml = list(roles.get("multilabel", []))
        if ml:
            cells = [items[c].astype("string").fillna("").str.split(data.label_sep, regex=False)
                     .map(lambda xs, c=c: [f"{c}={x.strip()}" for x in xs if x and x.strip()]) for c in ml]
            per_item = [sum(parts, []) for parts in zip(*cells)] if len(ml) > 1 else list(cells[0])
            lens = np.fromiter((len(x) for x in per_item), np.int64, n)
            flat = pd.Series([x for xs in per_item for x in xs], dtype="str")
            vocab = flat.value_counts().index[: self.max_labels].tolist()
            codes = pd.Index(vocab).get_indexer(flat)
            owner = np.repeat(np.arange(n), lens)
            keep = codes >= 0
            self.label_vocab = [str(v) for v in vocab]
            self.item_label_indptr = torch.from_numpy(csr_from_pairs(owner[keep], n))
            self.item_label_indices = torch.from_numpy(codes[keep].astype(np.int64))
        for c in [*roles.get("label", []), *ml, *cat]:
            self.item_meta[c] = items[c].astype("string").fillna("").str.replace(r"[\t\n\r]", " ", regex=True)

    # ------------------------------------------------------------------ what models need
    def model_kwargs(self) -> dict[str, Any]:
        """Primitive sizes the recommender is built from."""
        self.setup()
        return {"n_users": len(self.model_user_ids), "n_items": self.n_items,
                "item_n_num": int(self.item_num.shape[1]),
                "item_cat_cardinalities": list(self.item_cat_cardinalities),
                "item_n_labels": len(self.label_vocab), "n_age_buckets": N_AGE_BUCKETS,
                "item_n_neighbors": int(self.neighbors.shape[1])}

    def preprocessing_state(self) -> dict[str, Any]:
        """Vocabularies, the seen-item indexes (train + val, and every interaction; CSR), popularity
        and item features.

        Tensors and primitives only, so checkpoints load with ``weights_only=True``.
        """
        self.setup()
        seen_indptr, seen = self._model_rows(self.known_csr)
        all_indptr, every = self._model_rows(self.all_csr)
        return {
            "version": 1,
            "user_ids": list(self.model_user_ids), "item_ids": list(self.item_ids),
            "seen_indptr": seen_indptr, "seen_indices": seen["items"], "seen_age": seen["age"],
            "all_indptr": all_indptr, "all_indices": every["items"], "all_age": every["age"],
            "popularity": torch.from_numpy(self.popularity.astype(np.float32)),
            "train_counts": torch.from_numpy(self.train_counts.astype(np.float32)),
            "item_num": self.item_num.clone(), "item_num_mask": self.item_num_mask.clone(),
            "item_cat": self.item_cat.clone(), "item_label_indptr": self.item_label_indptr.clone(),
            "item_label_indices": self.item_label_indices.clone(), "label_vocab": list(self.label_vocab),
            "item_neighbors": self.neighbors.clone(), "protocol": self.protocol, "has_time": self.has_time,
        }

    def _model_rows(self, csr: tuple[torch.Tensor, dict[str, torch.Tensor]]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Copies of a CSR over the log's users (items and age) restricted to the model's users, in
        model index order."""
        indptr, vals = csr
        if len(self._model_users) == self.n_users:
            return indptr.clone(), {k: vals[k].clone() for k in ("items", "age")}
        pos, offsets = csr_gather(indptr, torch.from_numpy(self._model_users))
        return offsets, {k: vals[k].index_select(0, pos) for k in ("items", "age")}

    def item_metadata(self) -> pd.DataFrame:
        """One row per catalogue item (vocabulary order): ``item_id`` and label/feature columns as text."""
        self.setup()
        return self.item_meta

    def user_ids_of(self, split: str) -> list[Any]:
        """External ids of the users of a split's table, in table order (held-out users too, whose
        batch rows carry ``<unk>``)."""
        return [self.user_ids[k] for k in self._table_users[split]]

    def csr(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(indptr (n_users+1,), items) of ``train``, ``val``, ``test`` or ``known`` (train+val) interactions,
        or of ``val_history`` / ``test_history`` (what validation and test targets are ranked from: the
        train part, train + val; with held-out users, their fold-in parts)."""
        names = {"train": "split0", "val": "val", "test": "test", "known": "known", "val_history": "val_history",
                 "test_history": "test_history"}
        if part not in names:
            raise ValueError(f"part must be one of {list(names)}, not {part!r}")
        indptr, vals = self._csr(self._masks()[names[part]])
        return indptr.numpy(), vals["items"].numpy()

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # every rank shuffles with rank 0's seed (see IndexBatchSampler); the broadcast is a no-op without DDP
        return ragged_loader(self.tables[split], self.batch_size if shuffle else self.eval_batch_size,
                             shuffle=shuffle, seed=shuffle_seed(shuffle), num_workers=self.num_workers,
                             pin_memory=self.pin_memory)



def _sorted_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of every value among them (int64)).

    The values are hashed once (``pd.factorize``, linear in their number) and only the distinct
    values are sorted, so string ids cost O(n + m log m) instead of the O(n log m) Python string
    comparisons of a ``searchsorted`` over all rows.
    """
    codes, uniques = pd.factorize(values)
    uniques = np.asarray(uniques)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return uniques[order], rank[codes]


def _arrow_strings(values: Any) -> pa.ChunkedArray | None:
    """The Arrow strings behind a pandas column or index (pandas' ``str`` dtype), else None."""
    chunked = getattr(getattr(values, "array", None), "_pa_array", None)
    if isinstance(chunked, pa.ChunkedArray) and (pa.types.is_string(chunked.type)
                                                 or pa.types.is_large_string(chunked.type)):
        return chunked
    return None


def _column_codes(column: pd.Series, extra: pd.Series | None = None) -> tuple[np.ndarray, list[Any], np.ndarray]:
    """:func:`_sorted_codes` of a column (plus the values of ``extra``, e.g. an item table's ids, in
    the vocabulary only): (sorted distinct values, the same as plain Python values, codes of the
    column's rows (int64, or int32 from Arrow: the same numbers)).

    Arrow-backed strings (pandas' ``str`` dtype, as read from Parquet or CSV) are encoded with
    Arrow's dictionary encoding (:func:`clm_torch.data.events._factorize`) and only the distinct
    strings are sorted, by Arrow (UTF-8 byte order, which is code point order: Python's order of
    str), so no Python object is made per row. Other columns go through :func:`_sorted_codes`.
    """
    chunked = _arrow_strings(column)
    more = None if extra is None else _arrow_strings(extra)
    if chunked is not None and chunked.null_count == 0 and len(column) \
            and (extra is None or (more is not None and more.null_count == 0)):
        codes, uniques = _factorize(column)
        distinct = _arrow_strings(uniques)
        if distinct is not None and not (codes < 0).any():
            distinct = distinct.combine_chunks()
            if more is not None and len(more):
                # the column's distinct values first, in their order: their codes stay; the extra's new values follow
                both = [a.cast(pa.large_string()) for a in (distinct, *more.chunks)]
                distinct = pc.dictionary_encode(pa.concat_arrays(both)).dictionary
            order = pc.array_sort_indices(distinct).to_numpy(zero_copy_only=False)
            rank = np.empty(len(order), dtype=np.int32 if len(order) < 2**31 - 1 else np.int64)
            rank[order] = np.arange(len(order), dtype=rank.dtype)
            values = distinct.take(pa.array(order)).to_numpy(zero_copy_only=False)
            return values, values.tolist(), rank[codes]
    values = column.to_numpy()
    if extra is not None:
        values = np.concatenate([values, extra.to_numpy()])
    uniques, codes = _sorted_codes(values)
    plain = uniques.tolist() if uniques.dtype != object else [_plain(v) for v in uniques]
    return uniques, plain, codes[: len(column)]


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _dedupe(u: np.ndarray, i: np.ndarray, t: np.ndarray | None, w: np.ndarray | None, n_items: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Collapse repeated (user, item) pairs: first time, summed weight (None: every weight 1); the
    pairs come out sorted by (user, item)."""
    key = np.multiply(u, n_items, dtype=np.int64)
    key += i
    k = None
    if t is None or _non_decreasing(t):  # in time order already (most logs): a stable sort by pair suffices
        levels = int(key.max()) + 1 if len(key) else 1
        o, k = _argsort_codes(key, levels)
    else:
        o = _lexsort((t, key))
    if k is None:
        k = key[o]
    first = np.empty(len(k), dtype=bool)
    first[:1] = True
    np.not_equal(k[1:], k[:-1], out=first[1:])
    if w is None:  # every weight 1: the sums are the group sizes
        ws = np.diff(np.append(np.flatnonzero(first), len(k))).astype(np.float64)
    else:
        ws = np.bincount(np.cumsum(first) - 1, weights=w[o])
    sel = o[first]
    uu, ii = np.divmod(k[first], k.dtype.type(n_items))  # the pairs, in key order: decoded, not gathered
    return uu.astype(np.int64, copy=False), ii.astype(np.int64, copy=False), (t[sel] if t is not None else None), ws


def _subset(users: torch.Tensor, hp: torch.Tensor, hv: dict[str, torch.Tensor], tp: torch.Tensor,
            tv: dict[str, torch.Tensor]) -> RaggedUserTable:
    """A RaggedUserTable over ``users`` with history (hp, hv) and targets (tp, tv) re-indexed to them."""
    gathered: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}  # the training table's history is its targets
    increasing = bool((users[1:] > users[:-1]).all())

    def sub(indptr: torch.Tensor, vals: dict[str, torch.Tensor], keys: Sequence[str]) -> tuple:
        if id(indptr) in gathered:
            pos, offsets = gathered[id(indptr)]
            offsets = offsets.clone()  # a table's own indptr per field, as before
        else:
            lens = indptr.index_select(0, users + 1) - indptr.index_select(0, users)
            if increasing and int(lens.sum()) == int(indptr[-1]) and int(indptr[0]) == 0:
                # every non-empty row, in order (e.g. the users with targets): the positions are all of them
                offsets = torch.zeros(len(users) + 1, dtype=torch.long)
                torch.cumsum(lens, 0, out=offsets[1:])
                pos = None
            else:
                pos, offsets = csr_gather(indptr, users)
            gathered[id(indptr)] = pos, offsets
        return offsets, {k: vals[k].clone() if pos is None else vals[k].index_select(0, pos) for k in keys}

    return RaggedUserTable({"user": users}, {"hist": sub(hp, hv, ("items", "age")),
                                             "target": sub(tp, tv, ("items", "weight"))})


def interactions_from_file(path: str, user_col: str = "user_id", item_col: str = "item_id",
                           time_col: str | None = None, weight_col: str | None = None,
                           item_features_path: str | None = None, item_features_id_col: str | None = None,
                           item_roles: Mapping[str, Sequence[str]] | None = None, label_sep: str = "|",
                           csv: Mapping[str, Any] | None = None, date_format: str | None = None,
                           **kwargs: Any) -> InteractionDataModule:
    """An :class:`InteractionDataModule` over a CSV/Parquet log (the ``data=interactions`` config).

    ``protocol=temporal`` needs ``time_col``; ``date_format`` (``data.date_format``) says how its
    text times are written when not in ISO 8601.
    """
    from clm_torch.data.sources.interactions import InteractionsFileSource

    if time_col is None and kwargs.get("protocol") == "temporal":  # it used to fall back to random with a warning
        raise ValueError("data.protocol=temporal holds out each user's last items by time: set data.time_col=<the "
                         "log's time column>, or use data.protocol=random")
    src = InteractionsFileSource(path, user_col, item_col, time_col, weight_col, item_features_path,
                                 item_features_id_col, item_roles, label_sep, csv, date_format)
    return InteractionDataModule(src, **kwargs)
