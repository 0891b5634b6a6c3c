"""Random draws keyed by row: each row's draws follow from its own content and the generator.

Inference with Monte Carlo (imputation, surprise, the value of a question) must give a row the same
answer whatever other rows share its batch, their order or the batch size (the draws are the same; the
network's products may still round differently by batch size, ~1e-5 relative on some CPUs). Common random numbers
(one set of draws shared by every row) do that, but their Monte Carlo error is then the same for every
row: with 8 or 16 draws one column's imputation std, or one question's gain, comes out too high for
every customer at once, and the share of customers whose best question is that column follows the
seed. Keyed draws keep the invariance and make the error independent between rows of different
slots, so it averages out over customers.

A row's key is a 32-bit hash of its encoded values and masks; it picks one of :data:`SLOTS` slots of a
pool of draws taken from the generator (shape (..., SLOTS, D)), so the cost is that of the pool and
one gather, whatever the batch size. Rows in the same slot share their draws (about one row in
SLOTS shares with a given other row).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

SLOTS = 4096
_M32 = 0xFFFFFFFF


def _mul32(h: torch.Tensor, m: int) -> torch.Tensor:
    """(h · m) mod 2^32 for h in [0, 2^32), without int64 overflow (m split into 16-bit halves)."""
    return (((h * (m >> 16)) & 0xFFFF) << 16) + h * (m & 0xFFFF) & _M32


def mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (Wellons' lowbias32) on int64 values in [0, 2^32)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def row_keys(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B,) int64 keys in [0, 2^32): a hash of each row's observed encoded values and its masks (a cell
    that is not observed counts as its mask alone, whatever its placeholder value)."""
    num, num_mask, cat, cat_mask = batch["num"], batch["num_mask"], batch["cat"], batch["cat_mask"]
    B = len(num_mask)
    bits = torch.where(num_mask, num.float(), torch.zeros((), dtype=torch.float32, device=num.device))
    parts = [bits.view(torch.int32).long() & _M32, num_mask.long(), torch.where(cat_mask, cat.long(), 0) & _M32,
             cat_mask.long()]
    v = torch.cat([p.reshape(B, -1) for p in parts], 1)
    col = mix32(torch.arange(v.shape[1], device=v.device, dtype=torch.long) + 0x9E3779B9 & _M32)
    return mix32(mix32(v ^ col).sum(1) & _M32)


def row_slots(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(B,) int64: each row's slot in a pool of draws (:func:`pooled`)."""
    return row_keys(batch) % SLOTS


def pool_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The pool's shape for draws of ``shape`` (..., B, D): the rows' axis becomes :data:`SLOTS`."""
    return (*shape[:-2], SLOTS, shape[-1])


def pooled(pool: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Each row's draws: ``pool`` (..., SLOTS, D) at ``slots`` (B,) → (..., B, D)."""
    return pool.index_select(-2, slots.to(pool.device))
