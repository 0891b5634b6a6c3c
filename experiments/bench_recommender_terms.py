"""The recommender's item-item and EASE terms at sampled items vs the dense (B, n_items) terms, side by side.

``EmbeddingRecommender.score`` (candidate scoring) and the sampled losses (``loss=sampled_softmax`` and
``loss=bpr``) need the item-item (neighbourhood) term and the EASE term only at a few items per user.
They sum them for the requested items only where that is cheaper; before, they built the full
(B, n_items) terms and gathered from them (and BPR computed an item vector for every scored pair; it
now computes one per distinct item). This script times both ways in one process on the same batches:

* ``score``: every user of the data × 100 random items, ``score`` vs ``full_scores(...).gather``;
* one training step (loss + backward) at the default batch of 128 users for ``sampled_softmax``
  (1,024 negatives) and ``bpr``: the shipped code vs the dense term (the previous code, reproduced by
  a subclass); same seeds, so the two losses must agree.

The two ways are timed alternately, best of ``--repeats`` each.

Data: MovieLens latest-small (``experiment=recsys_movielens``: neighbours and EASE, 9k items; the EASE
matrix is solved on the training split) and a synthetic log over a larger catalogue (Zipf item
popularity; neighbours, no EASE, whose n_items² matrix would not fit). Neighbour weights are drawn at
random: the timing does not depend on their values.

    python experiments/bench_recommender_terms.py            # → performance.md, section "recsys_terms"
    python experiments/bench_recommender_terms.py --no-write
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import command_line, compose, machine_info, publish, quiet_lightning

from clm_torch.models.recommender import EmbeddingRecommender


class DenseTerms(EmbeddingRecommender):
    """The previous code path: the item-item term built for the whole catalogue, then gathered."""

    def _restricted_is_cheaper(self, batch: dict[str, torch.Tensor], cols: torch.Tensor) -> bool:
        return False  # always the full term (the losses then gather from it as before)

    def _dots_at(self, u: torch.Tensor, cols: torch.Tensor, inv: torch.Tensor,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
        """An item vector per scored pair, as BPR did before (score's baseline is ``full_scores``)."""
        items = cols[inv]
        rows = torch.arange(len(items)) if rows is None else rows
        v = self.item_vectors(items.reshape(-1)).reshape(*items.shape, -1).to(u.dtype)
        return (u[rows][:, None, :] * v).sum(-1).float()


def paired_ms(old: Any, new: Any, repeats: int) -> tuple[float, float]:
    """Best ms of ``old()`` and of ``new()``, timed alternately (after a warm-up of each), so that both
    see the same machine state."""
    old(), new()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, acc in zip((old, new), times):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return 1e3 * min(times[0]), 1e3 * min(times[1])


def movielens() -> tuple[Any, dict[str, Any]]:
    import hydra

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(["experiment=recsys_movielens"], Path(tmp) / "run")
    dm = hydra.utils.instantiate(cfg.data, _convert_="partial")
    dm.setup("fit")
    kw = {k: v for k, v in cfg.model.items() if k != "_target_"}
    return dm, kw


def synthetic(n_users: int, n_items: int, n_events: int) -> tuple[Any, dict[str, Any]]:
    import pandas as pd

    from clm_torch.data.interactions import InteractionDataModule
    from clm_torch.data.sources.interactions import InteractionsFrameSource

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user": rng.integers(0, n_users, n_events).astype(str),
                       "item": (rng.zipf(1.3, n_events) % n_items).astype(str),
                       "time": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 86_400 * 300, n_events),
                                                                            unit="s")})
    dm = InteractionDataModule(InteractionsFrameSource(df.drop_duplicates(["user", "item"]), time_col="time"),
                               protocol="random", batch_size=128, n_neighbors=50)
    dm.setup()
    return dm, {"d": 64, "ease_weight": 0.0}


def measure(name: str, dm: Any, kw: dict[str, Any], repeats: int) -> list[str]:
    out = []
    models = {}
    for cls in (EmbeddingRecommender, DenseTerms):
        torch.manual_seed(0)
        m = cls(**dm.model_kwargs(), **kw)
        m.set_preprocessing(dm.preprocessing_state())
        torch.nn.init.normal_(m.neighbor_embed.weight, std=0.1)
        if m.uses_ease:
            indptr, vals = dm.tables["train"].ragged["target"]
            m.fit_ease(torch.as_tensor(indptr), torch.as_tensor(vals["items"]))
        models[cls] = m
    lookup, dense = models[EmbeddingRecommender], models[DenseTerms]
    g = torch.Generator().manual_seed(0)
    users = torch.arange(1, dm.n_users)
    items = torch.randint(0, dm.n_items, (len(users), 100), generator=g)
    with torch.no_grad():
        lookup.eval(), dense.eval()
        diff = float((lookup.score(users, items) - dense.full_scores(users).gather(1, items)).abs().max())
        t_old, t_new = paired_ms(lambda: dense.full_scores(users).gather(1, items),
                                 lambda: lookup.score(users, items), repeats)
    terms = "item-item + EASE" if lookup.uses_ease else "item-item"
    out.append(f"| {name} | `score`, {len(users):,} users × 100 items ({terms}) | {t_old:.1f} | {t_new:.1f} | "
               f"{t_old / t_new:.2f}× | {diff:.1e} |")
    batch = dict(next(iter(dm.train_dataloader())))
    for loss in ("sampled_softmax", "bpr"):
        for m in (lookup, dense):
            m.train()
            m.hparams.loss = loss
            m.hparams.n_negatives = 1024

        def step(m: EmbeddingRecommender) -> float:
            torch.manual_seed(1)
            m.zero_grad()
            value = m.loss(batch)
            value.backward()
            return float(value)

        d = abs(step(lookup) - step(dense))
        t_old, t_new = paired_ms(lambda: step(dense), lambda: step(lookup), repeats)
        out.append(f"| {name} | training step, `loss={loss}`, batch {len(batch['user']):,} | {t_old:.1f} | "
                   f"{t_new:.1f} | {t_old / t_new:.2f}× | {d:.1e} |")
    print("\n".join(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    info = machine_info()
    lines = [f"- command: `{command_line()}`",
             (f"- {info['date']}; {info['cpu']}, {info['cores']} cores, {args.threads} torch threads; "
              f"torch {info['torch']}; load average at start {info['load_avg_1min_at_start']}"),
             (f"- best of {args.repeats} after a warm-up, the two ways timed alternately; \"dense\" = the previous "
              "code (full (B, n_items) terms, then gathered; BPR: an item vector per scored pair), \"lookup\" = the "
              "shipped code (the terms summed for the requested items where that is cheaper); |Δ| = max abs "
              "difference of the scores, or of the two losses (same seeds)"), "",
             "| data | what | dense ms | lookup ms | speed-up | abs Δ |", "|---|---|---|---|---|---|"]
    dm, kw = movielens()
    lines += measure(f"MovieLens ({dm.n_items:,} items)", dm, kw, args.repeats)
    dm, kw = synthetic(20_000, 50_000, 600_000)
    lines += measure(f"synthetic ({dm.n_items:,} items)", dm, kw, args.repeats)
    publish("recsys_terms", "\n".join(lines), "Recommender: item-item and EASE terms at sampled items",
            write=not args.no_write)


if __name__ == "__main__":
    main()
