"""Plain nn.Modules of the recommender: item tower, history (set) encoder, ragged helpers.

Ragged inputs are CSR-style: ``items`` (nnz,) with ``offsets`` (B+1,) so that row b owns
``items[offsets[b]:offsets[b+1]]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def ragged_rows(offsets: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Row index (nnz,) of every ragged entry, from offsets (B+1,)."""
    lens = offsets[1:] - offsets[:-1]
    return torch.repeat_interleave(torch.arange(len(lens), device=offsets.device), lens, output_size=total)


def segment_sum(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum of ``values`` (nnz, d) per row → (n_rows, d)."""
    out = torch.zeros(n_rows, values.shape[1], dtype=values.dtype, device=values.device)
    return out.index_add(0, rows, values)


class ItemFeatures(nn.Module):
    """Item side features → one d-vector per item (summed): standardised numerics (linear, with a
    learned vector for missing values), categorical embeddings and a mean-bag of multilabel
    embeddings (e.g. genres).

    Shapes: ``num`` (m, n_num), ``num_mask`` (m, n_num) bool, ``cat`` (m, n_cat) int64,
    multilabels as a CSR ``(label_offsets (m+1,), labels (nnz,))`` → (m, d).
    """

    def __init__(self, d: int, n_num: int = 0, cat_cardinalities: Sequence[int] = (), n_labels: int = 0) -> None:
        super().__init__()
        self.n_num, self.n_cat, self.n_labels = n_num, len(cat_cardinalities), n_labels
        std = 0.1 / math.sqrt(d)
        if n_num:
            # a numeric value enters through a few fixed periodic bases, so year-like effects can be non-linear
            self.num_freq = nn.Parameter(torch.randn(n_num, 8) * 1.0)
            self.num_proj = nn.Parameter(torch.randn(n_num, 17, d) * std)
            self.num_missing = nn.Parameter(torch.zeros(n_num, d))
        if self.n_cat:
            card = torch.as_tensor(list(cat_cardinalities), dtype=torch.long)
            self.register_buffer("cat_offsets", torch.cat([torch.zeros(1, dtype=torch.long), card.cumsum(0)[:-1]]),
                                 persistent=False)
            self.cat_embed = nn.Embedding(int(card.sum()), d)
            nn.init.normal_(self.cat_embed.weight, std=std)
        if n_labels:
            self.label_embed = nn.Embedding(n_labels, d)
            nn.init.normal_(self.label_embed.weight, std=std)

    @property
    def active(self) -> bool:
        return bool(self.n_num or self.n_cat or self.n_labels)

    def forward(self, num: torch.Tensor, num_mask: torch.Tensor, cat: torch.Tensor,
                label_offsets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = len(label_offsets) - 1
        out = None
        if self.n_num:
            z = num.float()[..., None] * self.num_freq  # (m, n_num, 8)
            basis = torch.cat([z.new_ones(z.shape[:-1] + (1,)), torch.sin(z), torch.cos(z)], -1)  # (m, n_num, 17)
            e = torch.einsum("mfk,fkd->mfd", basis, self.num_proj)
            m_ = num_mask[..., None].to(e.dtype)
            out = (e * m_ + self.num_missing[None].to(e.dtype) * (1 - m_)).sum(1)
        if self.n_cat:
            e = self.cat_embed(cat + self.cat_offsets[None]).sum(1)
            out = e if out is None else out + e
        if self.n_labels:
            e = F.embedding_bag(labels, self.label_embed.weight, label_offsets[:-1], mode="mean")
            if e.shape[0] < m:  # torch drops trailing empty bags in some versions; pad
                e = torch.cat([e, e.new_zeros(m - e.shape[0], e.shape[1])])
            out = e if out is None else out + e
        return out


class ItemTower(nn.Module):
    """Item vectors: a learned id embedding plus (optionally) the projection of item features.

    ``forward(items (m,), features)`` → (m, d); ``features`` is a dict of the catalogue feature
    tensors (see :class:`ItemFeatures`), or None when the catalogue has no features.
    """

    def __init__(self, n_items: int, d: int, n_num: int = 0, cat_cardinalities: Sequence[int] = (),
                 n_labels: int = 0, use_features: bool = True, init_std: float | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_items, d)
        nn.init.normal_(self.embed.weight, std=init_std if init_std is not None else 1.0 / math.sqrt(d))
        self.features = ItemFeatures(d, n_num, cat_cardinalities, n_labels) if use_features else None
        if self.features is not None and not self.features.active:
            self.features = None

    def forward(self, items: torch.Tensor | None, feats: dict[str, torch.Tensor] | None) -> torch.Tensor:
        if items is not None and self.features is not None and feats is not None \
                and len(items) > self.embed.num_embeddings // 4:
            return self.forward(None, feats)[items]  # cheaper to compute the whole catalogue once
        e = self.embed.weight if items is None else self.embed(items)
        if self.features is None or feats is None:
            return e
        if items is None:
            num, mask, cat = feats["num"], feats["num_mask"], feats["cat"]
            lo, lab = feats["label_offsets"], feats["labels"]
        else:
            num, mask, cat = feats["num"][items], feats["num_mask"][items], feats["cat"][items]
            start = feats["label_offsets"][items]
            lens = feats["label_offsets"][items + 1] - start
            lo = torch.zeros(len(items) + 1, dtype=torch.long, device=items.device)
            torch.cumsum(lens, 0, out=lo[1:])
            pos = torch.arange(int(lo[-1]), device=items.device) + torch.repeat_interleave(start - lo[:-1], lens)
            lab = feats["labels"][pos]
        return e + self.features(num, mask, cat, lo, lab).to(e.dtype)


class HistoryEncoder(nn.Module):
    """A set encoder over a user's history (Mult-DAE / EASE-like): the recency-weighted,
    1/sqrt(n)-normalised sum of the history's item vectors, then a small MLP with tanh.

    With no hidden layers this is exactly the first layer of Mult-DAE (a linear map of the
    normalised multi-hot history) followed by tanh.

    Shapes: ``vectors`` (nnz, d_in) item vectors of the history, ``rows`` (nnz,), ``age`` (nnz,)
    recency buckets → (B, d_out).
    """

    def __init__(self, d_in: int, d_out: int, hidden: Sequence[int] = (), n_age_buckets: int = 16,
                 dropout: float = 0.0, recency: bool = True) -> None:
        super().__init__()
        self.recency = nn.Parameter(torch.zeros(n_age_buckets)) if recency else None
        self.bias = nn.Parameter(torch.zeros(d_in))
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers += [nn.Dropout(dropout), nn.Linear(d, h), nn.Tanh()]
            d = h
        if layers or d != d_out:
            layers += [nn.Dropout(dropout), nn.Linear(d, d_out)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, vectors: torch.Tensor, rows: torch.Tensor, age: torch.Tensor, n_rows: int) -> torch.Tensor:
        w = torch.ones(len(rows), device=vectors.device, dtype=vectors.dtype)
        if self.recency is not None:
            w = torch.exp(self.recency[age]).to(vectors.dtype)
        s = segment_sum(vectors * w[:, None], rows, n_rows)
        n = torch.bincount(rows, minlength=n_rows).clamp(min=1).to(s.dtype)
        h = torch.tanh(s / n.sqrt()[:, None] + self.bias)
        return self.mlp(h)
