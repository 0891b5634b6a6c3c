"""Encoders of a customer's last purchases: a small GRU or an attention pooling over the steps.

A sequence has ``K`` steps, step 0 being the most recent purchase. Each step carries a few
numeric features (times, amounts), an item index into one item vocabulary shared by all steps
(0 = unknown, missing or no purchase) and a validity flag (the customer made that purchase).
Everything is batched over customers; only the GRU loops, over the ``K`` steps.
"""

from __future__ import annotations

import torch
from torch import nn

SEQUENCE_ENCODERS = ("none", "gru", "attention")


class PurchaseSequenceEncoder(nn.Module):
    """Last-K purchases → one vector per customer.

    * ``gru``: a GRU cell reads the steps from the oldest to the most recent; a step the customer
      lacks leaves the state unchanged, so the output is the state after their latest purchase
      (zeros without any purchase).
    * ``attention``: each step becomes a token; one learned query attends (``n_heads`` heads) over
      the valid tokens plus a learned "no purchase" token, which is always there so that customers
      without history get a defined output. The order enters through the time features.

    Args:
        kind: ``"gru"`` or ``"attention"``.
        n_step_features: numeric features per step.
        n_items: size of the shared item vocabulary (index 0 included).
        d_item: item embedding size (0 = no item input).
        hidden: output size (the GRU state size).
        n_heads: attention heads (``attention`` only; must divide ``hidden``).

    Shapes: ``steps`` (batch, K, n_step_features) float, ``items`` (batch, K) int64, ``valid``
    (batch, K) bool → (batch, hidden).
    """

    def __init__(self, kind: str, n_step_features: int, n_items: int, d_item: int = 16, hidden: int = 32,
                 n_heads: int = 4) -> None:
        super().__init__()
        if kind not in ("gru", "attention"):
            raise ValueError(f"sequence encoder must be gru or attention, not {kind!r}")
        self.kind = kind
        self.out_dim = hidden
        self.item_embed = nn.Embedding(max(n_items, 1), d_item) if d_item > 0 else None
        if self.item_embed is not None:
            nn.init.normal_(self.item_embed.weight, std=d_item ** -0.5)
        d_in = n_step_features + max(d_item, 0)
        if kind == "gru":
            self.cell = nn.GRUCell(d_in, hidden)
        else:
            self.token = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            self.empty_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
            self.query = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
            self.attn = nn.MultiheadAttention(hidden, n_heads, batch_first=True)
            self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, steps: torch.Tensor, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = steps
        if self.item_embed is not None:
            x = torch.cat([x, self.item_embed(items).to(steps.dtype)], dim=-1)
        x = x * valid.unsqueeze(-1).to(x.dtype)  # nothing leaks from the steps a customer lacks
        if self.kind == "gru":
            h = x.new_zeros(x.shape[0], self.out_dim)
            for k in range(x.shape[1] - 1, -1, -1):  # oldest → most recent; a loop over steps, not customers
                h = torch.where(valid[:, k, None], self.cell(x[:, k], h), h)
            return h
        tokens = torch.cat([self.empty_token.expand(x.shape[0], -1, -1), self.token(x)], dim=1)
        pad = torch.cat([valid.new_zeros(x.shape[0], 1), ~valid], dim=1)  # True = ignore
        q = self.query.expand(x.shape[0], -1, -1)
        pooled, _ = self.attn(q, tokens, tokens, key_padding_mask=pad, need_weights=False)
        return self.out(pooled.squeeze(1))
