"""Customer ids outside the run's own outputs.

TensorBoard event files get copied, uploaded and shared far more freely than a prediction CSV,
so customer ids never go there in the clear. :func:`id_labels` turns ids into the labels that a
projector may show:

* ``"hashed"`` (the default): the first 12 hex digits of ``sha256(salt + id)``. The same id gives
  the same label in every run with the same salt, so an analyst who holds the raw table can
  link a point back (``hash_ids(df[id_col])``) while the event file alone reveals nothing.
  The salt comes from ``CLM_ID_SALT`` (empty when unset); set it to a secret to stop dictionary
  attacks on short, guessable ids.
* ``"raw"``: the ids themselves (opt in, e.g. ``model.projector_ids=raw`` on synthetic data).
* ``"none"``: no id column at all.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import pandas as pd

ID_MODES = ("hashed", "raw", "none")


def hash_ids(ids: Iterable[object], salt: str | None = None, digits: int = 12) -> list[str]:
    """Salted SHA-256 labels of ``ids`` (``str(id)`` is hashed, so the ids must be of the type the run
    read them as: text, as the package's loaders read ids, ``'00123'`` and not 123; ``None``, NaN and
    ``pd.NA`` give ``""``)."""
    key = (os.environ.get("CLM_ID_SALT", "") if salt is None else salt).encode()
    out = []
    for v in ids:
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            out.append("")
            continue
        out.append(hashlib.sha256(key + str(v).encode()).hexdigest()[:digits])
    return out


def id_labels(ids: Iterable[object], mode: str = "hashed") -> list[str] | None:
    """Projector labels for ``ids`` under ``mode`` (see the module docstring); ``None`` for ``"none"``."""
    if mode not in ID_MODES:
        raise ValueError(f"id mode must be one of {ID_MODES}, not {mode!r}")
    if mode == "none":
        return None
    if mode == "raw":
        return [str(v) for v in ids]
    return hash_ids(ids)


__all__ = ["ID_MODES", "hash_ids", "id_labels"]
