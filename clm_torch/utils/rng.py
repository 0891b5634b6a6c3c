"""The random-number state a resumed run needs, in a form a checkpoint loads with ``weights_only=True``.

Training draws from the global generators: dropout, the VAE's hidden cells and latent samples, the
recommender's user dropout, history corruption and sampled negatives (torch); numpy and Python's
``random`` are saved too, for code that uses them. Lightning saves none of them in a checkpoint
(2.6: only its ``ddp_spawn`` launcher hands them to its workers), so a run resumed from a checkpoint
drew from a freshly seeded generator and drifted from the uninterrupted run.

:func:`rng_state` returns tensors and primitives only (numpy's key array and Python's state tuple
are converted), which ``torch.load(..., weights_only=True)`` accepts; :func:`set_rng_state` puts
them back.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

RNG_KEY = "clm_rng"  # checkpoint["clm_rng"] = {"ranks": [rng_state() of rank 0, rank 1, ...]}


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's global random state: torch's CPU generator, the CUDA generator of ``device``
    (when it is a CUDA device: the one a model trains on, not every visible GPU), numpy's legacy
    global generator and Python's ``random``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": None if py_gauss is None else float(py_gauss)},
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned. The CUDA state is restored only onto a CUDA
    ``device`` (a GPU run resumed on the CPU keeps the CPU, numpy and Python states)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["gauss"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
