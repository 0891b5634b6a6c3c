"""EmbeddingRecommender: full-catalogue top-N recommendation from learned embeddings.

Scores are ``score(u, i) = ⟨user_vector(u), item_vector(i)⟩ + bias_i (+ Σ_{j ∈ H(u)} W[j → i])`` where

* an item vector is a learned id embedding plus a projection of the item features when the
  catalogue has them (genres and year on MovieLens, category and price on synthetic data);
* a user vector comes from a history encoder (a Mult-DAE-like set encoder over the user's items,
  which also serves users who were never trained on), a learned user embedding, or both;
* the optional item-item term sums learned weights from each history item j to its
  co-occurrence neighbours i (EASE-like, restricted to ``data.n_neighbors`` pairs per item).
* the optional EASE term (``ease_weight`` > 0) adds ``ease_weight · Σ_{j ∈ H(u)} B[j, i]`` with B
  the closed-form EASE matrix (Steck 2019) solved on the training interactions at the start of
  fit. It is not trained and not part of the loss: the model is then an ensemble of the learned
  embedding scorer and EASE (``experiment=recsys_movielens`` turns it on).

Training (``loss``) is denoising: a share of each user's history is hidden from the encoder
(at random, or the most recent items for a temporal task) and the model predicts the whole
history with a softmax over the full catalogue (or a sampled softmax / BPR).

The model contract is ``loss(batch)``, ``score(users, items)`` and ``full_scores(users)``.
Ranking is always over the full catalogue with each user's seen items masked.

Inference on external ids after ``EmbeddingRecommender.load_from_checkpoint(path)``::

    model.recommend([1, 2, 3], k=10)                   # (3, 10) item ids, seen items excluded
    model.recommend_for_history([[31, 1029], []], k=5)  # cold-start users from their items

Unknown users (fallback, in this order):

1. a history is given for them (``recommend(..., histories=...)`` or
   ``recommend_for_history``) and the model has a history encoder → the history encoder, with
   the ``<unk>`` user embedding when the model also has user embeddings; with 1-10 known items
   plus a popularity prior whose weight, chosen on validation users, shrinks as the history grows
   (``cold_start_prior``, :meth:`EmbeddingRecommender.fit_cold_prior`);
2. otherwise → the most popular items of the training data (train + validation interactions),
   minus the given history when ``exclude_seen``.

The new-customer path is benchmarked on users held out of training (``data.test_users``,
``data.val_users``; experiments/bench_recsys_coldstart.py); such users are not in the model's user
vocabulary, so ``recommend`` treats their ids as unknown.

Unknown item ids inside histories are ignored. Ids are matched by their :func:`id_key`: 5, '5',
5.0, '5.0' and ' 5 ' are one id; '007' is an id of its own unless the vocabulary holds numbers.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from clm_torch.data.interactions import N_AGE_BUCKETS, csr_gather
from clm_torch.lifecycle.report import TOP_ITEMS_SEP
from clm_torch.metrics import RankingMetrics, dense_targets
from clm_torch.models.base import CLMModule
from clm_torch.models.components.recsys import HistoryEncoder, ItemTower, ragged_rows
from clm_torch.utils.progress import chunks

log = logging.getLogger(__name__)

USER_ENCODERS = ("history", "embedding", "both")
COLD_PRIORS = ("auto", "off")
# history lengths n at which the cold-start popularity prior's weight w(n) is chosen on validation data;
# between them w is interpolated linearly, beyond the last it is 0 (a longer history speaks for itself)
COLD_PRIOR_SIZES = (1, 2, 3, 5, 10)
# simulated histories per size (validation users × draws): each validation epoch ranks them once per weight
_COLD_PRIOR_ROWS = 256
# items ranked per simulated history when choosing: the best by the model's score and the most popular
_COLD_PRIOR_CANDIDATES = 200
# candidate weights, in units of the spread (median per-user standard deviation) of the model's scores
_COLD_PRIOR_GRID = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0)
LOSSES = ("softmax", "sampled_softmax", "bpr")
TARGETS = ("all", "dropped")

# The item-item term at a subset of the items is summed into a (B, subset) matrix only when the full
# (B, n_items) matrix is this many times larger than the batch's history × neighbour triples; below
# that, masking the triples costs more than the full matrix saves (MovieLens: 0.87x at batch 128).
_FULL_TERM_RATIO = 4
# score() and the BPR loss take the (B, distinct items) product of user and item vectors up to this many
# cells (64 MB in fp32; a BLAS product, faster than per-pair dot products), and per-pair dot products beyond.
_SCORE_MATRIX_CELLS = 1 << 24


def _check_k(k: int, n_items: int) -> int:
    """``k`` capped at the catalogue size; ValueError unless it is a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(min(k, n_items))


def _check_histories(histories: Any, n: int | None = None) -> list[Sequence[Any] | None]:
    """``histories`` as a list taken by position (a Series' index is ignored), one item-id sequence
    (or None) per user; a bare string is refused (it would be read as a sequence of characters)."""
    if isinstance(histories, (str, bytes)) or not hasattr(histories, "__iter__"):
        raise ValueError(f"histories must be a list of item-id lists, one per user, not {histories!r}")
    out = list(histories)
    if n is not None and len(out) != n:
        raise ValueError(f"histories has {len(out)} entries for {n} user ids")
    for j, h in enumerate(out):
        if isinstance(h, (str, bytes)):
            raise ValueError(f"histories[{j}] is the string {h!r}; pass a list of item ids, e.g. [{h!r}]")
        if h is not None and not hasattr(h, "__len__"):
            raise ValueError(f"histories[{j}] is {h!r}, not a list of item ids: histories holds one list per user, "
                             f"e.g. [[{h!r}, ...]] for one user")
    return out


def _indices(values: Any, n: int, what: str) -> torch.Tensor:
    """Internal indices (not external ids) from a list or array, checked against ``[0, n)``."""
    try:
        t = torch.as_tensor(np.asarray(values), dtype=torch.long)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be internal indices (integers; use recommend() for external ids): {e}") \
            from None
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise ValueError(f"{what} must be internal indices in [0, {n}) (use recommend() for external ids), got "
                         f"values from {int(t.min())} to {int(t.max())}")
    return t


def _check_user_ids(user_ids: Any) -> list[Any]:
    """``user_ids`` as a list; a single id (a string or a number) is refused, not split into characters."""
    if isinstance(user_ids, (str, bytes)) or not hasattr(user_ids, "__iter__"):
        raise ValueError(f"user_ids must be a list of ids, not the single id {user_ids!r}; pass [{user_ids!r}]")
    if isinstance(user_ids, pd.DataFrame):  # iterating it gives its column names, not its rows
        raise ValueError(f"user_ids must be one column of ids, not a DataFrame (columns {list(user_ids.columns)}); "
                         "pass the id column, e.g. df['customer_id']")
    if getattr(user_ids, "ndim", 1) != 1:  # a (n, 1) array from df[['customer_id']].to_numpy()
        raise ValueError(f"user_ids must be one-dimensional, got an array of shape {tuple(user_ids.shape)}; pass "
                         "one column of ids, e.g. arr.ravel()")
    return list(user_ids)


# text spelling a whole number: an optional sign, digits, an optional '.0…' (a float column written to a file)
_WHOLE_TEXT = re.compile(r"([+-]?)([0-9]+)(?:\.0+)?")


def id_key(v: Any, numeric: bool = False) -> Any:
    """The canonical key of an external id, so that one id has one key however it is spelt.

    Whole numbers (ints, whole floats such as 5.0 from a column that a missing value made float,
    NumPy numbers) and text spelling one ('5', ' 5 ', '5.0' as a float column is written to a file,
    '-3') are the int; other text is its stripped text (the data side strips ids too); anything
    else is itself.

    Leading zeros (and a '+') are significant in text: '007' is its own id, not 7 nor '7', because
    a file's ids are read as text so that the zeros survive and '007' and '7' are two users there
    (``_id_values``). Only against a vocabulary of numbers (``numeric``: the log was read as
    numbers, so '007' cannot be one of its ids) is such text read as the number it spells ('007'
    is 7, '+5' is 5), as an item table's text ids are read against a numeric log
    (``_match_item_ids``). The same ``numeric`` applies to both sides of one look-up.
    """
    if isinstance(v, str):
        text = v.strip()
        m = _WHOLE_TEXT.fullmatch(text)
        if m and (numeric or (m.group(1) != "+" and (m.group(2) == "0" or not m.group(2).startswith("0")))):
            return int(text.split(".", 1)[0])
        return text
    if isinstance(v, (bool, np.bool_)):
        return v if numeric else str(bool(v))  # True is the text 'True' of a file's column
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
        return int(v)
    if isinstance(v, (float, np.floating)) and not numeric:
        return str(float(v))  # 5.5 against text ids is the text '5.5'
    return v


class EmbeddingRecommender(CLMModule):
    """Item embeddings (+ item features) scored against user vectors from a history encoder and/or
    a user embedding.

    Args:
        n_users: user vocabulary size, ``<unk>`` (index 0) included (from the DataModule).
        n_items: catalogue size (from the DataModule).
        item_n_num, item_cat_cardinalities, item_n_labels: item feature sizes (from the DataModule).
        n_age_buckets: recency buckets of history items (from the DataModule).
        item_n_neighbors: co-occurrence neighbours per item (from the DataModule; 0 = none).
        d: embedding size.
        user_encoder: ``history`` | ``embedding`` | ``both``.
        hidden: hidden layer sizes after the history pooling (empty = Mult-DAE's single layer).
        tie_embeddings: share the input (history) and output item embeddings.
        use_item_features: add the item-feature projection to item vectors.
        recency: learn a weight per recency bucket of history items.
        neighborhood: add a learned item-item term over each history item's co-occurrence
            neighbours (Koren's "factorization meets the neighborhood"; EASE restricted to
            ``item_n_neighbors`` pairs per item, the diagonal excluded). Needs a history encoder.
        loss: ``softmax`` (full catalogue) | ``sampled_softmax`` | ``bpr``.
        n_negatives: uniform negatives per batch for ``sampled_softmax`` (0 = in-batch only) and
            per positive for ``bpr``.
        logq_correction: subtract log(inclusion probability) from sampled logits.
        input_dropout: share of history items dropped from the encoder's input while training.
        dropout_mode: which items are dropped: ``random`` (each with probability ``input_dropout``),
            ``recent`` (per user, the most recent share u·2·input_dropout, u ~ U(0, 1), so that the
            model learns to predict what comes next), ``mixed`` (half the users each way) or ``auto``
            (``recent`` when the DataModule's protocol is temporal, else ``random``).
        target: ``all`` (predict the whole history, Mult-DAE) or ``dropped`` (only the dropped items).
        loss_norm: ``interaction`` (every target interaction weighs the same: heavy users dominate, as
            in Mult-VAE) or ``user`` (every user weighs the same, as in the per-user metrics).
        user_dropout: probability that a training user is replaced by ``<unk>`` (teaches the
            ``<unk>`` user embedding used for unknown users).
        dropout: dropout inside the history MLP.
        lr, weight_decay, embedding_weight_decay, scheduler: AdamW settings.
        neighbor_lr, neighbor_weight_decay: learning rate (None = ``lr``) and weight decay of the
            item-item weights, which start at zero and need to grow faster than the embeddings.
        ease_weight: weight of a closed-form EASE term (Steck 2019) added to the ranking scores
            (0 = off). Its item-item matrix (n_items², zero diagonal) is solved once at the start
            of fit on the DataModule's training interactions (``fit_ease``) and is never trained:
            the embeddings are trained without it and the two are ensembled at scoring time
            (validation, test, ``recommend``), with this weight. Needs a history.
        ease_l2: EASE's L2 penalty λ.
        scheduler_epochs: length of the cosine schedule (None = ``trainer.max_epochs``), so that a
            refit stopped at the tuned epoch follows the tuned schedule.
        cold_start_prior: ``auto`` | ``off``. ``auto``: a user without an id (``recommend_for_history``,
            or an unknown id given a history; the ``<unk>`` rows of held-out test users) with n ≤ 10
            known items is ranked by ``score + w(n) · z`` with z the standardised log popularity of
            the training interactions (``train_counts``) and w(n) chosen at the end of every
            validation epoch on validation users (:meth:`fit_cold_prior`), so every checkpoint holds
            the weights chosen for its own parameters (the ``cold_prior`` buffer). Known users and
            the validation metrics are never affected. ``off``: no prior (weights stay 0).
        ks: metric cut-offs.
        nan_policy: ``raise`` | ``skip`` | ``off`` on a non-finite training loss.
    """

    monitor = "val/ndcg@10"
    monitor_mode = "max"
    data_kind = "interactions"
    # state a checkpoint from an older version may lack (filled in by _upgrade_state)
    optional_state_keys = ("cold_prior",)

    @staticmethod
    def _upgrade_state(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        """A checkpoint from before the cold-start prior loads with its weights 0 (no prior)."""
        state_dict.setdefault(prefix + "cold_prior", torch.zeros_like(module.cold_prior))

    def __init__(
        self,
        n_users: int,
        n_items: int,
        item_n_num: int = 0,
        item_cat_cardinalities: Sequence[int] = (),
        item_n_labels: int = 0,
        n_age_buckets: int = N_AGE_BUCKETS,
        item_n_neighbors: int = 0,
        d: int = 256,
        user_encoder: str = "history",
        hidden: Sequence[int] = (),
        tie_embeddings: bool = False,
        use_item_features: bool = True,
        recency: bool = True,
        neighborhood: bool = True,
        loss: str = "softmax",
        n_negatives: int = 1024,
        logq_correction: bool = True,
        input_dropout: float = 0.5,
        dropout_mode: str = "random",
        target: str = "all",
        loss_norm: str = "interaction",
        user_dropout: float = 0.1,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        embedding_weight_decay: float = 0.0,
        neighbor_lr: float | None = None,
        neighbor_weight_decay: float = 0.0,
        ease_weight: float = 0.0,
        ease_l2: float = 300.0,
        scheduler: str = "none",
        scheduler_epochs: int | None = None,
        cold_start_prior: str = "auto",
        ks: Sequence[int] = (10, 20),
        nan_policy: str = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, value, allowed in (("user_encoder", user_encoder, USER_ENCODERS), ("loss", loss, LOSSES),
                                     ("target", target, TARGETS), ("loss_norm", loss_norm, ("interaction", "user")),
                                     ("dropout_mode", dropout_mode, ("random", "recent", "mixed", "auto")),
                                     ("cold_start_prior", cold_start_prior, COLD_PRIORS)):
            if value not in allowed:
                raise ValueError(f"model.{name} must be one of {allowed}, not {value!r}")
        self.n_users, self.n_items, self.d = int(n_users), int(n_items), int(d)
        cards = list(item_cat_cardinalities)
        self.item_out = ItemTower(n_items, d, item_n_num, cards, item_n_labels, use_item_features)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.uses_history = user_encoder in ("history", "both")
        self.uses_embedding = user_encoder in ("embedding", "both")
        if self.uses_history:
            self.item_in = self.item_out if tie_embeddings else ItemTower(n_items, d, item_n_num, cards,
                                                                          item_n_labels, use_item_features)
            self.history = HistoryEncoder(d, d, list(hidden), n_age_buckets, dropout, recency)
        self.uses_neighbors = bool(neighborhood and self.uses_history and item_n_neighbors > 0)
        if self.uses_neighbors:
            self.neighbor_embed = nn.Embedding(n_items, int(item_n_neighbors))  # W[j, m]: item j → its m-th neighbour
            nn.init.zeros_(self.neighbor_embed.weight)
        self.uses_ease = float(ease_weight) > 0
        if self.uses_ease:  # closed-form, fitted by fit_ease (on_fit_start); saved with the weights
            self.register_buffer("ease_matrix", torch.zeros(n_items, n_items))
        if self.uses_embedding:
            self.user_embed = nn.Embedding(n_users, d)
            nn.init.normal_(self.user_embed.weight, std=1.0 / math.sqrt(d))
        # w(n) of the cold-start popularity prior for n = 1 … COLD_PRIOR_SIZES[-1] known items (0 = none);
        # chosen on validation data (fit_cold_prior); a checkpoint from before it loads with zeros
        self.register_buffer("cold_prior", torch.zeros(COLD_PRIOR_SIZES[-1]))
        self.register_load_state_dict_pre_hook(EmbeddingRecommender._upgrade_state)
        self._cold_cases: tuple[Any, list[tuple[int, dict[str, Any]]]] | None = None  # fit_cold_prior's draws
        self.metrics = nn.ModuleDict({s: RankingMetrics(n_items, ks) for s in ("val", "test")})
        self.user_index: pd.Index | None = None
        self.item_index: pd.Index | None = None
        # id_key look-up per vocabulary (see _id_keys): derived from the vocabularies, never saved
        self._id_key_cache: dict[int, tuple[pd.Index, tuple[pd.Index, np.ndarray, bool]]] = {}

    # ------------------------------------------------------------------ preprocessing
    def _on_preprocessing(self) -> None:
        p = self.preprocessing
        for name in ("seen_indptr", "seen_indices", "seen_age", "all_indptr", "all_indices", "all_age",
                     "popularity", "train_counts", "item_num",
                     "item_num_mask", "item_cat", "item_label_indptr", "item_label_indices", "item_neighbors"):
            t = p.get(name, torch.zeros(self.n_items, 0, dtype=torch.long))
            device = self.item_bias.device
            if name in self._buffers:
                self._buffers[name] = t.to(device)
            else:
                self.register_buffer(name, t.to(device), persistent=False)
        self.user_index = pd.Index(p["user_ids"][1:])
        self.item_index = pd.Index(p["item_ids"])
        self._id_key_cache = {}  # keys of the old vocabularies: rebuilt at the next look-up

    def _require_preprocessing(self) -> None:
        if self.user_index is None:
            raise RuntimeError("this model has no vocabularies; load it from a clm_torch checkpoint or call "
                               "set_preprocessing(datamodule.preprocessing_state())")

    def _features(self) -> dict[str, torch.Tensor] | None:
        if "item_num" not in self._buffers:
            return None
        return {"num": self.item_num, "num_mask": self.item_num_mask, "cat": self.item_cat,
                "label_offsets": self.item_label_indptr, "labels": self.item_label_indices}

    # ------------------------------------------------------------------ the model
    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Output item vectors (m, d) for ``items`` (m,), or the whole catalogue (n_items, d)."""
        return self.item_out(items, self._features())

    def user_vectors(self, batch: dict[str, torch.Tensor], *, drop_users: bool = False) -> torch.Tensor:
        """User vectors (B, d) from ``user`` (B,) and the ragged history ``hist_items`` / ``hist_offsets``
        / ``hist_age`` (nnz,) (see :mod:`clm_torch.data.interactions`)."""
        users = batch["user"]
        B = len(users)
        u = None
        if self.uses_history:
            items = batch["hist_items"]
            rows = batch.get("hist_rows")
            if rows is None:
                rows = ragged_rows(batch["hist_offsets"], len(items))
            vec = self.item_in(items, self._features())
            u = self.history(vec, rows, batch["hist_age"], B)
        if self.uses_embedding:
            if drop_users and self.hparams.user_dropout > 0:
                users = users.masked_fill(torch.rand(B, device=users.device) < self.hparams.user_dropout, 0)
            e = self.user_embed(users)
            u = e if u is None else u + e.to(u.dtype)
        return u

    def neighbor_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The item-item term (B, n_items): Σ over history items j of W[j, m] at j's m-th neighbour,
        recency-weighted and divided by sqrt(history length); None without a neighbourhood."""
        if not self.uses_neighbors:
            return None
        rows, nbr, w = self._neighbor_terms(batch)
        out = torch.zeros(len(batch["user"]), self.n_items, device=w.device, dtype=w.dtype)
        return out.index_put((rows[:, None].expand_as(nbr), nbr), w, accumulate=True)

    def _neighbor_terms(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The item-item term as (user row (nnz,), neighbour item (nnz, M), weight (nnz, M)) triples."""
        items = batch["hist_items"]
        B = len(batch["user"])
        rows = batch.get("hist_rows")
        if rows is None:
            rows = ragged_rows(batch["hist_offsets"], len(items))
        nbr = self.item_neighbors[items]  # (nnz, M)
        w = self.neighbor_embed(items).float()  # (nnz, M)
        scale = torch.bincount(rows, minlength=B).clamp(min=1).float().rsqrt()[rows]
        if self.history.recency is not None:
            scale = scale * torch.exp(self.history.recency[batch["hist_age"]]).float()
        return rows, nbr, (w * scale[:, None]).masked_fill(nbr == items[:, None], 0.0)

    def ease_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The EASE term (B, n_items): ``ease_weight`` × Σ over the (deduplicated) history items j of
        B[j, :]; None when ``ease_weight`` is 0."""
        if not self.uses_ease:
            return None
        return self._ease_sum(batch, self.ease_matrix)

    def _ease_sum(self, batch: dict[str, torch.Tensor], matrix: torch.Tensor) -> torch.Tensor:
        """``ease_weight`` × the sum of ``matrix``'s rows (n_items, k) over each user's history: (B, k)."""
        items, off = batch["hist_items"], batch["hist_offsets"]
        B = len(off) - 1
        out = F.embedding_bag(items, matrix, off[:-1], mode="sum")
        if out.shape[0] < B:  # torch drops trailing empty bags in some versions; pad
            out = torch.cat([out, out.new_zeros(B - out.shape[0], out.shape[1])])
        return out.float() * float(self.hparams.ease_weight)

    def _restricted_is_cheaper(self, batch: dict[str, torch.Tensor], cols: torch.Tensor) -> bool:
        """Whether summing the item-item term at ``cols`` only beats building the full term: ``cols``
        covers under half the catalogue and the (B, n_items) matrix is at least ``_FULL_TERM_RATIO`` ×
        the batch's history × neighbour triples."""
        B, K = len(batch["user"]), len(batch["hist_items"]) * self.item_neighbors.shape[1]
        return 2 * len(cols) < self.n_items and B * self.n_items >= _FULL_TERM_RATIO * K

    def _neighbor_cols(self, batch: dict[str, torch.Tensor], cols: torch.Tensor) -> torch.Tensor:
        """``neighbor_scores(batch)[:, cols]`` (B, len(cols)) for sorted distinct items ``cols``: summed
        from the triples that land in ``cols`` only where that is cheaper, else gathered from the full
        term."""
        if not self._restricted_is_cheaper(batch, cols):
            return self.neighbor_scores(batch)[:, cols]
        rows, nbr, w = self._neighbor_terms(batch)
        col_of = torch.full((self.n_items,), -1, dtype=torch.long, device=cols.device)
        col_of[cols] = torch.arange(len(cols), device=cols.device)
        c = col_of[nbr]  # (nnz, M): the neighbour's column, -1 if not asked for
        keep = c >= 0
        out = torch.zeros(len(batch["user"]), len(cols), device=w.device, dtype=w.dtype)
        return out.index_put((rows[:, None].expand_as(nbr)[keep], c[keep]), w[keep], accumulate=True)

    def _terms_at(self, batch: dict[str, torch.Tensor], cols: torch.Tensor, inv: torch.Tensor,
                  rows: torch.Tensor | None = None, ease: bool = True) -> torch.Tensor | None:
        """The item-item term (and, with ``ease``, the EASE term) at items ``cols[inv]`` (R, m)
        (``cols, inv = torch.unique(items, return_inverse=True)``) of the users at batch positions
        ``rows`` (R,) (default: one row per user). Summed for the distinct items ``cols`` only where
        that is cheaper than the full (B, n_items) terms; None when the model has neither term.
        Differentiable in the item-item weights."""
        ease = ease and self.uses_ease
        if not (self.uses_neighbors or ease):
            return None
        rows = (torch.arange(len(inv), device=inv.device) if rows is None else rows)[:, None]
        total = 0.0
        if self.uses_neighbors:
            total = self._neighbor_cols(batch, cols)[rows, inv]
        if ease:
            if 2 * len(cols) < self.n_items:  # the history's rows summed over those columns only
                total = total + self._ease_sum(batch, self.ease_matrix[:, cols])[rows, inv]
            else:
                total = total + self._ease_sum(batch, self.ease_matrix)[rows, cols[inv]]
        return total

    @torch.no_grad()
    def fit_ease(self, indptr: torch.Tensor, items: torch.Tensor) -> None:
        """Solve the EASE item-item matrix on interactions given as a user CSR (``indptr`` (U+1,),
        ``items`` (nnz,)): B = I − P / diag(P) with P = (XᵀX + λI)⁻¹, λ = ``ease_l2``, diag(B) = 0.
        Solved in user space (Woodbury: λP = I − Xᵀ (λI + XXᵀ)⁻¹ X), cheap with few users; with
        more users than items the item-space inverse is used."""
        if not self.uses_ease:
            raise RuntimeError("fit_ease needs model.ease_weight > 0")
        lam = float(self.hparams.ease_l2)
        indptr, items = torch.as_tensor(indptr).cpu(), torch.as_tensor(items).cpu()
        rows = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr[1:] - indptr[:-1])
        X = torch.zeros(len(indptr) - 1, self.n_items, dtype=torch.float64)
        X[rows, items] = 1.0
        X = X[X.sum(1) > 0]
        if len(X) < self.n_items:
            K = X @ X.T
            K.diagonal().add_(lam)
            P = -(X.T @ torch.linalg.solve(K, X))  # λP − I
            P.diagonal().add_(1.0)
        else:
            G = X.T @ X
            G.diagonal().add_(lam)
            P = torch.linalg.inv(G)
        B = -P / P.diagonal()[None]
        B.diagonal().zero_()
        self.ease_matrix.copy_(B.to(self.ease_matrix.dtype))

    def on_fit_start(self) -> None:
        """``ease_weight > 0``: solve the EASE matrix on the DataModule's training interactions (train,
        or train + validation when refitting); a resumed run keeps its matrix."""
        if not self.uses_ease or bool(self.ease_matrix.any()):
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or "train" not in getattr(dm, "tables", {}):
            raise RuntimeError("model.ease_weight > 0 needs an InteractionDataModule (its training interactions)")
        indptr, vals = dm.tables["train"].ragged["target"]
        self.fit_ease(indptr, vals["items"])

    def full_scores(self, users: torch.Tensor | dict[str, torch.Tensor], *, cold_prior: bool = True) -> torch.Tensor:
        """Scores (B, n_items) over the whole catalogue (seen items not masked), the EASE term included,
        and for ``<unk>`` rows with a short history the cold-start popularity prior (``cold_prior``).

        ``users`` is a user batch dict, or a (B,) tensor of user indices whose history is taken
        from the checkpoint's seen-item index.
        """
        batch = self._as_batch(users)
        logits = self._full_logits(self.user_vectors(batch), batch)
        ease = self.ease_scores(batch)
        out = logits if ease is None else logits + ease
        w = self._cold_prior_weights(batch) if cold_prior else None
        return out if w is None else out + w[:, None] * self._popularity_z()[None]

    # ------------------------------------------------------------------ cold-start popularity prior
    def _popularity_z(self) -> torch.Tensor:
        """The prior's popularity term (n_items,): log(1 + training count), standardised over the catalogue."""
        z = torch.log1p(self.train_counts.float())
        return (z - z.mean()) / z.std().clamp(min=1e-12)

    def _cold_prior_weights(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """w(n) per row (B,) for the ``<unk>`` rows of ``batch`` with n = 1 … len(cold_prior) history
        items, 0 for the others; None when no row gets a prior (``off``, weights 0, known users)."""
        if self.hparams.get("cold_start_prior", "auto") == "off" or not bool(self.cold_prior.any()) \
                or getattr(self, "train_counts", None) is None or self.train_counts.shape != (self.n_items,):
            return None
        off = batch["hist_offsets"]
        lens = off[1:] - off[:-1]
        table = self.cold_prior
        use = (batch["user"] == 0) & (lens >= 1) & (lens <= len(table))
        w = torch.where(use, table[(lens - 1).clamp(0, len(table) - 1)], torch.zeros((), device=table.device))
        return w if bool(use.any()) else None

    @torch.no_grad()
    def fit_cold_prior(self, table: Any, seed: int = 0, max_users: int = _COLD_PRIOR_ROWS) -> dict[int, float]:
        """Choose the cold-start prior's weights w(n) on a validation table and store them in ``cold_prior``.

        Short histories are simulated from the table's users (at most ``max_users``, drawn with
        ``seed``): validation users held out of training (their rows carry ``<unk>``) give a random
        n of all their items as the history and the rest as targets; validation users who train
        (the per-user split) give a random n of their training items as the history and their
        validation items as targets (their other training items are neither: masked). For each n of
        :data:`COLD_PRIOR_SIZES`, the weight of the grid with the best NDCG@10 (the smallest on a tie)
        is chosen; the weights are then made non-increasing in n, interpolated between the sizes,
        and 0 beyond the last. Seeded, so one model and table always give the same weights.

        Returns:
            {n: w(n)} at the simulated sizes (an empty dict when the table has no user to simulate).
        """
        was = self.training
        self.eval()
        z = self._popularity_z()
        chosen: dict[int, float] = {}
        disc = 1.0 / torch.log2(torch.arange(2, 12, device=z.device, dtype=torch.float32))
        c = min(_COLD_PRIOR_CANDIDATES, self.n_items)
        z_top = torch.topk(z, c).indices  # the most popular items
        for n, case in self._cold_prior_cases(table, seed, max_users):
            raw = self.full_scores(case["batch"], cold_prior=False)
            scale = float(raw.std(1).median().clamp(min=1e-6))
            raw = raw.masked_fill(case["exclude"], float("-inf"))
            targets = case["targets"]
            ideal = torch.cumsum(disc, 0)[(targets.sum(1).clamp(max=10) - 1).clamp(min=0)]
            # a top-10 of score + w·z comes from the best items by score or by popularity: rank those
            # candidates (each item once per row) instead of the whole catalogue, once per weight
            s_top = torch.topk(raw, c, dim=1).indices
            dup = torch.zeros_like(case["exclude"]).scatter_(1, s_top, True)[:, z_top]
            cand = torch.cat([s_top, z_top[None].expand(len(raw), -1)], 1)
            cand_s = torch.cat([raw.gather(1, s_top), raw[:, z_top].masked_fill(dup, float("-inf"))], 1)
            cand_z, hit = z[cand], targets.gather(1, cand).float()
            best, best_w, k = -1.0, 0.0, min(10, cand.shape[1])
            for a in _COLD_PRIOR_GRID:
                top = torch.topk(cand_s + (a * scale) * cand_z, k, dim=1).indices
                ndcg = float((hit.gather(1, top) @ disc[:k] / ideal).mean())  # NDCG@10
                if ndcg > best + 1e-12:
                    best, best_w = ndcg, a * scale
            chosen[n] = best_w
        self.train(was)
        if not chosen:
            return chosen
        sizes = sorted(chosen)
        ws = np.minimum.accumulate([chosen[n] for n in sizes])  # never more prior for a longer history
        table_w = np.interp(np.arange(1, len(self.cold_prior) + 1), sizes, ws, right=0.0)
        table_w[np.arange(1, len(self.cold_prior) + 1) > sizes[-1]] = 0.0
        self.cold_prior.copy_(torch.as_tensor(table_w, dtype=self.cold_prior.dtype))
        return {n: float(w) for n, w in zip(sizes, ws)}

    def _cold_prior_cases(self, table: Any, seed: int, max_users: int) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """The simulated short histories of :meth:`fit_cold_prior`, per size n: a ragged ``<unk>`` batch,
        the (R, n_items) ``exclude`` and ``targets`` masks. Drawn once per table (kept on the model,
        never saved)."""
        if self._cold_cases is not None and self._cold_cases[0] is table:
            return self._cold_cases[1]
        rng = np.random.default_rng((seed, 7))
        m = len(table)
        users = np.sort(rng.choice(m, size=min(m, max_users), replace=False)) if m else np.zeros(0, np.int64)
        b = table[torch.as_tensor(users, dtype=torch.long)]
        held_out = bool((b["user"] == 0).all())
        hoff, toff = b["hist_offsets"].cpu().numpy(), b["target_offsets"].cpu().numpy()
        hitems, titems = b["hist_items"].cpu().numpy(), b["target_items"].cpu().numpy()
        repeats = max(1, min(8, -(-_COLD_PRIOR_ROWS // max(len(users), 1))))
        max_rows = max(64, min(_COLD_PRIOR_ROWS, (1 << 25) // max(self.n_items, 1)))
        dev = self.item_bias.device
        cases = []
        for n in COLD_PRIOR_SIZES:
            given, excl, tgt = [], [], []
            for r in range(len(users)):
                h, t = hitems[hoff[r]: hoff[r + 1]], titems[toff[r]: toff[r + 1]]
                pool = np.concatenate([h, t]) if held_out else h
                if len(pool) < n + (1 if held_out else 0) or (not held_out and len(t) == 0):
                    continue
                for _ in range(repeats):
                    pick = np.zeros(len(pool), bool)
                    pick[rng.choice(len(pool), size=n, replace=False)] = True
                    given.append(pool[pick])  # in the pool's order (oldest → newest within each part)
                    excl.append(pool[pick] if held_out else h)
                    tgt.append(pool[~pick] if held_out else t)
            if not given:
                continue
            if len(given) > max_rows:  # many validation users or a huge catalogue: a sample of the rows
                keep = np.sort(rng.choice(len(given), size=max_rows, replace=False))
                given, excl, tgt = [given[j] for j in keep], [excl[j] for j in keep], [tgt[j] for j in keep]
            batch = self._code_batch(given)
            cases.append((n, {"batch": batch, "exclude": _dense(excl, self.n_items, dev),
                              "targets": _dense(tgt, self.n_items, dev)}))
        self._cold_cases = (table, cases)
        return cases

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")
        trainer = self._trainer
        if (self.hparams.get("cold_start_prior", "auto") != "auto" or not self.uses_history or trainer is None
                or trainer.sanity_checking or trainer.state.fn != "fit"):
            return
        table = getattr(getattr(trainer, "datamodule", None), "tables", {}).get("val")
        counts = getattr(self, "train_counts", None)
        if table is not None and len(table) and counts is not None and counts.shape == (self.n_items,):
            chosen = self.fit_cold_prior(table)
            log.debug("cold-start prior w(n) at epoch %d: %s", self.current_epoch, chosen)

    def _full_logits(self, u: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = (u @ self.item_vectors().to(u.dtype).T).float() + self.item_bias
        nb = self.neighbor_scores(batch)
        return logits if nb is None else logits + nb

    def score(self, users: torch.Tensor | dict[str, torch.Tensor], items: torch.Tensor) -> torch.Tensor:
        """Scores (B, m) of ``items`` (B, m) for ``users`` (a batch dict or (B,) user indices): the
        entries of :meth:`full_scores` at ``items``, computed for those items only."""
        batch = self._as_batch(users)
        if not isinstance(items, torch.Tensor):  # notebook input: check what training never needs checked
            items = _indices(items, self.n_items, "items")
            if items.dim() != 2 or len(items) != len(batch["user"]):
                raise ValueError(f"items must be (users, m) item indices, got shape {tuple(items.shape)} for "
                                 f"{len(batch['user'])} users")
            items = items.to(self.item_bias.device)
        u = self.user_vectors(batch)
        cols, inv = torch.unique(items, return_inverse=True)
        out = self._dots_at(u, cols, inv) + self.item_bias[items]
        terms = self._terms_at(batch, cols, inv)
        out = out if terms is None else out + terms
        w = self._cold_prior_weights(batch)
        return out if w is None else out + w[:, None] * self._popularity_z()[items]

    def _dots_at(self, u: torch.Tensor, cols: torch.Tensor, inv: torch.Tensor,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
        """Float dot products (R, m) of user vectors ``u[rows]`` (default: one row per user) with the
        vectors of items ``cols[inv]``; each distinct item's vector is computed once. Up to
        ``_SCORE_MATRIX_CELLS`` cells, one (B, distinct items) matrix product and a gather."""
        v = self.item_vectors(cols).to(u.dtype)
        rows = torch.arange(len(inv), device=inv.device) if rows is None else rows
        if len(u) * len(cols) <= _SCORE_MATRIX_CELLS:
            return (u @ v.T).float()[rows[:, None], inv]
        return (u[rows][:, None, :] * v[inv]).sum(-1).float()

    def history_csr(self, everything: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every known user's history as CSR ``(indptr, items, age buckets)``: the train + validation
        items, or with ``everything`` every interaction of the training log (what :meth:`recommend`
        serves from and excludes; checkpoints from before it fall back to train + validation)."""
        src = "all" if everything and getattr(self, "all_indptr", None) is not None and self.all_indptr.numel() \
            else "seen"
        return tuple(getattr(self, f"{src}_{k}") for k in ("indptr", "indices", "age"))

    def _as_batch(self, users: torch.Tensor | dict[str, torch.Tensor], *, everything: bool = False
                  ) -> dict[str, torch.Tensor]:
        """A ragged batch of known users with their histories: the train + validation items (what the
        evaluation hides the test items from), or with ``everything`` every interaction of the
        training log (what :meth:`recommend` serves from; checkpoints from before it fall back)."""
        if isinstance(users, dict):
            return users
        self._require_preprocessing()
        if not isinstance(users, torch.Tensor):
            users = _indices(users, self.n_users, "users")
        users = users.to(self.item_bias.device)
        indptr, items, age = self.history_csr(everything)
        pos, offsets = csr_gather(indptr.cpu(), users.cpu())
        pos, offsets = pos.to(users.device), offsets.to(users.device)
        return {"user": users, "hist_items": items[pos], "hist_age": age[pos], "hist_offsets": offsets}

    # ------------------------------------------------------------------ losses
    def loss(self, batch: dict[str, torch.Tensor], *, train: bool = True) -> torch.Tensor:
        """The training loss of a user batch (scalar).

        While training, ``input_dropout`` of the history is hidden from the encoder; the targets
        are the batch's ``target_*`` items (``target=all``) or only the hidden ones (``dropped``).
        """
        hp = self.hparams
        B = len(batch["user"])
        hist_rows = ragged_rows(batch["hist_offsets"], len(batch["hist_items"]))
        t_items, t_w = batch["target_items"], batch["target_weight"]
        t_rows = ragged_rows(batch["target_offsets"], len(t_items))
        enc = dict(batch)
        if train and self.uses_history and hp.input_dropout > 0:
            keep = self._keep_mask(batch["hist_offsets"], hist_rows)
            enc.update(hist_items=batch["hist_items"][keep], hist_age=batch["hist_age"][keep],
                       hist_rows=hist_rows[keep])
            if hp.target == "dropped" and len(t_items) == len(keep):
                t_items, t_w, t_rows = t_items[~keep], t_w[~keep], t_rows[~keep]
        else:
            enc["hist_rows"] = hist_rows
        u = self.user_vectors(enc, drop_users=train)
        if len(t_items) == 0:
            return u.sum() * 0.0
        if hp.loss == "softmax":
            logp = torch.log_softmax(self._full_logits(u, enc), 1)
            nll = -logp[t_rows, t_items]
        elif hp.loss == "sampled_softmax":
            nll = self._sampled_softmax(u, t_rows, t_items, enc)
        else:
            nll = self._bpr(u, t_rows, t_items, enc)
        if hp.loss_norm == "user":  # every user counts the same, whatever the length of their history
            per_user = torch.zeros(B, device=t_w.device, dtype=t_w.dtype).index_add(0, t_rows, t_w)
            t_w = t_w / per_user[t_rows].clamp(min=1e-12)
        return (nll * t_w).sum() / t_w.sum().clamp(min=1e-12)

    def _keep_mask(self, offsets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Which history entries (nnz,) the encoder sees while training (see ``dropout_mode``).

        History entries of a user are ordered oldest → newest (the DataModule's CSR order)."""
        p, mode = float(self.hparams.input_dropout), self.hparams.dropout_mode
        if mode == "auto":
            mode = "recent" if self.preprocessing.get("protocol") == "temporal" else "random"
        dev = rows.device
        keep = torch.rand(len(rows), device=dev) >= p
        if mode == "random":
            return keep
        B = len(offsets) - 1
        lens = (offsets[1:] - offsets[:-1]).float()
        from_newest = (offsets[1:][rows] - 1 - torch.arange(len(rows), device=dev)).float()  # 0 = most recent
        share = (torch.rand(B, device=dev) * 2 * p).clamp(max=0.9)
        recent_keep = from_newest >= torch.ceil(share * lens)[rows]
        if mode == "recent":
            return recent_keep
        user_recent = torch.rand(B, device=dev) < 0.5
        return torch.where(user_recent[rows], recent_keep, keep)

    def _sampled_softmax(self, u: torch.Tensor, t_rows: torch.Tensor, t_items: torch.Tensor,
                         batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Multinomial NLL (nnz,) over in-batch positives ∪ uniform negatives with a log-Q correction.
        With the item-item term (``batch``: the encoder's batch), it is added at the candidates only."""
        n_neg = int(self.hparams.n_negatives)
        cand = t_items
        if n_neg > 0:
            cand = torch.cat([cand, torch.randint(0, self.n_items, (n_neg,), device=u.device)])
        cand = torch.unique(cand)
        logits = (u @ self.item_vectors(cand).to(u.dtype).T).float() + self.item_bias[cand]
        if self.uses_neighbors and batch is not None:
            logits = logits + self._neighbor_cols(batch, cand)  # cand: sorted, distinct
        if self.hparams.logq_correction:
            counts = self.train_counts if "train_counts" in self._buffers else torch.ones(self.n_items,
                                                                                          device=u.device)
            p = (counts / counts.sum().clamp(min=1))[cand].clamp(min=1e-12)
            # probability that the candidate is in the set: drawn among the batch's positives or uniformly
            log_miss = len(t_items) * torch.log1p(-p.clamp(max=1 - 1e-7)) + n_neg * math.log1p(-1.0 / self.n_items)
            logits = logits - torch.log(-torch.expm1(log_miss)).clamp(min=-30.0)
        col = torch.searchsorted(cand, t_items)
        return -torch.log_softmax(logits, 1)[t_rows, col]

    def _bpr(self, u: torch.Tensor, t_rows: torch.Tensor, t_items: torch.Tensor,
             batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """BPR loss (nnz,): -log σ(s(u, i) − s(u, j)) with ``n_negatives`` uniform negatives j per positive;
        the item-item term (``batch``: the encoder's batch) is added at the scored pairs only."""
        m = max(1, min(int(self.hparams.n_negatives), 64))
        neg = torch.randint(0, self.n_items, (len(t_items), m), device=u.device)
        items = torch.cat([t_items[:, None], neg], 1)
        cols, inv = torch.unique(items, return_inverse=True)
        s = self._dots_at(u, cols, inv, t_rows) + self.item_bias[items]
        if self.uses_neighbors and batch is not None:
            s = s + self._terms_at(batch, cols, inv, t_rows, ease=False)
        return -F.logsigmoid(s[:, :1] - s[:, 1:]).mean(1)

    # ------------------------------------------------------------------ Lightning steps
    def model_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Training: the loss. Validation/test: full-catalogue scores with the history masked,
        metric update, and the full-softmax loss of the held-out items."""
        if stage == "train":
            return self.loss(batch, train=True)
        # validation scores the model's own ranking: the cold-start prior is chosen after it (fit_cold_prior)
        scores = self.full_scores(batch, cold_prior=stage != "val")
        seen = dense_targets(batch["hist_offsets"], batch["hist_items"], self.n_items)
        targets = dense_targets(batch["target_offsets"], batch["target_items"], self.n_items)
        self.metrics[stage].update(scores, targets, seen)
        t_rows = ragged_rows(batch["target_offsets"], len(batch["target_items"]))
        logp = torch.log_softmax(scores.masked_fill(seen, float("-inf")), 1)
        loss = -logp[t_rows, batch["target_items"]].mean()
        # weighted by the held-out items, so the epoch's value is their mean whatever the batch size
        n_targets = len(batch["target_items"])
        if n_targets:
            self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=n_targets, sync_dist=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        loss = self.model_step(batch, "train")
        self.add_train_terms(loss, len(batch["user"]))  # logged as train/loss at the epoch's end
        return self.guard_loss(loss, batch_idx)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.model_step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        self.metrics[stage].reset()
        for k, v in values.items():
            self.log(f"{stage}/{k}", v, prog_bar=k in ("ndcg@10", "recall@20"))

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def on_fit_end(self) -> None:
        """Item embeddings to TensorBoard's projector, with the item metadata (titles, genres)."""
        from lightning.pytorch.loggers import TensorBoardLogger

        dm = getattr(self.trainer, "datamodule", None)
        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or dm is None or not hasattr(dm, "item_metadata") or not self.trainer.is_global_zero:
            return
        meta = dm.item_metadata()
        with torch.no_grad():
            vec = self.item_vectors().float().cpu()
        header = list(meta.columns)
        rows = meta.astype(str).to_numpy().tolist() if len(header) > 1 else meta.iloc[:, 0].astype(str).tolist()
        for lg in loggers:
            try:
                lg.experiment.add_embedding(vec, metadata=rows, metadata_header=header if len(header) > 1 else None,
                                            tag="item_embeddings", global_step=self.global_step)
            except Exception as e:  # noqa: BLE001 - the projector is a convenience, never fail a run for it
                log.warning("could not write the item embeddings to TensorBoard: %s", e)

    def configure_optimizers(self) -> Any:
        """AdamW with four groups: dense weights, embedding tables, item-item weights, and
        vectors/biases (never decayed); optional cosine schedule over ``scheduler_epochs``."""
        hp = self.hparams
        groups: dict[str, list[nn.Parameter]] = {"dense": [], "embed": [], "neighbor": [], "none": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            owner = self.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
            if name.startswith("neighbor_embed"):
                groups["neighbor"].append(p)
            elif isinstance(owner, nn.Embedding):
                groups["embed"].append(p)
            elif p.ndim >= 2:
                groups["dense"].append(p)
            else:
                groups["none"].append(p)
        opt = torch.optim.AdamW([
            {"params": groups["dense"], "weight_decay": hp.weight_decay},
            {"params": groups["embed"], "weight_decay": hp.embedding_weight_decay},
            {"params": groups["neighbor"], "weight_decay": hp.neighbor_weight_decay,
             "lr": hp.neighbor_lr if hp.neighbor_lr is not None else hp.lr},
            {"params": groups["none"], "weight_decay": 0.0}], lr=hp.lr)
        epochs = hp.scheduler_epochs or (self.trainer.max_epochs if self.trainer is not None else None)
        if hp.scheduler == "cosine" and epochs:
            sched = self.cosine_schedule(opt, hp.scheduler_epochs)  # None: the trainer's max_epochs
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt

    # ------------------------------------------------------------------ inference on external ids
    def _lookup(self, index: pd.Index, ids: Sequence[Any]) -> np.ndarray:
        """Positions of external ids in a vocabulary (-1 = unknown).

        An id that is in the vocabulary as it is wins; any other matches the vocabulary entry with
        the same :func:`id_key` (5, '5', 5.0 and '5.0' are one id; '007' is 7 only in a vocabulary
        of numbers), the first in vocabulary order when several entries share the key (5 and '5').
        """
        ids = list(ids)
        if not ids:
            return np.zeros(0, np.int64)
        pos = index.get_indexer(pd.Index(ids, dtype=object))
        miss = np.flatnonzero(pos < 0)
        if len(miss):
            keys, first, numeric = self._id_keys(index)
            found = keys.get_indexer(pd.Index([id_key(ids[j], numeric) for j in miss], dtype=object))
            pos[miss] = np.where(found >= 0, first[found], -1)
        return pos

    def _id_keys(self, index: pd.Index) -> tuple[pd.Index, np.ndarray, bool]:
        """The vocabulary's distinct keys, the position of each key's first entry, and whether it
        holds numbers; built once per vocabulary and kept on the model (not in the checkpoint:
        ``_on_preprocessing`` drops them, so they are rebuilt from the loaded vocabularies)."""
        hit = self._id_key_cache.get(id(index))
        if hit is not None and hit[0] is index:  # the same object, not a new one at a reused address
            return hit[1]
        numeric = index.inferred_type in ("integer", "floating", "mixed-integer-float", "decimal")
        keys = pd.Index([id_key(v, numeric) for v in index], dtype=object)
        first = ~keys.duplicated(keep="first")
        if len(self._id_key_cache) >= 4:  # the two vocabularies, plus any other a caller passes
            self._id_key_cache.pop(next(iter(self._id_key_cache)))
        built = (keys[first], np.flatnonzero(first), numeric)
        self._id_key_cache[id(index)] = (index, built)
        return built

    def _history_batch(self, histories: Sequence[Sequence[Any]]) -> dict[str, torch.Tensor]:
        """External item-id lists (oldest → newest) → a ragged batch of <unk> users."""
        codes = [self._lookup(self.item_index, h) if h is not None and len(h) else np.zeros(0, np.int64)
                 for h in histories]
        unknown = [(j, int(np.flatnonzero(c < 0)[0])) for j, c in enumerate(codes) if (c < 0).any()]
        if unknown:  # a history of unknown ids alone falls back to popularity: say so
            j, i = unknown[0]
            log.warning("%d history item ids are not in the model's catalogue and are ignored (e.g. %r in history %d; "
                        "the catalogue's ids look like %r)", sum(int((c < 0).sum()) for c in codes),
                        list(histories[j])[i], j, self.item_index[0] if len(self.item_index) else None)
        codes = [c[c >= 0] for c in codes]
        codes = [pd.unique(c[::-1])[::-1] for c in codes]  # keep the last occurrence of repeated items
        return self._code_batch(codes)

    def _code_batch(self, codes: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Distinct item-index lists (oldest → newest) → a ragged batch of <unk> users, aged by position."""
        lens = np.array([len(c) for c in codes], np.int64)
        if self.preprocessing.get("has_time", True):  # the newest item (last) in bucket 0, as in training
            ages = [np.minimum(np.floor(np.log2(1 + np.arange(n)[::-1])).astype(np.int64), N_AGE_BUCKETS - 1)
                    for n in lens]
        else:  # trained without times: every history item had age 0, whatever its position
            ages = [np.zeros(n, np.int64) for n in lens]
        dev = self.item_bias.device
        flat = np.concatenate(codes) if len(codes) else np.zeros(0, np.int64)
        return {"user": torch.zeros(len(codes), dtype=torch.long, device=dev),
                "hist_items": torch.as_tensor(flat.astype(np.int64), device=dev),
                "hist_age": torch.as_tensor(np.concatenate(ages) if ages else np.zeros(0, np.int64), device=dev),
                "hist_offsets": torch.as_tensor(np.concatenate([[0], np.cumsum(lens)]), device=dev)}

    def _topk_batches(self, batch: dict[str, torch.Tensor], k: int, exclude_seen: bool,
                      popularity: bool = False) -> torch.Tensor:
        """Top-k item indices (B, k) for a ragged user batch, scored in user chunks."""
        B = len(batch["user"])
        chunk = max(1, min(B, (1 << 24) // max(self.n_items, 1)))
        out = []
        for s, e in chunks(B, chunk, f"ranking {self.n_items:,} items for {B:,} users"):
            off = batch["hist_offsets"]
            a, b = int(off[s]), int(off[e])
            sub = {"user": batch["user"][s:e], "hist_items": batch["hist_items"][a:b],
                   "hist_age": batch["hist_age"][a:b], "hist_offsets": off[s: e + 1] - a}
            if popularity:
                scores = torch.log1p(self.popularity.float())[None].expand(e - s, -1).clone()
            else:
                scores = self.full_scores(sub)
            if exclude_seen:
                rows = ragged_rows(sub["hist_offsets"], b - a)
                scores[rows, sub["hist_items"]] = float("-inf")
            top = torch.topk(scores, k, dim=1)
            idx = top.indices.masked_fill(torch.isinf(top.values) & (top.values < 0), -1)
            out.append(idx)
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)

    def _ids(self, idx: torch.Tensor) -> np.ndarray:
        ids = np.asarray(self.preprocessing["item_ids"], dtype=object)
        idx = idx.cpu().numpy()
        out = ids[np.clip(idx, 0, None)]
        if (idx < 0).any():
            out = out.astype(object)
            out[idx < 0] = None
        else:
            try:
                out = out.astype(type(self.preprocessing["item_ids"][0])) if len(ids) else out
            except (TypeError, ValueError):
                pass
        return out

    @torch.no_grad()
    def recommend(self, user_ids: Sequence[Any], k: int = 10, exclude_seen: bool = True,
                  histories: Sequence[Sequence[Any] | None] | None = None) -> np.ndarray:
        """Top-``k`` item ids (n, min(k, catalogue size)) for external ``user_ids``, best first.

        Known users are scored with every interaction of the training log (the train, validation
        and test parts: the test part is hidden only while evaluating) and, when ``exclude_seen``,
        never get any of those items back. ``histories[j]`` for a known user adds the items bought
        since training (newest last): they join the user's history and are excluded too. Unknown users follow the module's fallback:
        the history encoder on ``histories[j]`` (item ids, oldest → newest) when given, else
        popularity (with a warning naming one such id). Slots that cannot be filled (fewer unseen
        items than slots) are None; ``k`` beyond the catalogue gives one column per item of the
        catalogue. Item ids come back as the training log holds them: text for a CSV log (its ids
        are read as text, so that leading zeros survive), the column's type for a Parquet or
        DataFrame log; ``.astype(int)`` joins them to a table of integer ids.
        """
        self._require_preprocessing()
        k = _check_k(k, self.n_items)
        user_ids = _check_user_ids(user_ids)
        histories = _check_histories(histories, len(user_ids)) if histories is not None else None
        was = self.training
        self.eval()
        n = len(user_ids)
        pos = self._lookup(self.user_index, user_ids) + 1  # 0 = unknown
        out = torch.full((n, k), -1, dtype=torch.long)
        known = np.flatnonzero(pos > 0)
        fresh = np.array([j for j in known if histories is not None and histories[j] is not None
                          and len(histories[j])], dtype=np.int64)
        known = np.setdiff1d(known, fresh)
        if len(known):
            batch = self._as_batch(torch.as_tensor(pos[known]), everything=True)
            out[known] = self._topk_batches(batch, k, exclude_seen).cpu()
        if len(fresh):  # known users with items bought since training: their log, then those items
            logged = self._as_batch(torch.as_tensor(pos[fresh]), everything=True)
            off, items = logged["hist_offsets"].cpu().numpy(), logged["hist_items"].cpu().numpy()
            ids = np.asarray(self.preprocessing["item_ids"], dtype=object)
            lists = [list(ids[items[off[r]: off[r + 1]]]) + list(histories[j]) for r, j in enumerate(fresh)]
            batch = self._history_batch(lists)
            batch["user"] = torch.as_tensor(pos[fresh], device=batch["user"].device)
            out[fresh] = self._topk_batches(batch, k, exclude_seen).cpu()
        unknown = np.flatnonzero(pos == 0)
        if len(unknown):
            hist = [histories[j] if histories is not None else None for j in unknown]
            out[unknown] = self._cold(hist, k, exclude_seen).cpu()
            popular = [j for j, h in zip(unknown, hist) if not (h is not None and len(h) > 0 and self.uses_history)]
            log.info("recommend: %d unknown user(s): %d via history, %d via popularity", len(unknown),
                     len(unknown) - len(popular), len(popular))
            if popular:  # the same list for each of them: say so, with what the known ids look like
                log.warning("recommend: %d of %d user ids are not in the training log (e.g. %r; its ids look like %r) "
                            "and get the most popular items; pass histories=[...] for new customers with purchases, "
                            "or check the ids' type and spelling", len(popular), n, user_ids[popular[0]],
                            self.user_index[0] if len(self.user_index) else None)
        self.train(was)
        return self._ids(out)

    @torch.no_grad()
    def recommend_for_history(self, histories: Sequence[Sequence[Any]], k: int = 10,
                              exclude_seen: bool = True) -> np.ndarray:
        """Top-``k`` item ids (n, min(k, catalogue size)) for new users given their item-id histories
        (oldest → newest).

        Uses the history encoder; users with an empty history (or a model without a history
        encoder) get the popularity fallback.
        """
        self._require_preprocessing()
        k = _check_k(k, self.n_items)
        histories = _check_histories(histories)
        was = self.training
        self.eval()
        out = self._cold(histories, k, exclude_seen)
        self.train(was)
        return self._ids(out)

    def _cold(self, histories: list[Sequence[Any] | None], k: int, exclude_seen: bool) -> torch.Tensor:
        batch = self._history_batch(histories)
        lens = (batch["hist_offsets"][1:] - batch["hist_offsets"][:-1]).cpu()
        out = torch.full((len(histories), k), -1, dtype=torch.long)
        has = lens > 0
        if self.uses_history and has.any():
            sel = torch.nonzero(has).squeeze(1)
            out[sel] = self._topk_batches(_select(batch, sel), k, exclude_seen).cpu()
        rest = torch.nonzero(~has if self.uses_history else torch.ones_like(has)).squeeze(1)
        if len(rest):
            out[rest] = self._topk_batches(_select(batch, rest), k, exclude_seen, popularity=True).cpu()
        return out

    @torch.no_grad()
    def export_predictions(self, datamodule: Any, split: str = "test", k: int = 10) -> pd.DataFrame:
        """Per evaluated user: ``user_id``, the top-``k`` ``recommended`` item ids and the ``held_out``
        items, each list joined by ``" | "`` (:data:`~clm_torch.lifecycle.report.TOP_ITEMS_SEP`, as in the
        pipeline's customers.csv: ids may hold spaces), ranked with the split's history masked."""
        self._require_preprocessing()
        k = _check_k(k, self.n_items)
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, not {split!r}")
        datamodule.setup()
        for what, theirs in (("user_ids", getattr(datamodule, "model_user_ids", datamodule.user_ids)),
                             ("item_ids", datamodule.item_ids)):  # the tables hold indices into these vocabularies
            if list(theirs) != list(self.preprocessing[what]):
                raise ValueError(f"the DataModule's {what} differ from this checkpoint's: its tables index another "
                                 "vocabulary (a newer or different log); rebuild it from the training data, or score "
                                 "new data with recommend()")
        was = self.training
        self.eval()
        table = datamodule.tables[split]
        ids = np.asarray(self.preprocessing["item_ids"], dtype=object)
        recs, held = [], []
        for s in range(0, len(table), 1024):
            batch = table[torch.arange(s, min(len(table), s + 1024))]
            batch = {key: v.to(self.item_bias.device) for key, v in batch.items()}
            top = self._topk_batches(batch, min(k, self.n_items), exclude_seen=True).cpu().numpy()
            recs += [TOP_ITEMS_SEP.join(str(x) for x in ids[r[r >= 0]]) for r in top]
            off = batch["target_offsets"].cpu().numpy()
            items = batch["target_items"].cpu().numpy()
            held += [TOP_ITEMS_SEP.join(str(x) for x in ids[items[off[j]: off[j + 1]]]) for j in range(len(off) - 1)]
        self.train(was)
        return pd.DataFrame({"user_id": datamodule.user_ids_of(split), "recommended": recs, "held_out": held})


def _dense(lists: Sequence[np.ndarray], n_items: int, device: torch.device) -> torch.Tensor:
    """Item-index lists → a (len(lists), n_items) bool mask (:func:`dense_targets` of their ragged form)."""
    offsets = torch.as_tensor(np.concatenate([[0], np.cumsum([len(x) for x in lists])]), dtype=torch.long,
                              device=device)
    items = torch.as_tensor(np.concatenate([np.asarray(x, np.int64) for x in lists]) if len(lists) else
                            np.zeros(0, np.int64), device=device)
    return dense_targets(offsets, items, n_items)


def _select(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of a ragged user batch."""
    off = batch["hist_offsets"].cpu()
    pos, offsets = csr_gather(off, rows.cpu())
    dev = batch["user"].device
    pos = pos.to(dev)
    return {"user": batch["user"][rows.to(dev)], "hist_items": batch["hist_items"][pos],
            "hist_age": batch["hist_age"][pos], "hist_offsets": offsets.to(dev)}


__all__ = ["EmbeddingRecommender", "id_key"]
