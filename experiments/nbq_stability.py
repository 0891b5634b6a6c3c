"""How much does Monte Carlo noise decide the next best question? (InfoGapVAE.next_best_question)

Loads the InfoGapVAE of a ``clm-pipeline`` run, takes the customers it scored (``data/score_view.parquet``)
and asks for their next best question as the pipeline does (``k=1``, only the customer table's columns
are askable) with several inference seeds and numbers of draws. Reports, per number of draws:

* ``agreement``: share of customers with two or more candidate questions whose top question is the same
  for two seeds (mean over the seed pairs);
* ``spearman_gain_1``: rank correlation, across customers, of the top question's gain
  (``next_best_question_gain``, which decides the top 20 % that are asked) between two seeds;
* ``spearman_all``: rank correlation of every (customer, candidate question) gain between two seeds;
* ``top20_overlap``: share of the top 20 % by gain (customers with a question) that two seeds share;
* ``seconds``: wall time of one ``next_best_question`` call (mean over the seeds), one thread.

A pipeline run to measure on (the ``make run`` settings at a reduced size; the other models are not used)::

    clm-pipeline data.n_customers=3000 models.churn.trainer.max_epochs=3 \
        models.recommender.trainer.max_epochs=2 models.spend.trainer.max_epochs=3 paths.log_dir=/tmp/nbq_runs

then::

    OMP_NUM_THREADS=1 python experiments/nbq_stability.py --run /tmp/nbq_runs/pipeline/runs/<stamp> \
        --samples 8 16 --seeds 0 1 2 [--n 6314] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clm_torch.runs import load_model


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def measure(run: Path, samples: list[int], seeds: list[int], n: int | None) -> dict:
    vae = load_model(run / "vae" / "checkpoints" / "best.ckpt")
    vae.eval()
    sf = pd.read_parquet(run / "data" / "score_view.parquet")
    if n:
        sf = sf.iloc[:n]
    customers = pd.read_parquet(run / "data" / "customers_clean.parquet")
    askable = [c for c in customers.columns if c in vae.encoder.feature_columns]
    out: dict = {"run": str(run), "n_customers": len(sf), "askable": askable, "results": {}}
    for s in samples:
        res, secs = {}, []
        for seed in seeds:
            t0 = time.perf_counter()
            nbq, gains = vae.next_best_question(sf, k=1, n_samples=s, seed=seed, askable=askable, return_gains=True)
            secs.append(time.perf_counter() - t0)
            res[seed] = (nbq, gains)
        g0 = res[seeds[0]][1].to_numpy()
        n_cand = np.isfinite(g0).sum(1)
        multi = n_cand >= 2
        has_q = n_cand >= 1
        agree, sp1, spa, top = [], [], [], []
        for a, b in itertools.combinations(seeds, 2):
            qa, qb = res[a][0]["question_1"].to_numpy(), res[b][0]["question_1"].to_numpy()
            agree.append(float((qa[multi] == qb[multi]).mean()))
            ga, gb = res[a][0]["gain_1"].to_numpy()[has_q], res[b][0]["gain_1"].to_numpy()[has_q]
            sp1.append(_spearman(ga, gb))
            fa, fb = res[a][1].to_numpy(), res[b][1].to_numpy()
            ok = np.isfinite(fa)
            spa.append(_spearman(fa[ok], fb[ok]))
            ta, tb = ga >= np.quantile(ga, 0.8), gb >= np.quantile(gb, 0.8)
            top.append(float((ta & tb).sum() / max(ta.sum(), 1)))
        out["results"][s] = {"agreement": float(np.mean(agree)), "spearman_gain_1": float(np.mean(sp1)),
                             "spearman_all": float(np.mean(spa)), "top20_overlap": float(np.mean(top)),
                             "seconds": float(np.mean(secs)), "n_multi": int(multi.sum()),
                             "n_with_question": int(has_q.sum())}
        print(f"S={s:3d}: agreement {np.mean(agree):.3f} (n={int(multi.sum())})  spearman gain_1 {np.mean(sp1):.3f}"
              f"  spearman all {np.mean(spa):.3f}  top-20% overlap {np.mean(top):.3f}  {np.mean(secs):.1f} s/call",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a clm-pipeline run directory")
    ap.add_argument("--samples", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=None, help="first n customers of the score view (default all)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = measure(a.run, a.samples, a.seeds, a.n)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
