"""The cold-start popularity prior alone: the best checkpoints of a bench_recsys_coldstart.py run scored
again with the prior off (the same parameters, test users and draws), next to it on.

    python experiments/coldstart_prior_onoff.py experiments/results/recsys_coldstart.json

Prints per (protocol, seed) and prior setting the test NDCG@10 / Recall@20 of the 80 % fold-in
("full") and of n = 1, 3, 5, 10 known items. Needs the run directories the results file names
(``run_dir``, temporary directories: run it on the machine and soon after the benchmark).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recsys_coldstart import N_KNOWN, OURS, few_known, load, ours_scorer  # noqa: E402
from bench_recsys_movielens import csr_matrix, evaluate  # noqa: E402


def main() -> None:
    from clm_torch.models.recommender import EmbeddingRecommender

    torch.set_num_threads(1)
    results = json.loads(Path(sys.argv[1]).read_text())["results"]
    for proto, by_seed in results.items():
        for seed, r in by_seed.items():
            ckpt = Path(r["models"][OURS]["run_dir"]) / "checkpoints" / "best.ckpt"
            model = EmbeddingRecommender.load_from_checkpoint(ckpt)
            dm = load(proto, int(seed))
            th, te = (csr_matrix(*dm.csr(p), dm.n_items) for p in ("test_history", "test"))
            for prior in ("auto", "off"):
                model.hparams.cold_start_prior = prior
                row = {"full": evaluate(ours_scorer(model, th, te), th, te, dm.n_items)}
                for n in N_KNOWN:
                    h, t = few_known(dm, proto, n, int(seed))
                    row[n] = evaluate(ours_scorer(model, h, t), h, t, dm.n_items)
                print(proto, seed, prior, " | ".join(f"{k}: {v['ndcg@10']:.4f} / {v['recall@20']:.4f}"
                                                     for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
